"""Decoders: latents -> CLRS probe predictions (clrs/_src/decoders.py).

Inputs are the CLRS ones: h_t = [x, h_prev, h_new] (3H) per node,
e_t = [e, edge latent] per edge and the graph features. `postprocess` turns
logits into hard predictions (scoring) or soft ones (fed back as hints).

The stepwise NAR calls the decoders with `edge_terms`: the edge half of each
edge-reading layer already applied (see `nar.EdgeMaps`), so that the
(B, N, N, H) x (H, .) product is not repeated at every step; e_t then holds
only the edge latent. It also passes the Gumbel noise it drew with
`draw_gumbel`, so that outputs decoded once after the loop see the noise of
the step each sample ended at.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from dear_jax.encoders import haiku_init
from dear_jax.specs import Location, Type
from dear_jax.temperature import adaptive_inverse_temperature


def log_sinkhorn(x, steps: int, temperature: float, zero_diagonal: bool,
                 noise_key=None, uniform=None, adaptive: bool = False):
  """Log of a doubly stochastic matrix from permutation logits (with Gumbel
  noise from `noise_key`, or from the U(0, 1) draws `uniform` when given).
  `adaptive`: each row's temperature divided by the adaptive inverse
  temperature of its softmax (dear_jax/temperature.py), chosen once before
  the iterations."""
  if uniform is None and noise_key is not None:
    uniform = jax.random.uniform(noise_key, x.shape)
  if uniform is not None:
    x = x - jnp.log(-jnp.log(uniform + 1e-12) + 1e-12)
  x = x / temperature
  if zero_diagonal:
    x = x - 1e6 * jnp.eye(x.shape[-1])
  if adaptive:
    x = adaptive_inverse_temperature(x, -1).astype(x.dtype) * x
  for _ in range(steps):
    x = jax.nn.log_softmax(x, axis=-1)
    x = jax.nn.log_softmax(x, axis=-2)
  return x


BIG_LOGIT = 1e9


def over_nodes(spec: dict, name: str) -> bool:
  """Whether a probe's logits are a softmax over nodes on their last axis."""
  _, loc, type_ = spec[name]
  return type_ in (Type.POINTER, Type.PERMUTATION_POINTER) or (
      loc == Location.NODE and type_ == Type.MASK_ONE)


def mask_logits(spec: dict, preds: dict, node_mask) -> dict:
  """Logits over nodes with the padded nodes at -BIG_LOGIT (no probability,
  no gradient); `preds` itself when node_mask is None."""
  if node_mask is None:
    return preds
  out = dict(preds)
  for name, logits in preds.items():
    if over_nodes(spec, name):
      real = node_mask.reshape(node_mask.shape[:1] + (1,) * (logits.ndim - 2)
                               + node_mask.shape[1:])
      out[name] = jnp.where(real, logits, -BIG_LOGIT)
  return out


def edge_layer(spec: dict, name: str):
  """Name of the decoder layer of probe `name` that reads e_t, or None."""
  _, loc, type_ = spec[name]
  if loc == Location.EDGE or (loc == Location.NODE and type_ in (
      Type.POINTER, Type.PERMUTATION_POINTER)):
    return f'{name}_dec_2'
  return None


def gumbel_probe(spec: dict, name: str) -> bool:
  """Probes whose training-time decoding draws Gumbel noise."""
  return spec[name][1:] == (Location.NODE, Type.PERMUTATION_POINTER)


