"""Softmax aggregation, latent decay and adaptive temperature (docs/sharper.md)
against numpy transcriptions of their formulas, dm-clrs's own MPNN, and
through the command line."""

import json
import shutil

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import cli_args, tiny_config
from dear_jax import batches as batch_lib
from dear_jax import clrs_lib
from dear_jax import decoders as dec_lib
from dear_jax import factory
from dear_jax import input_pipeline
from dear_jax import processors
from dear_jax import run
from dear_jax import temperature
from dear_jax.model import ModelConfig

pytestmark = pytest.mark.usefixtures('fast_compile')

POLY = (-0.037, 0.481, -2.3, 4.917, -1.791)  # the paper's listing


def np_beta(logits):
  """The paper's adaptive temperature of one logit vector, in numpy."""
  p = np.exp(logits - logits.max())
  p = p / p.sum()
  h = -np.sum(p * np.log(p + 1e-9))
  return max(np.polyval(POLY, h), 1.0) if h > 0.5 else 1.0


def np_soft_aggregate(msgs, valid, adaptive):
  """msgs [S, R, C] (senders, receivers, channels), valid [S, R]: per
  receiver and channel, sum over the valid senders of softmax(beta m) * m;
  0 for a receiver with no valid sender."""
  s, r, c = msgs.shape
  out = np.zeros((r, c))
  for j in range(r):
    idx = np.flatnonzero(valid[:, j])
    for ch in range(c):
      m = msgs[idx, j, ch]
      if not len(m):
        continue
      beta = np_beta(m) if adaptive else 1.0
      w = np.exp(beta * m - (beta * m).max())
      out[j, ch] = np.sum(w / w.sum() * m)
  return out


def test_adaptive_inverse_temperature_is_the_papers_quartic():
  rng = np.random.RandomState(0)
  # spreads from sharp (H < 0.5: beta 1) to near uniform over 500 (beta 1)
  rows = [rng.randn(n) * s for n, s in ((16, 0.0), (16, 8.0), (64, 1.0),
                                         (128, 0.3), (500, 0.0), (7, 2.0))]
  for row in rows:
    got = float(temperature.adaptive_inverse_temperature(
        jnp.asarray(row)[None], -1)[0, 0])
    np.testing.assert_allclose(got, np_beta(row), rtol=1e-5)
  # uniform over 16 items: H = ln 16, beta = poly(ln 16) ~ 2.23 (> 1)
  uniform16 = float(temperature.adaptive_inverse_temperature(
      jnp.zeros((1, 16)), -1)[0, 0])
  np.testing.assert_allclose(uniform16, np.polyval(POLY, np.log(16)),
                             rtol=1e-5)
  assert 2.2 < uniform16 < 2.25


@pytest.mark.parametrize('adaptive', [False, True])
def test_softmax_aggregate_matches_numpy_with_masks(adaptive):
  with jax.enable_x64(True):
    rng = np.random.RandomState(1)
    b, n, c = 2, 6, 3
    msgs = rng.randn(b, n, n, c) * 2
    valid = rng.rand(b, n, n) < 0.5
    valid[0, :, 2] = False        # receiver 2 of graph 0 hears nobody
    valid[1, :, 4] = False
    valid[1, 0, 4] = True         # receiver 4 of graph 1: one sender
    msgs[~valid] = 1e3            # masked messages must not leak
    got = processors.softmax_aggregate(jnp.asarray(msgs), jnp.asarray(valid),
                                       1, adaptive)
    assert got.dtype == jnp.float64
    for g in range(b):
      np.testing.assert_allclose(
          got[g], np_soft_aggregate(msgs[g], valid[g], adaptive),
          rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(got[0, 2], 0.0)
    np.testing.assert_allclose(got[1, 4], msgs[1, 0, 4])


def test_softmax_aggregate_gradient_is_the_formulas():
  """d agg / d msgs against central differences of the numpy formula;
  masked senders get none."""
  with jax.enable_x64(True):
    rng = np.random.RandomState(2)
    n, c = 4, 2
    msgs = rng.randn(1, n, n, c)
    valid = rng.rand(1, n, n) < 0.6
    valid[0, 1, :] = True
    weights = rng.randn(n, c)
    f = lambda m: jnp.sum(weights * processors.softmax_aggregate(
        m, jnp.asarray(valid), 1))
    grad = np.asarray(jax.grad(f)(jnp.asarray(msgs)))
    num = np.zeros_like(msgs)
    for idx in np.ndindex(msgs.shape):
      for sign in (1, -1):
        m = msgs.copy()
        m[idx] += sign * 1e-6
        num[idx] += sign * np.sum(weights * np_soft_aggregate(
            m[0], valid[0], False)) / 2e-6
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-7)
    assert np.all(grad[0][~valid[0]] == 0)
    assert np.abs(grad[0][valid[0]]).max() > 1e-2


