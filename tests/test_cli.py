"""The newcomer's edges of `python -m dear_jax.run`: help, bad config files and
keys named as typed, and what a rerun of a finished workdir says."""

import json
import os
import shutil

import pytest

from conftest import cli_args
from dear_jax import run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_help_lists_flags_and_exits_0(capsys):
  assert run.main(['run', '--help']) == 0
  out = capsys.readouterr().out
  assert out.startswith('Train and test DEAR')
  for flag in ('--algorithm', '--model', '--workdir', '--config', '--reevaluate'):
    assert f'  {flag}: ' in out


@pytest.mark.parametrize('args,message', [
    (['--config=configs/nope.py'],
     "error: config file 'configs/nope.py' not found; use one of "
     'configs/dear_paper.py, configs/dear_paper_cpu.py, configs/default.py'),
    (['--config.model.hiden=64'],
     "error: unknown config key 'hiden' (did you mean \"hidden\"?); see "
     'configs/default.py for the allowed keys'),
    (['--config.dear.tol=0'], 'error: dear.tol=0.0; must be a finite float > 0'),
    (['--config.dear.backward_solver=cg'],
     "error: dear.backward_solver='cg'; allowed: anderson, gmres, bicgstab"),
    (['--config.data.extra_test_lengths=128,3'],
     'error: data.extra_test_lengths must be distinct graph sizes >= 4 (e.g. '
     '128,256,512), got (128, 3)'),
    (['--config.data.extra_test_num_samples=-1'],
     'error: data.extra_test_num_samples must be an int >= 1, got -1'),
    (['--config.data.extra_test_max_seconds=0'],
     'error: data.extra_test_max_seconds must be a positive number of '
     'seconds, or None for no limit, got 0.0'),
    (['--model=nar', '--config.nar.learn_termination=True'],
     "error: nar.learn_termination=True needs nar.hint_mode=none (DEAR's NAR "
     "(LT) has no hints), got 'encoded_decoded'"),
])
def test_bad_config_is_one_line_naming_what_was_typed(capsys, args, message):
  with pytest.raises(SystemExit) as e:
    run.main(['run', '--algorithm=bfs'] + args)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err == message + '\n'


def test_rerun_of_a_finished_workdir_says_so_and_changes_nothing(
    finished_run, tmp_path, capsys):
  done = finished_run('nar')
  workdir = tmp_path / 'w'
  shutil.copytree(done.workdir, workdir)
  before = (workdir / 'results.json').read_bytes()
  args = [a for a in cli_args(done.config, workdir) if a != '--noprogress']
  assert run.main(args) == 0
  out = capsys.readouterr().out
  assert f'already finished: {workdir / "results.json"}' in out
  assert (workdir / 'results.json').read_bytes() == before
  # without its results.json the run resumes from its last checkpoint (the end),
  # says so, and scores the same best parameters again
  (workdir / 'results.json').unlink()
  config = done.config
  assert run.main([a for a in cli_args(config, workdir) if a != '--noprogress']) == 0
  out = capsys.readouterr().out
  assert f'resuming from step {config.train.steps}' in out
  assert json.loads((workdir / 'results.json').read_text())['test_score'] == \
      done.results['test_score']


def test_a_run_types_its_config_once(cache_dir, tmp_path, monkeypatch):
  """The CLI turns the ConfigDict into one RunConfig and passes it down:
  training, the model factory and results.json never type it again."""
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from dear_jax import run_config  # pylint: disable=g-import-not-at-top
  built = []
  from_config = run_config.RunConfig.from_config.__func__

  def counted(cls, config):
    built.append(config)
    return from_config(cls, config)

  monkeypatch.setattr(run_config.RunConfig, 'from_config',
                      classmethod(counted))
  config = tiny_config(cache_dir, 'nar', steps=2)
  assert run.main(cli_args(config, tmp_path / 'w')) == 0
  assert len(built) == 1
  stored = json.loads((tmp_path / 'w' / 'results.json').read_text())['config']
  assert stored['train']['steps'] == 2 and stored['model']['hidden'] == 16


@pytest.mark.parametrize('name', ['dear_paper', 'configs/dear_paper.py'])
def test_a_preset_by_name_from_any_folder(tmp_path, monkeypatch, name):
  """--config=dear_paper (or configs/dear_paper.py) is the package's preset
  from any working directory: the run gets that file's config."""
  from dear_jax import run_config, train, validation  # pylint: disable=g-import-not-at-top
  want = run_config.typed(validation.load_config_file(
      os.path.join(REPO, 'configs', 'dear_paper.py')))
  got = []

  def captured(config, *args, **kwargs):
    got.append(config)
    raise ValueError('stopped before training')

  monkeypatch.setattr(train, 'train_seeds', captured)
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit) as e:
    run.main(['run', '--algorithm=bfs', f'--config={name}'])
  assert e.value.code == 2 and got == [want]
  assert (want.dear.grad, want.model.processor) == ('jfb', 'gmpnn')
