"""The official dm-clrs BaselineModel runner (baselines/clrs_official.py).

The training runs happen in one child process so that it can use settings that
must precede jax's backend start-up: CPU only, XLA's cheapest optimisation
level (compiles dominate a 3-step run) and the tests' persistent compilation
cache (conftest.JAX_CACHE_DIR, or a fresh one), so the second, identical run
does not recompile. Seed 1 is used because its first
training batches at n=4 share one padded length: a single train-step compile.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import JAX_CACHE_DIR
from dear_jax import loop
from dear_jax import results as results_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLISHED_BFS_PARAMS = 523963  # EvoPrompting Table 1; clrs.md section 7.5.

_CHILD = r'''
import functools, json, sys
import jax
import numpy as np
from dear_jax import batches as batch_lib
from dear_jax import clrs_lib
from dear_jax import input_pipeline
from baselines import clrs_official as off
from dear_jax.model import count_params

out, cache = sys.argv[1], sys.argv[2]
cfg = input_pipeline.DataConfig(train_sizes=(4,), batch_size=4, val_length=5,
                                test_length=6, val_num_samples=8, test_num_samples=8,
                                eval_batch_size=4, cache_dir=cache)
# run0 trains 3 steps at once; run1 stops after 2 (its checkpoint) and a
# second call resumes it to 3 on the same workdir.
for i, steps in ((0, 3), (1, 2), (1, 3)):
  off.train_official('bfs', seed=1, train_steps=steps,
                     hint_mode='encoded_decoded', data_cfg=cfg,
                     workdir=f'{out}/run{i}', eval_every=2)

# insertion_sort's loss depends on the keys (Gumbel noise of its permutation
# hints): validated every step or only at the end, the same training keys;
# and resumed after step 1, the key chain restored from the checkpoint.
def sort_losses_of(workdir, steps, eval_every):
  return [l for _, l in off.train_official(
      'insertion_sort', seed=1, train_steps=steps, hint_mode='encoded_decoded',
      data_cfg=cfg, workdir=f'{out}/{workdir}', eval_every=eval_every)['loss_curve']]
sort_losses = [sort_losses_of(f'sort{e}', 3, e) for e in (1, 3)]
sort_losses_of('sort_resumed', 1, 1)
sort_losses.append(sort_losses_of('sort_resumed', 3, 1))

# The same training by hand, on dm-clrs's API alone (the keys and init as
# run.py: a RandomState(seed) draws the key chain, init on the first
# training batch with seed + 1): what the loop's adapter must reproduce.
spec = clrs_lib.processed_spec('bfs')
stream = input_pipeline.TrainStream('bfs', cfg, 1)
rng = np.random.RandomState(1)
key = jax.random.PRNGKey(rng.randint(2**32))
by_hand = []
for step in range(3):
  feedback = clrs_lib.to_feedback(next(stream), spec)
  if step == 0:
    model = off.build_model(spec, feedback, checkpoint_path=f'{out}/ckpt')
    model.init(feedback.features, 1 + 1)
  sub, key = jax.random.split(key)
  by_hand.append(float(model.feedback(sub, feedback, 0)))

# That model predicting a batch whole and in chunks of 3 and 1 graphs, as the
# runner does for edge-pointer algorithms at large n: the same predictions.
learner = off.OfficialLearner(spec, 'encoded_decoded', 1, f'{out}/chunks')
learner.net, batch = model, next(stream)
whole, _ = learner._predict(model.params, batch, jax.random.PRNGKey(3))
off.predict_chunk = lambda spec, batch: 3
parts, _ = learner._predict(model.params, batch, jax.random.PRNGKey(3))
chunked = {k: [np.asarray(whole[k]).tolist(), np.asarray(parts[k]).tolist()]
           for k in whole}

# Parameter count of the run.py-default model built on a real BFS batch at
# n=16 (shapes only: jax.eval_shape of the model's own haiku init).
spec = clrs_lib.processed_spec('bfs')
stream = input_pipeline.TrainStream('bfs', input_pipeline.DataConfig(train_sizes=(16,)), 0)
feedback = clrs_lib.to_feedback(next(stream), spec)
assert batch_lib.num_nodes(next(stream)) == 16
counts = {}
for mode in ('encoded_decoded', 'none'):
  model = off.build_model(spec, feedback, hint_mode=mode)
  shapes = jax.eval_shape(functools.partial(
      model.net_fn.init, jax.random.PRNGKey(0), [feedback.features], True,
      algorithm_index=-1, return_hints=False, return_all_outputs=False))
  counts[mode] = count_params(shapes)
print('RESULT' + json.dumps(dict(runs=[f'{out}/run{i}' for i in range(2)],
                                 counts=counts, by_hand=by_hand,
                                 sort_losses=sort_losses, chunked=chunked)))
'''


def _env(**extra):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu')
  env['PYTHONPATH'] = os.pathsep.join(
      p for p in (ROOT, os.environ.get('PYTHONPATH')) if p)
  env.update(extra)
  return env


@pytest.fixture(scope='module')
def child(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('clrs_official')
  xla_flags = ' '.join(filter(None, (
      os.environ.get('XLA_FLAGS'), '--xla_backend_optimization_level=0',
      '--xla_llvm_disable_expensive_passes=true')))
  env = _env(XLA_FLAGS=xla_flags,
             JAX_COMPILATION_CACHE_DIR=JAX_CACHE_DIR or str(tmp / 'jax_cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  proc = subprocess.run(
      [sys.executable, '-c', _CHILD, str(tmp / 'out'), str(tmp / 'data')],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-5000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT')][-1]
  info = json.loads(line[len('RESULT'):])
  runs = []
  for workdir in info['runs']:
    with open(os.path.join(workdir, 'results.json')) as f:
      runs.append(json.load(f))
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:  # every validation
      runs[-1]['validated_at'] = [json.loads(l)['step'] for l in f]
  return dict(runs=runs, counts=info['counts'], by_hand=info['by_hand'],
              sort_losses=info['sort_losses'], chunked=info['chunked'])


def test_prediction_in_chunks_of_graphs_is_the_same(child):
  # 4 graphs predicted at once and as 3 + 1 by dm-clrs's model (BFS's pi).
  (whole, parts), = child['chunked'].values()
  assert set(child['chunked']) == {'pi'} and len(whole) == 4
  assert whole == parts


def _batch(graphs, n):
  return dict(inputs={'pos': np.zeros((graphs, n), np.float32)}, hints={},
              outputs={}, lengths=np.ones(graphs, np.int32))


def test_only_edge_pointer_algorithms_at_large_n_are_chunked():
  from baselines import clrs_official as off  # pylint: disable=g-import-not-at-top
  fw = {'Pi': ('output', 'edge', 'pointer'), 'A': ('input', 'edge', 'scalar')}
  bfs = {'pi': ('output', 'node', 'pointer'), 'A': ('input', 'edge', 'mask')}
  # One graph's (n, n, n, 128) float32 decoder tensor: 128 MiB at n = 64, so
  # 8 graphs per GiB; at n = 16 a batch of 32 is 64 MiB and stays whole.
  assert off.predict_chunk(fw, _batch(32, 64)) == 8
  assert off.predict_chunk(fw, _batch(32, 16)) == 32
  assert off.predict_chunk(fw, _batch(32, 256)) == 1
  assert off.predict_chunk(bfs, _batch(32, 64)) == 32


def test_results_json_schema(child):
  r = child['runs'][0]
  missing = [k for k in results_lib.REQUIRED_KEYS if k not in r]
  assert not missing
  assert r['model'] == 'clrs_official'
  assert r['algorithm'] == 'bfs' and r['seed'] == 1 and r['train_steps'] == 3
  assert r['hint_mode'] == 'encoded_decoded'
  assert r['test_graphs'] == 8 and r['test_nodes'] == 6
  assert 0.0 <= r['test_score'] <= 1.0 and 0.0 <= r['val_score'] <= 1.0
  # dear_jax.loop's schedule, as the Flax models': a loss per update, labelled
  # with the updates done; validation before training, every 2, at the end.
  assert [s for s, _ in r['loss_curve']] == [1, 2, 3]
  assert [s for s, _ in r['val_curve']] == [0, 2, 3]
  assert r['best_step'] in (0, 2, 3)
  assert r['test_scores']['score'] == r['test_score']
  assert r['val_scores']['score'] == r['val_score']
  assert r['val_score'] == max(v for _, v in r['val_curve'])
  assert r['train_steps_per_second'] > 0
  assert r['eval_seconds_per_graph'] > 0
  assert set(r['timings']) == set(loop.TIMINGS)  # as every model's
  assert r['timings']['compile_seconds'] > 0 and r['timings']['test_seconds'] > 0
  assert r['algo_steps_mean'] > 0
  cfg = r['config']
  assert cfg['hidden_dim'] == 128 and cfg['learning_rate'] == 1e-3
  assert cfg['encode_hints'] and cfg['decode_hints']
  assert cfg['data']['batch_size'] == 4
  # The trained model is run.py's: same parameter count as published.
  assert r['num_params'] == PUBLISHED_BFS_PARAMS
  print(results_lib.summary_table(r))


def test_resumed_run_ends_as_an_uninterrupted_one(child):
  """Same seed, same run: one trained 3 steps at once, the other stopped
  after step 2 and resumed from its checkpoint (parameters, Adam state,
  data stream, key chains)."""
  a, b = child['runs']
  # b's second call went on from step 2 (a restart would validate at 0 again)
  assert b['validated_at'] == a['validated_at'] == [0, 2, 3]
  assert len(a['loss_curve']) == len(b['loss_curve']) == 3
  assert a['loss_curve'] == b['loss_curve']
  assert a['val_curve'] == b['val_curve']
  assert a['test_score'] == b['test_score']
  assert a['test_scores'] == b['test_scores']


def test_losses_are_dm_clrs_own(child):
  """The loop's adapter trains exactly as BaselineModel driven by hand: the
  same data, init and updates, so the same losses bit for bit (BFS's loss
  does not depend on the keys, so this does not check the key chain)."""
  assert [l for _, l in child['runs'][0]['loss_curve']] == child['by_hand']


def test_validations_do_not_change_training_keys(child):
  """Predictions draw from their own key chain: how often a run validates
  does not change its training (it did in the former run.py-style loop)."""
  every_step, at_end, resumed = child['sort_losses']
  assert len(every_step) == 3 and every_step == at_end
  # The training key chain survives a resume (BFS's loss would not show it).
  assert resumed == every_step


def test_num_params_bfs_n16(child):
  assert child['counts']['encoded_decoded'] == PUBLISHED_BFS_PARAMS
  # Without hints there are no hint encoders/decoders.
  assert 0 < child['counts']['none'] < PUBLISHED_BFS_PARAMS


@pytest.mark.parametrize('args, named', [
    (['--algorithm=not_an_algorithm'], 'not_an_algorithm'),
    (['--algorithm=bfs', '--train_steps=0'], '--train_steps must be'),
    (['--algorithm=bfs', '--hint_mode=decoded_sometimes'], '--hint_mode must'),
    (['--algorithm=bfs', '--val_num_samples=0'], '--val_num_samples must'),
])
def test_cli_bad_input(args, named, tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'baselines.clrs_official', *args,
       f'--out={tmp_path}'],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert 'Traceback' not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert 'error' in lines[0] and named in lines[0]
  assert not os.path.exists(os.path.join(tmp_path, 'results.json'))
