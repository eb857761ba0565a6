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


# --- config files, --out, cache_dir: one line, nothing written --------------------

_BAD_CONFIGS = {
    'syntax': ('def get_config(:\n', 'syntax error at line 1'),
    'raises': ('def get_config():\n  raise RuntimeError("no such preset")\n',
               'raised RuntimeError: no such preset'),
    'missing': ('import ml_collections\nCONFIG = None\n',
                'defines no get_config()'),
}


@pytest.mark.parametrize('kind', sorted(_BAD_CONFIGS))
def test_a_failing_config_file_is_one_line(tmp_path, capsys, kind):
  text, message = _BAD_CONFIGS[kind]
  path = tmp_path / f'{kind}.py'
  path.write_text(text)
  workdir = tmp_path / 'w'
  code, _, err = _cli(['run', f'--config={path}', f'--workdir={workdir}'],
                      capsys)
  assert code == 2
  line = _one_line(err)
  assert message in line and str(path) in line
  assert not workdir.exists()
  from baselines import compare  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'out'
  assert compare.main([f'--out={out}', '--models=dear', f'--dear_config={path}'
                       ]) == 2
  line = _one_line(capsys.readouterr().err)
  assert message in line and str(path) in line
  assert not out.exists()


def test_unusable_out_is_one_line_before_anything_is_written(tmp_path, capsys):
  from baselines import compare  # pylint: disable=g-import-not-at-top
  a_file = tmp_path / 'a_file'
  a_file.write_text('keep')
  for out, message in ((a_file, 'is a file'), (a_file / 'sub', 'is a file'),
                       ('/proc/dear_jax_out', 'not writable')):
    assert compare.main([f'--out={out}', '--models=nar', '--no_memory']) == 2
    assert message in _one_line(capsys.readouterr().err)
  assert a_file.read_text() == 'keep'
  assert os.listdir(tmp_path) == ['a_file']


@pytest.mark.parametrize('cache, message', [
    ('', 'data.cache_dir is empty'),
    ('/proc/dear_jax_cache', 'not writable'),
])
def test_unusable_cache_dir_is_one_line_before_anything_is_written(
    tmp_path, capsys, cache, message):
  workdir = tmp_path / 'w'
  code, _, err = _cli(['run', f'--workdir={workdir}',
                       f'--config.data.cache_dir={cache}'], capsys)
  assert code == 2 and message in _one_line(err)
  assert not workdir.exists()


def test_unusable_cache_dir_in_compare_writes_no_protocol(tmp_path, capsys):
  from baselines import compare  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'out'
  assert compare.main([f'--out={out}', '--models=nar', '--no_memory',
                       '--cache_dir=/proc/dear_jax_cache']) == 2
  assert 'not writable' in _one_line(capsys.readouterr().err)
  assert not out.exists()


def _compare_dir(out):
  """A compare --out holding one run whose results.json is then damaged."""
  run_dir = out / 'runs' / 'bfs' / 'nar' / 's0'
  run_dir.mkdir(parents=True)
  (out / 'protocol.json').write_text(json.dumps(
      dict(protocol=dict(models={}, algorithms={}), info={})))
  return run_dir / 'results.json'


@pytest.mark.parametrize('text', ['{}', '{"test_score": 0.5, "tra'])
def test_damaged_results_in_a_compare_folder_is_one_line(tmp_path, capsys,
                                                         text):
  from baselines import compare  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'out'
  results = _compare_dir(out)
  results.write_text(text)
  before = _files(out)
  assert compare.main([f'--out={out}', '--report_only']) == 2
  assert str(results) in _one_line(capsys.readouterr().err)
  # a rerun: refused before protocol.json is touched or a run is "skipped"
  assert compare.main([f'--out={out}', '--models=nar', '--algorithms=bfs',
                       '--seeds=1', '--no_memory', '--quiet']) == 2
  out_text, err = capsys.readouterr()
  assert str(results) in _one_line(err) and 'skipped' not in out_text
  assert _files(out) == before


# --- checkpoints: disk full, a missing manifest ------------------------------------

def test_waiting_for_a_thread_not_yet_running_does_not_raise():
  """A writer thread listed before it runs must not replace the save's error."""
  import threading  # pylint: disable=g-import-not-at-top
  from dear_jax import checkpoints  # pylint: disable=g-import-not-at-top
  finished = []
  late = threading.Thread(target=lambda: finished.append(True))
  starter = threading.Timer(0.2, late.start)
  starter.start()
  with pytest.raises(RuntimeError):  # what Thread.join does with such a thread
    late.join(timeout=0)
  checkpoints.join_thread(late, timeout=30)
  starter.join()
  assert finished == [True]


