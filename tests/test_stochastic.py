"""DEAR's stochastic extra iterations (dear.stochastic_alpha)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from dear_jax import clrs_lib, factory, input_pipeline, train
from dear_jax.dear import extra_steps


def test_extra_step_count_is_dear_geometric_law():
  """A counter map h -> h + 1 counts the steps each graph took; their law is
  P(K = k) = alpha^k (1 - alpha) below the cap, alpha^cap at it."""
  alpha, cap, graphs = 0.6, 4, 40000
  h0 = jnp.zeros((graphs, 1))
  h, k = jax.jit(lambda h, key: extra_steps(lambda x: x + 1, h, key, alpha,
                                            cap))(h0, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(np.asarray(h[:, 0]), np.asarray(k))
  freq = np.bincount(np.asarray(k), minlength=cap + 1) / graphs
  want = np.array([alpha**j * (1 - alpha) for j in range(cap)] + [alpha**cap])
  sigma = np.sqrt(want * (1 - want) / graphs)
  assert np.all(np.abs(freq - want) < 5 * sigma), (freq, want)


def test_extra_steps_carry_gradient():
  """h -> a h, K_b times: d h_b / d a = K_b a^(K_b - 1) h0_b."""
  a, h0 = 1.3, jnp.arange(1.0, 9.0)[:, None]
  key = jax.random.PRNGKey(3)
  _, k = extra_steps(lambda x: a * x, h0, key, 0.7, 5)
  assert len(set(np.asarray(k).tolist())) > 2
  grad = jax.grad(lambda a: jnp.sum(
      extra_steps(lambda x: a * x, h0, key, 0.7, 5)[0]))(a)
  k = np.asarray(k, np.float64)
  want = np.sum(k * a ** np.maximum(k - 1, 0) * np.asarray(h0[:, 0]))
  np.testing.assert_allclose(float(grad), want, rtol=1e-5)


@pytest.fixture(scope='module')
def bfs(tmp_path_factory):
  config = tiny_config(tmp_path_factory.mktemp('cache'), 'dear')
  config.model.hidden = 8
  batch = next(input_pipeline.TrainStream('bfs', train.data_config(config), seed=0,
                                          keep_hints=False))
  return config, batch


def _model(config, batch, **dear):
  config = config.copy_and_resolve_references()
  config.dear.update(dear)
  return factory.build_model(config, clrs_lib.processed_spec('bfs'), batch)


def test_training_differs_evaluation_does_not(bfs):
  config, batch = bfs
  cheap = dict(grad='jfb', jac_reg_weight=0.0)
  plain = _model(config, batch, **cheap)
  stoch = _model(config, batch, stochastic_alpha=0.9, **cheap)
  params = plain.init(jax.random.PRNGKey(0), batch)
  key = jax.random.PRNGKey(1)
  flat = lambda t: jnp.concatenate([x.ravel() for x in
                                    jax.tree_util.tree_leaves(t)])

  def train_step(model):  # compiled: no host decision per step
    return jax.jit(jax.value_and_grad(
        lambda p, step: model.loss(p, batch, key, step=step), has_aux=True))

  (l0, aux0), g0 = train_step(plain)(params, 0)
  step_fn = train_step(stoch)
  (l1, aux1), g1 = step_fn(params, 0)
  assert 'extra_steps' not in aux0 and int(aux1['extra_steps'].max()) > 0
  assert float(l0) != float(l1)
  assert not np.allclose(flat(g0), flat(g1), rtol=1e-3)
  # The decay: at a late step alpha * 0.998^step ~ 0, no extra steps, and
  # the loss is the plain one.
  (l2, late), _ = step_fn(params, 20000)
  assert int(late['extra_steps'].max()) == 0
  np.testing.assert_allclose(float(l2), float(l0), rtol=1e-6)
  p0, _ = jax.jit(plain.predict)(params, batch)
  p1, a1 = jax.jit(stoch.predict)(params, batch)
  assert 'extra_steps' not in a1
  for k in p0:
    np.testing.assert_array_equal(p0[k], p1[k])


def test_train_step_passes_the_step_to_the_decay(bfs):
  """train.make_train_step hands the training step to the loss: early steps
  take extra iterations, a late one (alpha decayed to ~0) none."""
  config, batch = bfs
  model = _model(config, batch, grad='jfb', jac_reg_weight=0.0,
                 stochastic_alpha=0.9)
  optimizer = train.make_optimizer(config)
  params = model.init(jax.random.PRNGKey(0), batch)
  step = train.make_train_step(model, optimizer)
  key = jax.random.PRNGKey(1)
  *_, early = step(params, optimizer.init(params), batch, key, 1)
  *_, late = step(params, optimizer.init(params), batch, key, 20000)
  assert int(early['extra_steps'].max()) > 0
  assert int(late['extra_steps'].max()) == 0
