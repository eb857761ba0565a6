"""Per-graph equilibrium solve h* = f(h*) for DEAR, built on jaxopt's solvers.

jaxopt's own `run` has one absolute tolerance over the whole batch, no convergence
flag and no NaN guard, so we step its solvers (`init_state`/`update`) in our own
`lax.while_loop`, vmapped over graphs so each graph stops on its own.

What jaxopt's `state.error` is (read from jaxopt 0.8.5's source); all are global,
unmasked, absolute L2 norms, so we do not use them:
  FixedPointIteration: ||T(x) - x|| at the *input* x of `update` (T = the map it
    was given), while `update` returns T(x).
  AndersonAcceleration: ||f(x~) - x~|| at the extrapolated point x~ (the only one
    f is evaluated at); `update` returns f(x~) and keeps x~ in params_history.
  Broyden (root of g = f - id): ||g(x)|| at the point `update` returns.
Each update evaluates f exactly once, at a point x we can recover, together with
f(x). The residual is computed from that (x, f(x)) pair with the node mask, so
there are no extra f evaluations. We return x, the point the residual describes
(torchdeq returns f(x) instead; a caller that decodes f(h*) gets that value).
"""
import dataclasses
import math
import numbers
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

with warnings.catch_warnings():
  warnings.filterwarnings(
      'ignore', message='JAXopt is no longer maintained', category=DeprecationWarning)
  import jaxopt
  from jaxopt import implicit_diff, linear_solve


@dataclasses.dataclass(frozen=True)
class SolverConfig:
  method: str = 'anderson'       # 'anderson' | 'fixed_point' | 'broyden'
  max_iter_train: int = 40       # caps count f evaluations
  max_iter_eval: int = 40
  tol: float = 0.1
  tol_mode: str = 'rel'          # rel: |f(h)-h| / (|f(h)| + 1e-9); abs: |f(h)-h| (per graph)
  anderson_history: int = 6      # also Broyden's memory
  anderson_ridge: float = 1e-4
  anderson_beta: float = 1.0
  damping: float = 1.0           # fixed_point: h <- (1-damping) h + damping f(h)
  grad: str = 'jfb'              # 'ift' | 'phantom' | 'jfb'
  phantom_steps: int = 5
  phantom_tau: float = 0.5
  backward_solver: str = 'gmres'  # 'gmres' | 'bicgstab'
  backward_tol: float = 1e-6
  backward_max_iter: int = 20    # matvec budget of the backward linear solve

  def validate(self) -> None:
    """Raises ValueError naming the first bad field and what is allowed."""
    choices = dict(method=('anderson', 'fixed_point', 'broyden'), tol_mode=('rel', 'abs'),
                   grad=('ift', 'phantom', 'jfb'), backward_solver=('gmres', 'bicgstab'))
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ValueError(f'SolverConfig.{name}={getattr(self, name)!r}; allowed: {allowed}')
    min_int = dict(max_iter_train=1, max_iter_eval=1, anderson_history=2, phantom_steps=1,
                   backward_max_iter=1)
    for name, lo in min_int.items():
      v = getattr(self, name)
      if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < lo:
        raise ValueError(f'SolverConfig.{name}={v!r}; must be an int >= {lo}')
    positive = (lambda v: v > 0, 'a finite float > 0')
    unit = (lambda v: 0 < v <= 1, 'a float in (0, 1]')
    floats = dict(tol=positive, backward_tol=positive, anderson_beta=positive,
                  anderson_ridge=(lambda v: v >= 0, 'a finite float >= 0'),
                  damping=unit, phantom_tau=unit)
    for name, (good, want) in floats.items():
      v = getattr(self, name)
      if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
              and good(v)):
        raise ValueError(f'SolverConfig.{name}={v!r}; must be {want}')


class SolveStats(NamedTuple):
  """Per-graph statistics, each of shape (B,). They describe the solver's
  returned iterate (before any phantom steps)."""
  iterations: jax.Array   # int32: f evaluations made (incl. a failing one)
  converged: jax.Array    # bool: residual < tol before the cap
  residual: jax.Array     # float32: residual of the returned h, in tol_mode units
  abs_residual: jax.Array  # float32: ||f(h) - h|| of the returned h
  nonfinite: jax.Array    # int32: NaN/inf evaluations (the graph stops at the first)


def _masked(fun):
  """Holds padded nodes at h0 on input and output, so f never sees or moves them."""
  def fm(h, params, args, h0, mask):
    m = mask.reshape(mask.shape + (1,) * (h.ndim - 1)) > 0
    return jnp.where(m, fun(jnp.where(m, h, h0), params, *args), h0)
  return fm


