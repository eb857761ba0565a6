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

from conftest import model_config, tiny_config, tiny_data_config
from dear_jax import batches as batch_lib
from dear_jax import clrs_lib
from dear_jax import input_pipeline
from dear_jax import splits
from dear_jax import decoders as dec_lib
from dear_jax import losses
from dear_jax.encoders import Encoders
from dear_jax.decoders import Decoders
from dear_jax.model import count_params
from dear_jax.nar import StepwiseNAR
from dear_jax import factory
from dear_jax.processors import GatedMaxMPNN, TripletGMPNN
from dear_jax.train import evaluate

clrs = clrs_lib.clrs()
from clrs._src import decoders as clrs_decoders  # noqa: E402
from clrs._src import encoders as clrs_encoders  # noqa: E402
from clrs._src import losses as clrs_losses  # noqa: E402
from clrs._src import nets as clrs_nets  # noqa: E402
from clrs._src import probing  # noqa: E402

ALGORITHMS = clrs_lib.algorithm_names()

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


# Parity tests run in float64 (jax.enable_x64) wherever both sides support it:
# float32 results of two differently fused programs differ by reassociation
# (up to ~1e-4 on LayerNorm'd states), which no fixed float32 tolerance bounds
# on every machine, while float64 leaves ~1e-13 and a real discrepancy stays
# at >= 1e-3. X64_TOL is relative to each entry's magnitude (absolute below 1).
X64_TOL = 1e-9


def _assert_close_x64(got, want, tol=X64_TOL, what=''):
  """Elementwise |got - want| <= tol * max(1, |want|), both float64."""
  got, want = np.asarray(got), np.asarray(want)
  assert got.dtype == want.dtype == np.float64, (what, got.dtype, want.dtype)
  np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=what)


def _float64(tree):
  """float32 leaves -> float64 (exact); pointers and lengths keep int32."""
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x, np.float64) if x.dtype == np.float32 else x, tree)


def x64(fn):
  """Runs the test with jax's 64-bit mode on (x64 arrays, float64 default)."""
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    with jax.enable_x64(True):
      return fn(*args, **kwargs)
  return wrapper


# XLA's optimisations double compile times on CPU; these graphs are tiny.
pytestmark = pytest.mark.usefixtures('fast_compile')


# --- 1. processor parity -----------------------------------------------------

def _bfs_features(hidden, n=8, b=2, seed=0):
  """Encoder outputs on a real BFS batch (inputs + first hints)."""
  cfg = tiny_data_config('/nonexistent', train_sizes=(n,), batch_size=b)
  batch = next(input_pipeline.TrainStream('bfs', cfg, seed=seed))
  spec = clrs_lib.processed_spec('bfs')
  probes = dict(batch['inputs'], **{k: v[0] for k, v in batch['hints'].items()})
  enc = Encoders(spec=spec, hidden=hidden)
  p = enc.init(jax.random.PRNGKey(seed), probes, n)
  node, edge, graph, adj = enc.apply(p, probes, n)
  return node, edge, graph, adj


@pytest.mark.parametrize('graph_source', ['encoders', 'random'])
@x64
def test_processor_matches_clrs_triplet_gmpnn(graph_source):
  h = 128
  node, edge, graph, adj = (jnp.asarray(x, jnp.float64)
                            for x in _bfs_features(h))
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
    _assert_close_x64(h_ours, h_ref, what='h')
    _assert_close_x64(tri_ours, tri_ref, what='triplets')
    assert float(jnp.std(h_ref)) > 0.1 and float(jnp.std(tri_ref)) > 0.01
  # triplets=False skips the edge latent but gives the same node update
  h_only, none = ours.apply({'params': flax_params}, node, edge, graph, adj,
                            hidden, triplets=False)
  assert none is None
  h1, _ = ref.apply(hk_params, node, edge, graph, adj, hidden)
  _assert_close_x64(h_only, h1, what='h, triplets=False')


# --- DEAR's gated max-MPNN (model.processor=gmpnn) -----------------------------

