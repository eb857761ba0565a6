"""Tests for dear_jax.solver: gradients, per-graph stopping, tolerances, guards."""
import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dear_jax import solver as solver_lib
from dear_jax.solver import (CONVERGED, MAX_ITER, NONFINITE, Anderson, SolveStats,
                             SolverConfig, jacobian_penalty, residual_history, solve,
                             spectral_radius)

B, N, H, D = 3, 5, 8, 4
TIGHT = dict(tol=1e-6, tol_mode='abs', max_iter_train=200, max_iter_eval=200)
# one compilation per (f, config, training, shapes) instead of op-by-op dispatch
jsolve = jax.jit(solve, static_argnames=('f', 'config', 'training'))


def gnn(h, p, adj, x):
  """One graph: h' = tanh(A h W + x U + b); row-normalised A and ||W||_2 = 0.5
  make it a 0.5-contraction."""
  return jnp.tanh(adj @ h @ p['W'] + x @ p['U'] + p['b'])


@pytest.fixture(scope='module')
def problem():
  rng = np.random.default_rng(0)   # numpy: eager jax ops would each compile
  w = rng.normal(size=(H, H))
  params = dict(W=0.5 * w / np.linalg.norm(w, 2), U=rng.normal(size=(D, H)),
                b=0.1 * rng.normal(size=H))
  adj = (rng.uniform(size=(B, N, N)) < 0.5) + np.eye(N)
  adj = adj / adj.sum(-1, keepdims=True)
  # graphs of different difficulty: small inputs keep tanh linear (slow), big ones saturate
  x = rng.normal(size=(B, N, D)) * np.array([0.1, 1.0, 3.0])[:, None, None]
  c = rng.normal(size=(B, N, H))
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), (params, adj, x, c))


@pytest.fixture(scope='module')
def problem64(problem):
  """The same problem as numpy float64 arrays (for jax.enable_x64 tests)."""
  return jax.tree.map(lambda a: np.asarray(a, np.float64), problem)


def solve_loss(cfg, params, adj, x, c):
  h, _ = solve(gnn, jnp.zeros((B, N, H)), params, (adj, x), config=cfg, training=True)
  return jnp.sum(h * c)


@pytest.fixture(scope='module')
def unrolled_grad(problem):
  params, adj, x, c = problem

  def loss(p, x):
    fb = jax.vmap(gnn, in_axes=(0, None, 0, 0))
    h = jax.lax.fori_loop(0, 100, lambda _, h: fb(h, p, adj, x), jnp.zeros((B, N, H)))
    return jnp.sum(h * c)
  return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)


def flat(tree):
  return jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(tree)])


def rel_err(a, b):
  return float(jnp.linalg.norm(flat(a) - flat(b)) / jnp.linalg.norm(flat(b)))


@pytest.fixture(scope='module')
def grad_of(problem):
  """cfg -> (loss, (d loss/d params, d loss/d x)), compiled once per config."""
  params, adj, x, c = problem

  @functools.cache
  def grads(cfg):
    loss = lambda p, x: solve_loss(cfg, p, adj, x, c)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
  return grads


@pytest.mark.parametrize('method,backward', [('anderson', 'gmres'), ('fixed_point', 'bicgstab'),
                                             ('anderson', 'anderson')])
def test_ift_matches_unrolled(grad_of, unrolled_grad, method, backward):
  _, g = grad_of(SolverConfig(method=method, grad='ift', backward_solver=backward,
                              backward_tol=1e-6, backward_max_iter=60, **TIGHT))
  assert rel_err(g[0], unrolled_grad[0]) < 1e-3   # params (measured ~1e-6)
  assert rel_err(g[1], unrolled_grad[1]) < 1e-3   # inputs


def test_ift_matches_finite_differences(problem, grad_of):
  params, adj, x, c = problem
  cfg = SolverConfig(method='anderson', grad='ift', **TIGHT)
  _, (gp, gx) = grad_of(cfg)
  loss = jax.jit(lambda p, x: solve_loss(cfg, p, adj, x, c))
  keys = jax.random.split(jax.random.PRNGKey(1), 2)
  dp = jax.tree.map(lambda a: jax.random.normal(keys[0], a.shape), params)
  dx = jax.random.normal(keys[1], x.shape)
  eps = 1e-2
  for (tp, tx), exact in [((dp, 0 * dx), jnp.vdot(flat(gp), flat(dp))),
                          ((jax.tree.map(jnp.zeros_like, dp), dx), jnp.vdot(gx, dx))]:
    at = lambda s: loss(jax.tree.map(lambda a, t: a + s * eps * t, params, tp), x + s * eps * tx)
    fd = (8 * (at(1) - at(-1)) - (at(2) - at(-2))) / (12 * eps)   # O(eps^4) stencil
    assert abs(float(fd - exact)) < 2e-3 * abs(float(exact))


def test_phantom_approaches_ift(grad_of):
  ift = grad_of(SolverConfig(method='fixed_point', grad='ift', **TIGHT))[1]
  errs = [rel_err(grad_of(SolverConfig(method='fixed_point', grad='phantom', phantom_steps=k,
                                       **TIGHT))[1][0], ift[0]) for k in (1, 5, 20)]
  assert errs[0] > errs[1] > errs[2] and errs[2] < 0.02, errs


