"""dm-clrs, the one door to it: samplers, specs, run.py's preprocessing.

dm-clrs imports TensorFlow (~5 s), so no module imports it at the top:
it loads on the first call of `clrs()`, and everything else reaches it
through this module. What it covers, following `clrs/examples/run.py`:
the algorithm names, the sampler arguments run.py trains and validates with
(plus DEAR's BetterSearchSampler for binary_search), the spec after run.py's
pred-as-input and permutation rewrites (`processed_spec`) and the same
rewrites applied to sampled data (`preprocess`), and conversions of batches
back into dm-clrs's DataPoints/Feedback, for `clrs.evaluate` and the official
BaselineModel. Batches themselves are numpy only (`batches`).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import sys
import tempfile

import numpy as np

from dear_jax.batches import Batch, Spec

# Bump whenever generation or preprocessing changes, so stale caches are not
# read: part of every cached split's and recorded stream's key.
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
# run.py trains and validates these at 5/4 of the other algorithms' sizes.
STRING_MATCHERS = ('naive_string_matcher', 'kmp_matcher')


def clrs():
  """dm-clrs, imported on first use.

  TF_CPP_MIN_LOG_LEVEL is set (unless set) before TensorFlow loads; jax's
  own import sets it to 1 when unset, so after `import jax` it stays 1 here.
  Either way TensorFlow still writes C++ start-up lines (oneDNN, CUDA stubs)
  that no level silences, so fd 2 is captured for the import only; should
  the import fail, the captured text is written back before the exception
  propagates.
  """
  if 'clrs' not in sys.modules:
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    sys.stderr.flush()
    saved = os.dup(2)
    try:
      with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
          import clrs as _  # pylint: disable=g-import-not-at-top,unused-import
        except BaseException:
          os.dup2(saved, 2)
          tmp.seek(0)
          sys.stderr.write(tmp.read().decode(errors='replace'))
          raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)
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


# Data options (`data.options`; README, "Extending"): name -> (the
# algorithms whose samplers it changes, a function returning the sampler
# class built instead of dm-clrs's, called once dm-clrs is loaded). An
# option is a key of a split's protocol (and cache name) only where it
# changes the data.
DATA_OPTIONS: dict = {}
_PROTOCOL_KEYS = ('algorithm', 'split', 'length', 'seed', 'num_samples',
                  'sampler_kwargs', 'pos_seed', 'kind', 'sizes', 'schedule',
                  'batch_size', 'keep_hints')


def register_data_option(name: str, algorithms):
  """Decorator on a function -> sampler class (a dm-clrs Sampler subclass,
  built as dm-clrs builds that algorithm's): `name` becomes an allowed
  entry of `data.options`, changing the data of `algorithms` only."""
  if name in _PROTOCOL_KEYS:
    raise ValueError(f'data option {name!r} would shadow a protocol key')

  def add(sampler_class):
    DATA_OPTIONS[name] = (tuple(algorithms), functools.cache(sampler_class))
    return sampler_class
  return add


register_data_option('better_search', ('binary_search',))(
    _better_search_sampler_class)


def data_option(algorithm: str, options) -> str | None:
  """The one of `options` (names) that changes `algorithm`'s samplers."""
  hits = [o for o in options if algorithm in DATA_OPTIONS[o][0]]
  if len(hits) > 1:
    raise ValueError(f'data options {", ".join(hits)} all change '
                     f'{algorithm}\'s samplers; give one of them')
  return hits[0] if hits else None


def build_sampler(algorithm: str, option: str | None = None, **kwargs):
  """`clrs.build_sampler`, or with a data option that changes `algorithm`
  the same construction around its sampler class (kwargs its `_sample_data`
  does not take are dropped, as dm-clrs drops them)."""
  c = clrs()
  if option is None or algorithm not in DATA_OPTIONS[option][0]:
    return c.build_sampler(algorithm, **kwargs)[0]
  cls = DATA_OPTIONS[option][1]()
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


def preprocess(feedback, algorithm: str, pos_rng: np.random.RandomState | None):
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


def protocol_key(protocol: dict) -> str:
  """The cache key of data generated under `protocol` (a JSON-able dict of
  every parameter that determines it), this module's PROTOCOL_VERSION and
  the installed dm-clrs version."""
  c = clrs()
  full = dict(protocol, protocol_version=PROTOCOL_VERSION,
              clrs_version=getattr(c, '__version__', 'unknown'))
  blob = json.dumps(full, sort_keys=True).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


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
