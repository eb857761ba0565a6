"""Tests for the stepwise NAR against dm-clrs's own haiku modules and losses.

Parity tests copy randomly initialised (and perturbed) haiku parameters into
the Flax modules and compare outputs; the per-algorithm smoke test trains one
step and scores with `clrs.evaluate`.
"""
import functools
import re

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import model_config, tiny_data_config
from dear_jax import data as data_lib
from dear_jax import decoders as dec_lib
from dear_jax import losses
from dear_jax.encoders import Encoders
from dear_jax.decoders import Decoders
from dear_jax.model import count_params
from dear_jax.nar import StepwiseNAR
from dear_jax.processors import TripletGMPNN
from dear_jax.train import evaluate

clrs = data_lib.clrs()
from clrs._src import decoders as clrs_decoders  # noqa: E402
from clrs._src import encoders as clrs_encoders  # noqa: E402
from clrs._src import losses as clrs_losses  # noqa: E402
from clrs._src import nets as clrs_nets  # noqa: E402
from clrs._src import probing  # noqa: E402

ALGORITHMS = data_lib.algorithm_names()

# Haiku construction order in clrs/_src/processors.py (PGN.__call__ and
# get_triplet_msgs) -> the Flax submodule names of TripletGMPNN.
PROCESSOR_NAMES = {
    'linear': 'm_1', 'linear_1': 'm_2', 'linear_2': 'm_e', 'linear_3': 'm_g',
    'linear_4': 'o1', 'linear_5': 'o2',
    'linear_6': 't_1', 'linear_7': 't_2', 'linear_8': 't_3',
    'linear_9': 't_e_1', 'linear_10': 't_e_2', 'linear_11': 't_e_3',
    'linear_12': 't_g', 'linear_13': 'o3',
    'mlp/~/linear_0': 'mlp_0', 'mlp/~/linear_1': 'mlp_1',
    'linear_14': 'gate1', 'linear_15': 'gate2', 'linear_16': 'gate3',
}
PROC_PREFIX = 'mpnn_aggr_clrs_processor/'


def _perturb(params, key, scale=0.2):
  """Random offsets on every haiku parameter: biases, LN scale/offset and the
  gate's -3 bias all become distinct, so a wrong name mapping shows."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(
      tree, [x + scale * jax.random.normal(k, x.shape)
             for x, k in zip(leaves, keys)])


def _linear(p):
  return {'kernel': p['w'], 'bias': p['b']}


def processor_params_from_haiku(hk_params, prefix=''):
  out = {}
  for hk_name, flax_name in PROCESSOR_NAMES.items():
    out[flax_name] = _linear(hk_params[prefix + PROC_PREFIX + hk_name])
  ln = hk_params[prefix + PROC_PREFIX + 'layer_norm']
  out['ln'] = {'scale': ln['scale'], 'bias': ln['offset']}
  used = {prefix + PROC_PREFIX + k for k in PROCESSOR_NAMES}
  used.add(prefix + PROC_PREFIX + 'layer_norm')
  assert used == {k for k in hk_params if PROC_PREFIX in k}
  return out


_CODER = re.compile(r'algo_0_(.+)_(enc|dec)_linear(?:_(\d+))?$')


def coder_params_from_haiku(hk_params, kind):
  """net/.../algo_0_{name}_{kind}_linear[_k] -> Flax '{name}_{kind}_{k}'."""
  out = {}
  for module, p in hk_params.items():
    m = _CODER.search(module)
    if m and m.group(2) == kind:
      out[f'{m.group(1)}_{kind}_{int(m.group(3) or 0)}'] = _linear(p)
  return out


def _same_structure(a, b):
  sa = jax.tree_util.tree_map(lambda x: x.shape, a)
  sb = jax.tree_util.tree_map(lambda x: x.shape, b)
  assert sa == sb


def _max_diff(a, b):
  return float(jnp.max(jnp.abs(jnp.asarray(a) - jnp.asarray(b))))


@pytest.fixture(scope='module', autouse=True)
def fast_compile():
  """XLA's optimisations double compile times on CPU; these graphs are tiny."""
  old = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', old)


# --- 1. processor parity -----------------------------------------------------

