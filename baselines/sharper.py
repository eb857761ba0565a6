"""Softmax aggregation, latent decay and adaptive temperature against their
controls, by test size (results/sharper/PROTOCOL.md; docs/sharper.md).

    python -m baselines.sharper --out=results/sharper --control=results/dear10
    python -m baselines.sharper --out=results/sharper --from_csv

The first form gathers every finished run of the study's models in OUT and
the controls' runs (same algorithms and seeds) in CONTROL into
OUT/sharper.csv, one row per run and test size; both forms then write
OUT/sharper.md and OUT/plots/sharper_*.png from that CSV alone, so the
committed table and plots can be re-derived from it.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

from . import rows as rows_lib
from . import stats

BASES = ('dear', 'nar_lt')
# Option -> what its runs are (folder: model_name(base, option)).
OPTIONS = {
    'control': 'as the DEAR-10 study ran it (max aggregation, no decay)',
    'softmax': 'trained and tested with softmax aggregation',
    'softmax_at': 'the softmax runs re-tested with adaptive temperature',
    'softmax_max': 'the softmax runs re-tested with max aggregation '
                   '(Mirjanic et al.\'s code tests so)',
    'decay': 'trained and tested with latent decay 0.9',
}
# (option, against): each difference the study reports.
CONTRASTS = (('softmax', 'control'), ('decay', 'control'),
             ('softmax_at', 'softmax'), ('softmax_max', 'softmax'))
AGAINST = dict(CONTRASTS)
# Re-tests of the same trained model: also paired over the test graphs.
RETESTS = {'softmax_at': 'softmax', 'softmax_max': 'softmax'}
# diff_*: the option's score minus what it is compared with (AGAINST), same
# seed and size, on the graphs both scored (a size cut by the time limit
# scores the first graphs of the same split); graph_diff_*: for a re-test,
# the t interval of that difference over those graphs.
COLUMNS = ('algorithm', 'model', 'seed', 'nodes', 'graphs', 'graphs_planned',
           'test_score', 'eval_seconds_per_graph', 'solver_iters_mean',
           'nonconverged_fraction', 'nar_steps_mean', 'algo_steps_mean',
           'fixed_point_distance_mean', 'diff_score', 'diff_graphs',
           'graph_diff_mean', 'graph_diff_low', 'graph_diff_high',
           'graph_diff_n')


def model_name(base: str, option: str) -> str:
  """The run folder's model name: the base itself for the control."""
  return base if option == 'control' else f'{base}_{option}'


def _variants() -> dict:
  return {model_name(b, o): (b, o) for b in BASES for o in OPTIONS}


def gather(out: str, control: str, seeds=None) -> list:
  """One row (COLUMNS) per run and test size: OUT's runs of the study's
  models, CONTROL's runs of the bases on OUT's algorithms (and `seeds`, or
  the seeds OUT has). An option's row holds its difference from what it is
  compared with on the graphs both scored (diff_*), and a re-test's row
  that difference's interval over those graphs (graph_diff_*)."""
  variants = _variants()
  mine = [r for r in rows_lib.collect(out) if r['model'] in variants
          and variants[r['model']][1] != 'control']
  algorithms = {r['algorithm'] for r in mine}
  seeds = set(seeds) if seeds is not None else {r['seed'] for r in mine}
  controls = [r for r in rows_lib.collect(control) if r['model'] in BASES
              and r['algorithm'] in algorithms]
  runs = [r for r in mine + controls if r['seed'] in seeds]
  by_key = {(r['algorithm'], r['model'], r['seed']): r for r in runs}
  sizes = rows_lib.size_rows(runs)  # later tests (n=512) included
  by_size = {(s['algorithm'], s['model'], s['seed'], s['nodes']): s
             for s in sizes}
  rows = []
  for size in sizes:
    run = by_key[size['algorithm'], size['model'], size['seed']]
    base, option = variants[size['model']]
    row = {k: size.get(k) for k in COLUMNS if k in size}
    if size['nodes'] == run['results'].get('test_nodes'):
      row['fixed_point_distance_mean'] = run['results'].get(
          'fixed_point_distance_mean')
    theirs = (by_size.get((size['algorithm'],
                           model_name(base, AGAINST[option]), size['seed'],
                           size['nodes'])) if option in AGAINST else None)
    shared = rows_lib.shared_graphs(size, theirs) if theirs else None
    if shared:
      diffs = [a - b for a, b in zip(*shared)]
      row.update(diff_score=sum(diffs) / len(diffs), diff_graphs=len(diffs))
      if option in RETESTS:
        diff = stats.t_interval(diffs, bounds=stats.DIFFERENCE_BOUNDS)
        row.update(graph_diff_mean=diff.mean, graph_diff_low=diff.low,
                   graph_diff_high=diff.high, graph_diff_n=diff.n)
    rows.append(row)
  order = list(variants)
  rows.sort(key=lambda r: (r['algorithm'], order.index(r['model']),
                           r['seed'], r['nodes']))
  return rows