def _dear_layer_norm(x, p, eps=1e-5):
  """DEAR's LayerNorm (layers/gnns.py): biased variance, eps in the rsqrt."""
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p['scale'] + p['bias']


def _dear_mpnn_numpy(p, node, edge, graph, adj, hidden):
  """DEAR's `MPNN` layer (gated, max aggregation, LayerNorms in the message
  MLP; reference dear.md section 1.4) transcribed edge by edge, as PyG runs
  it: edge_index = adj.nonzero() (row = source j, column = target i) plus
  self-loops, message m_ji = W_i z_i + W_j z_j + W_e E_ji + W_g g, then
  [LayerNorm -> ReLU -> Linear] twice, max over the incoming edges of i,
  r = LayerNorm(U1 z_i + U2 a_i), gamma = sigmoid(W3 ReLU(W1 z_i + W2 a_i)),
  h_i' = gamma r + (1 - gamma) h_i. `p` maps DEAR's roles to parameters."""
  lin = lambda name, x: x @ p[name]['kernel'] + p[name]['bias']
  relu = lambda x: np.maximum(x, 0.0)
  out = np.zeros_like(hidden)
  for b in range(node.shape[0]):
    n = node.shape[1]
    z = np.concatenate([node[b], hidden[b]], -1)
    edges = set(zip(*np.nonzero(adj[b]))) | {(i, i) for i in range(n)}
    agg = np.full((n, hidden.shape[-1]), -np.inf)
    for j, i in sorted(edges):  # message along the edge j -> i
      m = (lin('W_i', z[i]) + lin('W_j', z[j]) + lin('W_e', edge[b, j, i]) +
           lin('W_g', graph[b]))
      for k in range(2):
        m = lin(f'msg_{k}', relu(_dear_layer_norm(m, p[f'msg_ln_{k}'])))
      agg[i] = np.maximum(agg[i], m)
    r = _dear_layer_norm(lin('U1', z) + lin('U2', agg), p['ln'])
    gamma = 1 / (1 + np.exp(-lin('W3', relu(lin('W1', z) + lin('W2', agg)))))
    out[b] = gamma * r + (1 - gamma) * hidden[b]
  return out


# DEAR's role -> GatedMaxMPNN's Flax submodule.
GMPNN_NAMES = {'W_i': 'm_receiver', 'W_j': 'm_sender', 'W_e': 'm_edge',
               'W_g': 'm_graph', 'msg_0': 'mlp_0', 'msg_1': 'mlp_1',
               'msg_ln_0': 'mlp_ln_0', 'msg_ln_1': 'mlp_ln_1', 'U1': 'u1',
               'U2': 'u2', 'ln': 'ln', 'W1': 'gate1', 'W2': 'gate2',
               'W3': 'gate3'}


@x64
def test_gated_max_mpnn_matches_dear_mpnn_layer():
  h, b, n = 16, 2, 6
  ks = jax.random.split(jax.random.PRNGKey(5), 8)
  node = jax.random.normal(ks[0], (b, n, h))
  edge = jax.random.normal(ks[1], (b, n, n, h))  # E_ji != E_ij
  graph = jax.random.normal(ks[2], (b, h))
  hidden = jax.random.normal(ks[3], (b, n, h))
  # A directed graph without self-loops; node 0 of graph 0 receives from
  # nobody (its self-loop only), so direction and self-loops both matter.
  adj = np.array(jax.random.bernoulli(ks[4], 0.35, (b, n, n)), np.float64)
  adj[:, np.arange(n), np.arange(n)] = 0
  adj[0, :, 0] = 0
  assert not np.array_equal(adj, np.swapaxes(adj, 1, 2))
  proc = GatedMaxMPNN(hidden=h)
  params = proc.init(ks[5], node, edge, graph, jnp.asarray(adj),
                     hidden)['params']
  assert set(params) == set(GMPNN_NAMES.values())
  # float64 and distinct values everywhere (LayerNorm scales, zero-init biases)
  params = _perturb(_float64(params), ks[6])
  got, latent = proc.apply({'params': params}, node, edge, graph,
                           jnp.asarray(adj), hidden)
  assert latent is None  # no edge latent: DEAR's MPNN leaves edges alone
  as_np = lambda t: jax.tree_util.tree_map(np.asarray, t)
  want = _dear_mpnn_numpy({role: as_np(params[name])
                           for role, name in GMPNN_NAMES.items()},
                          *(np.asarray(x) for x in (node, edge, graph)), adj,
                          np.asarray(hidden))
  _assert_close_x64(got, want)
  assert float(np.std(want - np.asarray(hidden))) > 0.1  # h moved
  # The same with the edges reversed differs (the check sees direction).
  flipped, _ = proc.apply({'params': params}, node, edge, graph,
                          jnp.asarray(np.swapaxes(adj, 1, 2)), hidden)
  assert _max_diff(flipped, want) > 1e-3


