"""Losses, exactly as dm-clrs (clrs/_src/losses.py): summed over probes, unweighted."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dear_jax.specs import Location, Type

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


def real_positions(loc: str, type_: str, node_mask, ndim: int):
  """[B, ...] float, 1 on a probe's positions whose nodes are all real
  (node_mask [B, N] of a padded batch), with `ndim` axes; None for an
  unpadded batch, a graph-level probe or a node mask_one (one position per
  graph: its softmax over nodes is masked by the decoder)."""
  if node_mask is None or loc == Location.GRAPH or (
      loc == Location.NODE and type_ == Type.MASK_ONE):
    return None
  m = node_mask.astype(jnp.float32)
  if loc == Location.EDGE:
    m = m[:, :, None] * m[:, None, :]
  return m.reshape(m.shape + (1,) * (ndim - m.ndim))


def _one_hot_on_real(loc: str, type_: str, truth, node_mask):
  """A node mask_one's truth (one-hot over nodes) zero on padded nodes,
  whatever a padded batch holds there; other truths as they are."""
  if node_mask is None or loc != Location.NODE or type_ != Type.MASK_ONE:
    return truth
  return truth * node_mask.astype(truth.dtype)


def output_loss(type_: str, truth, pred, nb_nodes: int, real=None):
  """`real`: `real_positions` of a padded batch (padded positions count
  for nothing, in the sum and in the count)."""
  loss, mask = _per_element(type_, truth, pred, nb_nodes, hint=False)
  if real is not None:
    real = real.reshape(real.shape[:loss.ndim])
    loss, mask = loss * real, mask * real
  if type_ in (Type.MASK_ONE, Type.CATEGORICAL):
    # dm-clrs divides by the number of positive labels, i.e. of rows.
    return jnp.sum(loss) / jnp.sum(truth == 1)
  return jnp.sum(loss * mask) / jnp.sum(mask)


def hint_loss(type_: str, truth, preds, lengths, nb_nodes: int, real=None):
  """truth: (T, B, ...); preds: (T-1, B, ...) predicting truth[1:]."""
  loss, mask = _per_element(type_, truth[1:], preds, nb_nodes, hint=True)
  steps = jnp.arange(truth.shape[0] - 1)[:, None]
  not_done = (lengths[None] > steps + 1).astype(jnp.float32)
  mask = mask * not_done.reshape(not_done.shape + (1,) * (loss.ndim - 2))
  if real is not None:
    mask = mask * real.reshape(real.shape[:loss.ndim - 1])[None]
  return jnp.sum(loss * mask) / jnp.maximum(jnp.sum(mask), EPS)


def total_loss(spec: dict, batch: dict, output_preds: dict, hint_preds=None):
  """Sum of output losses plus, when hints are decoded, hint losses. A
  padded batch's (`batches.pad_nodes`) padded nodes count for nothing."""
  nb_nodes = next(iter(batch['inputs'].values())).shape[1]
  node_mask = batch.get('node_mask')
  total = 0.0
  for name, truth in batch['outputs'].items():
    _, loc, type_ = spec[name]
    truth = _one_hot_on_real(loc, type_, truth, node_mask)
    total += output_loss(type_, truth, output_preds[name], nb_nodes,
                         real_positions(loc, type_, node_mask, truth.ndim))
  if hint_preds is not None:
    for name, truth in batch['hints'].items():
      _, loc, type_ = spec[name]
      truth = _one_hot_on_real(loc, type_, truth, node_mask)
      total += hint_loss(type_, truth, hint_preds[name], batch['lengths'],
                         nb_nodes,
                         real_positions(loc, type_, node_mask, truth.ndim - 1))
  return total
