"""dear_jax/profiling.py and baselines/memory.py (compiled train-step
memory), benchmarks/run.py (a tiny end-to-end run of its quick mode, and its
goal verdicts) and benchmarks/seed_stack.py (stacked seeds compute each
seed's own steps)."""

import json
import os
import statistics
import types

import jax
import numpy as np
import pytest

from baselines import memory
from baselines.plan import Plan
from conftest import tiny_config
from dear_jax import batches as batch_lib
from dear_jax import checkpoints
from dear_jax import clrs_lib
from dear_jax import factory
from dear_jax import input_pipeline
from dear_jax import profiling
from dear_jax import train

MB = 2**20


# Compiled memory and timings here only need to be consistent within a test;
# XLA's optimisations double compile times on CPU.
pytestmark = pytest.mark.usefixtures('fast_compile')


@pytest.fixture(scope='module')
def bench():
  """benchmarks.run, imported without keeping the CUDA_VISIBLE_DEVICES it sets."""
  with pytest.MonkeyPatch.context() as mp:
    name = 'CUDA_VISIBLE_DEVICES'
    if name in os.environ:
      mp.setenv(name, os.environ[name])
    else:
      mp.delenv(name, raising=False)
    from benchmarks import run as bench_run  # pylint: disable=g-import-not-at-top
  return bench_run


# --- dear_jax/profiling.py, baselines/memory.py -------------------------------
def test_hardware_line_names_the_cpu_generation(tmp_path, monkeypatch):
  # Two CPUs that share a model name (here "AMD EPYC") train differently; the
  # line must tell them apart. Only the first processor's block is read.
  info = tmp_path / 'cpuinfo'
  info.write_text('processor\t: 0\nvendor_id\t: AuthenticAMD\n'
                  'cpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n'
                  '\nprocessor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\n'
                  'model name\t: other\n')
  monkeypatch.setattr(profiling, 'CPUINFO', str(info))
  line = profiling.hardware_line()
  assert ', CPU AMD EPYC (family 26, model 2), ' in line
  assert 'other' not in line and 'family 25' not in line
  monkeypatch.setattr(profiling, 'CPUINFO', str(tmp_path / 'absent'))
  assert '(family' not in profiling.hardware_line()


def test_code_version_is_the_commit_and_flags_changed_code(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  repo = tmp_path / 'checkout'
  (repo / 'dear_jax').mkdir(parents=True)
  (repo / 'results').mkdir()
  (repo / 'dear_jax' / 'x.py').write_text('a = 1\n')
  (repo / 'results' / 'r.md').write_text('old\n')
  git = ['git', '-C', str(repo), '-c', 'user.name=t', '-c', 'user.email=t@t']
  subprocess.run(git + ['init', '-q', '-b', 'main'], check=True)
  subprocess.run(git + ['add', '.'], check=True)
  subprocess.run(git + ['commit', '-qm', 'c'], check=True)
  commit = (repo / '.git' / 'refs' / 'heads' / 'main').read_text().strip()
  assert len(commit) == 40 and profiling.code_version(str(repo)) == commit
  (repo / 'results' / 'r.md').write_text('a result written by a sweep\n')
  (repo / 'dear_jax' / 'new.py').write_text('untracked\n')
  assert profiling.code_version(str(repo)) == commit
  (repo / 'dear_jax' / 'x.py').write_text('a = 2\n')
  assert profiling.code_version(str(repo)) == commit + '+modified'
  # a folder inside another repository, and a folder in none
  assert profiling.code_version(str(repo / 'dear_jax')) is None
  assert profiling.code_version(str(tmp_path)) is None


def test_compiled_mb_sums_parts_and_counts_aliased_once():
  stats = types.SimpleNamespace(
      temp_size_in_bytes=3 * MB, argument_size_in_bytes=5 * MB,
      output_size_in_bytes=4 * MB, alias_size_in_bytes=2 * MB)
  compiled = types.SimpleNamespace(memory_analysis=lambda: stats)
  assert profiling.compiled_mb(compiled) == dict(temp=3.0, argument=5.0,
                                                 output=4.0, total=10.0)
  none = types.SimpleNamespace(memory_analysis=lambda: None)
  assert profiling.compiled_mb(none) is None


def _nbytes(tree) -> int:
  return sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(tree))


