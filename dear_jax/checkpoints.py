"""A run's orbax checkpoints: {state pytree, meta json} per saved step.

The state holds the parameters, optimiser state, best parameters and the
data stream's RNG states, so a killed run restarted on the same workdir ends
exactly as an uninterrupted one.
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp


class RunError(Exception):
  """A problem the user can fix; reported as one line, exit code 2."""


class Checkpoints:
  """orbax CheckpointManager over {state pytree, meta json}."""

  def __init__(self, directory: str):
    self._mngr = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
        item_names=('state', 'meta'))

  def latest_step(self):
    return self._mngr.latest_step()

  def save(self, step: int, state: dict, meta: dict) -> None:
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    self._mngr.wait_until_finished()

  def restore(self, step: int, like: dict):
    try:
      restored = self._mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(like), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for damaged files
      raise RunError(
          f'checkpoint {step} in {self._mngr.directory} cannot be restored '
          f'({type(e).__name__}: {str(e).splitlines()[0][:200]}); move it away '
          'or use another --workdir') from e
    return restored.state, restored.meta

  def close(self):
    self._mngr.close()


def load_best_params(workdir: str):
  """The best-by-validation parameters of a run's latest checkpoint."""
  checkpoints = Checkpoints(os.path.join(workdir, 'checkpoints'))
  try:
    step = checkpoints.latest_step()
    if step is None:
      raise RunError(f'{workdir} has no checkpoint')
    state, _ = checkpoints.restore(step, None)
  finally:
    checkpoints.close()
  return state['best_params']
