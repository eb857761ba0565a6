"""baselines.compare end to end at a tiny size: outputs (tables, and the data
drawn in each plot), resume, protocol guard, bad names and overrides (one
line, exit 2)."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import types

import matplotlib
import matplotlib.collections
import matplotlib.container
import matplotlib.figure
import matplotlib.image
import numpy as np
import pytest

from baselines import compare, convergence, protocol, report
from baselines import rows as rows_lib
from baselines import plan as plan_lib
from conftest import tiny_config
from dear_jax import loop, profiling, progress, run_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ('dear', 'nar', 'clrs_official')
DPI = 110  # baselines/plots.py


def _tiny_overrides():
  """--config.KEY flags that turn configs/default.py into tests' tiny_config
  (train.* and data.cache_dir have their own compare flags)."""
  from configs import default  # pylint: disable=g-import-not-at-top
  base, tiny = default.get_config(), tiny_config('unused')
  flags = []
  for section in ('data', 'model'):
    for key, value in tiny[section].items():
      if value != base[section][key] and key != 'cache_dir':
        if isinstance(value, tuple):
          value = '(' + ','.join(map(str, value)) + ',)'
        flags.append(f'--config.{section}.{key}={value}')
  return flags + ['--config.dear.max_iter_eval=3']


TINY = (['--preset=smoke', '--algorithms=bfs', f'--models={",".join(MODELS)}',
         '--seeds=1', '--train_steps=1', '--eval_every=1', '--quiet',
         '--no_memory'] + _tiny_overrides())


def _guard_environ(mp):
  """compare.main sets CUDA_VISIBLE_DEVICES (for clrs_official): have the
  monkeypatch `mp` restore its current state afterwards."""
  name = 'CUDA_VISIBLE_DEVICES'
  if name in os.environ:
    mp.setenv(name, os.environ[name])
  else:
    mp.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _restore_environ(monkeypatch):
  _guard_environ(monkeypatch)


def _results_mtimes(out):
  return {m: os.stat(out / 'runs' / 'bfs' / m / 's0' / 'results.json'
                     ).st_mtime_ns for m in MODELS}


def _figure_data(fig, dpi):
  """What a figure shows: per visible axes its title, bars (by label),
  lines (label, x, y) and scatter points (label, offsets)."""
  axes = []
  for ax in fig.axes:
    if not ax.get_visible():
      continue
    axes.append(dict(
        title=ax.get_title(),
        bars={c.get_label(): [p.get_height() for p in c.patches]
              for c in ax.containers
              if isinstance(c, matplotlib.container.BarContainer)},
        lines=[(l.get_label(), np.asarray(l.get_xdata(), float),
                np.asarray(l.get_ydata(), float)) for l in ax.get_lines()],
        points=[(c.get_label(), np.asarray(c.get_offsets(), float))
                for c in ax.collections
                if isinstance(c, matplotlib.collections.PathCollection)]))
  w, h = fig.get_size_inches()
  return dict(axes=axes, pixels=(round(h * dpi), round(w * dpi)))


# What `finished`'s runs did inside dear_jax.loop: its calls (learner class,
# learner name, seeds) and every progress bar's desc and postfixes.
LOOP = dict(calls=[], bars=[], events=[])


class _RecordingBar(progress.ProgressBar):

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.seen = dict(desc=kwargs.get('desc'), postfixes=[])
    LOOP['bars'].append(self.seen)

  def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
    self.seen['postfixes'].append(dict(ordered_dict or {}, **kwargs))
    return super().set_postfix(ordered_dict, refresh, **kwargs)


@pytest.fixture(scope='module')
def finished(tmp_path_factory, cache_dir):
  out = tmp_path_factory.mktemp('compare')
  argv = [f'--out={out}', f'--cache_dir={cache_dir}'] + TINY
  figures = {}
  real_savefig = matplotlib.figure.Figure.savefig
  real_train = loop.train

  def spy_train(learner, runs, *args, **kwargs):
    LOOP['calls'].append((type(learner).__name__, learner.name,
                          [r.seed for r in runs]))
    LOOP['events'].append('train')
    return real_train(learner, runs, *args, **kwargs)

  from_config = run_config.RunConfig.from_config.__func__

  def spy_typed(cls, config):
    LOOP['events'].append('typed')
    return from_config(cls, config)

  def recording_savefig(fig, path, *args, **kwargs):
    figures[os.path.basename(str(path))] = _figure_data(
        fig, kwargs.get('dpi', DPI))
    return real_savefig(fig, path, *args, **kwargs)

  with pytest.MonkeyPatch.context() as mp:
    _guard_environ(mp)
    mp.setattr(matplotlib.figure.Figure, 'savefig', recording_savefig)
    mp.setattr(loop, 'train', spy_train)
    mp.setattr(run_config.RunConfig, 'from_config', classmethod(spy_typed))
    mp.setattr(loop.progress_lib, 'ProgressBar', _RecordingBar)
    assert compare.main(argv) == 0
  return out, argv, figures


def _results(out, model):
  with open(out / 'runs' / 'bfs' / model / 's0' / 'results.json') as f:
    return json.load(f)


def test_outputs(finished):
  out, _, _ = finished
  with open(out / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['model'] for r in rows] == list(MODELS)  # one row per run
  assert tuple(rows[0]) == rows_lib.CSV_COLUMNS
  for r in rows:
    assert (r['algorithm'], r['seed']) == ('bfs', '0')
    assert float(r['test_score']) == _results(out, r['model'])['test_score']
    assert r['train_steps_per_second'] == ''  # its one step compiled
    assert float(r['train_seconds']) > 0
    assert r['memory_mb'] == ''  # --no_memory
    assert (r['solver_iters_mean'] != '') == (r['model'] == 'dear')
    curve = np.asarray(_results(out, r['model'])['loss_curve'], float)
    assert float(r['final_train_loss']) == pytest.approx(
        np.median(curve[-max(1, len(curve) // 10):, 1]))
  md = (out / 'results.md').read_text()
  assert report.PUBLISHED_LABEL in md and '99.73 ± 0.04' in md
  assert 'CPU cores' in md
  # Each run names the machine that tested it; here all ran on this one.
  line = profiling.hardware_line()
  assert {r['hardware'] for r in rows} == {line}
  assert f'Hardware: {line}.' in md
  # and the code: this checkout's commit (a git clone in CI and here)
  for m in MODELS:
    code = _results(out, m)['code']
    assert re.fullmatch(r'[0-9a-f]{40}(\+modified)?', code), code
  # The runs used the tiny protocol (the overrides reached every model).
  assert _results(out, 'nar')['config']['model']['hidden'] == 16
  assert _results(out, 'dear')['test_graphs'] == 4


def test_every_model_trains_in_the_one_loop(finished):
  """Flax and official models: the same loop function, the same loss and
  validation cadence, a progress bar named after the model (hidden by
  --quiet: the loop computes nothing to show in it; its content:
  tests/test_loop_fetch.py)."""
  out, _, _ = finished
  assert sorted(LOOP['calls']) == sorted([
      ('FlaxLearner', 'dear', [0]), ('FlaxLearner', 'nar', [0]),
      ('OfficialLearner', 'clrs_official', [0])])
  for m in MODELS:
    r = _results(out, m)
    assert [s for s, _ in r['loss_curve']] == [1]  # --train_steps=1
    assert [s for s, _ in r['val_curve']] == [0, 1]  # --eval_every=1
    assert r['val_score'] == max(v for _, v in r['val_curve'])
    (bar,) = [b for b in LOOP['bars'] if b['desc'] == f'{m} bfs']
    assert bar['postfixes'] == []


def test_each_models_config_is_typed_once_and_passed_to_its_runs(finished):
  """compare types the dear and nar configs once, when it plans the sweep;
  their runs take those RunConfigs as they are."""
  events = LOOP['events']
  last = len(events) - events[::-1].index('train')
  assert events[:last] == ['typed'] * 2 + ['train'] * 3


PLOTS = ('scores', 'iterations_vs_steps', 'convergence', 'training_curves',
         'score_by_tolerance')


@pytest.mark.parametrize('name', PLOTS)
def test_plot_files_are_real_images(finished, name):
  out, _, figures = finished
  image = matplotlib.image.imread(out / 'plots' / f'{name}.png')
  assert image.shape[:2] == figures[f'{name}.png']['pixels']
  # Not blank: many distinct colours.
  colours = np.unique(image.reshape(-1, image.shape[-1]), axis=0)
  assert len(colours) > 20


def test_scores_plot_shows_test_scores(finished):
  out, _, figures = finished
  (ax,) = figures['scores.png']['axes']
  assert set(ax['bars']) == set(MODELS)
  for m in MODELS:  # one algorithm, one seed: the bar is the score
    np.testing.assert_allclose(ax['bars'][m],
                               [100 * _results(out, m)['test_score']])
  (published,) = [p for label, p in ax['points'] if 'published' in label]
  np.testing.assert_allclose(published[:, 1],
                             [report.PUBLISHED_TRIPLET_GMPNN['bfs'][0]])


def test_training_curves_plot_shows_curves(finished):
  out, _, figures = finished
  loss_ax, val_ax = figures['training_curves.png']['axes']
  for m in MODELS:
    r = _results(out, m)
    (loss,) = [(x, y) for label, x, y in loss_ax['lines'] if label == m]
    np.testing.assert_allclose(np.stack(loss, 1), r['loss_curve'])
    (val,) = [(x, y) for label, x, y in val_ax['lines'] if label == m]
    want = np.asarray(r['val_curve'], float) * [1, 100]
    np.testing.assert_allclose(np.stack(val, 1), want)


def test_iterations_plot_shows_solver_iterations(finished):
  out, _, figures = finished
  (ax,) = figures['iterations_vs_steps.png']['axes']
  r = _results(out, 'dear')
  (points,) = [p for label, p in ax['points'] if label == 'dear seed 0']
  np.testing.assert_allclose(points[:, 1], r['solver_iterations'])
  assert np.all(np.abs(points[:, 0] - r['test_algo_steps']) <= 0.15)  # jitter


def test_score_by_tolerance_plot_shows_each_tolerance(finished):
  out, _, figures = finished
  (ax,) = figures['score_by_tolerance.png']['axes']
  assert ax['title'] == 'dear'
  sbt = _results(out, 'dear')['score_by_tol']
  assert len(sbt) == 3  # operating, /10, /100
  (line,) = [(x, y) for label, x, y in ax['lines'] if label == 'bfs (n=1)']
  want = sorted(((float(t), 100 * v) for t, v in sbt.items()), reverse=True)
  np.testing.assert_allclose(np.stack(line, 1), want)


def test_markdown_states_the_fixed_point_goals_of_each_dear_run(finished):
  out, _, _ = finished
  r = _results(out, 'dear')
  md = (out / 'results.md').read_text()
  (row,) = [l for l in md.splitlines() if l.startswith('| bfs | `dear` |')]
  cells = [c.strip() for c in row.strip('|').split('|')]
  assert cells[2] == '1'  # seeds
  assert cells[3].startswith(f"{100 * (1 - r['nonconverged_fraction']):.1f}")
  assert cells[4].startswith(f"{r['fixed_point_distance_mean']:.3f}")
  assert cells[5].startswith(f"{r['score_by_tol_spread']:.2f}")
  ok = [r['nonconverged_fraction'] <= 0.01,
        r['fixed_point_distance_mean'] <= 0.05,
        r['score_by_tol_spread'] <= 0.5]
  for cell, good in zip(cells[3:6], ok):
    assert cell.endswith('✓' if good else '✗')
  assert cells[7] == str(len(r['fixed_point_distance']))  # graphs checked
  assert cells[8] == ('yes' if all(ok) else 'no')
  # ... and DEAR against each stepwise model that ran (nar, clrs_official).
  (summary,) = [l for l in md.splitlines() if l.startswith('| `dear` | 1 ')]
  cells = [c.strip() for c in summary.strip('|').split('|')][1:]
  ran = [m for m in report.STEPWISE_MODELS if (out / 'runs' / 'bfs' / m).is_dir()]
  assert ran and len(cells) == len(ran)
  for m, cell in zip(ran, cells):
    d = 100 * (r['test_score'] - _results(out, m)['test_score'])
    assert cell == (f'1 algorithms: one seed (cannot tell apart) on 1; mean '
                    f'{d:+.1f} (no interval: an algorithm has one seed)'), cell


def test_report_only_rewrites_the_reports_and_trains_nothing(finished,
                                                            tmp_path,
                                                            capsys):
  src, _, _ = finished
  # A clone of the sweep: moved, and without checkpoints (git-ignored); the
  # convergence trace then comes from its cache, which still matches.
  out = tmp_path / 'clone'
  shutil.copytree(src, out)
  for ckpt in out.glob('runs/*/*/s*/checkpoints'):
    shutil.rmtree(ckpt)
  trace = (out / 'plots' / 'convergence.json').read_text()
  (out / 'plots' / 'convergence.png').unlink()
  before = _results_mtimes(out)
  md, csv_text = (out / 'results.md').read_text(), (
      out / 'results.csv').read_text()
  (out / 'results.md').unlink()
  (out / 'plots' / 'scores.png').unlink()
  assert compare.main([f'--out={out}', '--report_only']) == 0
  assert (out / 'results.md').read_text() == md
  assert (out / 'results.csv').read_text() == csv_text
  assert (out / 'plots' / 'scores.png').exists()
  assert (out / 'plots' / 'convergence.png').exists()
  assert (out / 'plots' / 'convergence.json').read_text() == trace
  assert _results_mtimes(out) == before
  capsys.readouterr()
  # A folder compare never wrote: one line, exit 2, nothing written.
  empty = tmp_path / 'empty'
  empty.mkdir()
  assert compare.main([f'--out={empty}', '--report_only']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'protocol.json not found' in err[0]
  assert not os.listdir(empty)


def test_a_second_machine_is_named_beside_the_first(finished, tmp_path,
                                                   monkeypatch, capsys):
  """Resuming a sweep on another machine keeps the first machine's line, and
  results.md says which runs came from where (timings compare within one)."""
  src, argv, _ = finished
  out = tmp_path / 'clone'
  shutil.copytree(src, out)
  first = json.loads((out / 'protocol.json').read_text())['info']['hardware']
  # One run tested elsewhere (as if resumed on another machine).
  path = out / 'runs' / 'bfs' / 'nar' / 's0' / 'results.json'
  r = json.loads(path.read_text())
  r['hardware'] = 'machine B'
  path.write_text(json.dumps(r))
  monkeypatch.setattr(profiling, 'hardware_line', lambda: 'machine B')
  moved = [a if not a.startswith('--out=') else f'--out={out}' for a in argv]
  assert compare.main(moved) == 0  # every run finished: skipped
  capsys.readouterr()
  info = json.loads((out / 'protocol.json').read_text())['info']
  assert info['hardware'] == first + ['machine B']
  md = (out / 'results.md').read_text()
  assert 'more than one machine' in md
  assert f'- {first[0]}: 2 run(s)' in md and '- machine B: 1 run(s)' in md


def test_head_to_head_pairs_seeds_with_intervals():
  """DEAR against a baseline over the seeds both finished, paired by seed;
  figures hand-computed (t_{0.975, 2} = 4.303 from a t table)."""
  row = lambda a, m, s, score: dict(algorithm=a, model=m, seed=s,
                                    test_score=score)
  rows = [row('bfs', 'dear', 0, 0.9), row('bfs', 'dear', 1, 0.7),
          row('bfs', 'nar_nohint', 0, 0.8),  # seed 1 missing: one pair
          row('dfs', 'dear', 0, 0.2),  # no baseline on dfs
          row('mst_prim', 'dear', 2, 0.5), row('mst_prim', 'nar_nohint', 2,
                                               ''),  # unfinished value
          # differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1, half-width
          # 4.303 * 0.1 / sqrt(3) = 0.248
          row('sort', 'dear', 0, 0.6), row('sort', 'dear', 1, 0.7),
          row('sort', 'dear', 2, 0.8), row('sort', 'nar_nohint', 0, 0.5),
          row('sort', 'nar_nohint', 1, 0.5), row('sort', 'nar_nohint', 2,
                                                 0.5)]
  lines = report._head_to_head_lines(rows, ['dear', 'nar_nohint'])
  per = {l.split(' | ')[0].strip('| '): l for l in lines if l.startswith('| ')}
  assert per['bfs'] == '| bfs | +10.0 (n=1, one seed: cannot tell apart) |'
  assert per['sort'] == '| sort | +20.0 [-4.8, +44.8] (n=3, indistinguishable) |'
  assert 'dfs' not in per and 'mst_prim' not in per
  assert ('indistinguishable on 1, one seed (cannot tell apart) on 1; mean '
          '+15.0 (no interval: an algorithm has one seed)') in per['`dear`']


def test_parts_table_compares_each_part_with_plain_dear_on_shared_seeds():
  """results.md's "DEAR's own parts" rows, hand-computed."""
  def row(m, s, score, loss, dist, iters, sps):
    return dict(algorithm='dag', model=m, seed=s, test_score=score,
                final_train_loss=loss, fixed_point_distance_mean=dist,
                solver_iters_mean=iters, train_steps_per_second=sps)
  rows = [row('dear', 0, 0.90, 0.2, 0.001, 18.0, 1.5),
          row('dear', 1, 0.80, 0.4, 0.003, 20.0, 1.5),
          row('dear_align', 0, 0.95, 0.05, 0.2, 16.0, 1.0),  # seed 1 missing
          row('dear_cgp', 2, 0.5, 1.0, 0.1, 9.0, 0.5)]  # no shared seed
  # Two seeds: differences 0.05, 0.10, mean 0.075, sd 0.0354, half-width
  # 12.706 (t_{0.975, 1}) * 0.0354 / sqrt(2) = 0.318.
  rows += [dict(r, algorithm='sort') for r in (
      row('dear', 0, 0.90, 0.2, 0.001, 18.0, 1.5),
      row('dear', 1, 0.80, 0.4, 0.003, 20.0, 1.5),
      row('dear_cgp', 0, 0.95, 0.2, 0.001, 18.0, 1.5),
      row('dear_cgp', 1, 0.90, 0.4, 0.003, 20.0, 1.5))]
  lines = report._parts_lines(rows, ['dear', 'dear_cgp', 'dear_align'])  # pylint: disable=protected-access
  body = [l for l in lines if l.startswith(('| dag', '| sort'))]
  assert body == ['| sort | `dear_cgp` | 2 | 85.0 → 92.5 | +7.5 [-24.3, +39.3] '
                  '(n=2, indistinguishable) | 0.3000 → 0.3000 '
                  '| 0.002 → 0.002 | 19.0 → 19.0 | 1.50 → 1.50 |',
                  '| dag | `dear_align` | 1 | 90.0 → 95.0 | +5.0 (n=1, one '
                  'seed: cannot tell apart) | 0.2000 → 0.0500 '
                  '| 0.001 → 0.200 | 18.0 → 16.0 | 1.50 → 1.00 |']
  assert report._parts_lines(rows, ['dear', 'nar']) == []  # pylint: disable=protected-access
  assert rows_lib.final_train_loss([[s, float(s)] for s in range(1, 21)]) == (
      pytest.approx(19.5))  # the last 2 of 20 steps
  spiky = [[s, 1.0] for s in range(1, 28)] + [[28, 1e3], [29, 3.0], [30, 1.0]]
  assert rows_lib.final_train_loss(spiky) == 3.0  # median of 1000, 3, 1; their mean 334.7
  assert rows_lib.final_train_loss([]) is None