def test_train_step_donates_parameters_and_optimiser_state(cache_dir):
  """As dm-clrs's step, training's step reuses the buffers of the parameters
  and optimiser state (XLA aliases them to its outputs), so the memory column
  compares like with like; without `donate` nothing is aliased."""
  config = tiny_config(cache_dir, 'nar')
  stream = input_pipeline.TrainStream('bfs', train.data_config(config), seed=0)
  batch, key = next(stream), jax.random.PRNGKey(1)
  model, step, params, opt_state = train.setup(
      config, clrs_lib.processed_spec('bfs'), batch, jax.random.PRNGKey(0))
  alias = step.lower(params, opt_state, batch, key).compile(
      ).memory_analysis().alias_size_in_bytes
  assert alias >= _nbytes((params, opt_state)) > 0
  plain = train.make_train_step(model, train.make_optimizer(config))
  assert plain.lower(params, opt_state, batch, key).compile(
      ).memory_analysis().alias_size_in_bytes == 0
  step(params, opt_state, batch, key)
  assert all(x.is_deleted() for x in jax.tree.leaves((params, opt_state))
             if isinstance(x, jax.Array))


def test_train_step_mb_arguments_are_the_step_inputs(cache_dir):
  """The step's argument memory is exactly its inputs (parameters, optimiser
  state, batch, key), counted independently from the arrays."""
  config = tiny_config(cache_dir, 'nar')
  stream = input_pipeline.TrainStream('bfs', train.data_config(config), seed=0)
  batch = next(stream)
  mb = train.train_step_mb(config, clrs_lib.processed_spec('bfs'), batch,
                               batch)
  _, _, params, opt_state = train.setup(config, clrs_lib.processed_spec('bfs'),
                                        batch, jax.random.PRNGKey(0))
  inputs = _nbytes((params, opt_state, batch))
  key = _nbytes(jax.random.PRNGKey(1))  # pruned by jit when unused (BFS)
  assert inputs <= round(mb['argument'] * MB) <= inputs + key
  assert mb['temp'] > 0
  # New parameters and optimiser state come out (plus loss and aux).
  assert mb['output'] >= _nbytes((params, opt_state)) / MB
  assert mb['total'] <= mb['temp'] + mb['argument'] + mb['output']


def _plan(tmp_path, cache_dir, models=('nar',)):
  config = tiny_config(cache_dir, 'nar')
  config.data.train_sizes = (4, 6)
  return Plan(out=str(tmp_path), preset='smoke', algorithms=('bfs',),
              models=models, seeds=(0,), train_steps=1, eval_every=1,
              configs={'nar': config},
              official_data=train.data_config(config))


def test_train_step_mb_uses_largest_training_size(tmp_path, cache_dir,
                                                  monkeypatch):
  seen = []

  def fake_step_mb(config, spec, init_batch, batch):
    seen.append((batch_lib.num_nodes(batch), len(batch['lengths']),
                 bool(batch['hints'])))
    return dict(total=12.5)

  monkeypatch.setattr(train, 'train_step_mb', fake_step_mb)
  assert memory.train_step_mb(_plan(tmp_path, cache_dir), 'bfs', 'nar') == 12.5
  assert seen == [(6, 2, True)]  # n = max(4, 6), batch 2, hints (nar)


def test_cached_train_step_mb_writes_once_and_survives_errors(
    tmp_path, cache_dir, monkeypatch, capsys):
  plan = _plan(tmp_path, cache_dir)
  calls = []

  def fake(plan, algorithm, model):
    calls.append(model)
    return 7.25

  monkeypatch.setattr(memory, 'train_step_mb', fake)
  assert memory.cached_train_step_mb(plan, 'bfs', 'nar') == 7.25
  path = tmp_path / 'runs' / 'bfs' / 'nar' / 'memory.json'
  assert json.loads(path.read_text())['train_step_memory_mb'] == 7.25
  assert memory.cached_train_step_mb(plan, 'bfs', 'nar') == 7.25
  assert calls == ['nar']  # the second call read the file

  def broken(plan, algorithm, model):
    raise RuntimeError('no memory analysis here')

  monkeypatch.setattr(memory, 'train_step_mb', broken)
  assert memory.cached_train_step_mb(plan, 'bfs', 'dear') is None
  assert 'not measured' in capsys.readouterr().out
  assert not (tmp_path / 'runs' / 'bfs' / 'dear').exists()


