"""The equilibrium reasoner: gradients, memory, statistics."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from dear_jax import batches as batch_lib
from dear_jax import (clrs_lib, diagnostics, factory, input_pipeline, losses,
                      solver, splits, train)


@pytest.fixture(scope='module')
def bfs_batch(tmp_path_factory):
  config = tiny_config(tmp_path_factory.mktemp('cache'), 'dear')
  stream = input_pipeline.TrainStream('bfs', train.data_config(config), seed=0,
                                      keep_hints=False)
  return config, next(stream)


def _model(config, batch, **dear):
  config = config.copy_and_resolve_references()
  config.model.hidden = 8
  for k, v in dear.items():
    config.dear[k] = v
  return factory.build_model(config, clrs_lib.processed_spec('bfs'), batch)


def test_ift_gradient_of_whole_model_matches_unrolled(bfs_batch):
  config, batch = bfs_batch
  model = _model(config, batch, grad='ift', method='fixed_point', tol=1e-5, jac_reg_weight=0.0,
                 tol_mode='abs', max_iter_train=3000, max_iter_eval=3000,
                 backward_tol=1e-7, backward_max_iter=60)
  params = model.init(jax.random.PRNGKey(3), batch)
  # A random processor need not be contractive in h; weaken every kernel's
  # rows that read h (z = [x, h]) so that the fixed point exists.
  h = model.hidden
  params['processor'] = jax.tree_util.tree_map(
      lambda w: w.at[h:].multiply(0.01) if w.ndim == 2 and w.shape[0] == 2 * h
      else w, params['processor'])
  key = jax.random.PRNGKey(0)

  def unrolled_loss(params):
    """Independent reference: plain iteration of the processor, then decode."""
    n = batch_lib.num_nodes(batch)
    node, edge, graph, adj = model.encode(params, batch['inputs'], n)
    adj = model.adjacency(batch, adj)
    h = jnp.zeros_like(node)
    step = lambda _, h: model.process(params['processor'], node, edge, graph,
                                      adj, h, triplets=False)[0]
    h = jax.lax.fori_loop(0, 4000, step, h)
    h_new, tri = model.process(params['processor'], node, edge, graph, adj, h)
    outs, _ = model.decode(params, node, h, h_new, edge, tri, graph, True, key)
    return losses.total_loss(model.spec, batch, outs)

  (loss, aux), g_ift = jax.jit(jax.value_and_grad(model.loss, has_aux=True))(
      params, batch, key)
  assert bool(aux['solver'].converged.all())
  loss_ref, g_ref = jax.jit(jax.value_and_grad(unrolled_loss))(params)
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-4)
  flat_ift = jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(g_ift)])
  flat_ref = jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(g_ref)])
  rel = float(jnp.linalg.norm(flat_ift - flat_ref) / jnp.linalg.norm(flat_ref))
  assert rel <= 1e-3, rel
  # The processor's own gradient is where IFT differs from a 1-step gradient.
  p_ift = jax.tree_util.tree_leaves(g_ift['processor'])
  p_ref = jax.tree_util.tree_leaves(g_ref['processor'])
  for a, b in zip(p_ift, p_ref):
    np.testing.assert_allclose(a, b, atol=1e-5 + 1e-3 * float(jnp.abs(b).max()))


def _train_step_memory(model, params, batch):
  def step(params):
    return jax.grad(lambda p: model.loss(p, batch, jax.random.PRNGKey(0))[0])(
        params)
  mem = jax.jit(step).lower(params).compile().memory_analysis()
  return mem.temp_size_in_bytes


def test_ift_train_step_memory_does_not_grow_with_iteration_cap(bfs_batch):
  config, batch = bfs_batch
  sizes = []
  for cap in (10, 100):
    model = _model(config, batch, grad='ift', max_iter_train=cap)
    params = model.init(jax.random.PRNGKey(0), batch)
    sizes.append(_train_step_memory(model, params, batch))
  assert sizes[0] > 0
  assert abs(sizes[1] - sizes[0]) <= 0.1 * sizes[0], sizes


def _grads(model, params, batch, key):
  return jax.jit(jax.grad(lambda p: model.loss(p, batch, key)[0]))(params)


def _flat(tree):
  return jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(tree)])


def test_jfb_gradient_is_one_processor_step_at_the_detached_fixed_point(bfs_batch):
  """JFB = the gradient through one explicit processor call at stop_gradient(h*),
  and it is not the implicit gradient."""
  config, batch = bfs_batch
  model = _model(config, batch, grad='jfb', jac_reg_weight=0.0)
  params = model.init(jax.random.PRNGKey(0), batch)
  key = jax.random.PRNGKey(0)

  def one_step_loss(p):
    f, h0, args = model.equilibrium(p, batch, training=True, key=key)
    node, edge, graph, adj, _ = args
    h_star, _ = solver.solve(f, h0, p['processor'], args, config=model.solver_cfg,
                             training=True)
    h_star = jax.lax.stop_gradient(h_star)
    h_new, tri = model.process(p['processor'], node, edge, graph, adj, h_star)
    outs, _ = model.decode(p, node, h_star, h_new, edge, tri, graph, True,
                           jax.random.fold_in(key, 2))
    return losses.total_loss(model.spec, batch, outs)

  g_jfb = _flat(_grads(model, params, batch, key))
  g_ref = _flat(jax.jit(jax.grad(one_step_loss))(params))
  np.testing.assert_allclose(g_jfb, g_ref, rtol=1e-4,
                             atol=1e-6 * float(jnp.abs(g_ref).max()))
  g_ift = _flat(_grads(_model(config, batch, grad='ift', jac_reg_weight=0.0), params, batch,
                       key))
  assert float(jnp.linalg.norm(g_ift - g_jfb) / jnp.linalg.norm(g_ift)) > 1e-2


@pytest.mark.parametrize('dear', [dict(grad='phantom'), dict(method='broyden'),
                                  dict(method='fixed_point', damping=0.5)])
def test_other_gradients_and_solvers_train(bfs_batch, dear):
  """Phantom gradients and the Broyden / damped-Picard solvers in the whole model:
  finite loss and gradients, statistics per graph, and a gradient that differs
  from the default's (the option is really used)."""
  config, batch = bfs_batch
  params = _model(config, batch).init(jax.random.PRNGKey(0), batch)
  key = jax.random.PRNGKey(0)
  model = _model(config, batch, **dear)
  (loss, aux), g = jax.jit(jax.value_and_grad(model.loss, has_aux=True))(params, batch, key)
  assert np.isfinite(float(loss)) and bool(jnp.isfinite(_flat(g)).all())
  assert aux['solver'].iterations.shape == (batch['lengths'].shape[0],)
  g_default = _flat(_grads(_model(config, batch), params, batch, key))
  assert not np.allclose(_flat(g), g_default, rtol=1e-3)


