"""What one `baselines.compare` invocation runs: presets + flags -> Plan.

Validates model and algorithm names, loads the configs of `dear` and of the
NARs, applies `--config.SECTION.KEY=VALUE`, and fails with a one-line CompareError on
anything the user can fix.
"""

from __future__ import annotations

import copy
import dataclasses
import os

from . import variants

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The compared models: baselines/variants.py's table (these names as loaded).
MODELS = tuple(variants.VARIANTS)
# The six models of the DEAR-10 presets.
DEAR10_MODELS = ('dear', 'dear_cgp', 'dear_align', 'nar', 'nar_nohint',
                 'clrs_official')
# Models trained against a teacher of the same sweep (variants.py).
TEACHERS = {n: v.teacher for n, v in variants.VARIANTS.items() if v.teacher}
# The four models of the original comparison (smoke, paper).
CORE_MODELS = ('dear', 'nar', 'nar_nohint', 'clrs_official')
# The 10 algorithms of DEAR's tables (Georgiev et al., NeurIPS 2024).
PAPER_ALGORITHMS = ('bellman_ford', 'bfs', 'dfs', 'dag_shortest_paths',
                    'floyd_warshall', 'mst_prim',
                    'strongly_connected_components', 'binary_search',
                    'insertion_sort', 'minimum')

# None: taken from the dear config (train.steps, train.eval_every).
PRESETS = {
    # Minutes on a 2-core CPU: BFS, the official test set (32 graphs, n=64).
    'smoke': dict(algorithms=('bfs',), models=CORE_MODELS, seeds=1,
                  train_steps=100, eval_every=25,
                  dear_config='configs/default.py',
                  nar_config='configs/default.py'),
    # DEAR's 10 algorithms, 3 seeds, configs/dear_paper.py for DEAR (31,250
    # steps, validation every 313); the NARs keep CLRS run.py's data and
    # optimiser (configs/default.py), as the published column. For a GPU.
    'paper': dict(algorithms=PAPER_ALGORITHMS, models=CORE_MODELS, seeds=3,
                  train_steps=None, eval_every=None,
                  dear_config='configs/dear_paper.py',
                  nar_config='configs/default.py'),
    # DEAR-10: our default DEAR (configs/default.py), DEAR + CGP, DEAR +
    # alignment/stochastic iterations (teacher: this sweep's nar_nohint),
    # and the three stepwise baselines, at the paper's budget. For a GPU.
    'dear10': dict(algorithms=PAPER_ALGORITHMS, models=DEAR10_MODELS, seeds=3,
                   train_steps=31250, eval_every=313,
                   dear_config='configs/default.py',
                   nar_config='configs/default.py'),
    # The same table at a budget a 2-core CPU finishes in hours per
    # algorithm (resumable across sessions).
    'dear10-cpu': dict(algorithms=PAPER_ALGORITHMS, models=DEAR10_MODELS,
                       seeds=1,
                       train_steps=1000, eval_every=100,
                       dear_config='configs/default.py',
                       nar_config='configs/default.py'),
}

# --config.KEY may not set what has its own flag or what compare decides.
_OWN_FLAGS = {'train.steps': '--train_steps', 'train.seed': '--seeds',
              'train.eval_every': '--eval_every',
              'data.cache_dir': '--cache_dir'}


def run_dir(out: str, algorithm: str, model: str, seed: int) -> str:
  """One run's folder in a compare --out."""
  return os.path.join(out, 'runs', algorithm, model, f's{seed}')


class CompareError(Exception):
  """A problem the user can fix: one line on stderr, exit code 2."""


@dataclasses.dataclass
class Plan:
  out: str
  preset: str
  algorithms: tuple
  models: tuple
  seeds: tuple
  train_steps: int
  eval_every: int
  configs: dict        # model name -> its RunConfig (dear/nar kinds)
  official_data: object = None  # DataConfig of clrs_official (nar config's)
  progress: bool = True
  memory: bool = True
  stack_seeds: bool = False  # seeds of a run in one program (or Ray task)


def _check_names(kind: str, names, valid) -> None:
  bad = [n for n in names if n not in valid]
  if bad or not names:
    raise CompareError(f'unknown {kind} {", ".join(map(repr, bad)) or "(none)"}'
                       f'; valid: {", ".join(valid)}')