def test_convergence_plot_shows_trace(finished):
  out, _, figures = finished
  (ax,) = figures['convergence.png']['axes']  # one algorithm: one panel
  with open(out / 'plots' / 'convergence.json') as f:
    (trace,) = json.load(f)['traces']
  # The first test batch (eval_batch_size graphs), to the evaluation cap.
  assert trace['algorithm'] == 'bfs'
  assert trace['cap'] == 3 and trace['graphs'] == 2
  for name in ('solver', 'fixed_point'):
    (line,) = [(x, y) for label, x, y in ax['lines']
               if label.endswith(': median') and (
                   'plain' in label) == (name == 'fixed_point')]
    res = np.asarray(trace['curves'][name], float).T
    np.testing.assert_allclose(line[1], np.median(res, axis=1))
  tol_lines = [y for label, _, y in ax['lines'] if label.startswith('tolerance')]
  assert tol_lines and np.allclose(tol_lines[0], trace['tol'])


def test_convergence_traces_one_per_algorithm_from_cache_or_checkpoints(
    tmp_path, monkeypatch):
  """Which run each algorithm's trace comes from: its lowest seed that has
  checkpoints or a cached trace of the same results.json; other models and
  algorithms without such a run get none; the cache is reused, not redone."""
  computed = []

  def fake_trace(run_dir):
    computed.append(os.path.relpath(run_dir, tmp_path))
    return {'curves': {}, 'from': os.path.relpath(run_dir, tmp_path)}

  monkeypatch.setattr(convergence, 'trace', fake_trace)
  runs = []
  for alg, model, seed, ckpt in [('mst', 'dear', 1, True),
                                 ('mst', 'dear', 0, False),  # no checkpoints
                                 ('bfs', 'dear', 2, True),
                                 ('bfs', 'nar', 0, True),  # not DEAR
                                 ('dfs', 'dear', 0, False)]:  # nothing to use
    run_dir = tmp_path / 'runs' / alg / model / f's{seed}'
    run_dir.mkdir(parents=True)
    (run_dir / 'results.json').write_text(json.dumps({'seed': seed}))
    if ckpt:
      (run_dir / 'checkpoints').mkdir()
    runs.append(dict(algorithm=alg, model=model, seed=seed,
                     run_dir=str(run_dir)))
  got = convergence.cached_traces(str(tmp_path), runs)
  assert [t['from'] for t in got] == ['runs/bfs/dear/s2', 'runs/mst/dear/s1']
  assert computed == ['runs/bfs/dear/s2', 'runs/mst/dear/s1']
  # Second call: both come from the cache, nothing recomputed.
  assert convergence.cached_traces(str(tmp_path), runs) == got
  assert len(computed) == 2
  # A changed results.json invalidates that algorithm's trace only.
  (tmp_path / 'runs/mst/dear/s1/results.json').write_text('{"seed": 1.0}')
  convergence.cached_traces(str(tmp_path), runs)
  assert computed[2:] == ['runs/mst/dear/s1']
  # The single-trace cache of earlier versions is still read.
  (tmp_path / 'plots' / 'convergence.json').write_text(json.dumps(got[0]))
  for ckpt in tmp_path.glob('runs/*/*/s*/checkpoints'):
    ckpt.rmdir()
  assert convergence.cached_traces(str(tmp_path), runs) == [got[0]]


