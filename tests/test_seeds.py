"""Several seeds in one program (`--seeds`, dear_jax/seeds.py): a seed trained
inside a stack ends where the same seed trained alone ends, and a stacked run
killed mid-save resumes each seed from its own checkpoint.

The stacks train seeds 1 and 0, and seed 0 is compared with seed 0 trained
alone (the NAR's reference is the session's conftest.finished_run), so the
compared seed is not the stack's first member, whose init the single-seed
path shares.
"""

import contextlib
import io
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import cli_args, config_flags, tiny_config
from dear_jax import batches as batch_lib
from dear_jax import clrs_lib, input_pipeline, run, seeds, train
from dear_jax.checkpoints import Checkpoints


# As test_train.py, so these runs compile like conftest.finished_run's.
pytestmark = pytest.mark.usefixtures('fast_compile')


def _config(cache_dir, kind):
  """tiny_config; DEAR solved by damped fixed-point iteration. Anderson's
  mixing (a least-squares fit over its history) amplifies the rounding
  differences between two compilations of one step: a vmap of a single seed
  drifts from the plain step as far as the stack does (1 % in the loss by the
  third step on this config), so only an iteration that is smooth in the
  parameters can show the stack computes what the seed alone computes (and
even so their losses part by 4e-5 by step 6: DEAR trains 4 steps here)."""
  config = tiny_config(cache_dir, kind, steps=4 if kind == 'dear' else 6)
  if kind == 'dear':
    config.dear.method = 'fixed_point'
    config.dear.damping = 0.5
    config.dear.tol = 0.01
    config.dear.check_max_iter = 50
    # A map that contracts (as with the former default penalty): the
    # distance check's 50-step reference then converges, so the distance is
    # a smooth function of the parameters. With 0.01 the reference stops
    # mid-way and the 1e-3 parameter drift of a stack moves it by 0.4 %.
    config.dear.jac_reg_weight = 0.1
  return config


def _cli(config, workdir, extra=()) -> str:
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    code = run.main(cli_args(config, workdir) + config_flags(
        config, sections=('dear',)) + list(extra))
  assert code == 0
  return out.getvalue()


@pytest.fixture(scope='module')
def runs(tmp_path_factory, cache_dir, finished_run):
  """runs(kind) -> (W of `run --seeds=1,0 --workdir=W`, the workdir of seed
  0 trained alone). The NAR's reference is conftest.finished_run."""
  done = {}

  def get(kind):
    if kind not in done:
      config = _config(cache_dir, kind)
      base = tmp_path_factory.mktemp(f'stacked_{kind}') / 'w'
      assert _cli(config, base, ['--seeds=1,0']).count('test score (OOD)') == 2
      if kind == 'nar':
        alone = str(finished_run('nar').workdir)
      else:
        alone = str(tmp_path_factory.mktemp('alone_dear') / 'w')
        _cli(config, alone)
      done[kind] = (str(base), alone)
    return done[kind]

  return get


def _results(workdir) -> dict:
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


def _checkpoint(workdir, step):
  ckpt = Checkpoints(os.path.join(workdir, 'checkpoints'))
  try:
    return ckpt.restore(step, None)[0]
  finally:
    ckpt.close()


def params_mismatch(a: dict, b: dict, prev: dict) -> float:
  """How far checkpoint b's parameters are from checkpoint a's, as a share
  of how far a's moved since its earlier checkpoint `prev`.

  Entries whose gradient RMS (from a's Adam second moments) is below 1e-7
  are left out: their gradient is zero in exact arithmetic (a
  softmax-invariant pointer-logit bias, say) and Adam turns its rounding
  noise, which differs between two compilations, into steps of up to the
  learning rate. Adam also scales every other entry's step by its own
  gradient size, so small relative gradient differences move some entries by
  a sizeable part of a step: hence a norm over all entries, not a bound per
  entry."""
  adam = a['opt_state'][1][0]
  correction = 1 - 0.999 ** int(adam['count'])
  diff, moved, kept, total = 0.0, 0.0, 0, 0
  for x, y, x0, nu in zip(*(jax.tree.leaves(t) for t in (
      a['params'], b['params'], prev['params'], adam['nu']))):
    x, y, x0, nu = (np.asarray(v, np.float64) for v in (x, y, x0, nu))
    sure = np.sqrt(nu / correction) > 1e-7
    diff += float(np.sum(((x - y) * sure) ** 2))
    moved += float(np.sum(((x - x0) * sure) ** 2))
    kept, total = kept + int(sure.sum()), total + x.size
  assert kept > 0.8 * total  # the comparison covers most parameters
  return float(np.sqrt(diff / moved))


