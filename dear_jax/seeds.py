"""Several seeds in one program, and all devices of a host.

A hidden-128 reasoner leaves an accelerator mostly idle, so `SeedStack`
trains several seeds as one program: their parameters and optimiser states
are stacked along a leading seed axis and the train step is `vmap`ped over
it, with one compilation per batch shape. A stack of one seed is the tree
itself and runs the plain jitted step, so a single-seed run is unchanged.

Seeds draw their own batches. With hints, the padded number of steps (the
time bucket) may differ between seeds at the same step: hints are padded with
zeros to the largest, which changes nothing (the NAR freezes each graph's
outputs after its own length and the hint loss masks steps past it). Graph
sizes agree under the round-robin schedule; under `uniform` they may not, and
the seeds of each size then step as separate sub-stacks.

With `data_parallel`, the batch axis of every training batch is split over a
one-axis `jax.sharding.Mesh` of all local devices (`NamedSharding`); the
parameters and optimiser states are replicated and XLA inserts the gradient
reductions. No `pmap`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXIS = 'data'


def stack(trees: list):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def take(tree, i: int):
  return jax.tree.map(lambda x: x[i], tree)


@jax.jit
def _gather(tree, idx):
  return jax.tree.map(lambda x: x[idx], tree)


@jax.jit
def _scatter(tree, idx, sub):
  return jax.tree.map(lambda x, y: x.at[idx].set(y), tree, sub)


def _time_steps(batch: dict) -> int:
  return max((v.shape[0] for v in batch['hints'].values()), default=0)


def _signature(batch: dict) -> tuple:
  """Every leaf's shape, hints without their time axis (padding fixes that)."""
  shapes = []
  for group in ('inputs', 'hints', 'outputs'):
    for k in sorted(batch[group]):
      shape = np.shape(batch[group][k])
      shapes.append((group, k, shape[1:] if group == 'hints' else shape))
  return tuple(shapes) + (np.shape(batch['lengths']),)


def pad_time(batch: dict, t: int) -> dict:
  """Zero-pads the hints in time to t steps (as batches.to_batch pads them)."""
  hints = {k: np.pad(v, [(0, t - v.shape[0])] + [(0, 0)] * (v.ndim - 1))
           for k, v in batch['hints'].items()}
  return dict(batch, hints=hints)


def groups(batches: list) -> list:
  """Positions of `batches` that can share one vmapped call (same shapes up
  to the hints' time axis), in order of first appearance."""
  by_sig = {}
  for i, b in enumerate(batches):
    by_sig.setdefault(_signature(b), []).append(i)
  return list(by_sig.values())


def stack_batches(batches: list) -> dict:
  """One batch with a leading seed axis; hints padded to a common length."""
  t = max(_time_steps(b) for b in batches)
  padded = [pad_time(b, t) if _time_steps(b) != t else b for b in batches]
  return jax.tree.map(lambda *xs: np.stack(xs), *padded)


# --- all devices of a host ----------------------------------------------------

def data_mesh() -> Mesh:
  return Mesh(np.array(jax.local_devices()), (MESH_AXIS,))


def check_divisible(batch_size: int) -> None:
  n = jax.local_device_count()
  if batch_size % n:
    raise ValueError(
        f'train.data_parallel splits each batch over the {n} local devices: '
        f'data.batch_size={batch_size} must be a multiple of {n}')


def batch_shardings(mesh: Mesh, batch: dict, stacked: bool):
  """NamedShardings splitting each leaf's batch axis (after the seed axis,
  and after the time axis for hints)."""

  def spec(group, x):
    axis = int(stacked) + int(group == 'hints')
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), MESH_AXIS))

  out = {g: {k: spec(g, v) for k, v in batch[g].items()}
         for g in ('inputs', 'hints', 'outputs')}
  out['lengths'] = spec('lengths', batch['lengths'])
  return out


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


# --- the stack ---------------------------------------------------------------

class Compiles:
  """The loop's rule for which calls of a jitted step compile, the same for
  every model: the first call with a new signature (seeds updated, leaf
  shapes of the batch) does; later ones reuse its program. jax's trace-cache
  size (`_cache_size()`) cannot serve: the same tiny run counted 0 compiling
  steps inside the test process and 1 in a fresh Ray worker."""

  def __init__(self):
    self._seen = set()

  def __call__(self, batch, members: int = 1) -> bool:
    sig = (members, tuple(np.shape(x) for x in jax.tree.leaves(batch)))
    new = sig not in self._seen
    self._seen.add(sig)
    return new


class SeedStack:
  """The (params, optimiser state) of several seeds and the step that
  updates any subset of them at once.

  update(params, opt_state, batch, key, step) -> (params, opt_state, loss,
  aux) is the un-jitted train step (`step` feeds the loss's schedules); `single_step` its jitted form, which a stack of
  one seed without a mesh uses as it is (so a single-seed run compiles and
  computes exactly what it did before stacking existed).
  """

  def __init__(self, states: list, seeds: list, update, single_step,
               mesh: Mesh | None = None):
    self.size = len(states)
    self.vmapped = self.size > 1
    self.mesh = mesh
    self.tree = stack(states) if self.vmapped else states[0]
    self.keys = [jax.random.PRNGKey(s) for s in seeds]
    if self.vmapped:
      self.keys = jnp.stack(self.keys)
    self._single_step = single_step

    def keyed(params, opt_state, batch, key, step):
      return update(params, opt_state, batch, jax.random.fold_in(key, step),
                    step)

    fn = jax.vmap(keyed) if self.vmapped else keyed
    kwargs = {} if mesh is None else dict(out_shardings=replicated(mesh))
    # Parameters and optimiser states are donated: the stack's buffers are
    # reused, as dm-clrs's step reuses its own.
    self._step = jax.jit(fn, donate_argnums=(0, 1), **kwargs)
    if mesh is not None:
      self.tree = jax.device_put(self.tree, replicated(mesh))
    self._compiles = Compiles()

  def get(self, i: int):
    """Seed i's (params, opt_state)."""
    return take(self.tree, i) if self.vmapped else self.tree

  def step(self, members: list, batches: list, steps: list):
    """Updates seeds `members` (their batches, their steps before this one).

    Returns (per-member losses, a device array: nothing here waits for the
    device; aux; whether this call compiled: `Compiles`, the rule
    clrs_official's learner uses too)."""
    if self.vmapped:
      batch = stack_batches(batches)
    else:
      batch = batches[0]
    compiled = self._compiles(batch, len(members))
    if self.mesh is not None:
      batch = jax.device_put(batch, batch_shardings(self.mesh, batch,
                                                    self.vmapped))
    if not self.vmapped:
      params, opt_state = self.tree
      if self.mesh is None:
        step = jnp.asarray(steps[0] + 1, jnp.int32)
        out = self._single_step(params, opt_state, batch,
                                jax.random.fold_in(self.keys[0], step), step)
      else:
        out = self._step(params, opt_state, batch, self.keys[0], steps[0] + 1)
      self.tree = out[:2]
      return jnp.reshape(out[2], (1,)), out[3], compiled
    everyone = len(members) == self.size
    idx = jnp.asarray(members, jnp.int32)
    sub = self.tree if everyone else _gather(self.tree, idx)
    new_params, new_opt, loss, aux = self._step(
        sub[0], sub[1], batch, self.keys[idx],
        jnp.asarray(steps, jnp.int32) + 1)
    new = (new_params, new_opt)
    self.tree = new if everyone else _scatter(self.tree, idx, new)
    return loss, aux, compiled