def test_second_invocation_skips_finished_runs(finished, capsys):
  out, argv, _ = finished
  before = _results_mtimes(out)
  assert compare.main(argv) == 0
  assert _results_mtimes(out) == before
  assert capsys.readouterr().out.count('done, skipped') == len(MODELS)


def test_unknown_model_is_one_line_exit_2(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'baselines.compare', f'--out={tmp_path}',
       '--models=dear,transformer'], cwd=REPO, capture_output=True, text=True,
      timeout=60, check=False)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in proc.stderr
  assert "'transformer'" in lines[0]
  assert ('dear, dear_cgp, dear_align, dear_paper, nar, nar_nohint, nar_lt, '
          'clrs_official'
          in lines[0])
  assert not os.listdir(tmp_path)


def test_unknown_algorithm_is_one_line_exit_2(tmp_path, capsys):
  assert compare.main([f'--out={tmp_path}', '--algorithms=bfs,sorting']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert "'sorting'" in err[0] and 'insertion_sort' in err[0]
  assert not os.listdir(tmp_path)


def _stored(out):
  return (out / 'protocol.json').read_bytes(), _results_mtimes(out)


def test_other_protocol_in_same_out_is_refused(finished, capsys):
  out, argv, _ = finished
  before = _stored(out)
  changed = [a for a in argv if not a.startswith('--train_steps')]
  assert compare.main(changed + ['--train_steps=2']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert 'another protocol' in err[0] and 'train_steps: 1 there, 2 now' in err[0]
  assert _stored(out) == before


def test_changed_model_config_in_same_out_is_refused(finished, capsys):
  out, argv, _ = finished
  before = _stored(out)
  assert compare.main(argv + ['--config.model.hidden=32']) == 2
  err = capsys.readouterr().err.strip()
  assert 'hidden: 16 there, 32 now' in err and '\n' not in err
  assert _stored(out) == before


def test_unreadable_protocol_is_refused(tmp_path, capsys):
  (tmp_path / 'protocol.json').write_text('{"protocol": ')
  assert compare.main([f'--out={tmp_path}', '--models=dear']) == 2
  assert 'unreadable' in capsys.readouterr().err
  assert (tmp_path / 'protocol.json').read_text() == '{"protocol": '


@pytest.mark.parametrize('flag, message', [
    ('--config.model.hidden', 'Missing value for flag --config.model.hidden'),
    ('--config.hidden=32', "unknown config key 'hidden'"),
    ('--config.dear.solver.tol=1', "unknown config key 'solver'"),
    ('--config.train.steps=3', 'use --train_steps instead'),
    ('--config.train.seed=1', 'use --seeds instead'),
    ('--config.data.cache_dir=/tmp', 'use --cache_dir instead'),
    ('--config.model.width=32', "unknown config key 'width'"),
    ('--config.model.hiden=32', 'did you mean "hidden"'),
    ('--config.optimizer.lr=1', "unknown config key 'optimizer'"),
    ('--config.model.hidden=wide', '--config.model.hidden=wide: invalid'),
    ('--config.dear.tol=-1', 'dear config: dear.tol'),
    ('--override=model.hidden=32', 'unrecognized arguments: --override'),
])
def test_bad_config_flag_is_one_line_exit_2(tmp_path, capsys, flag, message):
  try:
    code = compare.main([f'--out={tmp_path}', '--models=dear', flag])
  except SystemExit as e:  # argparse's own errors
    code = e.code
  assert code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert message in err[0], err[0]
  assert not os.listdir(tmp_path)


def test_config_flag_reaches_dear_and_nar_configs(tmp_path):
  """--config.KEY=VALUE sets both configs, with ml_collections' types."""
  args = compare.parse_args([f'--out={tmp_path}', '--models=dear,nar',
                             '--config.model.hidden=24',
                             '--config.data.train_sizes=(5,6)',
                             '--config.data.val_num_samples=8'])
  plan = plan_lib.resolve(args)
  for model in ('dear', 'nar'):
    c = plan.configs[model]
    assert (c.model.hidden, c.data.train_sizes, c.data.val_num_samples) == (
        24, (5, 6), 8)


def test_protocol_allows_new_algorithms_models_seeds_only():
  old = dict(train_steps=1, models=dict(dear=dict(model=dict(hidden=16))),
             algorithms=dict(bfs=dict(dear=dict(batch_size=2))))
  grown = dict(train_steps=1,
               models=dict(dear=dict(model=dict(hidden=16)), nar=dict()),
               algorithms=dict(bfs=dict(dear=dict(batch_size=2), nar=dict()),
                               dfs=dict(dear=dict(batch_size=2))))
  assert protocol.first_difference(old, grown) is None
  changed = dict(old, algorithms=dict(bfs=dict(dear=dict(batch_size=4))))
  assert protocol.first_difference(old, changed) == (
      'algorithms.bfs.dear.batch_size: 2 there, 4 now')
  lost_key = dict(old, models=dict(dear=dict(model=dict())))
  assert protocol.first_difference(old, lost_key) == (
      'models.dear.model.hidden (present in only one)')


def _resume_over(tmp_path, old_models: dict, new_models: dict,
                 refused_on: str | None) -> None:
  """compare's guard on a DIR whose protocol.json holds `old_models`,
  resumed with `new_models`: refused naming `refused_on`, or accepted."""
  plan = types.SimpleNamespace(out=str(tmp_path))
  (tmp_path / 'protocol.json').write_text(json.dumps(
      dict(protocol=dict(models=old_models, algorithms={}), info={})))
  new = dict(models=new_models, algorithms={})
  info = dict(algorithms=[], models=[], seeds=[], presets=[])
  if refused_on:
    with pytest.raises(compare.CompareError, match=refused_on):
      protocol.check_and_write(plan, new, info)
  else:
    protocol.check_and_write(plan, new, info)


def test_protocol_written_with_the_old_absent_values_is_the_same(tmp_path):
  """protocol.json from before val/test_num_samples took None (0 meant the
  official count) still guards a DIR: 0 reads as None, 5 stays 5."""
  new = dict(nar=dict(data=dict(val_num_samples=None, options=[],
                                pad_nodes=False)))
  for stored, refused in ((0, False), (5, True)):
    _resume_over(tmp_path, dict(nar=dict(data=dict(val_num_samples=stored))),
                 new, 'val_num_samples' if refused else None)


def test_a_key_added_later_reads_as_its_old_behaviour(tmp_path):
  """A DIR written before dear.spectral_norm existed still takes the
  default (False, what those runs did); a run with it on is refused."""
  old = dict(dear=dict(dear=dict(tol=1e-3)))
  for value, refused in ((False, False), (True, True)):
    _resume_over(tmp_path, old,
                 dict(dear=dict(dear=dict(tol=1e-3, spectral_norm=value,
                                          broyden_history=0))),
                 'spectral_norm' if refused else None)


def test_a_dir_from_before_pad_nodes_resumes_unpadded_only(tmp_path):
  """A DIR written before data.pad_nodes existed ran unpadded batches: it
  resumes with pad_nodes=False and refuses pad_nodes=True."""
  old = dict(dear=dict(data=dict(options=[])))
  for value, refused in ((False, False), (True, True)):
    _resume_over(tmp_path, old,
                 dict(dear=dict(data=dict(options=[], pad_nodes=value))),
                 'pad_nodes' if refused else None)


def test_a_changed_default_names_the_flag_that_resumes_the_dir(tmp_path):
  """A DIR written under another default of a model's config value: the
  refusal names the --config flag that would resume it as it was, and that
  value is then accepted."""
  old = dict(dear=dict(dear=dict(jac_reg_weight=0.01, spectral_norm=False,
                                 broyden_history=0)))
  new = dict(dear=dict(dear=dict(jac_reg_weight=0.1, spectral_norm=False,
                                 broyden_history=0)))
  _resume_over(tmp_path, old, new,
               r'jac_reg_weight: 0\.01 there, 0\.1 now\); use another --out, '
               r'or pass --config\.dear\.jac_reg_weight=0\.01 to resume it')
  _resume_over(tmp_path, old, old, None)
  # A difference outside the models' configs gets no flag.
  with pytest.raises(compare.CompareError) as e:
    protocol.check_and_write(
        types.SimpleNamespace(out=str(tmp_path)),
        dict(models=old, algorithms={}, train_steps=2),
        dict(algorithms=[], models=[], seeds=[], presets=[]))
  assert str(e.value).endswith('use another --out')


def test_after_training_checks_may_differ_within_a_dir(tmp_path):
  """The fixed-point checks (dear.diagnostics, check_*) change neither model
  nor test score: a DIR resumes with other check settings (each results.json
  keeps its own), but not with another model setting beside them."""
  def dear(**kw):
    return dict(dear=dict(dear=dict(dict(jac_reg_weight=0.01,
                                         spectral_norm=False,
                                         broyden_history=0), **kw)))
  old = dear(check_max_iter=1000)  # written before check_graphs existed
  _resume_over(tmp_path, old, dear(check_graphs=256, check_max_iter=300),
               None)
  _resume_over(tmp_path, old, dear(check_graphs=256, jac_reg_weight=0.1),
               'jac_reg_weight')


def test_aligned_model_trains_against_the_sweeps_teacher(tmp_path, cache_dir):
  """dear_align (DEAR + alignment + stochastic iterations) trains after and
  against this sweep's nar_nohint run of the same algorithm and seed, and its
  memory column is measured with that teacher."""
  flags = [f if not f.startswith('--models=') else
           '--models=dear_align,nar_nohint' for f in TINY if f != '--no_memory']
  out = tmp_path / 'out'
  assert compare.main([f'--out={out}', f'--cache_dir={cache_dir}',
                       '--config.dear.diagnostics=False', *flags]) == 0
  runs = out / 'runs' / 'bfs'
  teacher = runs / 'nar_nohint' / 's0'
  r = json.loads((runs / 'dear_align' / 's0' / 'results.json').read_text())
  # Relative to the student's run folder: results never point outside --out.
  assert r['config']['dear']['align_teacher'] == os.path.join(
      '..', '..', 'nar_nohint', 's0')
  assert r['config']['dear']['align_weight'] == 0.01
  assert (teacher / 'results.json').stat().st_mtime_ns < (
      runs / 'dear_align' / 's0' / 'results.json').stat().st_mtime_ns
  mem = json.loads((runs / 'dear_align' / 'memory.json').read_text())
  assert mem['train_step_memory_mb'] > 0


def test_stack_seeds_trains_each_models_seeds_in_one_program(
    tmp_path, cache_dir, monkeypatch):
  """--stack_seeds: one train_seeds call per (algorithm, model) with all its
  unfinished seeds, each landing in its own run folder; the official model
  still trains seed by seed."""
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  calls = []
  real = train.train_seeds

  def spy(config, seeds, workdirs, algorithm, **kwargs):
    calls.append((algorithm, config.model_kind, list(seeds)))
    return real(config, seeds, workdirs, algorithm, **kwargs)

  monkeypatch.setattr(train, 'train_seeds', spy)
  flags = [f for f in TINY if not f.startswith(('--models=', '--seeds='))]
  out = tmp_path / 'out'
  assert compare.main([f'--out={out}', f'--cache_dir={cache_dir}',
                       '--models=nar', '--seeds=2', '--stack_seeds',
                       *flags]) == 0
  assert calls == [('bfs', 'nar', [0, 1])]
  for s in (0, 1):
    r = json.loads((out / 'runs' / 'bfs' / 'nar' / f's{s}' /
                    'results.json').read_text())
    assert r['seed'] == s and r['train_steps'] == 1


def test_sweeps_started_together_on_one_dir_take_turns(tmp_path):
  """Two compare invocations on one --out (one per core) once raced on
  protocol.json.tmp and one died; now the second waits for the first's
  read-merge-write, and both sets of algorithms end up in the file."""
  plan = types.SimpleNamespace(out=str(tmp_path))
  models = dict(dear=dict(dear=dict(jac_reg_weight=0.01, spectral_norm=False,
                                    broyden_history=0)))

  def write(algorithm):
    protocol.check_and_write(
        plan, dict(models=models, algorithms={algorithm: {}}),
        dict(algorithms=[algorithm], models=['dear'], seeds=[0],
             presets=['smoke']))

  write('bfs')
  with protocol.locked(str(tmp_path)):
    # another sweep holds DIR: this one must wait, not write
    waiting = threading.Thread(target=write, args=('dfs',))
    waiting.start()
    waiting.join(timeout=1.0)
    assert waiting.is_alive()
    stored = json.loads((tmp_path / 'protocol.json').read_text())
    assert stored['info']['algorithms'] == ['bfs']
  waiting.join(timeout=30)
  assert not waiting.is_alive()
  stored = json.loads((tmp_path / 'protocol.json').read_text())
  assert stored['info']['algorithms'] == ['bfs', 'dfs']
  assert set(stored['protocol']['algorithms']) == {'bfs', 'dfs'}
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'protocol.json', 'protocol.json.lock']


def test_dear_config_takes_a_preset_by_name_from_any_folder(tmp_path,
                                                            monkeypatch):
  monkeypatch.chdir(tmp_path)
  args = compare.parse_args([f'--out={tmp_path / "out"}', '--models=dear,nar',
                             '--dear_config=dear_paper'])
  p = plan_lib.resolve(args)
  paper = plan_lib.load_config_file(os.path.join(plan_lib.REPO, 'configs',
                                                 'dear_paper.py'))
  assert p.configs['dear'].dear.grad == paper.dear.grad == 'jfb'
  assert p.configs['dear'].model.processor == paper.model.processor == 'gmpnn'
  assert p.configs['nar'].model.processor == 'triplet_gmpnn'
  with pytest.raises(plan_lib.CompareError, match='not found; use a path or'):
    plan_lib.load_config_file('nope')
