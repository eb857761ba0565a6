"""The batch: what every model, loss and evaluation reads. Numpy only.

A batch is a plain dict pytree of numpy arrays with fixed shapes per
(graph size, padded number of steps), so a training run compiles a bounded
number of times:

    {'inputs': {name: array}, 'hints': {name: (T, B, ...) array},
     'outputs': {name: array}, 'lengths': (B,) int32}

Pointers are int32 indices, everything else float32. Arrays are keyed by the
names of the algorithm's *processed* spec (`clrs_lib.processed_spec`), a dict
name -> (stage, location, type) of plain strings (`specs`). Nothing here
imports dm-clrs: the models import this module only, so they never load
TensorFlow. Where batches come from: `input_pipeline` (training) and
`splits` (validation and test), both built on `clrs_lib`.
"""

from __future__ import annotations

import os

import numpy as np

Batch = dict
Spec = dict


def time_bucket(steps: int) -> int:
  """Pads a step count up to the grid 2, 3, 4, 6, 8, 12, 16, 24, ...

  Powers of two and their 1.5 multiples: at most a third of padded steps are
  wasted and the number of distinct shapes grows only logarithmically.
  """
  b = 2  # at least one processor step
  while True:
    for cand in (b, b * 3 // 2):
      if cand >= steps:
        return cand
    b *= 2


def _cast(data: np.ndarray, type_: str) -> np.ndarray:
  if type_ == 'pointer':
    return np.asarray(data).astype(np.int32)
  return np.asarray(data, dtype=np.float32)


def to_batch(feedback, spec: Spec, num_steps: int | None = None,
             keep_hints: bool = True) -> Batch:
  """dm-clrs Feedback -> batch dict; hints zero-padded in time to `num_steps`.

  Reads the Feedback's fields only, so dm-clrs need not be imported here."""
  features = feedback.features
  lengths = np.asarray(features.lengths).astype(np.int32)
  t = int(num_steps or time_bucket(int(lengths.max())))
  hints = {}
  if keep_hints:
    for dp in features.hints:
      data = _cast(dp.data, spec[dp.name][2])
      pad = [(0, t - data.shape[0])] + [(0, 0)] * (data.ndim - 1)
      hints[dp.name] = np.pad(data, pad)
  return dict(
      inputs={dp.name: _cast(dp.data, spec[dp.name][2])
              for dp in features.inputs},
      hints=hints,
      outputs={dp.name: _cast(dp.data, spec[dp.name][2])
               for dp in feedback.outputs},
      lengths=lengths)


def take_graphs(batch: Batch, idx) -> Batch:
  """The graphs `idx` (an index array or a slice) of a batch; hints are
  time-major, so they are indexed on their second axis; every other array
  (lengths, an extra test's 'senders') has graphs first."""
  taken = {k: v[idx] for k, v in batch.items()
           if k not in ('inputs', 'hints', 'outputs')}
  return dict(taken,
              inputs={k: v[idx] for k, v in batch['inputs'].items()},
              hints={k: v[:, idx] for k, v in batch['hints'].items()},
              outputs={k: v[idx] for k, v in batch['outputs'].items()})


def num_nodes(batch: Batch) -> int:
  return next(iter(batch['inputs'].values())).shape[1]


def num_steps(batch: Batch) -> int:
  """Padded number of hint steps; the model runs num_steps - 1 processor steps."""
  if batch['hints']:
    return next(iter(batch['hints'].values())).shape[0]
  return int(batch['lengths'].max())


def pad_nodes(batch: Batch, spec: Spec, n: int) -> Batch:
  """The batch on n >= its node count nodes: every node axis zero-padded
  and 'node_mask' ([B, n] bool) marking the real nodes, so that batches of
  every training size share one shape (`data.pad_nodes`). The models and
  losses read the mask wherever they reduce over nodes."""
  m = num_nodes(batch)
  if n < m:
    raise ValueError(f'cannot pad {m} nodes to {n}')

  def pad(name, data, time_axis):
    loc = spec[name][1]
    axes = {'node': 1, 'edge': 2}.get(loc, 0)
    widths = [(0, 0)] * data.ndim
    for a in range(time_axis + 1, time_axis + 1 + axes):
      widths[a] = (0, n - m)
    return np.pad(data, widths)

  out = {group: {k: pad(k, v, int(group == 'hints'))
                 for k, v in batch[group].items()}
         for group in ('inputs', 'hints', 'outputs')}
  mask = np.zeros((len(batch['lengths']), n), bool)
  mask[:, :m] = True
  return dict(out, lengths=batch['lengths'], node_mask=mask)


def save(path: str, batch: Batch) -> None:
  """One .npz per batch, keys 'GROUP/NAME' and 'lengths'; written under a
  temporary name and renamed, so a reader never sees half a file."""
  flat = {f'{group}/{k}': v for group in ('inputs', 'hints', 'outputs')
          for k, v in batch[group].items()}
  flat['lengths'] = batch['lengths']
  tmp = f'{path}.{os.getpid()}.tmp.npz'  # unique: parallel runs may write one key
  np.savez(tmp, **flat)
  os.replace(tmp, path)


def load(path: str) -> Batch:
  """A batch `save` wrote (a cache file: a damaged one is a one-line
  ValueError naming it; never unpickled)."""
  try:
    with np.load(path, allow_pickle=False) as z:
      batch = dict(inputs={}, hints={}, outputs={}, lengths=z['lengths'])
      for key in z.files:
        if '/' in key:
          group, name = key.split('/', 1)
          batch[group][name] = z[key]
  except Exception as e:  # pylint: disable=broad-except  # zip, npy, key errors
    raise ValueError(f'{path} cannot be read ({type(e).__name__}); delete it '
                     '(a cache file, made again)') from None
  return batch


def aggregation_senders(batch: Batch, spec: Spec,
                        width: int | None = None) -> np.ndarray | None:
  """[B, N, K] int32: row j of graph b lists the nodes that send to j in the
  gated max-MPNN (itself, and i wherever the encoders' adjacency has (i, j):
  the symmetrised edge-mask inputs and node-pointer inputs), padded with j
  (a repeated sender leaves a max unchanged). K is the largest in-degree
  rounded up to `time_bucket`'s grid (few distinct shapes), at most N, or
  `width` where given (at least that degree: a split's batches then share
  one shape). None for algorithms without an `adj` input, whose graph is
  complete."""
  inputs = batch['inputs']
  if 'adj' not in inputs:
    return None
  n = num_nodes(batch)
  adj = np.zeros(inputs['adj'].shape[:1] + (n, n), bool)
  for name, data in inputs.items():
    _, loc, type_ = spec[name]
    if loc == 'node' and type_ in ('pointer', 'permutation_pointer'):
      data = np.eye(n, dtype=bool)[np.asarray(data)]
      adj |= data | np.swapaxes(data, 1, 2)
    elif loc == 'edge' and type_ == 'mask':
      adj |= (data + np.swapaxes(data, 1, 2)) > 0
  adj |= np.eye(n, dtype=bool)[None]
  k = min(n, time_bucket(int(adj.sum(axis=1).max())))
  if width is not None:
    if width < int(adj.sum(axis=1).max()):
      raise ValueError(f'width {width} is below the largest in-degree')
    k = width
  out = np.broadcast_to(np.arange(n, dtype=np.int32)[None, :, None],
                        adj.shape[:2] + (k,)).copy()
  for b in range(adj.shape[0]):
    for j in range(n):
      src = np.flatnonzero(adj[b, :, j])
      out[b, j, :len(src)] = src
  return out