def read_csv(path: str) -> list:
  """sharper.csv's rows, numbers as numbers (empty: None), with each
  model's base and option."""
  variants = _variants()
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  for r in rows:
    for k, v in r.items():
      if k not in ('algorithm', 'model'):
        r[k] = None if v == '' else float(v)
    r['seed'], r['nodes'] = int(r['seed']), int(r['nodes'])
    r['base'], r['option'] = variants[r['model']]
  return rows


def _cells(rows: list, algorithm: str, base: str, nodes: int) -> dict:
  """option -> {seed: row} at one (algorithm, base, n)."""
  out = {}
  for r in rows:
    if (r['algorithm'], r['base'], r['nodes']) == (algorithm, base, nodes):
      out.setdefault(r['option'], {})[r['seed']] = r
  return out


def _mean_cell(per_seed: dict, key: str, scale: float, digits: int,
               bounds: tuple | None = None) -> str:
  vals = [r[key] for r in per_seed.values() if r[key] is not None]
  if not vals:
    return '–'
  cell = stats.t_interval(vals, bounds=bounds)
  cut = [int(r['graphs']) for r in per_seed.values() if r['graphs_planned']]
  return (f'{cell.format(scale, digits)} (n={cell.n}'
          + (f'; g={min(cut)}' if cut else '') + ')')


def _difference(cells: dict, option: str) -> stats.Interval | None:
  """OPTION minus what it is compared with over the seeds both have, each
  seed's difference on the graphs both scored (diff_score), with its t
  interval."""
  return stats.t_interval(
      [r['diff_score'] for r in cells.get(option, {}).values()
       if r['diff_score'] is not None], bounds=stats.DIFFERENCE_BOUNDS)


def _cut(cells: dict, option: str, against: str) -> str:
  """'; g=G' where a seed's difference is on fewer graphs than one side
  planned (the time limit cut a size)."""
  cut = [int(r['diff_graphs']) for s, r in cells.get(option, {}).items()
         if r['diff_graphs'] is not None and any(
             side.get(s, {}).get('graphs_planned')
             for side in (cells.get(option, {}), cells.get(against, {})))]
  return f'; g={min(cut)}' if cut else ''


def table_lines(rows: list) -> list:
  """sharper.md's tables from sharper.csv's rows."""
  keys = sorted({(r['algorithm'], r['base'], r['nodes']) for r in rows},
                key=lambda k: (k[0], BASES.index(k[1]), k[2]))
  options = [o for o in OPTIONS if any(r['option'] == o for r in rows)]
  lines = ['## Test score (%, mean over seeds [95 % t interval, cut to 0-100], '
           'n = seeds; g = graphs scored where the time limit cut a size)',
           '', '| algorithm | model | n | ' + ' | '.join(options) + ' |',
           '|' + '---|' * (len(options) + 3)]
  for a, b, n in keys:
    cells = _cells(rows, a, b, n)
    lines.append(f'| {a} | `{b}` | {n} | ' + ' | '.join(
        _mean_cell(cells.get(o, {}), 'test_score', 100, 1,
                   stats.SCORE_BOUNDS)
        for o in options) + ' |')
  lines += ['', '## Differences (points, paired over seeds [95 % t '
            'interval], each seed\'s on the test graphs both scored (g where '
            'a size was cut): better / worse where the interval excludes 0, '
            'else indistinguishable; re-tests also paired over the test '
            'graphs of each seed)', '',
            '| algorithm | model | n | ' + ' | '.join(
                f'{o} − {c}' for o, c in CONTRASTS) + ' |',
            '|' + '---|' * (len(CONTRASTS) + 3)]
  for a, b, n in keys:
    cells = _cells(rows, a, b, n)
    out = []
    for o, c in CONTRASTS:
      d = _difference(cells, o)
      text = '–' if d is None else (f'{d.format(100, 1, signed=True)} '
                                    f'{d.verdict()} (n={d.n})'
                                    + _cut(cells, o, c))
      if o in RETESTS:
        per_graph = [
            f's{s}: {100 * r["graph_diff_mean"]:+.1f} '
            f'[{100 * r["graph_diff_low"]:+.1f}, '
            f'{100 * r["graph_diff_high"]:+.1f}]'
            for s, r in sorted(cells.get(o, {}).items())
            if r['graph_diff_low'] is not None]
        if per_graph:
          text += '; graphs ' + ', '.join(per_graph)
      out.append(text)
    if any(cell != '–' for cell in out):  # a control alone has no row
      lines.append(f'| {a} | `{b}` | {n} | ' + ' | '.join(out) + ' |')
  def per_option(base: str, title: str, cell) -> list:
    """A table of `cell(rows of one option over its seeds)` for BASE."""
    mine = [k for k in keys if k[1] == base]
    if not mine:
      return []
    out = ['', title, '', '| algorithm | n | ' + ' | '.join(options) + ' |',
           '|' + '---|' * (len(options) + 2)]
    for a, b, n in mine:
      cells = _cells(rows, a, b, n)
      out.append(f'| {a} | {n} | ' + ' | '.join(
          cell(list(cells.get(o, {}).values())) for o in options) + ' |')
    return out

  def mean(per: list, key: str):
    return rows_lib.mean_std([r[key] for r in per])[0]

  def solve(per: list) -> str:
    it, nc, fp = (mean(per, 'solver_iters_mean'),
                  mean(per, 'nonconverged_fraction'),
                  mean(per, 'fixed_point_distance_mean'))
    return '–' if it is None else (f'{it:.1f} / {100 * (nc or 0):.0f} % / '
                                   + ('–' if fp is None else f'{fp:.3f}'))

  def stop(per: list) -> str:
    taken, true = mean(per, 'nar_steps_mean'), mean(per, 'algo_steps_mean')
    return '–' if taken is None else f'{taken:.1f} / {true:.1f}'

  lines += per_option('dear', '## DEAR\'s solve (means over seeds): '
                      'iterations / share not converged / distance to H* '
                      '(n=64 only: the fixed-point checks)', solve)
  lines += per_option('nar_lt', '## `nar_lt`\'s learnt stop (means over '
                      'seeds): steps taken / true steps (a re-test keeps '
                      'the trained stop head, but what it reads changes)',
                      stop)
  return lines


