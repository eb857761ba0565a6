"""`--config.train.data_parallel=True` on two CPU devices (forced with
XLA_FLAGS, so it runs in a subprocess: the device count is fixed when jax
starts): the batch is split over a jax.sharding mesh, for one seed and for a
stack of seeds, with the losses and parameters of one device; a batch the
devices cannot split is a one-line error."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r'''
import contextlib, io, json, sys
sys.path[:0] = ['.', 'tests']
import jax
from conftest import tiny_config  # CPU only, the tests' compilation cache
from test_seeds import params_mismatch
from dear_jax import run, seeds, train
from dear_jax.checkpoints import Checkpoints

jax.config.update('jax_disable_most_optimizations', True)
workdir, cache = sys.argv[1:3]
specs = []
real = seeds.batch_shardings

def recording(mesh, batch, stacked):
  out = real(mesh, batch, stacked)
  specs.append((mesh.size, stacked, tuple(out['inputs']['adj'].spec),
                tuple(out['hints']['pi_h'].spec)))
  return out

seeds.batch_shardings = recording
config = tiny_config(cache, 'nar', steps=2)
config.train.eval_every = 1  # checkpoints at steps 1 and 2
out, params = {}, {}
for name, dp, seed_list in (('one', False, [0]), ('sharded', True, [0]),
                            ('sharded_stack', True, [0, 1])):
  config.train.data_parallel = dp
  dirs = [f'{workdir}/{name}_s{s}' for s in seed_list]
  results = train.train_seeds(config, seed_list, dirs, 'bfs', progress=False)
  out[name] = [dict(loss=r['loss_curve'], val=r['val_curve'],
                    test=r['test_score']) for r in results]
  ckpt = Checkpoints(dirs[0] + '/checkpoints')
  params[name] = [ckpt.restore(s, None)[0] for s in (1, 2)]
  ckpt.close()
out['param_diff'] = {
    name: params_mismatch(params['one'][1], params[name][1], params['one'][0])
    for name in ('sharded', 'sharded_stack')}
out['specs'] = sorted(set(specs))
err = io.StringIO()
with contextlib.redirect_stderr(err):
  try:
    run.main(['run', '--algorithm=bfs', f'--workdir={workdir}/bad',
              '--config.data.batch_size=3', '--config.train.data_parallel=True'])
  except SystemExit as e:
    out['bad'] = [e.code, err.getvalue()]
print('RESULT ' + json.dumps(out))
'''


@pytest.fixture(scope='module')
def two_devices(tmp_path_factory, cache_dir):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  proc = subprocess.run(
      [sys.executable, '-c', SCRIPT, str(tmp_path_factory.mktemp('dp')),
       str(cache_dir)], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=900)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  assert proc.returncode == 0 and lines, proc.stderr[-3000:]
  return json.loads(lines[-1][len('RESULT '):])


def test_batches_are_split_over_both_devices(two_devices):
  """The batch axis (after the seed axis, and after time for hints) is the
  one split over the mesh's two devices."""
  assert two_devices['specs'] == [
      [2, False, ['data'], [None, 'data']],
      [2, True, [None, 'data'], [None, None, 'data']]]


@pytest.mark.parametrize('name', ['sharded', 'sharded_stack'])
def test_sharded_run_matches_one_device(two_devices, name):
  want, got = two_devices['one'][0], two_devices[name][0]
  assert [s for s, _ in got['loss']] == [s for s, _ in want['loss']]
  np.testing.assert_allclose([l for _, l in got['loss']],
                             [l for _, l in want['loss']], rtol=1e-5)
  np.testing.assert_allclose(got['val'], want['val'], atol=1e-9)
  assert got['test'] == pytest.approx(want['test'], abs=1e-9)
  assert two_devices['param_diff'][name] < 1e-2


def test_stack_of_two_seeds_trains_both(two_devices):
  s0, s1 = two_devices['sharded_stack']
  assert s0['loss'] != s1['loss']


def test_batch_not_divisible_by_devices_is_one_line_exit_2(two_devices):
  code, err = two_devices['bad']
  assert code == 2
  assert err == ('error: train.data_parallel splits each batch over the 2 '
                 'local devices: data.batch_size=3 must be a multiple of 2\n')
