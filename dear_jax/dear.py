"""DEAR: decode the outputs from the processor's fixed point H* = P(H*; U, E, g).

Inputs are encoded once; the solver (dear_jax.solver) iterates only the node
update from H0 = 0, graph by graph, without hints or step counts. At H* the
processor is applied once more, with triplet edge features, so the decoders
see exactly what the stepwise model's decoders see at a step:
h_t = [U, H*, P(H*)], e_t = [E, triplets(H*)]. With the 'jfb' gradient this
last call is the only one that carries gradient (DEAR's 1-step gradient).
"""

from __future__ import annotations

import copy
import dataclasses

import jax
import jax.numpy as jnp

from dear_jax import data as data_lib
from dear_jax import solver
from dear_jax.model import Reasoner


class EquilibriumReasoner(Reasoner):

  def __init__(self, spec, sample_batch, model_cfg, dear_cfg):
    super().__init__(spec, sample_batch, model_cfg, gate_bias=dear_cfg.gate_bias)
    self.solver_cfg = solver.config_from_section(dear_cfg)
    self.jac_reg_weight = float(dear_cfg.jac_reg_weight)
    self.state_noise = float(dear_cfg.state_noise)
    self.init_state_std = float(dear_cfg.init_state_std)

  def with_solver(self, **changes) -> 'EquilibriumReasoner':
    """The same model solved with other solver settings (same parameters)."""
    other = copy.copy(self)
    other.solver_cfg = dataclasses.replace(self.solver_cfg, **changes)
    other.solver_cfg.validate()
    return other

  def equilibrium(self, params, batch, *, training, key):
    """(f, h0, args): the problem h* = f(h*, params['processor'], *args), per
    graph, that `forward` solves (and diagnostics and plots re-solve)."""
    node, edge, graph, adj = self.encode(params, batch['inputs'],
                                         data_lib.num_nodes(batch))
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

    def f(h, proc_params, node, edge, graph, adj, noise):
      h_new, _ = self.process(proc_params, node[None], edge[None], graph[None],
                              adj[None], h[None], triplets=False)
      return h_new[0] + noise
    return f, h0, (node, edge, graph, adj, noise)

  def forward(self, params, batch, *, training, key):
    f, h0, args = self.equilibrium(params, batch, training=training, key=key)
    node, edge, graph, adj, _ = args
    h_star, stats = solver.solve(f, h0, params['processor'], args,
                                 config=self.solver_cfg, training=training)
    h_new, tri = self.process(params['processor'], node, edge, graph, adj,
                              h_star)
    outputs, _ = self.decode(params, node, h_star, h_new, edge, tri, graph,
                             training, jax.random.fold_in(key, 2))
    aux = {'solver': stats}
    if training and self.jac_reg_weight > 0:
      aux['penalty'] = self.jac_reg_weight * solver.jacobian_penalty(
          f, jax.lax.stop_gradient(h_new), params['processor'], args,
          jax.random.fold_in(key, 3))
    return outputs, None, aux
