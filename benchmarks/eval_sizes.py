"""Memory and time of evaluation at DEAR's test sizes (n = 128, 256, 512).

    python -m benchmarks.eval_sizes [--out=benchmarks/results]
        [--algorithm=bfs] [--sizes=128,256,512] [--graphs=4] [--hidden=128]
        [--models=dear,dear_paper,nar,nar_nohint,nar_lt]

Each (model, n) runs in its own process, so its peak resident memory
(getrusage's ru_maxrss) is that evaluation's alone: untrained parameters,
`--graphs` graphs of the extra test split (splits.load_extra_test, batches
shrunk per n by splits.eval_batch_size), compiled once, then one timed pass
of dear_jax.train.evaluate. Also XLA's compiled memory of the predict
function on one batch (profiling.compiled_mb). Untrained models iterate as
they happen to: DEAR runs to its cap more often than a trained one, and the
untrained nar_lt's head stops at random, so nar_lt runs here with
max_steps_factor 1 (at most n steps). Writes OUT/eval_sizes.json and
OUT/eval_sizes.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ('dear', 'dear_paper', 'dear_paper_dense', 'nar', 'nar_nohint',
          'nar_lt')


def _config(model: str, n: int, hidden: int, graphs: int, cache_dir: str):
  from baselines import plan  # pylint: disable=g-import-not-at-top
  from dear_jax import factory, splits, train  # pylint: disable=g-import-not-at-top
  c = plan.load_config_file('configs/dear_paper.py' if
                            model.startswith('dear_paper') else
                            'configs/default.py')
  c.model_kind = 'dear' if model.startswith('dear') else 'nar'
  if model in ('nar_nohint', 'nar_lt'):
    c.nar.hint_mode = 'none'
  if model == 'nar_lt':
    c.nar.learn_termination = True
    c.nar.max_steps_factor = 1.0
  c.model.hidden = hidden
  # graphs 0: one batch of the size's evaluation batch size
  c.data.extra_test_num_samples = graphs or splits.eval_batch_size(
      n, train.data_config(c))
  if cache_dir:
    c.data.cache_dir = cache_dir
  return c


def measure(model: str, algorithm: str, n: int, hidden: int, graphs: int,
            cache_dir: str) -> dict:
  """One evaluation, in this process: its numbers and peak RSS."""
  import jax  # pylint: disable=g-import-not-at-top
  from dear_jax import clrs_lib, factory, profiling, splits, train  # pylint: disable=g-import-not-at-top
  config = _config(model, n, hidden, graphs, cache_dir)
  dcfg = train.data_config(config)
  evalset = splits.load_extra_test(algorithm, n, dcfg,
                                   keep_hints=factory.uses_hints(config))
  lists = [b.get('senders') for b in evalset.batches]
  if model.endswith('_dense'):  # the gated max-MPNN over all node pairs
    for b in evalset.batches:
      b.pop('senders', None)
  batch = evalset.batches[0]
  # Parameters as a run makes them, on a validation batch (n=16): an eager
  # init at n=512 would materialise what the compiled model never does.
  small = splits.load_split(algorithm, 'val', dcfg,
                            keep_hints=factory.uses_hints(config)).batches[0]
  net = factory.build_model(config, clrs_lib.processed_spec(algorithm), small)
  params = net.init(jax.random.PRNGKey(0), small)
  predict = jax.jit(net.predict)
  t0 = time.perf_counter()
  mb = profiling.compiled_mb(predict.lower(params, batch).compile())
  jax.block_until_ready(predict(params, batch))
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  r = train.evaluate(net, predict, params, evalset)
  seconds = time.perf_counter() - t0
  kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return dict(model=model, algorithm=algorithm, nodes=n, hidden=hidden,
              graphs=evalset.num_samples, batch_size=len(batch['lengths']),
              seconds_per_graph=seconds / evalset.num_samples,
              compile_seconds=compile_s, peak_rss_mb=kb / 1024,
              compiled_mb=None if mb is None else mb['total'],
              # aggregation along sender lists: the gated max-MPNN only
              senders_per_node=(None if lists[0] is None or
                                model.endswith('_dense') or
                                config.model.processor != 'gmpnn'
                                else int(lists[0].shape[-1])),
              score=r['score'], solver_iters_mean=r.get('solver_iters_mean'),
              nar_steps_mean=r.get('nar_steps_mean'),
              algo_steps_mean=float(evalset.lengths.mean() - 1))


def _markdown(rows: list, load: tuple, hardware: str) -> str:
  lines = ['# Evaluation at DEAR\'s test sizes: peak memory and time', '',
           f'Machine: {hardware}. Load average at the end: '
           f'{", ".join(f"{x:.2f}" for x in load)} (a shared CPU: time per '
           'graph is indicative, memory is not affected).', '',
           'Untrained parameters; each row one process (peak RSS includes '
           'Python, jax and the data). Iterations: DEAR\'s solver; steps: '
           'nar_lt (cap n here).', '',
           '| model | n | hidden | graphs | batch | senders per node | '
           'peak RSS (MB) | compiled (MB) | s / graph | iterations or steps '
           '| true steps |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    if 'error' in r:
      lines.append(f"| {r['model']} | {r['nodes']} | | | | | | | | "
                   f"failed: {r['error']} | |")
      continue
    steps = r['solver_iters_mean'] or r['nar_steps_mean']
    lines.append(
        f"| {r['model']} | {r['nodes']} | {r['hidden']} | {r['graphs']} | "
        f"{r['batch_size']} | {r['senders_per_node'] or 'all'} | "
        f"{r['peak_rss_mb']:.0f} | "
        + ('–' if r['compiled_mb'] is None else f"{r['compiled_mb']:.0f}")
        + f" | {r['seconds_per_graph']:.3f} | "
        + ('–' if steps is None else f'{steps:.1f}')
        + f" | {r['algo_steps_mean']:.1f} |")
  return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m benchmarks.eval_sizes')
  p.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results'))
  p.add_argument('--algorithm', default='bfs')
  p.add_argument('--sizes', default='128,256,512')
  p.add_argument('--graphs', type=int, default=0,
                 help='graphs per size (0: one evaluation batch)')
  p.add_argument('--hidden', type=int, default=128)
  p.add_argument('--models', default=','.join(MODELS))
  p.add_argument('--cache_dir', default='')
  p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  models = args.models.split(',')
  sizes = [int(s) for s in args.sizes.split(',')]
  bad = [m for m in models if m not in MODELS]
  if bad or args.graphs < 0 or args.hidden < 1 or min(sizes) < 4:
    print(f'error: models from {",".join(MODELS)}, sizes >= 4, graphs >= 0, '
          'hidden >= 1', file=sys.stderr)
    return 2
  if args.child:
    print(json.dumps(measure(models[0], args.algorithm, sizes[0], args.hidden,
                             args.graphs, args.cache_dir)))
    return 0
  rows = []
  for m in models:
    for n in sizes:
      cmd = [sys.executable, '-m', 'benchmarks.eval_sizes', '--child',
             f'--models={m}', f'--sizes={n}', f'--algorithm={args.algorithm}',
             f'--graphs={args.graphs}', f'--hidden={args.hidden}',
             f'--cache_dir={args.cache_dir}']
      proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                            check=False)
      if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or ['?'])[-1]
        rows.append(dict(model=m, nodes=n, error=tail[:200]))
      else:
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
      print(json.dumps(rows[-1]), flush=True)
  from dear_jax import profiling  # pylint: disable=g-import-not-at-top
  os.makedirs(args.out, exist_ok=True)
  hardware = profiling.hardware_line()
  with open(os.path.join(args.out, 'eval_sizes.json'), 'w') as f:
    json.dump(dict(rows=rows, hardware=hardware, load=os.getloadavg()), f,
              indent=1)
  with open(os.path.join(args.out, 'eval_sizes.md'), 'w') as f:
    f.write(_markdown(rows, os.getloadavg(), hardware))
  return 0


if __name__ == '__main__':
  sys.exit(main())