def test_jfb_is_detached(grad_of):
  loss_jfb, (gp, gx) = grad_of(SolverConfig(method='fixed_point', grad='jfb', **TIGHT))
  assert float(jnp.abs(flat(gp)).max()) == 0 and float(jnp.abs(gx).max()) == 0
  loss_ift, _ = grad_of(SolverConfig(method='fixed_point', grad='ift', **TIGHT))
  # same forward in two compiled programs: float32 sums of 120 terms may reassociate
  np.testing.assert_allclose(loss_jfb, loss_ift, rtol=1e-4)


def test_ift_stores_no_per_iteration_activations(problem):
  params, adj, x, c = problem
  sizes = []
  for cap in (5, 300):  # tol 0 never met: every graph runs to the cap
    cfg = SolverConfig(method='fixed_point', grad='ift', backward_solver='bicgstab', tol=1e-30,
                       tol_mode='abs', max_iter_train=cap)
    fn = jax.jit(jax.grad(lambda p, x: solve_loss(cfg, p, adj, x, c)))
    assert 'scan' not in str(jax.make_jaxpr(fn)(params, x))
    sizes.append(fn.lower(params, x).compile().memory_analysis().temp_size_in_bytes)
  assert sizes[0] == sizes[1]


def test_per_graph_first_hit_matches_solo(problem):
  params, adj, x, _ = problem
  cfg = SolverConfig(method='anderson', tol=1e-3)
  h, st = jsolve(gnn, jnp.zeros((B, N, H)), params, (adj, x), config=cfg, training=True)
  assert bool(st.converged.all()) and len(set(st.iterations.tolist())) == B
  for i in range(B):
    hi, si = jsolve(gnn, jnp.zeros((1, N, H)), params, (adj[i:i + 1], x[i:i + 1]),
                   config=cfg, training=True)
    assert int(si.iterations[0]) == int(st.iterations[i])
    np.testing.assert_allclose(hi[0], h[i], atol=1e-6)
  # the hardest graph was still iterating when the others stopped; one f evaluation
  # less and it is not yet under tol, so it returned its first under-tol iterate
  i = int(jnp.argmax(st.iterations))
  short = dataclasses.replace(cfg, max_iter_train=int(st.iterations[i]) - 1)
  _, s2 = jsolve(gnn, jnp.zeros((B, N, H)), params, (adj, x), config=short, training=True)
  assert not bool(s2.converged[i]) and bool(s2.converged[np.argmin(st.iterations)])


def test_first_hit_is_exact_picard_iterate(problem64):
  """fixed_point with damping 1 evaluates f at x_k = f^k(0); the answer must be the
  first x_k with ||f(x_k) - x_k|| / (||f(x_k)|| + 1e-9) < tol, after k + 1 evaluations.
  float64, so no residual lies within rounding of tol."""
  params, adj, x, _ = problem64
  tol = 1e-3
  with jax.enable_x64(True):
    h, st = jsolve(gnn, jnp.zeros((B, N, H), jnp.float64), params, (adj, x), training=False,
                   config=SolverConfig(method='fixed_point', tol=tol))
    assert h.dtype == jnp.float64 and st.residual.dtype == jnp.float64
    for i in range(B):
      xk = np.zeros((N, H))
      for k in range(40):
        fx = np.tanh(adj[i] @ xk @ params['W'] + x[i] @ params['U'] + params['b'])
        r = np.linalg.norm(fx - xk) / (np.linalg.norm(fx) + 1e-9)
        if r < tol:
          break
        xk = fx
      assert abs(r - tol) > 1e-3 * tol and int(st.iterations[i]) == k + 1
      np.testing.assert_allclose(h[i], xk, atol=1e-12)
      np.testing.assert_allclose(st.residual[i], r, rtol=1e-9)


def test_residual_history_of_picard_is_that_of_its_iterates(problem):
  params, adj, x, _ = problem
  hist = residual_history(gnn, jnp.zeros((B, N, H)), params, (adj, x), evaluations=6,
                          config=SolverConfig(method='fixed_point'))
  assert hist.shape == (B, 6)
  for i in range(B):
    xk = jnp.zeros((N, H))
    for k in range(6):
      fx = gnn(xk, params, adj[i], x[i])
      np.testing.assert_allclose(
          hist[i, k], jnp.linalg.norm(fx - xk) / (jnp.linalg.norm(fx) + 1e-9), rtol=1e-4)
      xk = fx


@pytest.mark.parametrize('method', ['anderson', 'broyden'])
def test_residual_history_follows_solve(problem64, method):
  """Capped at k evaluations, `solve` returns the lowest-residual iterate of the
  first k: its residual is min(history[:k]) (float64: ties are not rounding)."""
  params, adj, x, _ = problem64
  cfg = SolverConfig(method=method, tol=1e-30)
  with jax.enable_x64(True):
    h0 = jnp.zeros((B, N, H), jnp.float64)
    hist = np.asarray(residual_history(gnn, h0, params, (adj, x), config=cfg, evaluations=7))
    for k in (1, 3, 7):
      _, st = jsolve(gnn, h0, params, (adj, x), training=False,
                     config=dataclasses.replace(cfg, max_iter_eval=k))
      np.testing.assert_allclose(st.residual, hist[:, :k].min(1), rtol=1e-9)
  assert bool((hist[:, -1] < hist[:, 0]).all())


