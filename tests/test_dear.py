"""The equilibrium reasoner: gradients, memory, statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dear_jax import data, losses, train
from tests.test_train import tiny_config


@pytest.fixture(scope='module')
def bfs_batch(tmp_path_factory):
  config = tiny_config(tmp_path_factory.mktemp('cache'), 'dear')
  stream = data.TrainStream('bfs', train.data_config(config), seed=0,
                            keep_hints=False)
  return config, next(stream)


def _model(config, batch, **dear):
  config = config.copy_and_resolve_references()
  config.model.hidden = 8
  for k, v in dear.items():
    config.dear[k] = v
  return train.build_model(config, data.processed_spec('bfs'), batch)


def test_ift_gradient_of_whole_model_matches_unrolled(bfs_batch):
  config, batch = bfs_batch
  model = _model(config, batch, grad='ift', method='fixed_point', tol=1e-5,
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
    n = data.num_nodes(batch)
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


def test_jfb_gradient_reaches_processor_through_final_step_only(bfs_batch):
  config, batch = bfs_batch
  model = _model(config, batch, grad='jfb')
  params = model.init(jax.random.PRNGKey(0), batch)
  grads, aux = jax.grad(model.loss, has_aux=True)(params, batch,
                                                   jax.random.PRNGKey(0))
  norms = {k: float(jnp.sqrt(sum(jnp.sum(x ** 2) for x in
                                 jax.tree_util.tree_leaves(v))))
           for k, v in grads.items()}
  assert all(np.isfinite(v) and v > 0 for v in norms.values()), norms
  assert aux['solver'].iterations.shape == (batch['lengths'].shape[0],)


def test_jacobian_regularisation_adds_to_training_loss(bfs_batch):
  config, batch = bfs_batch
  plain = _model(config, batch)
  reg = _model(config, batch, jac_reg_weight=10.0)
  params = plain.init(jax.random.PRNGKey(0), batch)
  key = jax.random.PRNGKey(0)
  l0, _ = plain.loss(params, batch, key)
  l1, _ = reg.loss(params, batch, key)
  assert float(l1) > float(l0)


def test_eval_cap_and_stats_are_reported(bfs_batch):
  config, batch = bfs_batch
  model = _model(config, batch, max_iter_eval=2, tol=1e-9)
  params = model.init(jax.random.PRNGKey(0), batch)
  _, aux = model.predict(params, batch)
  stats = aux['solver']
  assert int(stats.iterations.max()) == 2
  assert not bool(stats.converged.any())  # never silent about non-convergence
