"""CLRS-30 data from dm-clrs samplers, preprocessed like `clrs/examples/run.py`.

A batch is a plain dict pytree of numpy arrays with fixed shapes per
(graph size, padded number of steps), so a training run compiles a bounded
number of times:

    {'inputs': {name: array}, 'hints': {name: (T, B, ...) array},
     'outputs': {name: array}, 'lengths': (B,) int32}

Pointers are int32 indices, everything else float32. The specs used by the
model are the *processed* specs (pred-as-input, permutation pointers).
Validation and test sets are generated once and cached on disk under a key
that covers every parameter of the protocol.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import os
import pickle
import sys
from typing import Iterator, Sequence

import numpy as np

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# Bump whenever generation or preprocessing changes, so stale caches are not read.
PROTOCOL_VERSION = 1

# run.py's PRED_AS_INPUT_ALGOS.
PRED_AS_INPUT_ALGOS = (
    'binary_search', 'minimum', 'find_maximum_subarray',
    'find_maximum_subarray_kadane', 'matrix_chain_order', 'lcs_length',
    'optimal_bst', 'activity_selector', 'task_scheduling',
    'naive_string_matcher', 'kmp_matcher', 'jarvis_march')
# run.py halves the Erdos-Renyi p for these, otherwise trajectories are very long.
SPARSE_ALGOS = ('articulation_points', 'bridges', 'mst_kruskal',
                'bipartite_matching')
STRING_MATCHERS = ('naive_string_matcher', 'kmp_matcher')

Batch = dict
Spec = dict


def clrs():
  """Imports dm-clrs lazily: it pulls in TensorFlow (~5 s).

  TensorFlow's C++ start-up lines (oneDNN, CUDA stubs) ignore
  TF_CPP_MIN_LOG_LEVEL, so stderr is silenced at the file-descriptor level for
  the import only; Python exceptions still propagate and print.
  """
  if 'clrs' not in sys.modules:
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
      import clrs as _  # pylint: disable=g-import-not-at-top,unused-import
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      os.close(devnull)
  logging.getLogger('absl').setLevel(logging.ERROR)
  return sys.modules['clrs']


def algorithm_names() -> tuple[str, ...]:
  return tuple(clrs()._src.specs.CLRS_30_ALGS)  # not re-exported by dm-clrs


def check_algorithm(name: str) -> None:
  names = algorithm_names()
  if name not in names:
    raise ValueError(f'unknown algorithm {name!r}; valid: {", ".join(names)}')


def train_sampler_kwargs(algorithm: str, length: int) -> dict:
  """The sampler kwargs run.py uses for training and validation.

  The needle length (random in 1..8) is capped at (length-1)//2, below which
  dm-clrs's string samplers crash; this only changes sizes under 17.
  """
  p = tuple(0.1 + 0.1 * i for i in range(9))
  if algorithm in SPARSE_ALGOS:
    p = tuple(x / 2 for x in p)
  return dict(p=p, length_needle=-min(8, max(1, (length - 1) // 2)))


@functools.cache
def _better_search_sampler_class():
  """dm-clrs's SearchSampler without targets above every element (DEAR's
  BetterSearchSampler, built lazily because dm-clrs imports TensorFlow).

  dm-clrs draws a sorted array and a target x, both U[0, 1); when x exceeds
  every element, binary search clamps its answer to the last index, a case
  the task then has to learn as an exception. Here such an x trades places
  with the largest element: the array stays sorted, the target now lies
  between its last two elements (the answer is still the last index, but by
  the search's own rule). The random draws are the dm-clrs sampler's, so a
  seed gives the same samples except for those swaps."""
  samplers = clrs()._src.samplers  # pylint: disable=protected-access

  class BetterSearchSampler(samplers.SearchSampler):
    CAN_TRUNCATE_INPUT_DATA = True  # dm-clrs >= 2.0.2 requires it declared

    def _sample_data(self, length: int, low: float = 0., high: float = 1.):
      x, arr = super()._sample_data(length, low, high)
      if x > arr[-1]:
        x, arr[-1] = arr[-1], x
      return [x, arr]

  return BetterSearchSampler


def uses_better_search(algorithm: str, better_search: bool) -> bool:
  """data.better_search only changes binary_search's samplers."""
  return bool(better_search) and algorithm == 'binary_search'


def build_sampler(algorithm: str, better_search: bool = False, **kwargs):
  """`clrs.build_sampler`, or for binary_search with `better_search` the
  same construction around BetterSearchSampler (kwargs its `_sample_data`
  does not take are dropped, as dm-clrs drops them)."""
  c = clrs()
  if not uses_better_search(algorithm, better_search):
    return c.build_sampler(algorithm, **kwargs)[0]
  cls = _better_search_sampler_class()
  accepted = inspect.signature(cls._sample_data).parameters  # pylint: disable=protected-access
  own = ('num_samples', 'seed', 'track_max_steps', 'truncate_decimals')
  sampler_kwargs = {k: v for k, v in kwargs.items() if k in accepted}
  return cls(getattr(c._src.algorithms, algorithm), c.SPECS[algorithm],  # pylint: disable=protected-access
             **{k: v for k, v in kwargs.items() if k in own}, **sampler_kwargs)


def processed_spec(algorithm: str) -> Spec:
  """The spec after run.py's pred-as-input and enforced permutations."""
  c = clrs()
  spec = dict(c.SPECS[algorithm])
  if algorithm in PRED_AS_INPUT_ALGOS:
    spec, _ = c.process_pred_as_input(spec, iter(()))
  spec, _ = c.process_permutations(spec, iter(()), True)
  return dict(spec)


def _preprocess(feedback, algorithm: str, pos_rng: np.random.RandomState | None):
  """Applies run.py's wrappers, in run.py's order, to one Feedback."""
  c = clrs()
  it = iter([feedback])
  if pos_rng is not None:
    it = c.process_random_pos(it, pos_rng)
  spec = dict(c.SPECS[algorithm])
  if algorithm in PRED_AS_INPUT_ALGOS:
    spec, it = c.process_pred_as_input(spec, it)
  _, it = c.process_permutations(spec, it, True)
  return next(it)


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
  """Feedback -> batch dict; hints zero-padded in time to `num_steps`."""
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


def num_nodes(batch: Batch) -> int:
  return next(iter(batch['inputs'].values())).shape[1]


def num_steps(batch: Batch) -> int:
  """Padded number of hint steps; the model runs num_steps - 1 processor steps."""
  if batch['hints']:
    return next(iter(batch['hints'].values())).shape[0]
  return int(batch['lengths'].max())


def datapoints(arrays: dict, spec: Spec) -> list:
  """Arrays -> dm-clrs DataPoints, e.g. for `clrs.evaluate`."""
  c = clrs()
  return [c.DataPoint(name=k, location=spec[k][1], type_=spec[k][2], data=v)
          for k, v in arrays.items()]


def to_feedback(batch: Batch, spec: Spec):
  """Batch -> dm-clrs Feedback (for the official BaselineModel)."""
  c = clrs()
  features = c.Features(inputs=tuple(datapoints(batch['inputs'], spec)),
                        hints=tuple(datapoints(batch['hints'], spec)),
                        lengths=batch['lengths'].astype(np.float32))
  return c.Feedback(features=features,
                    outputs=datapoints(batch['outputs'], spec))


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What data a run sees. Field names match the `data` config section."""
  train_sizes: tuple = (4, 7, 11, 13, 16)
  size_schedule: str = 'cycle'  # 'cycle' (run.py round-robin) | 'uniform'
  batch_size: int = 32
  val_length: int = 16
  test_length: int = 64
  # None means the official counts: val 64*mult, test 32*mult.
  val_num_samples: int | None = None
  test_num_samples: int | None = None
  eval_batch_size: int = 32
  cache_dir: str = '~/.cache/dear_jax/datasets'
  recorded_stream: bool = False  # replay training batches recorded on disk
  better_search: bool = False  # binary_search: DEAR's BetterSearchSampler

  @classmethod
  def from_dict(cls, d) -> 'DataConfig':
    d = dict(d)
    d['train_sizes'] = tuple(int(s) for s in d['train_sizes'])
    return cls(**d)


def training_sizes(algorithm: str, sizes: Sequence[int]) -> tuple:
  """run.py trains the string matchers on a single size, max(sizes)*5//4."""
  if algorithm in STRING_MATCHERS:
    return ((max(sizes) * 5) // 4,)
  return tuple(sizes)


def validation_length(algorithm: str, cfg: 'DataConfig') -> int:
  """run.py validates at the largest training size (20 for string matchers)."""
  if algorithm in STRING_MATCHERS:
    return (cfg.val_length * 5) // 4
  return cfg.val_length


def _rng_state(rng: np.random.RandomState) -> dict:
  _, keys, pos, has_gauss, cached = rng.get_state()
  return dict(keys=keys, pos=np.array(pos, np.int64),
              has_gauss=np.array(has_gauss, np.int64),
              cached=np.array(cached, np.float64))


class TrainStream:
  """Infinite training batches: one on-the-fly dm-clrs sampler per size.

  `cycle` visits the sizes round-robin (CLRS run.py); `uniform` draws the size
  of each batch uniformly (DEAR draws it per graph; per batch keeps shapes
  fixed and the graphs unpadded).
  """

  def __init__(self, algorithm: str, cfg: DataConfig, seed: int,
               keep_hints: bool = True):
    rng = np.random.RandomState(seed)
    self._sizes = training_sizes(algorithm, cfg.train_sizes)
    self._samplers = [
        build_sampler(algorithm, cfg.better_search, num_samples=-1, length=n,
                      seed=rng.randint(2**32), track_max_steps=False,
                      **train_sampler_kwargs(algorithm, n))
        for n in self._sizes]
    self._pos_rng = np.random.RandomState(rng.randint(2**32))
    self._schedule_rng = np.random.RandomState(rng.randint(2**32))
    self._algorithm = algorithm
    self._spec = processed_spec(algorithm)
    self._cfg = cfg
    self._keep_hints = keep_hints
    self._step = 0
    if cfg.size_schedule not in ('cycle', 'uniform'):
      raise ValueError(f'data.size_schedule must be cycle or uniform, '
                       f'got {cfg.size_schedule!r}')

  def _rngs(self) -> list:
    return [s._rng for s in self._samplers] + [self._pos_rng,  # pylint: disable=protected-access
                                               self._schedule_rng]

  def get_state(self) -> dict:
    """Every RNG state of the stream, as arrays (for checkpoints)."""
    return dict(step=np.array(self._step, np.int64),
                rngs=[_rng_state(r) for r in self._rngs()])

  def set_state(self, state: dict) -> None:
    for rng, s in zip(self._rngs(), state['rngs']):
      rng.set_state(('MT19937', np.asarray(s['keys'], np.uint32),
                     int(s['pos']), int(s['has_gauss']), float(s['cached'])))
    self._step = int(state['step'])

  def __iter__(self) -> Iterator[Batch]:
    return self

  def __next__(self) -> Batch:
    if self._cfg.size_schedule == 'cycle':
      idx = self._step % len(self._samplers)
    else:
      idx = self._schedule_rng.randint(len(self._samplers))
    self._step += 1
    fb = self._samplers[idx].next(self._cfg.batch_size)
    fb = _preprocess(fb, self._algorithm, self._pos_rng)
    return to_batch(fb, self._spec, keep_hints=self._keep_hints)


class RecordedStream:
  """TrainStream's batches, recorded to disk once and replayed by every later
  run with the same (algorithm, training sizes, schedule, batch size, seed,
  hints): models compared on one stream see identical batches, and the
  dm-clrs samplers (the slow part of a short run on a GPU) run once.

  Batch k is cache_dir/stream-KEY/k.npz; the live stream's RNG state after the
  last recorded batch sits beside them, so recording resumes where it stopped.
  One process should record a stream at a time (`record` it first, then
  start the runs that share it).
  """

  def __init__(self, algorithm: str, cfg: DataConfig, seed: int,
               keep_hints: bool = True):
    protocol = dict(kind='train_stream', algorithm=algorithm,
                    sizes=list(training_sizes(algorithm, cfg.train_sizes)),
                    schedule=cfg.size_schedule, batch_size=cfg.batch_size,
                    seed=int(seed), keep_hints=bool(keep_hints))
    if uses_better_search(algorithm, cfg.better_search):
      protocol['better_search'] = True
    self._dir = os.path.join(os.path.expanduser(cfg.cache_dir),
                             'stream-' + _protocol_key(protocol))
    os.makedirs(self._dir, exist_ok=True)
    self._live_args = (algorithm, cfg, seed, keep_hints)
    self._live = None
    self._step = 0

  def _path(self, k: int) -> str:
    return os.path.join(self._dir, f'{k}.npz')

  def _live_at(self, k: int) -> TrainStream:
    """The live stream positioned to produce batch k."""
    if self._live is None:
      self._live = TrainStream(*self._live_args)
      state_path = os.path.join(self._dir, 'live_state.pkl')
      if os.path.exists(state_path):
        with open(state_path, 'rb') as f:
          state = pickle.load(f)
        if state['step'] <= k:
          self._live.set_state(state)
    while self._live._step < k:  # pylint: disable=protected-access
      next(self._live)
    return self._live

  def record(self, steps: int) -> None:
    """Makes sure batches 0 .. steps-1 are on disk."""
    for k in range(steps):
      if not os.path.exists(self._path(k)):
        self._record(k)

  def _record(self, k: int) -> Batch:
    live = self._live_at(k)
    batch = next(live)
    _save(self._path(k), batch)
    tmp = os.path.join(self._dir, f'live_state.{os.getpid()}.tmp')
    with open(tmp, 'wb') as f:
      pickle.dump(live.get_state(), f)
    os.replace(tmp, os.path.join(self._dir, 'live_state.pkl'))
    return batch

  def get_state(self) -> dict:
    return dict(step=np.array(self._step, np.int64))

  def set_state(self, state: dict) -> None:
    self._step = int(state['step'])

  def __iter__(self) -> Iterator[Batch]:
    return self

  def __next__(self) -> Batch:
    k = self._step
    self._step += 1
    if os.path.exists(self._path(k)):
      return _load(self._path(k))
    return self._record(k)


def train_stream(algorithm: str, cfg: DataConfig, seed: int, keep_hints: bool = True,
                 recorded: bool = False):
  """The training stream: live (default) or recorded to disk and replayed."""
  cls = RecordedStream if recorded else TrainStream
  return cls(algorithm, cfg, seed, keep_hints=keep_hints)


@dataclasses.dataclass
class EvalSet:
  """A whole split as fixed-shape batches; the last one padded by repetition."""
  batches: list
  num_samples: int
  outputs: dict       # unpadded truth, numpy, for clrs.evaluate
  lengths: np.ndarray  # unpadded true hint lengths
  spec: Spec
  key: str            # the cache key: identifies the protocol


def _split_protocol(algorithm: str, split: str, cfg: DataConfig,
                    seed: int) -> dict:
  """Every parameter that determines a split's content. `better_search` is
  a key only where it changes the data, so the keys of every other split
  (and cache file names) are those of before the option existed."""
  protocol = _base_split_protocol(algorithm, split, cfg, seed)
  if uses_better_search(algorithm, cfg.better_search):
    protocol['better_search'] = True
  return protocol


def _base_split_protocol(algorithm: str, split: str, cfg: DataConfig,
                         seed: int) -> dict:
  c = clrs()
  mult = c.CLRS_30_ALGS_SETTINGS[algorithm]['num_samples_multiplier']
  if split == 'test':
    # The official test set (dataset.py): seed 3, 32*mult graphs at n=64,
    # default sampler kwargs and no random pos.
    return dict(algorithm=algorithm, split=split, length=cfg.test_length,
                seed=c.CLRS30['test']['seed'],
                num_samples=cfg.test_num_samples or 32 * mult,
                sampler_kwargs={}, pos_seed=None)
  if split == 'val':
    rng = np.random.RandomState(seed)
    val_seed, pos_seed = rng.randint(2**32, size=2)
    length = validation_length(algorithm, cfg)
    kwargs = train_sampler_kwargs(algorithm, length)
    return dict(algorithm=algorithm, split=split, length=length,
                seed=int(val_seed),
                num_samples=cfg.val_num_samples or 64 * mult,
                sampler_kwargs={k: list(v) if isinstance(v, tuple) else v
                                for k, v in kwargs.items()},
                pos_seed=int(pos_seed))
  raise ValueError(f'split must be val or test, got {split!r}')


def _protocol_key(protocol: dict) -> str:
  c = clrs()
  full = dict(protocol, protocol_version=PROTOCOL_VERSION,
              clrs_version=getattr(c, '__version__', 'unknown'))
  blob = json.dumps(full, sort_keys=True).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


def _generate(protocol: dict) -> Batch:
  kwargs = {k: tuple(v) if isinstance(v, list) else v
            for k, v in protocol['sampler_kwargs'].items()}
  sampler = build_sampler(
      protocol['algorithm'], protocol.get('better_search', False),
      num_samples=protocol['num_samples'], length=protocol['length'],
      seed=protocol['seed'], **kwargs)
  pos_rng = (None if protocol['pos_seed'] is None
             else np.random.RandomState(protocol['pos_seed']))
  fb = _preprocess(sampler.next(), protocol['algorithm'], pos_rng)
  spec = processed_spec(protocol['algorithm'])
  return to_batch(fb, spec, num_steps=int(np.max(fb.features.lengths)))


def _save(path: str, batch: Batch) -> None:
  flat = {f'{group}/{k}': v for group in ('inputs', 'hints', 'outputs')
          for k, v in batch[group].items()}
  flat['lengths'] = batch['lengths']
  tmp = f'{path}.{os.getpid()}.tmp.npz'  # unique: parallel runs may write one key
  np.savez(tmp, **flat)
  os.replace(tmp, path)


def _load(path: str) -> Batch:
  with np.load(path) as z:
    batch = dict(inputs={}, hints={}, outputs={}, lengths=z['lengths'])
    for key in z.files:
      if '/' in key:
        group, name = key.split('/', 1)
        batch[group][name] = z[key]
  return batch


def _take(batch: Batch, idx: np.ndarray, num_steps: int) -> Batch:
  hints = {}
  for k, v in batch['hints'].items():
    v = v[:, idx]
    pad = [(0, num_steps - v.shape[0])] + [(0, 0)] * (v.ndim - 1)
    hints[k] = np.pad(v, pad)
  return dict(inputs={k: v[idx] for k, v in batch['inputs'].items()},
              hints=hints,
              outputs={k: v[idx] for k, v in batch['outputs'].items()},
              lengths=batch['lengths'][idx])


def load_split(algorithm: str, split: str, cfg: DataConfig, seed: int = 0,
               keep_hints: bool = True) -> EvalSet:
  """The validation (depends on seed) or official test split, cached on disk."""
  protocol = _split_protocol(algorithm, split, cfg, seed)
  key = _protocol_key(protocol)
  cache_dir = os.path.expanduser(cfg.cache_dir)
  os.makedirs(cache_dir, exist_ok=True)
  path = os.path.join(cache_dir,
                      f'{algorithm}_{split}_n{protocol["length"]}_{key}.npz')
  if os.path.exists(path):
    full = _load(path)
  else:
    full = _generate(protocol)
    _save(path, full)
  n = len(full['lengths'])
  bs = cfg.eval_batch_size
  t = time_bucket(int(full['lengths'].max()))
  if not keep_hints:
    full = dict(full, hints={})
  batches = []
  for start in range(0, n, bs):
    idx = np.arange(start, start + bs)
    idx = np.minimum(idx, n - 1)  # pad the last batch by repeating a graph
    batches.append(_take(full, idx, t))
  return EvalSet(batches=batches, num_samples=n, outputs=full['outputs'],
                 lengths=full['lengths'], spec=processed_spec(algorithm),
                 key=key)
