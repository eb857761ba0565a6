"""jax's persistent compilation cache, on for every command line.

A run compiles about ten programs (a train step per batch shape, predict at
the validation and test sizes, the checks), seconds to tens of seconds each
on a small CPU; the same command run again loads them from disk instead.
`python -m dear_jax.run`, `python -m baselines.compare` (its Ray workers
too) and `python -m baselines.clrs_official` call `enable` before anything
compiles.

Where: the flag `--jax_cache=DIR`, else $DEAR_JAX_JAX_CACHE, else
$XDG_CACHE_HOME/dear_jax/jax_cache (~/.cache/dear_jax/jax_cache, the folder
the tests use). An empty value (`--jax_cache=`) turns the cache off. The
cache only saves time: a program loaded from it is the one XLA would compile.
"""

from __future__ import annotations

import os
import threading

ENV = 'DEAR_JAX_JAX_CACHE'
# Every program, the small eager ones too: together they took seconds of a
# warm run, and loading one takes milliseconds.
MIN_COMPILE_SECONDS = 0.0
FLAG_HELP = ('folder of jax\'s persistent compilation cache (default: '
             f'${ENV}, else ~/.cache/dear_jax/jax_cache); empty: off')

_setting = None  # what `enable` was given (flag or environment), for workers


def folder(setting: str | None = None) -> str | None:
  """The cache folder for `setting` (a flag's value; None: not given), or
  None when the cache is off."""
  if setting is None:
    setting = os.environ.get(ENV)
  if setting is None:
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join('~', '.cache')
    setting = os.path.join(base, 'dear_jax', 'jax_cache')
  return os.path.abspath(os.path.expanduser(setting)) if setting else None


def enable(setting: str | None = None) -> str | None:
  """Turns the cache on (or off, for an empty `setting`) in this process;
  its folder or None. Call before the first compilation: jax reads the
  setting once."""
  global _setting
  _setting = setting if setting is not None else os.environ.get(ENV)
  path = folder(setting)
  import jax  # pylint: disable=g-import-not-at-top
  if path is None:
    jax.config.update('jax_enable_compilation_cache', False)
    return None
  jax.config.update('jax_enable_compilation_cache', True)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs',
                    MIN_COMPILE_SECONDS)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return path


def worker_env() -> dict:
  """Environment that gives a worker process this process's choice: the
  value as given (a worker on another machine resolves the default against
  its own home), nothing when none was given."""
  return {} if _setting is None else {ENV: _setting}


# Tracing, lowering and XLA compilation (or loading from this cache): the
# spans jax reports for every program it builds.
_COMPILE_EVENTS = frozenset((
    '/jax/core/compile/jaxpr_trace_duration',
    '/jax/core/compile/jaxpr_to_mlir_module_duration',
    '/jax/core/compile/backend_compile_duration'))


class CompileClock:
  """Seconds this process has spent building programs since the clock
  started (`seconds`), from jax's monitoring spans; a jit traced inside
  another's trace is counted once. `close` stops it."""

  def __init__(self):
    import jax  # pylint: disable=g-import-not-at-top
    self._monitoring = jax.monitoring
    self._spans = []  # disjoint (start, end), in order
    self._lock = threading.Lock()
    self.seconds = 0.0
    self._monitoring.register_event_time_span_listener(self._span)

  def _span(self, event: str, start: float, end: float, **_) -> None:
    if event not in _COMPILE_EVENTS:
      return
    with self._lock:
      # Spans end in order, so the ones this span contains come last.
      while self._spans and self._spans[-1][1] > start:
        s, e = self._spans.pop()
        self.seconds -= e - s
        start, end = min(start, s), max(end, e)
      self._spans.append((start, end))
      self.seconds += end - start

  def close(self) -> None:
    self._monitoring.unregister_event_time_span_listener(self._span)
