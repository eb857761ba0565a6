"""CGP: the Cayley graphs of SL(2, Z_p), and the Cayley pass inside DEAR."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from dear_jax import cgp, clrs_lib, factory, input_pipeline, processors, train


def _brute_force_group(p):
  """Every 2x2 matrix mod p with determinant 1, by enumeration."""
  return {m for m in itertools.product(range(p), repeat=4)
          if (m[0] * m[3] - m[1] * m[2]) % p == 1}


def _reachable(adj, start=0):
  seen, frontier = {start}, [start]
  while frontier:
    nxt = [j for i in frontier for j in np.flatnonzero(adj[i])
           if j not in seen]
    seen.update(nxt)
    frontier = list(set(nxt))
  return seen


@pytest.mark.parametrize('p,size', [(2, 6), (3, 24), (5, 120), (7, 336)])
def test_cayley_graph_is_the_group_4_regular_and_connected(p, size):
  elements, senders, receivers = cgp.cayley_graph(p)
  assert cgp.group_size(p) == size == len(elements)
  assert {tuple(e.ravel()) for e in elements} == _brute_force_group(p)
  # Each edge is a right multiplication by one of the four generators.
  gens = cgp.generators(p)
  assert len(senders) == 4 * size
  assert np.bincount(senders, minlength=size).tolist() == [4] * size
  for s, r in zip(senders, receivers):
    assert any(np.array_equal((elements[s] @ g) % p, elements[r])
               for g in gens)
  adj = np.zeros((size, size), bool)
  adj[senders, receivers] = True
  assert (adj == adj.T).all()  # generators closed under inverse: undirected
  assert not adj.diagonal().any()
  degree = 2 if p == 2 else 4  # for p = 2 the generators coincide in pairs
  assert (adj.sum(0) == degree).all() and (adj.sum(1) == degree).all()
  assert _reachable(adj) == set(range(size))
  # Stack-walk numbering: every prefix of the nodes is connected, so the
  # real nodes of a graph form one piece of its Cayley graph.
  for n in (2, size // 3, size - 1):
    assert _reachable(adj[:n, :n]) == set(range(n))


@pytest.mark.parametrize('n,size', [(2, 6), (6, 6), (7, 24), (16, 24),
                                    (64, 120), (120, 120), (121, 336),
                                    (128, 336), (337, 1320)])
def test_smallest_cayley_graph_with_n_nodes(n, size):
  adj = cgp.cayley_adjacency(n)
  assert adj.shape == (size, size)
  assert adj.dtype == np.float32 and set(np.unique(adj)) <= {0.0, 1.0}


@pytest.mark.parametrize('n', [5, 16, 64, 128])
def test_cayley_neighbours_are_the_adjacency_plus_self_loops(n):
  adj = cgp.cayley_adjacency(n)
  nbrs = cgp.cayley_neighbours(n)
  assert nbrs.shape == (adj.shape[0], 5) and nbrs.dtype == np.int32
  for j in range(adj.shape[0]):
    assert nbrs[j, 0] == j
    assert set(nbrs[j].tolist()) == set(np.flatnonzero(adj[:, j])) | {j}, j


@pytest.mark.parametrize('n', [6, 16, 64])
def test_sparse_cayley_mpnn_equals_the_dense_one(n):
  """The gated max-MPNN along `neighbours` ([M, 5]) is the same function,
  value and gradient, as the dense one on the M x M Cayley adjacency with
  the edge vector broadcast to every pair."""
  m = cgp.cayley_adjacency(n).shape[0]
  h = 8
  mpnn = processors.GatedMaxMPNN(hidden=h)
  keys = jax.random.split(jax.random.PRNGKey(n), 4)
  node = jax.random.normal(keys[0], (2, m, h))
  hidden = jax.random.normal(keys[1], (2, m, h))
  graph = jax.random.normal(keys[2], (2, h))
  edge = jax.random.normal(keys[3], (h,))
  nbrs = jnp.asarray(cgp.cayley_neighbours(n))
  adj = jnp.broadcast_to(jnp.asarray(cgp.cayley_adjacency(n)), (2, m, m))
  dense_edge = jnp.broadcast_to(edge, (2, m, m, h))
  params = mpnn.init(jax.random.PRNGKey(1), node, dense_edge, graph, adj,
                     hidden)
  sparse = lambda hid, p: mpnn.apply(p, node, edge[None, None, None], graph,
                                     None, hid, neighbours=nbrs)[0]
  dense = lambda hid, p: mpnn.apply(p, node, dense_edge, graph, adj, hid)[0]
  np.testing.assert_allclose(sparse(hidden, params), dense(hidden, params),
                             rtol=1e-5, atol=1e-5)
  weights = jax.random.normal(jax.random.PRNGKey(2), (2, m, h))
  grad = lambda f: jax.grad(lambda hid, p: jnp.sum(f(hid, p) * weights),
                            argnums=(0, 1))(hidden, params)
  for a, b in zip(jax.tree_util.tree_leaves(grad(sparse)),
                  jax.tree_util.tree_leaves(grad(dense))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope='module')
def bfs64(tmp_path_factory):
  config = tiny_config(tmp_path_factory.mktemp('cache'), 'dear')
  config.data.train_sizes = (64,)
  config.data.batch_size = 1
  config.model.hidden = 16
  batch = next(input_pipeline.TrainStream('bfs', train.data_config(config), seed=0,
                                          keep_hints=False))
  return config, batch


def _model(config, batch, processor='triplet_gmpnn', **dear):
  config = config.copy_and_resolve_references()
  config.model.processor = processor
  config.dear.update(dear)
  return factory.build_model(config, clrs_lib.processed_spec('bfs'), batch)


@pytest.mark.parametrize('shared', [False, True])
def test_cayley_pass_follows_cayley_edges(bfs64, shared):
  """Perturbing real node j's state moves, among the real nodes, exactly j
  and its Cayley neighbours (one max-MPNN round, states of virtual nodes
  zero): the pass runs on the Cayley graph, real nodes first. And the map
  the solver iterates is the processor followed by this pass."""
  config, batch = bfs64
  model = _model(config, batch, processor='gmpnn' if shared else
                 'triplet_gmpnn', cgp=True, cgp_shared_weights=shared)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch)
  assert ('cgp_processor' in params['processor']) == (not shared)
  proc = params['processor']
  node, edge, graph, adj = model.encode(params, batch['inputs'], 64)
  adj = model.adjacency(batch, adj)
  h = jax.random.normal(jax.random.PRNGKey(1), node.shape)
  run = jax.jit(lambda h: model.cayley_pass(proc, node, graph, h))
  cayley = cgp.cayley_adjacency(64)
  base = np.asarray(run(h))
  for j in (0, 17, 63):
    moved = np.asarray(run(h.at[0, j].add(1.0)))
    changed = set(np.flatnonzero(np.abs(moved - base)[0].max(-1) > 1e-6))
    want = {i for i in range(64) if cayley[j, i] or i == j}
    assert changed == want, j
  f, _, args = model.equilibrium(params, batch, training=False, key=None)
  got = jax.jit(lambda h: f(h, proc, *(a[0] for a in args)))(h[0])
  first, _ = model.process(proc, node, edge, graph, adj, h, triplets=False)
  np.testing.assert_allclose(got, run(first)[0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(got, first[0], atol=1e-3)


def test_dear_with_cgp_trains_and_predicts_at_n64(bfs64):
  config, batch = bfs64
  model = _model(config, batch, cgp=True, max_iter_eval=5, max_iter_train=5,
                 grad='jfb', jac_reg_weight=0.0)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch)
  out, aux = jax.jit(model.predict)(params, batch)
  assert out['pi'].shape == (1, 64)
  assert int(aux['solver'].iterations[0]) >= 1
  loss, grads = jax.jit(jax.value_and_grad(
      lambda p: model.loss(p, batch, jax.random.PRNGKey(2))[0]))(params)
  assert np.isfinite(float(loss))
  for name in ('cgp_edge', 'cgp_processor'):
    assert float(optax.tree.norm(grads['processor'][name])) > 0, name


def test_dear_with_cgp_predicts_at_n128(tmp_path_factory):
  """n=128 needs the 336-node Cayley graph (SL(2, Z_7)), past the release's
  largest (120): the model runs, and the Cayley pass reaches its outputs."""
  config = tiny_config(tmp_path_factory.mktemp('cache'), 'dear')
  config.data.train_sizes = (128,)
  config.data.batch_size = 1
  config.model.hidden = 8
  batch = next(input_pipeline.TrainStream('bfs', train.data_config(config),
                                          seed=0, keep_hints=False))
  model = _model(config, batch, cgp=True, max_iter_eval=3)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch)
  forward = jax.jit(lambda p: model.forward(p, batch, training=False,
                                            key=jax.random.PRNGKey(0)))
  outputs, _, aux = forward(params)
  assert outputs['pi'].shape == (1, 128, 128)
  assert np.all(np.isfinite(outputs['pi']))
  assert int(aux['solver'].iterations[0]) >= 1
  other = jax.tree_util.tree_map(lambda x: x, params)
  other['processor']['cgp_edge'] = params['processor']['cgp_edge'] + 1.0
  assert not np.allclose(forward(other)[0]['pi'], outputs['pi'], atol=1e-5)
