"""Per-graph equilibrium solve h* = f(h*) for DEAR.

Solvers are small objects with `init(x0)` and `step(f, state) -> (state, x, f(x))`
(optimistix style): each step evaluates f once, at a point x it returns with f(x),
so the loop measures the residual without extra evaluations. One loop
(`iterate`: `start` then `advance`, a `lax.while_loop` with a named `LoopState`)
drives every method, graph by graph under vmap, and returns the first iterate
under tolerance (DEAR's `first_hit_under_tol`) or, at the cap, the
lowest-residual iterate (torchdeq). It reads one trajectory with several
stopping rules (`Target`s) at once, and can keep the iterates and the residual
history: `solve`, `record` (alignment, convergence plots, the fixed-point
checks) and the IFT's Anderson adjoint all run it.

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

Methods and gradients are registries (`SOLVERS`, `GRADIENTS`): a class
decorated with `register_solver(name)` / `register_gradient(name)` becomes a
`dear.method` / `dear.grad`, and reads and checks its own config keys.
"""
import contextlib
import dataclasses
import functools
import math
import numbers
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from dear_jax.groups import in_groups

with warnings.catch_warnings():
  warnings.filterwarnings(
      'ignore', message='JAXopt is no longer maintained', category=DeprecationWarning)
  import jaxopt
  from jaxopt import implicit_diff, linear_solve

TOL_MODES = ('rel', 'abs')
BACKWARD_SOLVERS = ('anderson', 'gmres', 'bicgstab')

# SolveStats.result codes (optimistix-style explicit outcomes).
CONVERGED, MAX_ITER, NONFINITE = 0, 1, 2

# The registries: dear.method -> solver class, dear.grad -> gradient class.
# A module of one's own adds to them with `register_solver(name)` /
# `register_gradient(name)` on its class (README, "Extending").
SOLVERS: dict = {}
GRADIENTS: dict = {}


def register_solver(name: str):
  """Class decorator: `name` becomes an allowed `dear.method`."""
  def add(cls):
    SOLVERS[name] = cls
    return cls
  return add


def register_gradient(name: str):
  """Class decorator: `name` becomes an allowed `dear.grad`."""
  def add(cls):
    GRADIENTS[name] = cls
    return cls
  return add


def _int_at_least(prefix, name, v, lo):
  if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < lo:
    raise ValueError(f'{prefix}{name}={v!r}; must be an int >= {lo}')


def _real(prefix, name, v, good, want):
  if not (isinstance(v, numbers.Real) and not isinstance(v, bool)
          and math.isfinite(v) and good(v)):
    raise ValueError(f'{prefix}{name}={v!r}; must be {want}')


def _positive(prefix, name, v):
  _real(prefix, name, v, lambda v: v > 0, 'a finite float > 0')


def _unit(prefix, name, v):
  _real(prefix, name, v, lambda v: 0 < v <= 1, 'a float in (0, 1]')


class Configured:
  """A registered solver or gradient: it owns the config keys it reads.
  KEYS: {its field: the `dear` key that sets it}; `from_config` builds it
  from a SolverConfig, `check` names a bad value of its keys. Every
  registered class checks its keys on every config, whichever it runs.
  LABEL and WORDS name it in tables and in prose (the notebooks' text)."""
  KEYS: dict = {}
  LABEL = WORDS = ''

  @classmethod
  def from_config(cls, cfg):
    return cls(**{f: getattr(cfg, k) for f, k in cls.KEYS.items()})

  @classmethod
  def check(cls, cfg, prefix: str) -> None:
    """Raises ValueError (one line) naming the first bad key of its own."""


