"""Speed and memory of DEAR vs the stepwise NAR, and of the Flax NAR vs dm-clrs.

    python -m benchmarks.run [--out=benchmarks/results] [--quick]

One run on the current machine (jax's default backend: a GPU when jax has
one, else the CPU) measures:

1. Inference seconds per graph of DEAR and of the stepwise NAR (same
   Triplet-GMPNN processor, hidden 128) on batches of a fixed size at several
   graph sizes n, jitted, compile excluded, median over repeats; ratio
   NAR / DEAR. DEAR's cost follows its solver iterations (capped at
   dear.max_iter_eval), the NAR's the true step count. With
   `--trained=FOLDER` (a folder of finished runs with checkpoints, e.g.
   experiments.equilibrium's OUT/runs) both models are the trained ones, with
   their own configs: DEAR then runs the iterations the trained map needs at
   its operating tolerance, which is the figure that matters. Without it the
   parameters are untrained (a fixed seed) and DEAR's iteration count says
   little.
2. XLA's compiled memory of one training step at n=64 (temp + arguments +
   outputs, `jax.jit(step).lower(...).compile().memory_analysis()`) of DEAR
   with each registered gradient (dear_jax.solver.GRADIENTS: 'ift',
   'phantom', 'jfb') and of the NAR; ratio DEAR / NAR.
3. Training steps per second of the Flax NAR and of dm-clrs's BaselineModel
   (`baselines.clrs_official`, run.py defaults) on the same TrainStream
   batches of one size and step count (each model compiles once, outside the
   timing); ratio Flax / official.

Writes OUT/results.json and OUT/results.md, prints the tables, and reports
the project's goals as met / not met (never asserts): DEAR >= 2x faster per
graph than the NAR at n=64 on algorithms whose step count grows with n, and
DEAR's training memory <= 1/3 of the NAR's. `--quick` shrinks everything
(n = 16, 32; fewer algorithms and repeats) to a few minutes on a small CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# BaselineModel runs on one device only (see baselines.clrs_official).
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '0')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Algorithms whose number of steps grows with n (insertion_sort: ~n,
# mst_prim: ~n) and BFS, whose steps follow the graph's depth (a few).
GROWING = ('insertion_sort', 'mst_prim', 'dijkstra')

SETTINGS = {
    'full': dict(sizes=(16, 64, 128), algorithms=('insertion_sort', 'mst_prim',
                                                  'bfs'),
                 batch=8, repeats=5, memory_n=64, memory_batch=32,
                 memory_algorithms=('insertion_sort', 'bfs'),
                 train_algorithm='bfs', train_n=16, train_batch=32,
                 train_batches=8, train_passes=3),
    'quick': dict(sizes=(16, 32), algorithms=('insertion_sort', 'bfs'),
                  batch=4, repeats=3, memory_n=64, memory_batch=32,
                  memory_algorithms=('insertion_sort',),
                  train_algorithm='bfs', train_n=16, train_batch=32,
                  train_batches=3, train_passes=2),
}



def grads() -> tuple:
  """The gradients measured: every registered one (dear_jax.solver)."""
  from dear_jax import solver  # pylint: disable=g-import-not-at-top
  return tuple(solver.GRADIENTS)

def _configs():
  from configs import default  # pylint: disable=g-import-not-at-top
  nar = default.get_config()
  nar.model_kind = 'nar'
  nar.nar.hint_mode = 'encoded_decoded'
  dear = default.get_config()
  dear.model_kind = 'dear'
  for c in (nar, dear):
    c.model.processor = 'triplet_gmpnn'
    c.model.hidden = 128
  return dear, nar


def _eval_batch(algorithm: str, n: int, batch: int, cache_dir: str):
  """`batch` graphs of n nodes from the official test sampler (seed 3)."""
  from dear_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from dear_jax import splits  # pylint: disable=g-import-not-at-top
  cfg = input_pipeline.DataConfig(test_length=n, test_num_samples=batch,
                                  eval_batch_size=batch, cache_dir=cache_dir)
  split = splits.load_split(algorithm, 'test', cfg, keep_hints=True)
  return split.batches[0], split.lengths


def _median_seconds(fn, repeats: int):
  """(median seconds of fn() over repeats, the first output); the first call
  (compile, warm caches) is not timed."""
  import jax  # pylint: disable=g-import-not-at-top
  first = jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times), first


class BenchmarkError(Exception):
  """Bad benchmark input (reported in one line, exit 2)."""


TRAINED_KINDS = ('dear', 'nar')  # the Flax model kinds --trained times


def trained_runs(folder: str, algorithm: str) -> dict:
  """{'dear'|'nar': (config, best params, run name)}: for each model kind,
  the finished run of `algorithm` under `folder`, at any depth (a flat
  folder of runs, or compare's runs/ALG/MODEL/sSEED), that kept its
  checkpoints; lowest seed first, then path order (compare's `dear` before
  `dear_align`). The run name is its path relative to `folder`."""
  from dear_jax import checkpoints, factory, train  # pylint: disable=g-import-not-at-top
  found = {}
  candidates = []
  for root, dirs, files in os.walk(folder, followlinks=True):
    dirs.sort()
    if 'results.json' not in files or 'checkpoints' not in dirs:
      continue
    dirs.clear()  # a run folder holds no further runs
    with open(os.path.join(root, 'results.json')) as f:
      r = json.load(f)
    if r.get('algorithm') == algorithm:
      candidates.append((r['seed'], os.path.relpath(root, folder), r))
  for _, name, r in sorted(candidates, key=lambda c: c[:2]):
    kind = r['model']
    if kind in found or kind not in TRAINED_KINDS:  # e.g. clrs_official
      continue
    config = train.stored_config(r['config'], os.path.join(folder, name))
    params = checkpoints.load_best_params(os.path.join(folder, name))
    found[kind] = (config, params, name)
  missing = [k for k in TRAINED_KINDS if k not in found]
  if missing:
    raise BenchmarkError(
        f'--trained={folder}: no finished {" or ".join(missing)} run of '
        f'{algorithm} with checkpoints (need one of each model kind)')
  return found


def inference(settings: dict, cache_dir: str, log, trained=None) -> list:
  """Rows of inference time per graph; `trained`: a folder of trained runs
  (see `trained_runs`), else untrained parameters."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dear_jax import batches as batch_lib  # pylint: disable=g-import-not-at-top
  from dear_jax import clrs_lib  # pylint: disable=g-import-not-at-top
  from dear_jax import checkpoints, factory, train  # pylint: disable=g-import-not-at-top
  dear_cfg, nar_cfg = _configs()
  rows = []
  for algorithm in settings['algorithms']:
    spec = clrs_lib.processed_spec(algorithm)
    runs = trained_runs(trained, algorithm) if trained else None
    batches = {n: _eval_batch(algorithm, n, settings['batch'], cache_dir)
               for n in settings['sizes']}
    small = batches[min(batches)][0]
    models = {}
    for name, cfg in (('nar', nar_cfg), ('dear', dear_cfg)):
      if runs:
        cfg, params, _ = runs[name]
      b = small if name == 'nar' else dict(small, hints={})
      model = factory.build_model(cfg, spec, b)
      # Parameters do not depend on n: initialised once, on the smallest size.
      if not runs:
        params = model.init(jax.random.PRNGKey(0), b)
      models[name] = (jax.jit(model.predict), params)
    for n, (batch, lengths) in batches.items():
      row = dict(algorithm=algorithm, n=n, batch=settings['batch'],
                 true_steps_mean=float(np.mean(lengths) - 1),
                 nar_steps_run=max(1, batch_lib.num_steps(batch) - 1))
      if runs:
        row.update(dear_run=runs['dear'][2], nar_run=runs['nar'][2])
      for name, (predict, params) in models.items():
        b = batch if name == 'nar' else dict(batch, hints={})
        sec, (_, aux) = _median_seconds(lambda: predict(params, b),
                                        settings['repeats'])
        row[f'{name}_seconds_per_graph'] = sec / settings['batch']
        if name == 'dear':
          stats = jax.device_get(aux['solver'])
          row['dear_iterations_mean'] = float(np.mean(stats.iterations))
          row['dear_converged_fraction'] = float(np.mean(stats.converged))
      row['ratio_nar_over_dear'] = (row['nar_seconds_per_graph'] /
                                    row['dear_seconds_per_graph'])
      log(f'  inference {algorithm} n={n}: NAR '
          f'{1e3 * row["nar_seconds_per_graph"]:.2f} ms/graph '
          f'({row["nar_steps_run"]} steps), DEAR '
          f'{1e3 * row["dear_seconds_per_graph"]:.2f} ms/graph '
          f'({row["dear_iterations_mean"]:.1f} iterations), ratio '
          f'{row["ratio_nar_over_dear"]:.2f}')
      rows.append(row)
  return rows


def memory(settings: dict, cache_dir: str, log) -> list:
  from dear_jax.train import train_step_mb  # pylint: disable=g-import-not-at-top
  from dear_jax import batches as batch_lib  # pylint: disable=g-import-not-at-top
  from dear_jax import clrs_lib  # pylint: disable=g-import-not-at-top
  dear_cfg, nar_cfg = _configs()
  rows = []
  for algorithm in settings['memory_algorithms']:
    spec = clrs_lib.processed_spec(algorithm)
    batch, _ = _eval_batch(algorithm, settings['memory_n'],
                           settings['memory_batch'], cache_dir)
    # Parameters do not depend on n: initialised on a small batch (cheaper).
    small, _ = _eval_batch(algorithm, min(settings['sizes']), 2, cache_dir)
    row = dict(algorithm=algorithm, n=settings['memory_n'],
               batch=settings['memory_batch'],
               nar_steps=max(1, batch_lib.num_steps(batch) - 1))
    variants = (('nar', nar_cfg, None),) + tuple(
        (f'dear_{g}', dear_cfg, g) for g in grads())
    for name, cfg, grad in variants:
      cfg = cfg.copy_and_resolve_references()
      if grad:
        cfg.dear.grad = grad
      strip = (lambda x: x) if name == 'nar' else (
          lambda x: dict(x, hints={}))
      t0 = time.perf_counter()
      mb = train_step_mb(cfg, spec, strip(small), strip(batch))
      compile_s = time.perf_counter() - t0
      if mb is None:
        row[f'{name}_mb'] = None
        continue
      row[f'{name}_mb'] = mb['total']
      row[f'{name}_parts_mb'] = {k: mb[k] for k in ('temp', 'argument',
                                                    'output')}
      log(f'  memory {algorithm} n={settings["memory_n"]} {name}: '
          f'{mb["total"]:.1f} MB (temp {mb["temp"]:.1f}; '
          f'compiled in {compile_s:.0f} s)')
    for grad in grads():
      if row.get('nar_mb') and row.get(f'dear_{grad}_mb') is not None:
        row[f'ratio_dear_{grad}_over_nar'] = row[f'dear_{grad}_mb'] / row[
            'nar_mb']
    rows.append(row)
  return rows


def _training_batches(settings: dict, cache_dir: str):
  """TrainStream batches at one size, all padded to the most common length."""
  from dear_jax import batches as batch_lib  # pylint: disable=g-import-not-at-top
  from dear_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  cfg = input_pipeline.DataConfig(train_sizes=(settings['train_n'],),
                                  batch_size=settings['train_batch'],
                                  cache_dir=cache_dir)
  count = settings['train_batches']
  kept = input_pipeline.same_shape_batches(input_pipeline.TrainStream(
      settings['train_algorithm'], cfg, seed=0), count)
  return kept, batch_lib.num_steps(kept[0]), 4 * count


def training(settings: dict, cache_dir: str, log) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from baselines import clrs_official  # pylint: disable=g-import-not-at-top
  from dear_jax import clrs_lib  # pylint: disable=g-import-not-at-top
  from dear_jax import checkpoints, factory, train  # pylint: disable=g-import-not-at-top
  algorithm = settings['train_algorithm']
  spec = clrs_lib.processed_spec(algorithm)
  batches, padded_steps, drawn = _training_batches(settings, cache_dir)
  steps = len(batches) * settings['train_passes']
  _, nar_cfg = _configs()

  _, step, params, opt_state = train.setup(nar_cfg, spec, batches[0],
                                           jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(1)

  def flax_pass(state):
    params, opt_state = state
    for i, b in enumerate(batches):
      params, opt_state, loss, _ = step(params, opt_state, b,
                                        jax.random.fold_in(key, i))
    jax.block_until_ready(loss)
    return params, opt_state

  state = flax_pass((params, opt_state))  # compile
  t0 = time.perf_counter()
  for _ in range(settings['train_passes']):
    state = flax_pass(state)
  flax_s = time.perf_counter() - t0

  feedbacks = [clrs_lib.to_feedback(b, spec) for b in batches]
  model = clrs_official.build_model(spec, feedbacks[0],
                                    checkpoint_path=os.path.join(
                                        cache_dir, 'clrs_ckpt_unused'))
  model.init(feedbacks[0].features, 1)
  rng = jax.random.PRNGKey(2)

  def official_pass():
    loss = None
    for i, fb in enumerate(feedbacks):
      loss = model.feedback(jax.random.fold_in(rng, i), fb, 0)
    float(loss)  # waits for the device

  official_pass()  # compile
  t0 = time.perf_counter()
  for _ in range(settings['train_passes']):
    official_pass()
  official_s = time.perf_counter() - t0
  row = dict(algorithm=algorithm, n=settings['train_n'],
             batch=settings['train_batch'], padded_steps=padded_steps,
             distinct_batches=len(batches), timed_steps=steps,
             batches_drawn=drawn,
             flax_nar_steps_per_second=steps / flax_s,
             official_steps_per_second=steps / official_s)
  row['ratio_flax_over_official'] = (row['flax_nar_steps_per_second'] /
                                     row['official_steps_per_second'])
  log(f'  training {algorithm} n={row["n"]} batch {row["batch"]}: Flax NAR '
      f'{row["flax_nar_steps_per_second"]:.2f} steps/s, clrs_official '
      f'{row["official_steps_per_second"]:.2f} steps/s, ratio '
      f'{row["ratio_flax_over_official"]:.2f}')
  return row


def goals(infer: list, mem: list) -> list:
  """The project's goals, each met / not met / not measured, with evidence."""
  out = []
  at64 = [r for r in infer if r['n'] == 64 and r['algorithm'] in GROWING]
  if at64:
    worst = min(at64, key=lambda r: r['ratio_nar_over_dear'])
    met = all(r['ratio_nar_over_dear'] >= 2 for r in at64)
    evidence = ', '.join(f'{r["algorithm"]} {r["ratio_nar_over_dear"]:.2f}x'
                         for r in at64)
    out.append(dict(goal='DEAR >= 2x faster per graph than the NAR at n=64 '
                         '(algorithms whose steps grow with n)',
                    status='met' if met else 'not met', evidence=evidence,
                    worst=worst['ratio_nar_over_dear']))
  else:
    grow = [r for r in infer if r['algorithm'] in GROWING]
    largest = max((r['n'] for r in grow), default=None)
    evidence = ', '.join(f'{r["algorithm"]} n={r["n"]}: '
                         f'{r["ratio_nar_over_dear"]:.2f}x'
                         for r in grow if r['n'] == largest)
    out.append(dict(goal='DEAR >= 2x faster per graph than the NAR at n=64 '
                         '(algorithms whose steps grow with n)',
                    status='not measured (n=64 not timed in this mode)',
                    evidence=f'indicative at n={largest}: {evidence}'))
  for grad in grads():
    ratios = [(r['algorithm'], r.get(f'ratio_dear_{grad}_over_nar'))
              for r in mem]
    ratios = [(a, x) for a, x in ratios if x is not None]
    if not ratios:
      out.append(dict(goal=f'DEAR ({grad}) training memory <= 1/3 of the '
                           'NAR\'s', status='not measured', evidence=''))
      continue
    met = all(x <= 1 / 3 for _, x in ratios)
    out.append(dict(goal=f'DEAR ({grad}) training memory <= 1/3 of the NAR\'s'
                         f' (n={mem[0]["n"]})',
                    status='met' if met else 'not met',
                    evidence=', '.join(f'{a} {x:.3f}' for a, x in ratios)))
  return out


def markdown(res: dict) -> str:
  s = res['settings']
  lines = ['# dear_jax benchmarks', '',
           f'Machine: {res["hardware"]}.', '',
           f'Mode: {res["mode"]}; measured {res["date"]} in '
           f'{res["wall_seconds"]:.0f} s. ' + (
               f'Trained parameters: the runs under `{res["trained"]}` '
               '(named per row), each with its own config; DEAR runs the '
               'iterations its trained map needs at its operating tolerance.'
               if res.get('trained') else
               'Untrained parameters (fixed seed) for every model: speed and '
               'memory do not depend on training, except DEAR\'s solver '
               'iteration count (shown), which a trained model changes: see '
               'the trained-parameter table for the figures that matter.'),
           '',
           '## Inference (seconds per graph, jitted, compile excluded, '
           f'median of {s["repeats"]}, batches of {s["batch"]} graphs)', '',
           '| algorithm | n | true steps (mean) | NAR steps run | NAR ms/graph '
           '| DEAR ms/graph | DEAR iterations (mean) | NAR / DEAR |',
           '|---|---|---|---|---|---|---|---|']
  for r in res['inference']:
    lines.append(
        f'| {r["algorithm"]} | {r["n"]} | {r["true_steps_mean"]:.1f} | '
        f'{r["nar_steps_run"]} | {1e3 * r["nar_seconds_per_graph"]:.3f} | '
        f'{1e3 * r["dear_seconds_per_graph"]:.3f} | '
        f'{r["dear_iterations_mean"]:.1f} | {r["ratio_nar_over_dear"]:.2f} |')
  if res.get('trained'):
    lines += ['', 'Runs: ' + '; '.join(sorted(
        {f'{r["algorithm"]}: DEAR `{r["dear_run"]}`, NAR `{r["nar_run"]}`'
         for r in res['inference']})) + '.', '',
              'DEAR converged fraction per row: ' + ', '.join(
                  f'{r["algorithm"]} n={r["n"]} '
                  f'{r["dear_converged_fraction"]:.0%}'
                  for r in res['inference']) + '.']
  if not res.get('memory') and not res.get('training'):
    lines += ['', '## Goals', '', '| goal | status | evidence |',
              '|---|---|---|']
    lines += [f'| {g["goal"]} | {g["status"]} | {g["evidence"]} |'
              for g in res['goals'] if 'memory' not in g['goal']]
    return '\n'.join(lines) + '\n'
  lines += ['', f'## Compiled train-step memory (MB, n={s["memory_n"]}, batch '
            f'{s["memory_batch"]}; temp + arguments + outputs)', '',
            '| algorithm | NAR steps | NAR | ' + ''.join(
                f'DEAR {g} | ' for g in grads()) + ''.join(
                    f'DEAR {g} / NAR | ' for g in grads()),
            '|---|---|---|' + '---|' * (2 * len(grads()))]
  fmt = lambda x, d=1: '–' if x is None else f'{x:.{d}f}'
  for r in res['memory']:
    lines.append(
        f'| {r["algorithm"]} | {r["nar_steps"]} | {fmt(r.get("nar_mb"))} | '
        + ''.join(f'{fmt(r.get(f"dear_{g}_mb"))} | ' for g in grads())
        + ''.join(f'{fmt(r.get(f"ratio_dear_{g}_over_nar"), 3)} | '
                  for g in grads()))
  t = res['training']
  lines += ['', '## Training steps per second: Flax NAR vs dm-clrs '
            'BaselineModel', '',
            f'{t["algorithm"]}, n={t["n"]}, batch {t["batch"]}, '
            f'{t["distinct_batches"]} TrainStream batches padded to '
            f'{t["padded_steps"]} steps, {t["timed_steps"]} timed updates '
            'after a compile pass (host-to-device copies included, data '
            'generation excluded).', '',
            '| Flax NAR steps/s | clrs_official steps/s | Flax / official |',
            '|---|---|---|',
            f'| {t["flax_nar_steps_per_second"]:.2f} | '
            f'{t["official_steps_per_second"]:.2f} | '
            f'{t["ratio_flax_over_official"]:.2f} |',
            '', '## Goals', '', '| goal | status | evidence |', '|---|---|---|']
  lines += [f'| {g["goal"]} | {g["status"]} | {g["evidence"]} |'
            for g in res['goals']]
  return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m benchmarks.run',
                              description=__doc__.split('\n')[0])
  p.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results'))
  p.add_argument('--quick', action='store_true',
                 help='small sizes and few repeats (a few minutes on a CPU)')
  p.add_argument('--cache_dir', default='~/.cache/dear_jax/datasets',
                 help='dataset cache folder')
  p.add_argument('--trained', default=None, metavar='FOLDER',
                 help='time trained models: a folder of finished run folders '
                 'with checkpoints (e.g. results/equilibrium/panel_cpu/runs);'
                 ' inference only (memory and training speed do not depend '
                 'on the parameters)')
  p.add_argument('--algorithms', default=None,
                 help='comma-separated algorithms for inference (default: '
                 'the mode\'s)')
  p.add_argument('--sizes', default=None,
                 help='comma-separated graph sizes n for inference (default: '
                 'the mode\'s)')
  p.add_argument('--batch', type=int, default=None,
                 help='graphs per inference batch (default: the mode\'s)')
  p.add_argument('--repeats', type=int, default=None,
                 help='timed repeats per inference figure, median taken '
                 '(default: the mode\'s)')
  args = p.parse_args(argv)
  mode = 'quick' if args.quick else 'full'
  settings = dict(SETTINGS[mode])
  for name in ('batch', 'repeats'):
    value = getattr(args, name)
    if value is not None and value < 1:
      print(f'error: --{name} must be at least 1, got {value}',
            file=sys.stderr)
      return 2
    if value is not None:
      settings[name] = value
  if args.sizes:
    try:
      settings['sizes'] = tuple(int(n) for n in args.sizes.split(','))
    except ValueError:
      print(f'error: --sizes must be comma-separated integers, got '
            f'{args.sizes!r}', file=sys.stderr)
      return 2
  if args.algorithms:
    from dear_jax import clrs_lib  # pylint: disable=g-import-not-at-top
    names = tuple(a for a in args.algorithms.split(',') if a)
    bad = [a for a in names if a not in clrs_lib.algorithm_names()]
    if bad or not names:
      print(f'error: --algorithms: unknown {bad or "(none)"}; allowed: '
            f'{", ".join(clrs_lib.algorithm_names())}', file=sys.stderr)
      return 2
    settings['algorithms'] = names
  if args.trained and not os.path.isdir(args.trained):
    print(f'error: --trained={args.trained} is not a folder (give a folder '
          'of finished run folders)', file=sys.stderr)
    return 2
  cache_dir = os.path.expanduser(args.cache_dir)
  log = lambda msg: print(msg, flush=True)

  from dear_jax.profiling import hardware_line  # pylint: disable=g-import-not-at-top
  from dear_jax import clrs_lib  # pylint: disable=g-import-not-at-top
  clrs_lib.clrs()
  hardware = hardware_line()
  log(f'benchmarks ({mode}) on {hardware}')
  t0 = time.time()
  log('inference:')
  try:
    infer = inference(settings, cache_dir, log, trained=args.trained)
  except BenchmarkError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  mem, trn = [], {}
  if not args.trained:
    log('memory:')
    mem = memory(settings, cache_dir, log)
    log('training:')
    trn = training(settings, cache_dir, log)
  res = dict(hardware=hardware, mode=mode,
             date=time.strftime('%Y-%m-%d %H:%M:%S'),
             wall_seconds=time.time() - t0, settings=settings,
             trained=args.trained, inference=infer, memory=mem, training=trn)
  res['goals'] = goals(infer, mem)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'results.json'), 'w') as f:
    json.dump(res, f, indent=2)
  md = markdown(res)
  with open(os.path.join(args.out, 'results.md'), 'w') as f:
    f.write(md)
  print()
  print(md)
  print(f'written: {os.path.join(args.out, "results.json")}, '
        f'{os.path.join(args.out, "results.md")}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