ALGORITHMS = ('bfs', 'mst_prim', 'dag_shortest_paths')  # PROTOCOL.md's
SEEDS = 2
TRAINED = ('softmax', 'decay')  # the options a default could take
DEFAULT_SIZE = 256  # PROTOCOL.md: better on two of three here, worse nowhere
PENDING = 'pending'  # fewer than SEEDS seeds on one side
# Sizes tested on seed 0 alone (PROTOCOL.md: n=512 where the control has
# it): no interval over seeds; a re-test is judged over seed 0's graphs.
SEED0_SIZES = (512,)
ONE_SEED = 'seed 0 only'  # a trained option at such a size: no verdict


def contrast_verdicts(rows: list) -> dict:
  """{(option, base, n): {algorithm: verdict}} for each of CONTRASTS that
  both sides have run. A trained option: the paired t interval over the
  seeds (PENDING below SEEDS seeds). A re-test: better (worse) where the
  per-graph interval of every seed lies above (below) 0, as PROTOCOL.md
  fixes for adaptive temperature; PENDING until SEEDS seeds have one. At
  SEED0_SIZES: ONE_SEED for a trained option, and a re-test's verdict over
  seed 0's graphs, marked as such."""
  out = {}
  for a, b, n in {(r['algorithm'], r['base'], r['nodes']) for r in rows}:
    cells = _cells(rows, a, b, n)
    for o, c in CONTRASTS:
      if o not in cells or c not in cells:
        continue
      if o in RETESTS:
        per = [r for r in cells[o].values() if r['graph_diff_low'] is not None]
        needed = 1 if n in SEED0_SIZES else SEEDS
        if len(per) < needed:
          verdict = PENDING
        elif all(r['graph_diff_low'] > 0 for r in per):
          verdict = stats.BETTER
        elif all(r['graph_diff_high'] < 0 for r in per):
          verdict = stats.WORSE
        else:
          verdict = stats.SAME
        if n in SEED0_SIZES and verdict != PENDING:
          verdict = f'{verdict} ({ONE_SEED})'
      elif n in SEED0_SIZES:
        verdict = ONE_SEED
      else:
        d = _difference(cells, o)
        verdict = PENDING if d is None or d.n < SEEDS else d.verdict()
      out.setdefault((o, b, n), {})[a] = verdict
  return out


