"""baselines.retest: a finished run tested again with other test settings
into its own folder, the source untouched."""

import json
import os

import pytest

from conftest import cli_args, tiny_config
from baselines import retest
from dear_jax import run

pytestmark = pytest.mark.usefixtures('fast_compile')


@pytest.fixture(scope='module')
def softmax_run(tmp_path_factory, cache_dir):
  """A finished tiny DEAR run with softmax aggregation, in a sweep layout."""
  out = tmp_path_factory.mktemp('sweep')
  source = out / 'runs' / 'bfs' / 'dear_softmax' / 's0'
  config = tiny_config(cache_dir, 'dear', steps=2)
  config.model.aggregation = 'softmax'
  assert run.main(cli_args(config, source)) == 0
  return out, source


def _snapshot(folder):
  return {os.path.relpath(os.path.join(d, f), folder):
          open(os.path.join(d, f), 'rb').read()
          for d, _, files in os.walk(folder) for f in files}


def test_retest_into_its_own_folder(softmax_run, capsys):
  out, source = softmax_run
  before = _snapshot(source)
  dest = out / 'runs' / 'bfs' / 'dear_softmax_at' / 's0'
  args = [f'--source={source}', f'--dest={dest}', '--quiet',
          '--config.model.adaptive_temperature=True']
  assert retest.main(args) == 0
  assert _snapshot(source) == before  # the source run as it was
  r = json.loads((dest / 'results.json').read_text())
  assert r['config']['model']['adaptive_temperature'] is True
  assert r['reevaluated_with'] == {'model.adaptive_temperature': [False, True]}
  src = json.loads((source / 'results.json').read_text())
  assert r['val_curve'] == src['val_curve']
  assert r['final_residual_mean'] != src['final_residual_mean']
  assert not [n for n in os.listdir(dest.parent) if n.startswith('.')]
  # again: already tested with these settings, nothing changes
  done = _snapshot(dest)
  assert retest.main(args) == 0
  assert _snapshot(dest) == done
  # the same DEST with other settings is refused, untouched
  capsys.readouterr()
  assert retest.main(args[:-1] + ['--config.model.test_aggregation=max']) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and err.count('\n') == 1
  assert _snapshot(dest) == done


@pytest.mark.parametrize('flag,message', [
    ('--config.model.aggregation=max', 'error: --config.model.aggregation '
     'changes the trained model, not its test'),
    ('--config.train.steps=4', 'error: --config.train.steps changes the '
     'trained model, not its test'),
    ('--config.model.test_aggregation=mean', 'error: model.test_aggregation '
     "must be one of max, softmax, got 'mean'"),
])
def test_only_test_settings_and_nothing_written(softmax_run, capsys, flag,
                                                message):
  out, source = softmax_run
  dest = out / 'runs' / 'bfs' / 'other' / 's0'
  assert retest.main([f'--source={source}', f'--dest={dest}', flag]) == 2
  err = capsys.readouterr().err
  assert err.startswith(message) and err.count('\n') == 1
  assert not dest.parent.exists()


def test_source_without_results_is_refused(tmp_path, capsys):
  assert retest.main([f'--source={tmp_path}', f'--dest={tmp_path / "d"}',
                      '--config.model.adaptive_temperature=True']) == 2
  assert capsys.readouterr().err == (
      f'error: {tmp_path} holds no finished run (no results.json)\n')
