"""DEAR vs the stepwise NAR vs dm-clrs's own BaselineModel, seed by seed.

    python -m baselines.compare --out=DIR [--preset=smoke|paper]
        [--algorithms=bfs,dijkstra] [--models=dear,nar,nar_nohint,clrs_official]
        [--seeds=3] [--train_steps=N] [--eval_every=N]
        [--dear_config=configs/dear_paper.py] [--nar_config=configs/default.py]
        [--config.SECTION.KEY=VALUE ...] [--cache_dir=DIR] [--no_memory]
        [--quiet] [--report_only] [--stack_seeds] [--executor=local|ray] [--ray_address=ADDRESS]
        [--ray_cpus_per_task=C] [--ray_gpus_per_task=G] [--ray_num_cpus=N]

Models: `dear` (EquilibriumReasoner, no hints), `nar` (Flax stepwise NAR,
hint_mode encoded_decoded), `nar_nohint` (the same with hint_mode none),
`clrs_official` (dm-clrs BaselineModel with run.py's defaults, hints encoded
and decoded; `baselines.clrs_official.train_official`). `--seeds=K` runs
seeds 0..K-1. Explicit flags override the preset.

Each run trains in DIR/runs/ALGORITHM/MODEL/sSEED/ and is skipped when its
results.json exists; an interrupted run (any model, the official one
included) resumes from its orbax checkpoints. DIR/protocol.json holds every
setting that changes results; a later invocation on DIR with other settings
fails (exit 2) without touching anything. Adding algorithms, models or seeds
to DIR is allowed. After the runs: DIR/results.csv (one row per finished run
in DIR), DIR/results.md (mean ± std over seeds beside the published
Triplet-GMPNN score) and DIR/plots/*.png (baselines.plots).

`--executor=ray` trains each run as a Ray task (on the cluster at
--ray_address, or on a Ray it starts here) and writes what the tasks send
back into the same DIR layout; baselines.executors says how. With
`--stack_seeds` either executor trains each (algorithm, model)'s unfinished
seeds together (one program; on Ray, one task).

The parts, in the order they act: baselines.plan (presets + flags -> Plan),
baselines.protocol (the DIR guard), baselines.executors (the runs),
baselines.memory (memory column), baselines.rows (csv), baselines.report (md),
baselines.convergence and baselines.plots (figures).

argparse, not absl: `import clrs` registers absl flags such as `seeds`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import executors
from . import plan as plan_lib
from . import protocol as protocol_lib
from . import report
from . import rows as rows_lib
from . import variants
from dear_jax import compile_cache
from dear_jax import profiling
from .executors import run_dir, train_one  # noqa: F401 (API)
from .plan import MODELS, PRESETS, CompareError, Plan


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message}\n')


def _csv(value: str) -> tuple:
  return tuple(v.strip() for v in value.split(',') if v.strip())


def _presets_help() -> str:
  """What each preset runs (its defaults; explicit flags override them)."""
  parts, from_config = [], "the dear config's"
  for name, p in PRESETS.items():
    algorithms = p['algorithms']
    which = (','.join(algorithms) if len(algorithms) <= 3 else
             f'DEAR\'s {len(algorithms)}')
    parts.append(
        f"{name}: algorithms {which}, models {','.join(p['models'])}, "
        f"{p['seeds']} seed(s), {p['train_steps'] or from_config} steps, "
        f"validation every {p['eval_every'] or from_config}, dear config "
        f"{p['dear_config']}.")
  return 'Presets (default smoke): ' + ' '.join(parts)


def parse_args(argv):
  p = _Parser(prog=f'python -m {__package__}.compare',
              description='Train and compare dear, nar, nar_nohint and '
                          'clrs_official on CLRS-30 algorithms.',
              epilog=_presets_help() + ' --config.SECTION.KEY=VALUE '
              '(repeatable) sets a key of the dear and nar configs, parsed as '
              'python -m dear_jax.run parses it; data.* also applies to '
              'clrs_official, whose model is fixed to run.py\'s defaults.')
  p.add_argument('--out', required=True, help='output folder')
  p.add_argument('--preset', default='smoke', choices=sorted(PRESETS))
  p.add_argument('--algorithms', type=_csv, default=None,
                 help='comma-separated CLRS-30 names (default: the preset)')
  p.add_argument('--models', type=_csv, default=None,
                 help=f'comma-separated, from {",".join(MODELS)}')
  p.add_argument('--seeds', type=int, default=None, help='K: seeds 0..K-1')
  p.add_argument('--train_steps', type=int, default=None)
  p.add_argument('--eval_every', type=int, default=None)
  p.add_argument('--dear_config', default=None, help='config file for dear, '
                 'or a preset by name (dear_paper)')
  p.add_argument('--nar_config', default=None,
                 help='config file for nar, nar_nohint (and the data of '
                      'clrs_official)')
  p.add_argument('--cache_dir', default=None, help='dataset cache folder')
  p.add_argument('--no_memory', dest='memory', action='store_false',
                 help='skip the compiled train-step memory column')
  p.add_argument('--quiet', action='store_true', help='no progress bars')
  p.add_argument('--jax_cache', default=None, help=compile_cache.FLAG_HELP)
  p.add_argument('--report_only', action='store_true',
                 help='train nothing: rewrite results.csv, results.md and '
                      'plots/ from the runs finished in --out so far (a '
                      'partial sweep can be published while it runs)')
  p.add_argument('--stack_seeds', action='store_true',
                 help='train the seeds of each (algorithm, model) together '
                      'in one vmapped program (with ray: one task) '
                      '(dear_jax.train.train_seeds; fills a GPU). Each seed '
                      'still writes its own run folder; DEAR\'s numbers then '
                      'differ from per-seed runs by rounding, which Anderson '
                      'amplifies')
  p.add_argument('--executor', default='local', choices=('local', 'ray'),
                 help='local: runs one after another here; ray: each run a '
                      'Ray task (baselines.executors)')
  p.add_argument('--ray_address', default=None,
                 help='Ray cluster to join (auto, HOST:PORT, ray://HOST:PORT);'
                      ' default: start a local Ray')
  p.add_argument('--ray_cpus_per_task', type=float, default=1.0,
                 help='CPUs each run asks Ray for')
  p.add_argument('--ray_gpus_per_task', type=float, default=None,
                 help='GPUs each run asks Ray for (a fraction shares one); '
                      'default: 1 if the cluster has GPUs, else 0')
  p.add_argument('--ray_num_cpus', type=int, default=None,
                 help='CPUs of the local Ray (default: all of this machine)')
  args, rest = p.parse_known_args(argv)
  # --config.SECTION.KEY=VALUE: parsed by ml_collections, as dear_jax.run does.
  args.config_overrides = [a for a in rest if a.startswith('--config.')]
  unknown = [a for a in rest if not a.startswith('--config.')]
  if unknown:
    p.error(f'unrecognized arguments: {" ".join(unknown)}')
  return args


def _fail(message: str) -> int:
  print(f'error: {message}', file=sys.stderr)
  return 2


def ray_options(args) -> executors.RayOptions | None:
  """The Ray executor's options, None for the local executor."""
  if args.executor != 'ray':
    return None
  if args.ray_cpus_per_task <= 0 or (args.ray_gpus_per_task or 0) < 0:
    raise CompareError('--ray_cpus_per_task must be > 0 and '
                       '--ray_gpus_per_task >= 0')
  executors.check_ray_installed()
  if args.ray_address:
    executors.check_reachable(args.ray_address)
  return executors.RayOptions(
      address=args.ray_address, cpus_per_task=args.ray_cpus_per_task,
      gpus_per_task=args.ray_gpus_per_task, local_cpus=args.ray_num_cpus,
      log_to_driver=not args.quiet)