# --- benchmarks/run.py ----------------------------------------------------------

TINY_SETTINGS = dict(sizes=(4, 5), algorithms=('bfs',), batch=2,
                     repeats=1, memory_n=5, memory_batch=2,
                     memory_algorithms=('bfs',),
                     train_algorithm='bfs', train_n=4, train_batch=2,
                     train_batches=2, train_passes=1)


def test_benchmarks_tiny_quick_run(bench, tmp_path, cache_dir, monkeypatch,
                                   capsys):
  """benchmarks.run's quick mode with every size shrunk (hidden 8, n <= 5,
  batches of 2): every section runs and the tables hold what was measured."""
  from baselines import clrs_official  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(bench.SETTINGS, 'quick', TINY_SETTINGS)
  real_configs = bench._configs  # pylint: disable=protected-access

  def tiny_configs():
    dear, nar = real_configs()
    for c in (dear, nar):
      c.model.hidden = 8
    dear.dear.max_iter_eval = 4
    return dear, nar

  monkeypatch.setattr(bench, '_configs', tiny_configs)
  real_build = clrs_official.build_model
  monkeypatch.setattr(clrs_official, 'build_model',
                      lambda *a, **k: real_build(*a, hidden_dim=8, **k))
  out = tmp_path / 'out'
  assert bench.main(['--quick', f'--out={out}', f'--cache_dir={cache_dir}']) == 0
  res = json.loads((out / 'results.json').read_text())
  assert res['mode'] == 'quick' and res['settings'] == json.loads(
      json.dumps(TINY_SETTINGS))
  infer = res['inference']
  assert [(r['algorithm'], r['n']) for r in infer] == [
      ('bfs', 4), ('bfs', 5)]
  for r in infer:
    assert r['nar_seconds_per_graph'] > 0 and r['dear_seconds_per_graph'] > 0
    assert r['ratio_nar_over_dear'] == pytest.approx(
        r['nar_seconds_per_graph'] / r['dear_seconds_per_graph'])
    assert 1 <= r['dear_iterations_mean'] <= 4  # the evaluation cap
    assert r['nar_steps_run'] >= 1
  (mem,) = res['memory']
  assert mem['n'] == 5 and mem['batch'] == 2
  for name in ('nar', 'dear_jfb', 'dear_ift'):
    assert mem[f'{name}_mb'] > 0
  assert mem['ratio_dear_jfb_over_nar'] == pytest.approx(
      mem['dear_jfb_mb'] / mem['nar_mb'])
  trn = res['training']
  assert trn['timed_steps'] == 2 and trn['distinct_batches'] == 2
  assert trn['ratio_flax_over_official'] == pytest.approx(
      trn['flax_nar_steps_per_second'] / trn['official_steps_per_second'])
  assert [g['status'] for g in res['goals']][0].startswith('not measured')
  md = (out / 'results.md').read_text()
  assert md == bench.markdown(res)
  assert f'| bfs | 5 | {infer[1]["true_steps_mean"]:.1f} |' in md
  assert 'written:' in capsys.readouterr().out


