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

Both take `aggregation` ('max', the default, or 'softmax': Mirjanic et al.
2023's soft max of each channel over the senders), `latent_decay` (lambda:
the state enters as lambda * h, Mirjanic et al.'s decayed latent space; 1:
off) and `adaptive_temperature` (the softmax aggregation's inverse
temperature chosen from its entropy, Velickovic et al. 2024; for tests).
The triplet path keeps its max, as in Mirjanic et al.'s code.
docs/sharper.md.
"""

from __future__ import annotations

import dataclasses
import numbers

import flax.linen as nn
import jax
import jax.numpy as jnp

from dear_jax.encoders import haiku_init
from dear_jax.temperature import adaptive_inverse_temperature

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


AGGREGATIONS = ('max', 'softmax')


def softmax_aggregate(msgs: jax.Array, valid, axis: int,
                      adaptive: bool = False) -> jax.Array:
  """Each channel's soft max over the senders on `axis`: sum_i a_i m_i with
  a = softmax_i(beta m_i) over the valid senders only (`valid`: bool, msgs'
  shape without the channel axis, or None for all), beta = 1 or, with
  `adaptive`, `adaptive_inverse_temperature`. Invalid senders get weight 0
  (a finite mask, so a row without any gives 0, not NaN or a mean of the
  masked values)."""
  if valid is None:
    logits = msgs
  else:
    valid = valid[..., None]
    logits = jnp.where(valid, msgs, -BIG_NUMBER)
  if adaptive:
    logits = adaptive_inverse_temperature(logits, axis).astype(
        msgs.dtype) * logits
  weights = jax.nn.softmax(logits, axis=axis)
  if valid is None:
    return jnp.sum(weights * msgs, axis=axis)
  # A row without any valid sender has uniform weights: the where makes it 0.
  return jnp.sum(jnp.where(valid, weights * msgs, 0.0), axis=axis)


def first_occurrences(senders: jax.Array) -> jax.Array:
  """bool, senders' shape: entry k of a sender list is the first k with its
  sender. Sender lists repeat a sender as padding, which leaves a max
  unchanged but would count twice in a softmax."""
  k = senders.shape[-1]
  same = senders[..., :, None] == senders[..., None, :]
  earlier = jnp.tril(jnp.ones((k, k), bool), -1)
  return ~jnp.any(same & earlier, axis=-1)


def check_aggregation(value: str, key: str = 'model.aggregation') -> None:
  if value not in AGGREGATIONS:
    raise ValueError(f'{key} must be one of {", ".join(AGGREGATIONS)}, got '
                     f'{value!r}')


def check_latent_decay(value, key: str = 'model.latent_decay') -> None:
  """lambda in (0, 1]: 1 is off; above 1 the state would grow."""
  ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
        and 0 < value <= 1)
  if not ok:
    raise ValueError(f'{key} must be in (0, 1] (1: off; Mirjanic et al.: '
                     f'0.9), got {value!r}')


class TripletGMPNN(nn.Module):
  """CLRS Triplet-GMPNN: all-pairs max-MPNN, LayerNorm, gate bias -3."""
  hidden: int
  nb_triplet_fts: int = 8
  use_ln: bool = True
  gated: bool = True
  use_triplets: bool = True
  gate_bias: float = -3.0   # CLRS: the gate starts almost closed (h' ~ 0.95 h)
  aggregation: str = 'max'  # AGGREGATIONS, of the node messages
  latent_decay: float = 1.0
  adaptive_temperature: bool = False

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

  def triplet_features(self, z, edge_fts, graph_fts, edge_terms=None,
                       node_mask=None):
    """(B, N, N, H) edge latent from max over i of the (B, N, N, N, 8)
    triplets (over the real i of `node_mask` when given)."""
    edge = lambda name: self._edge(name, edge_fts, edge_terms)
    # tri[b, i, j, k] sums seven terms; the four that do not depend on i are
    # added after the max over i (same value, a third of the 5-d work).
    over_i = (self.t_1(z)[:, :, None, None] + edge('t_e_1')[:, :, :, None] +
              edge('t_e_2')[:, :, None, :])
    if node_mask is not None:
      over_i = jnp.where(node_mask[:, :, None, None, None], over_i,
                         -BIG_NUMBER)
    tri = (_max_over_senders(over_i) + self.t_2(z)[:, :, None] +
           self.t_3(z)[:, None, :] + edge('t_e_3') +
           self.t_g(graph_fts)[:, None, None])
    return jax.nn.relu(self.o3(tri))

  def __call__(self, node_fts, edge_fts, graph_fts, adj, hidden,
               triplets: bool = True, edge_terms=None, node_mask=None):
    """`node_mask` ([B, N] bool, a padded batch's): only real nodes send."""
    del adj  # MPNN: every pair exchanges messages (dm-clrs sets adj to ones)
    if self.latent_decay != 1.0:
      hidden = self.latent_decay * hidden  # messages, gate and keep-path
    z = jnp.concatenate([node_fts, hidden], axis=-1)
    msgs = (self.m_1(z)[:, None, :] + self.m_2(z)[:, :, None] +
            self._edge('m_e', edge_fts, edge_terms) +
            self.m_g(graph_fts)[:, None, None])
    msgs = self.mlp_1(jax.nn.relu(self.mlp_0(jax.nn.relu(msgs))))
    senders = None if node_mask is None else node_mask[:, :, None]
    if self.aggregation == 'softmax':
      agg = softmax_aggregate(msgs, senders, 1, self.adaptive_temperature)
    elif senders is None:
      agg = jnp.max(msgs, axis=1)
    else:
      agg = jnp.max(jnp.where(senders[..., None], msgs, -BIG_NUMBER), axis=1)
    ret = jax.nn.relu(self.o1(z) + self.o2(agg))
    if self.use_ln:
      ret = self.ln(ret)
    if self.gated:
      gate = jax.nn.sigmoid(
          self.gate3(jax.nn.relu(self.gate1(z) + self.gate2(agg))))
      ret = ret * gate + hidden * (1 - gate)
    tri = None
    if triplets and self.use_triplets:
      tri = self.triplet_features(z, edge_fts, graph_fts, edge_terms,
                                  node_mask)
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
  edge_terms['m_edge']) stays [B, N, N, .] and is gathered along the lists.
  A sender listed twice counts once in the softmax aggregation, as in the
  dense adjacency."""
  hidden: int
  gate_bias: float = 0.0    # DEAR: no gate bias
  aggregation: str = 'max'  # AGGREGATIONS
  latent_decay: float = 1.0
  adaptive_temperature: bool = False
  EDGE_LAYERS = ('m_edge',)

  @nn.compact
  def __call__(self, node_fts, edge_fts, graph_fts, adj, hidden,
               triplets: bool = True, edge_terms=None, neighbours=None,
               node_mask=None):
    """`node_mask` ([B, N] bool, a padded batch's, with the dense `adj`):
    only real nodes send."""
    del triplets  # no edge latent: decoders see the encoded edges only
    dense = lambda n, name: nn.Dense(n, kernel_init=torch_uniform, name=name)
    h = self.hidden
    if self.latent_decay != 1.0:
      hidden = self.latent_decay * hidden  # messages, gate and keep-path
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
    soft = self.aggregation == 'softmax'
    soft_over = lambda valid, axis: lambda m: softmax_aggregate(
        m, valid, axis, self.adaptive_temperature)
    if lists:
      msgs = (receiver[:, :, None] + jax.vmap(lambda s, i: s[i])(sender, adj)
              + edge + graph)
      aggregate = (soft_over(first_occurrences(adj), 2) if soft else
                   lambda m: jnp.max(m, axis=2))
    elif neighbours is None:
      # Message on edge i -> j at [:, i, j], from sender i and receiver j.
      msgs = receiver[:, None, :] + sender[:, :, None] + edge + graph
      if node_mask is not None:  # a padded node hears itself only
        adj = adj * node_mask[:, :, None]
      with_self = jnp.maximum(adj, jnp.eye(node_fts.shape[1])[None])
      aggregate = (soft_over(with_self > 0, 1) if soft else
                   lambda m: _max_aggregate(m, with_self))
    else:
      # Message from the k-th sender of j at [:, j, k].
      msgs = receiver[:, :, None] + sender[:, neighbours] + edge + graph
      aggregate = (soft_over(first_occurrences(neighbours)[None], 2) if soft
                   else lambda m: jnp.max(m, axis=2))
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
                    gate_bias: float | None = None, aggregation: str = 'max',
                    latent_decay: float = 1.0,
                    adaptive_temperature: bool = False):
  """gate_bias None keeps the processor's own initial gate bias."""
  check_processor(kind)
  check_aggregation(aggregation)
  check_latent_decay(latent_decay)
  cls = PROCESSORS[kind]
  settings = dict(hidden=hidden, nb_triplet_fts=nb_triplet_fts,
                  aggregation=aggregation, latent_decay=float(latent_decay),
                  adaptive_temperature=bool(adaptive_temperature))
  if gate_bias is not None:
    settings['gate_bias'] = float(gate_bias)
  fields = {f.name for f in dataclasses.fields(cls)}
  return cls(**{k: v for k, v in settings.items() if k in fields})