def run_all(plan: Plan, ray: executors.RayOptions | None = None) -> int | None:
  """Trains every unfinished (algorithm, model, seed), here or as Ray tasks
  when `ray` is given; the failure count, or None when interrupted."""
  if ray is None:
    return executors.run_local(plan)
  return executors.run_ray(plan, ray)


def write_tables(out: str, dest: str | None = None) -> tuple:
  """results.csv and results.md over every finished run in OUT, written to
  DEST (default OUT); (runs, rows)."""
  dest = out if dest is None else dest
  runs = rows_lib.collect(out)
  rows = [rows_lib.csv_row(r, out) for r in runs]
  rows_lib.write_csv(os.path.join(dest, 'results.csv'), rows)
  sizes = rows_lib.size_rows(runs)
  if sizes:  # runs tested at further sizes (data.extra_test_lengths)
    rows_lib.write_csv(os.path.join(dest, 'results_by_size.csv'), sizes,
                       rows_lib.SIZE_COLUMNS)
  with open(os.path.join(out, 'protocol.json')) as f:
    stored = json.load(f)
  report.write_markdown(os.path.join(dest, 'results.md'), rows,
                        stored['info'], stored['protocol'], sizes)
  return runs, rows


def write_reports(out: str) -> None:
  """results.csv, results.md and plots/ over every finished run in OUT."""
  from . import convergence, plots  # pylint: disable=g-import-not-at-top
  with protocol_lib.locked(out):  # another sweep on OUT may end now too
    runs, rows = write_tables(out)
    traces = convergence.cached_traces(out, runs) if runs else []
    written = plots.write_all(os.path.join(out, 'plots'), runs, rows,
                              report.PUBLISHED_TRIPLET_GMPNN,
                              report.PUBLISHED_LABEL, traces, MODELS,
                              rows_lib.size_rows(runs))
  print(f'{len(rows)} runs: {os.path.join(out, "results.csv")}, '
        f'{os.path.join(out, "results.md")}, '
        f'{len(written)} plots in {os.path.join(out, "plots")}')