def test_lowest_residual_iterate_is_returned_at_the_cap(problem64):
  """torchdeq's rule: a graph that never gets under tol returns its best iterate,
  not its last. ||W|| = 3 makes plain iteration oscillate on the weakly driven
  graph 0, so its best iterate is an early one."""
  params, adj, x, _ = problem64
  params = dict(params, W=6 * params['W'])
  cfg = SolverConfig(method='fixed_point', tol=1e-30, max_iter_eval=12)
  with jax.enable_x64(True):
    h0 = jnp.zeros((B, N, H), jnp.float64)
    hist = np.asarray(residual_history(gnn, h0, params, (adj, x), config=cfg, evaluations=12))
    h, st = jsolve(gnn, h0, params, (adj, x), training=False, config=cfg)
    h = np.asarray(h)
    fh = np.tanh(np.einsum('bij,bjk->bik', adj, h) @ params['W']
                 + x @ params['U'] + params['b'])
  r = np.linalg.norm((fh - h).reshape(B, -1), axis=1) / (
      np.linalg.norm(fh.reshape(B, -1), axis=1) + 1e-9)
  np.testing.assert_allclose(r, hist.min(1), rtol=1e-5)   # >= 10 eps64 / r at r ~ 4e-10
  assert (hist.argmin(1) < 11).any(), 'no graph where best != last: test cannot tell'
  assert st.result.tolist() == [MAX_ITER] * B and not bool(st.converged.any())


def _torchdeq_anderson(f, x0, m, lam, beta, iters):
  """numpy transcription of torchdeq's anderson() (solver/anderson.py) for one
  sample: returns the points X_k at which f is evaluated, in order."""
  d = x0.size
  X, F = np.zeros((m, d)), np.zeros((m, d))
  X[0], F[0] = x0.ravel(), f(x0.ravel())
  X[1], F[1] = F[0], f(F[0])
  H = np.zeros((m + 1, m + 1))
  H[0, 1:] = H[1:, 0] = 1
  y = np.zeros(m + 1)
  y[0] = 1
  points = [X[0].copy(), X[1].copy()]
  for k in range(2, iters):
    n = min(k, m)
    G = F[:n] - X[:n]
    H[1:n + 1, 1:n + 1] = G @ G.T + lam * np.eye(n)
    alpha = np.linalg.solve(H[:n + 1, :n + 1], y[:n + 1])[1:n + 1]
    X[k % m] = beta * (alpha @ F[:n]) + (1 - beta) * (alpha @ X[:n])
    F[k % m] = f(X[k % m])
    points.append(X[k % m].copy())
  return np.stack(points)


@pytest.mark.parametrize('relative,beta', [(False, 1.0), (False, 0.7), (True, 1.0)])
def test_anderson_matches_torchdeq_transcription(problem64, relative, beta):
  """Anderson's evaluated points equal an independent numpy transcription of
  torchdeq's update (float64); the relative ridge is lam = ridge * mean ||g_i||^2,
  which the transcription is given explicitly per step."""
  params, adj, x, _ = problem64
  f = lambda v: np.tanh(adj[1] @ v.reshape(N, H) @ params['W'] + x[1] @ params['U']
                        + params['b']).ravel()
  m, ridge, iters = 4, 1e-3, 10
  if relative:   # reproduce the relative ridge in the transcription
    def ref():
      d = N * H
      X, F = np.zeros((m, d)), np.zeros((m, d))
      X[0], F[0] = 0, f(np.zeros(d))
      X[1], F[1] = F[0], f(F[0])
      pts = [X[0].copy(), X[1].copy()]
      for k in range(2, iters):
        n = min(k, m)
        G = F[:n] - X[:n]
        Hm = np.zeros((n + 1, n + 1))
        Hm[0, 1:] = Hm[1:, 0] = 1
        Hm[1:, 1:] = G @ G.T + ridge * np.trace(G @ G.T) / n * np.eye(n)
        alpha = np.linalg.solve(Hm, np.eye(n + 1)[0])[1:]
        X[k % m] = alpha @ F[:n]
        F[k % m] = f(X[k % m])
        pts.append(X[k % m].copy())
      return np.stack(pts)
    want = ref()
  else:
    want = _torchdeq_anderson(f, np.zeros(N * H), m, ridge, beta, iters)
  solver = Anderson(history=m, ridge=ridge, ridge_relative=relative, beta=beta)
  with jax.enable_x64(True):
    fj = lambda v: jnp.tanh(adj[1] @ v @ params['W'] + x[1] @ params['U'] + params['b'])
    st = solver.init(jnp.zeros((N, H), jnp.float64))
    got = []
    for _ in range(iters):
      st, xk, _ = solver.step(fj, st)
      got.append(np.asarray(xk).ravel())
  np.testing.assert_allclose(np.stack(got), want, rtol=1e-8, atol=1e-10)
  # the transcription mixes from its third point: jaxopt's warm-up (m plain steps) would not
  picard = [np.zeros(N * H)]
  for _ in range(iters - 1):
    picard.append(f(picard[-1]))
  assert np.abs(np.stack(picard)[2] - want[2]).max() > 1e-4


