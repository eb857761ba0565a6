"""Stored models: what the training run scored is what the stored copy scores."""

import json
import os
import shutil

import numpy as np
import pytest

from dear_jax import pretrained

# The finished runs compiled with XLA's optimisations off (conftest's
# finished_run): so must the evaluations compared with them bit for bit.
pytestmark = pytest.mark.usefixtures('fast_compile')


@pytest.fixture(scope='module')
def stored(finished_run, tmp_path_factory):
  done = finished_run('dear')
  folder = tmp_path_factory.mktemp('stored') / 'bfs' / 'dear'
  assert pretrained.main([f'--store={done.workdir}', f'--model={folder}',
                          '--name=dear']) == 0
  return done, folder


def test_the_stored_model_scores_what_its_run_scored(stored):
  """The run's own test and validation passes (training loop, checkpoint in
  memory) against the stored copy read from params.npz."""
  done, folder = stored
  results = done.results
  test = pretrained.evaluate(str(folder), 'test')
  assert test['graphs'] == results['test_graphs']
  assert test['score'] == results['test_score']
  assert test['graph_scores'] == results['test_graph_scores']
  val = pretrained.evaluate(str(folder), 'val')
  assert val['score'] == results['val_score']  # the best-by-validation params
  meta = json.loads((folder / pretrained.MODEL).read_text())
  assert meta['algorithm'] == 'bfs' and meta['test_score'] == test['score']


def test_the_stored_parameters_are_the_checkpoints_best(stored):
  from dear_jax import checkpoints  # pylint: disable=g-import-not-at-top
  done, folder = stored
  best = pretrained._flatten(checkpoints.load_best_params(str(done.workdir)))
  _, _, params = pretrained.load(str(folder))
  flat = pretrained._flatten(params)
  assert sorted(flat) == sorted(best)
  for k, v in best.items():
    assert np.array_equal(flat[k], v), k


def test_other_sizes_draw_the_requested_graphs(stored, capsys, tmp_path):
  _, folder = stored
  out = tmp_path / 'r.json'
  assert pretrained.main([f'--model={folder}', '--n=7', '--graphs=3',
                          f'--json={out}']) == 0
  line = capsys.readouterr().out
  r = json.loads(out.read_text())
  assert (r['nodes'], r['graphs'], len(r['graph_scores'])) == (7, 3, 3)
  assert 'n=7, 3 graphs' in line
  assert r['score'] == pytest.approx(np.mean(r['graph_scores']), abs=0.35)


@pytest.mark.parametrize('args, message', [
    (['--n=0'], '--n must be a positive integer'),
    (['--split=val', '--n=8'], '--n, --graphs and --max_seconds apply to '
     '--split=test'),
])
def test_bad_flags_are_one_line_exit_2(stored, capsys, args, message):
  _, folder = stored
  assert pretrained.main([f'--model={folder}'] + args) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and message in err and err.count('\n') == 1


def test_a_damaged_or_missing_model_is_one_line(stored, tmp_path, capsys):
  _, folder = stored
  copy = tmp_path / 'copy'
  shutil.copytree(folder, copy)
  with open(copy / pretrained.PARAMS, 'r+b') as f:
    f.seek(100)
    f.write(b'\x00\x01\x02')
  assert pretrained.main([f'--model={copy}']) == 2
  assert 'does not match the checksum' in capsys.readouterr().err
  os.remove(copy / pretrained.CONFIG)
  assert pretrained.main([f'--model={copy}']) == 2
  err = capsys.readouterr().err
  assert 'missing config.json' in err and err.count('\n') == 1


def test_storing_over_a_stored_model_is_refused(stored, capsys):
  done, folder = stored
  before = (folder / pretrained.PARAMS).read_bytes()
  assert pretrained.main([f'--store={done.workdir}', f'--model={folder}',
                          '--name=dear']) == 2
  assert 'already holds a stored model' in capsys.readouterr().err
  assert (folder / pretrained.PARAMS).read_bytes() == before


# --- the models committed under pretrained/ ----------------------------------

