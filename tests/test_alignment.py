"""DEAR's alignment loss: the DP, the recorded trajectory, the gradient, the
teacher checks."""

import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from dear_jax import alignment, clrs_lib, factory, input_pipeline, run, solver, train
from dear_jax.dear import EquilibriumReasoner
from dear_jax.nar import StepwiseNAR


def _brute_force(cost, last, strict):
  """Least sum over every monotone choice of columns <= last, enumerated."""
  s = cost.shape[0]
  choose = (itertools.combinations if strict else
            itertools.combinations_with_replacement)
  sums = [sum(cost[i, j] for i, j in enumerate(cols))
          for cols in choose(range(last + 1), s)]
  return min(sums) if sums else alignment.BIG


@pytest.mark.parametrize('s', [1, 2, 3])
def test_dp_matches_brute_force_enumeration(s):
  rng = np.random.RandomState(s)
  t = 5
  cost = rng.uniform(0, 1, (2 * t, s, t)).astype(np.float32)
  last = np.tile(np.arange(t), 2).astype(np.int32)
  for strict in (True, False):
    got = alignment.monotone_dp(jnp.asarray(cost), jnp.asarray(last), strict)
    want = [_brute_force(c, l, strict) for c, l in zip(cost, last)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
  got = alignment.alignment_cost(jnp.asarray(cost), jnp.asarray(last))
  want = [_brute_force(c, l, strict=l + 1 >= s) for c, l in zip(cost, last)]
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_sample_indices_are_sorted_distinct_and_before_the_answer():
  evaluations = jnp.array([1, 2, 3, 9, 40])
  idx = np.asarray(alignment.sample_indices(jax.random.PRNGKey(0),
                                            evaluations, 3, 40))
  for row, e in zip(idx, np.asarray(evaluations)):
    assert (np.diff(row) >= 0).all()
    assert row.max() <= max(e - 2, 0)
    if e - 1 >= 3:
      assert len(set(row)) == 3


@pytest.fixture(scope='module')
def bfs(tmp_path_factory):
  config = tiny_config(tmp_path_factory.mktemp('cache'), 'dear')
  config.model.hidden = 8
  config.dear.update(grad='jfb', jac_reg_weight=0.0, max_iter_train=12)
  batch = next(input_pipeline.TrainStream('bfs', train.data_config(config), seed=0,
                                          keep_hints=True))
  spec = clrs_lib.processed_spec('bfs')
  teacher = StepwiseNAR(spec, batch, config.model, 'none')
  t_params = teacher.init(jax.random.PRNGKey(5), batch)
  return config, batch, spec, (teacher, t_params)


def _model(bfs, **dear):
  config, batch, spec, teacher = bfs
  config = config.copy_and_resolve_references()
  config.dear.update(dear)
  return EquilibriumReasoner(spec, batch, config.model, config.dear,
                             teacher=teacher)


def test_recorded_iterates_are_the_solvers(bfs):
  """The repeated solve passes through the same points: its last point is
  the solver's answer, after the same number of evaluations."""
  model = _model(bfs, align_weight=1.0, grad='ift', tol=0.05)
  _, batch, _, _ = bfs
  params = model.init(jax.random.PRNGKey(0), batch)
  key = jax.random.PRNGKey(1)
  f, h0, args = model.equilibrium(params, batch, training=True, key=key)
  h_star, stats = solver.solve(f, h0, params['processor'], args,
                               config=model.solver_cfg, training=True)
  points, evals = jax.jit(lambda p: alignment.record_iterates(
      f, h0, p, args, model.solver_cfg, 12))(params['processor'])
  np.testing.assert_array_equal(evals, stats.iterations)
  last = jnp.take_along_axis(points, (evals - 1)[:, None, None, None],
                             axis=1)[:, 0]
  assert bool(stats.converged.all())
  np.testing.assert_allclose(last, h_star, rtol=1e-5, atol=1e-6)


def _old_record_iterates(f, h0, params, args, cfg, cap):
  """alignment.record_iterates as it was, with its own copy of the loop."""
  make = solver.make_solver(cfg)

  def under_tol(x, fx, mask):
    r, _ = solver._residual(x, fx, mask, cfg.tol_mode)
    return ~jnp.isfinite(r) | (r < cfg.tol)

  def one(h0, args):
    fg = lambda h: f(h, params, *args)
    mask = jnp.ones(h0.shape[:1], h0.dtype)
    st, pairs = solver._start(make, fg, h0)
    buf = jnp.zeros((cap,) + h0.shape, h0.dtype)
    count, done = jnp.int32(0), jnp.bool_(False)
    for x, fx in pairs:
      buf = buf.at[count].set(x)
      count, done = count + 1, under_tol(x, fx, mask)

    def body(carry):
      st, buf, count, _ = carry
      st, x, fx = make.step(fg, st)
      return st, buf.at[count].set(x), count + 1, under_tol(x, fx, mask)

    _, buf, count, _ = jax.lax.while_loop(
        lambda c: ~c[3] & (c[2] < cap), body, (st, buf, count, done))
    return buf, count

  h0, params, args = jax.lax.stop_gradient((h0, params, tuple(args)))
  return jax.vmap(one)(h0, args)


@pytest.mark.parametrize('method', ['anderson', 'broyden'])
def test_recorded_iterates_are_the_old_loops(bfs, method):
  model = _model(bfs, align_weight=1.0, tol=0.01, method=method)
  _, batch, _, _ = bfs
  params = model.init(jax.random.PRNGKey(0), batch)
  f, h0, args = model.equilibrium(params, batch, training=True,
                                  key=jax.random.PRNGKey(1))
  new = jax.jit(lambda p: alignment.record_iterates(
      f, h0, p, args, model.solver_cfg, 12))(params['processor'])
  old = jax.jit(lambda p: _old_record_iterates(
      f, h0, p, args, model.solver_cfg, 12))(params['processor'])
  np.testing.assert_array_equal(new[1], old[1])
  np.testing.assert_array_equal(new[0], old[0])
  assert 1 < int(new[1].min()) and int(new[1].max()) <= 12


def test_alignment_term_changes_the_processor_gradient(bfs):
  _, batch, _, _ = bfs
  off = _model(bfs)
  on = _model(bfs, align_weight=0.5)
  params = on.init(jax.random.PRNGKey(0), batch)
  key = jax.random.PRNGKey(1)

  def grads(model):
    return jax.jit(jax.value_and_grad(lambda p: model.loss(p, batch, key),
                                      has_aux=True))(params)

  (l0, _), g0 = grads(off)
  (l1, aux), g1 = grads(on)
  assert float(aux['align_loss']) > 0
  np.testing.assert_allclose(float(l1) - float(l0),
                             0.5 * float(aux['align_loss']), rtol=1e-4)
  # With the 1-step gradient the answer is a constant: the whole difference
  # comes through the recomputed trajectory states (the release's: none).
  flat = lambda t: jnp.concatenate([x.ravel() for x in
                                    jax.tree_util.tree_leaves(t)])
  diff = flat(g1['processor']) - flat(g0['processor'])
  assert float(jnp.linalg.norm(diff)) > 1e-2 * float(
      jnp.linalg.norm(flat(g0['processor'])))
  # Evaluation ignores the teacher.
  p0, _ = jax.jit(off.predict)(params, batch)
  p1, a1 = jax.jit(on.predict)(params, batch)
  assert 'align_loss' not in a1
  for k in p0:
    np.testing.assert_array_equal(p0[k], p1[k])


def _write(workdir, **results):
  workdir.mkdir(parents=True, exist_ok=True)
  base = dict(model='nar', hint_mode='none', algorithm='bfs',
              config=dict(model=dict(hidden=8, processor='triplet_gmpnn',
                                     nb_triplet_fts=8,
                                     encoder_init='xavier_on_scalars')))
  base.update(results)
  (workdir / 'results.json').write_text(json.dumps(base))
  return str(workdir)


@pytest.mark.parametrize('bad,message', [
    (None, 'no finished run'),
    (dict(model='dear'), 'must be --model=nar'),
    (dict(hint_mode='encoded_decoded'), 'must be --model=nar'),
    (dict(algorithm='dfs'), 'trained on dfs'),
    (dict(config=dict(model=dict(hidden=16))), 'hidden size 16'),
])
def test_teacher_mismatch_is_one_line(bfs, tmp_path, bad, message):
  config, batch, spec, _ = bfs
  workdir = (str(tmp_path / 'missing') if bad is None
             else _write(tmp_path / 'w', **bad))
  with pytest.raises(ValueError, match=message) as e:
    factory.load_teacher(workdir, spec, batch, config.model)
  assert '\n' not in str(e.value)


def test_cli_missing_teacher_exits_2(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    run.main(['run', '--algorithm=bfs', f'--workdir={tmp_path / "w"}',
              '--config.dear.align_weight=0.01',
              f'--config.dear.align_teacher={tmp_path / "none"}'])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'align_teacher' in err[0], err


def test_alignment_trains_end_to_end_with_a_trained_teacher(tmp_path):
  """A no-hint NAR run is the teacher of a DEAR run with alignment and
  stochastic iterations, both through train_and_evaluate: the student's
  training batches carry the hints its teacher's step count comes from."""
  teacher_cfg = tiny_config(tmp_path / 'cache', 'nar', steps=2)
  teacher_cfg.nar.hint_mode = 'none'
  teacher_dir = str(tmp_path / 'teacher')
  train.train_and_evaluate(teacher_cfg, teacher_dir, 'bfs', progress=False)
  student = tiny_config(tmp_path / 'cache', 'dear', steps=2)
  student.dear.update(align_weight=0.5, align_teacher=teacher_dir,
                      stochastic_alpha=0.5, diagnostics=False)
  assert factory.uses_hints(student)
  r = train.train_and_evaluate(student, str(tmp_path / 'student'), 'bfs',
                               progress=False)
  assert r['train_steps'] == 2 and np.isfinite(r['loss_curve'][-1][1])
  # Stored relative to the run, read back as the teacher's folder: the run
  # folder can move, and a second call finds the run finished.
  assert r['config']['dear']['align_teacher'] == os.path.join('..', 'teacher')
  assert train.stored_config(r['config'], str(tmp_path / 'student')
                             ).dear.align_teacher == teacher_dir
  again = train.train_and_evaluate(student, str(tmp_path / 'student'), 'bfs',
                                   progress=False)
  assert again['train_seconds'] == r['train_seconds']
