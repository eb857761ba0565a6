"""DEAR: decode the outputs from the processor's fixed point H* = P(H*; U, E, g).

Inputs are encoded once; the solver (dear_jax.solver) iterates only the node
update from H0 = 0, graph by graph, without hints or step counts. At H* the
processor is applied once more, with triplet edge features, so the decoders
see exactly what the stepwise model's decoders see at a step:
h_t = [U, H*, P(H*)], e_t = [E, triplets(H*)]. With the 'jfb' gradient this
last call is the only one that carries gradient (DEAR's 1-step gradient).

Stochastic extra iterations (DEAR's "S", `dear.stochastic_alpha` > 0, training
only): past the solver's answer each graph takes K more f steps, with
gradient, where K counts leading successes of Bernoulli(alpha) draws, capped
at `stochastic_max_steps` (P(K >= k) = alpha^k). alpha decays as DEAR's,
alpha_0 * decay^step, when the caller passes the training step to `loss`.

CGP (`dear.cgp`): every f evaluation (and the final P(H*)) is followed by a
second pass over the graph's Cayley graph (dear_jax/cgp.py): the new real
states, then zero states for the virtual nodes (DEAR's virtual states never
persist inside the DEQ), zero inputs for the virtual nodes, and one learned
edge vector on every Cayley edge; the real nodes keep their part of the
result. The pass is DEAR's gated max-MPNN: the processor itself with
`cgp_shared_weights` (model.processor='gmpnn' only), else a separate one (the
only choice with triplet_gmpnn, which ignores edges). Its parameters sit in
params['processor'] under CGP_KEYS, so every solver and diagnostic that
passes the processor's parameters explicitly passes them too.

Alignment (`dear.align_weight` > 0, training only): dear_jax/alignment.py,
with the frozen teacher passed in (factory.build_model loads
`dear.align_teacher`).
"""

from __future__ import annotations

import copy
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dear_jax import alignment
from dear_jax import batches as batch_lib
from dear_jax import cgp
from dear_jax import losses
from dear_jax import sections
from dear_jax import solver
from dear_jax.groups import eval_chunk
from dear_jax.model import ModelConfig, Reasoner
from dear_jax.processors import GatedMaxMPNN

CGP_KEYS = ('cgp_edge', 'cgp_processor')