def _bfs_features(hidden, n=8, b=2, seed=0):
  """Encoder outputs on a real BFS batch (inputs + first hints)."""
  cfg = tiny_data_config('/nonexistent', train_sizes=(n,), batch_size=b)
  batch = next(data_lib.TrainStream('bfs', cfg, seed=seed))
  spec = data_lib.processed_spec('bfs')
  probes = dict(batch['inputs'], **{k: v[0] for k, v in batch['hints'].items()})
  enc = Encoders(spec=spec, hidden=hidden)
  p = enc.init(jax.random.PRNGKey(seed), probes, n)
  node, edge, graph, adj = enc.apply(p, probes, n)
  return node, edge, graph, adj


@pytest.mark.parametrize('graph_source', ['encoders', 'random'])
def test_processor_matches_clrs_triplet_gmpnn(graph_source):
  h = 128
  node, edge, graph, adj = _bfs_features(h)
  assert float(jnp.abs(node).max()) > 0 and float(jnp.abs(edge).max()) > 0
  key = jax.random.PRNGKey(42)
  k_graph, k_hidden, k_init, k_pert = jax.random.split(key, 4)
  if graph_source == 'random':  # BFS has no graph input: exercise m_g, t_g
    graph = jax.random.normal(k_graph, graph.shape)
  hidden = jax.random.normal(k_hidden, node.shape)

  factory = clrs.get_processor_factory('triplet_gmpnn', use_ln=True,
                                       nb_triplet_fts=8)
  ref = hk.without_apply_rng(hk.transform(
      lambda *a: factory(h)(*a)))
  hk_params = _perturb(ref.init(k_init, node, edge, graph, adj, hidden), k_pert)
  flax_params = processor_params_from_haiku(hk_params)
  ours = TripletGMPNN(hidden=h, nb_triplet_fts=8)
  _same_structure({'params': flax_params},
                  ours.init(k_init, node, edge, graph, adj, hidden))

  h_ref, h_ours = hidden, hidden
  for _ in range(2):  # feed the new hidden state back
    h_ref, tri_ref = ref.apply(hk_params, node, edge, graph, adj, h_ref)
    h_ours, tri_ours = ours.apply({'params': flax_params}, node, edge, graph,
                                  adj, h_ours)
    assert tri_ours.shape == tri_ref.shape == edge.shape
    # float32 reassociation: observed up to 4.4e-5 on |h| ~ 2.5
    assert _max_diff(h_ours, h_ref) < 1e-4
    assert _max_diff(tri_ours, tri_ref) < 1e-4
    assert float(jnp.std(h_ref)) > 0.1 and float(jnp.std(tri_ref)) > 0.01
  # triplets=False skips the edge latent but gives the same node update
  h_only, none = ours.apply({'params': flax_params}, node, edge, graph, adj,
                            hidden, triplets=False)
  assert none is None
  h1, _ = ref.apply(hk_params, node, edge, graph, adj, hidden)
  assert _max_diff(h_only, h1) < 1e-4


# --- encoders / decoders parity ---------------------------------------------

@pytest.mark.parametrize('algorithm', ['floyd_warshall', 'lcs_length',
                                       'binary_search', 'mst_kruskal',
                                       'insertion_sort'])
def test_encoders_match_clrs(algorithm, data_cfg):
  """Every input and hint probe, encoded as nets.Net._one_step_pred does."""
  h = 16
  spec = data_lib.processed_spec(algorithm)
  batch = next(data_lib.TrainStream(algorithm, data_cfg, seed=0))
  n = data_lib.num_nodes(batch)
  probes = dict(batch['inputs'], **{k: v[0] for k, v in batch['hints'].items()})
  dps = data_lib.datapoints(probes, spec)
  b = batch['lengths'].shape[0]

  def ref_fn(dps):
    node = jnp.zeros((b, n, h))
    edge = jnp.zeros((b, n, n, h))
    graph = jnp.zeros((b, h))
    adj = jnp.repeat(jnp.eye(n)[None], b, axis=0)
    for dp in dps:
      stage, loc, t = spec[dp.name]
      encs = clrs_encoders.construct_encoders(
          stage, loc, t, hidden_dim=h, init='xavier_on_scalars',
          name=f'algo_0_{dp.name}')
      dp = clrs_encoders.preprocess(dp, n)
      adj = clrs_encoders.accum_adj_mat(dp, adj)
      edge = clrs_encoders.accum_edge_fts(encs, dp, edge)
      node = clrs_encoders.accum_node_fts(encs, dp, node)
      graph = clrs_encoders.accum_graph_fts(encs, dp, graph)
    return node, edge, graph, adj

  ref = hk.without_apply_rng(hk.transform(ref_fn))
  hk_params = _perturb(ref.init(jax.random.PRNGKey(0), dps),
                       jax.random.PRNGKey(1))
  flax_params = coder_params_from_haiku(hk_params, 'enc')
  enc = Encoders(spec=spec, hidden=h)
  _same_structure({'params': flax_params},
                  enc.init(jax.random.PRNGKey(0), probes, n))
  node, edge, graph, adj = enc.apply({'params': flax_params}, probes, n)
  r_node, r_edge, r_graph, r_adj = ref.apply(hk_params, dps)
  assert _max_diff(node, r_node) < 1e-5
  assert _max_diff(edge, r_edge) < 1e-5
  assert _max_diff(graph, r_graph) < 1e-5
  # dm-clrs starts from the identity; ours from zeros.
  np.testing.assert_array_equal(
      np.maximum(np.asarray(adj) > 0, np.eye(n)[None]), np.asarray(r_adj) > 0)


