"""baselines.compare --executor=ray on a local Ray (2 CPUs, started once for
the module): the same results as the local executor, a failing task reported
by name while the others land, resume, teachers sent to their students,
--stack_seeds as one task per (algorithm, model), and the one-line input
errors."""

import importlib.util
import json
import os
import types

import numpy as np
import pytest

import conftest
from baselines import compare, executors
from baselines.plan import TEACHERS
from test_compare import _tiny_overrides

ray = pytest.importorskip('ray')

# dear and nar, seed 0: two runs, two tasks in parallel on the 2 CPUs.
TINY = (['--preset=smoke', '--algorithms=bfs', '--models=dear,nar',
         '--seeds=1', '--train_steps=1', '--eval_every=1', '--quiet',
         '--no_memory', '--config.dear.diagnostics=False'] +
        _tiny_overrides())
# What differs between two runs of the same protocol: wall-clock times.
TIMES = ('train_seconds', 'train_steps_per_second',
         'train_loop_steps_per_second', 'eval_seconds_per_graph',
         'eval_cpu_seconds_per_graph', 'eval_load_average', 'timings')


@pytest.fixture(scope='module')
def local_ray():
  if ray.is_initialized():
    ray.shutdown()
  # Workers share the tests' persistent compilation cache (conftest.py).
  env = {'JAX_COMPILATION_CACHE_DIR': conftest.JAX_CACHE_DIR,
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0.1',
         'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'
         } if conftest.JAX_CACHE_DIR else {}
  executors.start_ray(executors.RayOptions(local_cpus=2, log_to_driver=False,
                                           env=env))
  yield
  ray.shutdown()


@pytest.fixture(scope='module')
def sweeps(local_ray, tmp_path_factory, cache_dir):
  """The same tiny sweep through both executors: (local DIR, ray DIR)."""
  del local_ray  # running
  outs = []
  for executor in ('local', 'ray'):
    out = tmp_path_factory.mktemp(executor)
    assert compare.main([f'--out={out}', f'--cache_dir={cache_dir}',
                         f'--executor={executor}'] + TINY) == 0
    outs.append(out)
  return tuple(outs)


def _results(out, model, seed=0):
  with open(out / 'runs' / 'bfs' / model / f's{seed}' / 'results.json') as f:
    return json.load(f)


def _without_times(results):
  return {k: v for k, v in results.items() if k not in TIMES}


@pytest.mark.parametrize('model', ['dear', 'nar'])
def test_ray_sweep_equals_local_sweep(sweeps, model):
  local, on_ray = sweeps
  a, b = _results(local, model), _results(on_ray, model)
  assert a['test_score'] == b['test_score']
  assert a['loss_curve'] == b['loss_curve']  # every step, bit for bit
  assert _without_times(a) == _without_times(b)
  # The same run folder: metrics and checkpoints travelled back too.
  for out in sweeps:
    run = out / 'runs' / 'bfs' / model / 's0'
    assert sorted(os.listdir(run)) == ['checkpoints', 'config.json',
                                       'metrics.jsonl', 'results.json']
  for name in ('metrics.jsonl', 'config.json'):
    assert ((local / 'runs/bfs' / model / 's0' / name).read_text() ==
            (on_ray / 'runs/bfs' / model / 's0' / name).read_text())
  assert (sorted(os.listdir(local / 'runs/bfs' / model / 's0/checkpoints')) ==
          sorted(os.listdir(on_ray / 'runs/bfs' / model / 's0/checkpoints')))


def test_ray_sweep_reports(sweeps):
  on_ray = sweeps[1]
  # The convergence plot's trace is computed from the dear run's shipped
  # checkpoint: the same curves as from the local one.
  traces = [json.loads((out / 'plots' / 'convergence.json').read_text())
            for out in sweeps]
  assert traces[0]['traces'][0]['curves'] == traces[1]['traces'][0]['curves']
  rows = [(out / 'results.csv').read_text().splitlines() for out in sweeps]
  assert len(rows[1]) == 3 and [r.split(',')[:4] for r in rows[0]] == [
      r.split(',')[:4] for r in rows[1]]
  stored = json.loads((on_ray / 'protocol.json').read_text())
  (hardware,) = stored['info']['hardware']
  assert hardware.startswith('Ray workers (driver: ')
  assert not [p for p in (on_ray / 'runs/bfs/nar').iterdir()
              if p.name.startswith('.incoming')]