def load_config_file(path: str):
  """get_config() of a config file (path absolute or repo-relative), or of a
  preset by name (`dear_paper`)."""
  from dear_jax import validation  # pylint: disable=g-import-not-at-top
  full = path if os.path.isabs(path) else os.path.join(REPO, path)
  if not os.path.isfile(full):
    full = validation.preset_path(path)
  if full is None:
    raise CompareError(f'config file {path!r} not found; use a path or a '
                       f'preset: {", ".join(validation.presets())}')
  try:
    return validation.load_config_file(full)
  except ValueError as e:
    raise CompareError(str(e)) from None


def apply_overrides(config, overrides: list):
  """`config` with the `--config.SECTION.KEY=VALUE` flags `overrides`, parsed
  as `python -m dear_jax.run` parses them (dear_jax.run.apply_overrides)."""
  from dear_jax import run  # pylint: disable=g-import-not-at-top
  for flag in overrides:
    key = flag[len('--config.'):].split('=', 1)[0]
    if key in _OWN_FLAGS:
      raise CompareError(f'--config.{key}: use {_OWN_FLAGS[key]} instead')
  try:
    return run.apply_overrides(config, overrides)
  except ValueError as e:
    raise CompareError(str(e)) from None


def resolve(args) -> Plan:
  """Preset + flags -> Plan; validates names and configs (one-line errors)."""
  preset = PRESETS[args.preset]
  pick = lambda flag, key: preset[key] if flag is None else flag
  models = pick(args.models, 'models')
  table = variants.VARIANTS
  _check_names('model', models, tuple(table))
  algorithms = pick(args.algorithms, 'algorithms')
  seeds = pick(args.seeds, 'seeds')
  if seeds < 1:
    raise CompareError(f'--seeds must be >= 1, got {seeds}')

  from dear_jax import clrs_lib  # pylint: disable=g-import-not-at-top
  from dear_jax import run_config, train  # pylint: disable=g-import-not-at-top
  _check_names('algorithm', algorithms, clrs_lib.algorithm_names())

  base = {'dear': load_config_file(pick(args.dear_config, 'dear_config')),
          'nar': load_config_file(pick(args.nar_config, 'nar_config'))}
  # None (flag and preset unset): the dear config's; 0 is refused below.
  train_steps, eval_every = (
      int(base['dear'].train[key]) if value is None else value
      for key, value in (('steps', pick(args.train_steps, 'train_steps')),
                         ('eval_every', pick(args.eval_every, 'eval_every'))))
  if train_steps < 1 or eval_every < 1:
    raise CompareError('--train_steps and --eval_every must be >= 1')
  base.update({m: load_config_file(table[m].config_file[0]) for m in models
               if table[m].config_file})
  base = {k: apply_overrides(c, args.config_overrides)
          for k, c in base.items()}
  for config in base.values():  # the sweep's steps (own files' too)
    config.train.steps = train_steps
    config.train.eval_every = eval_every
    if args.cache_dir:
      config.data.cache_dir = os.path.abspath(args.cache_dir)
  configs = {}
  teachers = {m: table[m].teacher for m in models if table[m].teacher}
  for student, teacher in teachers.items():
    if teacher not in models:
      raise CompareError(f'model {student} trains against {teacher} of the '
                         f'same sweep: add {teacher} to --models')
  if teachers:  # teachers train first
    models = sorted(models, key=lambda m: m not in teachers.values())
  for model in models:
    variant = table[model]
    if variant.kind is None:
      continue
    config = copy.deepcopy(base[variant.kind])
    config.model_kind = variant.kind
    if variant.config_file:
      for key in variant.config_file[1]:
        section, _, name = key.partition('.')
        own = base[model][section]
        for k in ([name] if name else list(own.keys())):
          config[section][k] = copy.deepcopy(own[k])
    if variant.hint_mode is not None:
      config.nar.hint_mode = variant.hint_mode
    for key, value in variant.overrides.items():
      section, name = key.split('.')
      config[section][name] = value
    try:  # the model's one typed config, which its runs take
      configs[model] = run_config.typed(config)
      # the teacher's run is checked when it exists
      run_config.check_config(configs[model].with_values(
          {'dear.align_weight': 0.0}) if model in teachers else configs[model])
    except ValueError as e:
      raise CompareError(f'{model} config: {str(e).splitlines()[0]}') from None
  return Plan(out=args.out, preset=args.preset, algorithms=tuple(algorithms),
              models=tuple(models), seeds=tuple(range(seeds)),
              train_steps=train_steps, eval_every=eval_every, configs=configs,
              official_data=train.data_config(base['nar']),
              progress=not args.quiet, memory=args.memory,
              stack_seeds=getattr(args, 'stack_seeds', False))