@dataclasses.dataclass(frozen=True)
class SolverConfig:
  """Solver settings; `validate` names the offending field as `<prefix><field>`.

  The common settings are here; each registered solver and gradient reads
  and checks its own keys (Configured.KEYS). The defaults are the project's
  (configs/default.py's `dear` section is built from them), chosen by the
  screen in results/equilibrium: a relative tolerance tight enough that the
  score does not move when the solve goes on, and the implicit gradient.
  DEAR's release: tol 0.1, eval cap 40, the 1-step gradient
  (configs/dear_paper.py)."""
  method: str = 'anderson'       # SOLVERS
  max_iter_train: int = 40       # caps count f evaluations
  max_iter_eval: int = 100
  tol: float = 1e-3              # DEAR's release: 0.1 (certifies little)
  tol_mode: str = 'rel'          # rel: |f(h)-h| / (|f(h)| + 1e-9); abs: |f(h)-h| (per graph)
  anderson_history: int = 6
  anderson_ridge: float = 1e-4   # times the mean squared residual of the history
  anderson_ridge_relative: bool = True  # False: absolute ridge, as torchdeq's `lam`
  anderson_beta: float = 1.0
  damping: float = 1.0           # fixed_point: h <- (1-damping) h + damping f(h)
  broyden_history: int = 0       # Broyden's memory; 0: anderson_history's
  grad: str = 'ift'              # GRADIENTS (DEAR's release: jfb)
  phantom_steps: int = 5
  phantom_tau: float = 0.5
  backward_solver: str = 'anderson'  # BACKWARD_SOLVERS
  backward_tol: float = 1e-3     # relative residual of the adjoint solve
  backward_max_iter: int = 40    # matvec (VJP) budget of the adjoint solve

  def validate(self, prefix: str = 'SolverConfig.') -> None:
    """Raises ValueError naming the first bad field and what is allowed."""
    choices = dict(method=SOLVERS, tol_mode=TOL_MODES, grad=GRADIENTS)
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ValueError(f'{prefix}{name}={getattr(self, name)!r}; allowed: '
                         f'{", ".join(allowed)}')
    for name in ('max_iter_train', 'max_iter_eval'):
      _int_at_least(prefix, name, getattr(self, name), 1)
    _positive(prefix, 'tol', self.tol)
    for cls in (*SOLVERS.values(), *GRADIENTS.values()):
      cls.check(self, prefix)


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


@register_solver('anderson')
@dataclasses.dataclass(frozen=True)
class Anderson(Configured):
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
  KEYS = dict(history='anderson_history', ridge='anderson_ridge',
              ridge_relative='anderson_ridge_relative', beta='anderson_beta')
  LABEL, WORDS = 'Anderson', 'Anderson acceleration'

  @classmethod
  def check(cls, cfg, prefix):
    _int_at_least(prefix, 'anderson_history', cfg.anderson_history, 2)
    if not isinstance(cfg.anderson_ridge_relative, bool):
      raise ValueError(f'{prefix}anderson_ridge_relative='
                       f'{cfg.anderson_ridge_relative!r}; must be True or False')
    _positive(prefix, 'anderson_beta', cfg.anderson_beta)
    _real(prefix, 'anderson_ridge', cfg.anderson_ridge, lambda v: v >= 0,
          'a finite float >= 0')

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


@register_solver('fixed_point')
@dataclasses.dataclass(frozen=True)
class FixedPoint(Configured):
  """Damped Picard iteration x <- (1 - damping) x + damping f(x): one update of
  jaxopt's FixedPointIteration on the damped map. The state is x."""
  damping: float = 1.0
  KEYS = dict(damping='damping')
  LABEL, WORDS = 'fixed point', 'plain fixed-point iteration'

  @classmethod
  def check(cls, cfg, prefix):
    _unit(prefix, 'damping', cfg.damping)

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