def test_first_occurrences_marks_repeats():
  senders = jnp.asarray([[0, 3, 1, 1], [2, 2, 2, 0]])
  np.testing.assert_array_equal(
      processors.first_occurrences(senders),
      [[True, True, True, False], [True, False, False, True]])


# --- the processors -----------------------------------------------------------

def _triplet_inputs(b=2, n=5, h=8):
  ks = jax.random.split(jax.random.PRNGKey(3), 5)
  return (jax.random.normal(ks[0], (b, n, h)),
          jax.random.normal(ks[1], (b, n, n, h)),
          jax.random.normal(ks[2], (b, h)), jnp.ones((b, n, n)),
          jax.random.normal(ks[3], (b, n, h)))


@pytest.mark.parametrize('adaptive', [False, True])
def test_triplet_gmpnn_softmax_is_clrs_mpnn_with_the_soft_max_reducer(
    adaptive):
  """dm-clrs's own triplet MPNN with its message reduction replaced by a
  transcription of the soft max (what Mirjanic et al.'s fork does): the
  same layer, node states and (max-reduced) triplets."""
  clrs_lib.clrs()
  from clrs._src import processors as clrs_processors  # pylint: disable=g-import-not-at-top
  from test_models import _perturb, processor_params_from_haiku  # pylint: disable=g-import-not-at-top
  with jax.enable_x64(True):
    h = 8
    node, edge, graph, adj, hidden = (x.astype(jnp.float64)
                                      for x in _triplet_inputs(h=h))

    def reducer(m, axis):
      beta = 1.0
      if adaptive:
        p = jax.nn.softmax(m, axis=axis)
        ent = -jnp.sum(p * jnp.log(p + 1e-9), axis=axis, keepdims=True)
        beta = jnp.where(ent > 0.5,
                         jnp.maximum(jnp.polyval(jnp.asarray(POLY), ent), 1.0),
                         1.0)
      return jnp.sum(jax.nn.softmax(beta * m, axis=axis) * m, axis=axis)

    ref = hk.without_apply_rng(hk.transform(
        lambda *a: clrs_processors.MPNN(
            out_size=h, msgs_mlp_sizes=[h, h], use_ln=True, use_triplets=True,
            nb_triplet_fts=8, gated=True, reduction=reducer,
            name='mpnn_aggr')(*a)))
    hk_params = _perturb(ref.init(jax.random.PRNGKey(0), node, edge, graph,
                                  adj, hidden), jax.random.PRNGKey(1), 0.3)
    params = processor_params_from_haiku(hk_params)
    ours = processors.TripletGMPNN(hidden=h, aggregation='softmax',
                                   adaptive_temperature=adaptive)
    want_h, want_tri = ref.apply(hk_params, node, edge, graph, adj, hidden)
    got_h, got_tri = ours.apply({'params': params}, node, edge, graph, adj,
                                hidden)
    tol = 1e-6 if adaptive else 1e-9  # beta is computed in float32
    np.testing.assert_allclose(got_h, want_h, rtol=tol, atol=tol)
    np.testing.assert_allclose(got_tri, want_tri, rtol=1e-9, atol=1e-9)
    maxed, _ = processors.TripletGMPNN(hidden=h).apply(
        {'params': params}, node, edge, graph, adj, hidden)
    assert float(jnp.abs(maxed - got_h).max()) > 1e-3  # softmax is not max


