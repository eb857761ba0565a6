"""Does `data.pad_nodes` cost steady-state training speed? One train step per
training size (today) against every batch padded to the largest size (one
program), in one process.

    python -m benchmarks.pad_speed [--out=benchmarks/results]
        [--algorithm=bfs] [--models=dear,nar] [--rounds=3]

For each model (configs/default.py: hidden 128, batch 32, training sizes
4, 7, 11, 13, 16), one batch per training size is drawn and padded to 16;
every train step is compiled first (the compile seconds are reported
apart), then the rounds time the same batches in both modes, alternating
mode order per round, from the same parameters each time. DEAR's solves
take the same iterations either way (a padded batch is the same graphs).

Reported per mode: updates per second over the rounds (the median round)
and the compile seconds; the ratio padded / unpadded is the figure to read.
Writes OUT/pad_speed.json and OUT/pad_speed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ('unpadded', 'padded')


def _block(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_map(lambda x: x.block_until_ready(), tree)


def measure(model_kind: str, algorithm: str, rounds: int,
            config=None) -> dict:
  """`config`: the run config to time (default: configs/default.py)."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  from dear_jax import (batches, clrs_lib, factory, input_pipeline,  # pylint: disable=g-import-not-at-top
                        train)
  config = (default.get_config() if config is None
            else config.copy_and_resolve_references())
  config.model_kind = model_kind
  dcfg = train.data_config(config)
  spec = clrs_lib.processed_spec(algorithm)
  stream = input_pipeline.TrainStream(algorithm, dcfg, seed=0,
                                      keep_hints=factory.uses_hints(config))
  sizes = input_pipeline.training_sizes(algorithm, dcfg.train_sizes)
  plain = [next(stream) for _ in sizes]  # the 'cycle' schedule: one per size
  padded = [batches.pad_nodes(b, spec, max(sizes)) for b in plain]
  model = factory.build_model(config, spec, plain[0])
  optimizer = train.make_optimizer(config)
  params = model.init(jax.random.PRNGKey(0), plain[0])
  opt_state = optimizer.init(params)
  data = dict(unpadded=plain, padded=padded)
  steps = {m: train.make_train_step(model, optimizer) for m in MODES}
  compile_seconds = {}
  for mode in MODES:
    start = time.perf_counter()
    for b in data[mode]:  # compiles each new shape (and runs it once)
      _block(steps[mode](params, opt_state, b, jax.random.PRNGKey(0)))
    compile_seconds[mode] = time.perf_counter() - start
  rates = {m: [] for m in MODES}
  for i in range(rounds):
    for mode in (MODES if i % 2 == 0 else MODES[::-1]):
      start = time.perf_counter()
      for j, b in enumerate(data[mode]):
        _block(steps[mode](params, opt_state, b, jax.random.PRNGKey(j)))
      rates[mode].append(len(data[mode]) / (time.perf_counter() - start))
      print(f'  {model_kind} round {i} {mode}: {rates[mode][-1]:.2f} '
            'steps/s', flush=True)
  row = dict(algorithm=algorithm, model=model_kind, sizes=list(sizes),
             rounds=rounds, load_average_1min=os.getloadavg()[0],
             programs=dict(unpadded=len({_shape(b) for b in plain}),
                           padded=len({_shape(b) for b in padded})))
  for mode in MODES:
    row[f'{mode}_steps_per_second'] = statistics.median(rates[mode])
    row[f'{mode}_rounds'] = rates[mode]
    row[f'{mode}_first_calls_seconds'] = compile_seconds[mode]
  row['ratio'] = row['padded_steps_per_second'] / row['unpadded_steps_per_second']
  return row


def _shape(batch) -> tuple:
  import jax  # pylint: disable=g-import-not-at-top
  return tuple(x.shape for x in jax.tree_util.tree_leaves(batch))


def write(rows: list, out: str, machine: str, note: str) -> None:
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'pad_speed.json'), 'w') as f:
    json.dump(dict(machine=machine, note=note, rows=rows), f, indent=1)
  lines = ['# Padding every training batch to one shape (data.pad_nodes)', '',
           f'Machine: {machine}', '', note, '',
           '| algorithm | model | programs (unpadded, padded) | unpadded '
           'steps/s | padded steps/s | padded / unpadded | first calls s '
           '(unpadded, padded) | load average (1 min) |',
           '|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(
        f"| {r['algorithm']} | {r['model']} | {r['programs']['unpadded']}, "
        f"{r['programs']['padded']} | {r['unpadded_steps_per_second']:.2f} | "
        f"{r['padded_steps_per_second']:.2f} | {r['ratio']:.2f} | "
        f"{r['unpadded_first_calls_seconds']:.0f}, "
        f"{r['padded_first_calls_seconds']:.0f} | "
        f"{r['load_average_1min']:.1f} |")
  with open(os.path.join(out, 'pad_speed.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results'))
  p.add_argument('--algorithm', default='bfs')
  p.add_argument('--models', default='dear,nar')
  p.add_argument('--rounds', type=int, default=3)
  args = p.parse_args(argv)
  if args.rounds < 1:
    print(f'error: --rounds must be a positive integer, got {args.rounds}',
          file=sys.stderr)
    return 2
  from dear_jax import MODEL_KINDS, clrs_lib  # pylint: disable=g-import-not-at-top
  if args.algorithm not in clrs_lib.algorithm_names():
    print(f'error: unknown algorithm {args.algorithm!r}; allowed: '
          f'{", ".join(clrs_lib.algorithm_names())}', file=sys.stderr)
    return 2
  models = [m for m in args.models.split(',') if m]
  if not models or any(m not in MODEL_KINDS for m in models):
    print(f'error: --models takes {", ".join(MODEL_KINDS)}, got '
          f'{args.models!r}', file=sys.stderr)
    return 2
  rows = [measure(m, args.algorithm, args.rounds) for m in models]
  from dear_jax.profiling import hardware_line  # pylint: disable=g-import-not-at-top
  note = (f'One batch of 32 per training size, {args.rounds} rounds, the two '
          'modes alternating; steps/s of the median round; first calls: '
          'the seconds of the first call on each batch (compiling included). '
          'Measured on a 2-core machine shared with other jobs and loaded '
          '(1-minute load average per row): absolute rates move with the '
          'load; read the ratios.')
  write(rows, args.out, hardware_line(), note)
  return 0


if __name__ == '__main__':
  sys.exit(main())