def check_out(out: str) -> None:
  """Before anything is written: OUT is a folder this process can write in,
  and every results.json in it reads (a damaged one is named)."""
  from dear_jax import validation  # pylint: disable=g-import-not-at-top
  try:
    validation.check_writable_dir(out, '--out')
    rows_lib.collect(out)
  except ValueError as e:
    raise CompareError(str(e)) from None


def report_only(out: str) -> int:
  """--report_only: the reports of what OUT holds, nothing trained."""
  path = os.path.join(out, 'protocol.json')
  try:
    with open(path) as f:
      json.load(f)['info']  # pylint: disable=expression-not-assigned
  except FileNotFoundError:
    return _fail(f'{path} not found: --report_only needs a --out that '
                 'baselines.compare has written')
  except (ValueError, KeyError, TypeError) as e:
    return _fail(f'{path} is unreadable ({type(e).__name__})')
  try:
    check_out(out)
  except CompareError as e:
    return _fail(str(e))
  write_reports(out)
  return 0


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if args.report_only:
    return report_only(args.out)
  compile_cache.enable(args.jax_cache)  # Ray workers: executors.worker_setup
  local = args.executor == 'local'
  if local and any(variants.official(m) for m in (
      args.models or PRESETS[args.preset]['models']) if m in variants.VARIANTS):
    # BaselineModel runs on one device only (as baselines.clrs_official);
    # a Ray task sees the devices Ray gives it.
    os.environ.setdefault('CUDA_VISIBLE_DEVICES', '0')
  if not local:
    # The driver only gathers files and writes reports: its jax stays on the
    # CPU and leaves this machine's GPUs to the Ray tasks.
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_platforms', 'cpu')
  try:
    ray = ray_options(args)
    plan = plan_lib.resolve(args)
    check_out(plan.out)
    hardware = profiling.hardware_line()
    if ray is not None:
      hardware = f'Ray workers (driver: {hardware})'
    info = dict(presets=[plan.preset], algorithms=list(plan.algorithms),
                models=list(plan.models), seeds=list(plan.seeds),
                hardware=[hardware])
    protocol_lib.check_and_write(plan, protocol_lib.build(plan), info)
  except CompareError as e:
    return _fail(str(e))
  if local and any(variants.official(m) for m in plan.models):
    from . import clrs_official  # pylint: disable=g-import-not-at-top
    try:
      clrs_official.check_single_device()
    except RuntimeError as e:
      return _fail(str(e).splitlines()[0])
  from dear_jax import loop  # pylint: disable=g-import-not-at-top
  loop.stop_on_sigterm()
  try:
    failures = run_all(plan, ray)
  except CompareError as e:  # Ray could not start or be reached
    return _fail(str(e))
  if failures is None:
    return 2
  if plan.memory and local:  # Ray tasks measure it on their own devices
    from . import memory  # pylint: disable=g-import-not-at-top
    for a in plan.algorithms:
      for m in plan.models:
        memory.cached_train_step_mb(plan, a, m)
  write_reports(plan.out)
  return 1 if failures else 0


if __name__ == '__main__':
  sys.exit(main())
