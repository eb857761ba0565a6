"""Training speed of the Flax stepwise NAR against dm-clrs's BaselineModel.

    python -m benchmarks.nar_speed [--out=benchmarks/results] \
        [--algorithms=bfs,insertion_sort] [--n=16] [--batch=32] [--rounds=5]

Both models train on the same TrainStream batches (hints on, all padded to one
step count; run.py's defaults, Triplet-GMPNN, hidden 128). Two measures:

1. XLA's flops and bytes of one compiled train step
   (`lower(...).compile().cost_analysis()`), with `lax.scan` unrolled while
   lowering: XLA counts a loop body once, whatever its trip count. These do
   not depend on the machine's load.
2. Steady-state steps per second, interleaved: each round runs one pass over
   the batches with each model (compiled beforehand); medians over rounds.
   The load average is recorded: on shared cores the ratio is the figure to
   read, not the rates.

Writes OUT/nar_speed.json and OUT/nar_speed.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

os.environ.setdefault('CUDA_VISIBLE_DEVICES', '0')  # BaselineModel: 1 device

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def _unrolled_scans():
  """lax.scan with unroll=True (haiku's hk.scan calls it too)."""
  import jax  # pylint: disable=g-import-not-at-top
  real = jax.lax.scan

  def scan(f, init, xs=None, length=None, reverse=False, unroll=1, **kw):
    del unroll
    return real(f, init, xs, length=length, reverse=reverse, unroll=True, **kw)

  jax.lax.scan = scan
  try:
    yield
  finally:
    jax.lax.scan = real


def _cost(lowered) -> dict:
  ca = lowered.compile().cost_analysis()
  ca = ca[0] if isinstance(ca, list) else ca
  return dict(gflops=ca['flops'] / 1e9, gbytes=ca['bytes accessed'] / 1e9)


def _batches(algorithm: str, n: int, batch: int, count: int):
  """`count` TrainStream batches, all of the most common step count."""
  from dear_jax import batches as batch_lib  # pylint: disable=g-import-not-at-top
  from dear_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  cfg = input_pipeline.DataConfig(train_sizes=(n,), batch_size=batch)
  batches = input_pipeline.same_shape_batches(
      input_pipeline.TrainStream(algorithm, cfg, seed=0), count)
  return batches, batch_lib.num_steps(batches[0])


def measure(algorithm: str, n: int, batch: int, count: int, rounds: int):
  import jax  # pylint: disable=g-import-not-at-top
  from baselines import clrs_official  # pylint: disable=g-import-not-at-top
  from benchmarks.run import _configs  # pylint: disable=g-import-not-at-top
  from dear_jax import clrs_lib  # pylint: disable=g-import-not-at-top
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  batches, steps = _batches(algorithm, n, batch, count)
  spec = clrs_lib.processed_spec(algorithm)
  _, cfg = _configs()
  model, step, params, opt_state = train.setup(cfg, spec, batches[0],
                                               jax.random.PRNGKey(0))
  feedbacks = [clrs_lib.to_feedback(b, spec) for b in batches]
  official = clrs_official.build_model(spec, feedbacks[0])
  official.init(feedbacks[0].features, 1)
  key = jax.random.PRNGKey(1)
  with _unrolled_scans():  # fresh jits: a cached trace would keep the loop
    flax_cost = _cost(jax.jit(train.make_update(
        model, train.make_optimizer(cfg))).lower(params, opt_state,
                                                 batches[0], key))
    # pylint: disable=protected-access
    official_cost = _cost(jax.jit(official._feedback, static_argnums=4).lower(
        official._device_params, key, feedbacks[0],
        official._device_opt_state, 0))
  state = [params, opt_state]

  def flax_pass():
    for i, b in enumerate(batches):
      state[0], state[1], loss, _ = step(state[0], state[1], b,
                                         jax.random.fold_in(key, i))
    jax.block_until_ready(loss)

  def official_pass():
    for i, fb in enumerate(feedbacks):
      loss = official.feedback(jax.random.fold_in(key, i), fb, 0)
    float(loss)

  flax_pass()  # compile
  official_pass()
  times = {'flax': [], 'official': []}
  load = [os.getloadavg()[0]]
  for _ in range(rounds):
    for name, run in (('flax', flax_pass), ('official', official_pass)):
      t0 = time.perf_counter()
      run()
      times[name].append((time.perf_counter() - t0) / len(batches))
    load.append(os.getloadavg()[0])
  med = {k: statistics.median(v) for k, v in times.items()}
  return dict(
      algorithm=algorithm, n=n, batch=batch, padded_steps=steps,
      batches=len(batches), rounds=rounds,
      flax_steps_per_second=1 / med['flax'],
      official_steps_per_second=1 / med['official'],
      ratio_flax_over_official=med['official'] / med['flax'],
      flax_seconds_per_step=times['flax'],
      official_seconds_per_step=times['official'],
      flax_gflops_per_step=flax_cost['gflops'],
      official_gflops_per_step=official_cost['gflops'],
      flops_ratio_official_over_flax=(official_cost['gflops'] /
                                      flax_cost['gflops']),
      flax_gbytes_per_step=flax_cost['gbytes'],
      official_gbytes_per_step=official_cost['gbytes'],
      load_average_1min=load)


def write(rows: list, out: str, machine: str, note: str) -> None:
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'nar_speed.json'), 'w') as f:
    json.dump(dict(machine=machine, note=note, rows=rows), f, indent=2)
  lines = ['# Flax stepwise NAR vs dm-clrs BaselineModel: training speed', '',
           f'Machine: {machine}.', '', note, '',
           '| algorithm | n | batch | padded steps | Flax steps/s | official '
           'steps/s | Flax / official (time) | Flax GFLOP/step | official '
           'GFLOP/step | official / Flax (flops) | load average (1 min) |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    load = r['load_average_1min']
    lines.append(
        f"| {r['algorithm']} | {r['n']} | {r['batch']} | {r['padded_steps']} "
        f"| {r['flax_steps_per_second']:.2f} | "
        f"{r['official_steps_per_second']:.2f} | "
        f"{r['ratio_flax_over_official']:.2f} | "
        f"{r['flax_gflops_per_step']:.1f} | "
        f"{r['official_gflops_per_step']:.1f} | "
        f"{r['flops_ratio_official_over_flax']:.2f} | "
        f"{min(load):.1f}-{max(load):.1f} |")
  with open(os.path.join(out, 'nar_speed.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results'))
  p.add_argument('--algorithms', default='bfs,insertion_sort')
  p.add_argument('--n', type=int, default=16)
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--batches', type=int, default=4)
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--note', default='')
  args = p.parse_args(argv)
  for name in ('n', 'batch', 'batches', 'rounds'):
    if getattr(args, name) < 1 or (name == 'n' and args.n < 4):
      print(f'--{name} must be a positive integer (n >= 4), got '
            f'{getattr(args, name)}', file=sys.stderr)
      return 2
  from dear_jax import clrs_lib  # pylint: disable=g-import-not-at-top
  algorithms = [a for a in args.algorithms.split(',') if a]
  unknown = [a for a in algorithms if a not in clrs_lib.algorithm_names()]
  if unknown or not algorithms:
    print(f'unknown algorithm(s) {unknown}; allowed: '
          f'{", ".join(clrs_lib.algorithm_names())}', file=sys.stderr)
    return 2
  rows = []
  for a in algorithms:
    rows.append(measure(a, args.n, args.batch, args.batches, args.rounds))
    r = rows[-1]
    print(f"{a}: Flax {r['flax_steps_per_second']:.2f} steps/s, official "
          f"{r['official_steps_per_second']:.2f}, ratio "
          f"{r['ratio_flax_over_official']:.2f}; flops official/Flax "
          f"{r['flops_ratio_official_over_flax']:.2f}; load "
          f"{r['load_average_1min']}")
  note = ('Timing: one pass over the batches per model per round, the two '
          'models alternating, medians over rounds, compile excluded, '
          'host-to-device copies included. Flops: XLA cost analysis of one '
          'train step with the step loop unrolled. ' + args.note)
  from dear_jax.profiling import hardware_line  # pylint: disable=g-import-not-at-top
  write(rows, args.out, hardware_line(), note.strip())
  return 0


if __name__ == '__main__':
  sys.exit(main())
