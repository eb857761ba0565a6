"""Training data: an endless stream of batches from dm-clrs samplers.

`DataConfig` is the `data` config section. `TrainStream` samples on the fly
like `clrs/examples/run.py` (one sampler per training size, run.py's
preprocessing), `RecordedStream` replays a TrainStream recorded on disk, and
`train_stream` picks one; `Prefetch` draws a stream's batches in a
background thread while the device trains. Validation and test sets: `splits`.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import queue
import threading
from typing import Iterator, Sequence

import numpy as np

from dear_jax import batches as batch_lib
from dear_jax import clrs_lib
from dear_jax import sections
from dear_jax.batches import Batch

SIZE_SCHEDULES = ('cycle', 'uniform')  # run.py's round-robin | DEAR's draw


@dataclasses.dataclass(frozen=True)
class DataConfig(sections.Section):
  """What data a run sees: the `data` config section, checked."""
  PREFIX = 'data.'
  train_sizes: tuple = (4, 7, 11, 13, 16)  # CLRS run.py's mixture
  size_schedule: str = 'cycle'  # SIZE_SCHEDULES: run.py's cycle | DEAR's uniform
  batch_size: int = 32
  val_length: int = 16
  test_length: int = 64
  # None means the official counts: val 64*mult, test 32*mult.
  val_num_samples: int | None = None
  test_num_samples: int | None = None
  eval_batch_size: int = 32
  cache_dir: str = '~/.cache/dear_jax/datasets'
  # Record the training batches under cache_dir once and replay them: runs
  # with the same data settings and seed then see identical batches.
  recorded_stream: bool = False
  # binary_search only: DEAR's BetterSearchSampler, no target above every
  # element (CLRS clamps that answer to n-1). Changes train, val and test
  # data and their cache keys; the test split is then no longer CLRS's.
  better_search: bool = False
  # After the official test: the best parameters on fresh CLRS test sets of
  # these sizes (DEAR: 128,256,512), extra_test_num_samples graphs each;
  # results.json 'extra_tests'. Evaluation batches shrink with n.
  extra_test_lengths: tuple = ()
  extra_test_num_samples: int = 100
  # A size whose test would take longer than this many seconds (at the pace
  # of its own first 2 graphs, scored and timed first) is
  # scored on its first graphs that fit, at least 2: the same first graphs
  # for every model. None: always every graph. results.json records the
  # count ('graphs', and 'graphs_planned' where it is fewer).
  extra_test_max_seconds: float | None = None
  # Registered data options (clrs_lib.DATA_OPTIONS) on: each changes the
  # samplers of its own algorithms (train, val and test data, cache keys).
  options: tuple = ()
  # Every training batch padded to the largest training size, with a node
  # mask the models respect: a run compiles one train step (DEAR; the NAR
  # one per padded step count). Evaluation batches are never padded.
  # docs/run_cost.md says what it costs.
  pad_nodes: bool = False

  def __post_init__(self):
    super().__post_init__()
    for name in ('train_sizes', 'extra_test_lengths'):
      object.__setattr__(self, name, tuple(int(s) for s in getattr(self, name)))
    object.__setattr__(self, 'options', tuple(self.options))

  @classmethod
  def check(cls, v, prefix: str) -> None:
    sizes = v.train_sizes
    if not (isinstance(sizes, (tuple, list)) and sizes and all(
        isinstance(s, numbers.Integral) and s >= 2 for s in sizes)):
      raise ValueError(f'{prefix}train_sizes must be graph sizes >= 2, got '
                       f'{sizes}')
    sections.one_of(f'{prefix}size_schedule', v.size_schedule, SIZE_SCHEDULES)
    for name in ('batch_size', 'eval_batch_size', 'val_length', 'test_length'):
      sections.positive(prefix + name, getattr(v, name))
    for name in ('val_num_samples', 'test_num_samples'):
      n = getattr(v, name)
      if n is not None and not (isinstance(n, numbers.Integral) and n > 0):
        raise ValueError(f'{prefix}{name} must be positive, or None for the '
                         f'official count, got {n!r}')
    extra = v.extra_test_lengths
    if not (isinstance(extra, (tuple, list)) and all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 4
        for s in extra) and len(set(extra)) == len(extra)):
      raise ValueError(f'{prefix}extra_test_lengths must be distinct graph '
                       f'sizes >= 4 (e.g. 128,256,512), got {extra!r}')
    sections.int_at_least(f'{prefix}extra_test_num_samples',
                          v.extra_test_num_samples, 1)
    cap = v.extra_test_max_seconds
    if cap is not None and not (isinstance(cap, numbers.Real) and not
                                isinstance(cap, bool) and cap > 0):
      raise ValueError(f'{prefix}extra_test_max_seconds must be a positive '
                       f'number of seconds, or None for no limit, got {cap!r}')
    if not isinstance(v.pad_nodes, bool):
      raise ValueError(f'{prefix}pad_nodes must be True or False, got '
                       f'{v.pad_nodes!r}')
    known = tuple(clrs_lib.DATA_OPTIONS)
    if not (isinstance(v.options, (tuple, list)) and all(
        o in known for o in v.options)):
      raise ValueError(f'{prefix}options must name data options among '
                       f'{", ".join(known)}, got {v.options!r}')


def data_option(algorithm: str, cfg) -> str | None:
  """The data option of `cfg` (a DataConfig or the `data` section) that
  changes `algorithm`'s samplers, if any; better_search is one."""
  options = tuple(getattr(cfg, 'options', ()))
  return clrs_lib.data_option(algorithm, options + (
      ('better_search',) if cfg.better_search else ()))