def _losses(results):
  return [loss for _, loss in results['loss_curve']]


@pytest.mark.parametrize('kind', ['nar', 'dear'])
def test_seed_in_stack_matches_seed_alone(runs, cache_dir, kind):
  base, alone = runs(kind)
  inside = base + '_s0'
  want, got = _results(alone), _results(inside)
  assert set(got) == set(want)  # DEAR's diagnostics included
  assert got['config'] == want['config'] and got['seed'] == 0
  assert [s for s, _ in got['loss_curve']] == [s for s, _ in want['loss_curve']]
  np.testing.assert_allclose(_losses(got), _losses(want), rtol=1e-5)
  assert [s for s, _ in got['val_curve']] == [s for s, _ in want['val_curve']]
  np.testing.assert_allclose([v for _, v in got['val_curve']],
                             [v for _, v in want['val_curve']], atol=1e-9)
  assert got['best_step'] == want['best_step']
  assert got['test_score'] == pytest.approx(want['test_score'], abs=1e-9)
  if kind == 'dear':
    assert got['solver_iterations'] == want['solver_iterations']
    # The distance comes from a solve that stops at a tolerance: it moves
    # with the parameters' rounding drift (by 1.2e-3 relative on this
    # config), far less than between two seeds (seed 1: 21 % away).
    assert got['fixed_point_distance_mean'] == pytest.approx(
        want['fixed_point_distance_mean'], rel=1e-2, abs=1e-6)
    assert _results(base + '_s1')['fixed_point_distance_mean'] != (
        pytest.approx(want['fixed_point_distance_mean'], rel=1e-1))
  last = got['train_steps']
  assert sorted(os.listdir(os.path.join(inside, 'checkpoints'))) == [
      str(last - 2), str(last)]
  a, b = _checkpoint(alone, last), _checkpoint(inside, last)
  mismatch = params_mismatch(a, b, _checkpoint(alone, last - 2))
  print(f'{kind}: parameters differ by {mismatch:.2e} of two steps\' move')
  assert mismatch < 1e-2
  # (a seed's parameters against another seed's differ by far more)
  assert params_mismatch(a, _checkpoint(base + '_s1', last),
                         _checkpoint(alone, last - 2)) > 1
  for x, y in zip(jax.tree.leaves(a['data']), jax.tree.leaves(b['data'])):
    assert np.array_equal(np.asarray(x), np.asarray(y))  # same stream state
  # The other member is another seed, not a copy of this one.
  other = _results(base + '_s1')
  assert other['seed'] == 1 and _losses(other) != _losses(got)
  if kind == 'nar':
    # Seeds 0 and 1 draw batches padded to different hint lengths at some
    # step, so the stack padded in time (and stayed exact).
    cfg = train.data_config(_config(cache_dir, kind))
    lengths = [[batch_lib.num_steps(b) for b, _ in zip(
        input_pipeline.TrainStream('bfs', cfg, s, keep_hints=True), range(6))]
               for s in (0, 1)]
    assert lengths[0] != lengths[1]


