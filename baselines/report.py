"""DIR/results.md (and, through rows, DIR/results.csv) from the finished
runs in DIR/runs: per-algorithm tables, paired differences with their
intervals, the fixed-point goals and the study's goals."""

from __future__ import annotations

import statistics

from .plan import MODELS
from .rows import by_seed, mean_std, number, shared_graphs
from . import stats
from . import variants
from .protocol import hardware_lines

# Published single-task Triplet-GMPNN OOD test scores (%, n=64, 10 seeds):
# Ibarz et al. 2022, "A Generalist Neural Algorithmic Learner" (arXiv
# 2209.11142), Table 2, transcribed from the EvoPrompting reprint (arXiv
# 2302.14838, Appendix Table 3), not from the Ibarz PDF itself; cross-checked
# against EvoPrompting's Table 1 and the 30-task mean 75.98. Mean ± SEM.
PUBLISHED_TRIPLET_GMPNN = {
    'activity_selector': (95.18, 0.45),
    'articulation_points': (88.32, 2.01),
    'bellman_ford': (97.39, 0.19),
    'bfs': (99.73, 0.04),
    'binary_search': (77.58, 2.35),
    'bridges': (93.99, 2.07),
    'bubble_sort': (67.68, 5.50),
    'dag_shortest_paths': (98.19, 0.30),
    'dfs': (47.79, 4.19),
    'dijkstra': (96.05, 0.60),
    'find_maximum_subarray_kadane': (76.36, 0.43),
    'floyd_warshall': (48.52, 1.04),
    'graham_scan': (93.62, 0.91),
    'heapsort': (31.04, 5.82),
    'insertion_sort': (78.14, 4.64),
    'jarvis_march': (91.01, 1.30),
    'kmp_matcher': (19.51, 4.57),
    'lcs_length': (80.51, 1.84),
    'matrix_chain_order': (91.68, 0.59),
    'minimum': (97.78, 0.55),
    'mst_kruskal': (89.80, 0.77),
    'mst_prim': (86.39, 1.33),
    'naive_string_matcher': (78.67, 4.99),
    'optimal_bst': (73.77, 1.48),
    'quickselect': (0.47, 0.25),
    'quicksort': (64.64, 5.12),
    'segments_intersect': (97.64, 0.09),
    'strongly_connected_components': (43.43, 3.15),
    'task_scheduling': (87.25, 0.35),
    'topological_sort': (87.27, 2.67),
}
PUBLISHED_LABEL = 'Triplet-GMPNN (Ibarz et al. 2022)'

# When DEAR's answer counts as its fixed point H* (docs/equilibrium.md,
# "Goals"): converged share, distance to H*, score spread over tolerances
# (points).
FIXED_POINT_GOALS = dict(converged=0.99, distance=0.05, spread=0.5)
DEAR_MODELS = tuple(n for n, v in variants.VARIANTS.items() if v.kind == 'dear')
STEPWISE_MODELS = ('nar_nohint', 'nar_lt', 'nar', 'clrs_official')


def _size_table(rows: list, models: list, title: str, note: str,
                cell) -> list:
  """A results.md table, algorithm and model by test size n; `cell(at)`
  writes the cell of a model's rows at one n (never empty)."""
  if not rows:
    return []
  sizes = sorted({r['nodes'] for r in rows})
  lines = ['', f'## {title}', '', note, '',
           '| algorithm | model | ' + ' | '.join(f'n={n}' for n in sizes)
           + ' |', '|' + '---|' * (len(sizes) + 2)]
  for a in sorted({r['algorithm'] for r in rows}):
    for m in models:
      mine = [r for r in rows if r['algorithm'] == a and r['model'] == m]
      if not mine:
        continue
      cells = []
      for n in sizes:
        at = [r for r in mine if r['nodes'] == n]
        cells.append(cell(at) if at else '–')
      lines.append(f'| {a} | `{m}` | ' + ' | '.join(cells) + ' |')
  return lines