def test_decoders_match_clrs():
  """Every decoder shape dm-clrs has, on random h_t (3H), e_t (2H), g (H)."""
  h, b, n, c = 16, 2, 5, 3
  spec = {
      'n_scalar': ('output', 'node', 'scalar'),
      'n_mask': ('output', 'node', 'mask'),
      'n_mask_one': ('output', 'node', 'mask_one'),
      'n_cat': ('output', 'node', 'categorical'),
      'n_ptr': ('output', 'node', 'pointer'),
      'n_perm': ('output', 'node', 'permutation_pointer'),
      'e_scalar': ('hint', 'edge', 'scalar'),
      'e_mask': ('output', 'edge', 'mask'),
      'e_cat': ('output', 'edge', 'categorical'),
      'e_ptr': ('output', 'edge', 'pointer'),
      'g_scalar': ('output', 'graph', 'scalar'),
      'g_cat': ('hint', 'graph', 'categorical'),
      'g_ptr': ('output', 'graph', 'pointer'),
  }
  nb_dims = {k: (c if v[2] == 'categorical' else 1) for k, v in spec.items()}
  ks = jax.random.split(jax.random.PRNGKey(3), 3)
  h_t = jax.random.normal(ks[0], (b, n, 3 * h))
  e_t = jax.random.normal(ks[1], (b, n, n, 2 * h))
  g = jax.random.normal(ks[2], (b, h))
  adj = jnp.ones((b, n, n))

  def ref_fn(h_t, e_t, g):
    decs = {name: clrs_decoders.construct_decoders(
        loc, t, hidden_dim=h, nb_dims=nb_dims[name], name=f'algo_0_{name}')
            for name, (_, loc, t) in spec.items()}
    hints, outs = clrs_decoders.decode_fts(
        decs, spec, h_t, adj, e_t, g, inf_bias=False, inf_bias_edge=False,
        repred=True)
    return dict(hints, **outs)

  ref = hk.without_apply_rng(hk.transform(ref_fn))
  hk_params = _perturb(ref.init(jax.random.PRNGKey(0), h_t, e_t, g),
                       jax.random.PRNGKey(1))
  ours = Decoders(spec=spec, names=tuple(spec), hidden=h,
                  nb_dims={k: c for k, v in spec.items()
                           if v[2] == 'categorical'})
  flax_params = coder_params_from_haiku(hk_params, 'dec')
  _same_structure({'params': flax_params},
                  ours.init(jax.random.PRNGKey(0), h_t, e_t, g))
  got = jax.jit(functools.partial(ours.apply, training=False))(
      {'params': flax_params}, h_t, e_t, g)
  want = jax.jit(ref.apply)(hk_params, h_t, e_t, g)
  assert got.keys() == want.keys()
  for k in spec:
    assert got[k].shape == want[k].shape, k
    tol = 1e-3 if k == 'n_perm' else 1e-5  # log-Sinkhorn at temperature 0.1
    assert _max_diff(got[k], want[k]) < tol, k


# --- whole model against nets.Net --------------------------------------------