@pytest.mark.parametrize('kind', ['dear', 'nar'])
@x64
def test_models_built_with_gmpnn_message_along_input_edges(kind, data_cfg):
  """model.processor=gmpnn through factory.build_model: the processor is DEAR's
  layer, it runs on the input graph's edges (BFS `adj`), and a train step's
  gradient reaches it."""
  config = tiny_config(data_cfg.cache_dir, kind)
  config.model.processor = 'gmpnn'
  config.nar.hint_mode = 'none'
  batch = next(input_pipeline.TrainStream('bfs', data_cfg, seed=2,
                                          keep_hints=factory.uses_hints(config)))
  model = factory.build_model(config, clrs_lib.processed_spec('bfs'), batch)
  assert isinstance(model.processor, GatedMaxMPNN)
  params = _float64(model.init(jax.random.PRNGKey(0), batch))
  assert set(params['processor']) == set(GMPNN_NAMES.values())
  node, edge, graph, adj = model.encode(params, batch['inputs'],
                                        batch_lib.num_nodes(batch))
  adj = model.adjacency(batch, adj)
  np.testing.assert_array_equal(np.asarray(adj),
                                batch['inputs']['adj'] > 0)  # BFS: A + I
  hidden = jax.random.normal(jax.random.PRNGKey(1), node.shape)
  got, _ = model.process(params['processor'], node, edge, graph, adj, hidden)
  want = _dear_mpnn_numpy(
      {role: jax.tree_util.tree_map(np.asarray, params['processor'][name])
       for role, name in GMPNN_NAMES.items()},
      *(np.asarray(x) for x in (node, edge, graph, adj, hidden)))
  _assert_close_x64(got, want)
  (loss, _), grads = jax.jit(jax.value_and_grad(model.loss, has_aux=True))(
      params, batch, jax.random.PRNGKey(2))
  assert np.isfinite(float(loss))
  assert float(optax.global_norm(grads['processor'])) > 0


# --- encoders / decoders parity ---------------------------------------------

@pytest.mark.parametrize('algorithm', ['floyd_warshall', 'lcs_length',
                                       'binary_search', 'mst_kruskal',
                                       'insertion_sort'])
@x64
def test_encoders_match_clrs(algorithm, data_cfg):
  """Every input and hint probe, encoded as nets.Net._one_step_pred does."""
  h = 16
  spec = clrs_lib.processed_spec(algorithm)
  batch = next(input_pipeline.TrainStream(algorithm, data_cfg, seed=0))
  n = batch_lib.num_nodes(batch)
  probes = dict(batch['inputs'], **{k: v[0] for k, v in batch['hints'].items()})
  # dm-clrs's haiku parameters take the dtype of the data: float64 here.
  dps = clrs_lib.datapoints(_float64(probes), spec)
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
  _assert_close_x64(node, r_node, what='node')
  _assert_close_x64(edge, r_edge, what='edge')
  _assert_close_x64(graph, r_graph, what='graph')
  # dm-clrs starts from the identity; ours from zeros.
  np.testing.assert_array_equal(
      np.maximum(np.asarray(adj) > 0, np.eye(n)[None]), np.asarray(r_adj) > 0)


