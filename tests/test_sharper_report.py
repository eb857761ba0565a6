"""baselines.sharper: the study's CSV from run folders, and its tables and
plots from that CSV, against intervals computed here by hand."""

import json
import math
import os

import numpy as np
import pytest
from scipy import stats as scipy_stats

from baselines import sharper
from baselines import stats


def _results(algorithm, seed, score, graph_scores, extra, **kw):
  r = dict(algorithm=algorithm, model='dear', seed=seed, train_steps=10,
           test_score=score, val_score=0.5, test_nodes=64,
           test_graphs=len(graph_scores), train_seconds=1.0,
           train_steps_per_second=1.0, eval_seconds_per_graph=0.01,
           algo_steps_mean=5.0, num_params=1, config={},
           test_graph_scores=graph_scores, extra_tests=extra)
  r.update(kw)
  return r


def _write(folder, algorithm, model, seed, results):
  d = os.path.join(folder, 'runs', algorithm, model, f's{seed}')
  os.makedirs(d)
  with open(os.path.join(d, 'results.json'), 'w') as f:
    json.dump(results, f)


def _extra(score, graph_scores):
  return {'128': dict(score=score, graphs=len(graph_scores), nodes=128,
                      batch_size=2, eval_seconds_per_graph=0.05,
                      algo_steps_mean=9.0, solver_iters_mean=12.0,
                      nonconverged_fraction=0.5, graph_scores=graph_scores)}


def test_gather_pairs_options_with_controls_and_retests_with_their_runs(
    tmp_path):
  out, control = str(tmp_path / 'out'), str(tmp_path / 'control')
  for seed in (0, 1, 2):  # the control folder has a third seed
    _write(control, 'bfs', 'dear', seed, _results(
        'bfs', seed, 0.9, [0.9, 0.9], _extra(0.8, [0.8, 0.8]),
        fixed_point_distance_mean=0.01, solver_iters_mean=8.0,
        nonconverged_fraction=0.0))
  _write(control, 'dfs', 'dear', 0, _results('dfs', 0, 0.1, [0.1], {}))
  for seed in (0, 1):
    _write(out, 'bfs', 'dear_softmax', seed, _results(
        'bfs', seed, 0.8, [1.0, 0.6], _extra(0.7, [0.9, 0.5])))
    _write(out, 'bfs', 'dear_softmax_at', seed, _results(
        'bfs', seed, 0.85, [1.0, 0.7], _extra(0.75, [1.0, 0.6 - seed / 10])))
  for model, graphs, cut in (('dear_softmax', [0.2, 0.4, 0.3, 0.5], {}),
                             ('dear_softmax_at', [0.3, 0.4, 0.6],
                              {'graphs_planned': 4})):  # the time limit
    later = os.path.join(out, 'runs', 'bfs', model, 's0', 'tests')
    os.makedirs(later)
    with open(os.path.join(later, 'n512.json'), 'w') as f:  # a later test
      json.dump(dict(nodes=512, graphs=len(graphs),
                     score=float(np.mean(graphs)), eval_seconds_per_graph=1.0,
                     graph_scores=graphs, **cut), f)
  rows = sharper.gather(out, control)
  got = {(r['model'], r['seed'], r['nodes']) for r in rows}
  assert got == {(m, s, n) for m in ('dear', 'dear_softmax', 'dear_softmax_at')
                 for s in (0, 1) for n in (64, 128)} | {
                     ('dear_softmax', 0, 512), ('dear_softmax_at', 0, 512)}
  at = {(r['seed'], r['nodes']): r for r in rows
        if r['model'] == 'dear_softmax_at'}
  # seed 1, n=128: graph differences 0.1 and 0.0
  d = np.array([0.1, 0.0])
  half = scipy_stats.t.ppf(0.975, 1) * d.std(ddof=1) / math.sqrt(2)
  assert at[1, 128]['graph_diff_mean'] == pytest.approx(0.05)
  assert at[1, 128]['graph_diff_high'] == pytest.approx(0.05 + half)
  assert at[0, 64]['graph_diff_mean'] == pytest.approx(0.05)
  # n=512 from the later tests, on the 3 graphs both scored: 0.1, 0.0, 0.3
  d = np.array([0.1, 0.0, 0.3])
  half = scipy_stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
  assert at[0, 512]['graph_diff_mean'] == pytest.approx(d.mean())
  assert at[0, 512]['graph_diff_low'] == pytest.approx(d.mean() - half)
  assert at[0, 512]['diff_score'] == pytest.approx(d.mean())
  assert (at[0, 512]['diff_graphs'], at[0, 512]['graphs_planned']) == (3, 4)
  # the whole runs' scores differ by another amount: 0.4333 - 0.35
  assert at[0, 512]['test_score'] - 0.35 != pytest.approx(d.mean())
  # softmax - control, seed 0 at n=64: graphs [1.0, 0.6] - [0.9, 0.9]
  soft = {(r['seed'], r['nodes']): r for r in rows
          if r['model'] == 'dear_softmax'}
  assert soft[0, 64]['diff_score'] == pytest.approx(-0.1)
  assert soft[0, 512].get('diff_score') is None  # no control at n=512
  _csv(tmp_path / 'sharper.csv', rows)  # the tables mark the cut size
  md = sharper.table_lines(sharper.read_csv(str(tmp_path / 'sharper.csv')))
  cells = [l for l in md if l.startswith('| bfs | `dear` | 512 |')]
  assert '43.3 (n=1; g=3)' in cells[0]  # its score table: 3 of 4 graphs
  assert '+13.3 one seed: cannot tell apart (n=1); g=3' in cells[1]
  ctrl = {(r['seed'], r['nodes']): r for r in rows if r['model'] == 'dear'}
  assert ctrl[0, 64]['fixed_point_distance_mean'] == 0.01
  assert ctrl[0, 128].get('fixed_point_distance_mean') is None