@dataclasses.dataclass(frozen=True)
class DearConfig(sections.Section):
  """The `dear` section, checked: the solver's keys as a
  solver.SolverConfig, the rest DEAR's own (configs/default.py says what
  each does)."""
  PREFIX = 'dear.'
  solver: solver.SolverConfig = solver.SolverConfig()
  # Hutchinson ||J||_F^2 penalty: makes the trained map contract. On the
  # five-algorithm panel (live stream, seeds 0 and 1) 0.1 converged every
  # test graph (0.01 left 3-13 % of MST-Prim's unconverged, 15 % from H*),
  # at mean scores equal within seed noise (docs/equilibrium.md). DEAR: 1e-4.
  jac_reg_weight: float = 0.1
  state_noise: float = 0.0     # std of a Gaussian perturbation of f (training)
  init_state_std: float = 0.0  # training solves start from N(0, std^2), not 0
  gate_bias: float = 0.0       # initial update-gate bias (CLRS's NAR: -3)
  spectral_norm: bool = False  # processor kernels W / max(1, sigma_max(W))
  # DEAR's stochastic extra iterations (training only): past the answer, K
  # more f steps with gradient, P(K >= k) = alpha^k, K <= max_steps; alpha =
  # stochastic_alpha * stochastic_decay^step. 0: off (DEAR: 0.1).
  stochastic_alpha: float = 0.0
  stochastic_decay: float = 0.998
  stochastic_max_steps: int = 9
  # CGP: a second pass over the smallest SL(2, Z_p) Cayley graph with >= n
  # nodes (virtual nodes appended) inside every f evaluation. Shared weights
  # reuse the processor (model.processor='gmpnn' only); else a separate gated
  # max-MPNN (DEAR's deq_cgp.yaml shares, config.yaml not).
  cgp: bool = False
  cgp_shared_weights: bool = False
  # DEAR's alignment loss (training only): the solver's trajectory and answer
  # pulled towards a frozen teacher's per-step states, times align_weight
  # (DEAR: 0.01; 0: off). align_teacher: the workdir of a finished
  # --model=nar --hint_mode=none run of the same algorithm and hidden size.
  # align_samples: trajectory states aligned per graph.
  align_weight: float = 0.0
  align_teacher: str | None = None
  align_samples: int = 1
  # After the test: is the answer a fixed point? (dear_jax/diagnostics.py)
  diagnostics: bool = True
  check_tol: float = 1e-5      # reference: the solve continued to this rel tol
  check_max_iter: int = 1000   # ... within this many evaluations from H0
  # Checks on the first K test graphs (0: all). A sample: per graph they
  # cost about 1.5-2x the test (the trajectory to check_tol, the spectral
  # radius's JVPs, a readout per tolerance), so 8 keeps them under the test's
  # time on the 32-graph test sets and spares the 2048-graph ones (binary
  # search, minimum, sorting) hours on a CPU.
  check_graphs: int = 8

  @classmethod
  def from_section(cls, section, prefix=None):
    """The flat `dear` section: SolverConfig's keys go to `solver`."""
    prefix = cls.PREFIX if prefix is None else prefix
    solver_keys = solver.SolverConfig.__dataclass_fields__
    own = {k: v for k, v in section.items() if k not in solver_keys}
    own['solver'] = solver.SolverConfig(
        **{k: v for k, v in section.items() if k in solver_keys})
    return super().from_section(own, prefix)  # `check` validates the solver

  def __getattr__(self, name):
    """The solver's keys read as the flat section's (`dear.tol`)."""
    if name != 'solver' and name in solver.SolverConfig.__dataclass_fields__:
      return getattr(self.solver, name)
    raise AttributeError(name)

  def to_dict(self) -> dict:
    """Flat, as the config's `dear` section: the solver's keys first."""
    own = super().to_dict()
    return {**dataclasses.asdict(own.pop('solver')), **own}

  @classmethod
  def check(cls, v, prefix: str) -> None:
    v.solver.validate(prefix)
    for name in ('jac_reg_weight', 'state_noise', 'init_state_std',
                 'align_weight'):
      sections.non_negative(prefix + name, getattr(v, name))
    if not (sections.is_real(v.stochastic_alpha) and
            0 <= v.stochastic_alpha < 1):
      raise ValueError(f'{prefix}stochastic_alpha must be in [0, 1) (0: off),'
                       f' got {v.stochastic_alpha!r}')
    if not (sections.is_real(v.stochastic_decay) and
            0 < v.stochastic_decay <= 1):
      raise ValueError(f'{prefix}stochastic_decay must be in (0, 1], got '
                       f'{v.stochastic_decay!r}')
    sections.int_at_least(f'{prefix}stochastic_max_steps',
                          v.stochastic_max_steps, 1)
    sections.int_at_least(f'{prefix}align_samples', v.align_samples, 1)
    sections.positive(f'{prefix}check_tol', v.check_tol)
    sections.positive(f'{prefix}check_max_iter', v.check_max_iter)
    sections.int_at_least(f'{prefix}check_graphs', v.check_graphs, 0)


def check_cgp_processor(dear_cfg: DearConfig, model_cfg: ModelConfig) -> None:
  """A Cayley pass with shared weights is the processor's own max-MPNN."""
  if (dear_cfg.cgp and dear_cfg.cgp_shared_weights and
      model_cfg.processor != 'gmpnn'):
    raise ValueError('dear.cgp_shared_weights=True needs model.processor='
                     f'gmpnn (got {model_cfg.processor}); use '
                     'dear.cgp_shared_weights=False for a separate Cayley '
                     'processor')


