"""baselines/stats.py against hand-computed intervals and textbook values."""
import math

import numpy as np
import pytest

from baselines import stats


def test_t_interval_matches_a_t_table():
  # mean 2, sd 1, n 3: half-width t_{0.975,2} / sqrt(3) = 4.3027 / 1.7321
  got = stats.t_interval([1.0, 2.0, 3.0])
  assert got.n == 3 and got.mean == pytest.approx(2.0)
  assert got.high - got.mean == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
  assert got.mean - got.low == pytest.approx(got.high - got.mean)
  # n 10 at 90 %: t_{0.95,9} = 1.8331
  vals = np.arange(10.0)
  got = stats.t_interval(vals, level=0.90)
  assert got.high - got.mean == pytest.approx(
      1.8331 * vals.std(ddof=1) / math.sqrt(10), abs=1e-4)


def test_one_value_has_no_interval_and_missing_values_are_skipped():
  got = stats.t_interval([0.5, None, float('nan')])
  assert (got.mean, got.low, got.high, got.n) == (0.5, None, None, 1)
  assert got.verdict() == stats.ONE_SEED
  assert stats.t_interval([None]) is None


def test_score_intervals_stay_within_the_range_of_a_score():
  # two seeds at 90 % and 100 %: half-width t_{0.975,1} * 0.0707 / sqrt(2)
  # = 12.706 * 0.05 = 0.635, so [0.315, 1.585] cut to [0.315, 1].
  got = stats.score_interval([0.9, 1.0])
  assert got.low == pytest.approx(0.95 - 12.7062 * 0.05, abs=1e-4)
  assert got.high == 1.0
  assert stats.t_interval([0.9, 1.0]).high == pytest.approx(
      0.95 + 12.7062 * 0.05, abs=1e-4)
  # a difference of two scores stays within [-1, 1], its verdict unchanged
  got = stats.paired_difference({0: 1.0, 1: 0.2}, {0: 0.0, 1: 0.0})
  assert (got.high, got.verdict()) == (1.0, stats.SAME)


def test_graph_interval_is_exact_where_every_graph_is_perfect_or_failed():
  # Clopper-Pearson for 16 of 16: the 2.5 % quantile of Beta(16, 1), which
  # textbooks tabulate as 0.7941; for 0 of 16 the mirror image.
  got = stats.graph_interval([1.0] * 16)
  assert (got.mean, got.high, got.n) == (1.0, 1.0, 16)
  assert got.low == pytest.approx(0.7941, abs=1e-4)
  got = stats.graph_interval([0.0] * 16)
  assert (got.mean, got.low) == (0.0, 0.0)
  assert got.high == pytest.approx(1 - 0.7941, abs=1e-4)
  # One failed graph among 16 keeps the t interval (cut at 1): mean 0.9375,
  # sd 0.25, half-width t_{0.975,15} * 0.25 / 4 = 2.1314 * 0.0625.
  got = stats.graph_interval([1.0] * 15 + [0.0])
  assert got.low == pytest.approx(0.9375 - 2.1314 * 0.0625, abs=1e-4)
  assert got.high == 1.0
  assert stats.graph_interval([]) is None


@pytest.mark.parametrize('diffs,verdict', [
    ([0.10, 0.12, 0.11], stats.BETTER),
    ([-0.10, -0.12, -0.11], stats.WORSE),
    ([0.10, -0.05, 0.02], stats.SAME),
])
def test_verdict_is_whether_the_interval_excludes_zero(diffs, verdict):
  x = {s: 0.5 + d for s, d in enumerate(diffs)}
  y = {s: 0.5 for s in range(len(diffs))}
  got = stats.paired_difference(x, y)
  assert got.verdict() == verdict
  assert (got.low > 0 or got.high < 0) == (verdict != stats.SAME)


def test_pairs_only_shared_seeds():
  got = stats.paired_difference({0: 0.9, 1: 0.7, 5: 0.1}, {0: 0.8, 1: 0.8})
  assert got.n == 2 and got.mean == pytest.approx(0.0)
  assert stats.paired_difference({0: 1.0}, {1: 1.0}) is None


