"""A run's orbax checkpoints: {state pytree, meta json} per saved step.

The state holds the parameters, optimiser state, best parameters and the
data stream's RNG states, so a killed run restarted on the same workdir ends
exactly as an uninterrupted one. orbax's own output (logs and tracebacks of
its threads when a write fails) is held back: a failure is one RunError that
names the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
import threading
import time

import orbax.checkpoint as ocp


class RunError(Exception):
  """A problem the user can fix; reported as one line, exit code 2."""


@contextlib.contextmanager
def _quiet():
  """orbax's logging, Python output and C++ (tensorstore) stderr held back."""
  loggers = [logging.getLogger(), logging.getLogger('absl')]
  levels = [l.level for l in loggers]
  old_streams = sys.stdout, sys.stderr
  saved_fd = None
  try:
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with open(os.devnull, 'w') as null:
      os.dup2(null.fileno(), 2)
  except (OSError, ValueError, AttributeError):  # no real fd 2 (a notebook)
    saved_fd = None
  for l in loggers:
    l.setLevel(logging.CRITICAL + 1)
  sys.stdout = sys.stderr = io.StringIO()
  try:
    yield
  finally:
    sys.stdout, sys.stderr = old_streams
    for l, level in zip(loggers, levels):
      l.setLevel(level)
    if saved_fd is not None:
      os.dup2(saved_fd, 2)
      os.close(saved_fd)


def join_thread(thread: threading.Thread, timeout: float) -> None:
  """Waits for `thread`, also one that is started but not yet running.

  threading.enumerate() lists threads whose start() has been called before
  they run; join() raises on those, which would hide the save's own error.
  """
  deadline = time.monotonic() + timeout
  while True:
    try:
      thread.join(timeout=max(0.0, deadline - time.monotonic()))
      return
    except RuntimeError:  # not yet running
      if time.monotonic() >= deadline:
        return
      time.sleep(0.01)


def _first_line(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  return f'{type(e).__name__}: {lines[0][:120]}' if lines else type(e).__name__


class Checkpoints:
  """orbax CheckpointManager over {state pytree, meta json}."""

  def __init__(self, directory: str):
    self.directory = os.path.abspath(directory)
    with _quiet():
      self._mngr = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(
              max_to_keep=2, create=True, cleanup_tmp_directories=True),
          item_names=('state', 'meta'))

  def latest_step(self):
    return self._mngr.latest_step()

  def _kept(self, step: int) -> str:
    """What is left to resume from when checkpoint `step` fails."""
    earlier = [s for s in self._mngr.all_steps() if s < step]
    if earlier:
      return f'the last good checkpoint (step {max(earlier)}) is kept'
    return 'no earlier checkpoint is kept'

  def save(self, step: int, state: dict, meta: dict) -> None:
    started = set(threading.enumerate())
    try:
      with _quiet():
        try:
          self._mngr.save(step, args=ocp.args.Composite(
              state=ocp.args.StandardSave(state),
              meta=ocp.args.JsonSave(meta)))
          self._mngr.wait_until_finished()
        except Exception:
          # orbax's other writer threads end (and log) before output returns
          for thread in set(threading.enumerate()) - started:
            join_thread(thread, timeout=60)
          raise
    except Exception as e:  # OSError (disk full), or orbax's wrapping of it
      for name in os.listdir(self.directory):  # the failed save's tmp folder
        if name.startswith(f'{step}.orbax-checkpoint-tmp'):
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
      cause = e if isinstance(e, OSError) else (e.__cause__ or e)
      why = (cause.strerror if isinstance(cause, OSError) and cause.strerror
             else _first_line(cause))
      raise RunError(
          f'checkpoint {step} could not be written in {self.directory} '
          f'({why}); {self._kept(step)}: fix that and rerun the same command '
          'to resume') from e

  def restore(self, step: int, like: dict):
    try:
      with _quiet():
        restored = self._mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(like), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for damaged files
      where = os.path.join(self.directory, str(step))
      raise RunError(
          f'checkpoint {step} in {self.directory} cannot be restored '
          f'({_first_line(e)}); {self._kept(step)}: move {where} away to '
          'resume from it, or use another --workdir') from e
    return restored.state, restored.meta

  def close(self):
    try:
      with _quiet():
        self._mngr.close()
    except Exception:  # pylint: disable=broad-except  # after a failed save
      pass


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