def training_sizes(algorithm: str, sizes: Sequence[int]) -> tuple:
  """run.py trains the string matchers on a single size, max(sizes)*5//4."""
  if algorithm in clrs_lib.STRING_MATCHERS:
    return ((max(sizes) * 5) // 4,)
  return tuple(sizes)


def pad_to(algorithm: str, cfg, batch: Batch) -> Batch:
  """A training batch as the run trains on it: padded to the largest
  training size when `cfg.pad_nodes` (batches.pad_nodes), else itself."""
  if not cfg.pad_nodes:
    return batch
  return batch_lib.pad_nodes(batch, clrs_lib.processed_spec(algorithm),
                             max(training_sizes(algorithm, cfg.train_sizes)))


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
        clrs_lib.build_sampler(
            algorithm, data_option(algorithm, cfg), num_samples=-1, length=n,
            seed=rng.randint(2**32), track_max_steps=False,
            **clrs_lib.train_sampler_kwargs(algorithm, n))
        for n in self._sizes]
    self._pos_rng = np.random.RandomState(rng.randint(2**32))
    self._schedule_rng = np.random.RandomState(rng.randint(2**32))
    self._algorithm = algorithm
    self._spec = clrs_lib.processed_spec(algorithm)
    self._cfg = cfg
    self._keep_hints = keep_hints
    self._step = 0

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
    return pad_to(self._algorithm, self._cfg, self._draw())

  def _draw(self) -> Batch:
    """The next batch, unpadded (what a recorded stream stores)."""
    if self._cfg.size_schedule == 'cycle':
      idx = self._step % len(self._samplers)
    else:
      idx = self._schedule_rng.randint(len(self._samplers))
    self._step += 1
    fb = self._samplers[idx].next(self._cfg.batch_size)
    fb = clrs_lib.preprocess(fb, self._algorithm, self._pos_rng)
    return batch_lib.to_batch(fb, self._spec, keep_hints=self._keep_hints)


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
    if data_option(algorithm, cfg):
      protocol[data_option(algorithm, cfg)] = True
    self._dir = os.path.join(os.path.expanduser(cfg.cache_dir),
                             'stream-' + clrs_lib.protocol_key(protocol))
    os.makedirs(self._dir, exist_ok=True)
    read_stream_state(self._dir)  # an unreadable one fails before training
    self._live_args = (algorithm, cfg, seed, keep_hints)
    self._live = None
    self._step = 0

  def _path(self, k: int) -> str:
    return os.path.join(self._dir, f'{k}.npz')

  def _live_at(self, k: int) -> TrainStream:
    """The live stream positioned to produce batch k."""
    if self._live is None:
      self._live = TrainStream(*self._live_args)
      state = read_stream_state(self._dir)
      if state is not None and state['step'] <= k:
        self._live.set_state(state)
    while self._live._step < k:  # pylint: disable=protected-access
      self._live._draw()  # pylint: disable=protected-access
    return self._live

  def record(self, steps: int) -> None:
    """Makes sure batches 0 .. steps-1 are on disk."""
    for k in range(steps):
      if not os.path.exists(self._path(k)):
        self._record(k)

  def _record(self, k: int) -> Batch:
    live = self._live_at(k)
    batch = live._draw()  # pylint: disable=protected-access
    batch_lib.save(self._path(k), batch)
    write_stream_state(self._dir, live.get_state())
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
    algorithm, cfg = self._live_args[:2]
    if os.path.exists(self._path(k)):
      return pad_to(algorithm, cfg, batch_lib.load(self._path(k)))
    return pad_to(algorithm, cfg, self._record(k))


