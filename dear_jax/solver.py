"""Per-graph equilibrium solve h* = f(h*) for DEAR.

Solvers are small objects with `init(x0)` and `step(f, state) -> (state, x, f(x))`
(optimistix style): each step evaluates f once, at a point x it returns with f(x),
so the loop measures the residual without extra evaluations. One loop
(`_solve_one`, a `lax.while_loop` with a named `LoopState`) drives every method,
graph by graph under vmap, and returns the first iterate under tolerance (DEAR's
`first_hit_under_tol`) or, at the cap, the lowest-residual iterate (torchdeq).

Where each part comes from:
  anderson     written here: torchdeq's Anderson (mixing from the second
               evaluation, history min(k, m)) with a ridge relative to the
               residuals' scale. jaxopt's `AndersonAcceleration` runs `history_size`
               plain steps before it first mixes and its ridge is absolute, so it
               stalls at tight tolerances.
  fixed_point  jaxopt `FixedPointIteration` on the damped map.
  broyden      jaxopt `Broyden` on g = f - id (first step a plain f step).
  ift gradient jaxopt `custom_fixed_point` with its GMRES / BiCGStab linear
               solvers, or the adjoint fixed point g = J^T g + v solved by this
               module's Anderson (as torchdeq's backward does).
"""
import dataclasses
import math
import numbers
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

with warnings.catch_warnings():
  warnings.filterwarnings(
      'ignore', message='JAXopt is no longer maintained', category=DeprecationWarning)
  import jaxopt
  from jaxopt import implicit_diff, linear_solve

METHODS = ('anderson', 'fixed_point', 'broyden')
GRADS = ('ift', 'phantom', 'jfb')
BACKWARD_SOLVERS = ('anderson', 'gmres', 'bicgstab')
TOL_MODES = ('rel', 'abs')

# SolveStats.result codes (optimistix-style explicit outcomes).
CONVERGED, MAX_ITER, NONFINITE = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class SolverConfig:
  """Solver settings; `validate` names the offending field as `<prefix><field>`.

  Field defaults are the library's (close to DEAR's release: tol 0.1, 1-step
  gradient); the project's defaults are configs/default.py's `dear` section."""
  method: str = 'anderson'       # METHODS
  max_iter_train: int = 40       # caps count f evaluations
  max_iter_eval: int = 40
  tol: float = 0.1
  tol_mode: str = 'rel'          # rel: |f(h)-h| / (|f(h)| + 1e-9); abs: |f(h)-h| (per graph)
  anderson_history: int = 6      # also Broyden's memory
  anderson_ridge: float = 1e-4   # times the mean squared residual of the history
  anderson_ridge_relative: bool = True  # False: absolute ridge, as torchdeq's `lam`
  anderson_beta: float = 1.0
  damping: float = 1.0           # fixed_point: h <- (1-damping) h + damping f(h)
  grad: str = 'jfb'              # GRADS
  phantom_steps: int = 5
  phantom_tau: float = 0.5
  backward_solver: str = 'gmres'  # BACKWARD_SOLVERS
  backward_tol: float = 1e-6     # relative residual of the adjoint solve
  backward_max_iter: int = 20    # matvec (VJP) budget of the adjoint solve

  def validate(self, prefix: str = 'SolverConfig.') -> None:
    """Raises ValueError naming the first bad field and what is allowed."""
    choices = dict(method=METHODS, tol_mode=TOL_MODES, grad=GRADS,
                   backward_solver=BACKWARD_SOLVERS)
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ValueError(f'{prefix}{name}={getattr(self, name)!r}; allowed: '
                         f'{", ".join(allowed)}')
    min_int = dict(max_iter_train=1, max_iter_eval=1, anderson_history=2, phantom_steps=1,
                   backward_max_iter=1)
    for name, lo in min_int.items():
      v = getattr(self, name)
      if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < lo:
        raise ValueError(f'{prefix}{name}={v!r}; must be an int >= {lo}')
    if not isinstance(self.anderson_ridge_relative, bool):
      raise ValueError(f'{prefix}anderson_ridge_relative='
                       f'{self.anderson_ridge_relative!r}; must be True or False')
    positive = (lambda v: v > 0, 'a finite float > 0')
    unit = (lambda v: 0 < v <= 1, 'a float in (0, 1]')
    floats = dict(tol=positive, backward_tol=positive, anderson_beta=positive,
                  anderson_ridge=(lambda v: v >= 0, 'a finite float >= 0'),
                  damping=unit, phantom_tau=unit)
    for name, (good, want) in floats.items():
      v = getattr(self, name)
      if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
              and good(v)):
        raise ValueError(f'{prefix}{name}={v!r}; must be {want}')


