"""README.md's and docs/dear10-cpu.md's generated blocks, rewritten from the
committed results:

    python -m baselines.readme [REPO_DIR]

Each block lies between `<!-- NAME:start -->` and `<!-- NAME:end -->`;
tests fail when a committed file differs from what this writes. Every file
is rendered before any is written, so a missing marker changes nothing.
"""

from __future__ import annotations

import json
import os
import sys

from . import report
from . import sharper
from . import stats
from .rows import by_seed, collect, number, read_csv, size_rows

README = 'README.md'
GENERATED_DOC = 'docs/dear10-cpu.md'


def generated_files(repo: str = '.') -> dict:
  """{file: {block name: lines}} for every file with generated blocks."""
  return {README: dict(quickstart=quickstart_lines(repo),
                       study=study_lines(repo),
                       sharper=sharper.readme_lines(repo)),
          GENERATED_DOC: dict(summary=summary_lines(repo),
                              seed0=seed0_lines(repo))}


# The blocks' lines.
SUMMARY_SWEEP = 'results/dear10-cpu'
QUICKSTART_RUN = 'results/default_command/current/results.json'
# What results.json cannot say about that run: the load on its machine
# (results/default_command/README.md). Update it when the run is re-recorded.
QUICKSTART_LOAD = 'shared with other jobs'
SUMMARY_DEAR, SUMMARY_BASELINE = 'dear', 'nar_nohint'


def _sweep_rows(repo: str, sweep: str) -> list:
  return read_csv(os.path.join(repo, sweep, 'results.csv'))


def _find_key(tree, key: str):
  """The first value of `key` anywhere in a nested dict (None if absent):
  protocol.json's layout of a model's settings may nest sections."""
  if isinstance(tree, dict):
    if key in tree:
      return tree[key]
    for v in tree.values():
      got = _find_key(v, key)
      if got is not None:
        return got
  return None


def machine(hardware: str) -> str:
  """A run's hardware line (profiling.hardware_line) in neutral words:
  'a 2-core CPU', or 'a GPU' where jax's devices were GPUs."""
  import re  # pylint: disable=g-import-not-at-top
  devices = (hardware or '').partition(' devices ')[2]
  if re.search(r'cuda|gpu|rocm', devices, re.I):
    return 'a GPU'
  cores = re.search(r'(\d+) CPU cores', hardware or '')
  return f'a {cores.group(1)}-core CPU' if cores else 'a CPU'


def quickstart_lines(repo: str = '.') -> list:
  """Quick start's figures, read from the recorded run of the default
  command (results/default_command/current/results.json)."""
  with open(os.path.join(repo, QUICKSTART_RUN)) as f:
    r = json.load(f)
  converged = 100 * (1 - r['nonconverged_fraction'])
  minutes = r['train_seconds'] / 60
  return [
      f'The recorded run of this command (`{QUICKSTART_RUN}`, seed '
      f'{r["seed"]}): test score **{r["test_score"]:.3f}** on the official '
      f'out-of-distribution test ({r["test_graphs"]} graphs of '
      f'{r["test_nodes"]} nodes; validation {r["val_score"]:.3f} at the '
      f'training sizes), {r["solver_iters_mean"]:.1f} solver iterations per '
      f'test graph against {r["algo_steps_mean"]:.1f} true BFS steps, '
      f'{converged:.0f} % of test graphs converged. Its {r["train_steps"]} '
      f'training steps took {minutes:.1f} min ({r["train_steps_per_second"]:.2f}'
      f' steps/s) on {machine(r["hardware"])} {QUICKSTART_LOAD}; '
      'compiling, validation and the fixed-point checks add a few minutes.']


