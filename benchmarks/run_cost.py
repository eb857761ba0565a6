"""What DEAR's fixed-point checks cost against the test evaluation they follow.

    python -m benchmarks.run_cost [--algorithms=mst_prim,strongly_connected_components,binary_search]
        [--steps=40] [--test_graphs=256] [--trained=FOLDER] [--quick]
        [--out=benchmarks/results]

Per algorithm, in one process on one machine: a DEAR model of
configs/default.py trained for --steps steps at n=--train_n (or, with
--trained, the finished DEAR run of that algorithm under FOLDER with its
config and best parameters), then on the same first --test_graphs test
graphs the wall time of
  test_old  train.evaluate with a jitted predict, one solver loop per batch
            (as before the CPU solved a batch's graphs in groups);
  old       the checks as they were (benchmarks/old_checks.py: separate
            solves per tolerance, a new reference solve from the answer, 30
            power iterations, jit wrappers built anew on every call), with
            one loop per batch;
  test      the test as runs now evaluate (on a CPU in groups of graphs,
            groups.EVAL_CHUNK_CPU);
  new       dear_jax.diagnostics.checks (one trajectory per batch, compiled
            once);
each twice: the first call pays compilation (what a run pays once), the
second shows what stays. The checks reuse their test's result at the
operating tolerance, as train.py does. Reports the ratios checks / test
(goal: the new checks cost at most the test), test_old / test, and whether
old and new agree: test score and score_by_tol equal, iters_by_tol
(equal where the graphs are solved in the same groups: one graph per loop
rounds differently from a batch of 32 at tight tolerances), distances and
spectral radius close.
`--quick` is a small CPU setting (hidden 32, n=16 test graphs) for minutes,
not the figures that count. Writes OUT/run_cost.json and OUT/run_cost.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

ALGORITHMS = ('mst_prim', 'strongly_connected_components', 'binary_search')
FULL = dict(steps=40, train_n=16, batch_size=32, hidden=None, test_n=None,
            test_graphs=256, eval_batch=None, check_max_iter=None)
QUICK = dict(steps=20, train_n=8, batch_size=8, hidden=32, test_n=16,
             test_graphs=32, eval_batch=16, check_max_iter=None)


class CostError(Exception):
  """Bad input (one line, exit 2)."""


def _config(s: dict, cache_dir: str):
  from configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.model_kind = 'dear'
  c.data.train_sizes = (s['train_n'],)
  c.data.batch_size = s['batch_size']
  c.data.cache_dir = cache_dir
  c.data.test_num_samples = s['test_graphs']
  for key, section, name in (('hidden', 'model', 'hidden'),
                             ('test_n', 'data', 'test_length'),
                             ('eval_batch', 'data', 'eval_batch_size'),
                             ('check_max_iter', 'dear', 'check_max_iter')):
    if s[key] is not None:
      c[section][name] = s[key]
  return c


def _trained_dear(folder: str, algorithm: str):
  """(config, best params, run path) of the first finished DEAR run of
  `algorithm` under `folder` (any depth) that kept its checkpoints."""
  from dear_jax import checkpoints, train  # pylint: disable=g-import-not-at-top
  for root, dirs, files in os.walk(folder, followlinks=True):
    dirs.sort()
    if 'results.json' in files and 'checkpoints' in dirs:
      with open(os.path.join(root, 'results.json')) as f:
        r = json.load(f)
      if r.get('algorithm') == algorithm and r.get('model') == 'dear':
        return (train.stored_config(r['config'], root),
                checkpoints.load_best_params(root), root)
  raise CostError(f'--trained={folder}: no finished dear run of {algorithm} '
                  'with checkpoints')


def _train(config, algorithm: str, steps: int):
  import jax  # pylint: disable=g-import-not-at-top
  from dear_jax import clrs_lib, input_pipeline, train  # pylint: disable=g-import-not-at-top
  stream = input_pipeline.TrainStream(algorithm, train.data_config(config),
                                      seed=0, keep_hints=False)
  first = next(stream)
  _, step, params, opt_state = train.setup(
      config, clrs_lib.processed_spec(algorithm), first, jax.random.PRNGKey(0),
      donate=False)
  batch = first
  for i in range(steps):
    params, opt_state, _, _ = step(params, opt_state, batch,
                                   jax.random.PRNGKey(i))
    batch = next(stream)
  return params


@contextlib.contextmanager
def _whole_batches():
  """Evaluation as before the CPU's groups of graphs (groups.EVAL_CHUNK_CPU):
  one solver loop per batch, as the old checks ran it."""
  from dear_jax import groups  # pylint: disable=g-import-not-at-top
  chunk, groups.EVAL_CHUNK_CPU = groups.EVAL_CHUNK_CPU, 0
  try:
    yield
  finally:
    groups.EVAL_CHUNK_CPU = chunk


def _timed(fn):
  t0 = time.perf_counter()
  out = fn()
  return time.perf_counter() - t0, out


def measure(algorithm: str, s: dict, cache_dir: str, log, trained=None) -> dict:
  """One algorithm's row (see the module docstring)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import old_checks  # pylint: disable=g-import-not-at-top
  from dear_jax import batches as batch_lib  # pylint: disable=g-import-not-at-top
  from dear_jax import clrs_lib, diagnostics, factory, splits, train  # pylint: disable=g-import-not-at-top
  if trained:
    config, params, source = _trained_dear(trained, algorithm)
    config.data.cache_dir = cache_dir
    config.data.test_num_samples = None
  else:
    config = _config(s, cache_dir)
    t0 = time.perf_counter()
    params = _train(config, algorithm, s['steps'])
    source = f'{s["steps"]} steps here ({time.perf_counter() - t0:.0f} s)'
  test = splits.load_split(algorithm, 'test', train.data_config(config),
                           keep_hints=False).head(s['test_graphs'])
  model = factory.build_model(config, clrs_lib.processed_spec(algorithm),
                            test.batches[0])
  dear = config.dear
  seconds, results = {}, {}
  settings = diagnostics.CheckSettings(ref_tol=dear.check_tol,
                                       ref_cap=dear.check_max_iter)
  for run in ('cold', 'warm'):
    with _whole_batches():
      if run == 'cold':   # a new function: jit must not reuse the other's trace
        predict_old = jax.jit(lambda p, b: model.predict(p, b))
      seconds[f'test_old_{run}'], test_old = _timed(
          lambda: train.evaluate(model, predict_old, params, test))
      seconds[f'old_{run}'], results['old'] = _timed(lambda: old_checks.checks(
          model, params, test, train.evaluate, operating=test_old,
          ref_tol=dear.check_tol, ref_cap=dear.check_max_iter))
    if run == 'cold':
      predict = jax.jit(lambda p, b: model.predict(p, b))
    seconds[f'test_{run}'], test_r = _timed(
        lambda: train.evaluate(model, predict, params, test))
    seconds[f'new_{run}'], results['new'] = _timed(lambda: diagnostics.checks(
        model, params, test, train.evaluate, operating=test_r,
        settings=settings))
  old, new = results['old'], results['new']
  ratios = {}
  for run in ('cold', 'warm'):
    ratios[f'old_over_test_old_{run}'] = seconds[f'old_{run}'] / seconds[f'test_old_{run}']
    ratios[f'new_over_test_{run}'] = seconds[f'new_{run}'] / seconds[f'test_{run}']
    ratios[f'old_over_new_{run}'] = seconds[f'old_{run}'] / seconds[f'new_{run}']
    ratios[f'test_old_over_test_{run}'] = (seconds[f'test_old_{run}']
                                           / seconds[f'test_{run}'])
  dist_old = np.asarray(old['fixed_point_distance'])
  dist_new = np.asarray(new['fixed_point_distance'])
  agree = dict(
      test_score_equal=test_old['score'] == test_r['score'],
      score_by_tol_equal=old['score_by_tol'] == new['score_by_tol'],
      iters_by_tol_equal=old['iters_by_tol'] == new['iters_by_tol'],
      score_by_tol=new['score_by_tol'], iters_by_tol=new['iters_by_tol'],
      iters_by_tol_old=old['iters_by_tol'],
      distance_mean_old=old['fixed_point_distance_mean'],
      distance_mean_new=new['fixed_point_distance_mean'],
      distance_max_abs_difference=float(np.abs(dist_old - dist_new).max()),
      spectral_radius_mean_old=old['spectral_radius_mean'],
      spectral_radius_mean_new=new['spectral_radius_mean'],
      reference_old=old['fixed_point_reference'],
      reference_new=new['fixed_point_reference'])
  row = dict(algorithm=algorithm, parameters=source, test_graphs=test.num_samples,
             test_nodes=batch_lib.num_nodes(test.batches[0]),
             eval_batch=int(test.batches[0]['lengths'].shape[0]),
             solver=dict(tol=model.solver_cfg.tol, max_iter_eval=model.solver_cfg.max_iter_eval,
                         check_tol=dear.check_tol, check_max_iter=dear.check_max_iter),
             test_score=test_r['score'], solver_iters_mean=test_r['solver_iters_mean'],
             seconds=seconds, ratios=ratios, agree=agree)
  log(f'  {algorithm}: old test {seconds["test_old_cold"]:.1f} s / '
      f'{seconds["test_old_warm"]:.1f} s, test {seconds["test_cold"]:.1f} s / '
      f'{seconds["test_warm"]:.1f} s, old checks {seconds["old_cold"]:.1f} / {seconds["old_warm"]:.1f} s, new '
      f'{seconds["new_cold"]:.1f} / {seconds["new_warm"]:.1f} s (first / second call); '
      f'score_by_tol equal: {agree["score_by_tol_equal"]}')
  return row