@pytest.mark.parametrize('kind', ['triplet_gmpnn', 'gmpnn'])
def test_latent_decay_feeds_the_processor_lambda_h(kind):
  """Mirjanic et al.'s decay: P_lambda(x, h) = P(x, lambda h), the decayed
  state on every path (messages, gate, keep-path), triplets included."""
  node, edge, graph, adj, hidden = _triplet_inputs()
  adj = (jax.random.uniform(jax.random.PRNGKey(4), adj.shape) < 0.5) * 1.0
  plain = processors.build_processor(kind, 8)
  decayed = processors.build_processor(kind, 8, latent_decay=0.9)
  params = plain.init(jax.random.PRNGKey(0), node, edge, graph, adj, hidden)
  want = plain.apply(params, node, edge, graph, adj, 0.9 * hidden)
  got = decayed.apply(params, node, edge, graph, adj, hidden)
  for g, w in zip(got, want):
    if w is not None:
      np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
  same = plain.apply(params, node, edge, graph, adj, hidden)[0]
  assert float(jnp.abs(same - got[0]).max()) > 1e-3


def _dear_mpnn_softmax_numpy(p, node, edge, graph, adj, hidden, adaptive):
  """test_models' edge-by-edge transcription of DEAR's MPNN layer, with the
  soft max of each channel over the incoming edges (self-loop included)."""
  from test_models import _dear_layer_norm  # pylint: disable=g-import-not-at-top
  lin = lambda name, x: x @ p[name]['kernel'] + p[name]['bias']
  relu = lambda x: np.maximum(x, 0.0)
  out = np.zeros_like(hidden)
  for b in range(node.shape[0]):
    n = node.shape[1]
    z = np.concatenate([node[b], hidden[b]], -1)
    edges = set(zip(*np.nonzero(adj[b]))) | {(i, i) for i in range(n)}
    agg = np.zeros((n, hidden.shape[-1]))
    for i in range(n):
      incoming = []
      for j in sorted(s for s, t in edges if t == i):  # along the edge j -> i
        m = (lin('W_i', z[i]) + lin('W_j', z[j]) + lin('W_e', edge[b, j, i]) +
             lin('W_g', graph[b]))
        for k in range(2):
          m = lin(f'msg_{k}', relu(_dear_layer_norm(m, p[f'msg_ln_{k}'])))
        incoming.append(m)
      msgs = np.stack(incoming)[:, None]  # [senders, 1, channels]
      agg[i] = np_soft_aggregate(msgs, np.ones(msgs.shape[:2], bool),
                                 adaptive)[0]
    r = _dear_layer_norm(lin('U1', z) + lin('U2', agg), p['ln'])
    gamma = 1 / (1 + np.exp(-lin('W3', relu(lin('W1', z) + lin('W2', agg)))))
    out[b] = gamma * r + (1 - gamma) * hidden[b]
  return out


