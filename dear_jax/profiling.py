"""What a run cost, for compare's table and benchmarks/: XLA's compiled
memory of a train step and the hardware line every figure is quoted with.

Compiled, not measured: `memory_analysis()` of the jitted update is exact for
a given batch shape, the same on every run, and needs no GPU allocator.
"""

from __future__ import annotations

import os
import platform

MB = 2**20


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


def train_step_mb(config, spec: dict, init_batch: dict, batch: dict):
  """compiled_mb of dear_jax's own train step (train.make_train_step) on
  `batch`; parameters come from `init_batch` (they do not depend on n)."""
  import jax  # pylint: disable=g-import-not-at-top
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  _, step, params, opt_state = train.setup(config, spec, init_batch,
                                           jax.random.PRNGKey(0))
  return compiled_mb(step.lower(params, opt_state, batch,
                                jax.random.PRNGKey(1)).compile())


def hardware_line() -> str:
  """OS, CPU model, core count, jax version and devices."""
  import jax  # pylint: disable=g-import-not-at-top
  cpu = platform.processor()
  if not cpu and os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      names = [l.split(':', 1)[1].strip() for l in f
               if l.startswith('model name')]
    cpu = names[0] if names else ''
  return (f'{platform.system()} {platform.machine()}, CPU {cpu or "unknown"}, '
          f'{os.cpu_count()} CPU cores, jax {jax.__version__} devices '
          f'{jax.devices()}')