def _with_differences(rows):
  """Each option's row with its score minus its counterpart's (AGAINST;
  same algorithm, seed and n): what gather writes where both sides scored
  the same graphs."""
  def key(r, model):
    return r['algorithm'], model, r['seed'], r['nodes']
  score = {key(r, r['model']): r['test_score'] for r in rows}
  for r in rows:
    base, option = sharper._variants()[r['model']]  # pylint: disable=protected-access
    if option in sharper.AGAINST:
      other = score.get(key(r, sharper.model_name(
          base, sharper.AGAINST[option])))
      if other is not None:
        r.update(diff_score=r['test_score'] - other, diff_graphs=r['graphs'])
  return rows


def _csv(path, rows):
  cols = sharper.COLUMNS
  with open(path, 'w') as f:
    f.write(','.join(cols) + '\n')
    for r in rows:
      f.write(','.join('' if r.get(c) is None else str(r[c]) for c in cols)
              + '\n')


def test_tables_and_plots_from_a_synthetic_csv(tmp_path):
  base = dict(algorithm='mst_prim', graphs=4, eval_seconds_per_graph=0.02,
              algo_steps_mean=3.0)
  rows = []
  scores = {'dear': (0.70, 0.74), 'dear_softmax': (0.80, 0.90),
            'dear_softmax_at': (0.81, 0.93), 'dear_decay': (0.60,),
            'nar_lt': (0.5, 0.6)}
  for model, per_seed in scores.items():
    for seed, score in enumerate(per_seed):
      for nodes, shift in ((64, 0.0), (128, -0.1)):
        rows.append(dict(base, model=model, seed=seed, nodes=nodes,
                         test_score=score + shift, solver_iters_mean=(
                             10.0 + seed if model.startswith('dear') else None),
                         nonconverged_fraction=0.25 if model.startswith(
                             'dear') else None,
                         fixed_point_distance_mean=0.02 if nodes == 64 and
                         model.startswith('dear') else None,
                         nar_steps_mean=(2.0 + seed if model == 'nar_lt'
                                         else None)))
      if model == 'dear_softmax_at':  # its difference over the test graphs
        rows[-1].update(graph_diff_mean=0.01 + seed / 50, graph_diff_low=0.0,
                        graph_diff_high=0.05, graph_diff_n=4)
  path = tmp_path / 'sharper.csv'
  _csv(path, _with_differences(rows))
  written = sharper.write_all(str(tmp_path), sharper.read_csv(str(path)))
  assert [os.path.basename(p) for p in written] == [
      'sharper.md', 'sharper_dear.png', 'sharper_nar_lt.png']
  assert all(os.path.getsize(p) > 1000 for p in written[1:])
  md = (tmp_path / 'sharper.md').read_text()
  t = scipy_stats.t.ppf(0.975, 1)

  def cell(values):
    v = 100 * np.asarray(values)
    half = t * v.std(ddof=1) / math.sqrt(len(v))  # cut to a score's range
    return (f'{v.mean():.1f} [{max(v.mean() - half, 0):.1f}, '
            f'{min(v.mean() + half, 100):.1f}]')

  line = next(l for l in md.splitlines()
              if l.startswith('| mst_prim | `dear` | 64 |'))
  assert (f'| {cell([0.70, 0.74])} (n=2) | {cell([0.80, 0.90])} (n=2) | '
          f'{cell([0.81, 0.93])} (n=2) | 60.0 (n=1) |') in line
  # softmax - control over seeds: +10, +16
  diff = [l for l in md.splitlines()
          if l.startswith('| mst_prim | `dear` | 128 |')][1]  # 2nd table
  d = np.array([10.0, 16.0])
  half = t * d.std(ddof=1) / math.sqrt(2)
  assert (f'+13.0 [{13 - half:+.1f}, {13 + half:+.1f}] indistinguishable '
          '(n=2)') in diff
  assert f'-10.0 {stats.ONE_SEED} (n=1)' in diff  # decay: seed 0 only
  # softmax_at - softmax: +1, +3 over seeds; over graphs as the CSV says
  half = t * np.std([1.0, 3.0], ddof=1) / math.sqrt(2)
  assert (f'+2.0 [{2 - half:+.1f}, {2 + half:+.1f}] indistinguishable (n=2);'
          ' graphs s0: +1.0 [+0.0, +5.0], s1: +3.0 [+0.0, +5.0]') in diff
  solve = next(l for l in md.splitlines() if l.startswith('| mst_prim | 64 |'))
  assert '10.5 / 25 % / 0.020' in solve
  assert '10.0 / 25 % / 0.020' in solve  # decay: seed 0 only
  stops = md.split("## `nar_lt`'s learnt stop")[1].splitlines()
  assert '| mst_prim | 64 | 2.5 / 3.0 | – | – | – |' in stops  # control only