@pytest.mark.parametrize('adaptive', [False, True])
def test_gated_mpnn_softmax_matches_numpy_on_every_path(adaptive):
  """Dense adjacency, sender lists (aggregation_senders, which pads with
  repeats) and fixed neighbour lists: DEAR's layer with softmax aggregation
  over the graph's edges, each sender once; values and gradients agree."""
  from test_models import GMPNN_NAMES  # pylint: disable=g-import-not-at-top
  spec = {'adj': ('input', 'edge', 'mask')}
  with jax.enable_x64(True):
    rng = np.random.RandomState(5)
    b, n, h = 2, 7, 6
    adj = (rng.rand(b, n, n) < 0.3).astype(np.float64)
    sym = np.maximum(adj, np.swapaxes(adj, 1, 2))
    senders = batch_lib.aggregation_senders(
        dict(inputs={'adj': adj}, hints={}, outputs={}, lengths=None), spec)
    assert not np.all(processors.first_occurrences(jnp.asarray(senders)))
    key = jax.random.PRNGKey(6)
    node, edge, graph, hidden = (
        jax.random.normal(jax.random.fold_in(key, i), s, jnp.float64)
        for i, s in enumerate([(b, n, h), (b, n, n, h), (b, h), (b, n, h)]))
    proc = processors.GatedMaxMPNN(hidden=h, aggregation='softmax',
                                   adaptive_temperature=adaptive)
    params = proc.init(key, node, edge, graph, jnp.asarray(sym), hidden)
    params = jax.tree.map(
        lambda x: x.astype(jnp.float64) + 0.2 * jax.random.normal(
            jax.random.PRNGKey(7), x.shape, jnp.float64), params)
    apply = lambda p, a, **kw: proc.apply(p, node, edge, graph, a, hidden,
                                          **kw)[0]
    want = _dear_mpnn_softmax_numpy(
        {role: jax.tree.map(np.asarray, params['params'][name])
         for role, name in GMPNN_NAMES.items()},
        *(np.asarray(x) for x in (node, edge, graph)), sym, np.asarray(hidden),
        adaptive)
    tol = 1e-6 if adaptive else 1e-9  # beta is computed in float32
    np.testing.assert_allclose(apply(params, jnp.asarray(sym)), want,
                               rtol=tol, atol=tol)
    np.testing.assert_allclose(apply(params, jnp.asarray(senders)), want,
                               rtol=tol, atol=tol)
    loss = lambda p, a: jnp.sum(jnp.sin(apply(p, a)))
    for x, y in zip(jax.tree.leaves(jax.grad(loss)(params, jnp.asarray(senders))),
                    jax.tree.leaves(jax.grad(loss)(params, jnp.asarray(sym)))):
      np.testing.assert_allclose(x, y, rtol=1e-8, atol=1e-10)
    # fixed neighbour lists (the Cayley pass), one graph's, with a repeat
    one = np.asarray(senders[0])
    # its edge features as [1, N, K, F]: [0, j, k] = E from one[j, k] to j
    out = proc.apply(params, node[:1], edge[:1, one, np.arange(n)[:, None]],
                     graph[:1], None, hidden[:1],
                     neighbours=jnp.asarray(one))[0]
    np.testing.assert_allclose(out, want[:1], rtol=tol, atol=tol)


def test_sinkhorn_at_adaptive_temperature_matches_numpy():
  rng = np.random.RandomState(8)
  n = 6
  logits = rng.randn(2, n, n) * 0.05  # flat rows: high entropy, beta > 1
  got = np.asarray(dec_lib.log_sinkhorn(jnp.asarray(logits), steps=10,
                                        temperature=0.1, zero_diagonal=True,
                                        adaptive=True))
  x = logits / 0.1 - 1e6 * np.eye(n)
  betas = np.array([[np_beta(row) for row in g] for g in x])
  assert betas.min() > 1.5
  x = betas[..., None] * x
  lse = lambda v, ax: v.max(ax, keepdims=True) + np.log(
      np.exp(v - v.max(ax, keepdims=True)).sum(ax, keepdims=True))
  for _ in range(10):
    x = x - lse(x, -1)
    x = x - lse(x, -2)
  off = ~np.eye(n, dtype=bool)
  np.testing.assert_allclose(got[:, off], x[:, off], rtol=1e-4, atol=1e-4)
  plain = np.asarray(dec_lib.log_sinkhorn(jnp.asarray(logits), 10, 0.1, True))
  assert np.abs(plain[:, off] - got[:, off]).max() > 0.1


# --- config, model and command line --------------------------------------------

def test_defaults_are_the_models_of_before():
  cfg = ModelConfig()
  assert (cfg.aggregation, cfg.latent_decay, cfg.test_aggregation,
          cfg.adaptive_temperature) == ('max', 1.0, None, False)
  for kind in processors.PROCESSORS:
    p = processors.build_processor(kind, 8)
    assert (p.aggregation, p.latent_decay, p.adaptive_temperature) == (
        'max', 1.0, False)


