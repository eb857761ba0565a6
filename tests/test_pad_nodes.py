"""data.pad_nodes: a padded training batch gives the loss, gradients and
predictions of the same graphs unpadded (the unpadded computation is the
reference), and a run compiles one train step."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import count_loss_traces, tiny_config
from dear_jax import batches as batch_lib
from dear_jax import clrs_lib, factory, input_pipeline, run, run_config, train

PAD = 8  # the tiny config's graphs have 5 nodes

# Each model kind: (model_kind, processor, hint_mode).
MODELS = {
    'dear': ('dear', 'triplet_gmpnn', None),
    'dear_gmpnn': ('dear', 'gmpnn', None),
    'nar_nohint': ('nar', 'triplet_gmpnn', 'none'),
    'nar_hints': ('nar', 'triplet_gmpnn', 'encoded_decoded'),
}
# BFS: an adjacency, node pointers out. minimum: no adjacency (all pairs),
# a node mask_one out. dag_shortest_paths: graph-level hints (the decoders'
# max over nodes). floyd_warshall: edge pointers out (and in, as hints).
ALGORITHMS = ('bfs', 'minimum', 'dag_shortest_paths', 'floyd_warshall')


def _config(cache_dir, which, **dear):
  kind, processor, hint_mode = MODELS[which]
  config = tiny_config(cache_dir, kind)
  config.model.hidden = 8
  config.model.processor = processor
  if hint_mode is not None:
    config.nar.hint_mode = hint_mode
  for k, v in dear.items():
    config.dear[k] = v
  return config


def _setup(cache_dir, which, algorithm, **dear):
  config = _config(cache_dir, which, **dear)
  spec = clrs_lib.processed_spec(algorithm)
  stream = input_pipeline.TrainStream(algorithm, train.data_config(config),
                                      seed=1, keep_hints=kind_keeps_hints(config))
  batch = next(stream)
  model = factory.build_model(config, spec, batch)
  params = model.init(jax.random.PRNGKey(2), batch)
  if config.model_kind == 'dear':
    # A random processor need not contract in h, and then the implicit
    # gradient of an unconverged solve changes by its own size under a
    # 1e-6 change of the parameters: weaken the kernel rows that read h
    # (z = [x, h]) so that every solve converges.
    h = model.hidden
    params['processor'] = jax.tree_util.tree_map(
        lambda w: w.at[h:].multiply(0.1) if w.ndim == 2 and w.shape[0] == 2 * h
        else w, params['processor'])
  return model, params, batch, _garbage(batch_lib.pad_nodes(batch, spec, PAD),
                                        batch, spec)


def _garbage(padded, batch, spec):
  """`padded` with random values on every padded position (pointers to
  any node): the node mask, not zeros, must keep them out."""
  ones = jax.tree_util.tree_map(np.ones_like, batch)
  real = batch_lib.pad_nodes(ones, spec, PAD)
  rng = np.random.default_rng(0)

  def fill(x, r):
    if x.dtype == np.int32:
      noise = rng.integers(0, PAD, x.shape).astype(np.int32)
    else:
      noise = rng.normal(size=x.shape).astype(x.dtype)
    return np.where(r != 0, x, noise)

  out = {g: {k: fill(v, real[g][k]) for k, v in padded[g].items()}
         for g in ('inputs', 'hints', 'outputs')}
  return dict(padded, **out)


def kind_keeps_hints(config) -> bool:
  return factory.uses_hints(config)


def _loss_and_grad(model, params, batch):
  fn = jax.jit(jax.value_and_grad(
      lambda p, b: model.loss(p, b, jax.random.PRNGKey(4)), has_aux=True))
  (loss, aux), grad = fn(params, batch)
  if 'solver' in aux:  # DEAR: every solve converged
    assert np.asarray(aux['solver'].converged).all()
  return loss, grad


def _close(got, want, rtol, atol, scale=0.0):
  """Leaf by leaf; `scale`: atol at least that share of the leaf's largest."""
  for g, w in zip(jax.tree_util.tree_leaves(got),
                  jax.tree_util.tree_leaves(want)):
    w = np.asarray(w)
    np.testing.assert_allclose(
        np.asarray(g), w, rtol=rtol,
        atol=max(atol, scale * float(np.abs(w).max(initial=0.0))))


def test_pad_nodes_pads_every_axis_and_marks_real_nodes():
  spec = clrs_lib.processed_spec('floyd_warshall')
  batch = dict(inputs={'A': np.ones((2, 3, 3), np.float32),
                       'pos': np.ones((2, 3), np.float32)},
               hints={'Pi_h': np.ones((4, 2, 3, 3), np.int32)},
               outputs={'Pi': np.ones((2, 3, 3), np.int32)},
               lengths=np.array([3, 4], np.int32))
  out = batch_lib.pad_nodes(batch, spec, 5)
  assert out['inputs']['A'].shape == (2, 5, 5)
  assert out['inputs']['pos'].shape == (2, 5)
  assert out['hints']['Pi_h'].shape == (4, 2, 5, 5)
  assert out['outputs']['Pi'].dtype == np.int32
  assert out['inputs']['A'][:, :3, :3].all() and not out['inputs']['A'][:, 3:].any()
  np.testing.assert_array_equal(out['node_mask'],
                                [[1, 1, 1, 0, 0]] * 2)
  with pytest.raises(ValueError, match='cannot pad'):
    batch_lib.pad_nodes(batch, spec, 2)