def test_jacobian_regularisation_adds_exactly_its_term_in_training_only(bfs_batch):
  config, batch = bfs_batch
  w = 10.0
  plain = _model(config, batch, jac_reg_weight=0.0)
  reg = _model(config, batch, jac_reg_weight=w)
  params = plain.init(jax.random.PRNGKey(0), batch)
  key = jax.random.PRNGKey(0)
  l0, _ = plain.loss(params, batch, key)
  l1, _ = reg.loss(params, batch, key)
  # the term: weight * Hutchinson ||v^T J_f(P(h*))||^2 / size, v drawn from fold_in(key, 3)
  f, h0, args = plain.equilibrium(params, batch, training=True, key=key)
  h_star, _ = solver.solve(f, h0, params['processor'], args, config=plain.solver_cfg,
                           training=True)
  node, edge, graph, adj, _ = args
  h_new, _ = plain.process(params['processor'], node, edge, graph, adj, h_star)
  v = jax.random.normal(jax.random.fold_in(key, 3), h_new.shape)
  _, vjp = jax.vjp(lambda h: jax.vmap(lambda hg, a: f(hg, params['processor'], *a))(
      h, tuple(args)), h_new)
  u = vjp(v)[0]
  want = w * float(jnp.sum(u * u)) / h_new.size
  assert want > 1e-3
  np.testing.assert_allclose(float(l1) - float(l0), want, rtol=1e-3)
  # evaluation never adds it: same predictions, no penalty in aux
  p0, _ = plain.predict(params, batch)
  p1, aux1 = reg.predict(params, batch)
  assert 'penalty' not in aux1
  for k in p0:
    np.testing.assert_array_equal(p0[k], p1[k])


