"""Training loop, checkpoints/resume, compile counts, CLI and bad input."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from configs import default
from dear_jax import data, run, train
from dear_jax.results import REQUIRED_KEYS, SOLVER_KEYS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(cache_dir, kind='nar', steps=6):
  c = default.get_config()
  c.model_kind = kind
  c.data.train_sizes = (5,)
  c.data.batch_size = 2
  c.data.val_length = 5
  c.data.test_length = 5
  c.data.val_num_samples = 4
  c.data.test_num_samples = 4
  c.data.eval_batch_size = 2
  c.data.cache_dir = str(cache_dir)
  c.model.hidden = 16
  c.train.steps = steps
  c.train.eval_every = 2
  return c


def _tiny_flags(cache_dir):
  return ['--config.data.train_sizes=(5,)', '--config.data.batch_size=2',
          '--config.data.val_length=5', '--config.data.test_length=5',
          '--config.data.val_num_samples=4', '--config.data.test_num_samples=4',
          '--config.data.eval_batch_size=2', '--config.model.hidden=16',
          f'--config.data.cache_dir={cache_dir}', '--config.train.eval_every=2',
          '--noprogress']


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
  config = tiny_config(tmp_path / 'cache')
  full = train.train_and_evaluate(config, str(tmp_path / 'a'), 'bfs', False)
  again = train.train_and_evaluate(config, str(tmp_path / 'b'), 'bfs', False)
  assert again['test_score'] == full['test_score']  # determinism on CPU
  assert again['loss_curve'] == full['loss_curve']
  # Steps that compiled are those with a batch shape not seen before.
  stream = data.TrainStream('bfs', train.data_config(config),
                            int(config.train.seed), keep_hints=True)
  shapes = {str(jax.tree.map(np.shape, next(stream))) for _ in range(6)}
  assert full['compile_steps'] == len(shapes) < 6
  assert full['train_steps_per_second'] > 0
  # A run killed after its step-4 checkpoint: later state never reached disk.
  ckpt = tmp_path / 'b' / 'checkpoints'
  assert sorted(os.listdir(ckpt)) == ['4', '6']
  shutil.rmtree(ckpt / '6')
  os.remove(tmp_path / 'b' / 'results.json')
  resumed = train.train_and_evaluate(config, str(tmp_path / 'b'), 'bfs', False)
  assert resumed['loss_curve'] == full['loss_curve']
  assert resumed['val_curve'] == full['val_curve']
  assert resumed['test_score'] == full['test_score']


@pytest.mark.parametrize('kind', ['nar', 'dear'])
def test_compile_count_stops_growing(tmp_path, kind):
  config = tiny_config(tmp_path / 'cache', kind)
  config.data.train_sizes = (4, 5)
  cfg = train.data_config(config)
  stream = data.TrainStream('bfs', cfg, seed=0, keep_hints=kind == 'nar')
  spec = data.processed_spec('bfs')
  first = next(stream)
  model = train.build_model(config, spec, first)
  params = model.init(jax.random.PRNGKey(0), first)
  opt = optax.adam(1e-3)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, batch):
    grads, _ = jax.grad(model.loss, has_aux=True)(params, batch,
                                                  jax.random.PRNGKey(1))
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  compiles, shapes = 0, set()
  for _ in range(40):
    batch = next(stream)
    shape = tuple(np.shape(x) for x in jax.tree_util.tree_leaves(batch))
    new_shape = shape not in shapes
    shapes.add(shape)
    params, opt_state = step(params, opt_state, batch)
    grew = step._cache_size() > compiles  # pylint: disable=protected-access
    compiles = step._cache_size()  # pylint: disable=protected-access
    assert not grew or new_shape  # a compilation only for an unseen shape
  # Shapes are bounded: 2 sizes x time buckets {2, 3, 4, 6} for BFS at n <= 5
  # (DEAR drops hints: one shape per size).
  assert compiles <= len(shapes) <= (8 if kind == 'nar' else 2)


def _run_cli(args, capsys):
  with pytest.raises(SystemExit) as e:
    run.main(['run'] + args)
  err = capsys.readouterr().err
  return e.value.code, err


def test_cli_trains_and_writes_results(tmp_path, capsys):
  for kind in ('nar', 'dear'):
    workdir = tmp_path / kind
    code = run.main(['run', '--algorithm=bfs', f'--model={kind}',
                     '--train_steps=2', f'--workdir={workdir}'] +
                    _tiny_flags(tmp_path / 'cache'))
    assert code == 0
    results = json.loads((workdir / 'results.json').read_text())
    assert set(REQUIRED_KEYS) <= set(results)
    assert results['model'] == kind and results['train_steps'] == 2
    assert 0.0 <= results['test_score'] <= 1.0
    if kind == 'dear':
      assert set(SOLVER_KEYS) <= set(results)
    assert 'test score (OOD)' in capsys.readouterr().out


@pytest.mark.parametrize('args, message', [
    (['--algorithm=bogus'], 'unknown algorithm'),
    (['--config.train.nonexistent=1'], "unknown config key 'nonexistent'"),
    (['--config.train.steps=abc'], 'steps'),
    (['--train_steps=0'], 'train.steps must be positive'),
    (['--config.data.batch_size=-1'], 'data.batch_size must be positive'),
    (['--config.dear.method=newton'], 'method'),
    (['--config.dear.grad=magic'], 'grad'),
    (['--config.dear.tol=0'], 'tol'),
    (['--config.dear.max_iter_eval=0'], 'max_iter_eval'),
    (['--model=nar', '--hint_mode=sometimes'], 'hint_mode'),
    (['--hint_mode=none'], 'nar only'),
    (['--workdir=/proc/forbidden'], 'not writable'),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, args, message):
  code, err = _run_cli(_tiny_flags(tmp_path / 'cache') + args, capsys)
  assert code == 2
  assert message in err
  assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err


def test_corrupted_checkpoint_is_reported_and_kept(tmp_path, capsys):
  workdir = tmp_path / 'w'
  flags = ['--model=nar', '--train_steps=2', f'--workdir={workdir}'] + \
      _tiny_flags(tmp_path / 'cache')
  assert run.main(['run'] + flags) == 0
  step_dir = workdir / 'checkpoints' / '2' / 'state'
  for root, _, files in os.walk(step_dir):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')
  before = sorted(p for p in os.listdir(workdir))
  results_before = (workdir / 'results.json').read_text()
  code, err = _run_cli(flags, capsys)
  assert code == 2 and 'cannot be restored' in err
  assert len(err.strip().splitlines()) == 1
  assert sorted(os.listdir(workdir)) == before
  assert (workdir / 'results.json').read_text() == results_before


def test_divergence_stops_with_message_and_keeps_checkpoint(tmp_path, capsys):
  workdir = tmp_path / 'w'
  flags = ['--model=nar', '--train_steps=8', f'--workdir={workdir}',
           '--config.train.learning_rate=1e30', '--config.train.grad_clip=1e30'
           ] + _tiny_flags(tmp_path / 'cache')
  flags = [f for f in flags if not f.startswith('--config.train.eval_every')]
  code, err = _run_cli(flags + ['--config.train.eval_every=1'], capsys)
  assert code == 2 and 'diverged' in err
  last = int(err.split('(step ')[1].split(')')[0])
  assert last >= 1 and str(last) in os.listdir(workdir / 'checkpoints')


def test_subprocess_bad_algorithm_lists_valid_names(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  proc = subprocess.run(
      [sys.executable, '-m', 'dear_jax.run', '--algorithm=bfz'],
      cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 2
  err_lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(err_lines) == 1 and 'dijkstra' in err_lines[0]
  assert 'Traceback' not in proc.stderr
