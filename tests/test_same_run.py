"""baselines.same_run: a repeated run against the committed one."""

import copy
import json

from baselines import same_run


def _results():
  return dict(algorithm='bfs', model='dear', seed=0, train_steps=10,
              test_score=0.5, val_score=0.6, test_nodes=64, test_graphs=2,
              train_seconds=12.5, train_steps_per_second=0.8,
              eval_seconds_per_graph=0.1, eval_cpu_seconds_per_graph=0.2,
              eval_load_average=1.9, algo_steps_mean=2.0, num_params=7,
              config={'train': {'seed': 0}}, hardware='cpu A', code='abc',
              timings={'compile_seconds': 3.0},
              test_graph_scores=[0.25, 0.75],
              extra_tests={'128': dict(score=0.4, graph_scores=[0.3, 0.5],
                                       eval_seconds_per_graph=1.0)})


def test_times_machine_and_commit_are_not_compared():
  a, b = _results(), _results()
  b.update(train_seconds=99.0, train_steps_per_second=0.1,
           eval_seconds_per_graph=5.0, eval_cpu_seconds_per_graph=9.0,
           eval_load_average=0.1, hardware='cpu B', code='def+modified',
           timings={'compile_seconds': 1.0})
  b['extra_tests']['128']['eval_seconds_per_graph'] = 3.0
  assert same_run.differences(a, b) == []


def test_every_computed_value_is_compared_at_any_depth():
  a = _results()
  b = copy.deepcopy(a)
  b['extra_tests']['128']['graph_scores'][1] = 0.5000001
  b['config']['train']['seed'] = 1
  del b['test_graph_scores']
  b['best_step'] = 100
  assert same_run.differences(a, b) == [
      'best_step (in one only)', 'config/train/seed',
      'extra_tests/128/graph_scores', 'test_graph_scores (in one only)']


def test_the_command_line(tmp_path, capsys):
  a, b = tmp_path / 'a', tmp_path / 'b'
  for folder, results in ((a, _results()), (b, _results())):
    folder.mkdir()
    (folder / 'results.json').write_text(json.dumps(results))
  assert same_run.main([str(a), str(b / 'results.json')]) == 0
  assert 'the same results' in capsys.readouterr().out
  changed = _results()
  changed['test_score'] = 0.75
  (b / 'results.json').write_text(json.dumps(changed))
  assert same_run.main([str(a), str(b)]) == 1
  assert capsys.readouterr().out.startswith('1 results differ: test_score')
  for args in ([str(a)], [str(a), '--x'], [str(a), str(tmp_path / 'none')]):
    assert same_run.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1, err
  (b / 'results.json').write_text('{"algorithm": ')
  assert same_run.main([str(a), str(b)]) == 2
  assert 'cannot be read' in capsys.readouterr().err