ROOT = os.path.join(os.path.dirname(__file__), '..', 'pretrained')
STUDY = os.path.join(os.path.dirname(__file__), '..', 'results', 'dear10',
                     'runs')


def _committed():
  return [d for d, _, files in sorted(os.walk(ROOT)) if pretrained.MODEL in files]


def test_committed_models_are_their_study_runs_best_parameters():
  folders = _committed()
  assert folders, 'no stored model under pretrained/'
  total = 0
  for folder in folders:
    meta = json.loads(open(os.path.join(folder, pretrained.MODEL)).read())
    run = os.path.join(STUDY, meta['algorithm'], meta['name'],
                       f's{meta["seed"]}', 'results.json')
    results = json.loads(open(run).read())
    for key in ('val_score', 'test_score', 'best_step', 'train_steps'):
      assert meta[key] == results[key], (folder, key)
    assert json.loads(open(os.path.join(folder, pretrained.CONFIG)).read()) \
        == results['config']
    assert meta['num_params'] == results['num_params']
    _, _, params = pretrained.load(folder)  # checks the checksum
    assert sum(v.size for v in pretrained._flatten(params).values()) == \
        results['num_params']
    total += os.path.getsize(os.path.join(folder, pretrained.PARAMS))
  assert total <= 30e6


def test_the_committed_index_is_generated_from_the_models():
  with open(os.path.join(ROOT, 'README.md')) as f:
    assert f.read() == pretrained.index_text(ROOT), (
        'pretrained/README.md is out of date: run '
        '`python -m dear_jax.pretrained --index=pretrained`')


def test_a_run_with_test_settings_is_tested_with_them(tmp_path):
  """A run tested with a test-only setting (adaptive temperature of its
  softmax aggregation) is scored with it here too; validation without it."""
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  config = tiny_config(tmp_path / 'data', kind='dear', steps=2)
  config.model.processor = 'gmpnn'
  config.model.hidden = 8
  config.model.aggregation = 'softmax'
  config.model.adaptive_temperature = True
  config.dear.diagnostics = False
  workdir = tmp_path / 'w'
  results = train.train_and_evaluate(config, str(workdir), 'bfs',
                                     progress=False)
  test = pretrained.evaluate(str(workdir), 'test')
  assert test['solver_iterations'] == results['solver_iterations']
  assert test['graph_scores'] == results['test_graph_scores']
  assert pretrained.evaluate(str(workdir), 'val')['score'] == \
      results['val_score']


def test_a_compare_run_folder_is_named_by_its_model(stored, tmp_path):
  """runs/ALG/MODEL/sS: the compared model's name (results.json says only
  the kind, 'dear' for dear_paper too)."""
  done, _ = stored
  folder = tmp_path / 'runs' / 'bfs' / 'dear_paper' / 's0'
  shutil.copytree(done.workdir, folder)
  meta, _, _ = pretrained.load(str(folder))
  assert (meta['name'], meta['algorithm'], meta['seed']) == ('dear_paper',
                                                            'bfs', 0)
  other = tmp_path / 'elsewhere'
  shutil.copytree(done.workdir, other)
  assert pretrained.load(str(other))[0]['name'] == 'dear'


def test_the_graphs_interval_is_scipys_t_interval_cut_to_a_scores_range():
  """The printed interval over the test graphs is scipy's t interval, cut
  to [0, 1]; equal scores say so instead of an interval of width 0."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  scores = [0.5, 0.75, 0.25, 1.0]
  low, high = stats.t.interval(0.95, len(scores) - 1, loc=np.mean(scores),
                               scale=stats.sem(scores))
  assert pretrained._spread(scores) == (  # pylint: disable=protected-access
      f' (graphs: mean {np.mean(scores):.4f}, 95 % t interval '
      f'[{max(low, 0):.4f}, {min(high, 1):.4f}])')
  assert high > 1  # the cut applies here
  assert pretrained._spread([1.0, 1.0]) == ' (every graph scored 1.0000)'  # pylint: disable=protected-access
  assert pretrained._spread([0.3]) == ''  # pylint: disable=protected-access
