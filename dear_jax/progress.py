"""The training loop's progress bar: tqdm whose rate and ETA leave out the
steps that compiled.

A step that traces and compiles the jitted update (the first one, and the
first of each training size: five on configs/default.py's cycle of sizes)
takes tens of seconds against milliseconds for the others; tqdm's own rate
would spread those over the whole run (a 6-minute run first showed an ETA of
about 20 minutes). Until a step has run that did not compile, the bar reads
"compiling…" and shows no ETA; after it, the rate is the steps that did not
compile over their time (each step's time runs from the step before, so the
validations and checkpoints, which recur, count).
"""

from __future__ import annotations

import time

import tqdm

COMPILING = 'compiling…'


class ProgressBar(tqdm.tqdm):
  """tqdm.tqdm advanced by `step(compiled)`; `clock` (seconds) is injectable
  for tests."""

  def __init__(self, *args, clock=time.perf_counter, **kwargs):
    self._steady = [0, 0.0]  # steps that did not compile, their seconds
    super().__init__(*args, **kwargs)
    self._time = clock
    self.start_t = self.last_print_t = self._last = clock()

  def step(self, compiled: bool) -> None:
    """One step done; `compiled`: its call traced and compiled."""
    now = self._time()
    if not compiled:
      self._steady[0] += 1
      self._steady[1] += now - self._last
    self._last = now
    self.update(1)

  @property
  def format_dict(self):
    d = super().format_dict
    steps, seconds = getattr(self, '_steady', (0, 0.0))
    if steps and seconds > 0:
      d['rate'] = steps / seconds
      return d
    d.update(rate=None, initial=d['n'])  # no rate: the ETA reads '?'
    d['postfix'] = ', '.join(p for p in (COMPILING, d['postfix']) if p)
    return d