@register_solver('broyden')
@dataclasses.dataclass(frozen=True)
class Broyden(Configured):
  """jaxopt's limited-memory Broyden on g = f - id. gamma=-1 makes the first
  step a plain f step (as torchdeq); stepsize=1 disables the line search.
  jaxopt's `init_state` already evaluates f at x0: `first` is that evaluation,
  and the state is (x, jaxopt's BroydenState). Its memory is
  `broyden_history`, or `anderson_history` when that is 0 (as it always was
  before Broyden had its own key)."""
  history: int = 6
  LABEL, WORDS = 'Broyden', "Broyden's method"

  @classmethod
  def from_config(cls, cfg):
    return cls(cfg.broyden_history or cfg.anderson_history)

  @classmethod
  def check(cls, cfg, prefix):
    _int_at_least(prefix, 'broyden_history', cfg.broyden_history, 0)

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
  return SOLVERS[cfg.method].from_config(cfg)


def make_gradient(cfg: SolverConfig):
  """The gradient's object, from the config's fields."""
  return GRADIENTS[cfg.grad].from_config(cfg)


def _start(solver, f, x0):
  """(state, evaluated pairs so far): only Broyden evaluates f in its init."""
  if hasattr(solver, 'first'):
    st, x, fx = solver.first(f, x0)
    return st, [(x, fx)]
  return solver.init(x0), []


# --- the loop ----------------------------------------------------------------

class Target(NamedTuple):
  """A stopping rule read off a trajectory: what a solve with this tol and cap
  returns. `stall` > 0 also stops once the best residual has not halved in
  that many evaluations (for reference solves that plateau in float32)."""
  tol: float
  cap: int
  stall: int = 0


class Tracker(NamedTuple):
  """One Target's state along the trajectory (frozen once it stops)."""
  best_x: jax.Array    # current answer: first iterate under tol, else lowest residual
  best_res: jax.Array  # its residual (tol_mode units)
  best_abs: jax.Array  # its absolute residual
  evaluations: jax.Array
  done: jax.Array      # under tol, a non-finite evaluation, or stalled
  nonfinite: jax.Array
  anchor_res: jax.Array  # best residual when it last halved ...
  anchor_at: jax.Array   # ... and the evaluation count then


class LoopState(NamedTuple):
  solver: Any          # the method's own state
  count: jax.Array     # f evaluations made
  trackers: tuple      # a Tracker per Target
  iterates: Any        # [k, ...] points x of the first k evaluations, or None
  history: Any         # [k] residuals of the first k evaluations, or None


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


def _active(tr: Tracker, target: Target):
  return ~tr.done & (tr.evaluations < target.cap)


def _accept(tr: Tracker, x, fx, r, a, mask, target: Target) -> Tracker:
  """Counts an evaluation; keeps (x, f(x)) if finite and of lower residual."""
  m = _node_mask(mask, x)
  ok = (jnp.all(jnp.isfinite(jnp.where(m, fx, 0))) & jnp.all(jnp.isfinite(jnp.where(m, x, 0)))
        & jnp.isfinite(r))
  better = ok & (r < tr.best_res)
  best_res = jnp.where(better, r, tr.best_res)
  evaluations = tr.evaluations + 1
  done = ~ok | (r < target.tol)
  anchor_res, anchor_at = tr.anchor_res, tr.anchor_at
  if target.stall:
    halved = best_res < 0.5 * anchor_res
    anchor_res = jnp.where(halved, best_res, anchor_res)
    anchor_at = jnp.where(halved, evaluations, anchor_at)
    done = done | (evaluations - anchor_at >= target.stall)
  return Tracker(jnp.where(better, x, tr.best_x), best_res,
                 jnp.where(better, a, tr.best_abs), evaluations, done,
                 tr.nonfinite + (~ok).astype(jnp.int32), anchor_res, anchor_at)


def _observe(ls: LoopState, x, fx, mask, cfg, targets) -> LoopState:
  """One evaluation (x, f(x)): every still-active Target takes it; the
  recordings keep it while they have room."""
  r, a = _residual(x, fx, mask, cfg.tol_mode)
  trackers = tuple(
      jax.tree.map(functools.partial(jnp.where, _active(tr, t)),
                   _accept(tr, x, fx, r, a, mask, t), tr)
      for tr, t in zip(ls.trackers, targets))
  iterates, history = ls.iterates, ls.history
  if iterates is not None:
    keep = ls.count < iterates.shape[0]
    iterates = jnp.where(keep, iterates.at[ls.count].set(x), iterates)
  if history is not None:
    keep = ls.count < history.shape[0]
    history = jnp.where(keep, history.at[ls.count].set(r), history)
  return LoopState(ls.solver, ls.count + 1, trackers, iterates, history)