class EquilibriumReasoner(Reasoner):

  def __init__(self, spec, sample_batch, model_cfg, dear_cfg, teacher=None):
    """model_cfg, dear_cfg: a ModelConfig and a DearConfig (or the `model`
    and `dear` sections). teacher: (StepwiseNAR, params) for the alignment
    loss, needed when dear_cfg.align_weight > 0 (factory.build_model loads it
    from dear_cfg.align_teacher)."""
    model_cfg = ModelConfig.coerce(model_cfg)
    dear_cfg = DearConfig.coerce(dear_cfg)
    check_cgp_processor(dear_cfg, model_cfg)
    super().__init__(spec, sample_batch, model_cfg, gate_bias=dear_cfg.gate_bias)
    self.solver_cfg = dear_cfg.solver
    self.jac_reg_weight = float(dear_cfg.jac_reg_weight)
    self.state_noise = float(dear_cfg.state_noise)
    self.init_state_std = float(dear_cfg.init_state_std)
    self.spectral_norm = bool(dear_cfg.spectral_norm)
    self.stochastic_alpha = float(dear_cfg.stochastic_alpha)
    self.stochastic_decay = float(dear_cfg.stochastic_decay)
    self.stochastic_max_steps = int(dear_cfg.stochastic_max_steps)
    self.cgp = bool(dear_cfg.cgp)
    self.cgp_shared = bool(dear_cfg.cgp_shared_weights)
    if self.cgp and not self.cgp_shared:
      self.cgp_processor = GatedMaxMPNN(
          hidden=model_cfg.hidden, gate_bias=float(dear_cfg.gate_bias),
          aggregation=model_cfg.aggregation,
          latent_decay=float(model_cfg.latent_decay))
    self.align_weight = float(dear_cfg.align_weight)
    self.align_samples = int(dear_cfg.align_samples)
    if self.align_weight > 0 and teacher is None:
      raise ValueError('dear.align_weight > 0 needs the teacher: build the '
                       'model with dear_jax.factory.build_model, which loads '
                       'dear.align_teacher')
    self.teacher = teacher if self.align_weight > 0 else None

  def for_test(self) -> 'EquilibriumReasoner':
    """Reasoner.for_test, the separate Cayley processor included."""
    other = super().for_test()
    if other is not self and self.cgp and not self.cgp_shared:
      other.cgp_processor = self.cgp_processor.clone(
          **self._test_settings(self.cgp_processor))
    return other

  def with_solver(self, **changes) -> 'EquilibriumReasoner':
    """The same model solved with other solver settings (same parameters)."""
    other = copy.copy(self)
    other.solver_cfg = dataclasses.replace(self.solver_cfg, **changes)
    other.solver_cfg.validate()
    return other

  # --- CGP -------------------------------------------------------------------
  def process(self, proc_params, node, edge, graph, adj, hidden,
              triplets: bool = True, **kwargs):
    """The processor without the CGP parameters (on the input graph, or on
    the Cayley graph when it shares weights), with spectrally normalised
    kernels when `dear.spectral_norm` is on."""
    own = {k: v for k, v in proc_params.items() if k not in CGP_KEYS}
    if self.spectral_norm:
      own = spectrally_normalised(own)
    return super().process(own, node, edge, graph, adj, hidden, triplets,
                           **kwargs)

  def step(self, proc_params, node, edge, graph, adj, hidden,
           triplets: bool = True, node_mask=None):
    """One evaluation of the map: the processor, then the Cayley pass."""
    h_new, tri = self.process(proc_params, node, edge, graph, adj, hidden,
                              triplets, node_mask=node_mask)
    if self.cgp:
      h_new = self.cayley_pass(proc_params, node, graph, h_new)
    return h_new, tri

  def _cayley_inputs(self, cgp_edge, node, hidden):
    """Inputs of the sparse Cayley pass: [B, M, ...] node inputs and states,
    real nodes first, then zeros; the edge vector, the same on every edge
    (self-loops included, as a dense M x M pass would have it); [M, 5]
    senders of each Cayley node (`cgp.cayley_neighbours`)."""
    n = hidden.shape[1]
    neighbours = jnp.asarray(cgp.cayley_neighbours(n))
    pad = ((0, 0), (0, neighbours.shape[0] - n), (0, 0))
    edge = cgp_edge.astype(hidden.dtype)[None, None, None]
    return jnp.pad(node, pad), edge, jnp.pad(hidden, pad), neighbours

  def cayley_pass(self, proc_params, node, graph, hidden):
    node_c, edge_c, h_c, neighbours = self._cayley_inputs(
        proc_params['cgp_edge'], node, hidden)
    if self.cgp_shared:
      out, _ = self.process(proc_params, node_c, edge_c, graph, None, h_c,
                            triplets=False, neighbours=neighbours)
    else:
      out, _ = self.cgp_processor.apply(
          {'params': proc_params['cgp_processor']}, node_c, edge_c, graph,
          None, h_c, neighbours=neighbours)
    return out[:, :hidden.shape[1]]

  def init(self, key, batch):
    params = super().init(key, batch)
    if not self.cgp:
      return params
    k_edge, k_proc = jax.random.split(jax.random.fold_in(key, 11))
    proc = dict(params['processor'])
    # DEAR learns one Cayley edge vector; its init is not specified there.
    proc['cgp_edge'] = jax.random.normal(k_edge, (self.hidden,))
    if not self.cgp_shared:
      node, _, graph, _ = self.encode(params, batch['inputs'],
                                      batch_lib.num_nodes(batch))
      node_c, edge_c, h_c, neighbours = self._cayley_inputs(
          proc['cgp_edge'], node, jnp.zeros_like(node))
      proc['cgp_processor'] = self.cgp_processor.init(
          k_proc, node_c, edge_c, graph, None, h_c,
          neighbours=neighbours)['params']
    params['processor'] = proc
    return params

  # --- the equilibrium --------------------------------------------------------
  def equilibrium(self, params, batch, *, training, key):
    """(f, h0, args): the problem h* = f(h*, params['processor'], *args), per
    graph, that `forward` solves (and diagnostics and plots re-solve). A
    padded batch's node mask ends args (`node_mask`)."""
    node_mask = batch.get('node_mask')
    node, edge, graph, adj = self.encode(params, batch['inputs'],
                                         batch_lib.num_nodes(batch), node_mask)
    adj = self.adjacency(batch, adj)
    noise = jnp.zeros_like(node)
    h0 = jnp.zeros_like(node)
    if training and self.state_noise > 0:
      # Fixed for the whole solve, so the fixed point stays well defined.
      noise = self.state_noise * jax.random.normal(
          jax.random.fold_in(key, 1), node.shape)
    if training and self.init_state_std > 0:
      # Random starts teach a fixed point reached from anywhere (path
      # independence, Anil et al. 2022); evaluation always starts at 0.
      h0 = self.init_state_std * jax.random.normal(
          jax.random.fold_in(key, 4), node.shape)

    def f(h, proc_params, node, edge, graph, adj, noise, *mask):
      h_new, _ = self.step(proc_params, node[None], edge[None], graph[None],
                           adj[None], h[None], triplets=False,
                           node_mask=mask[0][None] > 0 if mask else None)
      return h_new[0] + noise
    args = (node, edge, graph, adj, noise)
    if node_mask is not None:  # float: the implicit gradient differentiates args
      args += (jnp.asarray(node_mask, node.dtype),)
    return f, h0, args

  def forward(self, params, batch, *, training, key, step=None):
    f, h0, args = self.equilibrium(params, batch, training=training, key=key)
    node_mask = node_mask_of(args)
    h_star, stats = solver.solve(f, h0, params['processor'], args,
                                 config=self.solver_cfg, training=training,
                                 node_mask=node_mask,
                                 chunk=0 if training else eval_chunk())
    aux = {'solver': stats}
    if training and self.stochastic_alpha > 0:
      alpha = self.stochastic_alpha
      if step is not None:
        alpha = alpha * self.stochastic_decay ** jnp.asarray(step, jnp.float32)
      batched_f = jax.vmap(lambda h, *a: f(h, params['processor'], *a))
      h_star, aux['extra_steps'] = extra_steps(
          lambda h: batched_f(h, *args), h_star, jax.random.fold_in(key, 5),
          alpha, self.stochastic_max_steps)
    if training and self.teacher is not None:
      aux['align_loss'] = self._alignment(f, h0, params, args, h_star, batch,
                                          jax.random.fold_in(key, 6))
    outputs, h_new = self.readout(params, args, h_star, training, key)
    if training and self.jac_reg_weight > 0:
      aux['penalty'] = self.jac_reg_weight * solver.jacobian_penalty(
          f, jax.lax.stop_gradient(h_new), params['processor'], args,
          jax.random.fold_in(key, 3), node_mask=node_mask,
          per_node=node_mask is not None)
    return outputs, None, aux

  def readout(self, params, args, h_star, training, key):
    """(output logits, P(H*)) at H*: the processor once more, with triplets,
    then the decoders (args: `equilibrium`'s)."""
    node, edge, graph, adj = args[:4]
    node_mask = node_mask_of(args)
    h_new, tri = self.step(params['processor'], node, edge, graph, adj,
                           h_star, node_mask=node_mask)
    outputs, _ = self.decode(params, node, h_star, h_new, edge, tri, graph,
                             training, jax.random.fold_in(key, 2),
                             node_mask=node_mask)
    return outputs, h_new

  def _alignment(self, f, h0, params, args, answer, batch, key):
    """DEAR's alignment loss of this solve (unweighted; see alignment.py)."""
    cap = self.solver_cfg.max_iter_train
    points, evaluations = alignment.record_iterates(
        f, h0, params['processor'], args, self.solver_cfg, cap)
    idx = alignment.sample_indices(key, evaluations, self.align_samples, cap)
    xs = jnp.take_along_axis(points, idx[:, :, None, None], axis=1)
    # One step with gradient from each sampled iterate: f(x_k), [B, S, N, H].
    per_graph = lambda xs, *a: jax.vmap(
        lambda x: f(x, params['processor'], *a))(xs)
    sampled = jax.vmap(per_graph)(xs, *args)
    model, teacher_params = self.teacher
    states = alignment.teacher_states(model, teacher_params, batch)
    return alignment.alignment_loss(sampled, answer, states, batch['lengths'])

  # --- its own keys ----------------------------------------------------------
  def summarise(self, auxes, evalset):
    """The solver's statistics over the split's graphs."""
    n = evalset.num_samples
    stats = [a['solver'] for a in auxes]
    iters = np.concatenate([s.iterations for s in stats])[:n]
    return dict(
        solver_iters_mean=float(iters.mean()),
        solver_iters_p95=float(np.percentile(iters, 95)),
        nonconverged_fraction=float(
            1 - np.concatenate([s.converged for s in stats])[:n].mean()),
        final_residual_mean=float(
            np.concatenate([s.residual for s in stats])[:n].mean()),
        nonfinite_graphs=int(
            (np.concatenate([s.nonfinite for s in stats])[:n] > 0).sum()),
        iterations=iters.tolist())

  def metrics(self, evaluation):
    return {k: evaluation[k] for k in ('solver_iters_mean', 'solver_iters_p95',
                                       'nonconverged_fraction')}

  def progress(self, aux):
    """Mean solver iterations and the share of graphs not converged."""
    return dict(iters=f"{float(aux['solver'].iterations.mean()):.1f}",
                nonconv=f"{float(1 - aux['solver'].converged.mean()):.0%}")

  def results(self, results, config, test_set):
    """Each test graph's iterations beside its algorithm's steps."""
    results['solver_iterations'] = results.pop('iterations')
    results['test_algo_steps'] = (test_set.lengths - 1).tolist()

  def loss(self, params, batch, key, step=None):
    """As Reasoner.loss, plus align_weight x the alignment loss; `step` (the
    training step) decays stochastic_alpha."""
    outputs, _, aux = self.forward(params, batch, training=True, key=key,
                                   step=step)
    loss = losses.total_loss(self.spec, batch, outputs, None)
    loss = loss + aux.pop('penalty', 0.0)
    if 'align_loss' in aux:
      loss = loss + self.align_weight * aux['align_loss']
    return loss, aux