def test_mean_over_groups_is_welch_satterthwaite():
  # one group: that group's own t interval (scipy's one-sample t)
  from scipy import stats as scipy_stats  # pylint: disable=g-import-not-at-top
  vals = [0.1, -0.05, 0.2]
  got = stats.mean_over_groups({'a': vals})
  ci = scipy_stats.ttest_1samp(vals, 0.0).confidence_interval(0.95)
  assert (got.low, got.high) == pytest.approx((ci.low, ci.high))
  # two groups, by hand: means 0.1 and 0.3, s^2 = 0.02 (n=2) and 0.01 (n=3)
  got = stats.mean_over_groups({'a': [0.0, 0.2], 'b': [0.2, 0.3, 0.4]})
  w = [0.02 / 2, 0.01 / 3]
  df = sum(w) ** 2 / (w[0] ** 2 / 1 + w[1] ** 2 / 2)
  half = scipy_stats.t.ppf(0.975, df) * math.sqrt(sum(w)) / 2
  assert got.mean == pytest.approx(0.2) and got.n == 2
  assert (got.low, got.high) == pytest.approx((0.2 - half, 0.2 + half))
  assert 1 < df < 3
  # constant groups: the point; a group of one value: no interval
  got = stats.mean_over_groups({'a': [0.1, 0.1], 'b': [0.3, 0.3, 0.3]})
  assert (got.mean, got.low, got.high) == pytest.approx((0.2, 0.2, 0.2))
  assert stats.mean_over_groups({'a': [0.1, 0.2], 'b': [0.2]}).low is None
  assert stats.mean_over_groups({}) is None


def test_mean_over_groups_of_two_seeds_is_wider_than_a_normal_interval():
  """Ten groups of two seeds: the standard error is sqrt(10 * s^2 / 2) / 10
  and the degrees of freedom 10 (each group's 1, all alike), so the interval
  is t_{0.975,10} = 2.228 standard errors, not 1.96."""
  groups = {k: [0.0, 0.1] for k in range(10)}  # s^2 = 0.005 per group
  got = stats.mean_over_groups(groups)
  se = math.sqrt(10 * 0.005 / 2) / 10
  assert (got.high - got.low) / 2 == pytest.approx(2.2281 * se, rel=1e-4)


def test_format():
  got = stats.paired_difference({0: 0.6, 1: 0.7, 2: 0.8}, {0: 0.5, 1: 0.5,
                                                          2: 0.5})
  assert got.format(100, signed=True) == '+20.0 [-4.8, +44.8]'
  assert stats.t_interval([0.25]).format(100) == '25.0'


# --- results.md's sections at each test size and the study's goals -----------

# t_{0.975, 2}: the 95 % two-sided quantile for three seeds (a t table).
T_975_2 = 4.302652729911275


def _size_row(algorithm, model, seed, nodes, score, seconds=0.01, steps=None,
              graph_scores=None):
  return dict(algorithm=algorithm, model=model, seed=seed, nodes=nodes,
              test_score=score, eval_seconds_per_graph=seconds,
              algo_steps_mean=nodes - 1 if steps is None else steps,
              graph_scores=graph_scores, solver_iters_mean=None,
              nar_steps_mean=None)


def test_a_run_cut_to_its_first_graphs_is_compared_on_those_graphs():
  """A time limit scored one model on the first 2 of 4 graphs: each seed's
  difference is then over those 2 graphs, and the table marks the cut."""
  from baselines import report  # pylint: disable=g-import-not-at-top
  dear = {0: [1.0, 0.5, 0.0, 0.0], 1: [1.0, 1.0, 1.0, 0.0]}
  base = {0: [0.5, 0.5], 1: [0.0, 1.0]}
  rows = []
  for s in (0, 1):
    rows.append(dict(_size_row('bfs', 'dear', s, 256, np.mean(dear[s]),
                               graph_scores=dear[s]), graphs=4))
    rows.append(dict(_size_row('bfs', 'nar_lt', s, 256, np.mean(base[s]),
                               graph_scores=base[s]), graphs=2,
                     graphs_planned=4))
  got = report._size_differences(rows, 'dear', 'nar_lt', 256)['bfs']  # pylint: disable=protected-access
  # seed 0: 0.75 - 0.5 on the first two; seed 1: 1.0 - 0.5 (over all four
  # graphs dear's would be 0.375 and 0.75)
  assert (got.n, got.mean) == (2, pytest.approx((0.25 + 0.5) / 2))
  lines = report._size_lines(rows, ['dear', 'nar_lt'])  # pylint: disable=protected-access
  assert any(l.startswith('| bfs | `nar_lt` |') and l.endswith(', g=2 |')
             for l in lines), lines
  assert not any(l.startswith('| bfs | `dear` |') and 'g=' in l
                 for l in lines)