def start(f, x0, mask, cfg: SolverConfig, targets, *, iterates: int = 0,
          history: int = 0) -> LoopState:
  """One graph's trajectory before its loop (Broyden's init evaluates f once)."""
  solver = make_solver(cfg)
  inf = jnp.asarray(jnp.inf, x0.dtype)
  tracker = Tracker(x0, inf, inf, jnp.int32(0), jnp.bool_(False), jnp.int32(0), inf,
                    jnp.int32(0))
  st, pairs = _start(solver, f, x0)
  ls = LoopState(st, jnp.int32(0), (tracker,) * len(targets),
                 jnp.zeros((iterates,) + x0.shape, x0.dtype) if iterates else None,
                 jnp.zeros((history,), x0.dtype) if history else None)
  for x, fx in pairs:
    ls = _observe(ls, x, fx, mask, cfg, targets)
  return ls


def advance(f, ls: LoopState, mask, cfg: SolverConfig, targets, drive=None) -> LoopState:
  """Iterates while a Target in `drive` (indices; default all) is active or
  the residual history has room. Targets outside `drive` take evaluations
  while they are active but do not keep the loop going."""
  solver = make_solver(cfg)
  drive = range(len(targets)) if drive is None else drive

  def cond(ls):
    go = jnp.bool_(False) if ls.history is None else ls.count < ls.history.shape[0]
    for i in drive:
      go = go | _active(ls.trackers[i], targets[i])
    return go

  def body(ls):
    st, x, fx = solver.step(f, ls.solver)
    return _observe(ls._replace(solver=st), x, fx, mask, cfg, targets)

  return lax.while_loop(cond, body, ls)


def answer(tr: Tracker, target: Target):
  """(x, SolveStats of one graph) of a Target: what a solve with its tol and
  cap returns."""
  converged = tr.best_res < target.tol
  result = jnp.where(converged, CONVERGED, jnp.where(
      tr.nonfinite > 0, NONFINITE, MAX_ITER))
  return tr.best_x, SolveStats(tr.evaluations, converged, tr.best_res, tr.best_abs,
                               tr.nonfinite, result.astype(jnp.int32))


def iterate(f, x0, mask, cfg: SolverConfig, targets, *, iterates: int = 0,
            history: int = 0) -> LoopState:
  """The one loop: one graph's trajectory of cfg.method from x0, run until
  every Target has stopped (under its tol, a non-finite evaluation, its cap)
  and `history` evaluations are made. f maps x0-shaped arrays."""
  ls = start(f, x0, mask, cfg, targets, iterates=iterates, history=history)
  return advance(f, ls, mask, cfg, targets)


def _solve_one(f, x0, mask, cfg: SolverConfig, cap: int):
  """One graph: iterate until under tol, a non-finite evaluation, or `cap`
  evaluations. Returns (x, SolveStats of one graph)."""
  target = Target(cfg.tol, cap)
  return answer(iterate(f, x0, mask, cfg, (target,)).trackers[0], target)


def _masked(fun):
  """Holds padded nodes at h0 on input and output, so f never sees or moves them."""
  def fm(h, params, args, h0, mask):
    m = _node_mask(mask, h)
    return jnp.where(m, fun(jnp.where(m, h, h0), params, *args), h0)
  return fm


# --- gradients ---------------------------------------------------------------