def test_the_sweeps_commands_chain(tmp_path, cache_dir, monkeypatch):
  """compare trains an option and its control (tiny), retest re-tests the
  softmax run, baselines.sharper tabulates them: the sweep script's chain."""
  from test_compare import _guard_environ, _tiny_overrides  # pylint: disable=g-import-not-at-top
  from baselines import compare, retest  # pylint: disable=g-import-not-at-top
  _guard_environ(monkeypatch)
  out, control = tmp_path / 'out', tmp_path / 'control'
  tiny = ['--preset=smoke', '--algorithms=bfs', '--seeds=1',
          '--train_steps=1', '--eval_every=1', '--quiet', '--no_memory',
          f'--cache_dir={cache_dir}', '--config.data.extra_test_lengths=6',
          '--config.data.extra_test_num_samples=2'] + _tiny_overrides()
  assert compare.main([f'--out={control}', '--models=dear'] + tiny) == 0
  assert compare.main([f'--out={out}', '--models=dear_softmax'] + tiny) == 0
  runs = out / 'runs' / 'bfs'
  assert retest.main([f'--source={runs / "dear_softmax" / "s0"}',
                      f'--dest={runs / "dear_softmax_at" / "s0"}', '--quiet',
                      '--config.model.adaptive_temperature=True']) == 0
  assert sharper.main([f'--out={out}', f'--control={control}']) == 0
  rows = sharper.read_csv(str(out / 'sharper.csv'))
  assert {(r['option'], r['nodes']) for r in rows} == {
      (o, n) for o in ('control', 'softmax', 'softmax_at') for n in (5, 6)}
  at = [r for r in rows if r['option'] == 'softmax_at']
  assert all(r['graph_diff_n'] is not None for r in at)
  md = (out / 'sharper.md').read_text()
  assert '| bfs | `dear` | 6 |' in md
  # the tables again from the CSV alone, identical
  (out / 'sharper.md').unlink()
  assert sharper.main([f'--out={out}', '--from_csv']) == 0
  assert (out / 'sharper.md').read_text() == md


