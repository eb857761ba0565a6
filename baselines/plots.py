"""Figures of `python -m baselines.compare` (matplotlib, Agg, PNG).

Each function takes plain data (the runs' results.json contents, the csv
rows, convergence traces) and writes one titled, labelled figure.
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from . import stats  # pylint: disable=g-import-not-at-top
from . import variants  # pylint: disable=g-import-not-at-top


def _color(model: str, i: int):
  """The variant's own colour, else one that no variant has."""
  named = variants.colours()  # now: a variant may be added after import
  if model in named:
    return named[model]
  free = [c for c in ('tab:brown', 'tab:pink', 'tab:gray', 'tab:olive',
                      'black', 'gold') if c not in named.values()]
  return free[i % len(free)]


def _ordered(models, order):
  return [m for m in order if m in models] + sorted(set(models) - set(order))


def _save(fig, path: str) -> str:
  # tight_layout ignores a suptitle: leave it room (0.2 in per line).
  title = fig.get_suptitle()
  lines = title.count('\n') + 1 if title else 0
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.2 * lines / fig.get_figheight()))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _grid(n: int, width: float = 4.5, height: float = 3.4):
  cols = min(n, 3)
  rows = math.ceil(n / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows),
                           squeeze=False)
  for ax in axes.flat[n:]:
    ax.set_visible(False)
  return fig, list(axes.flat[:n])


def scores(path: str, rows: list, published: dict, published_label: str,
           order=()) -> str:
  """Bars: mean test score per algorithm and model, seed std as error bars."""
  algorithms = sorted({r['algorithm'] for r in rows})
  models = _ordered({r['model'] for r in rows}, order)
  width = 0.8 / max(1, len(models))
  x = np.arange(len(algorithms))
  fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(algorithms) *
                                      max(1, len(models)) / 2 + 2), 4.5))
  for i, m in enumerate(models):
    means, stds = [], []
    for a in algorithms:
      vals = [100 * r['test_score'] for r in rows
              if r['algorithm'] == a and r['model'] == m]
      means.append(np.mean(vals) if vals else np.nan)
      stds.append(np.std(vals, ddof=1) if len(vals) > 1 else 0.0)
    ax.bar(x + (i - (len(models) - 1) / 2) * width, means, width,
           yerr=stds, capsize=3, label=m, color=_color(m, i))
  pub = [published.get(a, (np.nan, 0))[0] for a in algorithms]
  ax.scatter(x, pub, marker='D', color='black', zorder=5,
             label=f'{published_label} (published)')
  ax.set_xticks(x)
  ax.set_xticklabels(algorithms, rotation=30 if len(algorithms) > 3 else 0,
                     ha='right' if len(algorithms) > 3 else 'center')
  # Scores near 100 would look identical on a 0-100 axis: start near the
  # lowest bar, rounded down to a multiple of 10.
  lowest = np.nanmin([100 * r['test_score'] for r in rows] + pub)
  ax.set_ylim(max(0, 10 * np.floor(lowest / 10 - 0.5)), 101)
  ax.set_ylabel('OOD test score (%)')
  ax.set_xlabel('algorithm')
  ax.set_title('Test score per algorithm and model\n(bars: mean over seeds, '
               'error bars: std over seeds;\ndiamonds: published)',
               fontsize=10)
  ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  ax.grid(axis='y', alpha=0.3)
  return _save(fig, path)


def iterations_vs_steps(path: str, runs: list) -> str | None:
  """DEAR's solver iterations per test graph against its true step count."""
  by_alg = {}
  for r in runs:
    res = r['results']
    if 'solver_iterations' in res and 'test_algo_steps' in res:
      by_alg.setdefault(r['algorithm'], []).append(
          (r['model'], r['seed'], res['test_algo_steps'],
           res['solver_iterations'],
           res.get('config', {}).get('dear', {}).get('max_iter_eval')))
  if not by_alg:
    return None
  fig, axes = _grid(len(by_alg))
  rng = np.random.RandomState(0)
  for ax, (a, seeds) in zip(axes, sorted(by_alg.items())):
    hi = 1
    cap = None
    for i, (model, seed, steps, iters, cap) in enumerate(sorted(seeds)):
      steps, iters = np.asarray(steps, float), np.asarray(iters, float)
      jitter = rng.uniform(-0.15, 0.15, size=steps.shape)
      ax.scatter(steps + jitter, iters, s=12, alpha=0.6, color=f'C{i}',
                 label=f'{model} seed {seed}')
      hi = max(hi, steps.max(), iters.max())
    ax.plot([0, hi], [0, hi], 'k--', lw=1, label='iterations = steps')
    if cap:
      ax.axhline(cap, color='gray', ls=':', lw=1, label=f'cap ({cap})')
    ax.set_xlabel('true algorithm steps of the graph')
    ax.set_ylabel('DEAR solver iterations')
    ax.set_title(a)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  fig.suptitle('DEAR: solver iterations vs true algorithm steps\nper test '
               'graph (best validation parameters)', fontsize=10)
  return _save(fig, path)


