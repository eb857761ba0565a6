"""Losses, exactly as dm-clrs (clrs/_src/losses.py): summed over probes, unweighted."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dear_jax.specs import Type

MASKED = -1.0
EPS = 1e-12


def _per_element(type_: str, truth, pred, nb_nodes: int, hint: bool):
  """Elementwise loss and its validity mask for one probe."""
  mask = None
  if type_ == Type.SCALAR:
    loss = (pred - truth) ** 2
  elif type_ == Type.MASK:
    loss = (jnp.maximum(pred, 0) - pred * truth +
            jnp.log1p(jnp.exp(-jnp.abs(pred))))
    mask = (truth != MASKED).astype(jnp.float32)
  elif type_ == Type.MASK_ONE and hint:
    loss = -jnp.sum(truth * jax.nn.log_softmax(pred), axis=-1, keepdims=True)
  elif type_ in (Type.MASK_ONE, Type.CATEGORICAL):
    labels = truth if hint else truth * (truth != MASKED)
    loss = -jnp.sum(labels * jax.nn.log_softmax(pred), axis=-1)
    mask = jnp.any(truth == 1, axis=-1).astype(jnp.float32)
  elif type_ == Type.POINTER:
    loss = -jnp.sum(jax.nn.one_hot(truth, nb_nodes) *
                    jax.nn.log_softmax(pred), axis=-1)
  elif type_ == Type.PERMUTATION_POINTER:
    loss = -jnp.sum(truth * pred, axis=-1)
  else:
    raise ValueError(f'no loss for type {type_!r}')
  return loss, (jnp.ones_like(loss) if mask is None else mask)


def output_loss(type_: str, truth, pred, nb_nodes: int):
  loss, mask = _per_element(type_, truth, pred, nb_nodes, hint=False)
  if type_ in (Type.MASK_ONE, Type.CATEGORICAL):
    # dm-clrs divides by the number of positive labels, i.e. of rows.
    return jnp.sum(loss) / jnp.sum(truth == 1)
  return jnp.sum(loss * mask) / jnp.sum(mask)


def hint_loss(type_: str, truth, preds, lengths, nb_nodes: int):
  """truth: (T, B, ...); preds: (T-1, B, ...) predicting truth[1:]."""
  loss, mask = _per_element(type_, truth[1:], preds, nb_nodes, hint=True)
  steps = jnp.arange(truth.shape[0] - 1)[:, None]
  not_done = (lengths[None] > steps + 1).astype(jnp.float32)
  mask = mask * not_done.reshape(not_done.shape + (1,) * (loss.ndim - 2))
  return jnp.sum(loss * mask) / jnp.maximum(jnp.sum(mask), EPS)


def total_loss(spec: dict, batch: dict, output_preds: dict, hint_preds=None):
  """Sum of output losses plus, when hints are decoded, hint losses."""
  nb_nodes = next(iter(batch['inputs'].values())).shape[1]
  total = 0.0
  for name, truth in batch['outputs'].items():
    total += output_loss(spec[name][2], truth, output_preds[name], nb_nodes)
  if hint_preds is not None:
    for name, truth in batch['hints'].items():
      total += hint_loss(spec[name][2], truth, hint_preds[name],
                         batch['lengths'], nb_nodes)
  return total
