"""Whether a repeated run gave the committed run's results:

    python -m baselines.same_run RUN RUN_AGAIN

RUN and RUN_AGAIN are run folders (or their results.json). Everything a run
computes must be equal, bit for bit: scores per graph, curves, solver
statistics, extra test sizes, the config. What a repeat cannot reproduce is
left out: times, load, the machine's line and the code's commit (MEASURED).
On the same machine kind a repeat from a fresh clone with the same command
and seed is expected to agree (XLA compiles for the host CPU, so another
CPU model does not). Exit 0 when they agree, 1 listing the keys that
differ, 2 on bad input.
"""

from __future__ import annotations

import os
import sys

from dear_jax.results import REQUIRED_KEYS, read_json

# Keys (at any depth) that measure the run rather than its results.
MEASURED = ('hardware', 'code', 'timings')
MEASURED_PARTS = ('seconds', 'per_second', 'load_average')


def _measured(key: str) -> bool:
  return key in MEASURED or any(p in key for p in MEASURED_PARTS)


def differences(a, b, path: str = '') -> list:
  """The paths ('extra_tests/128/score') where A and B differ, measured
  keys aside."""
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b), key=str):
      if _measured(str(k)):
        continue
      where = f'{path}/{k}' if path else str(k)
      if k not in a or k not in b:
        out.append(f'{where} (in one only)')
      else:
        out += differences(a[k], b[k], where)
    return out
  return [] if a == b else [path or '(the whole file)']


def _load(path: str) -> dict:
  if os.path.isdir(path):
    path = os.path.join(path, 'results.json')
  got = read_json(path, REQUIRED_KEYS)
  if got is None:
    raise ValueError(f'{path} does not exist (a run folder or its '
                     'results.json is expected)')
  return got


def main(argv: list) -> int:
  if len(argv) != 2 or any(a.startswith('-') for a in argv):
    print('error: usage: python -m baselines.same_run RUN RUN_AGAIN (two run '
          'folders or results.json files)', file=sys.stderr)
    return 2
  try:
    a, b = (_load(p) for p in argv)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  diff = differences(a, b)
  if diff:
    print(f'{len(diff)} results differ: ' + ', '.join(diff[:20])
          + (' ...' if len(diff) > 20 else ''))
    return 1
  print(f'the same results ({len(a)} keys; times, machine and commit '
        'not compared)')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