def config_from_section(section, prefix: str = 'dear.') -> SolverConfig:
  """The SolverConfig fields of a config section (e.g. the `dear` ConfigDict),
  validated; errors name the key as the user types it (`dear.tol=...`)."""
  fields = SolverConfig.__dataclass_fields__
  cfg = SolverConfig(**{k: v for k, v in section.items() if k in fields})
  cfg.validate(prefix)
  return cfg


class SolveStats(NamedTuple):
  """Per-graph statistics, each of shape (B,), of the solver's returned iterate
  (before any phantom steps)."""
  iterations: jax.Array   # int32: f evaluations made (incl. a failing one)
  converged: jax.Array    # bool: residual < tol before the cap
  residual: jax.Array     # residual of the returned h, in tol_mode units
  abs_residual: jax.Array  # ||f(h) - h|| of the returned h
  nonfinite: jax.Array    # int32: NaN/inf evaluations (the graph stops at the first)
  result: jax.Array       # int32: CONVERGED, MAX_ITER or NONFINITE


# --- solvers: init(x0) -> state; step(f, state) -> (state, x, f(x)) ------------

class AndersonState(NamedTuple):
  xs: jax.Array       # [m, D] evaluated points, flattened (ring buffer)
  fs: jax.Array       # [m, D] their images f(x)
  count: jax.Array    # int32: evaluations so far
  x_next: jax.Array   # where f is evaluated next (the state's own shape)


@dataclasses.dataclass(frozen=True)
class Anderson:
  """Type-II Anderson acceleration as torchdeq's: x1 = f(x0), then from the
  second evaluation on x_{k+1} = sum_i a_i (beta f(x_i) + (1 - beta) x_i) over the
  last min(k, m) pairs, a minimising ||sum_i a_i (f(x_i) - x_i)||^2 + ridge ||a||^2
  subject to sum_i a_i = 1. A relative ridge is scaled by the mean of
  ||f(x_i) - x_i||^2, so it regularises alike at every residual level; an
  absolute one (torchdeq's `lam`) dominates once residuals are small and stalls."""
  history: int = 6
  ridge: float = 1e-4
  ridge_relative: bool = True
  beta: float = 1.0

  def init(self, x0):
    z = jnp.zeros((self.history, x0.size), x0.dtype)
    return AndersonState(z, z, jnp.int32(0), x0)

  def step(self, f, st: AndersonState):
    x = st.x_next
    fx = f(x)
    slot = st.count % self.history
    xs = st.xs.at[slot].set(x.reshape(-1))
    fs = st.fs.at[slot].set(fx.reshape(-1))
    count = st.count + 1
    mixed = self.mix(xs, fs, count).reshape(x.shape)
    # x1 = f(x0); a singular system (e.g. an exactly zero residual) falls back to f(x)
    x_new = jnp.where((count < 2) | ~jnp.all(jnp.isfinite(mixed)), fx, mixed)
    return AndersonState(xs, fs, count, x_new), x, fx

  def mix(self, xs, fs, count):
    m = self.history
    n = jnp.minimum(count, m)
    valid = jnp.arange(m) < n
    g = jnp.where(valid[:, None], fs - xs, 0)
    gg = g @ g.T
    scale = jnp.trace(gg) / n if self.ridge_relative else 1.0
    eye = jnp.eye(m, dtype=gg.dtype)
    a = jnp.where(valid[:, None] & valid[None, :], gg + self.ridge * scale * eye, eye)
    v = valid.astype(gg.dtype)   # unused slots get a_i = 0
    bordered = jnp.block([[jnp.zeros((1, 1), gg.dtype), v[None]], [v[:, None], a]])
    alpha = jnp.linalg.solve(bordered, jnp.zeros(m + 1, gg.dtype).at[0].set(1))[1:]
    return self.beta * (alpha @ fs) + (1 - self.beta) * (alpha @ xs)