class Gradient(Configured):
  """How `solve` differentiates h* (as optimistix's adjoints and torchdeq's
  backward factory): `solve` returns one graph's (h, SolveStats) from
  `forward(h_init, params, args, h0, mask)`, the solver's loop, and `fm`,
  the masked map fm(h, params, args, h0, mask); `after` is what it applies,
  with gradient, past the solver's answer (`polish` applies it alone)."""

  def solve(self, forward, fm, h0, params, args, mask):
    raise NotImplementedError

  def after(self, fm, h, params, args, h0, mask):
    return h


@register_gradient('ift')
@dataclasses.dataclass(frozen=True)
class Implicit(Gradient):
  """The implicit function theorem: jaxopt's `custom_fixed_point`, its
  adjoint linear solve by `backward_solver` (never jaxopt's default
  normal-CG). `config`: the run's SolverConfig, whose anderson_* keys also
  set the adjoint's Anderson."""
  config: SolverConfig
  LABEL = 'IFT'
  WORDS = 'the implicit gradient (implicit function theorem)'

  @classmethod
  def from_config(cls, cfg):
    return cls(cfg)

  @classmethod
  def check(cls, cfg, prefix):
    if cfg.backward_solver not in BACKWARD_SOLVERS:
      raise ValueError(f'{prefix}backward_solver={cfg.backward_solver!r}; '
                       f'allowed: {", ".join(BACKWARD_SOLVERS)}')
    _int_at_least(prefix, 'backward_max_iter', cfg.backward_max_iter, 1)
    _positive(prefix, 'backward_tol', cfg.backward_tol)

  def solve(self, forward, fm, h0, params, args, mask):
    run = implicit_diff.custom_fixed_point(fm, has_aux=True,
                                           solve=self.backward)(forward)
    return run(h0, params, args, h0, mask)

  def backward(self, matvec, b):
    """u with matvec(u) = (J^T - I) u = b (b = -v), i.e. the adjoint fixed
    point u = J^T u + v, which 'anderson' iterates directly."""
    cfg = self.config
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


@dataclasses.dataclass(frozen=True)
class OneStep(Gradient):
  """DEAR's 1-step (Jacobian-free) gradient: no gradient through the
  forward loop (h* is a constant); the model's own call at h* carries it."""
  LABEL, WORDS = '1-step (JFB)', "DEAR's 1-step gradient"

  def solve(self, forward, fm, h0, params, args, mask):
    h, stats = forward(*lax.stop_gradient((h0, params, args, h0)), mask)
    return self.after(fm, h, params, args, h0, mask), stats


@register_gradient('phantom')
@dataclasses.dataclass(frozen=True)
class Phantom(OneStep):
  """The phantom gradient: `steps` damped steps with gradient past the
  detached answer, h <- (1 - tau) h + tau f(h)."""
  steps: int = 5
  tau: float = 0.5
  KEYS = dict(steps='phantom_steps', tau='phantom_tau')
  LABEL, WORDS = 'phantom', 'the phantom gradient'

  @classmethod
  def check(cls, cfg, prefix):
    _int_at_least(prefix, 'phantom_steps', cfg.phantom_steps, 1)
    _unit(prefix, 'phantom_tau', cfg.phantom_tau)

  def after(self, fm, h, params, args, h0, mask):
    tau = self.tau
    step = lambda _, h: (1 - tau) * h + tau * fm(h, params, args, h0, mask)
    return lax.fori_loop(0, self.steps, step, h)


register_gradient('jfb')(OneStep)


