"""Which DEQ map and gradient make DEAR's answer a real fixed point?

Trains DEAR variants (candidates x gradients x algorithms x seeds) with
`train.train_and_evaluate`, each in its own workdir, skipping finished runs,
then tabulates every run's fixed-point diagnostics into OUT/results.csv,
OUT/results.md and OUT/plots/. Used for the table in README ("Equilibrium").

  python -m experiments.equilibrium --stage=screen --out=results/equilibrium
  python -m experiments.equilibrium --stage=panel --candidates=A,B --out=...
  python -m experiments.equilibrium --summarize_only --out=results/equilibrium

`--parallel=K` runs K trainings as separate processes (on a GPU: one device,
several small models). Checkpoints stay in each run folder (git-ignored): the
benchmarks load trained parameters from them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

from dear_jax import solver

# name -> overrides of configs/default.py (dotted keys). Every candidate uses
# the solver settings below; only the map (and its regularisers) differ.
CANDIDATES = {
    'tgmpnn_gate-3': {'dear.gate_bias': -3.0, 'dear.jac_reg_weight': 0.0},
    'tgmpnn_gate0': {'dear.gate_bias': 0.0, 'dear.jac_reg_weight': 0.0},
    'gmpnn': {'model.processor': 'gmpnn', 'dear.gate_bias': 0.0, 'dear.jac_reg_weight': 0.0},
    'tgmpnn_gate0_jac': {'dear.gate_bias': 0.0, 'dear.jac_reg_weight': 0.1},
    'tgmpnn_gate0_jac001': {'dear.gate_bias': 0.0, 'dear.jac_reg_weight': 0.01},
    'tgmpnn_gate0_rand0': {'dear.gate_bias': 0.0, 'dear.jac_reg_weight': 0.0,
                           'dear.init_state_std': 1.0},
    # The stepwise reference at equal steps: CLRS's NAR without hints, told
    # the true step count (pair it with grad 'none').
    'nar_nohint': {'model_kind': 'nar', 'nar.hint_mode': 'none'},
}
# The study's settings of the gradients that have any; every registered
# gradient (dear_jax.solver.GRADIENTS) is a choice.
GRAD_SETTINGS = {
    'phantom': {'dear.phantom_steps': 5, 'dear.phantom_tau': 0.5},
    'ift': {'dear.backward_solver': 'anderson', 'dear.backward_tol': 1e-3,
            'dear.backward_max_iter': 40},
}
GRADS = {
    **{g: {'dear.grad': g, **GRAD_SETTINGS.get(g, {})} for g in solver.GRADIENTS},
    'none': {},  # for nar_nohint: no solver, no implicit gradient
}
# The operating point every variant is screened at: tight enough that the
# distance to H* can be small (distance ~ residual / (1 - rho)).
SOLVER = {'dear.tol': 1e-3, 'dear.tol_mode': 'rel', 'dear.max_iter_train': 40,
          'dear.max_iter_eval': 100, 'train.eval_every': 100}
STAGES = dict(
    screen=dict(algorithms=('bfs', 'mst_prim'), seeds=(0,)),
    panel=dict(algorithms=('bfs', 'mst_prim', 'insertion_sort', 'dag_shortest_paths',
                           'bellman_ford'), seeds=(0, 1)),
)
COLUMNS = ('algorithm', 'candidate', 'grad', 'seed', 'train_steps', 'test_score', 'val_score',
           'score_by_tol_spread', 'fixed_point_distance_mean', 'fixed_point_distance_p95',
           'reference_converged', 'spectral_radius_mean', 'nonconverged_fraction',
           'solver_iters_mean', 'algo_steps_mean', 'train_steps_per_second',
           'train_seconds', 'score_by_tol')


def run_name(algorithm, candidate, grad, seed):
  return f'{algorithm}__{candidate}__{grad}__s{seed}'


def overrides(candidate, grad, seed, steps, extra):
  o = dict(SOLVER)
  o.update(CANDIDATES[candidate])
  o.update(GRADS[grad])
  o.update({'train.seed': seed, 'train.steps': steps, 'data.recorded_stream': True})
  o.update(extra)
  return o


def _config(overrides_):
  """configs/default.py with dotted-key overrides (JSON lists become tuples)."""
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  for key, value in overrides_.items():
    *section, name = key.split('.')
    target = config[section[0]] if section else config
    if isinstance(target[name], tuple):
      value = tuple(value)
    target[name] = value
  return config


def train_one(workdir, algorithm, overrides_):
  """In-process: one training run (used by the subprocess entry point)."""
  from dear_jax import run_config, train  # pylint: disable=g-import-not-at-top
  config = _config(overrides_)
  run_config.check_config(config)
  train.train_and_evaluate(config, workdir, algorithm, progress=True)


def record_one(algorithm, seed, steps, overrides_):
  """In-process: writes the training stream all runs of (algorithm, seed) replay."""
  from dear_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  config = _config(overrides_)
  input_pipeline.RecordedStream(algorithm, train.data_config(config), seed,
                                keep_hints=False).record(steps)


def launch(jobs, parallel, log_dir, deadline_s=None):
  """Runs (workdir, algorithm, overrides) jobs, `parallel` at a time. After
  deadline_s seconds no job starts and running ones are stopped (they are
  reported; rerunning the command redoes them)."""
  os.makedirs(log_dir, exist_ok=True)
  pending, running = list(jobs), []
  start = time.time()
  while pending or running:
    late = deadline_s is not None and time.time() - start > deadline_s
    if late:
      for proc, workdir, _, _ in running:
        proc.kill()
        print(f'{os.path.basename(workdir)}: STOPPED at the deadline', flush=True)
      print(f'{len(pending)} runs not started (deadline)', flush=True)
      return
    while pending and len(running) < parallel:
      workdir, algorithm, o = pending.pop(0)
      log = open(os.path.join(log_dir, os.path.basename(workdir).replace(':', '_') + '.log'),
                 'w')
      if workdir.startswith('record:'):
        cmd = [sys.executable, '-m', 'experiments.equilibrium', '--_record',
               workdir.split(':')[1], '--_algorithm', algorithm, '--_overrides', json.dumps(o)]
      else:
        cmd = [sys.executable, '-m', 'experiments.equilibrium', '--_one', workdir,
               '--_algorithm', algorithm, '--_overrides', json.dumps(o)]
      running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), workdir,
                      log, time.time()))
    time.sleep(2)
    for item in list(running):
      proc, workdir, log, t0 = item
      if proc.poll() is not None:
        log.close()
        running.remove(item)
        status = 'done' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})'
        print(f'{os.path.basename(workdir)}: {status} in {time.time() - t0:.0f} s', flush=True)


def collect(out):
  rows = []
  runs = os.path.join(out, 'runs')
  for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
    path = os.path.join(runs, name, 'results.json')
    if not os.path.exists(path):
      continue
    with open(path) as f:
      r = json.load(f)
    algorithm, candidate, grad, seed = name.split('__')
    rows.append(dict(
        algorithm=algorithm, candidate=candidate, grad=grad, seed=int(seed[1:]),
        train_steps=r['train_steps'], test_score=r['test_score'], val_score=r['val_score'],
        score_by_tol_spread=r.get('score_by_tol_spread'),
        fixed_point_distance_mean=r.get('fixed_point_distance_mean'),
        fixed_point_distance_p95=r.get('fixed_point_distance_p95'),
        reference_converged=r.get('fixed_point_reference', {}).get('converged_fraction'),
        spectral_radius_mean=r.get('spectral_radius_mean'),
        nonconverged_fraction=r.get('nonconverged_fraction'),
        solver_iters_mean=r.get('solver_iters_mean'), algo_steps_mean=r['algo_steps_mean'],
        train_steps_per_second=r['train_steps_per_second'], train_seconds=r['train_seconds'],
        score_by_tol=json.dumps(r.get('score_by_tol'))))
  return rows


def read_csv(out):
  """Rows of an existing OUT/results.csv (when the run folders are elsewhere)."""
  with open(os.path.join(out, 'results.csv')) as f:
    rows = list(csv.DictReader(f))
  for r in rows:
    for k, v in r.items():
      if k in ('algorithm', 'candidate', 'grad', 'score_by_tol'):
        continue
      r[k] = None if v == '' else float(v)
  return rows


def _fmt(v, spec):
  return '–' if v is None else format(v, spec)


def write_tables(out, rows, header):
  with open(os.path.join(out, 'results.csv'), 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(rows)
  lines = [header, '',
           '| algorithm | candidate | grad | seed | test | spread by tol (pts) | FP distance '
           'mean / p95 | ref. converged | spectral radius | not converged | iters / true '
           'steps | train steps/s |', '|' + '---|' * 12]
  for r in rows:
    lines.append(
        f"| {r['algorithm']} | {r['candidate']} | {r['grad']} | {r['seed']} | "
        f"{_fmt(r['test_score'], '.3f')} | {_fmt(r['score_by_tol_spread'], '.1f')} | "
        f"{_fmt(r['fixed_point_distance_mean'], '.3f')} / "
        f"{_fmt(r['fixed_point_distance_p95'], '.3f')} | "
        f"{_fmt(r['reference_converged'], '.0%')} | {_fmt(r['spectral_radius_mean'], '.3f')} | "
        f"{_fmt(r['nonconverged_fraction'], '.1%')} | {_fmt(r['solver_iters_mean'], '.1f')} / "
        f"{_fmt(r['algo_steps_mean'], '.1f')} | {_fmt(r['train_steps_per_second'], '.1f')} |")
  lines += against_reference(rows)
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


# issue goals for the default preset, per panel algorithm
GOALS = dict(converged=0.99, distance=0.05, spread=0.5)


def against_reference(rows, reference='nar_nohint'):
  """Markdown lines: per (algorithm, DEAR variant), the mean test score over
  the seeds both have, against the stepwise reference on the same seeds
  (same recorded streams), and the fixed-point goals over those seeds."""
  ref = {(r['algorithm'], int(r['seed'])): r['test_score'] for r in rows
         if r['candidate'] == reference}
  if not ref:
    return []
  lines = ['', f'Against the stepwise {reference} (1000 steps, same seeds and '
           'training streams). Goals: converged >= '
           f"{GOALS['converged']:.0%}, distance mean <= {GOALS['distance']}, "
           f"spread <= {GOALS['spread']} points on every seed.", '',
           '| algorithm | DEAR variant | seeds | DEAR test (mean) | '
           f'{reference} test (mean) | DEAR - ref. (pts) | iters / true steps '
           '| worst distance | worst not converged | worst spread | goals |',
           '|' + '---|' * 11]
  variants = sorted({(r['algorithm'], r['candidate'], r['grad']) for r in rows
                     if r['candidate'] != reference})
  for alg, cand, grad in variants:
    mine = [r for r in rows if (r['algorithm'], r['candidate'], r['grad']) ==
            (alg, cand, grad) and (alg, int(r['seed'])) in ref]
    if not mine:
      continue
    mean = lambda xs: sum(xs) / len(xs)
    dear = mean([r['test_score'] for r in mine])
    other = mean([ref[(alg, int(r['seed']))] for r in mine])
    worst = lambda k: max((r[k] for r in mine if r[k] is not None),
                          default=None)
    dist, nonconv, spread = (worst('fixed_point_distance_mean'),
                             worst('nonconverged_fraction'),
                             worst('score_by_tol_spread'))
    met = (dist is not None and dist <= GOALS['distance'] and
           nonconv is not None and nonconv <= 1 - GOALS['converged'] and
           spread is not None and spread <= GOALS['spread'])
    lines.append(
        f"| {alg} | {cand} {grad} | {','.join(str(int(r['seed'])) for r in mine)}"
        f" | {dear:.3f} | {other:.3f} | {100 * (dear - other):+.1f} | "
        f"{mean([r['solver_iters_mean'] for r in mine]):.1f} / "
        f"{mean([r['algo_steps_mean'] for r in mine]):.1f} | {_fmt(dist, '.3f')} | "
        f"{_fmt(nonconv, '.1%')} | {_fmt(spread, '.1f')} | "
        f"{'met' if met else 'not met'} |")
  return lines


def plot(out, rows):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.join(out, 'plots'), exist_ok=True)
  algorithms = sorted({r['algorithm'] for r in rows})
  fig, axes = plt.subplots(1, len(algorithms), figsize=(5 * len(algorithms), 4), squeeze=False)
  for ax, alg in zip(axes[0], algorithms):
    for r in (r for r in rows if r['algorithm'] == alg):
      sbt = json.loads(r['score_by_tol']) if r['score_by_tol'] != 'null' else None
      if not sbt:
        continue
      pts = sorted((float(t), 100 * v) for t, v in sbt.items())
      ax.plot([t for t, _ in pts], [v for _, v in pts], marker='o',
              label=f"{r['candidate']} {r['grad']} s{int(r['seed'])}")
    ax.set_xscale('log')
    ax.invert_xaxis()
    ax.set_xlabel('relative tolerance (tighter to the right)')
    ax.set_ylabel('test score (%)')
    ax.set_title(f'{alg}: score as the solve tightens')
  axes[0][-1].legend(fontsize=6, loc='center left', bbox_to_anchor=(1.0, 0.5))
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'plots', 'score_vs_tol.png'), dpi=110)
  plt.close(fig)

  fig, axes = plt.subplots(1, len(algorithms), figsize=(5 * len(algorithms), 4), squeeze=False)
  for ax, alg in zip(axes[0], algorithms):
    sel = [r for r in rows if r['algorithm'] == alg and r['fixed_point_distance_mean'] is not None]
    for grad, marker in zip(solver.GRADIENTS, 'o^sDvP*'):
      pts = [r for r in sel if r['grad'] == grad]
      ax.scatter([r['fixed_point_distance_mean'] for r in pts],
                 [100 * r['test_score'] for r in pts], marker=marker, label=grad)
      for r in pts:
        ax.annotate(r['candidate'], (r['fixed_point_distance_mean'], 100 * r['test_score']),
                    fontsize=6)
    ax.set_xscale('log')
    ax.axvline(0.05, color='grey', ls='--', lw=0.8)
    ax.set_xlabel('mean distance to the fixed point ||h - h_ref|| / ||h_ref||')
    ax.set_ylabel('test score (%)')
    ax.set_title(f'{alg}: accuracy vs distance to H*')
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'plots', 'score_vs_distance.png'), dpi=110)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--stage', choices=tuple(STAGES), default='screen')
  p.add_argument('--out', default='results/equilibrium')
  p.add_argument('--candidates', default=','.join(CANDIDATES))
  p.add_argument('--grads', default=','.join(GRADS))
  p.add_argument('--algorithms', default=None, help='default: the stage\'s')
  p.add_argument('--seeds', default=None, help='default: the stage\'s')
  p.add_argument('--variants', default=None,
                 help='explicit CANDIDATE:GRAD pairs, in this order (instead of '
                 'every candidate x grad)')
  p.add_argument('--train_steps', type=int, default=1000)
  p.add_argument('--parallel', type=int, default=1)
  p.add_argument('--deadline_s', type=float, default=None,
                 help='stop launching and kill running runs after this many seconds')
  p.add_argument('--set', action='append', default=[],
                 help='extra override KEY=VALUE (JSON value), e.g. dear.tol=0.01')
  p.add_argument('--summarize_only', action='store_true')
  p.add_argument('--header', default='')
  p.add_argument('--_one', help=argparse.SUPPRESS)
  p.add_argument('--_algorithm', help=argparse.SUPPRESS)
  p.add_argument('--_overrides', help=argparse.SUPPRESS)
  p.add_argument('--_record', type=int, help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a._record is not None:
    o = json.loads(a._overrides)
    record_one(a._algorithm, int(o['train.seed']), a._record, o)
    return 0
  if a._one:
    train_one(a._one, a._algorithm, json.loads(a._overrides))
    return 0
  stage = STAGES[a.stage]
  algorithms = a.algorithms.split(',') if a.algorithms else stage['algorithms']
  seeds = [int(s) for s in a.seeds.split(',')] if a.seeds else stage['seeds']
  extra = {}
  for item in a.set:
    k, v = item.split('=', 1)
    extra[k] = json.loads(v)
  if a.variants:
    variants = [tuple(v.split(':')) for v in a.variants.split(',')]
  else:
    variants = [(c, g) for g in a.grads.split(',') for c in a.candidates.split(',')]
  for cand, grad in variants:
    for name, allowed in ((cand, CANDIDATES), (grad, GRADS)):
      if name not in allowed:
        print(f'error: unknown {name!r}; allowed: {", ".join(allowed)}', file=sys.stderr)
        return 2
  if not a.summarize_only:
    jobs = []
    for seed in seeds:
      for cand, grad in variants:
        if True:
          for algorithm in algorithms:
            wd = os.path.join(a.out, 'runs', run_name(algorithm, cand, grad, seed))
            if not os.path.exists(os.path.join(wd, 'results.json')):
              jobs.append((wd, algorithm, overrides(cand, grad, seed, a.train_steps, extra)))
    print(f'{len(jobs)} runs to do', flush=True)
    t0 = time.time()
    # 1. record each (algorithm, seed) training stream once, in parallel
    streams = {(alg, o['train.seed']): o for _, alg, o in jobs}
    launch([(f'record:{a.train_steps}:{alg}_s{seed}', alg, o)
            for (alg, seed), o in streams.items()], a.parallel,
           os.path.join(a.out, 'logs'), a.deadline_s)
    left = None if a.deadline_s is None else a.deadline_s - (time.time() - t0)
    # 2. train every variant on its recorded stream
    launch(jobs, a.parallel, os.path.join(a.out, 'logs'), left)
  rows = collect(a.out)
  if rows:
    write_tables(a.out, rows, a.header)
  elif os.path.exists(os.path.join(a.out, 'results.csv')):
    rows = read_csv(a.out)   # plots of a table whose runs are not here
  if rows:
    plot(a.out, rows)
  print(f'{len(rows)} finished runs tabulated in {a.out}/results.md')
  return 0


if __name__ == '__main__':
  sys.exit(main())
