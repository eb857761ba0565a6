"""baselines.compare end to end at a tiny size: outputs, resume, protocol guard,
bad names (one line, exit 2)."""

import csv
import os
import subprocess
import sys

import pytest

from baselines import compare, protocol, report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ('dear', 'nar', 'clrs_official')
TINY = ['--preset=smoke', '--algorithms=bfs', f'--models={",".join(MODELS)}',
        '--seeds=1', '--train_steps=1', '--eval_every=1', '--quiet',
        '--no_memory',
        '--override=data.train_sizes=5', '--override=data.batch_size=2',
        '--override=data.val_length=5', '--override=data.test_length=5',
        '--override=data.val_num_samples=2',
        '--override=data.test_num_samples=2',
        '--override=data.eval_batch_size=2', '--override=model.hidden=16',
        '--override=dear.max_iter_eval=3']


def _results_mtimes(out):
  return {m: os.stat(out / 'runs' / 'bfs' / m / 's0' / 'results.json'
                     ).st_mtime_ns for m in MODELS}


@pytest.fixture(scope='module')
def finished(tmp_path_factory, cache_dir):
  out = tmp_path_factory.mktemp('compare')
  argv = [f'--out={out}', f'--cache_dir={cache_dir}'] + TINY
  assert compare.main(argv) == 0
  return out, argv


def test_outputs(finished):
  out, _ = finished
  with open(out / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['model'] for r in rows] == list(MODELS)  # one row per run
  assert tuple(rows[0]) == report.CSV_COLUMNS
  for r in rows:
    assert (r['algorithm'], r['seed']) == ('bfs', '0')
    assert 0 <= float(r['test_score']) <= 1
    assert r['train_steps_per_second'] == ''  # its one step compiled
    assert float(r['train_seconds']) > 0
    assert r['memory_mb'] == ''  # --no_memory
    assert (r['solver_iters_mean'] != '') == (r['model'] == 'dear')
  md = (out / 'results.md').read_text()
  assert report.PUBLISHED_LABEL in md and '99.73 ± 0.04' in md
  assert 'CPU cores' in md
  for name in ('scores', 'iterations_vs_steps', 'convergence',
               'training_curves'):
    png = (out / 'plots' / f'{name}.png').read_bytes()
    assert png.startswith(b'\x89PNG') and len(png) > 1000


def test_second_invocation_skips_finished_runs(finished, capsys):
  out, argv = finished
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
  assert 'dear, nar, nar_nohint, clrs_official' in lines[0]
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
  out, argv = finished
  before = _stored(out)
  changed = [a for a in argv if not a.startswith('--train_steps')]
  assert compare.main(changed + ['--train_steps=2']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert 'another protocol' in err[0] and 'train_steps: 1 there, 2 now' in err[0]
  assert _stored(out) == before


def test_changed_model_config_in_same_out_is_refused(finished, capsys):
  out, argv = finished
  before = _stored(out)
  assert compare.main(argv + ['--override=model.hidden=32']) == 2
  err = capsys.readouterr().err.strip()
  assert 'hidden: 16 there, 32 now' in err and '\n' not in err
  assert _stored(out) == before


def test_unreadable_protocol_is_refused(tmp_path, capsys):
  (tmp_path / 'protocol.json').write_text('{"protocol": ')
  assert compare.main([f'--out={tmp_path}', '--models=dear']) == 2
  assert 'unreadable' in capsys.readouterr().err
  assert (tmp_path / 'protocol.json').read_text() == '{"protocol": '


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