def _stand_in(results, fail=()):
  """A train_one that writes results[model] (with its seed) at once, raises
  for the runs in `fail` ((model, seed) pairs), and for a model with a
  teacher (plan.TEACHERS) reads the teacher's results.json from its own
  --out. These tests check what the driver does with tasks; training was
  checked above."""

  def instant(plan, algorithm, model, seed):
    if (model, seed) in fail:
      raise RuntimeError('simulated worker failure')
    r = dict(results[model], seed=seed, model=model, worker=os.getpid())
    if model in TEACHERS:
      teacher = executors.run_dir(plan.out, algorithm, TEACHERS[model], seed)
      with open(os.path.join(teacher, 'results.json')) as f:
        r['teacher_worker'] = json.load(f)['worker']
    run = executors.run_dir(plan.out, algorithm, model, seed)
    os.makedirs(run)
    with open(os.path.join(run, 'results.json'), 'w') as f:
      json.dump(r, f)
    return r

  return instant


@pytest.fixture
def reused_workers(monkeypatch):
  """Ray workers kept between tasks (max_calls unlimited) for the tests whose
  tasks are stand-ins: a fresh process per task imports the package again
  (seconds each) and the driver's handling of tasks is the same."""
  real = executors._task_options  # pylint: disable=protected-access

  def reused(*args, **kwargs):
    return dict(real(*args, **kwargs), max_calls=0)

  monkeypatch.setattr(executors, '_task_options', reused)


def _lines(text, start):
  """Lines that start with `start`, without the seconds at their end."""
  return sorted(l.rsplit(' (', 1)[0] for l in text.splitlines()
                if l.startswith(start))


@pytest.mark.usefixtures('reused_workers')
def test_failures_named_others_land_resumed_teachers_sent(sweeps, capsys,
                                                          monkeypatch):
  """The finished sweep grown to 2 seeds and two more models (a resumed
  sweep): seed 0 of dear and nar is skipped and untouched; failed runs are
  named, a student whose teacher failed too; the others land; the rerun
  runs only what failed. dear_align gets its teacher's run folder from the
  same sweep (a Ray dependency) or, finished earlier, from DIR."""
  _, out = sweeps
  assert TEACHERS['dear_align'] == 'nar_nohint'
  argv = [f'--out={out}', '--executor=ray', '--seeds=2',
          '--models=dear,nar,nar_nohint,dear_align'] + [
              a for a in TINY if a not in ('--seeds=1', '--models=dear,nar')]
  before = {m: _results(out, m) for m in ('dear', 'nar')}
  results = dict(before, nar_nohint=before['nar'], dear_align=before['dear'])
  # Teachers first: nar_nohint 1-2, dear 3-4, nar 5-6, dear_align 7-8.
  monkeypatch.setattr(executors, 'train_one', _stand_in(results, fail=(
      ('nar', 1), ('nar_nohint', 1), ('dear_align', 0))))
  capsys.readouterr()
  assert compare.main(argv) == 1
  cap = capsys.readouterr()
  simulated = ': RuntimeError: simulated worker failure'
  assert _lines(cap.err, 'FAILED') == [
      f'FAILED [2/8] bfs nar_nohint seed 1{simulated}',
      f'FAILED [6/8] bfs nar seed 1{simulated}',
      f'FAILED [7/8] bfs dear_align seed 0{simulated}',
      'FAILED [8/8] bfs dear_align seed 1: its teacher nar_nohint seed 1 '
      'failed']
  score = lambda m: (f'test {results[m]["test_score"]:.4f}, '
                     f'val {results[m]["val_score"]:.4f}')
  assert _lines(cap.out, '[') == [
      f'[1/8] bfs nar_nohint seed 0: {score("nar_nohint")}',
      '[3/8] bfs dear seed 0: done, skipped',
      f'[4/8] bfs dear seed 1: {score("dear")}',
      '[5/8] bfs nar seed 0: done, skipped']
  landed = _results(out, 'dear', 1)  # written by a worker, not this process
  assert landed['seed'] == 1 and landed['worker'] != os.getpid()
  for m, seed in (('nar', 1), ('nar_nohint', 1), ('dear_align', 0),
                  ('dear_align', 1)):
    assert not (out / 'runs/bfs' / m / f's{seed}').exists()

  monkeypatch.setattr(executors, 'train_one', _stand_in(results))
  assert compare.main(argv) == 0
  lines = _lines(capsys.readouterr().out, '[')
  assert [l for l in lines if not l.endswith('done, skipped')] == [
      f'[2/8] bfs nar_nohint seed 1: {score("nar_nohint")}',
      f'[6/8] bfs nar seed 1: {score("nar")}',
      f'[7/8] bfs dear_align seed 0: {score("dear_align")}',
      f'[8/8] bfs dear_align seed 1: {score("dear_align")}']
  for seed in (0, 1):  # the teacher each student read: that seed's
    assert (_results(out, 'dear_align', seed)['teacher_worker'] ==
            _results(out, 'nar_nohint', seed)['worker'])
  for m in ('dear', 'nar'):
    assert _results(out, m) == before[m]  # finished runs untouched


