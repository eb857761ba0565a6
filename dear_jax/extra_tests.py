"""Tests at sizes beyond the official n=64 (DEAR tests at 128, 256 and 512).

After the official test, `evaluate_sizes` scores the best parameters on
fresh test sets of each `data.extra_test_lengths` size
(`splits.load_extra_test`: the official test's sampler and seed,
`data.extra_test_num_samples` graphs, cached, the same for every model),
with the learner's own evaluation, so every model of `dear_jax.loop` is
tested alike. Each size is timed as the official test is: warmed up first
(`warm`) and waited for, then one timed pass.

A stepwise model's evaluation grows with its steps x n^2 (n^3 with
triplet messages), so a large size can take hours; with
`data.extra_test_max_seconds` a size whose first graphs show it would take
longer is scored on its first graphs that fit (`score_within`). dm-clrs's
samplers draw graphs one after another from the split's seed, so the first
g graphs are the same for every model and every planned count, and only
those are computed (`EvalSet.only_its_graphs`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import numpy as np

from dear_jax import batches as batch_lib
from dear_jax import profiling
from dear_jax import splits

# What each size reports besides score and timing, where the model has it:
# DEAR's solver and the learnt-termination NAR's steps (with their per-graph
# lists).
_KEPT = ('solver_iters_mean', 'solver_iters_p95', 'nonconverged_fraction',
         'nonfinite_graphs', 'iterations', 'nar_steps_mean',
         'nar_true_steps_mean', 'nar_stopped_early_fraction',
         'nar_stopped_exact_fraction', 'nar_stopped_late_fraction',
         'nar_step_cap', 'nar_cap_hit_fraction', 'nar_steps', 'graph_scores')


MIN_GRAPHS = 2


def warm(learner, params, evalset) -> str:
  """Readies `learner`'s prediction for each batch shape of `evalset`, so
  that a timed pass after it neither compiles nor waits for the warm-up
  (JAX dispatches asynchronously: a warm-up left running was timed with
  the pass, its first batch twice). Returns how: 'executed' (each shape
  predicted once and waited for) or, where a batch holds at most
  MIN_GRAPHS graphs (n = 256 and 512 at the default batch sizes) and the
  learner can, 'compiled' (`Learner.compile`, nothing run). There one
  batch of a stepwise model takes many minutes, and executing it doubled
  the probe's cost; a first run after a bare compile pays a fixed extra
  (about 0.3 s on a CPU, benchmarks/warmup.md) that only small, fast
  batches would feel."""
  shapes = evalset.one_batch_per_shape()
  if len(evalset.batches[0]['lengths']) <= MIN_GRAPHS and all(
      learner.compile(params, batch) for batch in shapes):
    return 'compiled'
  for batch in shapes:
    jax.block_until_ready(learner.warm(params, batch))
  return 'executed'


@dataclasses.dataclass
class _Pass:
  """A scored set's batches, their host predictions and the pass's time:
  what a later set that starts with the same batches reuses."""
  batches: list
  done: list
  wall: float
  cpu: float


def score_set(learner, params, evalset) -> dict:
  """One evaluation set scored and timed as every test size is: {score,
  scores, graphs, nodes, batch_size, eval_seconds_per_graph, algo_steps_mean,
  solver/steps keys} (`learner`: a dear_jax.loop.Learner). A cut set's last
  batch holds only its graphs, so the time is theirs."""
  return _score(learner, params, evalset)[0]


def _score(learner, params, evalset, before: _Pass | None = None):
  """score_set's entry and its `_Pass`. Where `before` passed over this
  set's first batches (the very batch objects) those are not predicted
  again: their predictions and time are `before`'s, added to this pass's."""
  batch_size = int(len(evalset.batches[0]['lengths']))
  evalset = evalset.only_its_graphs()
  if before is not None and not (
      len(before.batches) < len(evalset.batches) and all(
          a is b for a, b in zip(before.batches, evalset.batches))):
    before = None  # not this set's first batches: all are scored here
  done, wall, cpu = [], 0.0, 0.0
  if before is not None:
    done, wall, cpu = list(before.done), before.wall, before.cpu
  warmup = warm(learner, params, dataclasses.replace(
      evalset, batches=evalset.batches[len(done):]))
  with profiling.Stopwatch() as timed:
    r = learner.evaluate(params, evalset, per_graph=True, done=done)
  timed.wall, timed.cpu = timed.wall + wall, timed.cpu + cpu
  entry = dict(
      score=r['score'], scores=r.get('scores'),
      graphs=int(evalset.num_samples),
      nodes=int(batch_lib.num_nodes(evalset.batches[0])),
      batch_size=batch_size,
      **timed.per_graph(evalset.num_samples),
      eval_warmup_waited=True,  # tests without it timed a batch twice
      eval_warmup=warmup,
      algo_steps_mean=float(np.mean(evalset.lengths) - 1))
  if before is not None:
    entry['graphs_from_probe'] = sum(len(b['lengths']) for b in before.batches)
  entry.update({k: r[k] for k in _KEPT if k in r})
  if 'iterations' in entry:
    entry['solver_iterations'] = entry.pop('iterations')
  return entry, _Pass(evalset.batches, done, timed.wall, timed.cpu)


def graphs_within(max_seconds, seconds_per_graph, planned: int) -> int:
  """The graphs of a test that fit `max_seconds` at `seconds_per_graph`
  (timed on that test's own first graphs), at least MIN_GRAPHS and at most
  `planned` (all of them where there is no limit)."""
  if not max_seconds:
    return planned
  return int(min(planned, max(MIN_GRAPHS,
                              max_seconds // float(seconds_per_graph))))


def score_within(learner, params, evalset, max_seconds) -> dict:
  """`score_set` of the first graphs of `evalset` that fit `max_seconds`.

  The time per graph is measured on the set's own first MIN_GRAPHS graphs
  (a probe), not extrapolated from another size: a model's time grows with
  its steps (or solver iterations) x n^2 or n^3, and the steps with n in
  ways that differ by algorithm and model (up to the learnt-termination
  cap), so no one power of n estimates it. The probe
  is scored as every set is; where only MIN_GRAPHS fit it is the entry, else
  the fitting graphs are scored as one set, so the limit is exceeded by the
  probe's time at most. Where the probe's batches are that set's first
  (batches of at most MIN_GRAPHS graphs: n = 256, 512) they are not
  predicted again: the set's predictions and time include the probe's
  ('graphs_from_probe'); else the probe's graphs are scored again with the
  others. Where fewer graphs than planned are scored, the entry also has
  'graphs_planned' and 'estimated_seconds_per_graph' (the probe's)."""
  planned = int(evalset.num_samples)
  if not max_seconds or planned <= MIN_GRAPHS:
    return score_set(learner, params, evalset)
  probe, probe_pass = _score(learner, params, evalset.head(MIN_GRAPHS))
  per = probe['eval_seconds_per_graph']
  graphs = graphs_within(max_seconds, per, planned)
  if graphs == MIN_GRAPHS:
    entry = probe
  else:
    entry = _score(learner, params, evalset.head(graphs), probe_pass)[0]
  if graphs < planned:
    entry.update(graphs_planned=planned, estimated_seconds_per_graph=per)
  return entry


# A run folder's finished sizes while its test phase runs (removed once
# results.json holds them): an interrupted test phase resumes at its first
# unfinished size instead of scoring hours of large graphs again.
KEPT_DIR = 'extra_tests.partial'


def fingerprint(params, settings) -> str:
  """sha256 of the parameters (dtypes, shapes, bytes) and `settings`' JSON:
  what a kept size's entry was computed from."""
  h = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(params):
    a = np.asarray(leaf)
    h.update(f'{a.dtype}{a.shape}'.encode())
    h.update(np.ascontiguousarray(a).tobytes())
  h.update(json.dumps(settings, sort_keys=True, default=str).encode())
  return h.hexdigest()


def _kept(path: str, key: str):
  """The entry kept at `path` for `key`, else None (absent, unreadable or
  computed from other parameters or settings)."""
  try:
    with open(path) as f:
      kept = json.load(f)
  except (OSError, ValueError):
    return None
  return kept.get('entry') if kept.get('key') == key else None


def _keep(path: str, key: str, entry: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(dict(key=key, entry=entry), f, default=float)
  os.replace(path + '.tmp', path)


def evaluate_sizes(learner, params, algorithm: str, dcfg, keep_hints: bool,
                   keep_dir: str | None = None, settings=None) -> dict:
  """{str(n): `score_set` of that size} for every n of
  dcfg.extra_test_lengths (`learner`: a dear_jax.loop.Learner), each within
  dcfg.extra_test_max_seconds (`score_within`). With `keep_dir`, each
  finished size is kept there under a key of the parameters and `settings`
  (the run's config), and a size already kept under the same key is not
  scored again."""
  key = fingerprint(params, settings) if keep_dir else None
  out = {}
  for n in dcfg.extra_test_lengths:
    path = os.path.join(keep_dir, f'n{n}.json') if keep_dir else None
    entry = _kept(path, key) if path else None
    if entry is None:
      entry = score_within(
          learner, params,
          splits.load_extra_test(algorithm, n, dcfg, keep_hints),
          dcfg.extra_test_max_seconds)
      if path:
        _keep(path, key, entry)
    out[str(n)] = entry
  return out