@pytest.mark.parametrize('field', ['state_noise', 'init_state_std'])
def test_training_perturbations_leave_evaluation_alone(bfs_batch, field):
  """state_noise perturbs f, init_state_std the solve's start; both in training
  only: the training loss moves, evaluation does not."""
  config, batch = bfs_batch
  plain = _model(config, batch)
  noisy = _model(config, batch, **{field: 0.5})
  params = plain.init(jax.random.PRNGKey(0), batch)
  key = jax.random.PRNGKey(1)
  assert float(plain.loss(params, batch, key)[0]) != float(noisy.loss(params, batch, key)[0])
  p0, a0 = plain.predict(params, batch)
  p1, a1 = noisy.predict(params, batch)
  for k in p0:
    np.testing.assert_array_equal(p0[k], p1[k])
  np.testing.assert_array_equal(a0['solver'].iterations, a1['solver'].iterations)
  f, h0, _ = noisy.equilibrium(params, batch, training=True, key=key)
  assert (float(jnp.abs(h0).max()) > 0) == (field == 'init_state_std')


def test_gate_bias_reaches_the_processor(bfs_batch):
  config, batch = bfs_batch
  for bias in (-3.0, 0.0):
    params = _model(config, batch, gate_bias=bias).init(jax.random.PRNGKey(0), batch)
    np.testing.assert_array_equal(params['processor']['gate3']['bias'], bias)


def test_fixed_point_check_measures_distance_to_the_fixed_point(bfs_batch):
  """A loose solve (rel 0.5) is far from H*; a tight one (rel 1e-4) is close,
  measured against reference solves to rel 1e-5 (float32's reach). The model is
  made contractive (h-reading rows x 0.01; at x 0.05 one graph of this batch
  cycles between max-aggregation regions and never converges)."""
  config, batch = bfs_batch
  model = _model(config, batch, method='fixed_point')
  params = model.init(jax.random.PRNGKey(3), batch)
  h = model.hidden
  params['processor'] = jax.tree_util.tree_map(
      lambda w: w.at[h:].multiply(0.01) if w.ndim == 2 and w.shape[0] == 2 * h else w,
      params['processor'])
  evalset = splits.EvalSet(batches=[batch], num_samples=batch['lengths'].shape[0],
                           outputs=batch['outputs'], lengths=batch['lengths'],
                           spec=model.spec, key='')
  settings = diagnostics.CheckSettings(ref_tol=1e-5, ref_cap=300)
  loose = diagnostics.checks(model.with_solver(tol=0.5), params, evalset, train.evaluate,
                             settings=settings)
  tight = diagnostics.checks(model.with_solver(tol=1e-4, max_iter_eval=300),
                             params, evalset, train.evaluate, settings=settings)
  for check in (loose, tight):
    assert check['fixed_point_reference']['converged_fraction'] == 1.0
  assert loose['fixed_point_distance_mean'] > 1e-2 > 1e-3 > tight['fixed_point_distance_mean']
  # a map squeezed this much contracts: its spectral radius is below 1
  assert 0 < tight['spectral_radius_mean'] < 0.9   # (1 - gate) h alone gives ~0.5
  sbt = diagnostics.checks(model, params, evalset, train.evaluate, settings=settings)
  assert list(sbt['score_by_tol']) == ['0.001', '0.0001', '1e-05']
  assert sbt['score_by_tol']['0.001'] == train.evaluate(
      model, jax.jit(model.predict), params, evalset)['score']
  assert sbt['score_by_tol_spread'] == 100 * (max(sbt['score_by_tol'].values())
                                             - min(sbt['score_by_tol'].values()))


def test_checks_on_the_first_graphs_are_those_graphs_checks(tmp_path):
  """EvalSet.head(k): the first k graphs of a split (k not a multiple of the
  batch size), and the fixed-point check on them gives exactly the first k
  per-graph distances of the check on the whole split."""
  config = tiny_config(tmp_path / 'cache', 'dear')
  config.data.test_num_samples = 10
  config.data.eval_batch_size = 4
  test = splits.load_split('bfs', 'test', train.data_config(config),
                           keep_hints=False)
  head = test.head(6)
  assert (head.num_samples, len(head.batches)) == (6, 2)
  np.testing.assert_array_equal(head.lengths, test.lengths[:6])
  for k, v in head.outputs.items():
    np.testing.assert_array_equal(v, test.outputs[k][:6])
  assert test.head(0) is test and test.head(10) is test
  model = factory.build_model(config, test.spec, test.batches[0])
  params = model.init(jax.random.PRNGKey(0), test.batches[0])
  settings = diagnostics.CheckSettings(ref_cap=50, power_iters=3)
  full = diagnostics.checks(model, params, test, train.evaluate,
                            settings=settings)
  part = diagnostics.checks(model, params, head, train.evaluate,
                            settings=settings)
  assert len(part['fixed_point_distance']) == 6
  np.testing.assert_allclose(part['fixed_point_distance'],
                             full['fixed_point_distance'][:6], rtol=1e-6)
  # ... and a run checks only those: results.json holds one distance per
  # checked graph, its test score still covers every graph.
  config.train.steps = 1
  config.dear.check_graphs = 6
  r = train.train_and_evaluate(config, str(tmp_path / 'run'), 'bfs',
                               progress=False)
  assert r['test_graphs'] == 10 and len(r['fixed_point_distance']) == 6
  assert len(r['solver_iterations']) == 10 and len(r['score_by_tol']) == 3