def markdown(res: dict) -> str:
  lines = ['# Cost of the fixed-point checks against the test evaluation', '',
           f'Machine: {res["hardware"]} (1-min load average at the start: '
           f'{res["load_average_1min"]:.1f}). Command: `{res["command"]}`.', '',
           'Seconds of the first call (compile included, what a run pays) / '
           'the second call. "old": one solver loop per test batch, separate '
           'solves per tolerance and a new reference solve '
           '(benchmarks/old_checks.py); "new": the test as runs now evaluate '
           'it and dear_jax.diagnostics (one trajectory per batch).', '',
           '| algorithm | graphs | old test s | old checks s | test s | '
           'new checks s | old checks ÷ old test | new checks ÷ test | '
           'old test ÷ test | old ÷ new checks | scores equal | '
           'mean iterations at tol, ÷10, ÷100, old / new | distance mean old / new | '
           'ρ mean old / new |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  pair = lambda d, k, f='.1f': f'{d[k + "_cold"]:{f}} / {d[k + "_warm"]:{f}}'
  for r in res['rows']:
    s, q, a = r['seconds'], r['ratios'], r['agree']
    same = a['test_score_equal'] and a['score_by_tol_equal']
    fmt = lambda d: ', '.join(f'{v:.1f}' for v in d.values())
    iters = f'{fmt(a["iters_by_tol_old"])} / {fmt(a["iters_by_tol"])}'
    lines.append(
        f'| {r["algorithm"]} | {r["test_graphs"]} | {pair(s, "test_old")} | '
        f'{pair(s, "old")} | {pair(s, "test")} | {pair(s, "new")} | '
        f'{pair(q, "old_over_test_old")} | {pair(q, "new_over_test")} | '
        f'{pair(q, "test_old_over_test")} | {pair(q, "old_over_new")} | '
        f'{"yes" if same else "NO"} | {iters} | '
        f'{a["distance_mean_old"]:.2g} / {a["distance_mean_new"]:.2g} | '
        f'{a["spectral_radius_mean_old"]:.3f} / {a["spectral_radius_mean_new"]:.3f} |')
  met = all(r['ratios']['new_over_test_cold'] <= 1 for r in res['rows'])
  lines += ['', f'Goal (the new checks cost at most the test, first call): '
            f'{"met" if met else "not met"}.', '']
  return '\n'.join(lines)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  p = argparse.ArgumentParser(prog='python -m benchmarks.run_cost',
                              description=__doc__.split('\n')[0])
  p.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results'))
  p.add_argument('--cache_dir', default='~/.cache/dear_jax/datasets')
  p.add_argument('--quick', action='store_true', help='a small CPU setting')
  p.add_argument('--algorithms', default=','.join(ALGORITHMS))
  p.add_argument('--trained', default=None, metavar='FOLDER',
                 help='finished DEAR runs (with checkpoints) to check instead '
                 'of training here')
  for name in FULL:
    p.add_argument(f'--{name}', type=int, default=None)
  a = p.parse_args(argv)
  s = dict(QUICK if a.quick else FULL)
  for name in FULL:
    v = getattr(a, name)
    if v is not None:
      if v < (0 if name == 'steps' else 1):
        print(f'error: --{name} must be at least {0 if name == "steps" else 1}, '
              f'got {v}', file=sys.stderr)
        return 2
      s[name] = v
  from dear_jax import clrs_lib  # pylint: disable=g-import-not-at-top
  algorithms = [x for x in a.algorithms.split(',') if x]
  bad = [x for x in algorithms if x not in clrs_lib.algorithm_names()]
  if bad or not algorithms:
    print(f'error: --algorithms: unknown {bad or "(none)"}; allowed: '
          f'{", ".join(clrs_lib.algorithm_names())}', file=sys.stderr)
    return 2
  if a.trained and not os.path.isdir(a.trained):
    print(f'error: --trained={a.trained} is not a folder', file=sys.stderr)
    return 2
  from dear_jax.profiling import hardware_line  # pylint: disable=g-import-not-at-top
  log = lambda m: print(m, flush=True)
  hw = hardware_line()
  res = dict(hardware=hw, date=time.strftime('%Y-%m-%d %H:%M:%S'),
             command=' '.join(['python -m benchmarks.run_cost'] + argv),
             load_average_1min=os.getloadavg()[0], settings=s, rows=[])
  log(f'run_cost on {hw}')
  try:
    for algorithm in algorithms:
      res['rows'].append(measure(algorithm, s, os.path.expanduser(a.cache_dir),
                                 log, a.trained))
  except CostError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, 'run_cost.json'), 'w') as f:
    json.dump(res, f, indent=2)
  md = markdown(res)
  with open(os.path.join(a.out, 'run_cost.md'), 'w') as f:
    f.write(md)
  print(md)
  return 0


if __name__ == '__main__':
  sys.exit(main())