def _size_lines(rows: list, models: list) -> list:
  """results.md: score, time and iterations or steps against n."""

  def cell(at):
    mean = lambda k: mean_std([r[k] for r in at])[0]
    score, ms = mean('test_score'), mean('eval_seconds_per_graph')
    steps = mean('solver_iters_mean')
    if steps is None:
      steps = mean('nar_steps_mean')
    cut = sorted({r['graphs'] for r in at if r.get('graphs_planned')})
    return (f'{100 * score:.1f} / {1e3 * ms:.1f}'
            + ('' if steps is None else f' / {steps:.1f}')
            + f' ({mean("algo_steps_mean"):.1f})'
            + (f', n={len(at)}' if len(at) != 1 else '')
            + (f', g={"/".join(map(str, cut))}' if cut else ''))

  return _size_table(
      rows, models, 'Test score and time against n',
      'The best parameters on the official test and on test sets '
      'of further sizes (data.extra_test_lengths; dm-clrs\'s samplers '
      'with the official test seed, the same graphs for every model). '
      'Each cell: score % / ms per graph / DEAR\'s solver iterations or '
      '`nar_lt`\'s steps, then the true steps in brackets; means over '
      'seeds (n = seeds where more than one); g = the graphs scored where '
      'a time limit (data.extra_test_max_seconds) cut a run to its first '
      'graphs (comparisons then use the graphs both runs scored). '
      'results_by_size.csv has every value.', cell)


def _size_interval_lines(rows: list, models: list) -> list:
  """results.md: the test score at each n with its 95 % interval: over seeds
  where a model has several, else over the one run's test graphs."""

  def cell(at):
    if len(at) > 1:
      got = stats.score_interval([number(r['test_score']) for r in at])
      return f'{got.format(100)} (n={got.n})'
    if at[0].get('graph_scores'):
      got = stats.graph_interval(at[0]['graph_scores'])
      return f'{got.format(100)} (g={got.n})'
    return f'{100 * at[0]["test_score"]:.1f} (n=1)'

  return _size_table(
      rows, models, 'Test score at each n, with 95 % intervals',
      'Mean [95 % t interval, cut to 0-100] in %: over seeds where the '
      'model has several (n = seeds), else over the run\'s test graphs\' own '
      'scores (g = graphs; a graph\'s score is the mean over its '
      'outputs, so the mean of one run\'s graphs can differ a little '
      'from its pooled score above). Where every graph scores 100 % '
      '(or 0 %), the interval is the exact binomial one for that many '
      'perfect (failed) graphs, e.g. [79.4, 100.0] for 16 of 16.', cell)


def _size_differences(rows: list, dear: str, base: str, n: int) -> dict:
  """{algorithm: Interval of dear - base at n nodes, paired by seed}. Where
  the two runs of a seed scored different numbers of graphs (a time limit,
  data.extra_test_max_seconds), both are scored on the graphs both have:
  the mean of their first graphs' own scores (the same graphs, as dm-clrs
  draws them one after another)."""
  out = {}
  at = [r for r in rows if r['nodes'] == n]
  for a in sorted({r['algorithm'] for r in at}):
    mine = {m: {r['seed']: r for r in at
                if r['algorithm'] == a and r['model'] == m
                and number(r['test_score']) is not None}
            for m in (dear, base)}
    x, y = {}, {}
    for seed in set(mine[dear]) & set(mine[base]):
      x[seed], y[seed] = _on_shared_graphs(mine[dear][seed], mine[base][seed])
    got = stats.paired_difference(x, y)
    if got is not None:
      out[a] = got
  return out


def _on_shared_graphs(one: dict, other: dict) -> tuple:
  """The two size rows' scores on the graphs both scored (see
  _size_differences)."""
  shared = shared_graphs(one, other)
  if one.get('graphs') == other.get('graphs') or shared is None:
    return number(one['test_score']), number(other['test_score'])
  return statistics.fmean(shared[0]), statistics.fmean(shared[1])