# A covering set of (model, algorithm) pairs, not the whole product: every
# model kind, every algorithm, DEAR on all-pairs, adjacency and edge-pointer
# data, and hints decoded at the graph level (dag_shortest_paths).
LOSS_CASES = (('dear', 'floyd_warshall'), ('dear', 'minimum'),
              ('dear_gmpnn', 'bfs'), ('dear_gmpnn', 'dag_shortest_paths'),
              ('nar_nohint', 'floyd_warshall'),
              ('nar_hints', 'dag_shortest_paths'))
assert {w for w, _ in LOSS_CASES} == set(MODELS)
assert {a for _, a in LOSS_CASES} == set(ALGORITHMS)


@pytest.mark.parametrize('which,algorithm', LOSS_CASES)
def test_padded_loss_and_gradients_equal_unpadded(cache_dir, which, algorithm):
  """Against the unpadded batch itself: no node mask anywhere in the
  reference. DEAR's Hutchinson penalty draws per node on a padded batch,
  so it is off here (see the next test)."""
  # (A cap that lets Floyd-Warshall's random-init solves converge.)
  extra = (dict(jac_reg_weight=0.0, max_iter_train=300)
           if which.startswith('dear') else {})
  model, params, batch, padded = _setup(cache_dir, which, algorithm, **extra)
  loss, grad = _loss_and_grad(model, params, batch)
  p_loss, p_grad = _loss_and_grad(model, params, padded)
  assert np.isfinite(float(loss))
  np.testing.assert_allclose(float(p_loss), float(loss), rtol=2e-5)
  # DEAR's solves stop at a tolerance, and padding changes the summation
  # order and so where they stop: on an AMD EPYC (family 26) Floyd-Warshall's
  # gradient entries moved by up to 0.6 % of their leaf's largest; a leak of
  # the random padded values moves them by the leaf's own scale.
  _close(p_grad, grad, rtol=2e-3, atol=2e-5,
         scale=1e-2 if which.startswith('dear') else 0.0)


@pytest.mark.parametrize('which', ['dear', 'dear_gmpnn'])
def test_padded_dear_default_loss_equals_unpadded_with_its_mask(cache_dir,
                                                                which):
  """The default config, penalty on: the same graphs unpadded, marked all
  real, draw the same Hutchinson vectors (per node), so the whole loss and
  its gradients agree; and the penalty is not zero."""
  model, params, batch, padded = _setup(cache_dir, which, 'bfs')
  assert model.jac_reg_weight > 0
  marked = dict(batch, node_mask=np.ones(padded['node_mask'].shape[:1] +
                                         (batch_lib.num_nodes(batch),), bool))
  loss, grad = _loss_and_grad(model, params, marked)
  p_loss, p_grad = _loss_and_grad(model, params, padded)
  np.testing.assert_allclose(float(p_loss), float(loss), rtol=2e-5)
  _close(p_grad, grad, rtol=2e-3, atol=2e-5)
  off = model.__class__.__new__(model.__class__)
  off.__dict__.update(model.__dict__, jac_reg_weight=0.0)
  assert float(p_loss) > float(_loss_and_grad(off, params, padded)[0]) + 1e-6


@pytest.mark.parametrize('which,algorithm', [
    ('dear', 'bfs'), ('dear', 'floyd_warshall'), ('dear_gmpnn', 'minimum'),
    ('nar_nohint', 'bfs'), ('nar_nohint', 'floyd_warshall')])
def test_padded_predictions_on_real_nodes_equal_unpadded(cache_dir, which,
                                                         algorithm):
  model, params, batch, padded = _setup(cache_dir, which, algorithm)
  n = batch_lib.num_nodes(batch)
  want, _ = jax.jit(model.predict)(params, batch)
  got, _ = jax.jit(model.predict)(params, padded)
  spec = clrs_lib.processed_spec(algorithm)
  for name, w in want.items():
    g = np.asarray(got[name])
    loc = spec[name][1]
    if loc == 'node':
      g = g[:, :n]
    elif loc == 'edge':
      g = g[:, :n, :n]
    if spec[name][2] == 'pointer' or g.shape[-1] == PAD:
      g = g[..., :n] if g.shape[-1] == PAD else g
    np.testing.assert_allclose(g, np.asarray(w), rtol=1e-5, atol=1e-5)


