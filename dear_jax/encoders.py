"""Encoders: every CLRS probe -> node, edge and graph features (clrs/_src/encoders.py).

One linear layer per probe (two for edge pointers); encodings of the same
location are summed. Pointers are expanded to one-hot over nodes (soft pointers
fed back by the stepwise model arrive already expanded) and encoded on edges.
Initialisation follows haiku's (truncated normal, stddev 1/sqrt(fan_in)), with
`xavier_on_scalars` giving scalar hints stddev 1/sqrt(hidden) as run.py does.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from dear_jax.specs import Location, Stage, Type

POINTERS = (Type.POINTER, Type.PERMUTATION_POINTER)


def haiku_init(key, shape, dtype=jnp.float32):
  """hk.Linear's default: truncated normal (cut at 2 sigma), stddev 1/sqrt(fan_in)."""
  return jax.nn.initializers.truncated_normal(1.0 / jnp.sqrt(shape[0]))(
      key, shape, dtype)


def expand_pointer(data: jax.Array, nb_nodes: int) -> jax.Array:
  """Index pointers -> one-hot; soft pointers (float) are already expanded."""
  if jnp.issubdtype(data.dtype, jnp.integer):
    return jax.nn.one_hot(data, nb_nodes)
  return data


def _real_mean(node_mask, x, axis: int):
  """x's mean over node axis `axis` (1 or 2 of [B, N, N, N, 1]) over the
  real nodes of `node_mask` [B, N]."""
  m = node_mask.astype(jnp.result_type(float))
  m = m[:, :, None, None, None] if axis == 1 else m[:, None, :, None, None]
  return jnp.sum(x * m, axis=axis) / jnp.sum(m, axis=axis)


ENCODER_INITS = ('xavier_on_scalars', 'default')  # dm-clrs's encoder_init


class Encoders(nn.Module):
  """Encodes a dict of probes; `spec` maps name -> (stage, location, type)."""
  spec: dict
  hidden: int
  init_mode: str = 'xavier_on_scalars'  # ENCODER_INITS

  def _linear(self, name: str, index: int) -> nn.Dense:
    stage, _, type_ = self.spec[name]
    init = haiku_init
    if (self.init_mode == 'xavier_on_scalars' and stage == Stage.HINT
        and type_ == Type.SCALAR):
      init = jax.nn.initializers.truncated_normal(1.0 / jnp.sqrt(self.hidden))
    return nn.Dense(self.hidden, kernel_init=init, name=f'{name}_enc_{index}')

  @nn.compact
  def __call__(self, probes: dict, nb_nodes: int, node_mask=None):
    """Returns (node_fts, edge_fts, graph_fts, adjacency) contributions.
    `node_mask` ([B, N] bool, a padded batch's): the means over an edge
    pointer's node axes run over the real nodes only."""
    batch = next(iter(probes.values())).shape[0] if probes else 0
    h = self.hidden
    node = jnp.zeros((batch, nb_nodes, h))
    edge = jnp.zeros((batch, nb_nodes, nb_nodes, h))
    graph = jnp.zeros((batch, h))
    adj = jnp.zeros((batch, nb_nodes, nb_nodes))
    for name in sorted(probes):
      _, loc, type_ = self.spec[name]
      data = probes[name]
      is_pointer = type_ in POINTERS
      if is_pointer:
        data = expand_pointer(data, nb_nodes)
      data = data.astype(jnp.float32)
      encode = self._linear(name, 0)
      as_features = data if type_ == Type.CATEGORICAL else data[..., None]
      if loc == Location.NODE and is_pointer:
        edge = edge + encode(as_features)
        adj = adj + ((data + jnp.swapaxes(data, 1, 2)) > 0.5)
      elif loc == Location.EDGE:
        if type_ == Type.POINTER:
          # Aggregate pointer contributions across sender and receiver nodes
          # (the mean of a linear layer's outputs is the layer of the mean
          # input: no (B, N, N, N, H) array; the mean in jax's default float,
          # as the layer's outputs would be).
          mean = functools.partial(jnp.mean, dtype=jnp.result_type(float))
          if node_mask is not None:
            mean = functools.partial(_real_mean, node_mask)
          edge = edge + (encode(mean(as_features, axis=1)) +
                         self._linear(name, 1)(mean(as_features, axis=2)))
        else:
          edge = edge + encode(as_features)
        if type_ == Type.MASK:
          adj = adj + ((data + jnp.swapaxes(data, 1, 2)) > 0.0)
      elif loc == Location.NODE or (loc == Location.GRAPH and
                                    type_ == Type.POINTER):
        node = node + encode(as_features)
      else:
        graph = graph + encode(as_features)
    return node, edge, graph, adj
