"""A comparison folder's runs as rows: results.csv (a row per run) and
results_by_size.csv (a row per run and test size), read from OUT/runs; the
tables (report), README's blocks (readme) and the studies' reports (sharper)
are written from these."""

from __future__ import annotations

import csv
import math
import os
import statistics

from .plan import MODELS
from dear_jax.results import REQUIRED_KEYS, read_json

CSV_COLUMNS = ('algorithm', 'model', 'seed', 'test_score', 'val_score',
               'train_seconds', 'train_steps_per_second',
               'eval_seconds_per_graph', 'eval_cpu_seconds_per_graph',
               'eval_load_average', 'solver_iters_mean',
               'algo_steps_mean', 'memory_mb', 'nonconverged_fraction',
               'fixed_point_distance_mean', 'score_by_tol_spread',
               'spectral_radius_mean', 'checked_graphs', 'final_train_loss',
               'hardware')


def number(x):
  """X as a finite float, or None (missing, empty, text, NaN, inf)."""
  if x is None:
    return None
  try:
    x = float(x)
  except (TypeError, ValueError):
    return None
  return x if math.isfinite(x) else None


_CACHE_HINT = 'delete it (a cache, measured again)'


def collect(out: str) -> list:
  """Every finished run in OUT/runs, as (algorithm, model, seed, results)."""
  rows = []
  root = os.path.join(out, 'runs')
  if not os.path.isdir(root):
    return rows
  for algorithm in sorted(os.listdir(root)):
    for model in os.listdir(os.path.join(root, algorithm)):
      mdir = os.path.join(root, algorithm, model)
      if not os.path.isdir(mdir):
        continue
      for sdir in os.listdir(mdir):
        path = os.path.join(mdir, sdir, 'results.json')
        if sdir.startswith('s') and os.path.exists(path):
          results = read_json(path, REQUIRED_KEYS, 'delete it to train that '
                              'run again (its checkpoints resume it)')
          rows.append(dict(algorithm=algorithm, model=model,
                           seed=int(sdir[1:]), results=results,
                           run_dir=os.path.join(mdir, sdir)))
  order = {m: i for i, m in enumerate(MODELS)}
  rows.sort(key=lambda r: (r['algorithm'], order.get(r['model'], 99),
                           r['seed']))
  return rows


