"""Evaluation on a CPU one graph at a time (`groups.EVAL_CHUNK_CPU = 1`, the
default) against the whole batch in one loop (0), in one process.

    python -m benchmarks.eval_chunk [--out=benchmarks/results]
        [--cases=dear:bfs,nar:minimum,nar_hints:bfs] [--n=64] [--graphs=32]
        [--rounds=3]

For each case (a model on an algorithm; configs/default.py, untrained
parameters: the work per step does not depend on them, DEAR's iteration
count does), one test batch of `graphs` graphs of `n` nodes is predicted
with the jitted `predict` in both modes, compiled first, then timed in
alternating order per round. Reported: seconds per batch (the median
round) in each mode, their ratio, and whether the two modes predicted the
same. Writes OUT/eval_chunk.json and OUT/eval_chunk.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = {'whole batch': 0, 'one graph at a time': 1}
# case name: (model_kind, NAR hint mode or None)
MODELS = {'dear': ('dear', None), 'nar': ('nar', 'none'),
          'nar_hints': ('nar', 'encoded_decoded')}


def measure(case: str, algorithm: str, n: int, graphs: int, rounds: int,
            config=None) -> dict:
  """`config`: the run config to time (default: configs/default.py)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  from dear_jax import clrs_lib, factory, splits, train  # pylint: disable=g-import-not-at-top
  from dear_jax import groups  # pylint: disable=g-import-not-at-top
  kind, hint_mode = MODELS[case]
  config = (default.get_config() if config is None
            else config.copy_and_resolve_references())
  config.model_kind = kind
  if hint_mode is not None:
    config.nar.hint_mode = hint_mode
  config.data.update(test_length=n, test_num_samples=graphs,
                     eval_batch_size=graphs)
  spec = clrs_lib.processed_spec(algorithm)
  batch = splits.load_split(algorithm, 'test', train.data_config(config),
                            keep_hints=True).batches[0]
  model = factory.build_model(config, spec, batch)
  params = model.init(jax.random.PRNGKey(0), batch)
  kept = groups.EVAL_CHUNK_CPU
  predict, outputs, seconds = {}, {}, {m: [] for m in MODES}
  try:
    for mode, chunk in MODES.items():  # traced with its chunk, compiled now
      groups.EVAL_CHUNK_CPU = chunk
      # A new function per mode: jit wrappers of the same bound method share
      # one trace cache, and the chunk is read when tracing.
      predict[mode] = jax.jit(lambda p, b: model.predict(p, b))  # pylint: disable=unnecessary-lambda
      outputs[mode] = jax.block_until_ready(predict[mode](params, batch)[0])
  finally:
    groups.EVAL_CHUNK_CPU = kept
  order = list(MODES)
  for i in range(rounds):
    for mode in (order if i % 2 == 0 else order[::-1]):
      start = time.perf_counter()
      jax.block_until_ready(predict[mode](params, batch))
      seconds[mode].append(time.perf_counter() - start)
  a, b = (outputs[m] for m in MODES)
  row = dict(case=case, algorithm=algorithm, n=n, graphs=graphs,
             steps_max=int(np.max(batch['lengths'])), rounds=rounds,
             load_average_1min=os.getloadavg()[0],
             same_predictions=all(np.array_equal(np.asarray(a[k]),
                                                 np.asarray(b[k])) for k in a),
             max_abs_difference=max(float(np.max(np.abs(
                 np.asarray(a[k]) - np.asarray(b[k])))) for k in a))
  for mode in MODES:
    row[mode] = statistics.median(seconds[mode])
  row['ratio'] = row['whole batch'] / row['one graph at a time']
  return row


def write(rows: list, out: str, machine: str, note: str) -> None:
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'eval_chunk.json'), 'w') as f:
    json.dump(dict(machine=machine, note=note, rows=rows), f, indent=1)
  lines = ['# Evaluation one graph at a time on a CPU', '',
           f'Machine: {machine}', '', note, '',
           '| model | algorithm | n | graphs | steps (max) | whole batch s | '
           'one graph at a time s | whole ÷ one at a time | same predictions '
           '| load average (1 min) |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(
        f"| {r['case']} | {r['algorithm']} | {r['n']} | {r['graphs']} | "
        f"{r['steps_max']} | {r['whole batch']:.2f} | "
        f"{r['one graph at a time']:.2f} | {r['ratio']:.2f} | "
        f"{'yes' if r['same_predictions'] else 'no, max |diff| %.1e' % r['max_abs_difference']} | "
        f"{r['load_average_1min']:.1f} |")
  with open(os.path.join(out, 'eval_chunk.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def _cases(text: str, algorithms) -> list | None:
  cases = []
  for item in filter(None, text.split(',')):
    case, _, algorithm = item.partition(':')
    if case not in MODELS or algorithm not in algorithms:
      return None
    cases.append((case, algorithm))
  return cases or None


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results'))
  p.add_argument('--cases', default='dear:bfs,nar:minimum,nar_hints:bfs')
  p.add_argument('--n', type=int, default=64)
  p.add_argument('--graphs', type=int, default=32)
  p.add_argument('--rounds', type=int, default=3)
  args = p.parse_args(argv)
  for name in ('n', 'graphs', 'rounds'):
    if getattr(args, name) < 1:
      print(f'error: --{name} must be a positive integer, got '
            f'{getattr(args, name)}', file=sys.stderr)
      return 2
  from dear_jax import clrs_lib  # pylint: disable=g-import-not-at-top
  cases = _cases(args.cases, clrs_lib.algorithm_names())
  if cases is None:
    print(f'error: --cases takes MODEL:ALGORITHM pairs, MODEL one of '
          f'{", ".join(MODELS)} and ALGORITHM a CLRS-30 name; got '
          f'{args.cases!r}', file=sys.stderr)
    return 2
  rows = []
  for case, algorithm in cases:
    rows.append(measure(case, algorithm, args.n, args.graphs, args.rounds))
    print(f"{case} {algorithm}: whole batch {rows[-1]['whole batch']:.2f} s, "
          f"one graph at a time {rows[-1]['one graph at a time']:.2f} s",
          flush=True)
  from dear_jax.profiling import hardware_line  # pylint: disable=g-import-not-at-top
  note = (f'configs/default.py (hidden 128), untrained parameters, one test '
          f'batch of {args.graphs} graphs of {args.n} nodes per case; '
          f'seconds per batch of the median of {args.rounds} rounds, the '
          'modes alternating, compiling excluded. Read the ratios.')
  write(rows, args.out, hardware_line(), note)
  return 0


if __name__ == '__main__':
  sys.exit(main())
