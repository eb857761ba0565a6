"""baselines.compare --executor=ray on a local Ray (2 CPUs, started once for
the module): the same results as the local executor, a failing task reported
by name while the others land, resume, and the one-line input errors."""

import importlib.util
import json
import os

import pytest

import conftest
from baselines import compare, executors
from test_compare import _tiny_overrides

ray = pytest.importorskip('ray')

# dear and nar, seed 0: two runs, two tasks in parallel on the 2 CPUs.
TINY = (['--preset=smoke', '--algorithms=bfs', '--models=dear,nar',
         '--seeds=1', '--train_steps=1', '--eval_every=1', '--quiet',
         '--no_memory'] + _tiny_overrides())
# What differs between two runs of the same protocol: wall-clock times.
TIMES = ('train_seconds', 'train_steps_per_second',
         'train_loop_steps_per_second', 'eval_seconds_per_graph')


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
def sweeps(local_ray, tmp_path_factory, cache_dir):  # pylint: disable=unused-argument
  """The same tiny sweep through both executors: (local DIR, ray DIR)."""
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
    assert sorted(os.listdir(run)) == ['checkpoints', 'metrics.jsonl',
                                       'results.json']
  assert ((local / 'runs/bfs' / model / 's0/metrics.jsonl').read_text() ==
          (on_ray / 'runs/bfs' / model / 's0/metrics.jsonl').read_text())
  assert (sorted(os.listdir(local / 'runs/bfs' / model / 's0/checkpoints')) ==
          sorted(os.listdir(on_ray / 'runs/bfs' / model / 's0/checkpoints')))


def test_ray_sweep_reports(sweeps):
  on_ray = sweeps[1]
  # The convergence plot's trace is computed from the dear run's shipped
  # checkpoint: the same curves as from the local one.
  traces = [json.loads((out / 'plots' / 'convergence.json').read_text())
            for out in sweeps]
  assert traces[0]['curves'] == traces[1]['curves']
  rows = [(out / 'results.csv').read_text().splitlines() for out in sweeps]
  assert len(rows[1]) == 3 and [r.split(',')[:4] for r in rows[0]] == [
      r.split(',')[:4] for r in rows[1]]
  md = json.loads((on_ray / 'protocol.json').read_text())
  assert md['info']['hardware'].startswith('Ray workers (driver: ')
  assert not [p for p in (on_ray / 'runs/bfs/nar').iterdir()
              if p.name.startswith('.incoming')]


def test_failed_task_is_named_others_land_then_resumed(sweeps, capsys,
                                                       monkeypatch):
  """The finished sweep grown to 2 seeds (a resumed sweep): seed 0 is
  skipped, nar seed 1 fails, dear seed 1 lands; the rerun submits only the
  failed run."""
  _, out = sweeps
  argv = [f'--out={out}', '--executor=ray', '--seeds=2'] + [
      a for a in TINY if a != '--seeds=1']
  real = executors.train_one
  before = {m: _results(out, m) for m in ('dear', 'nar')}

  def failing(plan, algorithm, model, seed):
    if (model, seed) == ('nar', 1):
      raise RuntimeError('simulated worker failure')
    return real(plan, algorithm, model, seed)

  monkeypatch.setattr(executors, 'train_one', failing)
  capsys.readouterr()
  assert compare.main(argv) == 1
  cap = capsys.readouterr()
  failed = [l for l in cap.err.splitlines() if l.startswith('FAILED')]
  assert failed == ['FAILED [4/4] bfs nar seed 1: RuntimeError: simulated '
                    'worker failure']
  assert '[1/4] bfs dear seed 0: done, skipped' in cap.out
  assert '[3/4] bfs nar seed 0: done, skipped' in cap.out
  assert '[2/4] bfs dear seed 1: test ' in cap.out
  assert _results(out, 'dear', 1)['seed'] == 1  # the other task landed
  assert not (out / 'runs/bfs/nar/s1').exists()

  # The rerun trains only nar seed 1 (a stand-in that writes a results.json
  # at once: training is what the sweep above checked).
  submitted = []
  stand_in = dict(before['nar'], seed=1)

  def instant(plan, algorithm, model, seed):
    submitted.append(1)  # runs on the worker: the driver's list stays empty
    run = executors.run_dir(plan.out, algorithm, model, seed)
    os.makedirs(run)
    with open(os.path.join(run, 'results.json'), 'w') as f:
      json.dump(dict(stand_in, where=os.getpid()), f)
    return stand_in

  monkeypatch.setattr(executors, 'train_one', instant)
  assert compare.main(argv) == 0
  out_lines = capsys.readouterr().out.splitlines()
  assert sum(l.endswith('done, skipped') for l in out_lines) == 3
  assert [l for l in out_lines if l.startswith('[4/4] bfs nar seed 1: test')]
  assert not submitted
  landed = _results(out, 'nar', 1)
  assert landed.pop('where') != os.getpid() and landed == stand_in
  for m in ('dear', 'nar'):
    assert _results(out, m) == before[m]  # finished runs untouched


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


def test_task_resources(local_ray, monkeypatch):  # pylint: disable=unused-argument
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
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


def test_bad_resources_are_one_line_exit_2(tmp_path, capsys):
  assert compare.main([f'--out={tmp_path}', '--executor=ray',
                       '--ray_cpus_per_task=0'] + TINY) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and '--ray_cpus_per_task must be > 0' in err[0], err
  assert not os.listdir(tmp_path)
