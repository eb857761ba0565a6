"""Intervals and verdicts for comparisons of models over seeds.

Seed noise at a CPU budget is often as large as the differences between the
models, so no comparison is reported without its interval:

* one cell (algorithm, model): the mean over seeds with a 95 % Student-t
  interval (none from a single seed), cut to [0, 1], the range of a score
  (and to [-1, 1] for a difference of two);
* two models on one algorithm: the paired difference over the seeds both
  finished (seed s of every model trains on the same data stream), with its
  t interval; the verdict is 'better' or 'worse' when the interval excludes 0,
  else 'indistinguishable' ("cannot tell apart"); a single shared seed gives
  no interval and the verdict 'one seed: cannot tell apart';
* the mean over algorithms: the mean of each algorithm's mean, with a t
  interval whose variance adds the algorithms' own (s_k^2 / n_k, over K^2)
  and whose degrees of freedom are Welch-Satterthwaite's; only where every
  algorithm has two seeds or more. With two or three seeds per algorithm a
  bootstrap over seeds gives intervals several times too narrow (at two
  seeds its percentile interval is about 18 times narrower than the t
  interval of that algorithm alone).
* one run's test graphs (sizes tested with a few graphs): the t interval over
  the graphs' scores, except where every graph scores 1 (or 0): a t interval
  would then have width 0, so the interval is instead the exact
  (Clopper-Pearson) one for the share of perfect (or failed) graphs, which
  bounds the mean score.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats as scipy_stats

LEVEL = 0.95
BETTER, WORSE, SAME = 'better', 'worse', 'indistinguishable'
ONE_SEED = 'one seed: cannot tell apart'
# The verdicts as README's generated blocks write them.
SAID = {BETTER: 'better', WORSE: 'worse', SAME: 'cannot tell apart'}
SCORE_BOUNDS = (0.0, 1.0)  # test scores are fractions
DIFFERENCE_BOUNDS = (-1.0, 1.0)  # and so their differences


@dataclasses.dataclass(frozen=True)
class Interval:
  """A mean and its interval (low = high = None where there is none)."""
  mean: float
  low: float | None
  high: float | None
  n: int

  def verdict(self) -> str:
    """For a difference: does its interval exclude 0?"""
    if self.low is None:
      return ONE_SEED
    if self.low > 0:
      return BETTER
    if self.high < 0:
      return WORSE
    return SAME

  def format(self, scale: float = 1.0, digits: int = 1,
             signed: bool = False) -> str:
    sign = '+' if signed else ''
    s = f'{scale * self.mean:{sign}.{digits}f}'
    if self.low is not None:
      s += (f' [{scale * self.low:{sign}.{digits}f}, '
            f'{scale * self.high:{sign}.{digits}f}]')
    return s


def t_interval(values, level: float = LEVEL,
               bounds: tuple | None = None) -> Interval | None:
  """Mean ± t_{(1+level)/2, n-1} · s / sqrt(n) of the finite values (None if
  there are none; no interval from one value), cut to `bounds` (low, high)
  where the values cannot leave them: the true mean lies inside them too, so
  the cut interval covers it as often."""
  vals = np.asarray([v for v in values if v is not None and math.isfinite(v)],
                    float)
  n = len(vals)
  if n == 0:
    return None
  mean = float(vals.mean())
  if n == 1:
    return Interval(mean, None, None, 1)
  half = (scipy_stats.t.ppf((1 + level) / 2, n - 1) * vals.std(ddof=1)
          / math.sqrt(n))
  return _within(mean, half, n, bounds)


def _within(mean: float, half: float, n: int,
            bounds: tuple | None) -> Interval:
  """mean ± half, cut to `bounds` (low, high) where given."""
  low, high = mean - half, mean + half
  if bounds is not None:
    low, high = max(low, bounds[0]), min(high, bounds[1])
  return Interval(mean, low, high, n)


def score_interval(scores, level: float = LEVEL) -> Interval | None:
  """The mean test score (fractions, one per seed) with its t interval within
  [0, 1]."""
  return t_interval(scores, level, bounds=SCORE_BOUNDS)


def graph_interval(scores, level: float = LEVEL) -> Interval | None:
  """The mean of per-graph scores in [0, 1] with its interval: the t interval,
  or, where every graph scores 1 (0), the exact binomial bound of g perfect
  (failed) graphs out of g: [(alpha/2)^(1/g), 1] ([0, 1 - (alpha/2)^(1/g)])."""
  got = t_interval(scores, level, bounds=SCORE_BOUNDS)
  if got is None:
    return None
  bound = ((1 - level) / 2) ** (1 / got.n)
  if got.mean == 1.0 and got.low in (None, 1.0):
    return Interval(1.0, bound, 1.0, got.n)
  if got.mean == 0.0 and got.low in (None, 0.0):
    return Interval(0.0, 0.0, 1 - bound, got.n)
  return got


def paired_difference(x: dict, y: dict, level: float = LEVEL
                      ) -> Interval | None:
  """x - y over the seeds both have ({seed: score}), with its t interval
  (within [-1, 1]: x and y are test scores)."""
  seeds = sorted(set(x) & set(y))
  if not seeds:
    return None
  return t_interval([x[s] - y[s] for s in seeds], level,
                    bounds=DIFFERENCE_BOUNDS)


def mean_over_groups(per_group: dict, level: float = LEVEL,
                     bounds: tuple | None = DIFFERENCE_BOUNDS
                     ) -> Interval | None:
  """The mean over groups (algorithms) of each group's mean over its values
  (seeds), with its Welch-Satterthwaite t interval: variance
  sum_k s_k^2 / n_k / K^2, degrees of freedom
  (sum_k s_k^2 / n_k)^2 / sum_k (s_k^2 / n_k)^2 / (n_k - 1). One group gives
  that group's own t interval. A group of one value says nothing of its
  noise: then there is no interval. Cut to `bounds` (differences of
  scores)."""
  groups = [np.asarray(v, float) for v in per_group.values() if len(v)]
  if not groups:
    return None
  k = len(groups)
  mean = float(np.mean([g.mean() for g in groups]))
  if any(len(g) < 2 for g in groups):
    return Interval(mean, None, None, k)
  w = np.array([g.var(ddof=1) / len(g) for g in groups])
  if not w.sum():
    return Interval(mean, mean, mean, k)
  df = w.sum() ** 2 / sum(wi ** 2 / (len(g) - 1)
                          for wi, g in zip(w, groups) if wi)
  half = scipy_stats.t.ppf((1 + level) / 2, df) * math.sqrt(w.sum()) / k
  return _within(mean, half, k, bounds)