def solve(f, h0, params, args, *, config: SolverConfig, training: bool, node_mask=None,
          chunk: int = 0):
  """Solves h = f(h, params, *args) per graph; f acts on one graph ([N, H]).

  vmaps over the leading axis B of h0, of every leaf of args and of node_mask
  ([B, N] bool; padded nodes never count in the residual and stay at h0).
  `training` only selects the cap. Works in h0's dtype (float64 under x64).
  Returns (h*, SolveStats); the gradient of h* w.r.t. params and args follows
  config.grad (in train and eval alike).

  chunk > 0 solves gcd(B, chunk) graphs at a time, one group after the other
  (lax.map), each group's loop ending with its own slowest graph instead of
  the batch's: the same answers (each graph's loop never sees its
  batchmates), less work where the device runs graphs one after another.
  """
  config.validate()
  cap = config.max_iter_train if training else config.max_iter_eval
  args = tuple(args)
  mask = _graph_mask(h0, node_mask)
  fm = _masked(f)
  gradient = make_gradient(config)

  def forward(init_h, params, args, h0, mask):
    return _solve_one(lambda h: fm(h, params, args, h0, mask), init_h, mask, config, cap)

  def one(h0, params, args, mask):
    return gradient.solve(forward, fm, h0, params, args, mask)

  batched = jax.vmap(one, in_axes=(0, None, 0, 0))
  return in_groups(lambda h0, args, mask: batched(h0, params, args, mask), chunk,
                   h0, args, mask)


def polish(f, h, h0, params, args, *, config: SolverConfig, node_mask=None):
  """[B, N, H]: what `solve` returns for the solver's answer h: h after the
  gradient's own steps past the answer (the phantom steps), else h."""
  gradient = make_gradient(config)
  if type(gradient).after is Gradient.after:
    return h
  fm = _masked(f)
  return jax.vmap(lambda h, h0, args, mask: gradient.after(fm, h, params, args, h0, mask))(
      h, h0, tuple(args), _graph_mask(h0, node_mask))


class Recording(NamedTuple):
  """What `record` returns, batched over graphs."""
  answers: tuple     # (h [B, N, H], SolveStats) per Target, `targets` then `then`
  evaluations: Any   # [B] f evaluations made
  iterates: Any      # [B, k, N, H] points of the first k evaluations (zero past the last), or None
  history: Any       # [B, k] residuals of the first k evaluations, or None


def record(f, h0, params, args, *, config: SolverConfig, targets=(), then=(),
           then_precision: str | None = None, iterates: int = 0, history: int = 0,
           node_mask=None, chunk: int = 0) -> Recording:
  """One trajectory of config.method per graph (no gradient), read by several
  stopping rules at once: the answer each Target's separate solve would
  return (same tol, cap and updates), the first `iterates` points evaluated,
  the residuals of the first `history` evaluations (ignoring tolerances).

  The loop runs until every Target in `targets` has stopped and the history
  is full; the Targets in `then` take evaluations meanwhile and are then
  continued alone by a second loop, traced under
  jax.default_matmul_precision(then_precision) when that is given. `chunk`:
  as `solve`'s (graphs in groups, each group's loops stopping on their own)."""
  config.validate()
  targets, then = tuple(targets), tuple(then)
  every = targets + then
  mask = _graph_mask(h0, node_mask)
  fm = _masked(f)

  def one(h0, args, mask):
    fg = lambda h: fm(h, params, args, h0, mask)
    ls = start(fg, h0, mask, config, every, iterates=iterates, history=history)
    ls = advance(fg, ls, mask, config, every, drive=range(len(targets)))
    if then:
      with contextlib.ExitStack() as stack:
        if then_precision is not None:
          stack.enter_context(jax.default_matmul_precision(then_precision))
        ls = advance(fg, ls, mask, config, every,
                     drive=range(len(targets), len(every)))
    answers = tuple(answer(tr, t) for tr, t in zip(ls.trackers, every))
    return answers, ls.count, ls.iterates, ls.history

  h0, params, args = lax.stop_gradient((h0, params, tuple(args)))
  return Recording(*in_groups(jax.vmap(one), chunk, h0, args, mask))


def residual_history(f, h0, params, args, *, config: SolverConfig, evaluations: int,
                     node_mask=None) -> jax.Array:
  """[B, evaluations]: the residual (config.tol_mode units, as `solve` measures it)
  of each f evaluation of config.method, ignoring the tolerance. For convergence
  plots: the same updates `solve` makes, run to a fixed count."""
  return record(f, h0, params, args, config=config, history=evaluations,
                node_mask=node_mask).history