@pytest.mark.parametrize('hint_mode', ['encoded_decoded', 'none'])
def test_stepwise_model_matches_clrs_net(hint_mode):
  """Encoders -> processor -> decoders over T-1 steps, soft hint feedback,
  per-sample output freeze: logits equal dm-clrs's nets.Net (repred=True)."""
  # Node and graph hints of 5 types; `phase` is a graph hint, whose
  # re-encoding feeds the processor's and decoders' graph features.
  h, algorithm = 16, 'graham_scan'
  cfg = tiny_data_config('/nonexistent', train_sizes=(6,), batch_size=3)
  spec = data_lib.processed_spec(algorithm)
  stream = data_lib.TrainStream(algorithm, cfg, seed=0)
  batch = next(stream)
  while len(set(batch['lengths'].tolist())) < 2:
    batch = next(stream)
  features = data_lib.to_feedback(batch, spec).features
  nb_dims = {k: v.shape[-1] for g in ('inputs', 'hints', 'outputs')
             for k, v in batch[g].items()}
  encode = hint_mode == 'encoded_decoded'
  decode = hint_mode != 'none'

  def ref_fn(features):
    net = clrs_nets.Net(
        spec=[spec], hidden_dim=h, encode_hints=encode, decode_hints=decode,
        processor_factory=clrs.get_processor_factory(
            'triplet_gmpnn', use_ln=True, nb_triplet_fts=8),
        use_lstm=False, encoder_init='xavier_on_scalars', dropout_prob=0.0,
        hint_teacher_forcing=0.0, nb_dims=[nb_dims])
    return net([features], repred=True, algorithm_index=0, return_hints=True,
               return_all_outputs=False)

  ref = hk.transform(ref_fn)
  hk_params = _perturb(ref.init(jax.random.PRNGKey(0), features),
                       jax.random.PRNGKey(1), scale=0.1)
  want_out, want_hints = jax.jit(ref.apply)(hk_params, jax.random.PRNGKey(2),
                                            features)

  model = StepwiseNAR(spec, batch, model_config(hidden=h), hint_mode)
  params = {'encoders': coder_params_from_haiku(hk_params, 'enc'),
            'processor': processor_params_from_haiku(
                hk_params, 'net/'),
            'decoders': coder_params_from_haiku(hk_params, 'dec')}
  _same_structure(params, model.init(jax.random.PRNGKey(0), batch))
  forward = jax.jit(lambda p, b: model.forward(p, b, training=False,
                                               key=jax.random.PRNGKey(0)))
  got_out, got_hints, _ = forward(params, batch)
  assert got_out.keys() == want_out.keys() == {'in_hull'}
  # Observed <= 7.2e-7 (float32 reassociation over T-1 steps).
  assert _max_diff(got_out['in_hull'], want_out['in_hull']) < 1e-5
  if decode:
    assert len(want_hints) == data_lib.num_steps(batch) - 1
    for k in got_hints:
      want = jnp.stack([s[k] for s in want_hints])
      assert got_hints[k].shape == want.shape, k
      assert _max_diff(got_hints[k], want) < 1e-5, k
  else:
    assert got_hints is None


# --- 2. parameter count -------------------------------------------------------

def test_bfs_parameter_count_matches_clrs_baseline():
  cfg = tiny_data_config('/nonexistent', train_sizes=(16,), batch_size=2)
  batch = next(data_lib.TrainStream('bfs', cfg, seed=0))
  spec = data_lib.processed_spec('bfs')
  model = StepwiseNAR(spec, batch, model_config(hidden=128), 'encoded_decoded')
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)
  assert count_params(shapes) == 523_963
  # Hints neither encoded nor decoded: fewer parameters.
  none = StepwiseNAR(spec, batch, model_config(hidden=128), 'none')
  assert count_params(jax.eval_shape(none.init, jax.random.PRNGKey(0),
                                     batch)) < 523_963


# --- 3. losses ----------------------------------------------------------------

def _truth(type_, key, shape, n):
  """Random ground truth of a probe type, with masked (-1) entries where the
  type allows them. `shape` is the leading shape (e.g. (B, N))."""
  k1, k2 = jax.random.split(key)
  if type_ == 'scalar':
    return np.asarray(jax.random.normal(k1, shape))
  if type_ == 'mask':
    x = np.array(jax.random.bernoulli(k1, 0.5, shape), np.float32)
    x[..., 0] = -1.0  # masked entries
    return x
  if type_ == 'pointer':
    return np.asarray(jax.random.randint(k1, shape, 0, n), np.int32)
  if type_ in ('mask_one', 'categorical'):
    c = n if type_ == 'mask_one' else 3
    lead = shape[:-1] if type_ == 'mask_one' else shape
    return np.array(jax.nn.one_hot(jax.random.randint(k1, lead, 0, c), c))
  if type_ == 'permutation_pointer':
    perms = jax.vmap(lambda k: jax.random.permutation(k, n))(
        jax.random.split(k1, int(np.prod(shape[:-1]))))
    return np.asarray(jax.nn.one_hot(perms, n)).reshape(shape + (n,))
  raise ValueError(type_)