def _stepper(cfg, fm, cap):
  """Returns (init, step, init_measures) for cfg.method. step(p, s, *a) returns
  (p', s', x, f(x)) where x is the point f was evaluated at in this update."""
  if cfg.method == 'anderson':
    # init_state evaluates f(h0) and discards it (XLA removes it under jit).
    s = jaxopt.AndersonAcceleration(
        fm, history_size=cfg.anderson_history, ridge=cfg.anderson_ridge,
        beta=cfg.anderson_beta, maxiter=cap, jit=False, implicit_diff=False)

    def step(p, st, *a):
      pos = st.iter_num % cfg.anderson_history
      p2, st2 = s.update(p, st, *a)
      return p2, st2, st2.params_history[pos], p2
    return s.init_state, step, False

  if cfg.method == 'fixed_point':
    d = cfg.damping

    def damped(h, *a):  # aux carries the undamped f(h) for the residual norms
      fx = fm(h, *a)
      return (1 - d) * h + d * fx, fx
    s = jaxopt.FixedPointIteration(damped, has_aux=True, maxiter=cap, jit=False,
                                   implicit_diff=False)

    def step(p, st, *a):
      p2, st2 = s.update(p, st, *a)
      return p2, st2, p, st2.aux
    # init_state sets aux=None; the loop carry needs its final structure
    init = lambda h, *a: s.init_state(h, *a)._replace(aux=jnp.zeros_like(h))
    return init, step, False

  def g(h, *a):
    fx = fm(h, *a)
    return fx - h, fx
  # gamma=-1: the inverse Jacobian of g = f - id starts at -I, so the first step
  # is a plain f step (as in torchdeq); stepsize=1 disables the line search.
  s = jaxopt.Broyden(g, has_aux=True, maxiter=cap, stepsize=1.0,
                     history_size=cfg.anderson_history, gamma=-1.0, jit=False,
                     implicit_diff=False)

  def step(p, st, *a):
    p2, st2 = s.update(p, st, *a)
    return p2, st2, p2, st2.aux
  return s.init_state, step, True   # Broyden's init_state already evaluated f(h0)


def _residual(x, fx, mask, cfg):
  """(residual in cfg.tol_mode units, absolute residual) of x over real nodes."""
  m = mask.reshape(mask.shape + (1,) * (x.ndim - 1)) > 0
  d = jnp.where(m, fx - x, 0.0)
  a = jnp.sqrt(jnp.sum(d * d))
  r = a if cfg.tol_mode == 'abs' else a / (jnp.sqrt(jnp.sum(jnp.where(m, fx, 0.0) ** 2)) + 1e-9)
  return r, a


def _record(rec, x, fx, mask, cfg):
  """Accepts (x, f(x)) as the graph's current answer unless non-finite."""
  out, res, ares, n, done, nonfin = rec
  m = mask.reshape(mask.shape + (1,) * (x.ndim - 1)) > 0
  r, a = _residual(x, fx, mask, cfg)
  ok = jnp.all(jnp.isfinite(jnp.where(m, fx, 0.0))) & jnp.all(jnp.isfinite(jnp.where(m, x, 0.0)))
  ok = ok & jnp.isfinite(r)
  return (jnp.where(ok, x, out), jnp.where(ok, r, res), jnp.where(ok, a, ares), n + 1,
          ~ok | (r < cfg.tol), nonfin + (~ok).astype(jnp.int32))


def _forward(cfg, fm, cap):
  """Per-graph solve: (init, params, args, h0, mask) -> (h*, stats)."""
  init, step, init_measures = _stepper(cfg, fm, cap)

  def run(init_h, params, args, h0, mask):
    a = (params, args, h0, mask)
    st = init(init_h, *a)
    inf = jnp.asarray(jnp.inf, jnp.float32)
    rec = (init_h, inf, inf, jnp.int32(0), jnp.bool_(False), jnp.int32(0))
    if init_measures:
      rec = _record(rec, init_h, st.aux, mask, cfg)

    def body(c):
      p, st, rec = c
      p, st, x, fx = step(p, st, *a)
      return p, st, _record(rec, x, fx, mask, cfg)

    _, _, rec = lax.while_loop(lambda c: ~c[2][4] & (c[2][3] < cap), body, (init_h, st, rec))
    out, res, ares, n, _, nonfin = rec
    m = mask.reshape(mask.shape + (1,) * (out.ndim - 1)) > 0
    stats = SolveStats(n, res < cfg.tol, res.astype(jnp.float32), ares.astype(jnp.float32),
                       nonfin)
    return jnp.where(m, out, h0), stats
  return run


