"""What a run cost, for compare's table and benchmarks/: XLA's compiled
memory of a step (`compiled_mb`; train.train_step_mb for dear_jax's own) and
the hardware line every figure is quoted with.

Compiled, not measured: `memory_analysis()` of the jitted update is exact for
a given batch shape, the same on every run, and needs no GPU allocator.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time

MB = 2**20
CPUINFO = '/proc/cpuinfo'
# The checkout this package runs from, and the paths whose changes alter what
# a run computes (results/ and docs/ do not).
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE_PATHS = ('dear_jax', 'baselines', 'configs', 'requirements.txt',
              'pyproject.toml')


class Stopwatch:
  """A timed pass: its wall seconds, this process's CPU seconds (all its
  threads) and the 1-minute load average at its end. Other jobs on the
  machine stretch the wall time (twice, sharing 2 cores evenly) far more
  than the CPU time (measured: +25 %), and a high load says they ran."""

  def __enter__(self):
    self.t0, self.c0 = time.perf_counter(), time.process_time()
    return self

  def __exit__(self, *exc):
    self.wall = time.perf_counter() - self.t0
    self.cpu = time.process_time() - self.c0
    self.load = os.getloadavg()[0]

  def per_graph(self, graphs: int) -> dict:
    """results.json's keys for a test of `graphs` graphs."""
    return dict(eval_seconds_per_graph=self.wall / graphs,
                eval_cpu_seconds_per_graph=self.cpu / graphs,
                eval_load_average=self.load)


def compiled_mb(compiled) -> dict | None:
  """{'total', 'temp', 'argument', 'output'} in MB (donated buffers counted
  once), or None where the backend gives no analysis."""
  m = compiled.memory_analysis()
  if m is None:
    return None
  parts = dict(temp=m.temp_size_in_bytes / MB,
               argument=m.argument_size_in_bytes / MB,
               output=m.output_size_in_bytes / MB)
  return dict(parts, total=sum(parts.values()) - m.alias_size_in_bytes / MB)


def _cpuinfo() -> dict:
  """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
  if not os.path.exists(CPUINFO):
    return {}
  fields = {}
  with open(CPUINFO) as f:
    for line in f:
      if not line.strip():
        break
      key, _, value = line.partition(':')
      fields[key.strip()] = value.strip()
  return fields


def hardware_line() -> str:
  """OS, CPU model, core count, jax version and devices.

  On Linux the CPU's family and model numbers are named too: XLA compiles
  for the host CPU, so a training run that is bit-identical when repeated on
  one CPU can diverge on another of the same marketing name (README,
  DEAR-10, "Reproducible")."""
  import jax  # pylint: disable=g-import-not-at-top
  info = _cpuinfo()
  cpu = info.get('model name') or platform.processor()
  if 'cpu family' in info and 'model' in info:
    cpu = f'{cpu} (family {info["cpu family"]}, model {info["model"]})'
  return (f'{platform.system()} {platform.machine()}, CPU {cpu or "unknown"}, '
          f'{os.cpu_count()} CPU cores, jax {jax.__version__} devices '
          f'{jax.devices()}')


def code_version(checkout: str = CHECKOUT) -> str | None:
  """The git commit the code ran from, with '+modified' where a tracked file
  under CODE_PATHS differs from it; None outside a git checkout of this
  repository (an installed wheel). With the hardware line, what repeating a
  run exactly needs."""

  def git(*args):
    return subprocess.run(['git', '-C', checkout, *args], check=True,
                          capture_output=True, text=True, timeout=30).stdout

  try:
    if os.path.realpath(git('rev-parse', '--show-toplevel').strip()) != (
        os.path.realpath(checkout)):
      return None  # some other repository holds the installed package
    commit = git('rev-parse', 'HEAD').strip()
    changed = git('status', '--porcelain', '--untracked-files=no', '--',
                  *CODE_PATHS).strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return commit + ('+modified' if changed else '')