def default_decision(verdicts: dict, option: str, base: str) -> str:
  """PROTOCOL.md's rule for making a trained option `base`'s default:
  'yes', 'no', or 'open' while a verdict that could decide it is missing
  (on any algorithm at any size with seeds: a 'worse' there would say no)."""
  mine = {k: v for k, v in verdicts.items() if k[:2] == (option, base)}
  if any(v == stats.WORSE for per in mine.values() for v in per.values()):
    return 'no'
  at = mine.get((option, base, DEFAULT_SIZE), {})
  better = sum(v == stats.BETTER for v in at.values())
  decided = [a for a in ALGORITHMS if at.get(a, PENDING) != PENDING]
  if better + len(ALGORITHMS) - len(decided) < 2:
    return 'no'
  complete = all(per.get(a, PENDING) != PENDING for (_, _, n), per
                 in mine.items() if n not in SEED0_SIZES for a in ALGORITHMS)
  # 'yes' only once no size can still show a 'worse'
  return 'yes' if better >= 2 and complete else 'open'


def _seed0_difference(rows: list, algorithm: str, base: str, nodes: int,
                      option: str) -> str:
  """' (+d.d)': seed 0's difference in points (OPTION minus AGAINST, on
  the graphs both scored), for a size without seeds."""
  row = _cells(rows, algorithm, base, nodes).get(option, {}).get(0)
  if row is None or row['diff_score'] is None:
    return ''
  return f' ({100 * row["diff_score"]:+.1f})'


def _verdict_order(v: str) -> int:
  order = (stats.BETTER, stats.WORSE, stats.SAME, ONE_SEED, PENDING)
  return next((i for i, w in enumerate(order) if v.startswith(w)),
              len(order))


def _said(verdict: str) -> str:
  """A verdict as README writes it (stats.SAID), its remark kept."""
  for v, w in stats.SAID.items():
    if verdict.startswith(v):
      return w + verdict[len(v):]
  return verdict


def _retested(rows: list) -> str:
  """Which algorithms each re-test has reached (a softmax run's re-tests need
  its checkpoints, which the repository does not keep)."""
  said = []
  for option in RETESTS:
    algorithms = [a for a in ALGORITHMS
                  if any(r['option'] == option and r['algorithm'] == a
                         for r in rows)]
    said.append(f'{option} on {", ".join(algorithms) or "none"}')
  return '; '.join(said)


def readme_lines(repo: str = '.', out: str = 'results/sharper') -> list:
  """README's summary of the study from its committed sharper.csv: per
  option, model and test size, on which algorithms the option was better,
  worse or cannot be told apart from what it is compared with; and the
  protocol's rule for a new default."""
  path = os.path.join(repo, out, 'sharper.csv')
  link = (f'{out}/sharper.md' if os.path.exists(
      os.path.join(repo, out, 'sharper.md')) else f'{out}/')
  intro = (f'The sharper-at-scale study ([`{out}/`]({link}); '
           f'protocol fixed before its runs: [PROTOCOL.md]({out}/PROTOCOL.md);'
           ' options defined in [docs/sharper.md](docs/sharper.md)): softmax '
           'aggregation and latent decay 0.9, each trained on '
           f'{", ".join(ALGORITHMS)} with seeds 0-{SEEDS - 1} at the DEAR-10 '
           "budget against that study's runs as controls, and the softmax "
           'runs re-tested with adaptive temperature and with max '
           'aggregation.')
  rows = read_csv(path) if os.path.exists(path) else []
  if not rows:
    return [intro + ' No run has finished yet.']
  trained = {(r['algorithm'], r['model'], r['seed']) for r in rows
             if r['option'] not in ('control',) + tuple(RETESTS)}
  verdicts = contrast_verdicts(rows)
  sizes = sorted({r['nodes'] for r in rows})
  lines = [intro + f' So far {len(trained)} of '
           f'{len(ALGORITHMS) * len(BASES) * len(TRAINED) * SEEDS} trainings '
           f'have finished; re-tested so far: {_retested(rows)}. Per test '
           'size, the algorithms where the option '
           'is better / worse (95 % t interval over the seeds excludes 0; a '
           "re-test: every seed's interval over the test graphs on one "
           'side of 0), or else cannot be told apart; pending: fewer than '
           f'{SEEDS} seeds so far. n={", ".join(map(str, SEED0_SIZES))} is '
           'tested on seed 0 alone: a re-test is judged over its graphs, a '
           'trained option not at all (its difference in points in '
           'brackets).', '',
           '| option | model | ' + ' | '.join(f'n={n}' for n in sizes)
           + ' |', '|---|---|' + '---|' * len(sizes)]
  for o, c in CONTRASTS:
    for b in BASES:
      cells = []
      for n in sizes:
        per = verdicts.get((o, b, n), {})
        said = {}  # verdict as written -> algorithms, better first
        for v in sorted(set(per.values()), key=_verdict_order):
          said[_said(v)] = [
              a + (_seed0_difference(rows, a, b, n, o) if v == ONE_SEED
                   else '') for a in sorted(per) if per[a] == v]
        cells.append('; '.join(f'{w}: {", ".join(a)}'
                               for w, a in said.items()) or '–')
      if any(cell != '–' for cell in cells):
        lines.append(f'| {o} − {c} | `{b}` | ' + ' | '.join(cells) + ' |')
  decisions = [f'{o} for `{b}`: {default_decision(verdicts, o, b)}'
               for o in TRAINED for b in BASES]
  lines += ['', 'A new default (better on two of the three algorithms at '
            f'n={DEFAULT_SIZE}, worse on none at any n): '
            + '; '.join(decisions) + '.']
  moved = moved_stops(rows)
  if moved:
    said = '; '.join(f'{o} on {a} at n={n}: {x:.1f} against {y:.1f}'
                     for o, a, n, x, y in moved)
    lines += ['', 'A re-test of `nar_lt` also moves where its trained stop '
              'head stops, so its difference mixes the option with another '
              'number of steps (mean steps taken, against the re-tested '
              f"run's, where they differ by over {100 * MOVED_STOP:.0f} %): "
              f'{said}.']
  return lines