def _backward_solve(cfg):
  """Adjoint linear solve for the IFT, never jaxopt's default normal-CG."""
  def solve(matvec, b):
    if cfg.backward_solver == 'gmres':
      # jax's gmres counts restart cycles in maxiter: one cycle of budget Arnoldi steps.
      return linear_solve.solve_gmres(matvec, b, tol=cfg.backward_tol,
                                      restart=cfg.backward_max_iter, maxiter=1,
                                      solve_method='incremental')
    # each BiCGStab iteration costs two matvecs
    return linear_solve.solve_bicgstab(matvec, b, tol=cfg.backward_tol,
                                       maxiter=max(1, cfg.backward_max_iter // 2))
  return solve


def solve(f, h0, params, args, *, config: SolverConfig, training: bool, node_mask=None):
  """Solves h = f(h, params, *args) per graph; f acts on one graph ([N, H]).

  vmaps over the leading axis B of h0, of every leaf of args and of node_mask
  ([B, N] bool; padded nodes never count in the residual and stay at h0).
  `training` only selects the cap. Returns (h*, SolveStats); the gradient of h*
  w.r.t. params and args follows config.grad (in train and eval alike).
  """
  config.validate()
  cap = config.max_iter_train if training else config.max_iter_eval
  args = tuple(args)
  mask = (jnp.ones(h0.shape[:2], jnp.float32) if node_mask is None
          else node_mask.astype(jnp.float32))
  fm = _masked(f)
  run = _forward(config, fm, cap)
  if config.grad == 'ift':
    run = implicit_diff.custom_fixed_point(fm, has_aux=True, solve=_backward_solve(config))(run)

  def one(h0, params, args, mask):
    if config.grad == 'ift':
      return run(h0, params, args, h0, mask)
    # jfb/phantom: no gradient through the forward loop (h* is a constant)
    h, stats = run(*lax.stop_gradient((h0, params, args, h0)), mask)
    if config.grad == 'phantom':
      tau = config.phantom_tau
      step = lambda _, h: (1 - tau) * h + tau * fm(h, params, args, h0, mask)
      h = lax.fori_loop(0, config.phantom_steps, step, h)
    return h, stats

  return jax.vmap(one, in_axes=(0, None, 0, 0))(h0, params, args, mask)


def residual_history(f, h0, params, args, *, config: SolverConfig, evaluations: int,
                     node_mask=None) -> jax.Array:
  """[B, evaluations]: the residual (config.tol_mode units, as `solve` measures it)
  after each f evaluation of config.method, ignoring the tolerance. For convergence
  plots: the same updates `solve` makes, run to a fixed count."""
  config.validate()
  mask = (jnp.ones(h0.shape[:2], jnp.float32) if node_mask is None
          else node_mask.astype(jnp.float32))
  init, step, init_measures = _stepper(config, _masked(f), evaluations)
  residual = lambda x, fx, mask: _residual(x, fx, mask, config)[0]

  def one(h0, args, mask):
    a = (params, args, h0, mask)
    st = init(h0, *a)

    def body(carry, _):
      p, st = carry
      p, st, x, fx = step(p, st, *a)
      return (p, st), residual(x, fx, mask)
    first = [residual(h0, st.aux, mask)[None]] if init_measures else []
    _, res = lax.scan(body, (h0, st), None, length=evaluations - len(first))
    return jnp.concatenate(first + [res])

  return jax.vmap(one, in_axes=(0, 0, 0))(h0, tuple(args), mask)


def jacobian_penalty(f, h, params, args, key, node_mask=None) -> jax.Array:
  """Hutchinson estimate ||v^T J_f(h)||^2 / h.size with one Gaussian v ([B, N, H] h).

  Matches torchdeq's jac_reg on DEAR's dense padded tensor: with node_mask, v is
  zero on padded rows (whose outputs DEAR zero-pads). Differentiable w.r.t. params.
  """
  v = jax.random.normal(key, h.shape, h.dtype)
  if node_mask is not None:
    v = v * node_mask.reshape(node_mask.shape + (1,) * (h.ndim - 2)).astype(h.dtype)
  fb = lambda hh: jax.vmap(lambda hg, a: f(hg, params, *a))(hh, tuple(args))
  _, vjp = jax.vjp(fb, h)
  (u,) = vjp(v)
  return jnp.sum(u * u) / h.size