def convergence(path: str, traces: list) -> str:
  """Residual per iteration, one panel per algorithm: the run's solver
  against plain fixed-point iteration on the same trained map."""
  fig, axes = _grid(len(traces), width=5.5, height=4.2)
  for ax, trace in zip(axes, traces):
    for name, label, color in (
        ('solver', f'{trace["method"]} (the run\'s solver)', 'tab:red'),
        ('fixed_point', 'plain iteration h ← f(h)', 'tab:blue')):
      res = np.asarray(trace['curves'][name], float).T  # [evaluations, graphs]
      res = np.where(np.isfinite(res), res, np.nan)
      x = np.arange(1, res.shape[0] + 1)
      med = np.nanmedian(res, axis=1)
      lo, hi = (np.nanpercentile(res, 25, axis=1),
                np.nanpercentile(res, 75, axis=1))
      ax.plot(x, med, marker='o', ms=2, color=color, label=f'{label}: median')
      ax.fill_between(x, lo, hi, color=color, alpha=0.2,
                      label='25–75% of graphs')
    ax.axhline(trace['tol'], color='k', ls='--', lw=1,
               label=f'tolerance {trace["tol"]} ({trace["tol_mode"]})')
    mean_it = float(np.mean(trace['actual_iterations']))
    ax.axvline(mean_it, color='gray', ls=':', lw=1,
               label=f'mean iterations used: {mean_it:.1f}')
    ax.set_yscale('log')
    ax.set_xlabel('evaluations of the processor map f')
    ax.set_ylabel('relative residual ‖f(h)−h‖/‖f(h)‖'
                  if trace['tol_mode'] == 'rel' else 'residual ‖f(h)−h‖')
    ax.set_title(f'{trace["algorithm"]}: {trace["graphs"]} graphs, '
                 f'n={trace["nodes"]}\n{trace["run"]}', fontsize=9)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, which='both')
  fig.suptitle('DEAR convergence on the first test batch (trained, best '
               'validation parameters)', fontsize=10)
  return _save(fig, path)


def _binned(curve, points: int = 60):
  """[[step, value], ...] -> (steps, values), averaged into <= points bins."""
  arr = np.asarray(curve, float).reshape(-1, 2)
  if len(arr) <= points:
    return arr[:, 0], arr[:, 1]
  bins = np.array_split(arr, points)
  return (np.array([b[-1, 0] for b in bins]),
          np.array([b[:, 1].mean() for b in bins]))


def training_curves(path: str, runs: list, order=()) -> str:
  """Training loss and validation score against steps, per algorithm."""
  algorithms = sorted({r['algorithm'] for r in runs})
  fig, axes = plt.subplots(len(algorithms), 2,
                           figsize=(11, 3.4 * len(algorithms)), squeeze=False)
  for row, a in zip(axes, algorithms):
    mine = [r for r in runs if r['algorithm'] == a]
    models = _ordered({r['model'] for r in mine}, order)
    for i, m in enumerate(models):
      for j, r in enumerate(x for x in mine if x['model'] == m):
        res = r['results']
        kw = dict(color=_color(m, i), alpha=0.85,
                  label=m if j == 0 else None)
        if res.get('loss_curve'):
          row[0].plot(*_binned(res['loss_curve']), marker='.', ms=3, **kw)
        if res.get('val_curve'):
          v = np.asarray(res['val_curve'], float).reshape(-1, 2)
          row[1].plot(v[:, 0], 100 * v[:, 1], marker='.', ms=3, **kw)
    row[0].set_yscale('log')
    row[0].set_title(f'{a}: training loss')
    row[0].set_xlabel('training step')
    row[0].set_ylabel('loss (mean over steps, log)')
    row[1].set_title(f'{a}: validation score')
    row[1].set_xlabel('training step')
    row[1].set_ylabel('validation score (%)')
    for ax in row:
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
  fig.suptitle('Training curves (one line per seed)')
  return _save(fig, path)


