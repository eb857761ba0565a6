"""Seeds per second of training with K seeds stacked in one vmapped step.

    python -m benchmarks.seed_stack [--algorithm=bfs] [--model=nar|dear] \
        [--stacks=1,2,4,8] [--steps=2] [--rounds=3] [--out=benchmarks/results]

Why: `--stack_seeds` (dear_jax/seeds.py) claims K seeds train faster together
than one after another. Each K is the stack `train.train_seeds` builds
(`seeds.SeedStack` over `train.make_update`, the jitted single step for K=1),
stepped with `SeedStack.step` on the same real dm-clrs batches (one shape:
one compile per K, done in warm-up steps). Rounds interleave the K's (and
dm-clrs's BaselineModel for the NAR) so load drifts hit all alike; medians
over rounds. speed-up(K) = seed-steps/s(K) / steps/s(K=1). Also XLA's
compiled memory of each K's step (dear_jax.profiling.compiled_mb).

Writes OUT/seed_stack_MODEL_ALGORITHM.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def same_shape_batches(algorithm: str, config, count: int) -> list:
  """`count` TrainStream batches of the config's first size, all of its most
  common shape (hint steps included)."""
  from dear_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from dear_jax import factory, train  # pylint: disable=g-import-not-at-top
  return input_pipeline.same_shape_batches(input_pipeline.TrainStream(
      algorithm, train.data_config(config), seed=0, keep_hints=True), count)


class Stacks:
  """One model and optimiser; `stack(seeds)` is train._train's SeedStack for
  those seeds (the same init keys, update and jitted single step)."""

  def __init__(self, config, algorithm: str, batches: list):
    import jax  # pylint: disable=g-import-not-at-top
    from dear_jax import clrs_lib  # pylint: disable=g-import-not-at-top
    from dear_jax import factory, train  # pylint: disable=g-import-not-at-top
    self.batches = [b if factory.uses_hints(config) else dict(b, hints={})
                    for b in batches]
    spec = clrs_lib.processed_spec(algorithm)
    self.model, self.single_step, _, _ = train.setup(
        config, spec, self.batches[0], jax.random.PRNGKey(0))
    self.optimizer = train.make_optimizer(config)
    self.update = train.make_update(self.model, self.optimizer)

  def stack(self, seeds: list):
    import jax  # pylint: disable=g-import-not-at-top
    from dear_jax import seeds as seeds_lib  # pylint: disable=g-import-not-at-top
    states = []
    for s in seeds:
      p = self.model.init(jax.random.fold_in(jax.random.PRNGKey(s), 0),
                          self.batches[0])
      states.append((p, self.optimizer.init(p)))
    return seeds_lib.SeedStack(states, list(seeds), self.update,
                               self.single_step)

  def batch(self, seed: int, step: int) -> dict:
    """Seed `seed`'s batch at `step`: seeds see different batches, and a seed
    the same ones whatever stack it is in."""
    return self.batches[(step + seed) % len(self.batches)]

  def run(self, stack, seeds: list, start: int, count: int):
    """`count` steps of every seed from step `start`; losses (count, K)."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    losses = []
    for i in range(start, start + count):
      loss, _, _ = stack.step(list(range(len(seeds))),
                              [self.batch(s, i) for s in seeds],
                              [i] * len(seeds))
      losses.append(loss)
    return np.stack(losses)

  def memory_mb(self, stack, seeds: list):
    """compiled_mb of the step the stack runs (lowered again: jit's cache
    does not hand out its executable)."""
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from dear_jax.profiling import compiled_mb  # pylint: disable=g-import-not-at-top
    from dear_jax import seeds as seeds_lib  # pylint: disable=g-import-not-at-top
    batches = [self.batch(s, 0) for s in seeds]
    # pylint: disable=protected-access
    if not stack.vmapped:
      lowered = stack._single_step.lower(
          *stack.tree, batches[0], stack.keys[0], jnp.int32(1))
    else:
      lowered = stack._step.lower(
          *stack.tree, seeds_lib.stack_batches(batches), stack.keys,
          jnp.ones(len(seeds), jnp.int32))
    return compiled_mb(lowered.compile())