def test_float64_solve_reaches_tight_tolerance(problem64):
  """x64: the loop carries the input dtype, so Anderson goes far below float32."""
  params, adj, x, _ = problem64
  with jax.enable_x64(True):
    h, st = jsolve(gnn, jnp.zeros((B, N, H), jnp.float64), params, (adj, x), training=True,
                   config=SolverConfig(method='anderson', tol=1e-12, max_iter_train=100))
  assert h.dtype == jnp.float64 and bool(st.converged.all())
  assert np.asarray(st.residual).max() < 1e-12 and st.result.tolist() == [CONVERGED] * B


@pytest.mark.parametrize('method,mode', [('anderson', 'rel'), ('broyden', 'abs')])
def test_residual_is_that_of_returned_state(problem, method, mode):
  params, adj, x, _ = problem
  h, st = jsolve(gnn, jnp.zeros((B, N, H)), params, (adj, x), training=True,
                config=SolverConfig(method=method, tol=1e-2, tol_mode=mode))
  fh = jax.vmap(gnn, in_axes=(0, None, 0, 0))(h, params, adj, x)
  a = jnp.linalg.norm((fh - h).reshape(B, -1), axis=1)
  r = a / (jnp.linalg.norm(fh.reshape(B, -1), axis=1) + 1e-9) if mode == 'rel' else a
  np.testing.assert_allclose(st.abs_residual, a, rtol=1e-3, atol=1e-7)
  np.testing.assert_allclose(st.residual, r, rtol=1e-3, atol=1e-7)
  assert bool(st.converged.all()) and bool((st.residual < 1e-2).all())


def test_rel_and_abs_tolerance_definitions():
  """f(h) = c + (h - c)/2 from 0: x_k = c (1 - 2^-k), ||f(x_k) - x_k|| = 2^-(k+1) ||c||.
  rel = 2^-(k+1) / (1 - 2^-(k+1)) < 0.1 first at k = 3; abs < 0.1 with ||c|| = 100 sqrt(40)
  first at k = 12 (2^-13 * 632.5 = 0.077)."""
  f = lambda h, _, c: c + 0.5 * (h - c)
  c = jnp.full((1, N, H), 100.0)
  its = {}
  for mode in ('rel', 'abs'):
    h, st = jsolve(f, jnp.zeros((1, N, H)), None, (c,), training=True,
                  config=SolverConfig(method='fixed_point', tol=0.1, tol_mode=mode))
    its[mode] = int(st.iterations[0])
    np.testing.assert_allclose(h[0], 100 * (1 - 0.5 ** (its[mode] - 1)), rtol=1e-6)
  assert its == {'rel': 4, 'abs': 13}


@pytest.mark.parametrize('method', ['anderson', 'fixed_point'])
def test_nonconvergence_is_reported(method):
  """h + 1 has no fixed point: the residual is sqrt(N H) forever."""
  h, st = jsolve(lambda h, p: h + p, jnp.zeros((2, N, H)), jnp.float32(1.0), (), training=False,
                config=SolverConfig(method=method, tol=0.1, tol_mode='abs', max_iter_eval=17))
  assert not bool(st.converged.any()) and st.iterations.tolist() == [17, 17]
  assert st.result.tolist() == [MAX_ITER, MAX_ITER]
  np.testing.assert_allclose(st.abs_residual, np.sqrt(N * H), rtol=1e-5)
  assert int(st.nonfinite.sum()) == 0 and bool(jnp.isfinite(h).all())


@pytest.mark.parametrize('method,last_good,evals', [
    ('fixed_point', 1.5, 4), ('anderson', 1.0, 3), ('broyden', 1.0, 3)])
def test_nan_is_caught(method, last_good, evals):
  """h/2 + 1 from 0 visits 0, 1, 1.5, 1.75 (Anderson and Broyden: 0, 1, then the exact
  root 2, since they mix from the second evaluation); f returns NaN once its input
  exceeds 1.6, so the lowest-residual point with a finite image is kept."""
  f = lambda h, p: jnp.where(h[0, 0] > 1.6, jnp.nan, 0.5 * h + p)
  h0 = jnp.zeros((2, N, H)).at[1].set(1.7)   # graph 1 is NaN at its first evaluation
  h, st = jsolve(f, h0, jnp.float32(1.0), (), training=True,
                config=SolverConfig(method=method, tol=1e-6, tol_mode='abs'))
  assert st.nonfinite.tolist() == [1, 1] and not bool(st.converged.any())
  assert st.result.tolist() == [NONFINITE, NONFINITE]
  assert int(st.iterations[0]) == evals
  np.testing.assert_array_equal(h[0], jnp.full((N, H), last_good))
  np.testing.assert_array_equal(h[1], h0[1])   # nothing finite: held at h0
  np.testing.assert_allclose(st.abs_residual[0], (0.5 * last_good + 1 - last_good) * np.sqrt(N * H),
                             rtol=1e-6)