@x64
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
    _assert_close_x64(got[k], want[k], what=k)


# --- whole model against nets.Net --------------------------------------------

@pytest.mark.parametrize('hint_mode', ['encoded_decoded', 'decoded_only',
                                       'none'])
@x64
def test_stepwise_model_matches_clrs_net(hint_mode):
  """Encoders -> processor -> decoders over T-1 steps, soft hint feedback,
  per-sample output freeze: logits equal dm-clrs's nets.Net (repred=True)."""
  # Node and graph hints of 5 types; `phase` is a graph hint, whose
  # re-encoding feeds the processor's and decoders' graph features.
  h, algorithm = 16, 'graham_scan'
  cfg = tiny_data_config('/nonexistent', train_sizes=(6,), batch_size=3)
  spec = clrs_lib.processed_spec(algorithm)
  stream = input_pipeline.TrainStream(algorithm, cfg, seed=0)
  batch = next(stream)
  while len(set(batch['lengths'].tolist())) < 2:
    batch = next(stream)
  features = clrs_lib.to_feedback(_float64(batch), spec).features
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
  _assert_close_x64(got_out['in_hull'], want_out['in_hull'], what='in_hull')
  if decode:
    assert len(want_hints) == batch_lib.num_steps(batch) - 1
    assert set(got_hints) == set(want_hints[0])
    for k in got_hints:
      want = jnp.stack([s[k] for s in want_hints])
      _assert_close_x64(got_hints[k], want, what=k)
  else:
    assert got_hints is None


# --- 2. parameter count -------------------------------------------------------

def test_bfs_parameter_count_matches_clrs_baseline():
  cfg = tiny_data_config('/nonexistent', train_sizes=(16,), batch_size=2)
  batch = next(input_pipeline.TrainStream('bfs', cfg, seed=0))
  spec = clrs_lib.processed_spec('bfs')
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
@x64
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
  _assert_close_x64(got, want)


@pytest.mark.parametrize('type_,loc', LOSS_CASES)
@x64
def test_hint_loss_matches_clrs(type_, loc):
  t, b, n = 5, 3, 4
  lead = {'node': (t, b, n), 'edge': (t, b, n, n), 'graph': (t, b)}[loc]
  key = jax.random.PRNGKey(100 + LOSS_CASES.index((type_, loc)))
  k1, k2 = jax.random.split(key)
  truth = _truth(type_, k1, lead, n)
  pred = _logits(type_, k2, truth[1:], n)
  lengths = np.array([2, 5, 3], np.int32)  # per-sample time masks
  # dm-clrs stores hints (pointers too) and lengths as floats.
  dp = probing.DataPoint(name='x', location=loc, type_=type_,
                         data=truth.astype(np.float64))
  want = clrs_losses.hint_loss(dp, list(pred), lengths.astype(np.float64), n)
  got = losses.hint_loss(type_, jnp.asarray(truth), pred, jnp.asarray(lengths),
                         n)
  assert np.isfinite(float(want))
  _assert_close_x64(got, want)
  # Steps past a sample's length do not count.
  pred2 = pred.at[1:, 0].add(100.0)  # sample 0 (length 2) only has step 0
  got2 = losses.hint_loss(type_, jnp.asarray(truth), pred2,
                          jnp.asarray(lengths), n)
  _assert_close_x64(got2, got)


@x64
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
  _assert_close_x64(losses.total_loss(spec, batch, outs, hints), want)
  _assert_close_x64(
      losses.total_loss(spec, batch, outs, None),
      want - losses.hint_loss('scalar', batch['hints']['h'], hints['h'],
                              batch['lengths'], n))


# --- 4. Sinkhorn and postprocessing -----------------------------------------