@pytest.mark.parametrize('args,message', [
    (['--config.model.aggregation=mean'],
     "error: model.aggregation must be one of max, softmax, got 'mean'"),
    (['--config.model.test_aggregation=sum'],
     "error: model.test_aggregation must be one of max, softmax, got 'sum'"),
    (['--config.model.latent_decay=1.5'],
     'error: model.latent_decay must be in (0, 1] (1: off; Mirjanic et al.: '
     '0.9), got 1.5'),
    (['--config.model.latent_decay=0'],
     'error: model.latent_decay must be in (0, 1] (1: off; Mirjanic et al.: '
     '0.9), got 0.0'),
])
def test_bad_values_are_one_line_and_exit_2(capsys, tmp_path, args, message):
  with pytest.raises(SystemExit) as e:
    run.main(['run', '--algorithm=bfs', f'--workdir={tmp_path / "w"}'] + args)
  assert e.value.code == 2
  assert capsys.readouterr().err == message + '\n'
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('kind', ['dear', 'nar'])
def test_for_test_changes_only_the_tests(kind, data_cfg):
  """model.test_aggregation and adaptive_temperature reach the model the
  tests run (same parameters), never the trained one; each changes its
  predictions."""
  config = tiny_config(data_cfg.cache_dir, kind)
  config.model.aggregation = 'softmax'
  config.nar.hint_mode = 'none'
  batch = next(input_pipeline.TrainStream('bfs', data_cfg, seed=2,
                                          keep_hints=False))
  spec = clrs_lib.processed_spec('bfs')
  model = factory.build_model(config, spec, batch)
  assert model.for_test() is model
  params = model.init(jax.random.PRNGKey(0), batch)
  logits = lambda m: m.forward(params, batch, training=False,
                               key=jax.random.PRNGKey(0))[0]['pi']
  base = logits(model)
  for key, value, attr in (('test_aggregation', 'max', 'aggregation'),
                           ('adaptive_temperature', True,
                            'adaptive_temperature')):
    config.model[key] = value
    other = factory.build_model(config, spec, batch)
    assert getattr(other.processor, attr) == getattr(model.processor, attr)
    tested = other.for_test()
    assert getattr(tested.processor, attr) == value
    assert tested.decoders.adaptive_temperature == (attr == key)
    assert float(jnp.abs(logits(tested) - base).max()) > 1e-4
    np.testing.assert_array_equal(logits(other), base)  # as trained
    config.model[key] = ModelConfig().to_dict()[key]


@pytest.mark.parametrize('kind', ['dear', 'nar'])
@pytest.mark.parametrize('option', [{'aggregation': 'softmax'},
                                    {'latent_decay': 0.9}])
def test_training_gradient_reaches_every_processor_weight(kind, option,
                                                          data_cfg):
  config = tiny_config(data_cfg.cache_dir, kind)
  config.nar.hint_mode = 'none'
  for key, value in option.items():
    config.model[key] = value
  batch = next(input_pipeline.TrainStream('bfs', data_cfg, seed=3,
                                          keep_hints=False))
  model = factory.build_model(config, clrs_lib.processed_spec('bfs'), batch)
  params = model.init(jax.random.PRNGKey(0), batch)
  grads = jax.grad(lambda p: model.loss(p, batch, jax.random.PRNGKey(1))[0])(
      params)['processor']
  for name, g in grads.items():  # every weight moves the loss
    leaves = jax.tree.leaves(g)
    assert all(np.all(np.isfinite(x)) for x in leaves), name
    assert max(float(jnp.abs(x).max()) for x in leaves) > 0, name