def final_train_loss(loss_curve) -> float | None:
  """Median training loss over the last tenth of the logged steps (at least
  one): the level a run ended at, neither one step's noise nor a spike's."""
  losses = [number(p[1]) for p in (loss_curve or [])]
  losses = [x for x in losses if x is not None]
  if not losses:
    return None
  return statistics.median(losses[-max(1, len(losses) // 10):])


def eval_seconds(entry: dict, graphs: int, batch_size: int | None,
                 model: str | None) -> float:
  """A test's time per graph. A Flax model's test timed before its warm-up
  was waited for (no 'eval_warmup_waited') timed the warm-up's batch with
  its own, since JAX dispatches asynchronously: its first batch twice. It
  is taken as measured x B / (B + 1), B its batches: exact for one batch
  (the same work twice), off by that batch's difference from the mean
  batch otherwise. dm-clrs's BaselineModel always waited."""
  t = entry['eval_seconds_per_graph']
  if (entry.get('eval_warmup_waited') or model == 'clrs_official' or
      not batch_size or not graphs):
    return t
  batches = -(-int(graphs) // int(batch_size))
  return t * batches / (batches + 1)


def _test_seconds(r: dict) -> float:
  """`eval_seconds` of a results.json's official test (its graphs per batch
  from the run's stored config)."""
  config = r.get('config')
  batch_size = ((config.get('data') or {}).get('eval_batch_size')
                if isinstance(config, dict) else None)
  return eval_seconds(r, r['test_graphs'], batch_size, r.get('model'))


def csv_row(run: dict, out: str) -> dict:
  r = run['results']
  mem_path = os.path.join(out, 'runs', run['algorithm'], run['model'],
                          'memory.json')
  memory = (read_json(mem_path, ('train_step_memory_mb',), _CACHE_HINT) or
            {}).get('train_step_memory_mb')
  return dict(algorithm=run['algorithm'], model=run['model'],
              seed=run['seed'], test_score=r['test_score'],
              val_score=r['val_score'], train_seconds=r['train_seconds'],
              train_steps_per_second=r['train_steps_per_second'],
              eval_seconds_per_graph=_test_seconds(r),
              eval_cpu_seconds_per_graph=r.get('eval_cpu_seconds_per_graph'),
              eval_load_average=r.get('eval_load_average'),
              solver_iters_mean=r.get('solver_iters_mean'),
              algo_steps_mean=r['algo_steps_mean'], memory_mb=memory,
              nonconverged_fraction=r.get('nonconverged_fraction'),
              fixed_point_distance_mean=r.get('fixed_point_distance_mean'),
              score_by_tol_spread=r.get('score_by_tol_spread'),
              spectral_radius_mean=r.get('spectral_radius_mean'),
              checked_graphs=len(r.get('fixed_point_distance') or []) or None,
              final_train_loss=final_train_loss(r.get('loss_curve')),
              hardware=r.get('hardware', ''))


def write_csv(path: str, rows: list, columns=CSV_COLUMNS) -> None:
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=columns)
    w.writeheader()
    for row in rows:
      w.writerow({k: ('' if number(v) is None and k not in
                      ('algorithm', 'model', 'hardware') else v)
                  for k, v in row.items() if k in columns})


# results_by_size.csv: one row per run and test size, the official test
# (n=64) and each of data.extra_test_lengths, for the runs that have those.
SIZE_COLUMNS = ('algorithm', 'model', 'seed', 'nodes', 'graphs',
                'graphs_planned', 'batch_size',
                'test_score', 'eval_seconds_per_graph',
                'eval_cpu_seconds_per_graph', 'eval_load_average',
                'solver_iters_mean', 'nonconverged_fraction', 'nar_steps_mean',
                'nar_cap_hit_fraction', 'algo_steps_mean', 'hardware')
_SIZE_KEYS = ('eval_cpu_seconds_per_graph', 'eval_load_average',
              'solver_iters_mean', 'nonconverged_fraction', 'nar_steps_mean',
              'nar_cap_hit_fraction', 'algo_steps_mean')


# A run tested after training at a further size
# (`python -m dear_jax.pretrained --model=RUN --n=N --json=RUN/tests/nN.json`).
LATER_TESTS = 'tests'


def later_tests(run_dir: str) -> list:
  """The test entries in RUN/tests/*.json, by n."""
  folder = os.path.join(run_dir, LATER_TESTS)
  if not os.path.isdir(folder):
    return []
  out = [read_json(os.path.join(folder, f), ('nodes', 'graphs', 'score',
                                             'eval_seconds_per_graph'),
                   'test that size again to rewrite it')
         for f in sorted(os.listdir(folder)) if f.endswith('.json')]
  return sorted((e for e in out if e.get('split', 'test') == 'test'),
                key=lambda e: e['nodes'])


def size_rows(runs: list) -> list:
  """Per run with results.json 'extra_tests' or later tests (`later_tests`):
  its official test and each further size as rows of SIZE_COLUMNS (and the
  per-graph scores, which the CSV leaves out), by n; a size the run tested
  itself is not taken again from a later test."""
  out = []
  for run in runs:
    r = run['results']
    extra = list(r.get('extra_tests', {}).values())
    done = {e['nodes'] for e in extra} | {r.get('test_nodes')}
    extra += [e for e in later_tests(run.get('run_dir', ''))
              if e['nodes'] not in done]
    if not extra:
      continue
    base = dict(algorithm=run['algorithm'], model=run['model'],
                seed=run['seed'], hardware=r.get('hardware', ''))
    tests = [dict(nodes=r.get('test_nodes'), graphs=r.get('test_graphs'),
                  graphs_planned=None, batch_size=None,
                  test_score=r['test_score'],
                  eval_seconds_per_graph=_test_seconds(r),
                  graph_scores=r.get('test_graph_scores'),
                  **{k: r.get(k) for k in _SIZE_KEYS})]
    tests += [dict(nodes=e['nodes'], graphs=e['graphs'],
                   graphs_planned=e.get('graphs_planned'),
                   batch_size=e.get('batch_size'), test_score=e['score'],
                   eval_seconds_per_graph=eval_seconds(
                       e, e['graphs'], e.get('batch_size'), r.get('model')),
                   graph_scores=e.get('graph_scores'),
                   **{k: e.get(k) for k in _SIZE_KEYS},
                   **({'hardware': e['hardware']} if 'hardware' in e else {}))
              for e in extra]
    out += [dict(base, **t) for t in sorted(tests, key=lambda t: t['nodes'])]
  return out


def mean_std(values: list):
  """(mean, sample std or None for one value, n) of the finite values."""
  vals = [v for v in (number(x) for x in values) if v is not None]
  if not vals:
    return None, None, 0
  n = len(vals)
  mean = sum(vals) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 \
      else None
  return mean, std, n


def by_seed(rows: list, algorithm: str, model: str, metric: str) -> dict:
  """{seed: METRIC} of one algorithm and model (finite values only)."""
  return {r['seed']: number(r[metric]) for r in rows
          if r['algorithm'] == algorithm and r['model'] == model
          and number(r[metric]) is not None}


def shared_graphs(one: dict, other: dict) -> tuple | None:
  """Two size rows' (size_rows) per-graph scores on the graphs both scored:
  a size cut by the time limit scores the first graphs of the same split.
  None where either has no per-graph scores."""
  a, b = one.get('graph_scores'), other.get('graph_scores')
  if not (a and b):
    return None
  g = min(len(a), len(b))
  return a[:g], b[:g]


def read_csv(path: str) -> list:
  """The rows of a committed results.csv (strings, as written)."""
  with open(path) as f:
    return list(csv.DictReader(f))