def _stack_stand_in(results, fail_after=None):
  """A _train_stack that writes each seed's results (with the worker and the
  seeds of its stack) and raises once past seed `fail_after` (a divergence:
  the seeds before it finished)."""

  def stacked(plan, algorithm, model, seeds):
    for s in seeds:
      if fail_after is not None and s > fail_after:
        raise RuntimeError(f'seed {s}: simulated divergence')
      run = executors.run_dir(plan.out, algorithm, model, s)
      os.makedirs(run)
      with open(os.path.join(run, 'results.json'), 'w') as f:
        json.dump(dict(results[model], seed=s, model=model,
                       worker=os.getpid(), stack=list(seeds)), f)

  return stacked


@pytest.mark.usefixtures('reused_workers')
def test_stack_seeds_one_task_per_group_resumed_teachers_sent(
    sweeps, tmp_path, capsys, monkeypatch):
  """--stack_seeds on Ray: each stackable (algorithm, model)'s unfinished
  seeds train as one task; seeds that finished before a divergence land, the
  others are named; the rerun stacks only those; students get their
  teacher's run from the stack's result."""
  results = dict(nar_nohint=_results(sweeps[1], 'nar'),
                 dear_align=_results(sweeps[1], 'dear'))
  argv = [f'--out={tmp_path}', '--executor=ray', '--stack_seeds', '--seeds=3',
          '--models=nar_nohint,dear_align'] + [
              a for a in TINY if a not in ('--seeds=1', '--models=dear,nar')]
  monkeypatch.setattr(executors, '_train_stack',
                      _stack_stand_in(results, fail_after=0))
  monkeypatch.setattr(executors, 'train_one', _stand_in(results))
  assert compare.main(argv) == 1
  cap = capsys.readouterr()
  assert _lines(cap.err, 'FAILED') == [
      'FAILED [5/6] bfs dear_align seed 1: its teacher nar_nohint seed 1 '
      'failed',
      'FAILED [6/6] bfs dear_align seed 2: its teacher nar_nohint seed 2 '
      'failed',
      'FAILED bfs nar_nohint seeds [1, 2] of [0, 1, 2]: RuntimeError: '
      'seed 1: simulated divergence']
  first = _results(tmp_path, 'nar_nohint')
  assert first['stack'] == [0, 1, 2] and first['worker'] != os.getpid()
  assert _results(tmp_path, 'dear_align')['teacher_worker'] == first['worker']

  monkeypatch.setattr(executors, '_train_stack', _stack_stand_in(results))
  assert compare.main(argv) == 0
  out = capsys.readouterr().out
  assert [l for l in _lines(out, '[') if l.endswith('skipped')] == [
      '[1/6] bfs nar_nohint seed 0: done, skipped',
      '[4/6] bfs dear_align seed 0: done, skipped']
  assert _results(tmp_path, 'nar_nohint') == first  # untouched
  again = [_results(tmp_path, 'nar_nohint', s) for s in (1, 2)]
  assert [r['stack'] for r in again] == [[1, 2], [1, 2]]  # one task
  assert again[0]['worker'] == again[1]['worker']
  for s in (1, 2):
    assert (_results(tmp_path, 'dear_align', s)['teacher_worker'] ==
            again[0]['worker'])


