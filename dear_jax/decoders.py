"""Decoders: latents -> CLRS probe predictions (clrs/_src/decoders.py).

Inputs are the CLRS ones: h_t = [x, h_prev, h_new] (3H) per node,
e_t = [e, edge latent] per edge and the graph features. `postprocess` turns
logits into hard predictions (scoring) or soft ones (fed back as hints).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dear_jax.encoders import haiku_init
from dear_jax.specs import Location, Type


def log_sinkhorn(x, steps: int, temperature: float, zero_diagonal: bool,
                 noise_key=None):
  """Log of a doubly stochastic matrix from permutation logits (with Gumbel noise)."""
  if noise_key is not None:
    u = jax.random.uniform(noise_key, x.shape)
    x = x - jnp.log(-jnp.log(u + 1e-12) + 1e-12)
  x = x / temperature
  if zero_diagonal:
    x = x - 1e6 * jnp.eye(x.shape[-1])
  for _ in range(steps):
    x = jax.nn.log_softmax(x, axis=-1)
    x = jax.nn.log_softmax(x, axis=-2)
  return x


class Decoders(nn.Module):
  """One decoder per probe in `names`; `nb_dims` gives categorical widths."""
  spec: dict
  names: tuple
  hidden: int
  nb_dims: dict

  @nn.compact
  def __call__(self, h_t, e_t, graph_fts, training: bool = False):
    preds = {}
    for name in self.names:
      _, loc, type_ = self.spec[name]
      width = self.nb_dims.get(name, 1)
      lin = lambda n, k, name=name: nn.Dense(
          n, kernel_init=haiku_init, name=f'{name}_dec_{k}')
      if loc == Location.NODE:
        preds[name] = self._node(lin, type_, width, h_t, e_t, training)
      elif loc == Location.EDGE:
        w = self.hidden if type_ == Type.POINTER else width
        pred = (lin(w, 0)(h_t)[:, :, None] + lin(w, 1)(h_t)[:, None, :] +
                lin(w, 2)(e_t))
        if type_ == Type.POINTER:
          p_m = jnp.maximum(pred[:, :, :, None],
                            lin(self.hidden, 3)(h_t)[:, None, None, :])
          preds[name] = jnp.squeeze(lin(1, 4)(p_m), -1)
        else:
          preds[name] = pred if type_ == Type.CATEGORICAL else pred[..., 0]
      else:
        pred = lin(width, 0)(jnp.max(h_t, axis=-2)) + lin(width, 1)(graph_fts)
        if type_ == Type.POINTER:
          preds[name] = pred[:, None, 0] + lin(1, 2)(h_t)[..., 0]
        else:
          preds[name] = pred if type_ == Type.CATEGORICAL else pred[..., 0]
    return preds

  def _node(self, lin, type_, width, h_t, e_t, training):
    if type_ in (Type.SCALAR, Type.MASK, Type.MASK_ONE):
      return lin(1, 0)(h_t)[..., 0]
    if type_ == Type.CATEGORICAL:
      return lin(width, 0)(h_t)
    # Pointer: node i points at j through edge (j -> i).
    p_1 = lin(self.hidden, 0)(h_t)
    p_e = lin(self.hidden, 1)(h_t)[:, :, None] + lin(self.hidden, 2)(e_t)
    p_m = jnp.maximum(p_1[:, :, None], jnp.swapaxes(p_e, 1, 2))
    logits = lin(1, 3)(p_m)[..., 0]
    if type_ == Type.PERMUTATION_POINTER:
      key = self.make_rng('gumbel') if training else None
      logits = log_sinkhorn(logits, steps=10, temperature=0.1,
                            zero_diagonal=True, noise_key=key)
    return logits


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