@pytest.mark.parametrize('noise', [False, True])
@x64
def test_log_sinkhorn_matches_clrs(noise):
  # Drawn in float32 (x64 would draw other numbers), computed in float64.
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 5), jnp.float32) * 3
  x = x.astype(jnp.float64)
  key = jax.random.PRNGKey(7) if noise else None
  for steps, temp, zero in ((10, 0.1, True), (5, 1.0, False)):
    want = clrs_decoders.log_sinkhorn(x, steps, temp, zero, key)
    got = dec_lib.log_sinkhorn(x, steps, temp, zero, noise_key=key)
    _assert_close_x64(got, want, what=f'{steps} steps at {temp}')
  # doubly stochastic after enough steps
  p = jnp.exp(dec_lib.log_sinkhorn(x, 50, 1.0, False))
  np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-4)
  np.testing.assert_allclose(p.sum(-2), 1.0, atol=1e-4)


@pytest.mark.parametrize('hard', [True, False])
@x64
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
    if hard:  # indices and 0/1: exactly equal (ours are float32 by design)
      np.testing.assert_array_equal(np.asarray(got[k], np.float64),
                                    np.asarray(want[k].data, np.float64), k)
    else:
      _assert_close_x64(got[k], want[k].data, what=k)
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


@pytest.mark.smoke
@pytest.mark.parametrize('hint_mode', ['none', 'encoded_decoded'])
@pytest.mark.parametrize('algorithm', ALGORITHMS)
def test_train_step_and_evaluate(algorithm, hint_mode, data_cfg, request):
  spec = clrs_lib.processed_spec(algorithm)
  batch = next(input_pipeline.TrainStream(algorithm, data_cfg, seed=0))
  val = splits.load_split(algorithm, 'val', data_cfg, seed=0)
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
      clrs_lib.datapoints(val.outputs, spec),
      {dp.name: dp for dp in clrs_lib.datapoints(truth, spec)})
  assert perfect['score'] == pytest.approx(1.0)


# --- 6. output freeze ---------------------------------------------------------

def _take(batch, i, t):
  return dict(inputs={k: v[i:i + 1] for k, v in batch['inputs'].items()},
              hints={k: v[:t, i:i + 1] for k, v in batch['hints'].items()},
              outputs={k: v[i:i + 1] for k, v in batch['outputs'].items()},
              lengths=batch['lengths'][i:i + 1])


@x64
def test_finished_samples_are_frozen(hint_mode='none'):
  """A sample's outputs do not change in the padded steps after its length:
  batched (padded to T) == alone with T padding == alone with T = length
  (float64: batch sizes change XLA's reduction order)."""
  cfg = tiny_data_config('/nonexistent', train_sizes=(6,), batch_size=4)
  spec = clrs_lib.processed_spec('bfs')
  stream = input_pipeline.TrainStream('bfs', cfg, seed=3)
  batch = next(stream)
  while len(set(batch['lengths'].tolist())) < 3:
    batch = next(stream)
  t = batch_lib.num_steps(batch)
  lengths = batch['lengths']
  assert lengths.min() < t
  model = StepwiseNAR(spec, batch, model_config(hidden=16), hint_mode)
  params = _float64(model.init(jax.random.PRNGKey(0), batch))
  forward = jax.jit(lambda p, b: model.forward(
      p, b, training=False, key=jax.random.PRNGKey(0))[0]['pi'])
  batched = forward(params, batch)
  changed = 0
  for i in range(len(lengths)):
    alone_padded = forward(params, _take(batch, i, t))
    alone_exact = forward(params, _take(batch, i, int(lengths[i])))
    _assert_close_x64(alone_padded[0], batched[i], what=f'{i} padded')
    _assert_close_x64(alone_exact[0], batched[i], what=f'{i} exact')
    # Without the freeze (length = T) the padded steps would change it.
    unfrozen = dict(_take(batch, i, t), lengths=np.array([t], np.int32))
    changed += _max_diff(forward(params, unfrozen)[0], batched[i]) > 1e-4
  assert changed >= 1
