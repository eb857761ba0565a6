"""The fixed-point checks as they were before `dear_jax.diagnostics` read them
off one trajectory: separate solves per tolerance, a new Anderson solve from
the answer for the reference, 30 power iterations, new jit wrappers per call.
Kept for benchmarks/run_cost.py (and its test) only: the cost it measures
and the figures the one-pass checks must reproduce."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dear_jax import solver


def _per_graph_check(model, params, batch, key, ref_tol, ref_cap, power_iters):
  f, h0, args = model.equilibrium(params, batch, training=False, key=key)
  proc = params['processor']
  h, _ = solver.solve(f, h0, proc, args, config=model.solver_cfg, training=False)
  ref_cfg = model.with_solver(tol=ref_tol, tol_mode='rel', max_iter_eval=ref_cap).solver_cfg
  # continue from h (DEAR has no padded nodes, so h is also a valid "h0")
  h_ref, ref = solver.solve(f, h, proc, args, config=ref_cfg, training=False)
  b = h.shape[0]
  dist = (jnp.linalg.norm((h - h_ref).reshape(b, -1), axis=1)
          / (jnp.linalg.norm(h_ref.reshape(b, -1), axis=1) + 1e-12))
  rho = solver.spectral_radius(f, h, proc, args, jax.random.fold_in(key, 7),
                               iterations=power_iters, settle=0)
  return dict(distance=dist, ref_converged=ref.converged, ref_iterations=ref.iterations,
              spectral_radius=rho)


def fixed_point_check(model, params, evalset, *, ref_tol=1e-5, ref_cap=1000,
                      power_iters=30) -> dict:
  check = jax.jit(functools.partial(_per_graph_check, model, ref_tol=ref_tol,
                                    ref_cap=ref_cap, power_iters=power_iters))
  parts = [jax.device_get(check(params, batch, jax.random.PRNGKey(0)))
           for batch in evalset.batches]
  n = evalset.num_samples
  per = {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}
  dist = per['distance']
  return dict(
      fixed_point_distance_mean=float(np.mean(dist)),
      fixed_point_distance_p95=float(np.percentile(dist, 95)),
      fixed_point_reference=dict(tol=ref_tol, max_iter=ref_cap,
                                 converged_fraction=float(per['ref_converged'].mean()),
                                 extra_iterations_mean=float(per['ref_iterations'].mean())),
      spectral_radius_mean=float(np.mean(per['spectral_radius'])),
      spectral_radius_p95=float(np.percentile(per['spectral_radius'], 95)),
      fixed_point_distance=dist.tolist())


def score_by_tol(model, params, evalset, evaluate, *, operating=None,
                 factors=(10, 100), cap_factor=4) -> dict:
  cfg = model.solver_cfg
  scores, iters = {}, {}
  for factor in (1,) + tuple(factors):
    m = model if factor == 1 else model.with_solver(
        tol=cfg.tol / factor, max_iter_eval=cfg.max_iter_eval * cap_factor)
    if factor == 1 and operating is not None:
      r = operating
    else:
      r = evaluate(m, jax.jit(m.predict), params, evalset)
    key = f'{cfg.tol / factor:.3g}'
    scores[key] = r['score']
    iters[key] = r.get('solver_iters_mean')
  vals = list(scores.values())
  return dict(score_by_tol=scores, score_by_tol_spread=100 * (max(vals) - min(vals)),
              iters_by_tol=iters)


def checks(model, params, evalset, evaluate, *, operating=None, ref_tol=1e-5,
           ref_cap=1000) -> dict:
  """What train.py recorded before: both old functions, in that order."""
  out = fixed_point_check(model, params, evalset, ref_tol=ref_tol, ref_cap=ref_cap)
  out.update(score_by_tol(model, params, evalset, evaluate, operating=operating))
  return out