def test_eval_cap_and_stats_are_reported(bfs_batch):
  config, batch = bfs_batch
  model = _model(config, batch, max_iter_eval=2, tol=1e-9)
  params = model.init(jax.random.PRNGKey(0), batch)
  _, aux = model.predict(params, batch)
  stats = aux['solver']
  assert int(stats.iterations.max()) == 2
  assert not bool(stats.converged.any())  # never silent about non-convergence
  assert stats.result.tolist() == [solver.MAX_ITER] * len(stats.result)


def test_dear_run_resumes_exactly(tmp_path):
  """A DEAR run killed after its step-4 checkpoint ends as the uninterrupted one."""
  config = tiny_config(tmp_path / 'cache', 'dear')
  config.dear.diagnostics = False
  full = train.train_and_evaluate(config, str(tmp_path / 'a'), 'bfs', False)
  shutil.copytree(tmp_path / 'a', tmp_path / 'b')
  shutil.rmtree(tmp_path / 'b' / 'checkpoints' / '6')
  (tmp_path / 'b' / 'results.json').unlink()
  again = train.train_and_evaluate(config, str(tmp_path / 'b'), 'bfs', False)
  assert again['loss_curve'] == full['loss_curve']
  assert again['val_curve'] == full['val_curve']
  assert again['test_score'] == full['test_score']
  assert again['solver_iterations'] == full['solver_iterations']


def test_spectral_norm_bounds_every_kernel_and_reaches_the_solve(bfs_batch):
  config, batch = bfs_batch
  plain = _model(config, batch)
  normed = _model(config, batch, spectral_norm=True)
  params = plain.init(jax.random.PRNGKey(0), batch)
  kernels = {jax.tree_util.keystr(p): np.asarray(w) for p, w in
             jax.tree_util.tree_leaves_with_path(params['processor'])
             if p[-1].key == 'kernel'}
  # Independent reference: numpy's SVD, each kernel shrunk to sigma_max 1.
  sigmas = {k: np.linalg.svd(w, compute_uv=False)[0] for k, w in kernels.items()}
  assert max(sigmas.values()) > 1.5  # the init stretches: the option acts
  want = {k: w / max(1.0, sigmas[k]) for k, w in kernels.items()}
  from dear_jax.dear import spectrally_normalised
  got = spectrally_normalised(params['processor'])
  for p, w in jax.tree_util.tree_leaves_with_path(got):
    k = jax.tree_util.keystr(p)
    if k in want:
      np.testing.assert_allclose(w, want[k], rtol=1e-4, atol=1e-6)
      assert np.linalg.svd(np.asarray(w), compute_uv=False)[0] <= 1 + 1e-4
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda a, b: bool(jnp.array_equal(a, b)) or a.ndim == 2,
      got, params['processor']))  # biases, LayerNorm untouched
  # The model's map uses the normalised kernels; the plain one does not.
  n = batch_lib.num_nodes(batch)
  node, edge, graph, adj = plain.encode(params, batch['inputs'], n)
  h = 0.5 * jnp.ones_like(node)
  ref = dict(params, processor=got)
  out = normed.process(params['processor'], node, edge, graph, adj, h)[0]
  np.testing.assert_allclose(
      out, plain.process(ref['processor'], node, edge, graph, adj, h)[0],
      rtol=1e-5, atol=1e-6)
  assert not np.allclose(
      out, plain.process(params['processor'], node, edge, graph, adj, h)[0])
  # It trains: finite loss and gradients through sigma_max.
  (loss, _), g = jax.jit(jax.value_and_grad(normed.loss, has_aux=True))(
      params, batch, jax.random.PRNGKey(1))
  assert np.isfinite(float(loss))
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(g))
