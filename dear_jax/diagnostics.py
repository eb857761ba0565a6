"""Is DEAR's answer a fixed point? Checks run on a trained model's test set.

A small relative residual at the first hit says little when the map is barely
contractive (the residual of a slow iteration is small far from H*). So we
measure, per test graph:
  fixed-point distance  ||h - h_ref|| / ||h_ref||, where h_ref is the same
                        solve (same Anderson history) continued past the
                        answer h to a tight tolerance;
  spectral radius       of the map's Jacobian at h (power iteration on JVPs):
                        < 1 attracts, near 1 crawls;
and the test score as the tolerance tightens (score_by_tol): predictions that
change when the solve goes on were read off an iterate, not off H*.

All of it comes from one trajectory per test batch from H0 = 0
(`solver.record`): the answer at the operating tolerance and cap (predict's),
the first hits at the tighter tolerances (each what a separate solve with
that tolerance and cap returns), then the reference. A graph whose best
residual has not halved in `stall` evaluations stops there, its reference
unconverged (float32 plateaus). The reference's continuation and the spectral
radius run at full float32 matmul precision (no TF32 on GPUs, where jax
would use it by default); the operating and tighter answers keep the
model's own precision, so they stay predict's. The jitted check is built
once per (model, settings) and reused.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dear_jax import solver
from dear_jax.groups import eval_chunk

PRECISE = 'highest'   # jax.default_matmul_precision of the reference and radius


@dataclasses.dataclass(frozen=True)
class CheckSettings:
  ref_tol: float = 1e-5     # the reference's relative tolerance (dear.check_tol)
  ref_cap: int = 1000       # its cap, f evaluations from H0 (dear.check_max_iter)
  stall: int = 100          # stop a reference whose best residual has not halved
  factors: tuple = (10, 100)  # score_by_tol at tol / factor ...
  cap_factor: int = 4       # ... with the eval cap x cap_factor
  power_iters: int = 30     # the spectral radius's cap on JVPs


def targets(cfg: solver.SolverConfig, s: CheckSettings):
  """(operating and tighter Targets, the reference Target)."""
  tight = tuple(solver.Target(cfg.tol / k, cfg.max_iter_eval * s.cap_factor)
                for k in s.factors)
  return ((solver.Target(cfg.tol, cfg.max_iter_eval),) + tight,
          solver.Target(s.ref_tol, s.ref_cap, s.stall))


def _batch_checks(model, s: CheckSettings, params, batch):
  """One test batch: (hard predictions and SolveStats per tolerance, the
  per-graph fixed-point figures)."""
  key = jax.random.PRNGKey(0)   # predict's
  f, h0, args = model.equilibrium(params, batch, training=False, key=key)
  proc, cfg = params['processor'], model.solver_cfg
  answers, reference = targets(cfg, s)
  chunk = eval_chunk()   # as predict's solve, so its answers are predict's
  if jax.default_backend() == 'cpu':   # float32 matmuls are exact there: one loop
    rec = solver.record(f, h0, proc, args, config=cfg, targets=answers + (reference,),
                        chunk=chunk)
  else:
    rec = solver.record(f, h0, proc, args, config=cfg, targets=answers,
                        then=(reference,), then_precision=PRECISE, chunk=chunk)
  stats = [st for _, st in rec.answers[:-1]]

  def decode(h):   # predict's readout at each answer (lax.map: compiled once)
    h = solver.polish(f, h, h0, proc, args, config=cfg)
    return h, model.hard(model.readout(params, args, h, False, key)[0])
  hs, preds = jax.lax.map(decode, jnp.stack([h for h, _ in rec.answers[:-1]]))
  preds = [jax.tree.map(lambda p, i=i: p[i], preds) for i in range(len(stats))]
  h = hs[0]
  h_ref, ref = rec.answers[-1]
  b = h.shape[0]
  dist = (jnp.linalg.norm((h - h_ref).reshape(b, -1), axis=1)
          / (jnp.linalg.norm(h_ref.reshape(b, -1), axis=1) + 1e-12))
  with jax.default_matmul_precision(PRECISE):
    rho = solver.spectral_radius(f, h, proc, args, jax.random.fold_in(key, 7),
                                 iterations=s.power_iters, chunk=chunk)
  extra = jnp.maximum(ref.iterations - stats[0].iterations, 0)
  return preds, stats, dict(distance=dist, ref_converged=ref.converged,
                            ref_iterations=extra, spectral_radius=rho)


_COMPILED = {}


def _compiled(model, s: CheckSettings):
  """The jitted batch check of (model, its solver settings, s), built once."""
  key = (id(model), model.solver_cfg, s)
  hit = _COMPILED.get(key)
  if hit is None or hit[0] is not model:
    while len(_COMPILED) >= 8:
      _COMPILED.pop(next(iter(_COMPILED)))
    hit = _COMPILED[key] = (model, jax.jit(functools.partial(_batch_checks, model, s)))
  return hit[1]


def checks(model, params, evalset, evaluate, *, operating=None,
           settings: CheckSettings = CheckSettings()) -> dict:
  """The fixed-point checks of a split, results.json's keys:
  fixed_point_distance_mean/_p95 and per graph fixed_point_distance,
  fixed_point_reference {tol, max_iter, converged_fraction,
  extra_iterations_mean (evaluations past the answer)},
  spectral_radius_mean/_p95; score_by_tol {tol: score} at the operating
  tolerance and tol / factor (cap x cap_factor), score_by_tol_spread (max -
  min, points), iters_by_tol {tol: mean iterations}.

  `evaluate(model, predict, params, split)` -> dict with 'score'
  (train.evaluate) scores the recorded answers; `operating`, if given, is its
  result at the operating tolerance (not scored again)."""
  check = _compiled(model, settings)
  evalset = evalset.only_its_graphs()  # checking costs per graph
  outs = [jax.device_get(check(params, batch)) for batch in evalset.batches]
  n = evalset.num_samples
  per = {k: np.concatenate([o[2][k] for o in outs])[:n] for k in outs[0][2]}
  dist = per['distance']
  cfg = model.solver_cfg
  scores, iters = {}, {}
  for i, factor in enumerate((1,) + tuple(settings.factors)):
    if i == 0 and operating is not None:
      r = operating
    else:
      answers = iter([(o[0][i], {'solver': o[1][i]}) for o in outs])
      r = evaluate(model, lambda params, batch: next(answers), params, evalset)
    key = f'{cfg.tol / factor:.3g}'
    scores[key] = r['score']
    iters[key] = r.get('solver_iters_mean')
  vals = list(scores.values())
  return dict(
      fixed_point_distance_mean=float(np.mean(dist)),
      fixed_point_distance_p95=float(np.percentile(dist, 95)),
      fixed_point_reference=dict(
          tol=settings.ref_tol, max_iter=settings.ref_cap,
          converged_fraction=float(per['ref_converged'].mean()),
          extra_iterations_mean=float(per['ref_iterations'].mean())),
      spectral_radius_mean=float(np.mean(per['spectral_radius'])),
      spectral_radius_p95=float(np.percentile(per['spectral_radius'], 95)),
      fixed_point_distance=dist.tolist(),
      score_by_tol=scores, score_by_tol_spread=100 * (max(vals) - min(vals)),
      iters_by_tol=iters)