_STATE_FILE = 'live_state.npz'
_RNG_FIELDS = ('keys', 'pos', 'has_gauss', 'cached')


def write_stream_state(folder: str, state: dict) -> None:
  """TrainStream.get_state() as plain arrays in FOLDER/live_state.npz (read
  without pickle: a shared cache folder must not run code); atomic."""
  flat = {'step': state['step']}
  for i, rng in enumerate(state['rngs']):
    flat.update({f'{name}{i}': rng[name] for name in _RNG_FIELDS})
  tmp = os.path.join(folder, f'live_state.{os.getpid()}.tmp.npz')
  np.savez(tmp, **flat)
  os.replace(tmp, os.path.join(folder, _STATE_FILE))


def read_stream_state(folder: str) -> dict | None:
  """The state `write_stream_state` left in FOLDER, or None; a damaged file,
  or the pickle of earlier versions (never loaded), is a one-line ValueError."""
  if os.path.exists(os.path.join(folder, 'live_state.pkl')):
    raise ValueError(
        f'{os.path.join(folder, "live_state.pkl")} is a stream state in the '
        'pickle format of an earlier version, which is not loaded (it could '
        f'run code): delete the cache folder {folder} (it is recorded again)')
  path = os.path.join(folder, _STATE_FILE)
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      count = sum(1 for name in z.files if name.startswith('keys'))
      state = dict(step=int(z['step']), rngs=[
          {name: z[f'{name}{i}'] for name in _RNG_FIELDS}
          for i in range(count)])
  except Exception as e:  # pylint: disable=broad-except  # zip, npy, key errors
    raise ValueError(f'{path} cannot be read ({type(e).__name__}); delete the '
                     f'cache folder {folder} (it is recorded again)') from None
  return state


def _shapes(tree):
  if isinstance(tree, dict):
    return tuple((k, _shapes(v)) for k, v in sorted(tree.items()))
  return np.shape(tree)


def same_shape_batches(stream, count: int) -> list:
  """`count` batches of `stream`, all of the most common shape among 4 x
  count drawn (ties: the first seen): timed loops then compile once."""
  by_shape = {}
  for _ in range(4 * count):
    b = next(stream)
    by_shape.setdefault(_shapes(b), []).append(b)
  return max(by_shape.values(), key=len)[:count]


def train_stream(algorithm: str, cfg: DataConfig, seed: int, keep_hints: bool = True,
                 recorded: bool = False):
  """The training stream: live (default) or recorded to disk and replayed."""
  cls = RecordedStream if recorded else TrainStream
  return cls(algorithm, cfg, seed, keep_hints=keep_hints)


class Prefetch:
  """The next `count` batches of `stream`, drawn in a background thread at
  most `depth` ahead of the training loop, in the stream's own order.

  `get_state` is the stream's state after the last batch *taken*, not after
  the ones drawn ahead: a checkpoint holds it, so a resumed run continues
  with the batch the loop would have taken next. The thread draws no more
  than `count` batches (a run's remaining updates), so a stream recorded to
  disk grows by exactly what the run uses. Until the first `next`, nothing
  is drawn and the stream may still be positioned (`set_state`). With
  depth 0 batches are drawn when taken, in the caller's thread.
  """

  def __init__(self, stream, count: int, depth: int = 2):
    self._stream, self._left, self._depth = stream, int(count), int(depth)
    self._queue = queue.Queue()
    self._slots = threading.Semaphore(depth)  # batches drawn, not yet taken
    self._stop = threading.Event()
    self._thread = None
    self._state = None

  def _draw(self, count: int) -> None:
    try:
      for _ in range(count):
        while not self._slots.acquire(timeout=0.1):
          if self._stop.is_set():
            return
        if self._stop.is_set():
          return
        batch = next(self._stream)
        self._queue.put((batch, self._stream.get_state()))
    except BaseException as e:  # pylint: disable=broad-except
      self._queue.put((None, e))  # raised where the loop takes the batch

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    if self._depth == 0:
      if self._left <= 0:
        raise StopIteration
      self._left -= 1
      return next(self._stream)
    if self._thread is None:
      self._state = self._stream.get_state()
      self._thread = threading.Thread(target=self._draw, args=(self._left,),
                                      daemon=True)
      self._thread.start()
    if self._left <= 0:
      raise StopIteration
    batch, state = self._queue.get()
    self._slots.release()
    if batch is None:
      self._left = 0
      raise state
    self._left -= 1
    self._state = state
    return batch

  def get_state(self) -> dict:
    return self._stream.get_state() if self._thread is None else self._state

  def close(self) -> None:
    """Stops the thread (batches drawn ahead are dropped)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