def jacobian_penalty(f, h, params, args, key, node_mask=None,
                     per_node: bool = False) -> jax.Array:
  """Hutchinson estimate ||v^T J_f(h)||^2 / h.size with one Gaussian v ([B, N, H] h).

  Matches torchdeq's jac_reg on DEAR's dense padded tensor: with node_mask, v is
  zero on padded rows (whose outputs DEAR zero-pads). Differentiable w.r.t. params.
  `per_node` (a batch padded to one shape, `batches.pad_nodes`): node n's
  draws come from fold_in(key, n) and the mean runs over the real rows, so
  the value is the unpadded graphs' whatever the padding.
  """
  mask = _graph_mask(h, node_mask)
  if per_node:
    one = lambda i: jax.random.normal(jax.random.fold_in(key, i),
                                      h.shape[:1] + h.shape[2:], h.dtype)
    v = jnp.moveaxis(jax.vmap(one)(jnp.arange(h.shape[1])), 0, 1)
    size = jnp.sum(mask) * (h.size // (h.shape[0] * h.shape[1]))
  else:
    v, size = jax.random.normal(key, h.shape, h.dtype), h.size
  v = jnp.where(_node_mask(mask, h), v, 0)
  fb = lambda hh: jax.vmap(lambda hg, a: f(hg, params, *a))(hh, tuple(args))
  _, vjp = jax.vjp(fb, h)
  (u,) = vjp(v)
  return jnp.sum(u * u) / size


def spectral_radius(f, h, params, args, key, *, iterations: int = 30, settle: float = 1e-3,
                    window: int = 5, node_mask=None, chunk: int = 0) -> jax.Array:
  """[B]: power-iteration estimate of the spectral radius of J_f at h, per graph.

  The geometric mean of ||J v_k|| / ||v_k|| over the second half of the
  iterations so far, robust to a complex dominant pair (where single ratios
  oscillate). A graph stops once its estimate moved by less than `settle`
  (relative) over the last `window` iterations (at least 2 windows), else after
  `iterations` JVPs; settle=0 always makes `iterations`. `chunk`: as
  `solve`'s. Below 1 means the fixed point attracts; near 1, iteration crawls."""
  mask = _graph_mask(h, node_mask)
  fm = _masked(f)
  keys = jax.random.split(key, h.shape[0])
  idx = jnp.arange(iterations)

  def estimate(logs, n):
    half = (idx >= n // 2) & (idx < n)
    return jnp.exp(jnp.sum(jnp.where(half, logs, 0)) / jnp.maximum(jnp.sum(half), 1))

  def one(h, args, mask, k):
    jvp = lambda v: jax.jvp(lambda x: fm(x, params, args, h, mask), (h,), (v,))[1]
    v = jnp.where(_node_mask(mask, h), jax.random.normal(k, h.shape, h.dtype), 0)
    v = v / jnp.linalg.norm(v)

    def body(c):
      v, logs, ests, n, _ = c
      u = jvp(v)
      norm = jnp.maximum(jnp.linalg.norm(u), 1e-30)
      logs = logs.at[n].set(jnp.log(norm))
      n = n + 1
      est = estimate(logs, n)
      ests = ests.at[n].set(est)
      settled = (settle > 0) & (n >= 2 * window) & (
          jnp.abs(est - ests[jnp.maximum(n - window, 0)]) <= settle * est)
      return u / norm, logs, ests, n, settled

    zeros = jnp.zeros((iterations + 1,), h.dtype)
    _, logs, _, n, _ = lax.while_loop(lambda c: ~c[4] & (c[3] < iterations), body,
                                      (v, zeros[:-1], zeros, jnp.int32(0), jnp.bool_(False)))
    return estimate(logs, n)

  return in_groups(jax.vmap(one), chunk, h, tuple(args), mask, keys)