def test_for_test_sets_only_the_fields_a_processor_has(data_cfg):
  """A processor without these options (one of a user's own) is tested as
  it is; the Sinkhorn decoder still gets adaptive temperature."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Plain(nn.Module):
    hidden: int

  config = tiny_config(data_cfg.cache_dir, 'nar')
  config.model.adaptive_temperature = True
  batch = next(input_pipeline.TrainStream('bfs', data_cfg, seed=2,
                                          keep_hints=False))
  model = factory.build_model(config, clrs_lib.processed_spec('bfs'), batch)
  model.processor = Plain(hidden=16)
  tested = model.for_test()
  assert tested.processor == Plain(hidden=16)
  assert tested.decoders.adaptive_temperature
  assert not model.decoders.adaptive_temperature


def _cli(args, capsys):
  try:
    code = run.main(args)
  except SystemExit as e:
    code = e.code
  return code, capsys.readouterr().err


@pytest.mark.parametrize('kind,overrides', [
    ('nar', {'aggregation': 'softmax', 'latent_decay': 0.9}),
    ('dear', {'latent_decay': 0.9}),
    ('dear', {'processor': 'gmpnn', 'aggregation': 'softmax'}),
])
def test_cli_trains_and_tests_with_each_option(kind, overrides, cache_dir,
                                               tmp_path, capsys):
  config = tiny_config(cache_dir, kind, steps=2)
  config.nar.hint_mode = 'none'
  for key, value in overrides.items():
    config.model[key] = value
  args = cli_args(config, tmp_path / 'w') + ['--config.nar.hint_mode=none']
  code, err = _cli(args, capsys)
  assert code == 0, err
  r = json.loads((tmp_path / 'w' / 'results.json').read_text())
  for key, value in overrides.items():
    assert r['config']['model'][key] == value
  assert np.isfinite(r['test_score'])


def test_reevaluate_with_adaptive_temperature_keeps_training_and_records_it(
    cache_dir, tmp_path, capsys):
  """A finished softmax run re-tested with adaptive temperature (and with
  max aggregation): the folder's results are under the config that produced
  them, 'reevaluated_with' says what changed, validation is untouched, and
  the score is the test model's on the best parameters."""
  from dear_jax import checkpoints, splits, train  # pylint: disable=g-import-not-at-top
  config = tiny_config(cache_dir, 'dear', steps=2)
  config.model.aggregation = 'softmax'
  first = tmp_path / 'first'
  code, err = _cli(cli_args(config, first), capsys)
  assert code == 0, err
  before = json.loads((first / 'results.json').read_text())
  for key, value in (('adaptive_temperature', True),
                     ('test_aggregation', 'max')):
    work = tmp_path / key
    shutil.copytree(first, work)
    args = cli_args(config, work) + [f'--config.model.{key}={value}']
    code, err = _cli(args, capsys)
    assert code == 2 and '--reevaluate' in err  # not silently re-tested
    code, err = _cli(args + ['--reevaluate'], capsys)
    assert code == 0, err
    r = json.loads((work / 'results.json').read_text())
    assert r['config']['model'][key] == value
    assert r['reevaluated_with'] == {f'model.{key}': [
        before['config']['model'][key], value]}
    assert r['val_curve'] == before['val_curve']
    # the recorded score is the test model's on the best parameters
    cfg = train.stored_config(r['config'])
    test = splits.load_split('bfs', 'test', train.data_config(cfg),
                             keep_hints=False)
    net = factory.build_model(cfg, clrs_lib.processed_spec('bfs'),
                              test.batches[0])
    params = jax.tree.map(jnp.asarray, checkpoints.load_best_params(str(work)))
    tested = net.for_test()
    want = train.evaluate(tested, jax.jit(tested.predict), params, test)
    assert r['test_score'] == pytest.approx(want['score'], abs=1e-6)
    # the solve of the test map, not the trained one's (the tiny test's
    # scores may coincide; its residuals do not)
    assert r['final_residual_mean'] == pytest.approx(
        want['final_residual_mean'], rel=1e-4)
    assert r['final_residual_mean'] != pytest.approx(
        before['final_residual_mean'], rel=1e-3)
    if key == 'adaptive_temperature':
      # the same as a run trained with it from the start
      fresh = tmp_path / 'fresh'
      code, err = _cli(cli_args(config, fresh) +
                       [f'--config.model.{key}={value}'], capsys)
      assert code == 0, err
      f = json.loads((fresh / 'results.json').read_text())
      for k in ('val_curve', 'test_score', 'test_graph_scores',
                'final_residual_mean', 'solver_iterations'):
        assert f[k] == r[k], k