def test_land_stack_names_a_lost_group(tmp_path, capsys):
  job = (['[1/2] bfs nar seed 0', '[2/2] bfs nar seed 1'], 'bfs', 'nar',
         [0, 1])
  plan = types.SimpleNamespace(out=str(tmp_path))
  assert executors._land_stack(plan, job, dict(  # pylint: disable=protected-access
      runs={}, error='RuntimeError: boom', seconds=1.0)) == 1
  assert capsys.readouterr().err == (
      'FAILED bfs nar seeds [0, 1]: RuntimeError: boom\n')
  assert not os.listdir(tmp_path)


def test_stack_seeds_real_stacked_run_on_ray(sweeps, tmp_path, cache_dir,
                                            monkeypatch):
  """One tiny real stack on a worker: both seeds land as full run folders,
  seed 0 trained as the unstacked Ray run did (float tolerance)."""
  real = executors._train_stack  # pylint: disable=protected-access

  def marked(plan, algorithm, model, seeds):  # says it ran, in seed 0's folder
    results = real(plan, algorithm, model, seeds)
    with open(os.path.join(executors.run_dir(plan.out, algorithm, model, 0),
                           'stacked'), 'w') as f:
      f.write(str(seeds))
    return results

  monkeypatch.setattr(executors, '_train_stack', marked)
  argv = [f'--out={tmp_path}', f'--cache_dir={cache_dir}', '--executor=ray',
          '--stack_seeds', '--seeds=2', '--models=nar'] + [
              a for a in TINY if a not in ('--seeds=1', '--models=dear,nar')]
  assert compare.main(argv) == 0
  for s in (0, 1):
    run = tmp_path / 'runs' / 'bfs' / 'nar' / f's{s}'
    assert sorted(os.listdir(run)) == ['checkpoints', 'config.json',
                                       'metrics.jsonl',
                                       'results.json'] + ['stacked'] * (s == 0)
    assert _results(tmp_path, 'nar', s)['seed'] == s
  assert (tmp_path / 'runs/bfs/nar/s0/stacked').read_text() == '[0, 1]'

  stacked, alone = _results(tmp_path, 'nar'), _results(sweeps[1], 'nar')
  assert np.allclose(np.array(stacked['loss_curve']),
                     np.array(alone['loss_curve']), rtol=1e-4)
  assert stacked['loss_curve'] != _results(tmp_path, 'nar', 1)['loss_curve']


def test_write_files_replaces_a_partial_run(tmp_path):
  stale = tmp_path / 'runs/bfs/nar/s0/checkpoints/7'
  stale.mkdir(parents=True)
  executors.write_files(str(tmp_path), 'runs/bfs/nar/s0', {
      'runs/bfs/nar/s0/results.json': b'{}',
      'runs/bfs/nar/s0/checkpoints/9/meta': b'x',
      'runs/bfs/nar/memory.json': b'{"train_step_memory_mb": 1}'})
  files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob('*')
                 if p.is_file())
  assert files == ['runs/bfs/nar/memory.json',
                   'runs/bfs/nar/s0/checkpoints/9/meta',
                   'runs/bfs/nar/s0/results.json']


@pytest.mark.usefixtures('local_ray')
def test_task_resources():
  cpu = executors._task_options(ray, executors.RayOptions(cpus_per_task=2))
  assert (cpu['num_cpus'], cpu['num_gpus']) == (2, 0)  # no GPU in this Ray
  assert cpu['runtime_env']['env_vars'] == {'JAX_PLATFORMS': 'cpu'}
  shared = executors._task_options(ray, executors.RayOptions(
      gpus_per_task=0.25))
  assert shared['num_gpus'] == 0.25
  assert shared['runtime_env']['env_vars'][
      'XLA_PYTHON_CLIENT_PREALLOCATE'] == 'false'


def test_without_ray_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: (
      None if name == 'ray' else real(name, *a)))
  assert compare.main([f'--out={tmp_path}', '--executor=ray'] + TINY) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'needs the ray package' in err[0], err
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize('flag, message', [
    ('--ray_cpus_per_task=0', '--ray_cpus_per_task must be > 0'),
    ('--ray_gpus_per_task=-1', '--ray_gpus_per_task >= 0'),
    ('--ray_address=127.0.0.1:1', 'cannot reach a Ray cluster at 127.0.0.1:1'),
])
def test_bad_ray_flags_are_one_line_exit_2(tmp_path, capsys, flag, message):
  assert compare.main([f'--out={tmp_path}', '--executor=ray', flag] + TINY) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and message in err[0], err
  assert not os.listdir(tmp_path)