def test_node_mask_padding_is_invisible(problem64):
  """Padded nodes change nothing. float64: padding reorders reductions, which in
  float32 moves residuals near tol by more than the comparison can allow."""
  params, adj, x, _ = problem64
  P = 8  # pad every graph from N to P nodes; padded inputs are garbage
  adj_p = np.zeros((B, P, P))
  adj_p[:, :N, :N] = adj
  x_p = np.full((B, P, D), 7.0)
  x_p[:, :N] = x
  mask = np.broadcast_to(np.arange(P)[None, :] < N, (B, P))
  cfg = SolverConfig(method='anderson', tol=1e-3)
  with jax.enable_x64(True):
    h, st = jsolve(gnn, jnp.zeros((B, N, H), jnp.float64), params, (adj, x), config=cfg,
                   training=True)
    hp, sp = jsolve(gnn, jnp.zeros((B, P, H), jnp.float64), params, (adj_p, x_p), config=cfg,
                    training=True, node_mask=mask)
    _, s_nomask = jsolve(gnn, jnp.zeros((B, P, H), jnp.float64), params, (adj_p, x_p),
                         config=cfg, training=True)
  assert sp.iterations.tolist() == st.iterations.tolist()
  np.testing.assert_allclose(sp.residual, st.residual, rtol=1e-9)
  np.testing.assert_allclose(hp[:, :N], h, atol=1e-12)
  assert np.abs(np.asarray(hp)[:, N:]).max() == 0.0
  assert not np.allclose(s_nomask.residual, st.residual, rtol=1e-2)


def test_spectral_radius_of_linear_maps():
  """f(h) = h W per graph: a symmetric W with top eigenvalue 0.8, and a rotation by
  60 degrees scaled to 0.7 (a complex pair, where single power ratios oscillate)."""
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(H, H)))
  sym = q @ np.diag(np.linspace(-0.5, 0.8, H)) @ q.T
  c, s_ = np.cos(np.pi / 3), np.sin(np.pi / 3)
  rot = np.zeros((H, H))
  rot[:2, :2] = 0.7 * np.array([[c, -s_], [s_, c]])
  rot[2:, 2:] = 0.3 * np.eye(H - 2)
  w = jnp.asarray(np.stack([sym, rot]), jnp.float32)
  f = lambda h, _, w: h @ w
  rho = spectral_radius(f, jnp.ones((2, N, H)), None, (w,), jax.random.PRNGKey(0),
                        iterations=60)
  np.testing.assert_allclose(rho, [0.8, 0.7], rtol=0.03)


def test_jacobian_penalty():
  f = lambda h, p, x: jnp.tanh(h @ p + x)
  rng = np.random.default_rng(3)
  h, p, x = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((2, 3, 4), (4, 4), (2, 3, 4)))
  key = jax.random.PRNGKey(5)
  v = jax.random.normal(key, h.shape)   # the penalty draws the same v from the same key
  jac = lambda p: jax.jacfwd(lambda hh: jax.vmap(f, in_axes=(0, None, 0))(hh, p, x))(h)

  def exact(p, v):
    u = v.reshape(-1) @ jac(p).reshape(h.size, h.size)
    return jnp.sum(u * u) / h.size

  pen = lambda p, key, mask=None: jacobian_penalty(f, h, p, (x,), key, node_mask=mask)
  val, grad = jax.jit(jax.value_and_grad(pen))(p, key)
  want, want_grad = jax.jit(jax.value_and_grad(exact))(p, v)
  np.testing.assert_allclose(val, want, rtol=1e-5)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-6)
  mask = jnp.array([[True, True, False], [True, False, False]])
  np.testing.assert_allclose(jax.jit(pen)(p, key, mask), jax.jit(exact)(p, v * mask[..., None]),
                             rtol=1e-5)


@pytest.mark.parametrize('field,value', [
    ('method', 'newton'), ('grad', 'bptt'), ('backward_solver', 'cg'), ('tol_mode', 'max'),
    ('tol', 0.0), ('tol', float('nan')), ('max_iter_train', 0), ('max_iter_eval', 2.5),
    ('anderson_history', 1), ('anderson_ridge', -1.0), ('anderson_beta', 0.0),
    ('anderson_ridge_relative', 1), ('backward_solver', 'neumann'),
    ('damping', 0.0), ('damping', 1.5), ('phantom_steps', 0), ('phantom_tau', 0.0),
    ('backward_tol', 0.0), ('backward_max_iter', 0)])
def test_validate_rejects(field, value):
  cfg = dataclasses.replace(SolverConfig(), **{field: value})
  with pytest.raises(ValueError, match=rf'SolverConfig\.{field}=.*(allowed|must be)') as e:
    cfg.validate()
  assert '\n' not in str(e.value)
  with pytest.raises(ValueError):
    solve(lambda h, p: h, jnp.zeros((1, 2, 2)), None, (), config=cfg, training=True)


def test_validate_names_the_users_key():
  with pytest.raises(ValueError, match=r'^dear\.tol=0; must be'):
    dataclasses.replace(SolverConfig(), tol=0).validate(prefix='dear.')


def test_validate_accepts_defaults_and_dear_settings():
  SolverConfig().validate()
  SolverConfig(method='broyden', grad='ift', backward_solver='bicgstab', damping=0.5,
               tol_mode='abs', anderson_ridge=0.0).validate()
  SolverConfig(max_iter_eval=np.int64(160), tol=np.float32(0.1)).validate()   # numpy scalars