def test_benchmarks_time_trained_runs(bench, tmp_path, cache_dir, monkeypatch,
                                      capsys, finished_run):
  """--trained: the models are the finished runs' (their configs, their best
  parameters); DEAR's iterations are those of the trained map on the same
  batch; a folder without a run of each kind is one line, exit 2."""
  monkeypatch.setitem(bench.SETTINGS, 'quick', TINY_SETTINGS)
  runs = tmp_path / 'runs'
  runs.mkdir()
  for kind in ('dear', 'nar'):
    (runs / f'bfs_{kind}').symlink_to(finished_run(kind).workdir)
  out = tmp_path / 'out'
  assert bench.main(['--quick', f'--out={out}', f'--cache_dir={cache_dir}',
                     f'--trained={runs}', '--sizes=5']) == 0
  res = json.loads((out / 'results.json').read_text())
  assert res['memory'] == [] and res['training'] == {}
  (row,) = res['inference']
  assert (row['dear_run'], row['nar_run']) == ('bfs_dear', 'bfs_nar')
  # The same trained model, solved here without the benchmark's code.
  done = json.loads((runs / 'bfs_dear' / 'results.json').read_text())
  config = tiny_config(cache_dir, 'dear')
  assert done['config']['model']['hidden'] == config.model.hidden
  batch, _ = bench._eval_batch('bfs', 5, 2, cache_dir)  # pylint: disable=protected-access
  batch = dict(batch, hints={})
  model = factory.build_model(config, clrs_lib.processed_spec('bfs'), batch)
  _, aux = model.predict(checkpoints.load_best_params(str(runs / 'bfs_dear')), batch)
  assert row['dear_iterations_mean'] == pytest.approx(
      float(np.mean(aux['solver'].iterations)))
  assert 'Trained parameters' in (out / 'results.md').read_text()
  capsys.readouterr()

  (runs / 'bfs_nar').unlink()
  assert bench.main(['--quick', f'--out={out}', f'--cache_dir={cache_dir}',
                     f'--trained={runs}']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'no finished nar run of bfs' in err[0]

  # compare's layout (runs/ALG/MODEL/sSEED): found at depth, named by path.
  nested = tmp_path / 'nested'
  for model, kind in (('dear', 'dear'), ('nar_nohint', 'nar')):
    (nested / 'bfs' / model).mkdir(parents=True)
    (nested / 'bfs' / model / 's0').symlink_to(finished_run(kind).workdir)
  # The official model's runs keep checkpoints too, of another kind: skipped.
  official = nested / 'bfs' / 'clrs_official' / 's0'
  (official / 'checkpoints').mkdir(parents=True)
  (official / 'results.json').write_text(json.dumps(dict(
      algorithm='bfs', seed=0, model='clrs_official',
      config=dict(hidden_dim=128))))
  assert bench.main(['--quick', f'--out={out}', f'--cache_dir={cache_dir}',
                     f'--trained={nested}', '--sizes=5', '--batch=3',
                     '--repeats=2']) == 0
  res = json.loads((out / 'results.json').read_text())
  assert (res['settings']['batch'], res['settings']['repeats']) == (3, 2)
  (row,) = res['inference']
  assert row['batch'] == 3
  assert (row['dear_run'], row['nar_run']) == ('bfs/dear/s0',
                                               'bfs/nar_nohint/s0')


def _infer_row(algorithm, n, ratio):
  return dict(algorithm=algorithm, n=n, ratio_nar_over_dear=ratio)


@pytest.mark.parametrize('ratios, status', [
    ((2.0, 3.5), 'met'), ((1.99, 9.0), 'not met')])
def test_speed_goal_needs_every_growing_algorithm_at_n64(bench, ratios,
                                                         status):
  infer = [_infer_row('insertion_sort', 64, ratios[0]),
           _infer_row('mst_prim', 64, ratios[1]),
           _infer_row('bfs', 64, 0.5),            # not a growing algorithm
           _infer_row('insertion_sort', 16, 0.1)]  # not n=64
  speed = bench.goals(infer, [])[0]
  assert speed['status'] == status
  assert speed['worst'] == min(ratios)


@pytest.mark.parametrize('ratio, status', [(1 / 3, 'met'), (0.34, 'not met')])
def test_memory_goal_is_one_third(bench, ratio, status):
  mem = [dict(algorithm='bfs', n=64, ratio_dear_jfb_over_nar=0.1,
              ratio_dear_ift_over_nar=ratio)]
  by_goal = {g['goal'].split(')')[0]: g['status']
             for g in bench.goals([], mem)[1:]}
  assert by_goal == {'DEAR (jfb': 'met', 'DEAR (ift': status,
                     'DEAR (phantom': 'not measured'}


# --- benchmarks/seed_stack.py ---------------------------------------------------

def test_seed_stack_steps_equal_single_seed_steps(cache_dir):
  """What makes the timing meaningful: the stack of two seeds computes each
  seed's own training (losses of single-seed stacks, same batches)."""
  from benchmarks import seed_stack  # pylint: disable=g-import-not-at-top
  config = tiny_config(cache_dir, 'nar')
  bench = seed_stack.Stacks(config, 'bfs',
                            seed_stack.same_shape_batches('bfs', config, 2))
  both = bench.run(bench.stack([0, 1]), [0, 1], 0, 2)
  alone = np.concatenate([bench.run(bench.stack([s]), [s], 0, 2)
                          for s in (0, 1)], axis=1)
  assert both.shape == alone.shape == (2, 2)
  np.testing.assert_allclose(both, alone, rtol=1e-5)
  assert not np.allclose(alone[:, 0], alone[:, 1])  # two different seeds


def test_seed_stack_tiny_run_writes_consistent_results(tmp_path, monkeypatch):
  from baselines import clrs_official  # pylint: disable=g-import-not-at-top
  from benchmarks import seed_stack  # pylint: disable=g-import-not-at-top
  real_build = clrs_official.build_model
  monkeypatch.setattr(clrs_official, 'build_model',
                      lambda *a, **k: real_build(*a, hidden_dim=8, **k))
  # main() may set it (for BaselineModel); restored after the test.
  monkeypatch.setenv('CUDA_VISIBLE_DEVICES',
                     os.environ.get('CUDA_VISIBLE_DEVICES', ''))
  argv = ['--stacks=1,2', '--steps=2', '--rounds=2', '--warmup=1',
          '--hidden=8', '--n=5', '--batch=2']
  assert seed_stack.main(argv + [f'--out={tmp_path}']) == 0
  res = json.loads((tmp_path / 'seed_stack_nar_bfs.json').read_text())
  assert res['command'] == 'python -m benchmarks.seed_stack ' + ' '.join(argv)
  assert res['hidden'] == 8 and len(res['load_average_1min']) == 3
  one, two = res['rows']
  assert (one['stack'], two['stack']) == (1, 2)
  for r in res['rows']:
    assert len(r['seconds_per_step']) == 2
    assert r['steps_per_second'] == pytest.approx(
        1 / statistics.median(r['seconds_per_step']))
    assert r['seed_steps_per_second'] == pytest.approx(
        r['stack'] * r['steps_per_second'])
    assert r['speedup_over_sequential'] == pytest.approx(
        r['seed_steps_per_second'] / one['steps_per_second'])
    assert r['seed_steps_ratio_flax_over_official'] == pytest.approx(
        r['seed_steps_per_second'] / res['official_steps_per_second'])
    assert r['compiled_mb']['total'] > 0
  # Two seeds' state is twice one's: the arguments grow with K.
  assert two['compiled_mb']['argument'] > 1.5 * one['compiled_mb']['argument']
  # Seed 0 trained the same in both stacks.
  assert two['warmup_losses'][0][0] == pytest.approx(one['warmup_losses'][0][0],
                                                     rel=1e-5)
  md = (tmp_path / 'seed_stack_nar_bfs.md').read_text()
  assert md == seed_stack.markdown(res) and res['hardware'] in md


@pytest.mark.parametrize('flag', ['--stacks=2,4', '--stacks=1,x', '--steps=0',
                                  '--algorithm=nope'])
def test_seed_stack_bad_input_is_one_line_exit_2(tmp_path, capsys, flag):
  from benchmarks import seed_stack  # pylint: disable=g-import-not-at-top
  assert seed_stack.main([flag, f'--out={tmp_path}']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: '), err
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize('flag, message', [
    ('--sizes=16,x', '--sizes must be comma-separated integers'),
    ('--batch=0', '--batch must be at least 1'),
    ('--repeats=0', '--repeats must be at least 1'),
    ('--trained=no/such/folder', 'is not a folder'),
])
def test_benchmarks_bad_input_is_one_line_exit_2(bench, tmp_path, capsys,
                                                 flag, message):
  assert bench.main([flag, f'--out={tmp_path}']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and message in err[0], err
  assert not list(tmp_path.iterdir())  # nothing written


# --- benchmarks/run_cost.py -----------------------------------------------------

def test_run_cost_tiny_run_times_both_checks_and_they_agree(tmp_path, cache_dir):
  """A tiny run (hidden 8, n = 5, 1 training step): every time and ratio is
  there and consistent, and the old and new checks give the same
  score_by_tol and iters_by_tol (no timing asserted)."""
  from benchmarks import run_cost  # pylint: disable=g-import-not-at-top
  argv = ['--algorithms=bfs', '--steps=1', '--hidden=8', '--train_n=5',
          '--batch_size=2', '--test_n=5', '--test_graphs=6', '--eval_batch=8',
          '--check_max_iter=30', f'--cache_dir={cache_dir}']
  assert run_cost.main(argv + [f'--out={tmp_path}']) == 0
  res = json.loads((tmp_path / 'run_cost.json').read_text())
  (row,) = res['rows']
  assert row['algorithm'] == 'bfs' and row['test_graphs'] == 6
  assert row['test_nodes'] == 5 and row['eval_batch'] == 8
  s, q = row['seconds'], row['ratios']
  assert set(s) == {f'{k}_{r}' for k in ('test_old', 'test', 'old', 'new')
                    for r in ('cold', 'warm')}
  assert all(v > 0 for v in s.values())
  for r in ('cold', 'warm'):
    assert q[f'new_over_test_{r}'] == pytest.approx(s[f'new_{r}'] / s[f'test_{r}'])
    assert q[f'old_over_test_old_{r}'] == pytest.approx(s[f'old_{r}'] / s[f'test_old_{r}'])
    assert q[f'old_over_new_{r}'] == pytest.approx(s[f'old_{r}'] / s[f'new_{r}'])
  a = row['agree']
  assert a['test_score_equal'] and a['score_by_tol_equal'] and a['iters_by_tol_equal']
  assert list(a['score_by_tol']) == ['0.001', '0.0001', '1e-05']
  assert a['reference_new']['max_iter'] == a['reference_old']['max_iter'] == 30
  np.testing.assert_allclose(a['spectral_radius_mean_new'], a['spectral_radius_mean_old'],
                             rtol=0.1)
  md = (tmp_path / 'run_cost.md').read_text()
  assert md == run_cost.markdown(res) and '| bfs | 6 |' in md


@pytest.mark.parametrize('flag', ['--algorithms=nope', '--steps=-1', '--test_graphs=0',
                                  '--trained=no/such/folder'])
def test_run_cost_bad_input_is_one_line_exit_2(tmp_path, capsys, flag):
  from benchmarks import run_cost  # pylint: disable=g-import-not-at-top
  assert run_cost.main([flag, f'--out={tmp_path}']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: '), err
  assert not os.listdir(tmp_path)


def test_train_speed_medians_ratio_and_table(tmp_path, monkeypatch):
  """benchmarks.train_speed on scripted runs: medians over rounds per mode,
  the ratio of the medians, a loss mismatch flagged in the table."""
  from benchmarks import train_speed  # pylint: disable=g-import-not-at-top
  rates = {'per_update': iter([2.0, 4.0, 3.0]),
           'fetched': iter([5.0, 6.0, 1.0])}
  modes = []

  def fake_run(model, algorithm, steps, mode, cache_dir):
    modes.append(mode)
    rate = next(rates[mode])
    return dict(steps_per_second=rate, steady_loop_steps_per_second=rate + 1,
                compile_seconds=1.0, load=1.5,
                loss_curve=[[1, 0.5]] if rate != 1.0 else [[1, 0.4]])

  monkeypatch.setattr(train_speed, 'run_once', fake_run)
  row = train_speed.measure('nar', 'bfs', 5, 3, None)
  assert modes == ['per_update', 'fetched', 'fetched', 'per_update',
                   'per_update', 'fetched']  # alternating
  assert row['per_update_steps_per_second'] == 3.0
  assert row['fetched_steps_per_second'] == 5.0
  assert row['ratio'] == pytest.approx(5.0 / 3.0)
  assert row['fetched_steady_loop_steps_per_second'] == 6.0
  assert row['same_losses'] is False
  train_speed.write([row], str(tmp_path), 'machine', 'note')
  table = (tmp_path / 'train_speed.md').read_text()
  assert ('| bfs | nar | 5 | 3.00 | 5.00 | 1.67 | 4.00, 6.00 | NO | 1.5-1.5 |'
          in table)
  assert json.loads((tmp_path / 'train_speed.json').read_text())['rows'] == [
      json.loads(json.dumps(row))]


def test_pad_speed_times_both_modes_and_counts_programs(tmp_path, cache_dir):
  """benchmarks.pad_speed on a tiny DEAR: the padded batches make one
  program where the two training sizes make two; a table row per model."""
  from benchmarks import pad_speed  # pylint: disable=g-import-not-at-top
  config = tiny_config(cache_dir, 'dear')
  config.model.hidden = 8
  config.data.train_sizes = (4, 5)
  row = pad_speed.measure('dear', 'bfs', 1, config)
  assert row['programs'] == dict(unpadded=2, padded=1)
  assert row['ratio'] == pytest.approx(row['padded_steps_per_second'] /
                                       row['unpadded_steps_per_second'])
  pad_speed.write([row], str(tmp_path), 'machine', 'note')
  assert '| bfs | dear | 2, 1 |' in (tmp_path / 'pad_speed.md').read_text()
  assert pad_speed.main(['--rounds=0', f'--out={tmp_path}']) == 2
  assert pad_speed.main(['--models=gnn', f'--out={tmp_path}']) == 2


def test_eval_chunk_times_both_modes_and_they_predict_the_same(tmp_path,
                                                               cache_dir):
  """benchmarks.eval_chunk on a tiny NAR with hints and a tiny DEAR: both
  modes predict the same (the comparison itself is checked against the
  whole batch in test_termination.py); a table row per case; bad flags."""
  from benchmarks import eval_chunk  # pylint: disable=g-import-not-at-top
  config = tiny_config(cache_dir)
  config.model.hidden = 8
  rows = [eval_chunk.measure(case, 'bfs', 6, 4, 1, config)
          for case in ('nar_hints', 'dear')]
  for row in rows:
    assert row['same_predictions'] and row['max_abs_difference'] == 0.0
    assert row['ratio'] == pytest.approx(row['whole batch'] /
                                         row['one graph at a time'])
  eval_chunk.write(rows, str(tmp_path), 'machine', 'note')
  text = (tmp_path / 'eval_chunk.md').read_text()
  assert '| nar_hints | bfs | 6 | 4 |' in text and '| dear | bfs | 6 | 4 |' in text
  for bad in ('--n=0', '--cases=gnn:bfs', '--cases=nar:sorting', '--cases='):
    assert eval_chunk.main([bad, f'--out={tmp_path / "bad"}']) == 2
  assert not (tmp_path / 'bad').exists()


def test_warmup_times_a_pass_after_each_warm_up_with_the_same_score(
    tmp_path, cache_dir):
  """benchmarks.warmup on a stored model: both warm-ups give a timed pass
  of the same graphs and score (the warm-up computes nothing kept); a
  compiled warm-up leaves the pass nothing to compile (test_extra_tests.py);
  a table row per case; bad flags."""
  from benchmarks import warmup  # pylint: disable=g-import-not-at-top
  folder = os.path.join(warmup.REPO, 'pretrained', 'bfs', 'dear')
  got = {w: warmup.measure(folder, 8, w, cache_dir) for w in warmup.WARMUPS}
  assert got['executed']['score'] == got['compiled']['score']
  assert {r['graphs'] for r in got.values()} == {16}
  assert all(r['seconds_per_graph'] > 0 for r in got.values())
  row = dict(model='pretrained/bfs/dear', n=8, graphs=16, batch_size=16,
             same_score=True, load_average_1min=0.5, ratio=2.0,
             executed=0.1, compiled=0.2, executed_all=[0.1],
             compiled_all=[0.2])
  warmup.write([row], str(tmp_path), 'machine')
  assert ('| pretrained/bfs/dear | 8 | 16 | 16 | 0.100 (0.100–0.100) | '
          '0.200 (0.200–0.200) | 2.00 | yes |') in (
              tmp_path / 'warmup.md').read_text()
  for bad in ('--rounds=0', '--cases=bfs/nar:64', '--cases=bfs/dear:0',
              '--cases='):
    assert warmup.main([bad, f'--out={tmp_path / "bad"}']) == 2
  assert not (tmp_path / 'bad').exists()
