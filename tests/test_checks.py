"""The one-pass fixed-point checks against the separate solves they replace
(benchmarks/old_checks.py, the previous implementation kept as the
reference)."""

import jax
import numpy as np
import pytest

from benchmarks import old_checks
from conftest import tiny_config
from dear_jax import clrs_lib, diagnostics, input_pipeline, splits, train


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A tiny DEAR on BFS after 2 training steps, its 10-graph test split in
  batches of 8 (the last padded; on a CPU solved one graph at a time) and
  operating tolerance 1e-2."""
  config = tiny_config(tmp_path_factory.mktemp('cache'), 'dear')
  config.data.test_num_samples = 10
  config.data.eval_batch_size = 8
  config.dear.update(tol=1e-2, max_iter_eval=20)
  test = splits.load_split('bfs', 'test', train.data_config(config),
                           keep_hints=False)
  stream = input_pipeline.TrainStream('bfs', train.data_config(config), seed=0,
                                      keep_hints=False)
  model, step, params, opt_state = train.setup(
      config, clrs_lib.processed_spec('bfs'), test.batches[0],
      jax.random.PRNGKey(0), donate=False)
  for i in range(2):
    params, opt_state, _, _ = step(params, opt_state, next(stream),
                                   jax.random.PRNGKey(i))
  return model, params, test


def test_answers_and_scores_are_the_separate_solves(trained):
  """Per batch and tolerance the recorded answers decode to predict's
  predictions, bit for bit, with the same iterations; score_by_tol and
  iters_by_tol equal the old separate solves'."""
  model, params, test = trained
  settings = diagnostics.CheckSettings(ref_cap=200)
  check = diagnostics._compiled(model, settings)  # pylint: disable=protected-access
  cfg = model.solver_cfg
  iters = []
  for batch in test.batches:
    preds, stats, _ = check(params, batch)
    for i, factor in enumerate((1, 10, 100)):
      m = model if factor == 1 else model.with_solver(
          tol=cfg.tol / factor, max_iter_eval=cfg.max_iter_eval * 4)
      want, aux = jax.jit(m.predict)(params, batch)
      for k in want:
        np.testing.assert_array_equal(preds[i][k], want[k])
      for a, b in zip(stats[i], aux['solver']):
        np.testing.assert_array_equal(a, b)
      iters.append(np.asarray(stats[i].iterations))
  assert (iters[2] > iters[0]).any()   # the tighter solves went on
  new = diagnostics.checks(model, params, test, train.evaluate, settings=settings)
  old = old_checks.score_by_tol(model, params, test, train.evaluate)
  for k in ('score_by_tol', 'iters_by_tol', 'score_by_tol_spread'):
    assert new[k] == old[k], k
  operating = train.evaluate(model, jax.jit(model.predict), params, test)
  assert new['score_by_tol']['0.01'] == operating['score']


def test_fixed_point_figures_agree_with_the_old_reference(trained):
  """The reference now continues the same trajectory instead of a new solve
  from the answer: both approach the same H*, so the distances agree, up to
  the references' own distance to H* (on this batch's slowest graph, at
  relative residual 1e-5, 13 % of its distance); the spectral radius to
  the power iteration's accuracy."""
  model, params, test = trained
  settings = diagnostics.CheckSettings(ref_cap=300)
  new = diagnostics.checks(model, params, test, train.evaluate, settings=settings)
  old = old_checks.fixed_point_check(model, params, test, ref_cap=300)
  assert new['fixed_point_reference']['converged_fraction'] == 1.0
  assert old['fixed_point_reference']['converged_fraction'] == 1.0
  dist = np.asarray(new['fixed_point_distance'])
  assert len(dist) == 10 and (dist > 1e-4).all()   # tol 1e-2: visibly off H*
  np.testing.assert_allclose(dist, old['fixed_point_distance'], rtol=0.2)
  np.testing.assert_allclose(np.median(dist), np.median(old['fixed_point_distance']),
                             rtol=0.01)
  np.testing.assert_allclose(new['spectral_radius_mean'], old['spectral_radius_mean'],
                             rtol=0.05)
  assert new['fixed_point_reference']['extra_iterations_mean'] > 0


def test_a_stalled_reference_counts_as_unconverged(trained):
  """A reference tolerance float32 cannot reach stops once its best residual
  has not halved in `stall` evaluations, well before its cap."""
  model, params, test = trained
  settings = diagnostics.CheckSettings(ref_tol=1e-30, ref_cap=5000, stall=20)
  r = diagnostics.checks(model, params, test, train.evaluate, settings=settings)
  ref = r['fixed_point_reference']
  assert ref['converged_fraction'] == 0.0
  assert 20 <= ref['extra_iterations_mean'] < 1000


def test_checks_compile_once(trained, monkeypatch):
  """A second call (same model and settings) reuses the compiled check."""
  model, params, test = trained
  settings = diagnostics.CheckSettings(ref_cap=50, power_iters=4)
  traces = []
  real = model.equilibrium

  def counting(*args, **kwargs):
    traces.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(model, 'equilibrium', counting)
  first = diagnostics.checks(model, params, test, train.evaluate, settings=settings)
  n = len(traces)
  again = diagnostics.checks(model, params, test, train.evaluate, settings=settings)
  # two shapes: a full batch of 8, and the last cut to its 2 graphs
  assert n == 2 and len(traces) == 2 and first == again


def test_a_sample_of_graphs_costs_only_its_graphs(trained, monkeypatch):
  """Checks on the first 3 graphs solve a batch of 3, not the batch of 8
  they come in, and report what the whole batch's checks report for them."""
  model, params, test = trained
  settings = diagnostics.CheckSettings(ref_cap=200, power_iters=6)
  sample = test.head(3)
  shapes = []
  real = model.equilibrium

  def recording(params, batch, **kwargs):
    shapes.append(batch['lengths'].shape[0])
    return real(params, batch, **kwargs)

  monkeypatch.setattr(model, 'equilibrium', recording)
  cut = diagnostics.checks(model, params, sample, train.evaluate,
                           settings=settings)
  assert shapes == [3]
  monkeypatch.setattr(splits.EvalSet, 'only_its_graphs', lambda s: s)
  whole = diagnostics.checks(model, params, sample, train.evaluate,
                             settings=settings)
  assert shapes == [3, 8]
  assert len(cut['fixed_point_distance']) == 3
  for k in ('score_by_tol', 'iters_by_tol', 'fixed_point_reference'):
    assert cut[k] == whole[k], k
  np.testing.assert_allclose(cut['fixed_point_distance'],
                             whole['fixed_point_distance'], rtol=1e-5)
  np.testing.assert_allclose(cut['spectral_radius_mean'],
                             whole['spectral_radius_mean'], rtol=1e-5)