def _count_traces(cache_dir, kind, pad_nodes, steps=10):
  """Train-step traces over `steps` batches of sizes 4 and 5."""
  config = tiny_config(cache_dir, kind)
  config.model.hidden = 8
  config.data.train_sizes = (4, 5)
  config.data.pad_nodes = pad_nodes
  stream = input_pipeline.TrainStream('bfs', train.data_config(config),
                                      seed=0, keep_hints=kind == 'nar')
  first = next(stream)
  model = factory.build_model(config, clrs_lib.processed_spec('bfs'), first)
  traces = count_loss_traces(model)
  optimizer = train.make_optimizer(config)
  step = train.make_train_step(model, optimizer)
  params = model.init(jax.random.PRNGKey(0), first)
  opt_state = optimizer.init(params)
  batch = first
  sizes = set()
  for i in range(steps):
    sizes.add(batch_lib.num_nodes(batch))
    params, opt_state, _, _ = step(params, opt_state, batch,
                                   jax.random.PRNGKey(i))
    batch = next(stream)
  return len(traces), sizes


def test_dear_with_pad_nodes_traces_one_train_step(cache_dir):
  # (Unpadded, the same stream compiles two: the next test's run shows it.)
  assert _count_traces(cache_dir, 'dear', True) == (1, {5})


def test_a_run_with_pad_nodes_compiles_one_train_step(tmp_path, cache_dir):
  results = {}
  for pad in (True, False):
    config = tiny_config(cache_dir, 'dear', steps=4)
    config.model.hidden = 8
    config.data.train_sizes = (4, 5)
    config.data.pad_nodes = pad
    config.dear.diagnostics = False
    config.train.eval_every = 4
    results[pad] = train.train_and_evaluate(
        config, str(tmp_path / str(pad)), 'bfs', progress=False)
  assert results[True]['compile_steps'] == 1
  assert results[False]['compile_steps'] == 2
  assert np.isfinite(results[True]['test_score'])


def test_recorded_stream_stores_unpadded_batches(tmp_path, cache_dir):
  """The recorded batches are the live stream's, unpadded (their cache key
  does not hold pad_nodes); a padded run pads them as it reads them."""
  cfg = train.data_config(tiny_config(tmp_path, 'dear'))
  cfg = input_pipeline.DataConfig.from_section(
      dict(cfg.to_dict(), train_sizes=(4, 5), pad_nodes=True,
           cache_dir=str(tmp_path)))
  live = input_pipeline.TrainStream('bfs', cfg, seed=3, keep_hints=False)
  recorded = input_pipeline.RecordedStream('bfs', cfg, seed=3,
                                           keep_hints=False)
  for _ in range(3):
    a, b = next(live), next(recorded)
    assert a['node_mask'].shape == (2, 5)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
      np.testing.assert_array_equal(x, y)
  files = sorted(os.listdir(recorded._dir))  # pylint: disable=protected-access
  first = batch_lib.load(os.path.join(recorded._dir, '0.npz'))  # pylint: disable=protected-access
  assert 'node_mask' not in first and batch_lib.num_nodes(first) == 4, files


@pytest.mark.parametrize('key,value,named', [
    ('dear.cgp', True, 'dear.cgp'),
    ('dear.align_weight', 0.1, 'dear.align_weight'),
    ('dear.state_noise', 0.1, 'dear.state_noise'),
    ('dear.init_state_std', 0.1, 'dear.init_state_std'),
    ('train.data_parallel', True, 'train.data_parallel'),
])
def test_pad_nodes_refuses_what_the_mask_does_not_reach(cache_dir, key, value,
                                                         named):
  config = tiny_config(cache_dir, 'dear')
  config.data.pad_nodes = True
  section, name = key.split('.')
  config[section][name] = value
  with pytest.raises(ValueError, match=f'data.pad_nodes=True does not '
                                       f'support {named}') as e:
    run_config.check_pad_nodes(run_config.typed(config))
  assert '\n' not in str(e.value)
  config.data.pad_nodes = False
  run_config.check_pad_nodes(run_config.typed(config))  # no error


def test_pad_nodes_refuses_learnt_termination_and_permutations(cache_dir):
  config = tiny_config(cache_dir, 'nar')
  config.data.pad_nodes = True
  config.nar.hint_mode = 'none'
  run_config.check_pad_nodes(run_config.typed(config),
                             clrs_lib.processed_spec('bfs'))
  with pytest.raises(ValueError, match='permutation pointers'):
    run_config.check_pad_nodes(run_config.typed(config),
                               clrs_lib.processed_spec('insertion_sort'))
  config.nar.learn_termination = True
  with pytest.raises(ValueError, match='nar.learn_termination'):
    run_config.check_pad_nodes(run_config.typed(config))


@pytest.mark.parametrize('algorithm,flags', [
    ('bfs', ['--config.dear.cgp=True']), ('insertion_sort', [])])
def test_cli_refuses_pad_nodes_exit_2_writing_nothing(tmp_path, capsys,
                                                      algorithm, flags):
  with pytest.raises(SystemExit) as e:
    run.main(['run', f'--algorithm={algorithm}', f'--workdir={tmp_path / "w"}',
              '--config.data.pad_nodes=True', '--noprogress'] + flags)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: data.pad_nodes=True')
  assert not (tmp_path / 'w').exists()