def test_jit_compiles_once(problem):
  params, adj, x, _ = problem
  traces = []

  def f(h, p, adj, x):
    traces.append(1)
    return gnn(h, p, adj, x)

  run = jax.jit(lambda p, adj, x: solve(f, jnp.zeros(x.shape[:2] + (H,)), p, (adj, x),
                                        config=SolverConfig('fixed_point', grad='ift'),
                                        training=True))
  h1, s1 = run(params, adj, x)
  n = len(traces)
  h2, s2 = run(params, adj, 2 * x)
  assert n > 0 and len(traces) == n and not np.allclose(h1, h2)
  assert isinstance(s2, SolveStats) and s2.iterations.shape == (B,)
  assert s2.iterations.dtype == jnp.int32 and s2.converged.dtype == jnp.bool_
  assert s2.nonfinite.dtype == jnp.int32 and s2.residual.dtype == jnp.float32
  run(params, adj[:2], x[:2])   # a new shape does retrace
  assert len(traces) > n


def test_ift_at_the_operating_tolerance_matches_the_exact_gradient():
  """At the default operating point (relative tol of configs/default.py, Anderson,
  IFT with the default adjoint settings) on a slow 0.95-contraction, the float32
  IFT gradient has cosine >= 0.99 to the exact gradient (float64, 3,000 unrolled
  Picard steps); the 1-step gradient does not (< 0.95), so the check discriminates."""
  from configs import default
  from dear_jax.solver import config_from_section
  cfg = config_from_section(default.get_config().dear)
  assert cfg.grad == 'ift'
  rng = np.random.default_rng(7)
  w = rng.normal(size=(H, H))
  params = dict(W=0.95 * w / np.linalg.norm(w, 2), U=rng.normal(size=(D, H)),
                b=0.1 * rng.normal(size=H))
  adj = (rng.uniform(size=(B, N, N)) < 0.5) + np.eye(N)
  adj = adj / adj.sum(-1, keepdims=True)
  x, c = rng.normal(size=(B, N, D)) * 0.1, rng.normal(size=(B, N, H))
  f32 = lambda a: jnp.asarray(a, jnp.float32)

  def grad(cfg):
    loss = lambda p: jnp.sum(solve(gnn, jnp.zeros((B, N, H)), p, (f32(adj), f32(x)),
                                   config=cfg, training=True)[0] * f32(c))
    return flat(jax.jit(jax.grad(loss))(jax.tree.map(f32, params)))

  with jax.enable_x64(True):
    def exact_loss(p):
      fb = jax.vmap(gnn, in_axes=(0, None, 0, 0))
      h = jax.lax.fori_loop(0, 3000, lambda _, h: fb(h, p, adj, x), jnp.zeros((B, N, H)))
      return jnp.sum(h * c)
    exact = np.asarray(flat(jax.jit(jax.grad(exact_loss))(params)))
  cos = lambda g: float(np.dot(g, exact) / np.linalg.norm(g) / np.linalg.norm(exact))
  assert cos(np.asarray(grad(cfg), np.float64)) >= 0.99
  one_step = dataclasses.replace(cfg, grad='phantom', phantom_steps=1, phantom_tau=1.0)
  assert cos(np.asarray(grad(one_step), np.float64)) < 0.95   # measured 0.91 (IFT: 0.999999)


# --- the one loop: the code it replaced, kept as the reference -------------------

class _OldLoopState(NamedTuple):
  solver: Any
  best_x: jax.Array
  best_res: jax.Array
  best_abs: jax.Array
  evaluations: jax.Array
  done: jax.Array
  nonfinite: jax.Array


def _old_accept(ls, x, fx, mask, cfg):
  m = solver_lib._node_mask(mask, x)
  r, a = solver_lib._residual(x, fx, mask, cfg.tol_mode)
  ok = (jnp.all(jnp.isfinite(jnp.where(m, fx, 0))) & jnp.all(jnp.isfinite(jnp.where(m, x, 0)))
        & jnp.isfinite(r))
  better = ok & (r < ls.best_res)
  return ls._replace(
      best_x=jnp.where(better, x, ls.best_x), best_res=jnp.where(better, r, ls.best_res),
      best_abs=jnp.where(better, a, ls.best_abs), evaluations=ls.evaluations + 1,
      done=~ok | (r < cfg.tol), nonfinite=ls.nonfinite + (~ok).astype(jnp.int32))


def _old_solve_one(f, x0, mask, cfg, cap):
  """solver._solve_one as it was before the loop could record."""
  solver = solver_lib.make_solver(cfg)
  inf = jnp.asarray(jnp.inf, x0.dtype)
  st, pairs = solver_lib._start(solver, f, x0)
  ls = _OldLoopState(st, x0, inf, inf, jnp.int32(0), jnp.bool_(False), jnp.int32(0))
  for x, fx in pairs:
    ls = _old_accept(ls, x, fx, mask, cfg)

  def body(ls):
    st, x, fx = solver.step(f, ls.solver)
    return _old_accept(ls._replace(solver=st), x, fx, mask, cfg)

  ls = jax.lax.while_loop(lambda ls: ~ls.done & (ls.evaluations < cap), body, ls)
  converged = ls.best_res < cfg.tol
  result = jnp.where(converged, CONVERGED, jnp.where(ls.nonfinite > 0, NONFINITE, MAX_ITER))
  return ls.best_x, SolveStats(ls.evaluations, converged, ls.best_res, ls.best_abs,
                               ls.nonfinite, result.astype(jnp.int32))