def node_mask_of(args):
  """The node mask ending `equilibrium`'s args (a padded batch), as bool,
  or None."""
  return args[5] > 0 if len(args) > 5 else None


def spectrally_normalised(params):
  """Every Dense kernel W of `params` as W / max(1, sigma_max(W)): no layer
  may stretch a vector (the Lipschitz bound a contractive DEQ map needs from
  its linear parts; LayerNorm and the gate are not bounded by it). sigma_max
  is exact (a 2-norm, differentiable), computed inside each call; the
  parameters stay constant over the solve, so the cost is per evaluation of
  a few small matrices."""
  def scale(path, w):
    if getattr(path[-1], 'key', None) != 'kernel':
      return w
    return w / jnp.maximum(1.0, jnp.linalg.norm(w, ord=2))
  return jax.tree_util.tree_map_with_path(scale, params)


def extra_steps(step_fn, h, key, alpha, max_steps: int):
  """(h after K_b more steps of step_fn for graph b, K): K_b counts the
  leading successes of `max_steps` Bernoulli(alpha) draws, so P(K >= k) =
  alpha^k up to the cap (DEAR's continuation rule). step_fn maps [B, ...]
  arrays; graphs that stopped keep their state. One compiled loop of
  `max_steps` rounds, each skipped (lax.cond) once no graph continues."""
  draws = jax.random.bernoulli(key, alpha, (max_steps, h.shape[0]))
  k = jnp.sum(jnp.cumprod(draws.astype(jnp.int32), axis=0), axis=0)

  def body(h, i):
    active = (i < k).reshape((-1,) + (1,) * (h.ndim - 1))
    h = jax.lax.cond(jnp.any(i < k),
                     lambda h: jnp.where(active, step_fn(h), h),
                     lambda h: h, h)
    return h, None

  h, _ = jax.lax.scan(body, h, jnp.arange(max_steps))
  return h, k