def summary_lines(repo: str = '.', sweep: str = SUMMARY_SWEEP,
                  dear: str = SUMMARY_DEAR,
                  baseline: str = SUMMARY_BASELINE) -> list:
  """docs/dear10-cpu.md's summary from SWEEP/results.csv: DEAR minus the no-hint
  NAR per algorithm, paired by seed, with 95 % t intervals and verdicts, the
  mean over algorithms with its Welch t interval, and one sentence that
  counts the verdicts (baselines/stats.py)."""
  rows = _sweep_rows(repo, sweep)
  with open(os.path.join(repo, sweep, 'protocol.json')) as f:
    protocol = json.load(f)['protocol']
  penalty = _find_key(protocol['models'].get(dear, {}), 'jac_reg_weight')
  algorithms = sorted({r['algorithm'] for r in rows})
  table, per_algorithm = [], {}
  for a in algorithms:
    x, y = by_seed(rows, a, dear, 'test_score'), by_seed(rows, a, baseline,
                                                           'test_score')
    diff = stats.paired_difference(x, y)
    if diff is None:
      continue
    shared = sorted(set(x) & set(y))
    per_algorithm[a] = [x[s] - y[s] for s in shared]
    mean = lambda v, s=shared: 100 * sum(v[k] for k in s) / len(s)
    table.append((a, diff, f'| {a} | {len(shared)} | {mean(x):.1f} | '
                  f'{mean(y):.1f} | {diff.format(100, signed=True)} | '
                  f'{diff.verdict()} |'))
  overall = stats.mean_over_groups(per_algorithm)
  counts = {v: sum(d.verdict() == v for _, d, _ in table)
            for v in (stats.SAME, stats.BETTER, stats.WORSE, stats.ONE_SEED)}
  k = len(table)
  seeds = sorted({d.n for _, d, _ in table})
  seed_words = ' or '.join(map(str, seeds))
  setting = (f' (`dear.jac_reg_weight={penalty:g}`)' if penalty is not None
             else '')
  lines = [
      f'DEAR-10 on the CPU ([`{sweep}/`]({sweep}/results.md)): '
      f'{protocol["train_steps"]} training steps, the official OOD test '
      f'(n = 64), every model on the same training stream per seed. '
      f'`{dear}`{setting} minus the stepwise NAR without hints '
      f'(`{baseline}`), test score in points, paired by seed: mean '
      '[95 % t interval]; *indistinguishable* where the interval contains 0.',
      '',
      '| algorithm | seeds | DEAR (%) | no-hint NAR (%) | DEAR − NAR | '
      'verdict |', '|---|---|---|---|---|---|']
  lines += [line for _, _, line in table]
  if overall is not None:
    if overall.low is None:
      verdict = 'no interval (an algorithm has one seed)'
    else:
      verdict = {stats.BETTER: 'DEAR higher', stats.WORSE: 'DEAR lower',
                 stats.SAME: 'indistinguishable'}[overall.verdict()]
    lines.append(f'| mean over the {len(per_algorithm)} algorithms '
                 f'(Welch t) | | | | {overall.format(100, signed=True)} | '
                 f'{verdict} |')
  told = (f'With {seed_words} seeds per algorithm the two cannot be told '
          f'apart on {counts[stats.SAME]} of {k} algorithms')
  others = [f'DEAR is higher on {counts[stats.BETTER]}'
            if counts[stats.BETTER] else '',
            f'lower on {counts[stats.WORSE]}' if counts[stats.WORSE] else '',
            f'{counts[stats.ONE_SEED]} have one seed only'
            if counts[stats.ONE_SEED] else '']
  others = [o for o in others if o]
  sentence = told + ('; ' + ', '.join(others) if others else '') + '.'
  if overall is not None and overall.low is not None:
    sentence += (f' Over the {len(per_algorithm)} algorithms DEAR scores '
                 f'{abs(100 * overall.mean):.1f} points '
                 f'{"below" if overall.mean < 0 else "above"} the no-hint '
                 f'NAR on average, an interval that '
                 + ('excludes 0' if overall.verdict() != stats.SAME
                    else 'contains 0') + '.')
  return lines + ['', sentence]


STUDY_SWEEP = 'results/dear10'
STUDY_BASELINES = ('nar_lt', 'nar_nohint')


def study_lines(repo: str = '.', sweep: str = STUDY_SWEEP,
                dear: str = report.GOAL_DEAR,
                baselines: tuple = STUDY_BASELINES) -> list:
  """README's summary of the study (SWEEP, its protocol fixed before the
  runs) as far as it has run: per algorithm `dear` minus each stepwise model
  that is told no step count or is, paired by seed, with 95 % t intervals
  and verdicts; the mean over algorithms; and the protocol's goals."""
  rows = _sweep_rows(repo, sweep)
  runs = collect(os.path.join(repo, sweep))
  models = (dear,) + tuple(baselines)
  algorithms = sorted({r['algorithm'] for r in rows if r['model'] == dear})
  head = ['| algorithm | ' + ' | '.join(f'`{m}` (%)' for m in models) + ' | '
          + ' | '.join(f'`{dear}` − `{b}`' for b in baselines) + ' |',
          '|---|' + '---|' * (len(models) + len(baselines))]
  table, per_base = [], {b: {} for b in baselines}
  for a in algorithms:
    cells = []
    for m in models:
      got = list(by_seed(rows, a, m, 'test_score').values())
      cells.append(f'{100 * sum(got) / len(got):.1f} (n={len(got)})' if got
                   else '–')
    for b in baselines:
      x, y = (by_seed(rows, a, dear, 'test_score'),
              by_seed(rows, a, b, 'test_score'))
      diff = stats.paired_difference(x, y)
      if diff is None:
        cells.append('–')
        continue
      per_base[b][a] = [x[s] - y[s] for s in sorted(set(x) & set(y))]
      cells.append(f'{diff.format(100, signed=True)} '
                   f'({_short_verdict(diff)})')
    table.append(f'| {a} | ' + ' | '.join(cells) + ' |')
  means = []
  for b in baselines:
    got = stats.mean_over_groups(per_base[b])
    if got is None:
      means.append('–')
    elif got.low is None:
      means.append(f'{100 * got.mean:+.1f} over {got.n} (no interval: an '
                   'algorithm has one shared seed)')
    else:
      means.append(f'{got.format(100, signed=True)} over {got.n} '
                   f'({_short_verdict(got)})')
  table.append('| mean over the algorithms so far (Welch t) | '
               + ' | ' * len(models) + ' | '.join(means) + ' |')
  lines = [
      f'The DEAR-10 study ([`{sweep}/`]({sweep}/results.md); protocol '
      f'fixed before its runs: [PROTOCOL.md]({sweep}/PROTOCOL.md)), so far '
      f'{len(rows)} runs on {len(algorithms)} of {report.GOAL_ALGORITHMS} '
      'algorithms: 1000 training steps, seeds 0-2, every model on the same '
      'training stream per seed, the official OOD test (n = 64). '
      f'`{dear}` is told no step count, nor is `nar_lt` (it learns when to '
      'stop); `nar_nohint` runs for the true one. Test score (%, mean over '
      'n seeds) and `dear` minus each, in points, paired by seed: mean '
      '[95 % t interval] (better / worse where the interval excludes 0, '
      'else cannot tell apart; one shared seed gives no interval).', '']
  lines += head + table
  goals = report.goal_lines(size_rows(runs))
  if goals:
    lines += ['', 'The protocol\'s goals, so far:', '']
    lines += [l for l in goals if l.startswith('- ')]
  return lines


