"""Intervals and verdicts for comparisons of models over seeds.

Seed noise at a CPU budget is often as large as the differences between the
models, so no comparison is reported without its interval:

* one cell (algorithm, model): the mean over seeds with a 95 % Student-t
  interval (none from a single seed);
* two models on one algorithm: the paired difference over the seeds both
  finished (seed s of every model trains on the same data stream), with its
  t interval; the verdict is 'better' or 'worse' when the interval excludes 0,
  else 'indistinguishable' ("cannot tell apart"); a single shared seed gives
  no interval and the verdict 'one seed: cannot tell apart';
* the mean over algorithms: a bootstrap interval, seeds resampled with
  replacement within each algorithm (fixed generator, so a report is the same
  every time it is made); only where every algorithm has two seeds or more.
  With two or three seeds per algorithm it is an approximation (the
  resampled means are close to normal, while each algorithm's own t interval
  has 1-2 degrees of freedom): read it beside the per-algorithm verdicts.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats as scipy_stats

LEVEL = 0.95
BOOTSTRAP_DRAWS = 10_000
BETTER, WORSE, SAME = 'better', 'worse', 'indistinguishable'
ONE_SEED = 'one seed: cannot tell apart'


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


def t_interval(values, level: float = LEVEL) -> Interval | None:
  """Mean ± t_{(1+level)/2, n-1} · s / sqrt(n) of the finite values (None if
  there are none; no interval from one value)."""
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
  return Interval(mean, mean - half, mean + half, n)


def paired_difference(x: dict, y: dict, level: float = LEVEL
                      ) -> Interval | None:
  """x - y over the seeds both have ({seed: score}), with its t interval."""
  seeds = sorted(set(x) & set(y))
  return t_interval([x[s] - y[s] for s in seeds], level) if seeds else None


def bootstrap_mean(per_group: dict, level: float = LEVEL,
                   draws: int = BOOTSTRAP_DRAWS, seed: int = 0
                   ) -> Interval | None:
  """The mean over groups (algorithms) of each group's mean over its values
  (seeds), with a percentile bootstrap interval: each draw resamples every
  group's values with replacement. The values are first spread about their
  group's mean by sqrt(n / (n - 1)), so that a resampled group mean has the
  variance s^2 / n (a plain bootstrap of 2 seeds would halve it). A group of
  one value says nothing of its noise: then there is no interval."""
  groups = [np.asarray(v, float) for v in per_group.values() if len(v)]
  if not groups:
    return None
  mean = float(np.mean([g.mean() for g in groups]))
  if any(len(g) < 2 for g in groups):
    return Interval(mean, None, None, len(groups))
  rng = np.random.default_rng(seed)
  total = np.zeros(draws)
  for g in groups:
    n = len(g)
    spread = g.mean() + (g - g.mean()) * math.sqrt(n / (n - 1))
    total += spread[rng.integers(0, n, size=(draws, n))].mean(axis=1)
  boot = total / len(groups)
  alpha = (1 - level) / 2
  low, high = np.quantile(boot, [alpha, 1 - alpha])
  return Interval(mean, float(low), float(high), len(groups))