class Decoders(nn.Module):
  """One decoder per probe in `names`; `nb_dims` gives categorical widths."""
  spec: dict
  names: tuple
  hidden: int
  nb_dims: dict
  # The permutation decoder's Sinkhorn at an adaptive temperature when not
  # training (log_sinkhorn's `adaptive`; tests only, model.adaptive_temperature).
  adaptive_temperature: bool = False

  @nn.compact
  def __call__(self, h_t, e_t, graph_fts, training: bool = False, names=None,
               edge_terms=None, gumbel=None, node_mask=None):
    """`names`: a subset of self.names to decode. `edge_terms` (name -> the
    edge part of that probe's e_t layer, bias included): e_t is then only
    the edge latent (or None). `gumbel` (name -> U(0, 1) draws): the noise of
    permutation decoders instead of drawing it here. `node_mask` ([B, N]
    bool, a padded batch's): padded nodes are left out of the graph-level
    max and get no probability in a softmax over nodes (`mask_logits`)."""
    preds = {}
    for name in (self.names if names is None else names):
      _, loc, type_ = self.spec[name]
      width = self.nb_dims.get(name, 1)
      lin = lambda n, k, name=name: nn.Dense(
          n, kernel_init=haiku_init, name=f'{name}_dec_{k}')
      read_edges = functools.partial(self._read_edges, name, e_t, edge_terms)
      if loc == Location.NODE:
        preds[name] = self._node(lin, type_, width, h_t, read_edges, training,
                                 None if gumbel is None else gumbel.get(name))
      elif loc == Location.EDGE:
        w = self.hidden if type_ == Type.POINTER else width
        pred = (lin(w, 0)(h_t)[:, :, None] + lin(w, 1)(h_t)[:, None, :] +
                read_edges(lin(w, 2)))
        if type_ == Type.POINTER:
          p_m = jnp.maximum(pred[:, :, :, None],
                            lin(self.hidden, 3)(h_t)[:, None, None, :])
          preds[name] = jnp.squeeze(lin(1, 4)(p_m), -1)
        else:
          preds[name] = pred if type_ == Type.CATEGORICAL else pred[..., 0]
      else:
        pooled = (h_t if node_mask is None else
                  jnp.where(node_mask[..., None], h_t, -BIG_LOGIT))
        pred = lin(width, 0)(jnp.max(pooled, axis=-2)) + lin(width, 1)(graph_fts)
        if type_ == Type.POINTER:
          preds[name] = pred[:, None, 0] + lin(1, 2)(h_t)[..., 0]
        else:
          preds[name] = pred if type_ == Type.CATEGORICAL else pred[..., 0]
    return mask_logits(self.spec, preds, node_mask)

  def _read_edges(self, name, e_t, edge_terms, layer):
    """layer(e_t), or with `edge_terms`: the given edge part plus the edge
    latent times the last rows of the layer's kernel."""
    if edge_terms is None:
      return layer(e_t)
    out = edge_terms[name]
    if e_t is not None:
      kernel = self.variables['params'][f'{name}_dec_2']['kernel']
      out = out + e_t @ kernel[kernel.shape[0] - e_t.shape[-1]:]
    return out

  def _node(self, lin, type_, width, h_t, read_edges, training, uniform):
    if type_ in (Type.SCALAR, Type.MASK, Type.MASK_ONE):
      return lin(1, 0)(h_t)[..., 0]
    if type_ == Type.CATEGORICAL:
      return lin(width, 0)(h_t)
    # Pointer: node i points at j through edge (j -> i).
    p_1 = lin(self.hidden, 0)(h_t)
    p_e = lin(self.hidden, 1)(h_t)[:, :, None] + read_edges(lin(self.hidden, 2))
    p_m = jnp.maximum(p_1[:, :, None], jnp.swapaxes(p_e, 1, 2))
    logits = lin(1, 3)(p_m)[..., 0]
    if type_ == Type.PERMUTATION_POINTER:
      uniform = uniform if training else None
      key = (self.make_rng('gumbel') if training and uniform is None
             else None)
      logits = log_sinkhorn(
          logits, steps=10, temperature=0.1, zero_diagonal=True,
          noise_key=key, uniform=uniform,
          adaptive=self.adaptive_temperature and not training)
    return logits

  def draw_gumbel(self, batch: int, nb_nodes: int) -> dict:
    """The U(0, 1) draws `__call__(training=True)` would make, in its order
    (one `make_rng` per permutation probe of self.names)."""
    return {name: jax.random.uniform(self.make_rng('gumbel'),
                                     (batch, nb_nodes, nb_nodes))
            for name in self.names if gumbel_probe(self.spec, name)}


def postprocess(spec: dict, preds: dict, hard: bool,
                sinkhorn_steps: int = 25) -> dict:
  """Logits -> probabilities (soft, gradients flow) or hard predictions.

  Hard pointers are float indices, as dm-clrs's `clrs.evaluate` expects.
  Scoring uses 50 Sinkhorn steps, hint feedback 25 (dm-clrs's values).
  """
  out = {}
  for name, data in preds.items():
    type_ = spec[name][2]
    if type_ == Type.SCALAR:
      out[name] = jax.lax.stop_gradient(data) if hard else data
    elif type_ == Type.MASK:
      out[name] = (data > 0.0).astype(jnp.float32) if hard else jax.nn.sigmoid(data)
    elif type_ in (Type.MASK_ONE, Type.CATEGORICAL):
      out[name] = (jax.nn.one_hot(jnp.argmax(data, -1), data.shape[-1]) if hard
                   else jax.nn.softmax(data, axis=-1))
    elif type_ == Type.POINTER:
      out[name] = (jnp.argmax(data, -1).astype(jnp.float32) if hard
                   else jax.nn.softmax(data, axis=-1))
    elif type_ == Type.PERMUTATION_POINTER:
      data = jnp.exp(log_sinkhorn(data, sinkhorn_steps, 0.1, True))
      out[name] = (jax.nn.one_hot(jnp.argmax(data, -1), data.shape[-1]) if hard
                   else data)
    else:
      raise ValueError(f'cannot postprocess type {type_!r} of {name!r}')
  return out