def test_disk_full_while_checkpointing_is_one_line_keeping_the_last(
    tmp_path, capfd, monkeypatch):
  from orbax.checkpoint._src.handlers import standard_checkpoint_handler  # pylint: disable=g-import-not-at-top
  from dear_jax import checkpoints  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'checkpoints'
  ckpt = checkpoints.Checkpoints(str(folder))
  state = dict(params=np.arange(4.0), data=dict(step=np.array(2)))
  ckpt.save(2, state, dict(step=2))

  async def disk_full(self, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(standard_checkpoint_handler.StandardCheckpointHandler,
                      'async_save', disk_full)
  with pytest.raises(checkpoints.RunError) as e:
    ckpt.save(4, state, dict(step=4))
  ckpt.close()
  message = str(e.value)
  assert message.startswith(f'checkpoint 4 could not be written in {folder} '
                            '(No space left on device)')
  assert 'the last good checkpoint (step 2) is kept' in message
  assert os.listdir(folder) == ['2']  # the partial write removed
  out, err = capfd.readouterr()
  assert out == err == ''  # orbax's threads said nothing
  monkeypatch.undo()
  again = checkpoints.Checkpoints(str(folder))
  restored, meta = again.restore(again.latest_step(), state)
  again.close()
  assert meta == dict(step=2) and np.array_equal(restored['params'],
                                                 state['params'])


def test_a_checkpoint_missing_its_manifest_is_one_line_naming_the_last_good(
    copied, capfd):
  config, workdir = copied
  (workdir / 'results.json').unlink()
  steps, last = config.train.steps, config.train.steps - config.train.eval_every
  manifest = workdir / 'checkpoints' / str(steps) / 'state' / 'manifest.ocdbt'
  manifest.unlink()
  before = _files(workdir)
  code, _, err = _cli(cli_args(config, workdir), capfd)
  assert code == 2
  line = _one_line(err)
  assert f'checkpoint {steps} in' in line and 'cannot be restored' in line
  assert f'the last good checkpoint (step {last}) is kept' in line
  assert f'move {workdir / "checkpoints" / str(steps)} away' in line
  assert _files(workdir) == before


# --- Ray, out of memory ----------------------------------------------------------

@pytest.fixture
def silent_server():
  """HOST:PORT of a TCP server that accepts and never answers."""
  server = socket.socket()
  server.bind(('127.0.0.1', 0))
  server.listen()
  accepted = []
  thread = threading.Thread(
      target=lambda: accepted.append(server.accept()), daemon=True)
  thread.start()
  yield f'127.0.0.1:{server.getsockname()[1]}'
  for conn, _ in accepted:
    conn.close()
  server.close()


def test_a_ray_address_that_does_not_answer_as_ray_is_one_line(
    silent_server, tmp_path, capsys, monkeypatch):
  from baselines import compare, executors  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(executors, 'RAY_ANSWER_TIMEOUT_S', 2.0)
  out = tmp_path / 'out'
  assert compare.main([f'--out={out}', '--models=nar', '--executor=ray',
                       f'--ray_address={silent_server}']) == 2
  line = _one_line(capsys.readouterr().err)
  assert f'{silent_server} does not answer as a Ray cluster within 2 s' in line
  assert not out.exists()


def test_a_grpc_server_answers_as_ray():
  """The check's other side: Ray's head is a gRPC server, which passes."""
  grpc = pytest.importorskip('grpc')
  from concurrent import futures  # pylint: disable=g-import-not-at-top
  from baselines import executors  # pylint: disable=g-import-not-at-top
  server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
  port = server.add_insecure_port('127.0.0.1:0')
  server.start()
  try:
    executors.check_reachable(f'127.0.0.1:{port}', timeout=5)
    executors.check_reachable(f'ray://127.0.0.1:{port}', timeout=5)
  finally:
    server.stop(0)


@pytest.mark.parametrize('error', [
    'RESOURCE_EXHAUSTED: Out of memory while trying to allocate 40000000000 '
    'bytes.', MemoryError()])
def test_out_of_memory_is_one_line_saying_what_to_reduce(
    tmp_path, capsys, monkeypatch, error):
  import jax  # pylint: disable=g-import-not-at-top
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  if isinstance(error, str):
    error = jax.errors.JaxRuntimeError(error)

  def out_of_memory(*args, **kwargs):
    raise error

  monkeypatch.setattr(train, 'setup', out_of_memory)  # where the model is built
  config = tiny_config(tmp_path / 'cache')
  code, _, err = _cli(cli_args(config, tmp_path / 'w'), capsys)
  assert code == 2
  line = _one_line(err)
  assert line.startswith('error: out of memory')
  assert 'data.batch_size' in line and 'model.hidden' in line
  assert 'data.test_num_samples' in line


# --- the small ones --------------------------------------------------------------

@pytest.mark.parametrize('args, message', [
    (['--seed=-1'], '--seed must be an integer in [0, 2**32), got -1'),
    (['--config.train.seed=-3'], 'train.seed must be an int >= 0'),
    (['--workdir='], '--workdir is empty'),
    (['--train_steps=3', '--config.train.steps=4'],
     '--train_steps=3 and --config.train.steps=4 disagree'),
    (['--model=nar', '--config.model_kind=dear'],
     '--model=nar and --config.model_kind=dear disagree'),
])
def test_small_bad_inputs_are_one_line_and_write_nothing(tmp_path, capsys,
                                                         monkeypatch, args,
                                                         message):
  from conftest import config_flags, tiny_config  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)  # --workdir's default, runs/..., would be here
  workdir = [] if any(a.startswith('--workdir') for a in args) else [
      f'--workdir={tmp_path / "w"}']
  tiny = config_flags(tiny_config(tmp_path / 'cache')) + ['--noprogress']
  code, _, err = _cli(['run'] + tiny + workdir + args, capsys)
  assert code == 2 and message in _one_line(err)
  assert os.listdir(tmp_path) == []


