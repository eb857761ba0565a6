"""Processors P(x, e, g, h) -> (h', edge latent): one message-passing step.

`TripletGMPNN` is the same function as dm-clrs's `triplet_gmpnn`
(clrs/_src/processors.py, MPNN with triplets and gating; tested against it).
`GatedMaxMPNN` is DEAR's processor (DEAR layers/gnns.py `MPNN`): messages along
graph edges plus self-loops, LayerNorms inside the message MLP, no triplets,
no gate bias, PyTorch's default weight init (biases start at zero here).

Both take `triplets=False` to skip the edge latent: the equilibrium solver
iterates only the node update and computes the (N^3) triplet features once, at
the fixed point. Both take `edge_terms` (layer name -> that layer applied to
the edge features, for every name in EDGE_LAYERS): the stepwise NAR applies
these linear layers to the edge features once per forward instead of once
per step (`nar.EdgeMaps`).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from dear_jax.encoders import haiku_init

BIG_NUMBER = 1e6


def torch_uniform(key, shape, dtype=jnp.float32):
  """torch.nn.Linear's default init, U(+-1/sqrt(fan_in)), for DEAR's layers."""
  bound = 1.0 / jnp.sqrt(shape[0])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


@jax.custom_jvp
def _max_over_senders(x: jax.Array) -> jax.Array:
  """max over axis 1, differentiated through its first maximiser.

  jnp.max's own derivative divides by the number of entries equal to the
  max; XLA (seen with jax_disable_most_optimizations on CPU, on the NAR's
  triplets) may evaluate that comparison on differently rounded values,
  find no equal entry and return 0/0. The first maximiser's tangent is the
  same derivative wherever the max is unique."""
  return jnp.max(x, axis=1)


@_max_over_senders.defjvp
def _max_over_senders_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  first = jnp.expand_dims(jnp.argmax(x, axis=1), 1)
  return (jnp.take_along_axis(x, first, axis=1)[:, 0],
          jnp.take_along_axis(t, first, axis=1)[:, 0])


def _max_aggregate(msgs: jax.Array, adj: jax.Array) -> jax.Array:
  """agg[b, j] = max over senders i with adj[b, i, j] of msgs[b, i, j]."""
  return jnp.max(jnp.where(adj[..., None] > 0, msgs, -BIG_NUMBER), axis=1)


class TripletGMPNN(nn.Module):
  """CLRS Triplet-GMPNN: all-pairs max-MPNN, LayerNorm, gate bias -3."""
  hidden: int
  nb_triplet_fts: int = 8
  use_ln: bool = True
  gated: bool = True
  use_triplets: bool = True
  gate_bias: float = -3.0   # CLRS: the gate starts almost closed (h' ~ 0.95 h)

  def setup(self):
    dense = lambda n: nn.Dense(n, kernel_init=haiku_init)
    h, t = self.hidden, self.nb_triplet_fts
    self.m_1, self.m_2, self.m_e, self.m_g = (dense(h) for _ in range(4))
    self.o1, self.o2 = dense(h), dense(h)
    if self.use_triplets:
      (self.t_1, self.t_2, self.t_3, self.t_e_1, self.t_e_2, self.t_e_3,
       self.t_g) = (dense(t) for _ in range(7))
      self.o3 = dense(h)
    self.mlp_0, self.mlp_1 = dense(h), dense(h)
    if self.use_ln:
      self.ln = nn.LayerNorm(epsilon=1e-5)
    if self.gated:
      self.gate1, self.gate2 = dense(h), dense(h)
      self.gate3 = nn.Dense(h, kernel_init=haiku_init,
                            bias_init=nn.initializers.constant(self.gate_bias))

  EDGE_LAYERS = ('m_e', 't_e_1', 't_e_2', 't_e_3')

  def _edge(self, name, edge_fts, edge_terms):
    if edge_terms is None:
      return getattr(self, name)(edge_fts)
    return edge_terms[name]

  def triplet_features(self, z, edge_fts, graph_fts, edge_terms=None):
    """(B, N, N, H) edge latent from max over i of the (B, N, N, N, 8) triplets."""
    edge = lambda name: self._edge(name, edge_fts, edge_terms)
    # tri[b, i, j, k] sums seven terms; the four that do not depend on i are
    # added after the max over i (same value, a third of the 5-d work).
    over_i = (self.t_1(z)[:, :, None, None] + edge('t_e_1')[:, :, :, None] +
              edge('t_e_2')[:, :, None, :])
    tri = (_max_over_senders(over_i) + self.t_2(z)[:, :, None] +
           self.t_3(z)[:, None, :] + edge('t_e_3') +
           self.t_g(graph_fts)[:, None, None])
    return jax.nn.relu(self.o3(tri))

  def __call__(self, node_fts, edge_fts, graph_fts, adj, hidden,
               triplets: bool = True, edge_terms=None):
    del adj  # MPNN: every pair exchanges messages (dm-clrs sets adj to ones)
    z = jnp.concatenate([node_fts, hidden], axis=-1)
    msgs = (self.m_1(z)[:, None, :] + self.m_2(z)[:, :, None] +
            self._edge('m_e', edge_fts, edge_terms) +
            self.m_g(graph_fts)[:, None, None])
    msgs = self.mlp_1(jax.nn.relu(self.mlp_0(jax.nn.relu(msgs))))
    agg = jnp.max(msgs, axis=1)
    ret = jax.nn.relu(self.o1(z) + self.o2(agg))
    if self.use_ln:
      ret = self.ln(ret)
    if self.gated:
      gate = jax.nn.sigmoid(
          self.gate3(jax.nn.relu(self.gate1(z) + self.gate2(agg))))
      ret = ret * gate + hidden * (1 - gate)
    tri = None
    if triplets and self.use_triplets:
      tri = self.triplet_features(z, edge_fts, graph_fts, edge_terms)
    return ret, tri


class GatedMaxMPNN(nn.Module):
  """DEAR's gated max-MPNN over graph edges (adj, self-loops added here).

  With `neighbours` ([N, K] ints: the senders of each receiver, itself
  included) messages run only along those K edges, [B, N, K, H] instead of
  [B, N, N, H], and `adj` is not read: the same function on a sparse graph
  (the 4-regular Cayley graphs of CGP), K/N of the work. `edge_fts` is then
  [B, N, K, F] or broadcasts to it.

  An integer `adj` ([B, N, K], `batches.aggregation_senders`) is each
  graph's own sender lists, self included: the same function as the dense
  [B, N, N] adjacency it lists, with K-wide message arrays; `edge_fts` (or
  edge_terms['m_edge']) stays [B, N, N, .] and is gathered along the lists."""
  hidden: int
  gate_bias: float = 0.0    # DEAR: no gate bias
  EDGE_LAYERS = ('m_edge',)

  @nn.compact
  def __call__(self, node_fts, edge_fts, graph_fts, adj, hidden,
               triplets: bool = True, edge_terms=None, neighbours=None):
    del triplets  # no edge latent: decoders see the encoded edges only
    dense = lambda n, name: nn.Dense(n, kernel_init=torch_uniform, name=name)
    h = self.hidden
    z = jnp.concatenate([node_fts, hidden], axis=-1)
    receiver = dense(h, 'm_receiver')(z)
    sender = dense(h, 'm_sender')(z)
    lists = neighbours is None and jnp.issubdtype(adj.dtype, jnp.integer)
    if lists:  # sender lists: edges i -> j gathered to [:, j, k]
      along = jax.vmap(lambda x, idx: jnp.take_along_axis(
          x, idx[..., None], axis=1))
      gather = lambda e: along(jnp.swapaxes(e, 1, 2), adj)
      edge = (dense(h, 'm_edge')(gather(edge_fts)) if edge_terms is None
              else gather(edge_terms['m_edge']))
    else:
      edge = (dense(h, 'm_edge')(edge_fts) if edge_terms is None
              else edge_terms['m_edge'])
    graph = dense(h, 'm_graph')(graph_fts)[:, None, None]
    if lists:
      msgs = (receiver[:, :, None] + jax.vmap(lambda s, i: s[i])(sender, adj)
              + edge + graph)
      aggregate = lambda m: jnp.max(m, axis=2)
    elif neighbours is None:
      # Message on edge i -> j at [:, i, j], from sender i and receiver j.
      msgs = receiver[:, None, :] + sender[:, :, None] + edge + graph
      with_self = jnp.maximum(adj, jnp.eye(node_fts.shape[1])[None])
      aggregate = lambda m: _max_aggregate(m, with_self)
    else:
      # Message from the k-th sender of j at [:, j, k].
      msgs = receiver[:, :, None] + sender[:, neighbours] + edge + graph
      aggregate = lambda m: jnp.max(m, axis=2)
    for k in range(2):
      msgs = dense(h, f'mlp_{k}')(
          jax.nn.relu(nn.LayerNorm(epsilon=1e-5, name=f'mlp_ln_{k}')(msgs)))
    agg = aggregate(msgs)
    ret = nn.LayerNorm(epsilon=1e-5, name='ln')(
        dense(h, 'u1')(z) + dense(h, 'u2')(agg))
    gate3 = nn.Dense(h, kernel_init=torch_uniform, name='gate3',
                     bias_init=nn.initializers.constant(self.gate_bias))
    gate = jax.nn.sigmoid(gate3(
        jax.nn.relu(dense(h, 'gate1')(z) + dense(h, 'gate2')(agg))))
    return ret * gate + hidden * (1 - gate), None


# model.processor -> the Flax module class. A module of one's own adds to it
# with `register_processor(name)` on its class (README, "Extending").
PROCESSORS: dict = {}


def register_processor(name: str):
  """Class decorator: `name` becomes an allowed `model.processor`. The
  class is a Flax module called as P(node_fts, edge_fts, graph_fts, adj,
  hidden, triplets=..., edge_terms=...) -> (h', edge latent or None);
  `build_processor` sets those of its fields named hidden, nb_triplet_fts
  and gate_bias."""
  def add(cls):
    PROCESSORS[name] = cls
    return cls
  return add


register_processor('triplet_gmpnn')(TripletGMPNN)
register_processor('gmpnn')(GatedMaxMPNN)


def check_processor(kind: str, key: str = 'model.processor') -> None:
  if kind not in PROCESSORS:
    raise ValueError(f'{key} must be one of {", ".join(PROCESSORS)}, got '
                     f'{kind!r}')


def build_processor(kind: str, hidden: int, nb_triplet_fts: int = 8,
                    gate_bias: float | None = None):
  """gate_bias None keeps the processor's own initial gate bias."""
  check_processor(kind)
  cls = PROCESSORS[kind]
  settings = dict(hidden=hidden, nb_triplet_fts=nb_triplet_fts)
  if gate_bias is not None:
    settings['gate_bias'] = float(gate_bias)
  fields = {f.name for f in dataclasses.fields(cls)}
  return cls(**{k: v for k, v in settings.items() if k in fields})