def _logits(type_, key, truth, n):
  shape = truth.shape
  if type_ == 'pointer':
    shape = shape + (n,)
  x = jax.random.normal(key, shape) * 2
  if type_ == 'permutation_pointer':
    x = dec_lib.log_sinkhorn(x, 10, 0.1, True)
  return x


LOSS_CASES = [('pointer', 'node'), ('pointer', 'edge'), ('mask', 'node'),
              ('mask', 'edge'), ('mask_one', 'node'), ('categorical', 'node'),
              ('categorical', 'edge'), ('permutation_pointer', 'node'),
              ('scalar', 'node'), ('scalar', 'graph')]


@pytest.mark.parametrize('type_,loc', LOSS_CASES)
def test_output_loss_matches_clrs(type_, loc):
  b, n = 3, 5
  lead = {'node': (b, n), 'edge': (b, n, n), 'graph': (b,)}[loc]
  key = jax.random.PRNGKey(LOSS_CASES.index((type_, loc)))
  k1, k2 = jax.random.split(key)
  truth = _truth(type_, k1, lead, n)
  if type_ == 'categorical':
    truth[0, 0] = -1.0  # a masked row
  pred = _logits(type_, k2, truth, n)
  dp = probing.DataPoint(name='x', location=loc, type_=type_, data=truth)
  want = clrs_losses.output_loss(dp, pred, n)
  got = losses.output_loss(type_, jnp.asarray(truth), pred, n)
  assert np.isfinite(float(want))
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('type_,loc', LOSS_CASES)
def test_hint_loss_matches_clrs(type_, loc):
  t, b, n = 5, 3, 4
  lead = {'node': (t, b, n), 'edge': (t, b, n, n), 'graph': (t, b)}[loc]
  key = jax.random.PRNGKey(100 + LOSS_CASES.index((type_, loc)))
  k1, k2 = jax.random.split(key)
  truth = _truth(type_, k1, lead, n)
  pred = _logits(type_, k2, truth[1:], n)
  lengths = np.array([2, 5, 3], np.int32)  # per-sample time masks
  dp = probing.DataPoint(name='x', location=loc, type_=type_,
                         data=truth.astype(np.float32))  # as dm-clrs stores
  want = clrs_losses.hint_loss(dp, list(pred), lengths.astype(np.float32), n)
  got = losses.hint_loss(type_, jnp.asarray(truth), pred, jnp.asarray(lengths),
                         n)
  assert np.isfinite(float(want))
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5, atol=1e-6)
  # Steps past a sample's length do not count.
  pred2 = pred.at[1:, 0].add(100.0)  # sample 0 (length 2) only has step 0
  got2 = losses.hint_loss(type_, jnp.asarray(truth), pred2,
                          jnp.asarray(lengths), n)
  np.testing.assert_allclose(float(got2), float(got), rtol=1e-5, atol=1e-6)


def test_total_loss_sums_probes():
  b, n, t = 2, 4, 3
  spec = {'pi': ('output', 'node', 'pointer'),
          'm': ('output', 'node', 'mask'),
          'h': ('hint', 'node', 'scalar'),
          'x': ('input', 'node', 'scalar')}
  ks = jax.random.split(jax.random.PRNGKey(0), 6)
  batch = dict(inputs={'x': np.zeros((b, n), np.float32)},
               outputs={'pi': _truth('pointer', ks[0], (b, n), n),
                        'm': _truth('mask', ks[1], (b, n), n)},
               hints={'h': _truth('scalar', ks[2], (t, b, n), n)},
               lengths=np.array([3, 2], np.int32))
  outs = {'pi': jax.random.normal(ks[3], (b, n, n)),
          'm': jax.random.normal(ks[4], (b, n))}
  hints = {'h': jax.random.normal(ks[5], (t - 1, b, n))}
  want = (losses.output_loss('pointer', batch['outputs']['pi'], outs['pi'], n) +
          losses.output_loss('mask', batch['outputs']['m'], outs['m'], n) +
          losses.hint_loss('scalar', batch['hints']['h'], hints['h'],
                           batch['lengths'], n))
  np.testing.assert_allclose(float(losses.total_loss(spec, batch, outs, hints)),
                             float(want), rtol=1e-6)
  np.testing.assert_allclose(
      float(losses.total_loss(spec, batch, outs, None)),
      float(want - losses.hint_loss('scalar', batch['hints']['h'], hints['h'],
                                    batch['lengths'], n)), rtol=1e-6)