MOVED_STOP = 0.25  # a relative change in nar_lt's steps worth a mention


def moved_stops(rows: list) -> list:
  """(option, algorithm, n, steps, steps of the run it re-tests) where a
  re-test of `nar_lt` changes the mean steps taken over the seeds both have
  by more than MOVED_STOP."""
  out = []
  keys = sorted({(r['algorithm'], r['nodes']) for r in rows})
  for o, c in RETESTS.items():
    for a, n in keys:
      cells = _cells(rows, a, 'nar_lt', n)
      mine, theirs = cells.get(o, {}), cells.get(c, {})
      seeds = sorted(set(mine) & set(theirs))
      x = [mine[s]['nar_steps_mean'] for s in seeds]
      y = [theirs[s]['nar_steps_mean'] for s in seeds]
      if not seeds or None in x + y:
        continue
      x, y = sum(x) / len(x), sum(y) / len(y)
      if abs(x - y) > MOVED_STOP * y:
        out.append((o, a, n, x, y))
  return out


def write_all(out: str, rows: list) -> list:
  """OUT/sharper.md and OUT/plots/sharper_BASE.png from `rows`
  (sharper.csv's); the paths written."""
  from . import plots  # pylint: disable=g-import-not-at-top
  lines = ['# Sharper at scale: each option against its control', '',
           'Generated by `python -m baselines.sharper` from sharper.csv '
           '(results/sharper/PROTOCOL.md says what ran and how it is '
           'compared). Options:', '']
  lines += [f'- `{o}`: {what}' for o, what in OPTIONS.items()]
  lines += ['', 'A cell with – was not measured: not run yet, or cut (the '
            'protocol\'s amendments say which and why).', '']
  lines += table_lines(rows)
  path = os.path.join(out, 'sharper.md')
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  written = [path]
  os.makedirs(os.path.join(out, 'plots'), exist_ok=True)
  for base in BASES:
    mine = [r for r in rows if r['base'] == base]
    if mine:
      order = [model_name(base, o) for o in OPTIONS]
      written.append(plots.by_size(
          os.path.join(out, 'plots', f'sharper_{base}.png'), mine, order))
  return written


class _Parser(argparse.ArgumentParser):

  def error(self, message):  # one line, exit 2
    self.exit(2, f'{self.prog}: error: {message}\n')


def main(argv=None) -> int:
  p = _Parser(prog='python -m baselines.sharper')
  p.add_argument('--out', required=True, help='the study folder')
  p.add_argument('--control', default=None,
                 help='the folder of the control runs (results/dear10)')
  p.add_argument('--from_csv', action='store_true',
                 help='tables and plots from OUT/sharper.csv only')
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  path = os.path.join(args.out, 'sharper.csv')
  if not args.from_csv:
    if args.control is None:
      print('error: give --control=FOLDER (or --from_csv)', file=sys.stderr)
      return 2
    rows_lib.write_csv(path, gather(args.out, args.control), COLUMNS)
  if not os.path.exists(path):
    print(f'error: {path} not found; run without --from_csv first',
          file=sys.stderr)
    return 2
  rows = read_csv(path)
  if not rows:
    print(f'{path}: no runs yet; nothing to tabulate')
    return 0
  for written in write_all(args.out, rows):
    print(written)
  return 0


if __name__ == '__main__':
  sys.exit(main())
