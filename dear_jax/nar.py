"""The stepwise CLRS reasoner: one processor step per algorithm step.

Mirrors dm-clrs `nets.Net`: it is told the true number of steps (padded T, each
sample frozen after its own length), step 0 sees the true initial hints, later
steps see the model's own soft hint predictions (teacher forcing 0, run.py's
default) when hints are encoded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dear_jax import batches as batch_lib
from dear_jax.decoders import postprocess
from dear_jax.model import Reasoner

HINT_MODES = ('encoded_decoded', 'decoded_only', 'none')


def _freeze(lengths, step, new, old):
  """Keeps `old` for samples whose trajectory ended before `step`."""
  not_done = (lengths > step + 1).astype(new.dtype)
  not_done = not_done.reshape(not_done.shape + (1,) * (new.ndim - 1))
  return not_done * new + (1 - not_done) * old


class StepwiseNAR(Reasoner):

  def __init__(self, spec, sample_batch, cfg, hint_mode: str):
    if hint_mode not in HINT_MODES:
      raise ValueError(f'unknown hint_mode {hint_mode!r}; allowed: '
                       f'{", ".join(HINT_MODES)}')
    self.hint_mode = hint_mode
    self.encode_hints = hint_mode == 'encoded_decoded'
    self.decode_hints = hint_mode != 'none'
    super().__init__(spec, sample_batch, cfg)

  def forward(self, params, batch, *, training, key):
    nb_nodes = batch_lib.num_nodes(batch)
    nb_steps = max(1, batch_lib.num_steps(batch) - 1)
    lengths = batch['lengths']
    node0, edge0, graph0, adj = self.encode(params, batch['inputs'], nb_nodes)
    adj = self.adjacency(batch, adj)

    def step(hidden, i, hints):
      node, edge, graph = node0, edge0, graph0
      if self.encode_hints:  # graph hints (e.g. a `phase`) too, as dm-clrs
        d_node, d_edge, d_graph, _ = self.encode(params, hints, nb_nodes)
        node, edge, graph = node + d_node, edge + d_edge, graph + d_graph
      h_new, tri = self.process(params['processor'], node, edge, graph, adj,
                                hidden)
      outs, hint_preds = self.decode(params, node, hidden, h_new, edge, tri,
                                     graph, training, jax.random.fold_in(key, i))
      return h_new, outs, hint_preds

    first_hints = {k: v[0] for k, v in batch['hints'].items()}
    hidden0 = jnp.zeros(node0.shape)
    hidden, outs, hint_preds = step(hidden0, 0, first_hints)

    def body(carry, i):
      hidden, outs, hint_preds = carry
      fed = (postprocess(self.spec, hint_preds, hard=False)
             if self.encode_hints else {})
      hidden, new_outs, hint_preds = step(hidden, i, fed)
      outs = jax.tree_util.tree_map(
          lambda n, o: _freeze(lengths, i, n, o), new_outs, outs)
      return (hidden, outs, hint_preds), hint_preds

    (_, outs, _), later_hints = jax.lax.scan(
        body, (hidden, outs, hint_preds), jnp.arange(1, nb_steps))
    stacked = None
    if self.decode_hints:
      stacked = jax.tree_util.tree_map(
          lambda first, rest: jnp.concatenate([first[None], rest]),
          hint_preds, later_hints)
    return outs, stacked, {}
