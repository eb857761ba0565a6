"""The stepwise NAR's cheaper loop (nar.py: EdgeMaps, outputs decoded once
after the loop, frozen Gumbel noise) against the plain per-step loop it
replaces, written out here: at every step encode inputs and fed hints
together into full edge features, run the processor and all decoders on
them with the step's key, and freeze the output logits per sample as
dm-clrs does. Float64, so only a real difference exceeds the tolerance.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import model_config, tiny_data_config
from dear_jax import batches as batch_lib
from dear_jax import clrs_lib
from dear_jax import input_pipeline
from dear_jax import losses
from dear_jax.decoders import postprocess
from dear_jax.nar import StepwiseNAR

TOL = 1e-9


def _float64(tree):
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x, np.float64) if x.dtype == np.float32 else x, tree)


def per_step_forward(model, params, batch, training, key):
  """(output logits, stacked hint logits) of the plain loop."""
  n = batch_lib.num_nodes(batch)
  lengths = batch['lengths']
  _, _, _, adj = model.encode(params, batch['inputs'], n)
  adj = model.adjacency(batch, adj)
  hidden = jnp.zeros(lengths.shape + (n, model.hidden))
  outs, hint_preds, stacked = None, None, []
  for i in range(max(1, batch_lib.num_steps(batch) - 1)):
    probes = dict(batch['inputs'])
    if model.encode_hints:
      probes.update({k: v[0] for k, v in batch['hints'].items()} if i == 0
                    else postprocess(model.spec, hint_preds, hard=False))
    node, edge, graph, _ = model.encode(params, probes, n)
    h_new, tri = model.process(params['processor'], node, edge, graph, adj,
                               hidden)
    new_outs, hint_preds = model.decode(params, node, hidden, h_new, edge, tri,
                                        graph, training,
                                        jax.random.fold_in(key, i))
    if outs is None:
      outs = new_outs
    else:
      live = lengths > i + 1
      outs = {k: jnp.where(live.reshape(live.shape + (1,) * (v.ndim - 1)), v,
                           outs[k]) for k, v in new_outs.items()}
    hidden = h_new
    stacked.append(hint_preds)
  hints = ({k: jnp.stack([s[k] for s in stacked]) for k in stacked[0]}
           if model.decode_hints else None)
  return outs, hints


def _batch(algorithm, cache_dir):
  """Three graphs of 5 nodes with different lengths, so that freezing
  matters (shortened here where the algorithm's length depends on n only:
  both loops read the lengths alike)."""
  cfg = tiny_data_config(cache_dir, train_sizes=(5,), batch_size=3)
  stream = input_pipeline.TrainStream(algorithm, cfg, seed=1)
  for _ in range(10):
    batch = next(stream)
    if len(set(batch['lengths'].tolist())) > 1:
      break
  lengths = batch['lengths'].copy()
  if len(set(lengths.tolist())) == 1:
    lengths[:2] = lengths[:2] - np.array([1, 2])
  assert lengths.min() >= 1 and len(set(lengths.tolist())) > 1
  return dict(batch, lengths=lengths)


# insertion_sort: a permutation output (Gumbel noise in training) and node
# pointer hints; floyd_warshall: edge pointer, scalar and mask hints and an
# edge pointer output; bfs with the DEAR processor (no edge latent) and
# hints decoded only.
CASES = [('insertion_sort', 'encoded_decoded', 'triplet_gmpnn'),
         ('floyd_warshall', 'encoded_decoded', 'triplet_gmpnn'),
         ('bfs', 'decoded_only', 'gmpnn')]


@pytest.mark.parametrize('algorithm,hint_mode,processor', CASES)
def test_forward_and_gradients_match_the_per_step_loop(
    algorithm, hint_mode, processor, cache_dir):
  batch = _batch(algorithm, cache_dir)
  spec = clrs_lib.processed_spec(algorithm)
  with jax.enable_x64(True):
    model = StepwiseNAR(spec, batch, model_config(hidden=8,
                                                  processor=processor),
                        hint_mode)
    params = _float64(model.init(jax.random.PRNGKey(0), batch))
    # Random biases too (they start at zero): a dropped bias would show.
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
    params = jax.tree_util.tree_unflatten(tree, [
        x + 0.1 * jax.random.normal(k, x.shape, x.dtype)
        for x, k in zip(leaves, keys)])
    key = jax.random.PRNGKey(3)

    def loss(forward, p):
      outs, hints = forward(p)
      return losses.total_loss(spec, batch, outs, hints), (outs, hints)

    fast = lambda p: model.forward(p, batch, training=True, key=key)[:2]
    plain = lambda p: per_step_forward(model, p, batch, True, key)
    (l_fast, (o_fast, h_fast)), g_fast = jax.jit(jax.value_and_grad(
        lambda p: loss(fast, p), has_aux=True))(params)
    (l_plain, (o_plain, h_plain)), g_plain = jax.jit(jax.value_and_grad(
        lambda p: loss(plain, p), has_aux=True))(params)
  assert set(o_fast) == set(o_plain) == set(batch['outputs'])
  for k in o_plain:
    np.testing.assert_allclose(o_fast[k], o_plain[k], rtol=TOL, atol=TOL,
                               err_msg=k)
  assert set(h_fast) == set(h_plain) == set(batch['hints'])
  for k in h_plain:
    np.testing.assert_allclose(h_fast[k], h_plain[k], rtol=TOL, atol=TOL,
                               err_msg=k)
  np.testing.assert_allclose(l_fast, l_plain, rtol=TOL)
  # Gradients: the encoders cast fed-back hints to float32, and their
  # cotangents too, so gradients agree to float32 precision per leaf.
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_fast),
                          jax.tree_util.tree_leaves(g_plain)):
    scale = float(np.abs(b).max())
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale + 1e-12,
                               err_msg=jax.tree_util.keystr(path))
  # Not vacuous: the gradient reaches the encoders, processor and decoders.
  for part, g in g_plain.items():
    assert max(float(jnp.abs(x).max())
               for x in jax.tree_util.tree_leaves(g)) > 1e-6, part


def test_permutation_noise_is_drawn_and_frozen(cache_dir):
  """Training logits of a permutation output depend on the key (noise is
  drawn) and equal the per-step loop's for each key (the test above, one
  key): here two keys give different logits in both implementations."""
  batch = _batch('insertion_sort', cache_dir)
  spec = clrs_lib.processed_spec('insertion_sort')
  with jax.enable_x64(True):
    model = StepwiseNAR(spec, batch, model_config(hidden=8), 'none')
    params = _float64(model.init(jax.random.PRNGKey(0), batch))
    out = {}
    for seed in (1, 2):
      key = jax.random.PRNGKey(seed)
      out[seed] = (model.forward(params, batch, training=True, key=key)[0],
                   per_step_forward(model, params, batch, True, key)[0])
  for seed in (1, 2):
    np.testing.assert_allclose(out[seed][0]['pred'], out[seed][1]['pred'],
                               rtol=TOL, atol=TOL)
  assert float(jnp.abs(out[1][0]['pred'] - out[2][0]['pred']).max()) > 1e-3
