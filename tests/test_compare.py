"""baselines.compare end to end at a tiny size: outputs, resume, protocol guard,
bad names (one line, exit 2)."""

import csv
import os
import subprocess
import sys

import pytest

from baselines import compare

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
  assert tuple(rows[0]) == compare.CSV_COLUMNS
  for r in rows:
    assert (r['algorithm'], r['seed']) == ('bfs', '0')
    assert 0 <= float(r['test_score']) <= 1
    assert float(r['train_steps_per_second']) > 0
    assert r['memory_mb'] == ''  # --no_memory
    assert (r['solver_iters_mean'] != '') == (r['model'] == 'dear')
  md = (out / 'results.md').read_text()
  assert compare.PUBLISHED_LABEL in md and '99.73 ± 0.04' in md
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