def test_stacked_run_killed_mid_save_resumes_each_seed(runs, cache_dir,
                                                       tmp_path, drawn_batches):
  """Killed while saving step 6: seed 1 saved it, seed 0 had not; neither
  wrote results.json. The rerun trains seed 0 alone from step 4 (a sub-stack
  of one inside the stack of two) and only tests seed 1."""
  base, _ = runs('nar')
  dirs = {s: str(tmp_path / f'w_s{s}') for s in (1, 0)}
  for s, d in dirs.items():
    shutil.copytree(f'{base}_s{s}', d)
    os.remove(os.path.join(d, 'results.json'))
  shutil.rmtree(os.path.join(dirs[0], 'checkpoints', '6'))
  config = tiny_config(cache_dir, 'nar')
  got = train.train_seeds(config, [1, 0], [dirs[1], dirs[0]], 'bfs', False)
  # seed 0's steps 5 and 6, nothing for seed 1
  assert len(drawn_batches) == 2
  for s, r in zip((1, 0), got):
    want = _results(f'{base}_s{s}')
    assert r['seed'] == s and set(r) == set(want)
    np.testing.assert_allclose(_losses(r), _losses(want), rtol=1e-5)
    np.testing.assert_allclose(r['val_curve'], want['val_curve'], atol=1e-9)
    assert r['test_score'] == pytest.approx(want['test_score'], abs=1e-9)
    assert _results(dirs[s]) == json.loads(json.dumps(r))


def test_stack_steps_groups_of_shapes_like_seeds_alone():
  """SeedStack against each seed updated alone, on a toy update whose result
  depends on the batch, the seed's key and its step: seeds whose graphs differ
  in size step as separate sub-stacks; hint lengths are padded."""

  def update(params, opt_state, batch, key, step):
    loss = (params['w'] * jnp.sum(batch['inputs']['x']) +
            jnp.sum(batch['hints']['h']) + jax.random.uniform(key) +
            0.01 * step)
    return dict(w=params['w'] + 0.1 * loss), opt_state + 1, loss, {}

  def batch(n, t, value):
    return dict(inputs=dict(x=np.full((2, n), value, np.float32)),
                hints=dict(h=np.full((t, 2, n), value, np.float32)),
                outputs={}, lengths=np.full((2,), t, np.int32))

  seed_list = [3, 5, 7]
  init = [(dict(w=jnp.float32(i + 1)), jnp.int32(0)) for i in range(3)]
  # per step, per seed: (graph size, hint steps)
  shapes = [[(4, 2), (4, 3), (5, 2)], [(4, 4), (4, 4), (4, 2)]]
  stack = seeds.SeedStack(init, seed_list, update, jax.jit(update))
  for step, row in enumerate(shapes):
    batches = [batch(n, t, step + i) for i, (n, t) in enumerate(row)]
    for group in seeds.groups(batches):
      stack.step(group, [batches[i] for i in group], [step] * len(group))
  for i, s in enumerate(seed_list):
    params, opt = init[i]
    for step, row in enumerate(shapes):
      n, t = row[i]
      params, opt, _, _ = update(params, opt, batch(n, t, step + i),
                                 jax.random.fold_in(jax.random.PRNGKey(s),
                                                    step + 1), step + 1)
    got_params, got_opt = stack.get(i)
    assert float(got_params['w']) == pytest.approx(float(params['w']),
                                                   rel=1e-6)
    assert int(got_opt) == 2
  assert [len(g) for g in seeds.groups(
      [batch(4, 2, 0), batch(4, 3, 0), batch(5, 2, 0)])] == [2, 1]


def test_pad_time_is_to_batch_with_more_steps(clrs):
  """Padding hints in time afterwards equals asking to_batch for more steps."""
  sampler, _ = clrs.build_sampler('bfs', num_samples=-1, length=5, seed=0)
  fb = clrs_lib.preprocess(sampler.next(2), 'bfs', None)
  spec = clrs_lib.processed_spec('bfs')
  raw = fb.features.hints[0].data.shape[0]
  short = batch_lib.to_batch(fb, spec, num_steps=raw)
  t = raw + 3
  want = batch_lib.to_batch(fb, spec, num_steps=t)
  got = seeds.pad_time(short, t)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.mark.parametrize('args, message', [
    (['--seed=1', '--seeds=0,1'], 'not both'),
    (['--seeds=0,x'], 'comma-separated integers'),
    (['--seeds=0,0'], 'distinct'),
])
def test_bad_seeds_one_line_exit_2(tmp_path, capsys, args, message):
  with pytest.raises(SystemExit) as e:
    run.main(['run', '--algorithm=bfs', f'--workdir={tmp_path / "w"}'] + args)
  err = capsys.readouterr().err
  assert e.value.code == 2 and message in err
  assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err