def test_a_flag_and_its_key_may_agree(tmp_path):
  from test_train import _resolve  # pylint: disable=g-import-not-at-top
  config = _resolve(['run', '--train_steps=3', '--config.train.steps=3'])
  assert config.train.steps == 3


def test_a_config_key_given_twice_keeps_the_last():
  """As absl keeps the last of any flag (ml_collections joined tuples)."""
  from configs import default  # pylint: disable=g-import-not-at-top
  config = run.apply_overrides(default.get_config(), [
      '--config.data.train_sizes=(5,)', '--config.model.hidden=8',
      '--config.data.train_sizes=(7,9)', '--config.model.hidden=12'])
  assert config.data.train_sizes == (7, 9)
  assert config.model.hidden == 12


def test_nan_before_the_first_checkpoint_says_nothing_was_saved():
  import types  # pylint: disable=g-import-not-at-top
  from dear_jax import loop  # pylint: disable=g-import-not-at-top

  def a_run(last_step):
    return types.SimpleNamespace(
        step=0, seed=0, error=None,
        checkpoints=types.SimpleNamespace(latest_step=lambda: last_step),
        meta=dict(compile_steps=0, loss_curve=[], steady=dict(
            steps=0, update_seconds=0.0, loop_seconds=0.0)))

  said = {None: ' before its first checkpoint; nothing was saved',
          4: '; the last good checkpoint (step 4) is intact'}
  for last, tail in said.items():
    r = a_run(last)
    loop._count(r, 1, float('nan'), False, multi=False)  # pylint: disable=protected-access
    assert r.error == f'loss became nan at step 1: training diverged{tail}'


@pytest.mark.parametrize('rel', ['../evil', 'ABSOLUTE',
                                 'runs/bfs/nar/../../../evil',
                                 'runs/bfs/dear/s0/results.json',
                                 'protocol.json'])
def test_ray_task_files_stay_inside_their_model_folder(tmp_path, rel):
  from baselines import executors  # pylint: disable=g-import-not-at-top
  from baselines.plan import CompareError  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'out'
  out.mkdir()
  if rel == 'ABSOLUTE':
    rel = str(tmp_path / 'evil')
  files = {'runs/bfs/nar/s0/results.json': b'{}', rel: b'written'}
  with pytest.raises(CompareError, match='outside'):
    executors.write_files(str(out), 'runs/bfs/nar/s0', files)
  assert _files(tmp_path) == {}
  # what a task returns: its run folder and the model's memory.json
  executors.write_files(str(out), 'runs/bfs/nar/s0', {
      'runs/bfs/nar/s0/results.json': b'{}',
      'runs/bfs/nar/memory.json': b'{}'})
  assert sorted(_files(out)) == ['runs/bfs/nar/memory.json',
                                 'runs/bfs/nar/s0/results.json']


def test_compare_imports_where_there_is_no_fcntl(tmp_path):
  """Windows has no fcntl: the --out lock must not need it."""
  code = ('import sys; sys.modules["fcntl"] = None\n'
          'from baselines import protocol\n'
          f'with protocol.locked({str(tmp_path)!r}):\n'
          '  print("locked")\n')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, text=True,
                        capture_output=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout == 'locked\n'
