"""What an implicit-gradient training step costs against DEAR's 1-step gradient.

    python -m benchmarks.ift_cost [--algorithm=mst_prim] [--out=benchmarks/results]

One process, one machine, the same batches and parameters for every variant:
the default DEAR model (configs/default.py) trained with `grad=jfb`, then with
`grad=ift` and each adjoint solver setting below, timed over the same jitted
train step (train.make_train_step; compile excluded, median of repeats).
Reports seconds per step, the ratio to JFB (goal: IFT <= 2x JFB) and the
forward solver iterations, so the ratio can be read against the work done.
Writes OUT/ift_cost.json and OUT/ift_cost.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

VARIANTS = {
    'jfb': dict(grad='jfb'),
    'ift anderson tol 1e-3 (default)': dict(grad='ift'),
    'ift anderson tol 1e-2 (DEAR b_tol)': dict(grad='ift', backward_tol=1e-2),
    'ift gmres 20 matvecs tol 1e-6': dict(grad='ift', backward_solver='gmres',
                                         backward_tol=1e-6, backward_max_iter=20),
    'phantom 5 steps': dict(grad='phantom'),
}


def measure(algorithm: str, n: int, batch_size: int, batches: int, repeats: int,
            pretrain_steps: int, log) -> list:
  import jax  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  from dear_jax import clrs_lib  # pylint: disable=g-import-not-at-top
  from dear_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.data.train_sizes = (n,)
  config.data.batch_size = batch_size
  data = input_pipeline.same_shape_batches(input_pipeline.TrainStream(
      algorithm, train.data_config(config), seed=0, keep_hints=False), batches)
  spec = clrs_lib.processed_spec(algorithm)
  key = jax.random.PRNGKey(0)
  _, step, params, opt_state = train.setup(config, spec, data[0], key,
                                           donate=False)
  # a few JFB steps first, so the map is not the untrained one
  for i in range(pretrain_steps):
    params, opt_state, _, _ = step(params, opt_state, data[i % len(data)],
                                   jax.random.fold_in(key, i))
  rows = []
  for name, changes in VARIANTS.items():
    cfg = config.copy_and_resolve_references()
    for k, v in changes.items():
      cfg.dear[k] = v
    _, st, _, _ = train.setup(cfg, spec, data[0], key, donate=False)

    def one_pass():
      out = None
      for i, b in enumerate(data):
        out = st(params, opt_state, b, jax.random.fold_in(key, i))
      return jax.block_until_ready(out)
    out = one_pass()   # compile
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      out = one_pass()
      times.append((time.perf_counter() - t0) / len(data))
    iters = float(out[3]['solver'].iterations.mean())
    rows.append(dict(variant=name, seconds_per_step=statistics.median(times),
                     forward_iterations_last_batch=iters))
    log(f'  {name}: {1e3 * rows[-1]["seconds_per_step"]:.1f} ms/step '
        f'({iters:.1f} forward iterations)')
  base = rows[0]['seconds_per_step']
  for r in rows:
    r['ratio_to_jfb'] = r['seconds_per_step'] / base
  return rows


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m benchmarks.ift_cost',
                              description=__doc__.split('\n')[0])
  p.add_argument('--algorithm', default='mst_prim')
  p.add_argument('--n', type=int, default=16)
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--batches', type=int, default=4)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--pretrain_steps', type=int, default=20)
  p.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results'))
  a = p.parse_args(argv)
  from dear_jax.profiling import hardware_line  # pylint: disable=g-import-not-at-top
  log = lambda m: print(m, flush=True)
  hw = hardware_line()
  log(f'ift_cost on {hw}')
  rows = measure(a.algorithm, a.n, a.batch_size, a.batches, a.repeats,
                 a.pretrain_steps, log)
  res = dict(hardware=hw, date=time.strftime('%Y-%m-%d %H:%M:%S'), algorithm=a.algorithm,
             n=a.n, batch_size=a.batch_size, batches=a.batches, repeats=a.repeats,
             pretrain_steps=a.pretrain_steps, rows=rows)
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, 'ift_cost.json'), 'w') as f:
    json.dump(res, f, indent=2)
  lines = ['# Train-step cost of the gradient modes (DEAR, configs/default.py)', '',
           f'Machine: {hw}. {a.algorithm}, n={a.n}, batch {a.batch_size}, '
           f'{a.batches} batches x {a.repeats} repeats (median), after '
           f'{a.pretrain_steps} JFB training steps; compile excluded.', '',
           '| gradient | ms / step | ÷ JFB | forward iterations |', '|---|---|---|---|']
  lines += [f'| {r["variant"]} | {1e3 * r["seconds_per_step"]:.1f} | '
            f'{r["ratio_to_jfb"]:.2f} | {r["forward_iterations_last_batch"]:.1f} |'
            for r in rows]
  with open(os.path.join(a.out, 'ift_cost.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
