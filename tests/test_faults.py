"""Faults and bad input: each answered in one line (exit 2) with nothing
written first, nothing mislabelled and nothing run from a data file.

Most cases reuse one finished tiny NAR run (conftest.finished_run), copied
before anything touches it.
"""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import cli_args, xla_fast_compile
from dear_jax import run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(args, capsys):
  """run.main(args) -> (exit code, stdout, stderr)."""
  try:
    code = run.main(args)
  except SystemExit as e:
    code = e.code
  out, err = capsys.readouterr()
  return code, out, err


def _one_line(err: str) -> str:
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), err
  return lines[0]


def _with(args, *flags) -> list:
  """args with `flags` in place of the same flags there (--config.KEY=V)."""
  keys = {f.split('=', 1)[0] for f in flags}
  return [a for a in args if a.split('=', 1)[0] not in keys] + list(flags)


def _files(folder) -> dict:
  """{relative path: bytes} of every file under folder."""
  out = {}
  for dirpath, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(dirpath, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, folder)] = f.read()
  return out


@pytest.fixture
def copied(finished_run, tmp_path):
  """A copy of the finished tiny NAR run: (its config, workdir)."""
  done = finished_run('nar')
  assert done.code == 0
  workdir = tmp_path / 'w'
  shutil.copytree(done.workdir, workdir)
  return done.config, workdir


# --- a run folder belongs to one config ----------------------------------------

@pytest.mark.parametrize('override, named', [
    ('--config.train.learning_rate=0.05', 'train.learning_rate 0.001 -> 0.05'),
    ('--config.model.hidden=32', 'model.hidden 16 -> 32'),
    ('--config.data.batch_size=3', 'data.batch_size 2 -> 3'),
])
def test_finished_folder_refuses_a_changed_setting(copied, capsys, override,
                                                   named):
  config, workdir = copied
  before = _files(workdir)
  code, out, err = _cli(_with(cli_args(config, workdir), override), capsys)
  assert code == 2
  line = _one_line(err)
  assert named in line and 'another config' in line
  # the flag that resumes it as it was
  old = override.split('=')[0] + '=' + named.split()[1]
  assert old in line
  assert 'resuming' not in out
  assert _files(workdir) == before


def test_checkpointed_folder_refuses_a_changed_setting(copied, capsys):
  """Unfinished (results.json gone): config.json still says what started it."""
  config, workdir = copied
  (workdir / 'results.json').unlink()
  before = _files(workdir)
  code, _, err = _cli(cli_args(config, workdir) +
                      ['--config.train.learning_rate=0.05'], capsys)
  assert code == 2 and 'train.learning_rate 0.001 -> 0.05' in _one_line(err)
  assert _files(workdir) == before


def test_more_steps_need_extend_and_are_announced(copied, capsys):
  config, workdir = copied
  steps = config.train.steps
  stored = json.loads((workdir / 'results.json').read_text())
  before = _files(workdir)
  args = _with(cli_args(config, workdir), f'--config.train.steps={steps + 2}')
  code, _, err = _cli(args, capsys)
  assert code == 2
  line = _one_line(err)
  assert f'holds a run of {steps} steps' in line and '--extend' in line
  assert _files(workdir) == before
  # fewer steps cannot be had from this folder at all
  code, _, err = _cli(_with(cli_args(config, workdir),
                            '--config.train.steps=4'), capsys)
  assert code == 2 and 'cannot be shortened' in _one_line(err)
  with xla_fast_compile():
    code, out, _ = _cli(args + ['--extend'], capsys)
  assert code == 0
  assert f'extending from {steps} to {steps + 2} steps' in out
  results = json.loads((workdir / 'results.json').read_text())
  assert results['train_steps'] == steps + 2
  assert results['extended_from'] == [steps]
  assert [p[0] for p in results['loss_curve']] == list(range(1, steps + 3))
  # trained on from the finished run's last checkpoint
  assert results['loss_curve'][:steps] == stored['loss_curve']
  # the extended folder now answers to its new length, without work
  extended = _files(workdir)
  code, _, _ = _cli(args, capsys)
  assert code == 0 and _files(workdir) == extended