def _official(algorithm: str, batches: list):
  """A pass over the batches with dm-clrs's BaselineModel (run.py defaults)."""
  import jax  # pylint: disable=g-import-not-at-top
  from baselines import clrs_official  # pylint: disable=g-import-not-at-top
  from dear_jax import clrs_lib  # pylint: disable=g-import-not-at-top
  spec = clrs_lib.processed_spec(algorithm)
  feedbacks = [clrs_lib.to_feedback(b, spec) for b in batches]
  model = clrs_official.build_model(spec, feedbacks[0])
  model.init(feedbacks[0].features, 1)

  def steps(count: int, start: int) -> None:
    for i in range(start, start + count):
      loss = model.feedback(jax.random.PRNGKey(i),
                            feedbacks[i % len(feedbacks)], 0)
    float(loss)

  return steps


def measure(config, algorithm: str, stacks: list, steps: int, rounds: int,
            warmup: int, official: bool, memory: bool, log=print) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  batches = same_shape_batches(algorithm, config, 4)
  bench = Stacks(config, algorithm, batches)
  runs = {k: (bench.stack(list(range(k))), list(range(k))) for k in stacks}
  losses, times = {}, {k: [] for k in stacks}
  for k, (stack, seeds) in runs.items():
    t0 = time.perf_counter()
    losses[k] = bench.run(stack, seeds, 0, warmup)  # compiles
    log(f'K={k}: compiled and warmed up in {time.perf_counter() - t0:.1f} s')
  official_steps = _official(algorithm, bench.batches) if official else None
  if official_steps:
    official_steps(warmup, 0)
    times['official'] = []
  load = [os.getloadavg()[0]]
  done = warmup
  for r in range(rounds):
    for k, (stack, seeds) in runs.items():
      t0 = time.perf_counter()
      bench.run(stack, seeds, done, steps)
      times[k].append((time.perf_counter() - t0) / steps)
    if official_steps:
      t0 = time.perf_counter()
      official_steps(steps, done)
      times['official'].append((time.perf_counter() - t0) / steps)
    done += steps
    load.append(os.getloadavg()[0])
    log(f'round {r + 1}/{rounds}: load {load[-1]:.2f}')
  base = 1 / statistics.median(times[stacks[0]]) / stacks[0]
  rows = []
  for k, (stack, seeds) in runs.items():
    rate = 1 / statistics.median(times[k])
    rows.append(dict(
        stack=k, steps_per_second=rate, seed_steps_per_second=k * rate,
        speedup_over_sequential=k * rate / base,
        seconds_per_step=times[k],
        warmup_losses=np.asarray(losses[k]).tolist(),
        compiled_mb=bench.memory_mb(stack, seeds) if memory else None))
  res = dict(algorithm=algorithm, model=config.model_kind,
             hidden=config.model.hidden, n=config.data.train_sizes[0],
             batch=config.data.batch_size,
             padded_steps=int(max((v.shape[0] for v in batches[0]['hints'].values()),
                                  default=0)),
             steps=steps, rounds=rounds, warmup=warmup, rows=rows,
             load_average_1min=load)
  if official_steps:
    off = 1 / statistics.median(times['official'])
    res.update(official_steps_per_second=off,
               official_seconds_per_step=times['official'])
    for row in rows:
      row['seed_steps_ratio_flax_over_official'] = (
          row['seed_steps_per_second'] / off)
  return res