@dataclasses.dataclass(frozen=True)
class FixedPoint:
  """Damped Picard iteration x <- (1 - damping) x + damping f(x): one update of
  jaxopt's FixedPointIteration on the damped map. The state is x."""
  damping: float = 1.0

  def init(self, x0):
    return x0

  def step(self, f, x):
    d = self.damping

    def damped(x):  # aux carries the undamped f(x) for the residual
      fx = f(x)
      return (1 - d) * x + d * fx, fx
    it = jaxopt.FixedPointIteration(damped, has_aux=True, maxiter=1, jit=False,
                                    implicit_diff=False)
    x_new, st = it.update(x, it.init_state(x))
    return x_new, x, st.aux


@dataclasses.dataclass(frozen=True)
class Broyden:
  """jaxopt's limited-memory Broyden on g = f - id. gamma=-1 makes the first
  step a plain f step (as torchdeq); stepsize=1 disables the line search.
  jaxopt's `init_state` already evaluates f at x0: `first` is that evaluation,
  and the state is (x, jaxopt's BroydenState)."""
  history: int = 6

  def _solver(self, f):
    def g(x):
      fx = f(x)
      return fx - x, fx
    return jaxopt.Broyden(g, has_aux=True, maxiter=1, stepsize=1.0,
                          history_size=self.history, gamma=-1.0, jit=False,
                          implicit_diff=False)

  def init(self, x0):
    return x0

  def first(self, f, x0):
    """-> (state, x0, f(x0)): jaxopt's init, which evaluates f once."""
    inner = self._solver(f).init_state(x0)
    return (x0, inner), x0, inner.aux

  def step(self, f, st):
    x, inner = st
    x_new, inner = self._solver(f).update(x, inner)
    return (x_new, inner), x_new, inner.aux


def make_solver(cfg: SolverConfig):
  """The method's solver object, from the config's fields."""
  if cfg.method == 'anderson':
    return Anderson(cfg.anderson_history, cfg.anderson_ridge, cfg.anderson_ridge_relative,
                    cfg.anderson_beta)
  if cfg.method == 'fixed_point':
    return FixedPoint(cfg.damping)
  return Broyden(cfg.anderson_history)


def _start(solver, f, x0):
  """(state, evaluated pairs so far): only Broyden evaluates f in its init."""
  if hasattr(solver, 'first'):
    st, x, fx = solver.first(f, x0)
    return st, [(x, fx)]
  return solver.init(x0), []


# --- the loop ----------------------------------------------------------------

class LoopState(NamedTuple):
  solver: Any          # the method's own state
  best_x: jax.Array    # current answer: first iterate under tol, else lowest residual
  best_res: jax.Array  # its residual (tol_mode units)
  best_abs: jax.Array  # its absolute residual
  evaluations: jax.Array
  done: jax.Array      # under tol, or a non-finite evaluation
  nonfinite: jax.Array


def _graph_mask(h, node_mask):
  """[B, N] mask in h's dtype: node_mask, or every node real."""
  return (jnp.ones(h.shape[:2], h.dtype) if node_mask is None
          else node_mask.astype(h.dtype))


def _node_mask(mask, x):
  return mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim)) > 0


def _residual(x, fx, mask, tol_mode):
  """(residual in tol_mode units, absolute residual) of x over real nodes."""
  m = _node_mask(mask, x)
  d = jnp.where(m, fx - x, 0)
  a = jnp.sqrt(jnp.sum(d * d))
  if tol_mode == 'abs':
    return a, a
  return a / (jnp.sqrt(jnp.sum(jnp.where(m, fx, 0) ** 2)) + 1e-9), a