def _size_head_to_head_lines(rows: list, models: list) -> list:
  """DEAR minus each stepwise baseline at each n, as at the official size."""
  dears = [m for m in DEAR_MODELS if m in models]
  bases = [m for m in STEPWISE_MODELS if m in models]
  sizes = sorted({r['nodes'] for r in rows})
  pairs = [(d, b) for d in dears for b in bases]
  table = {(d, b, n): _size_differences(rows, d, b, n)
           for d, b in pairs for n in sizes}
  pairs = [(d, b) for d, b in pairs if any(table[d, b, n] for n in sizes)]
  if not pairs:
    return []
  lines = ['', '## DEAR against the stepwise baselines at each n', '',
           'As the section above, at every test size: per algorithm the '
           'difference in points paired by seed, mean [95 % t interval], '
           'and its verdict; one shared seed gives none.', '']
  for d, b in pairs:
    lines += [f'`{d}` minus `{b}`:', '',
              '| algorithm | ' + ' | '.join(f'n={n}' for n in sizes) + ' |',
              '|' + '---|' * (len(sizes) + 1)]
    algorithms = sorted({a for n in sizes for a in table[d, b, n]})
    for a in algorithms:
      cells = []
      for n in sizes:
        got = table[d, b, n].get(a)
        cells.append('–' if got is None else
                     f'{got.format(100, signed=True)} (n={got.n}, '
                     f'{got.verdict()})')
      lines.append(f'| {a} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  return lines[:-1]


# The study's goals (results/dear10/PROTOCOL.md): `dear` against `nar_lt`.
GOAL_DEAR, GOAL_BASE = 'dear', 'nar_lt'
GOAL_NOT_WORSE_AT, GOAL_NOT_WORSE = 64, 8
GOAL_BETTER_AT, GOAL_BETTER = 256, 5
GOAL_TIME_AT, GOAL_TIME_RATIO = 256, 1 / 3
GOAL_ALGORITHMS = 10


def _one_machine(mine: list, theirs: list) -> tuple:
  """Both sides' rows on one machine (results.csv `hardware`): times of two
  CPU models are not compared. The machine both sides ran on with the most
  runs (ties: the first by name); ([], []) when they share none."""
  shared = ({r.get('hardware', '') for r in mine} &
            {r.get('hardware', '') for r in theirs})
  if not shared:
    return [], []
  both = mine + theirs
  machine = max(sorted(shared),
                key=lambda h: sum(r.get('hardware', '') == h for r in both))
  return ([r for r in mine if r.get('hardware', '') == machine],
          [r for r in theirs if r.get('hardware', '') == machine])


def goal_lines(rows: list) -> list:
  """Whether the study's goals are met, from the runs measured so far."""
  if not rows or not any(r['model'] == GOAL_DEAR for r in rows):
    return []
  d, b = GOAL_DEAR, GOAL_BASE
  lines = ['', f'## Goals: `{d}` against `{b}`', '',
           'The goals fixed in the protocol, from the runs measured so far '
           '(verdicts as above, seeds paired; an algorithm without two shared '
           'seeds counts for neither side).', '']
  not_worse = _size_differences(rows, d, b, GOAL_NOT_WORSE_AT)
  ok = [a for a, got in not_worse.items()
        if got.verdict() in (stats.BETTER, stats.SAME)]
  better = _size_differences(rows, d, b, GOAL_BETTER_AT)
  won = [a for a, got in better.items() if got.verdict() == stats.BETTER]

  def status(count: int, goal: int, compared: int) -> str:
    if count >= goal:
      return 'met'
    return 'not met' if count + GOAL_ALGORITHMS - compared < goal else 'open'

  lines.append(f'- Not worse at n={GOAL_NOT_WORSE_AT} on at least '
               f'{GOAL_NOT_WORSE} of {GOAL_ALGORITHMS}: {len(ok)} of '
               f'{len(not_worse)} compared '
               f'({status(len(ok), GOAL_NOT_WORSE, len(not_worse))})'
               + (f': {", ".join(ok)}' if ok else '') + '.')
  lines.append(f'- Better at n={GOAL_BETTER_AT} on at least {GOAL_BETTER} of '
               f'{GOAL_ALGORITHMS}: {len(won)} of {len(better)} compared '
               f'({status(len(won), GOAL_BETTER, len(better))})'
               + (f': {", ".join(won)}' if won else '') + '.')
  ratios, apart = [], []
  for a in sorted({r['algorithm'] for r in rows}):
    mine = {m: [r for r in rows if r['algorithm'] == a and r['model'] == m]
            for m in (d, b)}
    small = [r for r in mine[d] if r['nodes'] == GOAL_NOT_WORSE_AT]
    big = [r for r in mine[d] if r['nodes'] == GOAL_TIME_AT]
    base_big = [r for r in mine[b] if r['nodes'] == GOAL_TIME_AT]
    if not (small and big and base_big):
      continue
    steps_small = mean_std([r['algo_steps_mean'] for r in small])[0]
    steps_big = mean_std([r['algo_steps_mean'] for r in big])[0]
    if not steps_small or not steps_big or steps_big < 2 * steps_small:
      continue  # steps that do not grow with n
    big, base_big = _one_machine(big, base_big)
    if not big:
      apart.append(a)
      continue
    # CPU seconds where every run recorded them (other jobs on the machine
    # stretch the wall time far more), else wall seconds
    key, clock = (('eval_cpu_seconds_per_graph', 'CPU') if all(
        number(r.get('eval_cpu_seconds_per_graph')) for r in big + base_big)
                  else ('eval_seconds_per_graph', 'wall'))
    ratio = (mean_std([r[key] for r in big])[0] /
             mean_std([r[key] for r in base_big])[0])
    ratios.append((a, ratio, clock))
  within = [a for a, ratio, _ in ratios if ratio <= GOAL_TIME_RATIO]
  lines.append(
      f'- Time per graph at n={GOAL_TIME_AT} at most a third of `{b}`\'s, '
      'on the algorithms whose true steps at least double from n='
      f'{GOAL_NOT_WORSE_AT} (runs on one CPU model): {len(within)} of '
      f'{len(ratios)} measured'
      + (': ' + ', '.join(f'{a} {r:.2f}× ({clock})'
                          for a, r, clock in ratios) if ratios
         else '')
      + (f'; not compared, the two models on different CPU models: '
         f'{", ".join(apart)}' if apart else '') + '.')
  return lines

def _fmt(mean, std, n, scale=1.0, digits=1):
  if mean is None:
    return '–'
  s = f'{scale * mean:.{digits}f}'
  if std is not None:
    s += f' ± {scale * std:.{digits}f}'
  return s + (f' (n={n})' if n != 1 else ' (n=1)')


def _verdict_counts(diffs: list) -> str:
  counts = {v: sum(d.verdict() == v for d in diffs)
            for v in (stats.BETTER, stats.WORSE, stats.SAME, stats.ONE_SEED)}
  words = {stats.ONE_SEED: 'one seed (cannot tell apart)'}
  return ', '.join(f'{words.get(v, v)} on {k}' for v, k in counts.items() if k)


def _head_to_head_lines(rows: list, models: list) -> list:
  """Each DEAR model minus each stepwise baseline, paired by seed, with 95 %
  intervals and verdicts (baselines/stats.py): per algorithm and over the
  algorithms."""
  dears = [m for m in DEAR_MODELS if m in models]
  bases = [m for m in STEPWISE_MODELS if m in models]
  if not dears or not bases:
    return []
  algorithms = sorted({r['algorithm'] for r in rows})
  diff = {}
  for d in dears:
    for b in bases:
      for a in algorithms:
        got = stats.paired_difference(by_seed(rows, a, d, 'test_score'),
                                      by_seed(rows, a, b, 'test_score'))
        if got is not None:
          diff[d, b, a] = got
  lines = ['', '## DEAR against the stepwise baselines', '',
           'Test score of the DEAR model minus the baseline\'s (points), '
           'paired by seed over the seeds both finished (seed s of every '
           'model trains on the same data stream): mean [95 % t interval]. '
           'A verdict is *better* or *worse* only where the interval excludes '
           '0, else *indistinguishable* (cannot tell apart); one shared seed '
           'gives no interval. The mean over algorithms has a t interval '
           'from the algorithms\' own variances (Welch-Satterthwaite; '
           'baselines/stats.py). DEAR is told '
           'no step count, nor is `nar_lt` (it learns when to stop); the other '
           'stepwise models run for the true one.', '',
           '| DEAR model | ' + ' | '.join(f'vs `{b}`' for b in bases) + ' |',
           '|' + '---|' * (len(bases) + 1)]
  for d in dears:
    cells = []
    for b in bases:
      pairs = [diff[d, b, a] for a in algorithms if (d, b, a) in diff]
      if not pairs:
        cells.append('–')
        continue
      per_algorithm = {}
      for a in algorithms:
        x = by_seed(rows, a, d, 'test_score')
        y = by_seed(rows, a, b, 'test_score')
        shared = sorted(set(x) & set(y))
        if shared:
          per_algorithm[a] = [x[s] - y[s] for s in shared]
      mean = stats.mean_over_groups(per_algorithm)
      cells.append(f'{len(pairs)} algorithms: {_verdict_counts(pairs)}; '
                   f'mean {mean.format(100, signed=True)}'
                   + ('' if mean.low is not None else
                      ' (no interval: an algorithm has one seed)'))
    lines.append(f'| `{d}` | ' + ' | '.join(cells) + ' |')
  for d in dears:
    present = [a for a in algorithms if any((d, b, a) in diff for b in bases)]
    if not present:
      continue
    lines += ['', f'Per algorithm, `{d}` minus each baseline (points; seeds '
              'paired):', '',
              '| algorithm | ' + ' | '.join(f'`{b}`' for b in bases) + ' |',
              '|' + '---|' * (len(bases) + 1)]
    for a in present:
      lines.append(f'| {a} | ' + ' | '.join(
          f'{diff[d, b, a].format(100, signed=True)} (n={diff[d, b, a].n}, '
          f'{diff[d, b, a].verdict()})' if (d, b, a) in diff else '–'
          for b in bases) + ' |')
  return lines


# What DEAR's parts are compared on, against plain `dear`: (csv column,
# header, scale, format).
PART_METRICS = (('test_score', 'test score (%)', 100, '{:.1f}'),
                ('final_train_loss', 'final training loss', 1, '{:.4f}'),
                ('fixed_point_distance_mean', 'distance to H*', 1, '{:.3f}'),
                ('solver_iters_mean', 'iterations', 1, '{:.1f}'),
                ('train_steps_per_second', 'train steps/s', 1, '{:.2f}'))


def _parts_lines(rows: list, models: list) -> list:
  """Each of DEAR's own parts (CGP, GAS) against plain DEAR, on the seeds
  both finished: does the part change training, and how."""
  parts = [m for m in DEAR_MODELS[1:] if m in models]
  if 'dear' not in models or not parts:
    return []
  out = []
  for part in parts:
    for a in sorted({r['algorithm'] for r in rows}):
      cells = []
      seeds = None
      for metric, _, scale, fmt in PART_METRICS:
        x = by_seed(rows, a, 'dear', metric)
        y = by_seed(rows, a, part, metric)
        shared = sorted(set(x) & set(y))
        if metric == 'test_score':
          seeds = shared
        if not shared:
          cells.append('–')
          continue
        mx = scale * sum(x[s] for s in shared) / len(shared)
        my = scale * sum(y[s] for s in shared) / len(shared)
        cells.append(f'{fmt.format(mx)} → {fmt.format(my)}')
      if seeds:
        diff = stats.paired_difference(by_seed(rows, a, part, 'test_score'),
                                       by_seed(rows, a, 'dear', 'test_score'))
        cells.insert(1, f'{diff.format(100, signed=True)} (n={diff.n}, '
                     f'{diff.verdict()})')
        out.append(f'| {a} | `{part}` | {len(seeds)} | ' + ' | '.join(cells)
                   + ' |')
  if not out:
    return []
  headers = [h for _, h, _, _ in PART_METRICS]
  headers.insert(1, 'test score difference (points)')  # after test score
  return ['', "## DEAR's own parts against plain DEAR", '',
          '`dear` → the part, means over the seeds both finished; the test '
          'score difference is the part minus `dear`, paired by seed, with '
          'its 95 % t interval and verdict (one seed: no interval, and the '
          'two cannot be told apart). The training loss is each run\'s own objective (median over the last '
          'tenth of the steps): both include the Jacobian penalty, and '
          '`dear_align`\'s also its alignment term (× align_weight); '
          'plots/training_curves.png shows the curves.', '',
          '| algorithm | part | seeds | ' + ' | '.join(headers) + ' |',
          '|' + '---|' * (len(headers) + 3)] + out


def _fixed_point_goal_lines(rows: list, models: list) -> list:
  dears = [m for m in DEAR_MODELS if m in models]
  g = FIXED_POINT_GOALS
  out = []
  for a in sorted({r['algorithm'] for r in rows}):
    for m in dears:
      runs = [r for r in rows if r['algorithm'] == a and r['model'] == m]
      if not runs:
        continue
      mean = lambda k: mean_std([r[k] for r in runs])[0]
      nonconv, dist = mean('nonconverged_fraction'), mean(
          'fixed_point_distance_mean')
      spread, iters, steps = (mean('score_by_tol_spread'),
                              mean('solver_iters_mean'),
                              mean('algo_steps_mean'))
      checked = [r['checked_graphs'] for r in runs if r['checked_graphs']]
      checks = [None if nonconv is None else 1 - nonconv >= g['converged'],
                None if dist is None else dist <= g['distance'],
                None if spread is None else spread <= g['spread']]
      mark = lambda ok: '' if ok is None else (' ✓' if ok else ' ✗')
      fmt = lambda v, f: '–' if v is None else f.format(v)
      out.append(
          f'| {a} | `{m}` | {len(runs)} | '
          f'{fmt(None if nonconv is None else 100 * (1 - nonconv), "{:.1f}")}'
          f'{mark(checks[0])} | {fmt(dist, "{:.3f}")}{mark(checks[1])} | '
          f'{fmt(spread, "{:.2f}")}{mark(checks[2])} | '
          f'{fmt(iters, "{:.1f}")} / {fmt(steps, "{:.1f}")} | '
          f'{min(checked) if checked else "–"} | '
          + ('–' if None in checks else ('yes' if all(checks) else 'no'))
          + ' |')
  if not out:
    return []
  return ['', '## DEAR: is every answer a fixed point? (goals)', '',
          f'Goals: at least {100 * g["converged"]:.0f} % of test graphs '
          f'converged, mean distance to H* at most {g["distance"]}, test '
          f'score spread over tolerances at most {g["spread"]} points '
          '(means over seeds; ✓ met, ✗ not). Converged % and iterations '
          'are over every test graph; distance and spread over the first '
          '"graphs checked" (dear.check_graphs; the fewest over seeds).', '',
          '| algorithm | model | seeds | converged % | distance to H* | '
          'spread (points) | iterations / true steps | graphs checked | '
          'all met |',
          '|---|---|---|---|---|---|---|---|---|'] + out


def _hardware_line(info: dict, rows: list) -> str:
  """The machines behind the runs: each run's own (results.json 'hardware')
  and every machine an invocation on this folder ran on (protocol.json);
  timing columns compare only within one machine."""
  invoked = hardware_lines(info)
  per_run = {}
  for r in rows:
    per_run.setdefault(r.get('hardware') or '', []).append(r)
  if len(invoked) == 1 and set(per_run) <= {'', invoked[0]}:
    return f'Hardware: {invoked[0]}.'
  lines = ['Hardware: runs in this folder come from more than one machine, '
           'so compare timing columns only between runs of one machine '
           '(results.csv `hardware`).', '']
  for line, runs in sorted(per_run.items(), key=lambda kv: kv[0] == ''):
    lines.append(f'- {line or "not recorded (runs written before results.json named its machine; see the list below)"}: '
                 f'{len(runs)} run(s)')
  lines += ['', 'Every machine that trained in this folder: '
            + '; '.join(invoked) + '.']
  return '\n'.join(lines)


def write_markdown(path: str, rows: list, info: dict, protocol: dict,
                   sizes: list = ()) -> None:
  """results.md; `sizes`: `rows.size_rows` of the runs (its section if any)."""
  algorithms = sorted({r['algorithm'] for r in rows})
  present = {r['model'] for r in rows}
  models = [m for m in MODELS if m in present] + sorted(present - set(MODELS))

  def cells(metric, scale=1.0, digits=1):
    table = {}
    for a in algorithms:
      for m in models:
        vals = [r[metric] for r in rows
                if r['algorithm'] == a and r['model'] == m]
        table[a, m] = _fmt(*mean_std(vals), scale=scale, digits=digits)
    return table

  lines = ['# DEAR vs stepwise NAR vs dm-clrs BaselineModel', '',
           _hardware_line(info, rows), '',
           f'Preset(s) {", ".join(info["presets"])}; {protocol["train_steps"]} '
           f'training steps, validation every {protocol["eval_every"]} steps; '
           f'seeds {", ".join(map(str, info["seeds"]))} requested. Models: '
           + ', '.join(f'`{m}`' for m in models) + '.', '',
           '## Test score (OOD, official CLRS test split; %, mean over '
           'seeds [95 % t interval, cut to 0-100], n = seeds; no interval '
           'from one seed)',
           '']
  header = ['algorithm'] + [f'`{m}`' for m in models] + [
      f'{PUBLISHED_LABEL}, 10 seeds, mean ± SEM']
  lines += ['| ' + ' | '.join(header) + ' |',
            '|' + '---|' * len(header)]
  test = {}
  for a in algorithms:
    for m in models:
      cell = stats.score_interval([number(r['test_score']) for r in rows
                                   if r['algorithm'] == a and r['model'] == m])
      test[a, m] = '–' if cell is None else f'{cell.format(100)} (n={cell.n})'
  for a in algorithms:
    pub = PUBLISHED_TRIPLET_GMPNN.get(a)
    pub_s = f'{pub[0]:.2f} ± {pub[1]:.2f}' if pub else '–'
    lines.append('| ' + ' | '.join([a] + [test[a, m] for m in models] +
                                   [pub_s]) + ' |')
  lines += _head_to_head_lines(rows, models)
  lines += _fixed_point_goal_lines(rows, models)
  lines += _parts_lines(rows, models)
  lines += goal_lines(list(sizes))
  lines += _size_lines(list(sizes), models)
  lines += _size_interval_lines(list(sizes), models)
  lines += _size_head_to_head_lines(list(sizes), models)

  def table(title, metric, scale, digits, note=''):
    t = cells(metric, scale, digits)
    out = ['', f'## {title}', '']
    if note:
      out += [note, '']
    out += ['| algorithm | ' + ' | '.join(f'`{m}`' for m in models) + ' |',
            '|' + '---|' * (len(models) + 1)]
    out += ['| ' + ' | '.join([a] + [t[a, m] for m in models]) + ' |'
            for a in algorithms]
    return out

  lines += table('Validation score (best, n=16; %)', 'val_score', 100, 1)
  lines += table(
      'Training steps per second', 'train_steps_per_second', 1, 2,
      'Steady state, every model alike: model updates per second over the '
      'training steps that did not compile (data generation, validation and '
      'compiling steps excluded). benchmarks/run.py times the Flax NAR and '
      'clrs_official on the same batches.')
  lines += table('Inference ms per test graph', 'eval_seconds_per_graph',
                 1e3, 2)
  lines += table('DEAR solver iterations per test graph (mean)',
                 'solver_iters_mean', 1, 1)
  lines += table(
      'DEAR: is the answer a fixed point?', 'fixed_point_distance_mean', 1, 3,
      'Mean distance ||h - h_ref|| / ||h_ref|| of the decoded state to a '
      'reference solve continued from it (dear_jax/diagnostics.py); small '
      'means the answer is H*, not an early iterate.')
  lines += table('DEAR: test score spread as the tolerance tightens (points)',
                 'score_by_tol_spread', 1, 2,
                 'max - min of the test score at the operating tolerance, '
                 '/10 and /100 (results.json `score_by_tol`).')
  lines += table('DEAR: spectral radius of the map at the answer (mean)',
                 'spectral_radius_mean', 1, 3)
  lines += table('True algorithm steps per test graph (mean)',
                 'algo_steps_mean', 1, 1)
  lines += table('Compiled train-step memory (MB)', 'memory_mb', 1, 1,
                 'XLA memory_analysis of one jitted training step on a batch '
                 'of the largest training size: temp + arguments + outputs, '
                 'donated buffers counted once. Same for every seed.')
  lines += ['', '## Notes', '',
            '- The published column is a reference, not a like-for-like '
            'run: Ibarz et al. trained 10,000 steps on the CLRS v1.0.0 '
            'splits; here the test split is regenerated with dm-clrs '
            f'{protocol["clrs_version"]} (scores and source: '
            '`baselines/report.py`, PUBLISHED_TRIPLET_GMPNN). `clrs_official` is '
            'the local re-run of that baseline on exactly our data.',
            '- Per-run values: results.csv; settings: protocol.json; '
            'figures: plots/.']
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')