def test_test_settings_change_only_with_reevaluate_and_are_recorded(
    copied, capsys):
  config, workdir = copied
  stored = json.loads((workdir / 'results.json').read_text())
  args = cli_args(config, workdir) + ['--config.data.test_num_samples=6']
  code, _, err = _cli(args, capsys)
  assert code == 2
  line = _one_line(err)
  assert 'data.test_num_samples 4 -> 6' in line and '--reevaluate' in line
  with xla_fast_compile():
    code, _, _ = _cli(args + ['--reevaluate'], capsys)
  assert code == 0
  results = json.loads((workdir / 'results.json').read_text())
  assert results['test_graphs'] == 6
  assert results['reevaluated_with'] == {'data.test_num_samples': [4, 6]}
  assert results['config']['data']['test_num_samples'] == 6
  # the model is the one trained: same best step and validation curve
  assert results['best_step'] == stored['best_step']
  assert results['val_curve'] == stored['val_curve']


def test_damaged_results_json_is_one_line_naming_it(copied, capsys):
  config, workdir = copied
  for text in ('{}', '{"test_score": 0.5, "tra'):
    (workdir / 'results.json').write_text(text)
    code, _, err = _cli(cli_args(config, workdir), capsys)
    assert code == 2 and str(workdir / 'results.json') in _one_line(err)


# --- no code from data files -----------------------------------------------------

class _Marker:
  """Unpickling this creates the file `path` (what a crafted cache file does)."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, 'w'))


def _stream_dir(cache_dir, seed):
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from dear_jax import input_pipeline, train  # pylint: disable=g-import-not-at-top
  cfg = train.data_config(tiny_config(cache_dir))
  stream = input_pipeline.RecordedStream('bfs', cfg, seed, keep_hints=True)
  return stream._dir  # pylint: disable=protected-access


def test_a_pickled_stream_state_is_never_loaded(finished_run, tmp_path, capsys):
  import pickle  # pylint: disable=g-import-not-at-top
  done = finished_run('nar')  # its cache holds the tiny splits already
  seed = 11  # a stream of its own in the shared cache
  folder = _stream_dir(done.cache_dir, seed)
  marker = tmp_path / 'ran'
  try:
    with open(os.path.join(folder, 'live_state.pkl'), 'wb') as f:
      pickle.dump(_Marker(str(marker)), f)
    code, _, err = _cli(
        cli_args(done.config, tmp_path / 'w') +
        [f'--seed={seed}', '--config.data.recorded_stream=True'], capsys)
    assert code == 2
    line = _one_line(err)
    assert 'live_state.pkl' in line and f'delete the cache folder {folder}' in line
    assert not marker.exists()
  finally:
    shutil.rmtree(folder)


def test_damaged_cache_files_are_one_line_naming_them(data_cfg, tmp_path):
  from dear_jax import batches, input_pipeline  # pylint: disable=g-import-not-at-top
  bad = tmp_path / 'bad.npz'
  bad.write_bytes(b'PK\x03\x04 truncated')
  with pytest.raises(ValueError, match=f'{bad} cannot be read'):
    batches.load(str(bad))
  cfg = input_pipeline.DataConfig(**dict(data_cfg.__dict__,
                                         cache_dir=str(tmp_path)))
  stream = input_pipeline.RecordedStream('bfs', cfg, seed=0)
  stream.record(1)
  state = os.path.join(stream._dir, 'live_state.npz')  # pylint: disable=protected-access
  assert os.path.exists(state)
  with open(state, 'r+b') as f:
    f.truncate(40)
  with pytest.raises(ValueError, match=f'{state} cannot be read'):
    input_pipeline.RecordedStream('bfs', cfg, seed=0)