def _accept(ls: LoopState, x, fx, mask, cfg) -> LoopState:
  """Counts an evaluation; keeps (x, f(x)) if finite and of lower residual."""
  m = _node_mask(mask, x)
  r, a = _residual(x, fx, mask, cfg.tol_mode)
  ok = (jnp.all(jnp.isfinite(jnp.where(m, fx, 0))) & jnp.all(jnp.isfinite(jnp.where(m, x, 0)))
        & jnp.isfinite(r))
  better = ok & (r < ls.best_res)
  return ls._replace(
      best_x=jnp.where(better, x, ls.best_x), best_res=jnp.where(better, r, ls.best_res),
      best_abs=jnp.where(better, a, ls.best_abs), evaluations=ls.evaluations + 1,
      done=~ok | (r < cfg.tol), nonfinite=ls.nonfinite + (~ok).astype(jnp.int32))


def _solve_one(f, x0, mask, cfg: SolverConfig, cap: int):
  """One graph: iterate until under tol, a non-finite evaluation, or `cap`
  evaluations. f maps x0-shaped arrays. Returns (x, SolveStats of one graph)."""
  solver = make_solver(cfg)
  inf = jnp.asarray(jnp.inf, x0.dtype)
  st, pairs = _start(solver, f, x0)
  ls = LoopState(st, x0, inf, inf, jnp.int32(0), jnp.bool_(False), jnp.int32(0))
  for x, fx in pairs:
    ls = _accept(ls, x, fx, mask, cfg)

  def body(ls):
    st, x, fx = solver.step(f, ls.solver)
    return _accept(ls._replace(solver=st), x, fx, mask, cfg)

  ls = lax.while_loop(lambda ls: ~ls.done & (ls.evaluations < cap), body, ls)
  converged = ls.best_res < cfg.tol
  result = jnp.where(converged, CONVERGED, jnp.where(ls.nonfinite > 0, NONFINITE, MAX_ITER))
  stats = SolveStats(ls.evaluations, converged, ls.best_res, ls.best_abs, ls.nonfinite,
                     result.astype(jnp.int32))
  return ls.best_x, stats


def _masked(fun):
  """Holds padded nodes at h0 on input and output, so f never sees or moves them."""
  def fm(h, params, args, h0, mask):
    m = _node_mask(mask, h)
    return jnp.where(m, fun(jnp.where(m, h, h0), params, *args), h0)
  return fm


# --- gradients ---------------------------------------------------------------