# --- 4. Sinkhorn and postprocessing -----------------------------------------

@pytest.mark.parametrize('noise', [False, True])
def test_log_sinkhorn_matches_clrs(noise):
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 5)) * 3
  key = jax.random.PRNGKey(7) if noise else None
  for steps, temp, zero in ((10, 0.1, True), (5, 1.0, False)):
    want = clrs_decoders.log_sinkhorn(x, steps, temp, zero, key)
    got = dec_lib.log_sinkhorn(x, steps, temp, zero, noise_key=key)
    assert _max_diff(got, want) < 1e-4
  # doubly stochastic after enough steps
  p = jnp.exp(dec_lib.log_sinkhorn(x, 50, 1.0, False))
  np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-4)
  np.testing.assert_allclose(p.sum(-2), 1.0, atol=1e-4)


@pytest.mark.parametrize('hard', [True, False])
def test_postprocess_matches_clrs(hard):
  b, n = 2, 5
  spec = {'s': ('output', 'node', 'scalar'), 'm': ('output', 'edge', 'mask'),
          'o': ('output', 'node', 'mask_one'),
          'c': ('hint', 'node', 'categorical'),
          'p': ('output', 'node', 'pointer'),
          'e': ('hint', 'edge', 'pointer'),
          'q': ('output', 'node', 'permutation_pointer')}
  shapes = {'s': (b, n), 'm': (b, n, n), 'o': (b, n), 'c': (b, n, 3),
            'p': (b, n, n), 'e': (b, n, n, n), 'q': (b, n, n)}
  keys = jax.random.split(jax.random.PRNGKey(1), len(spec))
  preds = {k: jax.random.normal(kk, shapes[k]) * 2
           for k, kk in zip(spec, keys)}
  steps = 50 if hard else 25
  want = clrs_decoders.postprocess(spec, preds, sinkhorn_temperature=0.1,
                                   sinkhorn_steps=steps, hard=hard)
  got = dec_lib.postprocess(spec, preds, hard=hard, sinkhorn_steps=steps)
  assert got.keys() == want.keys()
  for k in spec:
    assert got[k].shape == want[k].data.shape, k
    assert _max_diff(got[k], want[k].data) < 1e-5, k
  if hard:
    # evaluation-ready: pointers as float indices, permutations one-hot
    assert got['p'].dtype == jnp.float32
    np.testing.assert_array_equal(got['q'].sum(-1), 1.0)


# --- 5. every algorithm trains one step and scores --------------------------

# (algorithm, hint mode) pairs compiled and run by default; together with the
# parity tests above they cover pointer, edge-pointer, categorical, graph-level
# and permutation outputs. Compiling one train step costs 3-6 s on a 2-core
# CPU (about 8 minutes for all 60), so the other pairs are traced only
# (jax.eval_shape of the loss and the predictions: shapes and dtypes) unless
# pytest runs with --all-algorithms.
RUN_PAIRS = (('bfs', 'none'), ('bfs', 'encoded_decoded'),
             ('lcs_length', 'encoded_decoded'),
             ('floyd_warshall', 'encoded_decoded'),
             ('insertion_sort', 'none'))


def _train_step_fn(model, opt):
  def train_step(params, opt_state, batch, key):
    (loss, _), grads = jax.value_and_grad(model.loss, has_aux=True)(
        params, batch, key)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, grads
  return train_step


