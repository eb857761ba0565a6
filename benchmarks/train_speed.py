"""Training-loop speed: a wait for the device after every update (the loop's
former behaviour) against losses fetched every `loop.FETCH_EVERY` updates
with the next batches drawn in a background thread.

    python -m benchmarks.train_speed [--out=benchmarks/results] \
        [--algorithms=bfs,strongly_connected_components] [--models=dear,nar]
        [--steps=40] [--rounds=2]

Each (algorithm, model) trains the same short run (configs/default.py, seed
0, validation only before and after training, 8 validation and test graphs,
no fixed-point checks) once per mode per round, the two modes alternating,
each in a fresh workdir. `per_update` sets loop.FETCH_EVERY = 1 and
loop.PREFETCH = 0 (a fetch after each update, batches drawn when needed, as
before); `fetched` keeps the defaults. Both give the same losses (tests).

Reported per mode, medians over rounds: updates per second of the training
loop with compiling taken out (train_steps / results.json's
timings.train_seconds), and the loop's own steady-state rate
(train_loop_steps_per_second: stretches in which nothing compiled). The
ratio fetched / per_update is the figure to read; on shared cores the rates
move with the load, recorded per round.

Writes OUT/train_speed.json and OUT/train_speed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ('per_update', 'fetched')


def _config(model: str, steps: int, cache_dir: str | None):
  from configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.model_kind = model
  c.train.steps = steps
  c.train.eval_every = steps
  c.data.val_num_samples = 8
  c.data.test_num_samples = 8
  c.data.eval_batch_size = 8
  c.dear.diagnostics = False
  if cache_dir:
    c.data.cache_dir = cache_dir
  return c


def run_once(model: str, algorithm: str, steps: int, mode: str,
             cache_dir: str | None) -> dict:
  """One run in a fresh workdir with the loop in `mode`; its rates."""
  from dear_jax import loop, train  # pylint: disable=g-import-not-at-top
  saved = loop.FETCH_EVERY, loop.PREFETCH
  if mode == 'per_update':
    loop.FETCH_EVERY, loop.PREFETCH = 1, 0
  try:
    with tempfile.TemporaryDirectory(prefix='train_speed_') as tmp:
      r = train.train_and_evaluate(
          _config(model, steps, cache_dir), tmp, algorithm,
          progress=False)
  finally:
    loop.FETCH_EVERY, loop.PREFETCH = saved
  t = r['timings']
  return dict(steps_per_second=steps / t['train_seconds'],
              steady_loop_steps_per_second=r['train_loop_steps_per_second'],
              compile_seconds=t['compile_seconds'],
              loss_curve=r['loss_curve'], load=os.getloadavg()[0])


def measure(model: str, algorithm: str, steps: int, rounds: int,
            cache_dir: str | None) -> dict:
  runs = {m: [] for m in MODES}
  for i in range(rounds):
    for mode in (MODES if i % 2 == 0 else MODES[::-1]):
      runs[mode].append(run_once(model, algorithm, steps, mode, cache_dir))
      print(f'  {algorithm} {model} round {i} {mode}: '
            f'{runs[mode][-1]["steps_per_second"]:.2f} steps/s', flush=True)
  row = dict(algorithm=algorithm, model=model, steps=steps, rounds=rounds,
             same_losses=all(r['loss_curve'] == runs[MODES[0]][0]['loss_curve']
                             for m in MODES for r in runs[m]),
             load_average_1min=[r['load'] for m in MODES for r in runs[m]])
  for mode in MODES:
    for key in ('steps_per_second', 'steady_loop_steps_per_second'):
      row[f'{mode}_{key}'] = statistics.median(r[key] for r in runs[mode])
  row['ratio'] = (row['fetched_steps_per_second'] /
                  row['per_update_steps_per_second'])
  return row


def write(rows: list, out: str, machine: str, note: str) -> None:
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'train_speed.json'), 'w') as f:
    json.dump(dict(machine=machine, note=note, rows=rows), f, indent=1)
  lines = [
      '# Training loop: a wait per update vs fetched losses and prefetched '
      'batches', '', f'Machine: {machine}', '', note, '',
      '| algorithm | model | steps | per-update steps/s | fetched steps/s | '
      'fetched / per-update | steady loop steps/s (per-update, fetched) | '
      'same losses | load average (1 min) |',
      '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    load = r['load_average_1min']
    lines.append(
        f"| {r['algorithm']} | {r['model']} | {r['steps']} | "
        f"{r['per_update_steps_per_second']:.2f} | "
        f"{r['fetched_steps_per_second']:.2f} | {r['ratio']:.2f} | "
        f"{r['per_update_steady_loop_steps_per_second']:.2f}, "
        f"{r['fetched_steady_loop_steps_per_second']:.2f} | "
        f"{'yes' if r['same_losses'] else 'NO'} | "
        f"{min(load):.1f}-{max(load):.1f} |")
  with open(os.path.join(out, 'train_speed.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results'))
  p.add_argument('--algorithms', default='bfs,strongly_connected_components')
  p.add_argument('--models', default='dear,nar')
  p.add_argument('--steps', type=int, default=40)
  p.add_argument('--rounds', type=int, default=2)
  p.add_argument('--cache_dir', default=None, help='dataset cache folder')
  p.add_argument('--note', default='')
  args = p.parse_args(argv)
  for name in ('steps', 'rounds'):
    if getattr(args, name) < 1:
      print(f'error: --{name} must be a positive integer, got '
            f'{getattr(args, name)}', file=sys.stderr)
      return 2
  from dear_jax import MODEL_KINDS, clrs_lib, compile_cache, loop  # pylint: disable=g-import-not-at-top
  algorithms = [a for a in args.algorithms.split(',') if a]
  models = [m for m in args.models.split(',') if m]
  unknown = [a for a in algorithms if a not in clrs_lib.algorithm_names()]
  if unknown or not algorithms:
    print(f'error: unknown algorithm(s) {unknown}; allowed: '
          f'{", ".join(clrs_lib.algorithm_names())}', file=sys.stderr)
    return 2
  if not models or any(m not in MODEL_KINDS for m in models):
    print(f'error: --models takes {", ".join(MODEL_KINDS)}, got '
          f'{args.models!r}', file=sys.stderr)
    return 2
  compile_cache.enable()
  note = (f'Short runs of configs/default.py ({args.steps} updates, training '
          f'sizes 4-16, batch 32), the two modes alternating, medians over '
          f'{args.rounds} rounds; steps/s = updates / the loop\'s time with '
          f'compiling taken out; fetched: losses fetched every '
          f'{loop.FETCH_EVERY} updates, {loop.PREFETCH} batches drawn ahead. '
          + args.note).strip()
  from dear_jax.profiling import hardware_line  # pylint: disable=g-import-not-at-top
  rows = []
  for a in algorithms:
    for m in models:
      rows.append(measure(m, a, args.steps, args.rounds, args.cache_dir))
      r = rows[-1]
      print(f"{a} {m}: per-update {r['per_update_steps_per_second']:.2f} "
            f"steps/s, fetched {r['fetched_steps_per_second']:.2f}, ratio "
            f"{r['ratio']:.2f}, same losses {r['same_losses']}", flush=True)
      write(rows, args.out, hardware_line(), note)  # a row at a time
  return 0


if __name__ == '__main__':
  sys.exit(main())