def score_by_tolerance(path: str, runs: list, order=()) -> str | None:
  """DEAR's test score at its operating tolerance and tighter ones (results
  .json `score_by_tol`), one panel per DEAR model, one line per algorithm
  (mean over seeds): a flat line means the answer read is H*'s."""
  by_model = {}
  for r in runs:
    sbt = r['results'].get('score_by_tol')
    if sbt:
      by_model.setdefault(r['model'], {}).setdefault(r['algorithm'], []).append(
          {float(t): 100 * v for t, v in sbt.items()})
  if not by_model:
    return None
  models = _ordered(by_model, order)
  fig, axes = _grid(len(models), width=5.0, height=3.8)
  for ax, m in zip(axes, models):
    for i, (a, seeds) in enumerate(sorted(by_model[m].items())):
      tols = sorted(set.intersection(*(set(s) for s in seeds)), reverse=True)
      if not tols:
        continue
      ax.plot(tols, [np.mean([s[t] for s in seeds]) for t in tols], 'o-',
              color=f'C{i % 10}', label=f'{a} (n={len(seeds)})')
    ax.set_xscale('log')
    ax.invert_xaxis()
    ax.set_xlabel('relative tolerance (tighter to the right)')
    ax.set_ylabel('OOD test score (%)')
    ax.set_title(f'{m}')
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  fig.suptitle('DEAR: test score as the solve tightens\n(operating '
               'tolerance, /10, /100; eval cap x4 each)', fontsize=10)
  return _save(fig, path)


def by_size(path: str, rows: list, order=()) -> str:
  """Per algorithm, test score and inference time per graph against n (the
  official test and data.extra_test_lengths), one line per model, means
  over seeds; the scores with their 95 % t interval over seeds as bars, and
  a hollow marker where one seed alone was tested; `rows`:
  rows.size_rows."""
  algorithms = sorted({r['algorithm'] for r in rows})
  models = _ordered({r['model'] for r in rows}, order)
  fig, axes = plt.subplots(2, len(algorithms),
                           figsize=(4.2 * len(algorithms), 6.4),
                           squeeze=False)
  for j, a in enumerate(algorithms):
    for i, m in enumerate(models):
      mine = [r for r in rows if r['algorithm'] == a and r['model'] == m]
      sizes = sorted({r['nodes'] for r in mine})
      if not sizes:
        continue
      color = _color(m, i)
      dodge = 2 ** (0.04 * (i - (len(models) - 1) / 2))  # bars side by side
      for ax, key, scale in ((axes[0][j], 'test_score', 100),
                             (axes[1][j], 'eval_seconds_per_graph', 1e3)):
        at = [[r[key] for r in mine if r['nodes'] == n] for n in sizes]
        xs_all = [n * dodge for n in sizes]
        means = [scale * np.mean(v) for v in at]
        ax.plot(xs_all, means, '-', color=color, label=m)
        pick = [len(v) == 1 for v in at]
        for hollow in (False, True):  # hollow: one seed alone
          ax.plot([x for x, o in zip(xs_all, pick) if o == hollow],
                  [y for y, o in zip(means, pick) if o == hollow], 'o',
                  color=color, markerfacecolor='white' if hollow else color)
        if key == 'test_score':
          cells = [stats.t_interval(v, bounds=stats.SCORE_BOUNDS) for v in at]
          got = [(x, c) for x, c in zip(xs_all, cells)
                 if c is not None and c.low is not None]
          if got:
            ax.errorbar([n for n, _ in got], [scale * c.mean for _, c in got],
                        yerr=[[scale * (c.mean - c.low) for _, c in got],
                              [scale * (c.high - c.mean) for _, c in got]],
                        fmt='none', ecolor=color, alpha=0.5, capsize=3)
    for ax, label in ((axes[0][j], 'test score (%)'),
                      (axes[1][j], 'inference ms per graph (log)')):
      ax.set_xscale('log', base=2)
      ax.set_xlabel('graph size n (log)')
      ax.set_ylabel(label)
      ax.grid(alpha=0.3)
    axes[1][j].set_yscale('log')
    axes[0][j].set_title(a)
    axes[0][j].legend(fontsize=7)
  fig.suptitle('Score and time against n: means over seeds\n'
               'bars: 95 % t interval; hollow: one seed', fontsize=9)
  return _save(fig, path)


def write_all(out_dir: str, runs: list, rows: list, published: dict,
              published_label: str, traces: list, order=(),
              size_rows=()) -> list:
  """Writes every figure the data allows; returns the paths written."""
  os.makedirs(out_dir, exist_ok=True)
  written = []
  if rows:
    written.append(scores(os.path.join(out_dir, 'scores.png'), rows,
                          published, published_label, order))
    written.append(training_curves(os.path.join(out_dir,
                                                'training_curves.png'),
                                   runs, order))
  p = iterations_vs_steps(os.path.join(out_dir, 'iterations_vs_steps.png'),
                          runs)
  if p:
    written.append(p)
  p = score_by_tolerance(os.path.join(out_dir, 'score_by_tolerance.png'),
                         runs, order)
  if p:
    written.append(p)
  if traces:
    written.append(convergence(os.path.join(out_dir, 'convergence.png'),
                               traces))
  if size_rows:
    written.append(by_size(os.path.join(out_dir, 'by_size.png'), size_rows,
                           order))
  return written
