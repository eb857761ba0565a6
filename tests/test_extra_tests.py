"""Tests at further sizes (data.extra_test_lengths): their splits, their
batch sizes, and what a run writes for them."""

import json

import numpy as np
import pytest

from dear_jax import clrs_lib
from dear_jax import splits
from dear_jax import train
from tests.conftest import tiny_config, tiny_data_config

pytestmark = pytest.mark.usefixtures('fast_compile')

# Inputs and outputs that run.py's preprocessing leaves as sampled.
UNPROCESSED = {'bfs': ('adj', 's', 'pi'), 'binary_search': ('key', 'target'),
               'insertion_sort': ('key',)}


@pytest.mark.parametrize('algorithm', sorted(UNPROCESSED))
def test_extra_test_is_clrs_sampled_like_the_official_test(algorithm,
                                                           tmp_path):
  """dm-clrs's own sampler, called with the official test seed at the new
  size and count, gives the same graphs (sorting and search included)."""
  cfg = tiny_data_config(str(tmp_path), extra_test_num_samples=3)
  got = splits.load_extra_test(algorithm, 9, cfg)
  clrs = clrs_lib.clrs()
  sampler, _ = clrs.build_sampler(algorithm, num_samples=3, length=9,
                                  seed=clrs.CLRS30['test']['seed'])
  want = sampler.next()
  arrays = {dp.name: dp.data for dp in
            list(want.features.inputs) + list(want.outputs)}
  assert got.num_samples == 3
  np.testing.assert_array_equal(got.lengths, want.features.lengths)
  for name in UNPROCESSED[algorithm]:
    part = 'inputs' if name in got.batches[0]['inputs'] else 'outputs'
    stacked = np.concatenate([b[part][name] for b in got.batches])[:3]
    np.testing.assert_array_equal(stacked, arrays[name].astype(stacked.dtype))
  # Cached: a second load generates nothing.
  real = splits._generate  # pylint: disable=protected-access
  try:
    splits._generate = None  # pylint: disable=protected-access
    again = splits.load_extra_test(algorithm, 9, cfg)
  finally:
    splits._generate = real  # pylint: disable=protected-access
  assert again.key == got.key


def test_extra_test_at_the_official_size_and_count_is_the_official_test(
    tmp_path):
  cfg = tiny_data_config(str(tmp_path))  # test_length 5, 4 graphs
  official = splits.load_split('bfs', 'test', cfg)
  cfg = tiny_data_config(str(tmp_path), extra_test_num_samples=4)
  assert splits.load_extra_test('bfs', 5, cfg).key == official.key
  assert splits.load_extra_test('bfs', 6, cfg).key != official.key


def test_eval_batches_hold_no_more_node_pairs_than_the_official_tests():
  cfg = tiny_data_config('/unused', eval_batch_size=32, test_length=64)
  got = {n: splits.eval_batch_size(n, cfg) for n in (16, 64, 100, 128, 256,
                                                     512)}
  assert got == {16: 32, 64: 32, 100: 13, 128: 8, 256: 2, 512: 1}
  for n, b in got.items():
    assert b * n * n <= 32 * 64 * 64 or b == 1


def test_run_writes_each_size_scored_as_evaluate_scores_it(tmp_path):
  """results.json 'extra_tests': per size the score of the best parameters
  on that split, its graphs, batch size and DEAR's iterations."""
  config = tiny_config(tmp_path / 'data', kind='dear', steps=2)
  config.model.processor = 'gmpnn'
  config.model.hidden = 8
  config.dear.diagnostics = False
  config.data.extra_test_lengths = (6, 12)
  config.data.extra_test_num_samples = 3
  results = train.train_and_evaluate(config, str(tmp_path / 'w'), 'bfs',
                                     progress=False)
  stored = json.loads((tmp_path / 'w' / 'results.json').read_text())
  assert stored['extra_tests'] == json.loads(json.dumps(
      results['extra_tests']))
  assert set(results['extra_tests']) == {'6', '12'}
  params = train.load_best_params(str(tmp_path / 'w'))
  spec = clrs_lib.processed_spec('bfs')
  dcfg = train.data_config(config)
  for n in (6, 12):
    got = results['extra_tests'][str(n)]
    evalset = splits.load_extra_test('bfs', n, dcfg, keep_hints=False)
    model = train.build_model(config, spec, evalset.batches[0])
    want = train.evaluate(model, model.predict, params, evalset)
    assert got['score'] == pytest.approx(want['score'])
    assert got['graphs'] == 3 and got['nodes'] == n
    assert got['batch_size'] == splits.eval_batch_size(n, dcfg)
    assert got['solver_iterations'] == want['iterations']
    assert got['eval_seconds_per_graph'] > 0
    assert got['algo_steps_mean'] == pytest.approx(
        np.mean(evalset.lengths) - 1)


def _run(model, seed, score, extra=None, **keys):
  results = dict(test_score=score, test_nodes=64, test_graphs=32,
                 eval_seconds_per_graph=0.002, algo_steps_mean=3.0,
                 hardware='h', **keys)
  if extra is not None:
    results['extra_tests'] = extra
  return dict(algorithm='bfs', model=model, seed=seed, results=results)


def test_reports_by_size(tmp_path):
  """results_by_size.csv rows, results.md's table and the plot, from the
  runs' extra_tests (runs without them add nothing)."""
  import csv  # pylint: disable=g-import-not-at-top
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  from baselines import plots, report  # pylint: disable=g-import-not-at-top
  extra = lambda score, it: {'128': dict(
      nodes=128, graphs=100, batch_size=8, score=score,
      eval_seconds_per_graph=0.008, algo_steps_mean=4.0, **it)}
  runs = [_run('dear', 0, 0.9, extra(0.6, dict(solver_iters_mean=12.0)),
               solver_iters_mean=10.0),
          _run('dear', 1, 0.8, extra(0.4, dict(solver_iters_mean=14.0)),
               solver_iters_mean=20.0),
          _run('nar_lt', 0, 0.7, extra(0.5, dict(nar_steps_mean=2.0)),
               nar_steps_mean=3.0),
          _run('nar', 0, 0.95)]
  rows = report.size_rows(runs)
  assert [(r['model'], r['seed'], r['nodes']) for r in rows] == [
      ('dear', 0, 64), ('dear', 0, 128), ('dear', 1, 64), ('dear', 1, 128),
      ('nar_lt', 0, 64), ('nar_lt', 0, 128)]
  assert rows[1]['test_score'] == 0.6 and rows[1]['graphs'] == 100
  assert rows[5]['nar_steps_mean'] == 2.0 and rows[4]['nar_steps_mean'] == 3.0
  path = tmp_path / 'by_size.csv'
  report.write_csv(str(path), rows, report.SIZE_COLUMNS)
  with open(path) as f:
    back = list(csv.DictReader(f))
  assert len(back) == 6 and float(back[3]['solver_iters_mean']) == 14.0
  lines = report._size_lines(rows, ['dear', 'nar_lt'])  # pylint: disable=protected-access
  assert ('| bfs | `dear` | 85.0 / 2.0 / 15.0 (3.0), n=2 | '
          '50.0 / 8.0 / 13.0 (4.0), n=2 |') in lines
  assert '| bfs | `nar_lt` | 70.0 / 2.0 / 3.0 (3.0) | 50.0 / 8.0 / 2.0 (4.0) |' \
      in lines
  assert report._size_lines(report.size_rows(runs[3:]), ['nar']) == []  # pylint: disable=protected-access
  png = plots.by_size(str(tmp_path / 'by_size.png'), rows)
  assert matplotlib.image.imread(png).shape[0] > 100