@pytest.mark.parametrize('hint_mode', ['none', 'encoded_decoded'])
@pytest.mark.parametrize('algorithm', ALGORITHMS)
def test_train_step_and_evaluate(algorithm, hint_mode, data_cfg, request):
  spec = data_lib.processed_spec(algorithm)
  batch = next(data_lib.TrainStream(algorithm, data_cfg, seed=0))
  val = data_lib.load_split(algorithm, 'val', data_cfg, seed=0)
  model = StepwiseNAR(spec, val.batches[0], model_config(hidden=8), hint_mode)
  assert model.output_names == tuple(val.batches[0]['outputs'])
  assert model.hint_names == (
      () if hint_mode == 'none' else tuple(val.batches[0]['hints']))
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
  train_step = _train_step_fn(model, opt)
  key = jax.random.PRNGKey(0)

  if not ((algorithm, hint_mode) in RUN_PAIRS or
          request.config.getoption('--all-algorithms')):
    params = jax.eval_shape(model.init, key, val.batches[0])
    loss, _ = jax.eval_shape(model.loss, params, batch, key)
    assert loss.shape == () and loss.dtype == jnp.float32
    preds, _ = jax.eval_shape(model.predict, params, val.batches[0])
    assert preds.keys() == val.batches[0]['outputs'].keys()
    for k, v in preds.items():
      assert v.shape == val.batches[0]['outputs'][k].shape, k
      assert v.dtype == jnp.float32, k
    return

  params = model.init(key, val.batches[0])
  new, _, loss, grads = jax.jit(train_step)(params, opt.init(params), batch,
                                            jax.random.PRNGKey(1))
  assert np.isfinite(float(loss)) and float(loss) > 0
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
  # gradients reach the processor and every output decoder
  assert float(optax.global_norm(grads['processor'])) > 0
  for name in model.output_names:
    g = {k: v for k, v in grads['decoders'].items()
         if k.startswith(f'{name}_dec_')}
    assert g and float(optax.global_norm(g)) > 0, name
  assert float(optax.global_norm(jax.tree_util.tree_map(
      lambda a, b: a - b, new, params))) > 0

  predict = jax.jit(model.predict)
  preds, _ = predict(new, val.batches[0])
  for k, v in preds.items():
    assert v.shape == val.batches[0]['outputs'][k].shape, k
  result = evaluate(model, predict, new, val)
  assert 0.0 <= result['score'] <= 1.0
  # the truth scores 1 with the same scorer (so the score is not vacuous)
  truth = {k: v.astype(np.float32) for k, v in val.outputs.items()}
  perfect = clrs.evaluate(
      data_lib.datapoints(val.outputs, spec),
      {dp.name: dp for dp in data_lib.datapoints(truth, spec)})
  assert perfect['score'] == pytest.approx(1.0)


# --- 6. output freeze ---------------------------------------------------------

def _take(batch, i, t):
  return dict(inputs={k: v[i:i + 1] for k, v in batch['inputs'].items()},
              hints={k: v[:t, i:i + 1] for k, v in batch['hints'].items()},
              outputs={k: v[i:i + 1] for k, v in batch['outputs'].items()},
              lengths=batch['lengths'][i:i + 1])


def test_finished_samples_are_frozen(hint_mode='none'):
  """A sample's outputs do not change in the padded steps after its length:
  batched (padded to T) == alone with T padding == alone with T = length."""
  cfg = tiny_data_config('/nonexistent', train_sizes=(6,), batch_size=4)
  spec = data_lib.processed_spec('bfs')
  stream = data_lib.TrainStream('bfs', cfg, seed=3)
  batch = next(stream)
  while len(set(batch['lengths'].tolist())) < 3:
    batch = next(stream)
  t = data_lib.num_steps(batch)
  lengths = batch['lengths']
  assert lengths.min() < t
  model = StepwiseNAR(spec, batch, model_config(hidden=16), hint_mode)
  params = model.init(jax.random.PRNGKey(0), batch)
  forward = jax.jit(lambda p, b: model.forward(
      p, b, training=False, key=jax.random.PRNGKey(0))[0]['pi'])
  batched = forward(params, batch)
  changed = 0
  for i in range(len(lengths)):
    alone_padded = forward(params, _take(batch, i, t))
    alone_exact = forward(params, _take(batch, i, int(lengths[i])))
    assert _max_diff(batched[i], alone_padded[0]) < 1e-5
    assert _max_diff(batched[i], alone_exact[0]) < 1e-5, (i, lengths[i], t)
    # Without the freeze (length = T) the padded steps would change it.
    unfrozen = dict(_take(batch, i, t), lengths=np.array([t], np.int32))
    changed += _max_diff(forward(params, unfrozen)[0], batched[i]) > 1e-4
  assert changed >= 1