def test_head_to_head_at_each_size_pairs_seeds_with_a_t_interval():
  from baselines import report  # pylint: disable=g-import-not-at-top
  dear = {0: 0.90, 1: 0.80, 2: 0.85}
  base = {0: 0.70, 1: 0.62, 2: 0.66}
  rows = [_size_row('bfs', 'dear', s, 256, v) for s, v in dear.items()]
  rows += [_size_row('bfs', 'nar_lt', s, 256, v) for s, v in base.items()]
  rows += [_size_row('bfs', 'nar_lt', 3, 256, 0.0)]  # no dear seed 3: unpaired
  text = '\n'.join(report._size_head_to_head_lines(rows, ['dear', 'nar_lt']))
  d = [100 * (dear[s] - base[s]) for s in range(3)]
  mean, sd = sum(d) / 3, float(np.std(d, ddof=1))
  half = T_975_2 * sd / math.sqrt(3)
  assert (f'| bfs | {mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}] '
          '(n=3, better) |') in text


def test_one_run_at_a_size_gets_its_graphs_interval():
  from baselines import report  # pylint: disable=g-import-not-at-top
  graphs = [1.0, 0.5, 0.75, 1.0]
  rows = [_size_row('bfs', 'dear', 0, 128, 0.81, graph_scores=graphs)]
  text = '\n'.join(report._size_interval_lines(rows, ['dear']))
  half = 3.182446305284263 * float(np.std(graphs, ddof=1)) / 2  # t_{.975,3}
  m = 100 * np.mean(graphs)
  assert m + 100 * half > 100  # so the interval is cut at 100
  assert (f'| bfs | `dear` | {m:.1f} [{m - 100 * half:.1f}, 100.0] (g=4) |'
          in text)
  rows = [_size_row('bfs', 'dear', 0, 128, 1.0, graph_scores=[1.0] * 16)]
  text = '\n'.join(report._size_interval_lines(rows, ['dear']))
  assert '| bfs | `dear` | 100.0 [79.4, 100.0] (g=16) |' in text


def test_goals_count_verdicts_and_time_ratios():
  from baselines import report  # pylint: disable=g-import-not-at-top
  rows = []
  for i in range(10):
    a = f'alg{i}'
    for s in range(3):
      wobble = 0.01 * s
      # n=64: dear 5 points below on alg0..alg2 (worse), level elsewhere.
      gap64 = -0.05 if i < 3 else 0.0
      rows += [_size_row(a, 'dear', s, 64, 0.8 + gap64 + wobble, 0.01),
               _size_row(a, 'nar_lt', s, 64, 0.8 + wobble * 1.5, 0.01)]
      # n=256: dear 10 points above on alg0..alg5; alg0's steps stay flat.
      gap = 0.1 if i < 6 else 0.0
      steps = 3 if i == 0 else None
      rows += [_size_row(a, 'dear', s, 256, 0.5 + gap + wobble,
                         0.2 if i < 4 else 1.0, steps),
               _size_row(a, 'nar_lt', s, 256, 0.5 + wobble * 1.5, 1.0,
                         steps)]
  for r in rows:
    if r['algorithm'] == 'alg0' and r['nodes'] == 64:
      r['algo_steps_mean'] = 3
    if r['algorithm'] == 'alg1' and r['nodes'] == 256:
      # alg1's runs all recorded CPU seconds: 0.5 against 1.0, used so
      r['eval_cpu_seconds_per_graph'] = 0.5 if r['model'] == 'dear' else 1.0
    if (r['algorithm'], r['model'], r['seed']) == ('alg2', 'dear', 0):
      r['eval_cpu_seconds_per_graph'] = 0.01  # one run of three: wall used
    if (r['algorithm'], r['model'], r['seed']) == ('alg3', 'dear', 0):
      # one run on another CPU model, slow there: left out of alg3's ratio
      r.update(hardware='another CPU', eval_seconds_per_graph=5.0)
    if (r['algorithm'], r['model']) == ('alg9', 'dear'):
      r['hardware'] = 'another CPU'  # no machine shared with nar_lt: no ratio
  text = '\n'.join(report.goal_lines(rows))
  # alg0..2: n=64 differences -5 ± small noise, an interval below 0.
  assert ('Not worse at n=64 on at least 8 of 10: 7 of 10 compared '
          '(not met)') in text
  assert ('Better at n=256 on at least 5 of 10: 6 of 10 compared (met): '
          'alg0, alg1, alg2, alg3, alg4, alg5.') in text
  # alg0's steps do not grow; alg1..3 at 0.2 s against 1.0 s of wall time,
  # alg1 at 0.5 s against 1.0 of CPU time; alg3 on the machine both ran on.
  assert ('at least double from n=64 (runs on one CPU model): 2 of 8 '
          'measured: alg1 0.50× (CPU), alg2 0.20× (wall), alg3 0.20× (wall), '
          'alg4 1.00× (wall)') in text
  assert text.split('runs on one CPU model')[1].endswith(
      'not compared, the two models on different CPU models: alg9.')