def _old_solve(f, h0, params, args, cfg, cap):
  mask = solver_lib._graph_mask(h0, None)
  fm = solver_lib._masked(f)
  one = lambda h0, args, mask: _old_solve_one(lambda h: fm(h, params, args, h0, mask), h0,
                                              mask, cfg, cap)
  return jax.vmap(one)(h0, tuple(args), mask)


def _old_residual_history(f, h0, params, args, config, evaluations):
  """solver.residual_history as it was: its own lax.scan."""
  mask = solver_lib._graph_mask(h0, None)
  fm = solver_lib._masked(f)
  solver = solver_lib.make_solver(config)

  def one(h0, args, mask):
    fg = lambda h: fm(h, params, args, h0, mask)
    residual = lambda x, fx: solver_lib._residual(x, fx, mask, config.tol_mode)[0]
    st, pairs = solver_lib._start(solver, fg, h0)
    first = [residual(x, fx)[None] for x, fx in pairs]

    def body(st, _):
      st, x, fx = solver.step(fg, st)
      return st, residual(x, fx)
    _, res = jax.lax.scan(body, st, None, length=evaluations - len(first))
    return jnp.concatenate(first + [res])

  return jax.vmap(one)(h0, tuple(args), mask)


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize('method', ['anderson', 'fixed_point', 'broyden'])
def test_solve_is_bit_identical_to_the_loop_it_replaced(problem, method):
  params, adj, x, _ = problem
  h0 = jnp.zeros((B, N, H))
  for cfg in (SolverConfig(method=method, tol=1e-3, max_iter_eval=30),
              SolverConfig(method=method, tol=1e-30, max_iter_eval=9)):
    new = jsolve(gnn, h0, params, (adj, x), config=cfg, training=False)
    old = jax.jit(lambda p, a, x: _old_solve(gnn, h0, p, (a, x), cfg, cfg.max_iter_eval))(
        params, adj, x)
    _assert_same(new, old)


def test_nan_stops_the_loop_as_before():
  f = lambda h, p: jnp.where(h[0, 0] > 1.6, jnp.nan, 0.5 * h + p)
  h0 = jnp.zeros((2, N, H)).at[1].set(1.7)
  cfg = SolverConfig(method='fixed_point', tol=1e-6, tol_mode='abs')
  new = jsolve(f, h0, jnp.float32(1.0), (), config=cfg, training=True)
  old = jax.jit(lambda p: _old_solve(f, h0, p, (), cfg, cfg.max_iter_train))(jnp.float32(1.0))
  _assert_same(new, old)


@pytest.mark.parametrize('method', ['anderson', 'broyden'])
def test_recorded_history_is_the_old_residual_history(problem, method):
  params, adj, x, _ = problem
  cfg = SolverConfig(method=method)
  h0 = jnp.zeros((B, N, H))
  new = jax.jit(lambda p: residual_history(gnn, h0, p, (adj, x), config=cfg,
                                           evaluations=25))(params)
  old = jax.jit(lambda p: _old_residual_history(gnn, h0, p, (adj, x), cfg, 25))(params)
  assert new.shape == (B, 25)
  np.testing.assert_array_equal(new, old)


@pytest.mark.parametrize('method', ['anderson', 'broyden', 'fixed_point'])
def test_first_hits_at_several_tolerances_are_separate_solves(problem, method):
  """One trajectory read at (tol, cap) pairs gives what each separate solve
  returns, bit for bit: tighter tolerances with larger caps, a cap that stops
  before the tolerance (lowest-residual iterate), and a stalled reference."""
  params, adj, x, _ = problem
  h0 = jnp.zeros((B, N, H))
  cfg = SolverConfig(method=method, tol=1e-2, max_iter_eval=40)
  targets = (solver_lib.Target(1e-2, 40), solver_lib.Target(1e-3, 160),
             solver_lib.Target(1e-6, 3), solver_lib.Target(1e-5, 160))
  rec = jax.jit(lambda p: solver_lib.record(gnn, h0, p, (adj, x), config=cfg,
                                            targets=targets, history=7))(params)
  assert rec.history.shape == (B, 7)
  iters = []
  for t, got in zip(targets, rec.answers):
    one = dataclasses.replace(cfg, tol=t.tol, max_iter_eval=t.cap)
    want = jsolve(gnn, h0, params, (adj, x), config=one, training=False)
    _assert_same(got, want)
    iters.append(np.asarray(got[1].iterations))
  np.testing.assert_array_equal(rec.evaluations, np.maximum(np.max(iters, 0), 7))
  assert (iters[1] > iters[0]).all() and (iters[2] == 3).all()