def _verdict_rows():
  """Two seeds at n=256 on three algorithms: softmax for dear beats its
  control on bfs and mst_prim by nearly the same margin per seed, and
  varies on dag_shortest_paths; decay has seed 0 only; adaptive
  temperature's per-graph intervals lie above 0 on bfs for both seeds."""
  rows = []
  scores = {  # (algorithm, model): per seed
      ('bfs', 'dear'): (0.70, 0.60), ('bfs', 'dear_softmax'): (0.80, 0.701),
      ('mst_prim', 'dear'): (0.50, 0.40),
      ('mst_prim', 'dear_softmax'): (0.60, 0.501),
      ('dag_shortest_paths', 'dear'): (0.5, 0.5),
      ('dag_shortest_paths', 'dear_softmax'): (0.6, 0.4),
      ('bfs', 'dear_decay'): (0.9,),
      ('bfs', 'dear_softmax_at'): (0.85, 0.75)}
  for (a, m), per_seed in scores.items():
    for seed, score in enumerate(per_seed):
      row = dict(algorithm=a, model=m, seed=seed, nodes=256, graphs=16,
                 test_score=score)
      if m.endswith('_at'):
        row.update(graph_diff_mean=0.05, graph_diff_low=0.01 + seed / 100,
                   graph_diff_high=0.1, graph_diff_n=16)
      rows.append(row)
  return rows


def _paired_verdict(x, y):
  d = np.asarray(x) - np.asarray(y)
  half = scipy_stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(
      len(d))
  return ('better' if d.mean() - half > 0 else
          'worse' if d.mean() + half < 0 else 'indistinguishable')


def test_contrast_verdicts_and_the_default_rule(tmp_path):
  path = tmp_path / 'sharper.csv'
  _csv(path, _with_differences(_verdict_rows()))
  rows = sharper.read_csv(str(path))
  got = sharper.contrast_verdicts(rows)
  assert got['softmax', 'dear', 256] == {
      'bfs': _paired_verdict([0.80, 0.701], [0.70, 0.60]),
      'mst_prim': _paired_verdict([0.60, 0.501], [0.50, 0.40]),
      'dag_shortest_paths': _paired_verdict([0.6, 0.4], [0.5, 0.5])}
  assert got['softmax', 'dear', 256]['bfs'] == 'better'  # the case is real
  assert got['decay', 'dear', 256] == {'bfs': sharper.PENDING}
  assert got['softmax_at', 'dear', 256] == {'bfs': 'better'}
  # two of three better at n=256, worse nowhere: the protocol's 'yes'
  assert sharper.default_decision(got, 'softmax', 'dear') == 'yes'
  # ... but not while another size could still show a 'worse'
  unsure = {**got, ('softmax', 'dear', 64): {'bfs': 'better'}}
  assert sharper.default_decision(unsure, 'softmax', 'dear') == 'open'
  assert sharper.default_decision(got, 'decay', 'dear') == 'open'
  assert sharper.default_decision(got, 'softmax', 'nar_lt') == 'open'
  # one worse anywhere rules an option out; so do too few better
  worse = {**got, ('softmax', 'dear', 64): {'bfs': 'worse'}}
  assert sharper.default_decision(worse, 'softmax', 'dear') == 'no'
  few = {('decay', 'dear', 256): {'bfs': 'indistinguishable',
                                  'mst_prim': 'indistinguishable',
                                  'dag_shortest_paths': sharper.PENDING}}
  assert sharper.default_decision(few, 'decay', 'dear') == 'no'
  # a re-test's per-graph intervals: one seed below 0 is not 'better'
  mixed = [dict(r, graph_diff_low=-0.01) if r['model'] == 'dear_softmax_at'
           and r['seed'] == 1 else r for r in rows]
  assert sharper.contrast_verdicts(mixed)['softmax_at', 'dear', 256] == {
      'bfs': 'indistinguishable'}
  # n=512 runs on seed 0 alone: no verdict for training, graphs for re-tests
  at512 = [dict(r, nodes=512) for r in rows if r['seed'] == 0
           and r['algorithm'] == 'bfs']
  got512 = sharper.contrast_verdicts(rows + at512)
  assert got512['softmax', 'dear', 512] == {'bfs': 'seed 0 only'}
  assert got512['softmax_at', 'dear', 512] == {'bfs': 'better (seed 0 only)'}
  assert sharper.default_decision(got512, 'softmax', 'dear') == 'yes'
  out = tmp_path / 'repo' / 'results' / 'sharper'
  out.mkdir(parents=True)
  _csv(out / 'sharper.csv', _with_differences(rows + at512))
  lines = sharper.readme_lines(str(tmp_path / 'repo'))
  softmax = next(l for l in lines if l.startswith('| softmax − control | `dear'))
  assert softmax.endswith('| seed 0 only: bfs (+10.0) |')  # 0.80 - 0.70
  at = next(l for l in lines if l.startswith('| softmax_at − softmax | `dear'))
  assert at.endswith('| better (seed 0 only): bfs |')


