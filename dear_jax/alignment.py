"""DEAR's alignment loss (the "A" of GAS): pull the solver's trajectory
towards a frozen stepwise teacher's per-step states.

The teacher is a trained no-hint stepwise NAR of the same algorithm (a
workdir of `--model=nar --hint_mode=none`), run on the same batch for the
true number of steps: states T_1 .. T_{L-1} for a graph of hint length L.
From DEAR's solver trajectory S sampled states (iterates before the answer,
drawn uniformly without replacement, in order) are matched to teacher steps
by a monotone alignment of least total cost, found by dynamic programming:
each sampled state takes a strictly later teacher step than the previous one
(or, when a graph has fewer teacher steps than S, a later or equal one); the
last match may be any step up to the graph's last. The cost of a pair is the
mean over nodes of the L2 distance of their states. The loss is
mean_b(DP_b / S) + mean_b cost(answer_b, T_{L_b-1}), times align_weight.

What differs from DEAR's release: there the trajectory comes from a solve
without gradient, so the term trains nothing unless stochastic iterations
are on. Here each sampled state is recomputed as f(x_k) with gradient
(a one-step gradient at the iterate x_k, like the 1-step DEQ gradient) and
the end term uses the answer with the model's own gradient. The DP uses a
hard min with clean boundaries (the release lets every row match the first
teacher step regardless of the rows before it). The number of samples is a
fixed `align_samples` (the release uses max((min_b steps - 1) // 10, 1),
usually 1). Recording the iterates repeats the forward solve once.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from dear_jax import batches as batch_lib
from dear_jax import solver

BIG = 1e9


# --- the teacher ---------------------------------------------------------------

def read_teacher_results(workdir: str) -> dict:
  """The teacher run's results.json, checked to be a finished no-hint NAR."""
  if not workdir:
    raise ValueError('dear.align_weight > 0 needs dear.align_teacher=WORKDIR '
                     '(a finished --model=nar --hint_mode=none run of the same '
                     'algorithm)')
  path = os.path.join(os.path.expanduser(workdir), 'results.json')
  if not os.path.isfile(path):
    raise ValueError(f'dear.align_teacher {workdir!r} holds no finished run '
                     '(no results.json); train it with --model=nar '
                     '--hint_mode=none first')
  with open(path) as f:
    results = json.load(f)
  if results.get('model') != 'nar' or results.get('hint_mode') != 'none':
    raise ValueError(f'dear.align_teacher {workdir!r} is a '
                     f'{results.get("model")} run with hint_mode '
                     f'{results.get("hint_mode")}; it must be --model=nar '
                     '--hint_mode=none')
  return results


def teacher_states(teacher, params, batch):
  """[T, B, N, H] teacher states after steps 1..T (no gradient), T the
  batch's padded number of processor steps, as StepwiseNAR runs them."""
  if not batch['hints']:
    raise ValueError('alignment needs training batches with hints: their '
                     'padded length fixes the teacher\'s step count')
  nb_nodes = batch_lib.num_nodes(batch)
  nb_steps = max(1, batch_lib.num_steps(batch) - 1)
  node, edge, graph, adj = teacher.encode(params, batch['inputs'], nb_nodes)
  adj = teacher.adjacency(batch, adj)

  def body(h, _):
    h, _ = teacher.process(params['processor'], node, edge, graph, adj, h,
                           triplets=False)
    return h, h

  _, states = jax.lax.scan(body, jnp.zeros(node.shape), None, length=nb_steps)
  return jax.lax.stop_gradient(states)


# --- the student's trajectory -----------------------------------------------------

def record_iterates(f, h0, params, args, cfg: solver.SolverConfig, cap: int):
  """([B, cap, N, H] points x_k where f was evaluated, [B] evaluations): the
  forward solve of `solver.solve` repeated (same method and stopping rule,
  no gradient), keeping what it passes through."""
  rec = solver.record(f, h0, params, args, config=cfg,
                      targets=(solver.Target(cfg.tol, cap),), iterates=cap)
  return rec.iterates, rec.answers[0][1].iterations


def sample_indices(key, evaluations, num: int, cap: int):
  """[B, num] sorted iterate indices, without replacement, uniform over the
  iterates before the answer (0 .. evaluations-2; index 0 if there is none;
  repeated when there are fewer than num)."""
  b = evaluations.shape[0]
  valid = jnp.maximum(evaluations - 1, 1)[:, None]
  scores = jax.random.uniform(key, (b, cap))
  scores = jnp.where(jnp.arange(cap)[None] < valid, scores, 2.0)
  order = jnp.argsort(scores, axis=1)[:, :num]
  order = jnp.where(jnp.arange(num)[None] < valid, order,
                    order[:, :1])  # fewer than num: repeat the first
  return jnp.sort(order, axis=1)


# --- the alignment ----------------------------------------------------------------

def node_distance(a, b):
  """[...]: mean over nodes of ||a_i - b_i||_2 ([..., N, H] states)."""
  sq = jnp.sum((a - b) ** 2, axis=-1)
  return jnp.mean(jnp.sqrt(jnp.maximum(sq, 1e-12)), axis=-1)


def monotone_dp(cost, last, strict: bool):
  """[B] least cost of matching rows 0..S-1 of cost [B, S, T] to columns
  j_0 < j_1 < ... (strict) or j_0 <= j_1 <= ... (not strict), all <= last[b].

  dp[i, j] is the best cost of rows 0..i with j_i <= j: either j_i = j
  (cost[i, j] plus rows 0..i-1 up to j-1, or up to j if not strict) or
  j_i < j (dp[i, j-1]). Hard min, BIG where no alignment exists."""
  b, s, t = cost.shape
  prev = jnp.zeros((b, t), cost.dtype)  # row -1: nothing to match
  for i in range(s):
    before = prev if not strict else jnp.concatenate(
        [jnp.full((b, 1), 0.0 if i == 0 else BIG, cost.dtype), prev[:, :-1]],
        axis=1)
    take = cost[:, i] + before

    def scan_min(carry, x):
      m = jnp.minimum(carry, x)
      return m, m
    _, row = jax.lax.scan(scan_min, jnp.full((b,), BIG, cost.dtype), take.T)
    prev = jnp.minimum(row.T, BIG)
  return jnp.take_along_axis(prev, last[:, None], axis=1)[:, 0]


def alignment_cost(cost, last):
  """[B]: the strict alignment where the graph has at least S teacher steps
  up to `last`, the non-strict one where it has fewer (DEAR's two cases)."""
  s = cost.shape[1]
  strict = monotone_dp(cost, last, strict=True)
  loose = monotone_dp(cost, last, strict=False)
  return jnp.where(last + 1 >= s, strict, loose)


def alignment_loss(sampled, answer, teacher, lengths):
  """DEAR's alignment loss (unweighted).

  sampled [B, S, N, H] trajectory states, answer [B, N, H] the solver's
  answer, teacher [T, B, N, H] teacher states, lengths [B] hint lengths
  (graph b's last teacher state is step lengths-1, index lengths-2)."""
  t = teacher.shape[0]
  teacher = jnp.swapaxes(teacher, 0, 1)  # [B, T, N, H]
  last = jnp.clip(lengths.astype(jnp.int32) - 2, 0, t - 1)
  cost = node_distance(sampled[:, :, None], teacher[:, None])  # [B, S, T]
  path = alignment_cost(cost, last) / sampled.shape[1]
  end = node_distance(answer, jnp.take_along_axis(
      teacher, last[:, None, None, None], axis=1)[:, 0])
  return jnp.mean(path) + jnp.mean(end)
