"""A test's time per graph after a compile-only warm-up against after an
executed one (the batch predicted once, untimed), on stored models.

    python -m benchmarks.warmup [--out=benchmarks/results]
        [--cases=bfs/dear:64,bfs/dear:256] [--rounds=3]

Where a batch holds at most two graphs the tests warm up by compiling only
(`extra_tests.warm`): at large n one batch of a stepwise model takes many
minutes, and executing it untimed doubled a probed size's cost. That is
sound where the first execution after a bare compile is not slower than
one after an executed warm-up. Each measurement is a test pass timed as
`extra_tests.score_set` times it, on the stored model
(pretrained/ALGORITHM/MODEL) at n, in a process of its own (the state a
test starts from), the two warm-ups alternating per round. Reported: the
median seconds per graph of each and their ratio (compiled / executed).
Writes OUT/warmup.json and OUT/warmup.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARMUPS = ('executed', 'compiled')


def measure(folder: str, n: int, warmup: str,
            cache_dir: str | None = None) -> dict:
  """A test pass of the stored model at n in this process, after the
  `warmup` ('executed' or 'compiled') of each batch shape."""
  import jax  # pylint: disable=g-import-not-at-top
  from dear_jax import clrs_lib, factory, pretrained, profiling, splits, train  # pylint: disable=g-import-not-at-top
  meta, config, params = pretrained.load(folder)
  if cache_dir:
    config.data.cache_dir = str(cache_dir)
  evalset = splits.load_extra_test(meta['algorithm'], n,
                                   train.data_config(config),
                                   factory.uses_hints(config))
  net = factory.build_model(config, clrs_lib.processed_spec(meta['algorithm']),
                            evalset.batches[0]).for_test()
  learner = pretrained._Learner(net)  # pylint: disable=protected-access
  evalset = evalset.only_its_graphs()
  for batch in evalset.one_batch_per_shape():  # as extra_tests.warm does
    if warmup == 'compiled':
      learner.compile(params, batch)
    else:
      jax.block_until_ready(learner.warm(params, batch))
  with profiling.Stopwatch() as timed:  # as extra_tests.score_set times
    r = learner.evaluate(params, evalset, per_graph=True)
  return dict(seconds_per_graph=timed.per_graph(evalset.num_samples)[
      'eval_seconds_per_graph'], score=r['score'],
              graphs=int(evalset.num_samples),
              batch_size=len(evalset.batches[0]['lengths']),
              load_average_1min=os.getloadavg()[0],
              devices=str(jax.devices()[0]))


def _in_process(folder: str, n: int, warmup: str) -> dict:
  out = subprocess.run(
      [sys.executable, '-m', 'benchmarks.warmup', '--one',
       f'{folder}:{n}:{warmup}'], cwd=REPO, check=True, capture_output=True,
      text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')).stdout
  return json.loads(out.strip().splitlines()[-1])


def run(cases: list, rounds: int) -> list:
  rows = []
  for folder, n in cases:
    got = {w: [] for w in WARMUPS}
    for i in range(rounds):
      for warmup in (WARMUPS if i % 2 == 0 else WARMUPS[::-1]):
        got[warmup].append(_in_process(folder, n, warmup))
    row = dict(model=os.path.relpath(folder, REPO), n=n, rounds=rounds,
               graphs=got['compiled'][0]['graphs'],
               batch_size=got['compiled'][0]['batch_size'],
               same_score=len({r['score'] for w in WARMUPS
                               for r in got[w]}) == 1,
               load_average_1min=max(r['load_average_1min'] for w in WARMUPS
                                     for r in got[w]))
    for w in WARMUPS:
      row[w] = statistics.median(r['seconds_per_graph'] for r in got[w])
      row[w + '_all'] = [r['seconds_per_graph'] for r in got[w]]
    row['ratio'] = row['compiled'] / row['executed']
    rows.append(row)
    print(f"{row['model']} n={n}: executed {row['executed']:.3f} s/graph, "
          f"compiled {row['compiled']:.3f} s/graph, ratio {row['ratio']:.2f}",
          flush=True)
  return rows


def _range(values) -> str:
  return f'{min(values):.3f}–{max(values):.3f}'


def write(rows: list, out: str, machine: str) -> None:
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'warmup.json'), 'w') as f:
    json.dump(dict(machine=machine, rows=rows), f, indent=1)
  lines = ['# A test timed after a compile-only warm-up', '',
           f'Machine: {machine}', '',
           'Seconds per graph of `extra_tests.score_set` (median over '
           'rounds, each in its own process, the two warm-ups alternating) '
           'after an executed warm-up and after a compile-only one.', '',
           '| stored model | n | graphs | batch | executed s/graph (range) | '
           'compiled s/graph (range) | compiled ÷ executed | same score | '
           'load average (1 min, max) |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(
        f"| {r['model']} | {r['n']} | {r['graphs']} | {r['batch_size']} | "
        f"{r['executed']:.3f} ({_range(r['executed_all'])}) | "
        f"{r['compiled']:.3f} ({_range(r['compiled_all'])}) | "
        f"{r['ratio']:.2f} | "
        f"{'yes' if r['same_score'] else 'no'} | "
        f"{r['load_average_1min']:.1f} |")
  with open(os.path.join(out, 'warmup.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def _cases(text: str) -> list | None:
  cases = []
  for item in filter(None, text.split(',')):
    model, _, n = item.rpartition(':')
    folder = os.path.join(REPO, 'pretrained', model)
    if not n.isdigit() or int(n) < 1 or not os.path.isfile(
        os.path.join(folder, 'model.json')):
      return None
    cases.append((folder, int(n)))
  return cases or None


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results'))
  p.add_argument('--cases', default='bfs/dear:64,bfs/dear:256')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--one', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.one:
    folder, n, warmup = args.one.rsplit(':', 2)
    print(json.dumps(measure(folder, int(n), warmup)))
    return 0
  if args.rounds < 1:
    print(f'error: --rounds must be a positive integer, got {args.rounds}',
          file=sys.stderr)
    return 2
  cases = _cases(args.cases)
  if cases is None:
    print('error: --cases takes ALGORITHM/MODEL:N items, ALGORITHM/MODEL a '
          f'stored model under pretrained/ and N a positive size; got '
          f'{args.cases!r}', file=sys.stderr)
    return 2
  from dear_jax import profiling  # pylint: disable=g-import-not-at-top
  rows = run(cases, args.rounds)
  write(rows, args.out, profiling.hardware_line())
  print(f'wrote {os.path.join(args.out, "warmup.md")}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
