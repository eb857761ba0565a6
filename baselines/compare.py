"""DEAR vs the stepwise NAR vs dm-clrs's own BaselineModel, seed by seed.

    python -m baselines.compare --out=DIR [--preset=smoke|paper]
        [--algorithms=bfs,dijkstra] [--models=dear,nar,nar_nohint,clrs_official]
        [--seeds=3] [--train_steps=N] [--eval_every=N]
        [--dear_config=configs/dear_paper.py] [--nar_config=configs/default.py]
        [--override SECTION.KEY=VALUE ...] [--cache_dir=DIR] [--no_memory]
        [--quiet]

Models: `dear` (EquilibriumReasoner, no hints), `nar` (Flax stepwise NAR,
hint_mode encoded_decoded), `nar_nohint` (the same with hint_mode none),
`clrs_official` (dm-clrs BaselineModel with run.py's defaults, hints encoded
and decoded; `baselines.clrs_official.train_official`). `--seeds=K` runs
seeds 0..K-1. Explicit flags override the preset.

Each run trains in DIR/runs/ALGORITHM/MODEL/sSEED/ and is skipped when its
results.json exists; an interrupted dear/nar run resumes from its orbax
checkpoints (a clrs_official run restarts). DIR/protocol.json holds every
setting that changes results; a later invocation on DIR with other settings
fails (exit 2) without touching anything. Adding algorithms, models or seeds
to DIR is allowed. After the runs: DIR/results.csv (one row per finished run
in DIR), DIR/results.md (mean ± std over seeds beside the published
Triplet-GMPNN score) and DIR/plots/*.png (baselines.plots).

The parts, in the order they act: baselines.plan (presets + flags -> Plan),
baselines.protocol (the DIR guard), this module (the runs),
baselines.memory, baselines.report (csv, md), baselines.convergence and
baselines.plots (figures).

argparse, not absl: `import clrs` registers absl flags such as `seeds`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

from baselines import plan as plan_lib
from baselines import protocol as protocol_lib
from baselines import report
from baselines.plan import MODEL_SETTINGS, MODELS, PRESETS, CompareError, Plan

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message}\n')


def _csv(value: str) -> tuple:
  return tuple(v.strip() for v in value.split(',') if v.strip())


def parse_args(argv):
  p = _Parser(prog='python -m baselines.compare',
              description='Train and compare dear, nar, nar_nohint and '
                          'clrs_official on CLRS-30 algorithms.')
  p.add_argument('--out', required=True, help='output folder')
  p.add_argument('--preset', default='smoke', choices=sorted(PRESETS))
  p.add_argument('--algorithms', type=_csv, default=None,
                 help='comma-separated CLRS-30 names (default: the preset)')
  p.add_argument('--models', type=_csv, default=None,
                 help=f'comma-separated, from {",".join(MODELS)}')
  p.add_argument('--seeds', type=int, default=None, help='K: seeds 0..K-1')
  p.add_argument('--train_steps', type=int, default=None)
  p.add_argument('--eval_every', type=int, default=None)
  p.add_argument('--dear_config', default=None, help='config file for dear')
  p.add_argument('--nar_config', default=None,
                 help='config file for nar, nar_nohint (and the data of '
                      'clrs_official)')
  p.add_argument('--override', action='append', default=[],
                 metavar='SECTION.KEY=VALUE',
                 help='set a config key of dear and nar configs (repeatable); '
                      'data.* also applies to clrs_official, whose model is '
                      'fixed to run.py defaults')
  p.add_argument('--cache_dir', default=None, help='dataset cache folder')
  p.add_argument('--no_memory', dest='memory', action='store_false',
                 help='skip the compiled train-step memory column')
  p.add_argument('--quiet', action='store_true', help='no progress bars')
  return p.parse_args(argv)


def run_dir(out: str, algorithm: str, model: str, seed: int) -> str:
  return os.path.join(out, 'runs', algorithm, model, f's{seed}')


def train_one(plan: Plan, algorithm: str, model: str, seed: int) -> dict:
  workdir = run_dir(plan.out, algorithm, model, seed)
  if model == 'clrs_official':
    from baselines import clrs_official  # pylint: disable=g-import-not-at-top
    return clrs_official.train_official(
        algorithm, seed=seed, train_steps=plan.train_steps,
        hint_mode=MODEL_SETTINGS[model][1], data_cfg=plan.official_data,
        workdir=workdir, eval_every=plan.eval_every)
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  config = copy.deepcopy(plan.configs[model])
  config.train.seed = seed
  return train.train_and_evaluate(config, workdir, algorithm,
                                  progress=plan.progress)


def _fail(message: str) -> int:
  print(f'error: {message}', file=sys.stderr)
  return 2


def run_all(plan: Plan) -> int | None:
  """Trains every unfinished (algorithm, model, seed); the failure count, or
  None when the user interrupted (the interrupted run can be resumed)."""
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  todo = [(a, m, s) for a in plan.algorithms for m in plan.models
          for s in plan.seeds]
  failures = 0
  for i, (a, m, s) in enumerate(todo, 1):
    label = f'[{i}/{len(todo)}] {a} {m} seed {s}'
    if os.path.exists(os.path.join(run_dir(plan.out, a, m, s),
                                   'results.json')):
      print(f'{label}: done, skipped')
      continue
    t0 = time.time()
    try:
      r = train_one(plan, a, m, s)
    except (train.RunError, ValueError) as e:
      message = f'{label}: {str(e).splitlines()[0]}'
      if isinstance(e.__cause__, KeyboardInterrupt):
        print(f'error: {message}', file=sys.stderr)
        return None
      print(f'FAILED {message}', file=sys.stderr)
      failures += 1
      continue
    print(f'{label}: test {r["test_score"]:.4f}, val {r["val_score"]:.4f} '
          f'({time.time() - t0:.0f} s)')
  return failures


def write_reports(plan: Plan) -> None:
  """results.csv, results.md and plots/ over every finished run in DIR."""
  from baselines import convergence, plots  # pylint: disable=g-import-not-at-top
  runs = report.collect(plan.out)
  rows = [report.csv_row(r, plan.out) for r in runs]
  report.write_csv(os.path.join(plan.out, 'results.csv'), rows)
  with open(os.path.join(plan.out, 'protocol.json')) as f:
    stored = json.load(f)
  report.write_markdown(os.path.join(plan.out, 'results.md'), rows,
                        stored['info'], stored['protocol'])
  trace = convergence.cached_trace(plan.out, runs) if runs else None
  written = plots.write_all(os.path.join(plan.out, 'plots'), runs, rows,
                            report.PUBLISHED_TRIPLET_GMPNN,
                            report.PUBLISHED_LABEL, trace, MODELS)
  print(f'{len(rows)} runs: {os.path.join(plan.out, "results.csv")}, '
        f'{os.path.join(plan.out, "results.md")}, '
        f'{len(written)} plots in {os.path.join(plan.out, "plots")}')


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if 'clrs_official' in (args.models or PRESETS[args.preset]['models']):
    # BaselineModel runs on one device only (as baselines.clrs_official).
    os.environ.setdefault('CUDA_VISIBLE_DEVICES', '0')
  try:
    plan = plan_lib.resolve(args)
    info = dict(presets=[plan.preset], algorithms=list(plan.algorithms),
                models=list(plan.models), seeds=list(plan.seeds),
                hardware=report.hardware_line())
    protocol_lib.check_and_write(plan, protocol_lib.build(plan), info)
  except CompareError as e:
    return _fail(str(e))
  if 'clrs_official' in plan.models:
    from baselines import clrs_official  # pylint: disable=g-import-not-at-top
    try:
      clrs_official.check_single_device()
    except RuntimeError as e:
      return _fail(str(e).splitlines()[0])
  failures = run_all(plan)
  if failures is None:
    return 2
  if plan.memory:
    from baselines import memory  # pylint: disable=g-import-not-at-top
    for a in plan.algorithms:
      for m in plan.models:
        memory.cached_train_step_mb(plan, a, m)
  write_reports(plan)
  return 1 if failures else 0


if __name__ == '__main__':
  sys.exit(main())