def test_a_stalled_reference_stops_unconverged():
  """f(h) = h + c (c != 0) has no fixed point: the residual never halves, so a
  Target with stall=10 stops after 10 evaluations past its best; one that is
  continued in a second loop (`then`) runs on after the others stopped."""
  f = lambda h, c: h + c
  h0 = jnp.zeros((2, N, H))
  cfg = SolverConfig(method='fixed_point', tol=1e-3, tol_mode='abs')
  rec = solver_lib.record(f, h0, jnp.float32(1.0), (), config=cfg,
                          targets=(solver_lib.Target(1e-3, 3),),
                          then=(solver_lib.Target(1e-3, 1000, stall=10),),
                          then_precision='highest')
  (_, first), (_, ref) = rec.answers
  assert first.iterations.tolist() == [3, 3]
  # the first evaluation sets the best residual (sqrt(N H)); it never halves
  assert ref.iterations.tolist() == [11, 11] and not bool(ref.converged.any())
  assert rec.evaluations.tolist() == [11, 11]


def test_spectral_radius_matches_the_dense_jacobian(problem):
  """At the fixed point of a 0.5-contraction (per graph), the settling power
  iteration gives max |eig(J)| of the dense Jacobian (jax.jacfwd)."""
  params, adj, x, _ = problem
  params = dict(params, W=1.8 * params['W'])   # ||W|| = 0.9: radius well above 0
  h, _ = jsolve(gnn, jnp.zeros((B, N, H)), params, (adj, x), training=False,
                config=SolverConfig(tol=1e-6, max_iter_eval=200))
  rho = spectral_radius(gnn, h, params, (adj, x), jax.random.PRNGKey(0))
  for i in range(B):
    jac = jax.jacfwd(lambda v: gnn(v, params, adj[i], x[i]))(h[i]).reshape(N * H, N * H)
    exact = np.abs(np.linalg.eigvals(np.asarray(jac, np.float64))).max()
    np.testing.assert_allclose(rho[i], exact, rtol=0.03)
  # one graph per loop: each stops when its own estimate settles, same values
  np.testing.assert_allclose(spectral_radius(gnn, h, params, (adj, x), jax.random.PRNGKey(0),
                                             chunk=1), rho, rtol=1e-5)
  # fewer JVPs than the cap when the estimate settles: the fixed count differs
  fixed = spectral_radius(gnn, h, params, (adj, x), jax.random.PRNGKey(0), settle=0)
  assert not np.array_equal(np.asarray(rho), np.asarray(fixed))


def test_chunked_solve_is_each_graph_solved_alone(problem):
  """chunk=1 runs each graph's loop by itself: bit for bit the solve of that
  graph alone; chunk=2 of 3 graphs falls back to groups of gcd(3, 2) = 1."""
  params, adj, x, _ = problem
  cfg = SolverConfig(method='anderson', tol=1e-4)
  alone = [jsolve(gnn, jnp.zeros((1, N, H)), params, (adj[i:i + 1], x[i:i + 1]),
                  config=cfg, training=False) for i in range(B)]
  want = jax.tree.map(lambda *a: jnp.concatenate(a), *alone)
  for chunk in (1, 2):
    got = jax.jit(functools.partial(solve, gnn, config=cfg, training=False, chunk=chunk))(
        jnp.zeros((B, N, H)), params, (adj, x))
    _assert_same(got, want)
  whole = jsolve(gnn, jnp.zeros((B, N, H)), params, (adj, x), config=cfg, training=False)
  np.testing.assert_array_equal(whole[1].iterations, want[1].iterations)
  assert len(set(want[1].iterations.tolist())) > 1


def test_broyden_has_its_own_memory(problem):
  """broyden_history 0 is anderson_history's (every config before the key
  existed); set, it alone is Broyden's memory."""
  params, adj, x, _ = problem
  run = lambda **kw: np.asarray(jsolve(
      gnn, jnp.zeros((B, N, H)), params, (adj, x), config=SolverConfig(
          method='broyden', max_iter_train=12, tol=1e-9, **kw),
      training=True)[0])
  old = run(anderson_history=3)
  np.testing.assert_array_equal(run(broyden_history=3, anderson_history=9), old)
  np.testing.assert_array_equal(run(broyden_history=0, anderson_history=3), old)
  assert not np.array_equal(run(broyden_history=9, anderson_history=3), old)
  assert solver_lib.make_solver(SolverConfig(method='broyden', broyden_history=4,
                                             anderson_history=7)).history == 4


def test_the_registries_read_their_own_keys():
  """Each registered class is built from (and checks) the keys it owns."""
  cfg = SolverConfig(anderson_history=3, anderson_ridge=0.5, anderson_beta=0.7,
                     anderson_ridge_relative=False, damping=0.25,
                     phantom_steps=2, phantom_tau=0.75)
  assert solver_lib.make_solver(cfg) == Anderson(3, 0.5, False, 0.7)
  assert solver_lib.make_solver(
      dataclasses.replace(cfg, method='fixed_point')).damping == 0.25
  phantom = solver_lib.make_gradient(dataclasses.replace(cfg, grad='phantom'))
  assert (phantom.steps, phantom.tau) == (2, 0.75)
  assert list(solver_lib.SOLVERS) == ['anderson', 'fixed_point', 'broyden']
  assert list(solver_lib.GRADIENTS) == ['ift', 'phantom', 'jfb']
  with pytest.raises(ValueError, match=r"^dear\.broyden_history=-1; must be an int >= 0$"):
    SolverConfig(broyden_history=-1).validate('dear.')
