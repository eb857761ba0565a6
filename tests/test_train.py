"""Training loop, checkpoints/resume, compile counts, evaluation, CLI and bad
input.

Most tests share the session's finished tiny runs (conftest.finished_run: one
CLI run per model kind) and copy a workdir before changing it.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from conftest import cli_args, config_flags, count_loss_traces, tiny_config
from dear_jax import checkpoints, clrs_lib, factory, input_pipeline, run, run_config, splits, train
from dear_jax.results import REQUIRED_KEYS, SOLVER_KEYS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# XLA's optimisations double compile times on CPU; these runs are tiny and
# every comparison below is between runs compiled the same way.
pytestmark = pytest.mark.usefixtures('fast_compile')


def _tiny_flags(cache_dir):
  return config_flags(tiny_config(cache_dir)) + ['--noprogress']


def _run_cli(args, capsys):
  with pytest.raises(SystemExit) as e:
    run.main(['run'] + args)
  err = capsys.readouterr().err
  return e.value.code, err


def _tree_equal(a, b) -> bool:
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return len(la) == len(lb) and all(
      np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def _mtimes(folder) -> dict:
  return {os.path.join(root, f): os.stat(os.path.join(root, f)).st_mtime_ns
          for root, _, files in os.walk(folder) for f in files}


def _copy_run(finished, dest):
  shutil.copytree(finished.workdir, dest)
  return dest


# --- the CLI end to end -------------------------------------------------------

@pytest.mark.smoke
@pytest.mark.parametrize('kind', ['nar', 'dear'])
def test_cli_trains_and_writes_results(finished_run, kind):
  r = finished_run(kind)
  assert r.code == 0
  results = r.results
  assert set(REQUIRED_KEYS) <= set(results)
  assert results['model'] == kind and results['train_steps'] == 6
  assert 0.0 <= results['test_score'] <= 1.0
  assert (set(SOLVER_KEYS) <= set(results)) == (kind == 'dear')
  assert 'test score (OOD)' in r.stdout
  # The CLI flags built from tiny_config reproduce tiny_config exactly (the
  # resume tests below rely on it).
  assert results['config'] == json.loads(json.dumps(r.config.to_dict()))


# --- checkpoints and resume -------------------------------------------------

@pytest.mark.parametrize('kind', ['nar', 'dear'])
def test_resume_after_interruption_matches_uninterrupted_run(
    finished_run, tmp_path, drawn_batches, kind):
  full = finished_run(kind)
  drawn_batches.clear()  # the fixture trains `full` on first use
  workdir = _copy_run(full, tmp_path / 'b')
  # A run killed after its step-4 checkpoint: later state never reached disk.
  ckpt = workdir / 'checkpoints'
  assert sorted(os.listdir(ckpt)) == ['4', '6']
  shutil.rmtree(ckpt / '6')
  os.remove(workdir / 'results.json')
  resumed = train.train_and_evaluate(full.config, str(workdir), 'bfs', False)
  # It continued from step 4 (a restart from scratch would draw 6 batches
  # and, being deterministic, reach the same numbers).
  assert len(drawn_batches) == 2
  want = full.results
  assert resumed['loss_curve'] == want['loss_curve']
  assert resumed['val_curve'] == want['val_curve']
  assert resumed['best_step'] == want['best_step']
  assert resumed['test_score'] == want['test_score']


def test_sigterm_interrupts_a_run_as_ctrl_c_does(cache_dir, tmp_path,
                                                 monkeypatch):
  """With loop.stop_on_sigterm (run's and compare's CLIs), a SIGTERM after
  the step-2 checkpoint ends the run with the interruption named and that
  checkpoint intact, no results written (resuming: the tests above)."""
  import signal  # pylint: disable=g-import-not-at-top
  from dear_jax import loop  # pylint: disable=g-import-not-at-top
  config = tiny_config(cache_dir, 'nar')
  workdir = str(tmp_path / 'w')
  real = loop.Run.save

  def save_then_terminate(self, params, opt_state):
    real(self, params, opt_state)
    if self.step == 2:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(loop.Run, 'save', save_then_terminate)
  before = signal.getsignal(signal.SIGTERM)
  loop.stop_on_sigterm()
  try:
    with pytest.raises(train.RunError, match='interrupted at step 2; the '
                       'checkpoint of step 2 is intact'):
      train.train_and_evaluate(config, workdir, 'bfs', False)
  finally:
    signal.signal(signal.SIGTERM, before)
  assert not os.path.exists(os.path.join(workdir, 'results.json'))
  assert max(map(int, os.listdir(os.path.join(workdir, 'checkpoints')))) == 2


def test_an_interruption_before_any_checkpoint_says_so(cache_dir, tmp_path,
                                                       monkeypatch):
  """Interrupted before its first checkpoint, a run names no checkpoint step
  (there is none) and says a rerun starts it again."""
  from dear_jax import loop  # pylint: disable=g-import-not-at-top
  config = tiny_config(cache_dir, 'nar')
  workdir = str(tmp_path / 'w')

  def interrupt(self, params, opt_state):
    raise KeyboardInterrupt

  monkeypatch.setattr(loop.Run, 'save', interrupt)
  with pytest.raises(train.RunError, match=r'interrupted at step \d+; no '
                     'checkpoint was written yet: rerun the same command to '
                     'start again'):
    train.train_and_evaluate(config, workdir, 'bfs', False)
  assert not os.path.exists(os.path.join(workdir, 'results.json'))


@pytest.mark.parametrize('kind', ['nar', 'dear'])
def test_loss_and_validation_cadence(finished_run, kind):
  """dear_jax.loop's rule (clrs_official's too, tests/test_clrs_official.py):
  a loss per update, labelled with the updates done; validation before
  training, every eval_every (2) updates and after the last."""
  r = finished_run(kind).results
  assert [s for s, _ in r['loss_curve']] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(l) for _, l in r['loss_curve'])
  assert [s for s, _ in r['val_curve']] == [0, 2, 4, 6]
  assert r['test_scores']['score'] == r['test_score']
  assert r['val_scores']['score'] == r['val_score']


def test_progress_label_names_the_model(cache_dir):
  config = tiny_config(cache_dir, 'nar')
  assert factory.model_label(config) == 'nar'
  config.nar.hint_mode = 'none'
  assert factory.model_label(config) == 'nar_nohint'
  assert factory.model_label(tiny_config(cache_dir, 'dear')) == 'dear'


def test_compile_steps_counts_train_step_traces(finished_run):
  """results.json's compile_steps against the number of times the jitted
  train step actually traced the loss (an observer outside the counting)."""
  r = finished_run('nar')
  # BFS at n=5 pads hints to several time buckets: several compiles, but
  # fewer than steps.
  assert 2 <= r.loss_traces < 6
  assert r.results['compile_steps'] == r.loss_traces
  assert r.results['train_steps_per_second'] > 0


def test_data_protocol_change_on_resume_is_refused(finished_run, tmp_path,
                                                  capsys):
  workdir = _copy_run(finished_run('nar'), tmp_path / 'w')
  before = _mtimes(workdir)
  changed = tiny_config(finished_run('nar').cache_dir, 'nar')
  changed.data.val_num_samples = 3
  code, err = _run_cli(cli_args(changed, workdir)[1:], capsys)
  assert code == 2 and 'another config (data.val_num_samples 4 -> 3)' in err
  assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err
  assert _mtimes(workdir) == before


def test_corrupted_checkpoint_is_reported_and_kept(finished_run, tmp_path,
                                                   capsys):
  r = finished_run('nar')
  workdir = _copy_run(r, tmp_path / 'w')
  step_dir = workdir / 'checkpoints' / '6' / 'state'
  for root, _, files in os.walk(step_dir):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')
  before = sorted(os.listdir(workdir))
  results_before = (workdir / 'results.json').read_text()
  # --reevaluate: a finished workdir is otherwise answered from results.json
  code, err = _run_cli(cli_args(r.config, workdir)[1:] + ['--reevaluate'], capsys)
  assert code == 2 and 'cannot be restored' in err
  assert len(err.strip().splitlines()) == 1
  assert sorted(os.listdir(workdir)) == before
  assert (workdir / 'results.json').read_text() == results_before


def test_divergence_stops_with_message_and_keeps_checkpoint(cache_dir, tmp_path,
                                                            capsys):
  config = tiny_config(cache_dir, 'nar', steps=4)
  config.nar.hint_mode = 'none'  # one batch shape: one compile
  config.train.learning_rate = 1e30
  config.train.grad_clip = 1e30
  config.train.eval_every = 1
  workdir = tmp_path / 'w'
  code, err = _run_cli(cli_args(config, workdir)[1:] +
                       ['--hint_mode=none'], capsys)
  assert code == 2 and 'diverged' in err
  last = int(err.split('(step ')[1].split(')')[0])
  assert last >= 1 and str(last) in os.listdir(workdir / 'checkpoints')


# --- compile counts -----------------------------------------------------------

@pytest.mark.parametrize('kind', ['nar', 'dear'])
def test_compile_count_stops_growing(cache_dir, kind):
  """The train step traces once per distinct batch shape, and the shapes are
  few: 2 sizes x time buckets {2, 3, 4, 6} for BFS at n <= 5 (DEAR drops
  hints: one shape per size)."""
  config = tiny_config(cache_dir, kind)
  config.data.train_sizes = (4, 5)
  stream = input_pipeline.TrainStream('bfs', train.data_config(config), seed=0,
                                      keep_hints=kind == 'nar')
  first = next(stream)
  model = factory.build_model(config, clrs_lib.processed_spec('bfs'), first)
  traces = count_loss_traces(model)
  optimizer = train.make_optimizer(config)
  step = train.make_train_step(model, optimizer)
  params = model.init(jax.random.PRNGKey(0), first)
  opt_state = optimizer.init(params)
  shapes = []
  batch = first
  for i in range(12):
    shape = tuple(np.shape(x) for x in jax.tree_util.tree_leaves(batch))
    new_shape = shape not in shapes
    if new_shape:
      shapes.append(shape)
    before = len(traces)
    params, opt_state, _, _ = step(params, opt_state, batch,
                                   jax.random.PRNGKey(i))
    assert len(traces) - before == int(new_shape), i
    batch = next(stream)
  assert len(traces) == len(shapes)
  assert 2 <= len(shapes) <= (8 if kind == 'nar' else 2)


# --- evaluation ----------------------------------------------------------------

def test_padded_last_eval_batch_scores_like_unpadded(cache_dir):
  """3 test graphs in batches of 2: the last batch is padded by repetition
  and `evaluate` must drop the padding before scoring."""
  config = tiny_config(cache_dir, 'nar')
  config.nar.hint_mode = 'none'
  config.data.test_num_samples = 3
  sets = {}
  for bs in (2, 3):
    config.data.eval_batch_size = bs
    sets[bs] = splits.load_split('bfs', 'test', train.data_config(config))
  padded, whole = sets[2], sets[3]
  assert padded.num_samples == whole.num_samples == 3
  assert len(padded.batches) == 2 and len(whole.batches) == 1
  assert len(padded.batches[1]['lengths']) == 2  # one repeated graph
  model = factory.build_model(config, clrs_lib.processed_spec('bfs'),
                            whole.batches[0])
  params = model.init(jax.random.PRNGKey(0), whole.batches[0])
  predict = jax.jit(model.predict)
  got = train.evaluate(model, predict, params, padded)['score']
  want = train.evaluate(model, predict, params, whole)['score']
  assert got == pytest.approx(want, abs=1e-12)
  assert 0 < want < 1  # an untrained model: the score depends on every graph


def test_test_score_uses_best_validation_parameters(cache_dir, tmp_path,
                                                   monkeypatch):
  """Validation scores are scripted so that the best step (2) is not the last
  (4); the test split must then be scored with the step-2 parameters."""
  config = tiny_config(cache_dir, 'nar', steps=4)
  config.nar.hint_mode = 'none'
  test_key = splits.load_split('bfs', 'test', train.data_config(config)).key
  scripted = iter([0.2, 0.9, 0.5])  # validations at steps 0, 2, 4
  val_params, test_calls = [], []
  real = train.evaluate

  def fake_evaluate(model, predict_fn, params, evalset, per_graph=False,
                    done=None):
    if evalset.key == test_key:
      assert per_graph  # the test's graphs are scored one by one too
      result = real(model, predict_fn, params, evalset, per_graph, done)
      test_calls.append((params, result['score']))
      return result
    assert not per_graph  # validation needs no per-graph scores
    val_params.append(params)
    return {'score': next(scripted)}

  monkeypatch.setattr(train, 'evaluate', fake_evaluate)
  results = train.train_and_evaluate(config, str(tmp_path / 'w'), 'bfs', False)
  assert len(val_params) == 3 and test_calls
  assert results['best_step'] == 2 and results['val_score'] == 0.9
  assert not _tree_equal(val_params[1], val_params[2])  # training moved
  for params, _ in test_calls:
    assert _tree_equal(params, val_params[1])
  assert results['test_score'] == test_calls[0][1]
  assert _tree_equal(checkpoints.load_best_params(str(tmp_path / 'w')),
                     val_params[1])


# --- configs and bad input ----------------------------------------------------

def _resolve(argv):
  fv = run.flags.FlagValues()
  run._define_flags(fv, argv)  # pylint: disable=protected-access
  fv(argv)
  return run.resolve_config(fv)


def test_dear_paper_config_passes_check_config():
  config = _resolve(['run', f'--config={REPO}/configs/dear_paper.py'])
  run_config.check_config(config)
  assert config.model_kind == 'dear'
  assert config.data.size_schedule == 'uniform'
  assert config.data.train_sizes == tuple(range(8, 17))
  # check_config does check (so passing it means something)
  with pytest.raises(ValueError, match='processor'):
    _resolve(['run', f'--config={REPO}/configs/dear_paper.py',
              '--config.model.processor=bogus'])


def test_results_stored_with_the_old_absent_values_still_match():
  """A finished workdir whose results.json holds the old sentinels (0: the
  official count, '': no teacher) counts as the same config."""
  from configs import default  # pylint: disable=g-import-not-at-top
  now = default.get_config().to_dict()
  old = default.get_config().to_dict()
  old['data'].update(val_num_samples=0, test_num_samples=0)
  old['dear']['align_teacher'] = ''
  assert train._comparable(old) == train._comparable(now)  # pylint: disable=protected-access
  old['data']['test_num_samples'] = 5
  assert train._comparable(old) != train._comparable(now)  # pylint: disable=protected-access


def test_stored_config_of_an_old_run_builds_and_checks():
  """benchmarks --trained and compare's convergence trace rebuild models from
  results.json's config: an old one (sentinels, lists) reads as today's."""
  from configs import default  # pylint: disable=g-import-not-at-top
  old = json.loads(json.dumps(default.get_config().to_dict()))  # as stored
  old['data'].update(val_num_samples=0, test_num_samples=0)
  old['dear']['align_teacher'] = ''
  with pytest.raises(ValueError, match='val_num_samples'):
    run_config.typed(ml_collections.ConfigDict(old))
  config = train.stored_config(old)
  typed = run_config.typed(config)
  assert typed.data.val_num_samples is None
  assert typed.data.test_num_samples is None
  assert typed.data.train_sizes == default.get_config().data.train_sizes
  assert typed.dear.align_teacher is None


def test_split_counts_default_to_none_and_parse_from_the_command_line():
  assert _resolve(['run']).data.val_num_samples is None
  config = _resolve(['run', '--config.data.val_num_samples=64',
                     '--config.data.test_num_samples=7'])
  assert (config.data.val_num_samples, config.data.test_num_samples) == (64, 7)
  assert train.data_config(config).val_num_samples == 64


@pytest.mark.parametrize('args, message', [
    (['--algorithm=bogus'], 'unknown algorithm'),
    (['--config.train.nonexistent=1'], "unknown config key 'nonexistent'"),
    (['--config.train.steps=abc'], 'steps'),
    (['--train_steps=0'], 'train.steps must be positive'),
    (['--config.data.batch_size=-1'], 'data.batch_size must be positive'),
    (['--config.data.val_num_samples=0'],
     'data.val_num_samples must be positive, or None'),
    (['--config.data.test_num_samples=many'],
     '--config.data.test_num_samples=many'),
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


def test_subprocess_bad_algorithm_lists_valid_names():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu')
  proc = subprocess.run(
      [sys.executable, '-m', 'dear_jax.run', '--algorithm=bfz'],
      cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 2
  err_lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(err_lines) == 1 and 'dijkstra' in err_lines[0]
  assert 'Traceback' not in proc.stderr
