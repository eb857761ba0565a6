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


def test_bootstrap_mean_over_groups():
  # constant groups: no spread, the interval is the point
  got = stats.bootstrap_mean({'a': [1.0, 1.0], 'b': [3.0, 3.0, 3.0]})
  assert (got.mean, got.low, got.high) == pytest.approx((2.0, 2.0, 2.0))
  # a group of one value: its noise is unknown, so no interval
  assert stats.bootstrap_mean({'a': [1.0, 2.0], 'b': [2.0]}).low is None
  # deterministic, and close to the normal-theory interval on large groups
  rng = np.random.default_rng(1)
  groups = {k: rng.normal(k, 1.0, size=400) for k in range(4)}
  a, b = stats.bootstrap_mean(groups), stats.bootstrap_mean(groups)
  assert (a.low, a.high) == (b.low, b.high)
  se = math.sqrt(sum(np.var(g, ddof=1) / len(g) for g in groups.values())) / 4
  assert a.mean == pytest.approx(np.mean([g.mean() for g in groups.values()]))
  assert (a.high - a.low) / 2 == pytest.approx(1.96 * se, rel=0.1)


def test_bootstrap_of_two_seeds_keeps_their_variance():
  """Two seeds per group: the resampled mean's variance is s^2 / 2 (a plain
  bootstrap gives s^2 / 4). Many groups make the mean over groups normal, so
  the interval is 1.96 standard errors."""
  groups = {k: [0.0, 1.0] for k in range(50)}  # s^2 = 0.5 per group
  got = stats.bootstrap_mean(groups, draws=40_000)
  se = math.sqrt(50 * 0.5 / 2) / 50
  assert (got.high - got.low) / 2 == pytest.approx(1.96 * se, rel=0.05)


def test_format():
  got = stats.paired_difference({0: 0.6, 1: 0.7, 2: 0.8}, {0: 0.5, 1: 0.5,
                                                          2: 0.5})
  assert got.format(100, signed=True) == '+20.0 [-4.8, +44.8]'
  assert stats.t_interval([0.25]).format(100) == '25.0'