def _short_verdict(got: stats.Interval) -> str:
  if got.low is None:
    return 'one seed'
  return stats.SAID[got.verdict()]


# The seed-0 table's timed models, with their column labels.
SEED0_TIMED = {'dear': 'DEAR', 'nar_nohint': 'no-hint NAR',
               'nar': 'NAR, hints', 'clrs_official': 'official'}


def seed0_lines(repo: str = '.', sweep: str = SUMMARY_SWEEP) -> list:
  """docs/dear10-cpu.md's seed-0 table from SWEEP/results.csv: DEAR's
  iterations against the true steps, its converged share and distance to
  H*, and each model's time per test graph (`eval_seconds`)."""
  rows = {(r['algorithm'], r['model']): r for r in _sweep_rows(repo, sweep)
          if r['seed'] == '0'}
  value = lambda r, k: number(r.get(k)) if r else None

  def ms(algorithm, model):
    t = value(rows.get((algorithm, model)), 'eval_seconds_per_graph')
    return '–' if t is None else f'{1e3 * t:.0f}'

  lines = ['| algorithm | DEAR iterations / true steps | DEAR converged | '
           'DEAR distance to H\\* | ms per test graph: ' +
           ' / '.join(SEED0_TIMED.values()) + ' |',
           '|---|---|---|---|---|']
  for a in sorted({a for a, m in rows if m == SUMMARY_DEAR}):
    d = rows[(a, SUMMARY_DEAR)]
    lines.append(
        f'| {a} | {value(d, "solver_iters_mean"):.1f} / '
        f'{value(d, "algo_steps_mean"):.1f} | '
        f'{100 * (1 - value(d, "nonconverged_fraction")):.1f} % | '
        f'{value(d, "fixed_point_distance_mean"):.4f} | '
        + ' / '.join(ms(a, m) for m in SEED0_TIMED) + ' |')
  return lines


def _markers(name: str) -> tuple:
  return f'<!-- {name}:start -->', f'<!-- {name}:end -->'


def render(text: str, blocks: dict) -> str:
  """TEXT with each marked block replaced by its generated lines."""
  for name, lines in blocks.items():
    start, end = _markers(name)
    head, sep, rest = text.partition(start + '\n')
    _, sep2, tail = rest.partition(end)
    if not sep or not sep2:
      raise ValueError(f'no "{start}" ... "{end}" block')
    text = head + start + '\n' + '\n'.join(lines) + '\n' + end + tail
  return text


def main(argv: list) -> int:
  if len(argv) > 1 or (argv and argv[0].startswith('-')):
    print('error: usage: python -m baselines.readme [REPO_DIR] (rewrites '
          f'the generated blocks of {README} and {GENERATED_DOC})',
          file=sys.stderr)
    return 2
  repo = argv[0] if argv else '.'
  new = {}
  try:  # every file is rendered before any is written
    files = generated_files(repo)
  except (OSError, ValueError, KeyError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for name, blocks in files.items():
    path = os.path.join(repo, name)
    try:
      with open(path) as f:
        text = f.read()
      new[name] = (text, render(text, blocks))
    except (OSError, ValueError) as e:
      print(f'error: {path}: {e}', file=sys.stderr)
      return 2
  for name, (old, text) in new.items():
    path = os.path.join(repo, name)
    if text != old:
      with open(path, 'w') as f:
        f.write(text)
    print(f'{path}: {"rewritten" if text != old else "already up to date"}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