def _backward_solve(cfg: SolverConfig):
  """Adjoint linear solve for the IFT, never jaxopt's default normal-CG.

  jaxopt asks for u with matvec(u) = (J^T - I) u = b (b = -v), i.e. the adjoint
  fixed point u = J^T u + v, which 'anderson' iterates directly."""
  def solve(matvec, b):
    if cfg.backward_solver == 'gmres':
      # jax's gmres counts restart cycles in maxiter: one cycle of budget Arnoldi steps.
      return linear_solve.solve_gmres(matvec, b, tol=cfg.backward_tol,
                                      restart=cfg.backward_max_iter, maxiter=1,
                                      solve_method='incremental')
    if cfg.backward_solver == 'bicgstab':   # two matvecs per iteration
      return linear_solve.solve_bicgstab(matvec, b, tol=cfg.backward_tol,
                                         maxiter=max(1, cfg.backward_max_iter // 2))
    adjoint = lambda u: matvec(u) + u - b       # u -> J^T u + v
    acfg = dataclasses.replace(cfg, method='anderson', tol=cfg.backward_tol, tol_mode='rel')
    u, _ = _solve_one(adjoint, jnp.zeros_like(b), jnp.ones(b.shape[:1], b.dtype), acfg,
                      cfg.backward_max_iter)
    return u
  return solve


def solve(f, h0, params, args, *, config: SolverConfig, training: bool, node_mask=None):
  """Solves h = f(h, params, *args) per graph; f acts on one graph ([N, H]).

  vmaps over the leading axis B of h0, of every leaf of args and of node_mask
  ([B, N] bool; padded nodes never count in the residual and stay at h0).
  `training` only selects the cap. Works in h0's dtype (float64 under x64).
  Returns (h*, SolveStats); the gradient of h* w.r.t. params and args follows
  config.grad (in train and eval alike).
  """
  config.validate()
  cap = config.max_iter_train if training else config.max_iter_eval
  args = tuple(args)
  mask = _graph_mask(h0, node_mask)
  fm = _masked(f)

  def run(init_h, params, args, h0, mask):
    return _solve_one(lambda h: fm(h, params, args, h0, mask), init_h, mask, config, cap)

  if config.grad == 'ift':
    run = implicit_diff.custom_fixed_point(fm, has_aux=True,
                                           solve=_backward_solve(config))(run)

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
  of each f evaluation of config.method, ignoring the tolerance. For convergence
  plots: the same updates `solve` makes, run to a fixed count."""
  config.validate()
  mask = _graph_mask(h0, node_mask)
  fm = _masked(f)
  solver = make_solver(config)

  def one(h0, args, mask):
    fg = lambda h: fm(h, params, args, h0, mask)
    residual = lambda x, fx: _residual(x, fx, mask, config.tol_mode)[0]
    st, pairs = _start(solver, fg, h0)
    first = [residual(x, fx)[None] for x, fx in pairs]

    def body(st, _):
      st, x, fx = solver.step(fg, st)
      return st, residual(x, fx)
    _, res = lax.scan(body, st, None, length=evaluations - len(first))
    return jnp.concatenate(first + [res])

  return jax.vmap(one, in_axes=(0, 0, 0))(h0, tuple(args), mask)


def jacobian_penalty(f, h, params, args, key, node_mask=None) -> jax.Array:
  """Hutchinson estimate ||v^T J_f(h)||^2 / h.size with one Gaussian v ([B, N, H] h).

  Matches torchdeq's jac_reg on DEAR's dense padded tensor: with node_mask, v is
  zero on padded rows (whose outputs DEAR zero-pads). Differentiable w.r.t. params.
  """
  v = jnp.where(_node_mask(_graph_mask(h, node_mask), h),
                jax.random.normal(key, h.shape, h.dtype), 0)
  fb = lambda hh: jax.vmap(lambda hg, a: f(hg, params, *a))(hh, tuple(args))
  _, vjp = jax.vjp(fb, h)
  (u,) = vjp(v)
  return jnp.sum(u * u) / h.size


def spectral_radius(f, h, params, args, key, *, iterations: int = 30,
                    node_mask=None) -> jax.Array:
  """[B]: power-iteration estimate of the spectral radius of J_f at h, per graph.

  The geometric mean of ||J v_k|| / ||v_k|| over the second half of the
  iterations, robust to a complex dominant pair (where single ratios oscillate).
  Below 1 means the fixed point attracts; near 1, iteration crawls."""
  mask = _graph_mask(h, node_mask)
  fm = _masked(f)
  keys = jax.random.split(key, h.shape[0])

  def one(h, args, mask, k):
    jvp = lambda v: jax.jvp(lambda x: fm(x, params, args, h, mask), (h,), (v,))[1]
    v = jnp.where(_node_mask(mask, h), jax.random.normal(k, h.shape, h.dtype), 0)
    v = v / jnp.linalg.norm(v)

    def body(v, _):
      u = jvp(v)
      n = jnp.linalg.norm(u)
      return u / jnp.maximum(n, 1e-30), jnp.log(jnp.maximum(n, 1e-30))
    _, logs = lax.scan(body, v, None, length=iterations)
    return jnp.exp(jnp.mean(logs[iterations // 2:]))

  return jax.vmap(one)(h, tuple(args), mask, keys)