def test_readme_block_names_each_verdicts_algorithms(tmp_path):
  out = tmp_path / 'results' / 'sharper'
  assert 'No run has finished yet.' in sharper.readme_lines(
      str(tmp_path))[0]
  out.mkdir(parents=True)
  _csv(out / 'sharper.csv', _with_differences(_verdict_rows()))
  lines = sharper.readme_lines(str(tmp_path))
  assert ('So far 7 of 24 trainings have finished; re-tested so far: '
          'softmax_at on bfs; softmax_max on none.') in lines[0]
  table = {l.split('|')[1].strip() + l.split('|')[2].strip(): l
           for l in lines if l.startswith('| ') and '−' in l}
  assert table['softmax − control`dear`'].endswith(
      '| better: bfs, mst_prim; cannot tell apart: dag_shortest_paths |')
  assert table['decay − control`dear`'].endswith('| pending: bfs |')
  assert table['softmax_at − softmax`dear`'].endswith('| better: bfs |')
  assert not any('nar_lt' in k for k in table)  # nothing ran for it
  assert lines[-1].endswith('softmax for `dear`: yes; softmax for `nar_lt`: '
                            'open; decay for `dear`: open; decay for '
                            '`nar_lt`: open.')


def test_a_retest_that_moves_nar_lts_stop_is_named():
  """moved_stops: a re-test of nar_lt whose mean steps (over the seeds both
  have) differ from the re-tested run's by over MOVED_STOP, and no other."""
  def row(model, seed, nodes, steps):
    base, option = sharper._variants()[model]  # pylint: disable=protected-access
    return dict(algorithm='mst_prim', model=model, base=base, option=option,
                seed=seed, nodes=nodes, nar_steps_mean=steps)
  rows = [row('nar_lt_softmax', 0, 64, 36.0),
          row('nar_lt_softmax', 1, 64, 38.0),
          row('nar_lt_softmax_at', 0, 64, 6.0),
          row('nar_lt_softmax_at', 1, 64, 8.0),
          row('nar_lt_softmax', 0, 128, 40.0),
          row('nar_lt_softmax_at', 0, 128, 31.0),  # -22.5 %: not named
          row('nar_lt_softmax_at', 0, 256, 9.0)]  # nothing to compare with
  assert sharper.moved_stops(rows) == [
      ('softmax_at', 'mst_prim', 64, 7.0, 37.0)]
  rows[5]['nar_steps_mean'] = 29.0  # -27.5 %
  assert [m[2] for m in sharper.moved_stops(rows)] == [64, 128]