def markdown(res: dict) -> str:
  official = 'official_steps_per_second' in res
  lines = [f'# {res["model"]} on {res["algorithm"]}: K seeds stacked in one '
           'vmapped train step', '',
           f'Machine: {res["hardware"]}.', '', f'Command: `{res["command"]}` '
           f'({res["date"]}).', '',
           f'hidden {res["hidden"]}, n={res["n"]}, batch {res["batch"]}, '
           f'{res["padded_steps"]} hint steps; {res["steps"]} timed steps per '
           f'K per round, {res["rounds"]} interleaved rounds (median), '
           f'{res["warmup"]} warm-up steps (compile) excluded. 1-minute load '
           f'average {min(res["load_average_1min"]):.2f}-'
           f'{max(res["load_average_1min"]):.2f} (on shared cores the '
           'rates are provisional; the speed-up is the figure to read).', '']
  head = ('| K | stack steps/s | seed-steps/s | speed-up vs K=1 one after '
          'another | compiled MB |')
  if official:
    head += ' seed-steps/s ÷ official steps/s |'
    lines.append(f'dm-clrs BaselineModel on the same batches: '
                 f'{res["official_steps_per_second"]:.3f} steps/s.')
    lines.append('')
  lines += [head, '|---' * (head.count('|') - 1) + '|']
  for r in res['rows']:
    mb = '-' if r['compiled_mb'] is None else f'{r["compiled_mb"]["total"]:.1f}'
    line = (f'| {r["stack"]} | {r["steps_per_second"]:.3f} | '
            f'{r["seed_steps_per_second"]:.3f} | '
            f'{r["speedup_over_sequential"]:.2f} | '
            f'{mb} |')
    if official:
      line += f' {r["seed_steps_ratio_flax_over_official"]:.2f} |'
    lines.append(line)
  return '\n'.join(lines) + '\n'


def _positive_ints(text: str):
  try:
    values = [int(v) for v in text.split(',') if v.strip()]
  except ValueError:
    return None
  return values if values and min(values) >= 1 else None


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  p = argparse.ArgumentParser(prog='python -m benchmarks.seed_stack',
                              description=__doc__.splitlines()[0])
  p.add_argument('--algorithm', default='bfs')
  p.add_argument('--model', default='nar', choices=('nar', 'dear'))
  p.add_argument('--stacks', default='1,2,4,8')
  p.add_argument('--steps', type=int, default=2, help='timed steps per round')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--warmup', type=int, default=1, help='untimed steps (compile)')
  p.add_argument('--n', type=int, default=16)
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--hidden', type=int, default=128)
  p.add_argument('--no_official', dest='official', action='store_false',
                 help='skip dm-clrs BaselineModel (only timed for --model=nar)')
  p.add_argument('--no_memory', dest='memory', action='store_false')
  p.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results'))
  a = p.parse_args(argv)
  stacks = _positive_ints(a.stacks)
  if stacks is None or stacks[0] != 1 or stacks != sorted(set(stacks)):
    print(f'error: --stacks must be increasing positive integers starting at '
          f'1, got {a.stacks!r}', file=sys.stderr)
    return 2
  for name in ('steps', 'rounds', 'warmup', 'batch', 'hidden'):
    if getattr(a, name) < 1:
      print(f'error: --{name} must be >= 1, got {getattr(a, name)}',
            file=sys.stderr)
      return 2
  if a.official and a.model == 'nar':  # BaselineModel runs on one device
    os.environ.setdefault('CUDA_VISIBLE_DEVICES', '0')
  from dear_jax import clrs_lib  # pylint: disable=g-import-not-at-top
  if a.algorithm not in clrs_lib.algorithm_names():
    print(f'error: unknown algorithm {a.algorithm!r}; allowed: '
          f'{", ".join(clrs_lib.algorithm_names())}', file=sys.stderr)
    return 2
  from dear_jax.profiling import hardware_line  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.model_kind = a.model
  config.model.hidden = a.hidden
  config.data.train_sizes = (a.n,)
  config.data.batch_size = a.batch
  hw = hardware_line()
  print(f'seed_stack on {hw}', flush=True)
  res = measure(config, a.algorithm, stacks, a.steps, a.rounds, a.warmup,
                a.official and a.model == 'nar', a.memory,
                log=lambda m: print(m, flush=True))
  res.update(hardware=hw, date=time.strftime('%Y-%m-%d %H:%M:%S'),
             command=' '.join(['python -m benchmarks.seed_stack'] + [
                 x for x in argv if not x.startswith('--out')]))
  os.makedirs(a.out, exist_ok=True)
  base = os.path.join(a.out, f'seed_stack_{a.model}_{a.algorithm}')
  with open(base + '.json', 'w') as f:
    json.dump(res, f, indent=2)
  md = markdown(res)
  with open(base + '.md', 'w') as f:
    f.write(md)
  print(md)
  return 0


if __name__ == '__main__':
  sys.exit(main())
