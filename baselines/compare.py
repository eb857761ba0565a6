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

argparse, not absl: `import clrs` registers absl flags such as `seeds`.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import importlib.util
import json
import math
import os
import platform
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # configs/dear_paper.py imports `configs.default`
  sys.path.insert(0, REPO)

MODELS = ('dear', 'nar', 'nar_nohint', 'clrs_official')
# dear_jax model_kind and NAR hint mode behind each compared model name.
MODEL_SETTINGS = {'dear': ('dear', None), 'nar': ('nar', 'encoded_decoded'),
                  'nar_nohint': ('nar', 'none'),
                  'clrs_official': (None, 'encoded_decoded')}
# The 10 algorithms of DEAR's tables (Georgiev et al., NeurIPS 2024).
PAPER_ALGORITHMS = ('bellman_ford', 'bfs', 'dfs', 'dag_shortest_paths',
                    'floyd_warshall', 'mst_prim',
                    'strongly_connected_components', 'binary_search',
                    'insertion_sort', 'minimum')

# None: taken from the dear config (train.steps, train.eval_every).
PRESETS = {
    # Minutes on a 2-core CPU: BFS, the official test set (32 graphs, n=64).
    'smoke': dict(algorithms=('bfs',), models=MODELS, seeds=1,
                  train_steps=100, eval_every=25,
                  dear_config='configs/default.py',
                  nar_config='configs/default.py'),
    # DEAR's 10 algorithms, 3 seeds, configs/dear_paper.py for DEAR (31,250
    # steps, validation every 313); the NARs keep CLRS run.py's data and
    # optimiser (configs/default.py), as the published column. For a GPU.
    'paper': dict(algorithms=PAPER_ALGORITHMS, models=MODELS, seeds=3,
                  train_steps=None, eval_every=None,
                  dear_config='configs/dear_paper.py',
                  nar_config='configs/default.py'),
}

# Published single-task Triplet-GMPNN OOD test scores (%, n=64, 10 seeds):
# Ibarz et al. 2022, "A Generalist Neural Algorithmic Learner", Table 2, as
# transcribed in /work/shared/reference/published-scores.md (from the
# EvoPrompting reprint, arXiv 2302.14838, Appendix Table 3). Mean ± SEM.
PUBLISHED_TRIPLET_GMPNN = {
    'activity_selector': (95.18, 0.45),
    'articulation_points': (88.32, 2.01),
    'bellman_ford': (97.39, 0.19),
    'bfs': (99.73, 0.04),
    'binary_search': (77.58, 2.35),
    'bridges': (93.99, 2.07),
    'bubble_sort': (67.68, 5.50),
    'dag_shortest_paths': (98.19, 0.30),
    'dfs': (47.79, 4.19),
    'dijkstra': (96.05, 0.60),
    'find_maximum_subarray_kadane': (76.36, 0.43),
    'floyd_warshall': (48.52, 1.04),
    'graham_scan': (93.62, 0.91),
    'heapsort': (31.04, 5.82),
    'insertion_sort': (78.14, 4.64),
    'jarvis_march': (91.01, 1.30),
    'kmp_matcher': (19.51, 4.57),
    'lcs_length': (80.51, 1.84),
    'matrix_chain_order': (91.68, 0.59),
    'minimum': (97.78, 0.55),
    'mst_kruskal': (89.80, 0.77),
    'mst_prim': (86.39, 1.33),
    'naive_string_matcher': (78.67, 4.99),
    'optimal_bst': (73.77, 1.48),
    'quickselect': (0.47, 0.25),
    'quicksort': (64.64, 5.12),
    'segments_intersect': (97.64, 0.09),
    'strongly_connected_components': (43.43, 3.15),
    'task_scheduling': (87.25, 0.35),
    'topological_sort': (87.27, 2.67),
}
PUBLISHED_LABEL = 'Triplet-GMPNN (Ibarz et al. 2022)'

CSV_COLUMNS = ('algorithm', 'model', 'seed', 'test_score', 'val_score',
               'train_seconds', 'train_steps_per_second',
               'eval_seconds_per_graph', 'solver_iters_mean',
               'algo_steps_mean', 'memory_mb')
# --override may not set what has its own flag or what compare decides.
_OWN_FLAGS = {'train.steps': '--train_steps', 'train.seed': '--seeds',
              'train.eval_every': '--eval_every',
              'data.cache_dir': '--cache_dir'}


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
  configs: dict        # model name -> ConfigDict (dear/nar kinds)
  official_data: object = None  # DataConfig of clrs_official (nar config's)
  progress: bool = True
  memory: bool = True


# --- command line -------------------------------------------------------------
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


def _check_names(kind: str, names, valid) -> None:
  bad = [n for n in names if n not in valid]
  if bad or not names:
    raise CompareError(f'unknown {kind} {", ".join(map(repr, bad)) or "(none)"}'
                       f'; valid: {", ".join(valid)}')


def load_config_file(path: str):
  """get_config() of a configs/*.py file (path absolute or repo-relative)."""
  full = path if os.path.isabs(path) else os.path.join(REPO, path)
  if not os.path.isfile(full):
    raise CompareError(f'config file {path!r} not found')
  name = 'dear_jax_compare_cfg_' + os.path.splitext(os.path.basename(full))[0]
  spec = importlib.util.spec_from_file_location(name, full)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _parse_value(raw: str):
  import ast  # pylint: disable=g-import-not-at-top
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def apply_override(config, item: str) -> None:
  """config[SECTION][KEY] = VALUE with the type of the existing value."""
  key, sep, raw = item.partition('=')
  key = key.strip()
  if not sep or key.count('.') != 1:
    raise CompareError(f'--override wants SECTION.KEY=VALUE, got {item!r}')
  if key in _OWN_FLAGS:
    raise CompareError(f'--override {key}: use {_OWN_FLAGS[key]} instead')
  section, name = key.split('.')
  if section not in config or not hasattr(config[section], 'keys') or (
      name not in config[section]):
    raise CompareError(f'--override: no config key {key!r}')
  old, value = config[section][name], _parse_value(raw.strip())
  if isinstance(old, tuple) and isinstance(value, (int, float, str)):
    value = (value,)
  elif isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  elif isinstance(old, float) and isinstance(value, int):
    value = float(value)
  try:
    config[section][name] = value
  except (TypeError, ValueError) as e:
    raise CompareError(f'--override {key}: {str(e).splitlines()[0]}') from None


def resolve(args) -> Plan:
  """Preset + flags -> Plan; validates names and configs (one-line errors)."""
  preset = PRESETS[args.preset]
  pick = lambda flag, key: preset[key] if flag is None else flag
  models = pick(args.models, 'models')
  _check_names('model', models, MODELS)
  algorithms = pick(args.algorithms, 'algorithms')
  seeds = pick(args.seeds, 'seeds')
  if seeds < 1:
    raise CompareError(f'--seeds must be >= 1, got {seeds}')

  from dear_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from dear_jax import train, validation  # pylint: disable=g-import-not-at-top
  _check_names('algorithm', algorithms, data_lib.algorithm_names())

  base = {'dear': load_config_file(pick(args.dear_config, 'dear_config')),
          'nar': load_config_file(pick(args.nar_config, 'nar_config'))}
  train_steps = pick(args.train_steps, 'train_steps') or int(
      base['dear'].train.steps)
  eval_every = pick(args.eval_every, 'eval_every') or int(
      base['dear'].train.eval_every)
  if train_steps < 1 or eval_every < 1:
    raise CompareError('--train_steps and --eval_every must be >= 1')
  for config in base.values():
    for item in args.override:
      apply_override(config, item)
    config.train.steps = train_steps
    config.train.eval_every = eval_every
    if args.cache_dir:
      config.data.cache_dir = os.path.abspath(args.cache_dir)
  configs = {}
  for model in models:
    kind, hint_mode = MODEL_SETTINGS[model]
    if kind is None:
      continue
    config = copy.deepcopy(base[kind])
    config.model_kind = kind
    if hint_mode is not None:
      config.nar.hint_mode = hint_mode
    try:
      validation.check_config(config)
    except ValueError as e:
      raise CompareError(f'{model} config: {str(e).splitlines()[0]}') from None
    configs[model] = config
  return Plan(out=args.out, preset=args.preset, algorithms=tuple(algorithms),
              models=tuple(models), seeds=tuple(range(seeds)),
              train_steps=train_steps, eval_every=eval_every, configs=configs,
              official_data=train.data_config(base['nar']),
              progress=not args.quiet, memory=args.memory)


# --- protocol -----------------------------------------------------------------
def _model_protocol(plan: Plan, model: str) -> dict:
  if model == 'clrs_official':
    from baselines import clrs_official  # pylint: disable=g-import-not-at-top
    d = dataclasses.asdict(plan.official_data)
    return dict(model=dict(clrs_official.RUN_PY_DEFAULTS),
                hint_mode=MODEL_SETTINGS[model][1], data=d)
  c = plan.configs[model].to_dict()
  c['train'].pop('seed')
  return c


def _data_protocol(algorithm: str, data_cfg) -> dict:
  """What data an algorithm's runs see (sizes and official counts resolved)."""
  from dear_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  mult = data_lib.clrs().CLRS_30_ALGS_SETTINGS[algorithm][
      'num_samples_multiplier']
  return dict(
      train_sizes=list(data_lib.training_sizes(algorithm,
                                               data_cfg.train_sizes)),
      size_schedule=data_cfg.size_schedule, batch_size=data_cfg.batch_size,
      val_length=data_lib.validation_length(algorithm, data_cfg),
      val_num_samples=data_cfg.val_num_samples or 64 * mult,
      test_length=data_cfg.test_length,
      test_num_samples=data_cfg.test_num_samples or 32 * mult)


def _strip_cache_dir(d: dict) -> dict:
  d = copy.deepcopy(d)
  d.get('data', {}).pop('cache_dir', None)
  return d


def build_protocol(plan: Plan) -> dict:
  """Everything that changes results; JSON-normalised (tuples -> lists)."""
  from dear_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  clrs = data_lib.clrs()
  data_cfgs = {m: (plan.official_data if m == 'clrs_official'
                   else train.data_config(plan.configs[m]))
               for m in plan.models}
  proto = dict(
      train_steps=plan.train_steps, eval_every=plan.eval_every,
      data_protocol_version=data_lib.PROTOCOL_VERSION,
      clrs_version=getattr(clrs, '__version__', 'unknown'),
      models={m: _strip_cache_dir(_model_protocol(plan, m))
              for m in plan.models},
      algorithms={a: {m: _data_protocol(a, data_cfgs[m]) for m in plan.models}
                  for a in plan.algorithms})
  return json.loads(json.dumps(proto))


def _first_difference(old, new, path=''):
  """Path of the first difference between two JSON values on shared keys."""
  if isinstance(old, dict) and isinstance(new, dict):
    # Plain values first: the message then names train_steps, not the copy
    # of it inside each model's config.
    keys = sorted(set(old) | set(new),
                  key=lambda k: (isinstance(old.get(k, new.get(k)), dict), k))
    for k in keys:
      if k not in old or k not in new:
        # New algorithms/models may be added to a DIR; other keys may not.
        if path in ('algorithms', 'models') or path.startswith('algorithms.'):
          continue
        return f'{path}.{k}'.lstrip('.') + ' (present in only one)'
      d = _first_difference(old[k], new[k], f'{path}.{k}')
      if d:
        return d
    return None
  if old != new:
    return f'{path.lstrip(".")}: {old!r} there, {new!r} now'
  return None


def check_and_write_protocol(plan: Plan, protocol: dict, info: dict) -> None:
  """Fails if DIR was used with other results-changing settings."""
  path = os.path.join(plan.out, 'protocol.json')
  merged = protocol
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    diff = _first_difference(old.get('protocol', {}), protocol)
    if diff:
      raise CompareError(f'{plan.out} holds runs of another protocol ({diff})'
                         '; use another --out')
    merged = copy.deepcopy(old['protocol'])
    merged['models'].update(protocol['models'])
    for a, per_model in protocol['algorithms'].items():
      merged['algorithms'].setdefault(a, {}).update(per_model)
    old_info = old.get('info', {})
    for key in ('algorithms', 'models', 'seeds'):
      info[key] = sorted(set(old_info.get(key, [])) | set(info[key]),
                         key=str)
    info['presets'] = sorted(set(old_info.get('presets', [])) |
                             set(info['presets']))
  os.makedirs(plan.out, exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(dict(protocol=merged, info=info), f, indent=2, sort_keys=True)
  os.replace(tmp, path)


# --- runs -----------------------------------------------------------------------
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


def _sample_train_batch(algorithm: str, data_cfg, keep_hints: bool):
  """One training batch at the largest training size (fixed seed)."""
  from dear_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  largest = max(data_lib.training_sizes(algorithm, data_cfg.train_sizes))
  cfg = dataclasses.replace(data_cfg, train_sizes=(largest,))
  return next(data_lib.TrainStream(algorithm, cfg, 0, keep_hints=keep_hints))


def _memory_mb(compiled) -> float | None:
  m = compiled.memory_analysis()
  if m is None:
    return None
  total = (m.temp_size_in_bytes + m.argument_size_in_bytes +
           m.output_size_in_bytes - m.alias_size_in_bytes)
  return total / 2**20


def train_step_memory_mb(plan: Plan, algorithm: str, model: str):
  """XLA's compiled memory of one training step (temp + arguments + outputs,
  donated buffers once) on a batch of the largest training size."""
  import jax  # pylint: disable=g-import-not-at-top
  from dear_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  spec = data_lib.processed_spec(algorithm)
  if model == 'clrs_official':
    from baselines import clrs_official  # pylint: disable=g-import-not-at-top
    batch = _sample_train_batch(algorithm, plan.official_data, True)
    feedback = data_lib.to_feedback(batch, spec)
    m = clrs_official.build_model(algorithm, spec, feedback,
                                  hint_mode=MODEL_SETTINGS[model][1])
    m.init(feedback.features, 1)
    compiled = m.jitted_feedback.lower(
        m._device_params, jax.random.PRNGKey(0), feedback,  # pylint: disable=protected-access
        m._device_opt_state, 0).compile()  # pylint: disable=protected-access
    return _memory_mb(compiled)
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  config = plan.configs[model]
  batch = _sample_train_batch(algorithm, train.data_config(config),
                              train.uses_hints(config))
  step = make_train_step(config, spec, batch)
  params, opt_state = step.init(batch)
  compiled = step.lower(params, opt_state, batch,
                        jax.random.PRNGKey(1)).compile()
  return _memory_mb(compiled)


def make_train_step(config, spec: dict, sample_batch: dict):
  """The jitted update of dear_jax.train.train_and_evaluate, standalone.

  Returns the jitted step(params, opt_state, batch, key) with an extra
  `init(batch) -> (params, opt_state)` attribute.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  model = train.build_model(config, spec, sample_batch)
  optimizer = train._optimizer(config)  # pylint: disable=protected-access

  @jax.jit
  def step(params, opt_state, batch, key):
    (loss, aux), grads = jax.value_and_grad(model.loss, has_aux=True)(
        params, batch, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux

  def init(batch, seed=0):
    params = model.init(jax.random.PRNGKey(seed), batch)
    return params, optimizer.init(params)

  step.init = init
  step.model = model
  return step


def memory_for(plan: Plan, algorithm: str, model: str):
  """Cached in DIR/runs/ALG/MODEL/memory.json (same for every seed)."""
  path = os.path.join(plan.out, 'runs', algorithm, model, 'memory.json')
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)['train_step_memory_mb']
  try:
    mb = train_step_memory_mb(plan, algorithm, model)
  except Exception as e:  # pylint: disable=broad-except
    print(f'  memory of {algorithm}/{model} not measured: '
          f'{type(e).__name__}: {str(e).splitlines()[0][:160]}')
    return None
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(dict(train_step_memory_mb=mb, what='XLA compiled memory of one '
                   'train step (temp + arguments + outputs - aliased), batch '
                   'of the largest training size'), f, indent=2)
  return mb


# --- collection and reports ------------------------------------------------------
def _number(x):
  if x is None:
    return None
  try:
    x = float(x)
  except (TypeError, ValueError):
    return None
  return x if math.isfinite(x) else None


def collect(out: str) -> list:
  """Every finished run in OUT/runs, as (algorithm, model, seed, results)."""
  rows = []
  root = os.path.join(out, 'runs')
  if not os.path.isdir(root):
    return rows
  for algorithm in sorted(os.listdir(root)):
    for model in os.listdir(os.path.join(root, algorithm)):
      mdir = os.path.join(root, algorithm, model)
      if not os.path.isdir(mdir):
        continue
      for sdir in os.listdir(mdir):
        path = os.path.join(mdir, sdir, 'results.json')
        if sdir.startswith('s') and os.path.exists(path):
          with open(path) as f:
            rows.append(dict(algorithm=algorithm, model=model,
                             seed=int(sdir[1:]), results=json.load(f),
                             run_dir=os.path.join(mdir, sdir)))
  order = {m: i for i, m in enumerate(MODELS)}
  rows.sort(key=lambda r: (r['algorithm'], order.get(r['model'], 99),
                           r['seed']))
  return rows


def csv_row(run: dict, out: str) -> dict:
  r = run['results']
  steps_per_s = _number(r.get('train_steps_per_second'))
  if steps_per_s is None and _number(r.get('train_seconds')):
    steps_per_s = r['train_steps'] / r['train_seconds']
  mem_path = os.path.join(out, 'runs', run['algorithm'], run['model'],
                          'memory.json')
  memory = None
  if os.path.exists(mem_path):
    with open(mem_path) as f:
      memory = json.load(f).get('train_step_memory_mb')
  return dict(algorithm=run['algorithm'], model=run['model'],
              seed=run['seed'], test_score=r['test_score'],
              val_score=r['val_score'], train_seconds=r['train_seconds'],
              train_steps_per_second=steps_per_s,
              eval_seconds_per_graph=r['eval_seconds_per_graph'],
              solver_iters_mean=r.get('solver_iters_mean'),
              algo_steps_mean=r['algo_steps_mean'], memory_mb=memory)


def write_csv(path: str, rows: list) -> None:
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
    w.writeheader()
    for row in rows:
      w.writerow({k: ('' if _number(v) is None and k not in
                      ('algorithm', 'model') else v) for k, v in row.items()})


def mean_std(values: list):
  """(mean, sample std or None for one value, n) of the finite values."""
  vals = [v for v in (_number(x) for x in values) if v is not None]
  if not vals:
    return None, None, 0
  n = len(vals)
  mean = sum(vals) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 \
      else None
  return mean, std, n


def _fmt(mean, std, n, scale=1.0, digits=1):
  if mean is None:
    return '–'
  s = f'{scale * mean:.{digits}f}'
  if std is not None:
    s += f' ± {scale * std:.{digits}f}'
  return s + (f' (n={n})' if n != 1 else ' (n=1)')


def hardware_line() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  cpu = platform.processor()
  if not cpu and os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      names = [l.split(':', 1)[1].strip() for l in f
               if l.startswith('model name')]
    cpu = names[0] if names else ''
  return (f'{platform.system()} {platform.machine()}, CPU {cpu or "unknown"}, '
          f'{os.cpu_count()} CPU cores, jax {jax.__version__} devices '
          f'{jax.devices()}')


def write_markdown(path: str, rows: list, info: dict, protocol: dict) -> None:
  algorithms = sorted({r['algorithm'] for r in rows})
  present = {r['model'] for r in rows}
  models = [m for m in MODELS if m in present] + sorted(present - set(MODELS))

  def cells(metric, scale=1.0, digits=1):
    table = {}
    for a in algorithms:
      for m in models:
        vals = [r[metric] for r in rows
                if r['algorithm'] == a and r['model'] == m]
        table[a, m] = _fmt(*mean_std(vals), scale=scale, digits=digits)
    return table

  lines = ['# DEAR vs stepwise NAR vs dm-clrs BaselineModel', '',
           f'Hardware: {info["hardware"]}.', '',
           f'Preset(s) {", ".join(info["presets"])}; {protocol["train_steps"]} '
           f'training steps, validation every {protocol["eval_every"]} steps; '
           f'seeds {", ".join(map(str, info["seeds"]))} requested. Models: '
           + ', '.join(f'`{m}`' for m in models) + '.', '',
           '## Test score (OOD, official CLRS test split; %, mean ± sample '
           'std over seeds, n = seeds)', '']
  header = ['algorithm'] + [f'`{m}`' for m in models] + [
      f'{PUBLISHED_LABEL}, 10 seeds, mean ± SEM']
  lines += ['| ' + ' | '.join(header) + ' |',
            '|' + '---|' * len(header)]
  test = cells('test_score', 100)
  for a in algorithms:
    pub = PUBLISHED_TRIPLET_GMPNN.get(a)
    pub_s = f'{pub[0]:.2f} ± {pub[1]:.2f}' if pub else '–'
    lines.append('| ' + ' | '.join([a] + [test[a, m] for m in models] +
                                   [pub_s]) + ' |')

  def table(title, metric, scale, digits, note=''):
    t = cells(metric, scale, digits)
    out = ['', f'## {title}', '']
    if note:
      out += [note, '']
    out += ['| algorithm | ' + ' | '.join(f'`{m}`' for m in models) + ' |',
            '|' + '---|' * (len(models) + 1)]
    out += ['| ' + ' | '.join([a] + [t[a, m] for m in models]) + ' |'
            for a in algorithms]
    return out

  lines += table('Validation score (best, n=16; %)', 'val_score', 100, 1)
  lines += table(
      'Training steps per second', 'train_steps_per_second', 1, 2,
      'dear/nar: train_steps / train_seconds (the whole loop without '
      'validation: data generation and compiles included). clrs_official: '
      'its own steady-state figure (model updates only, compiling steps '
      'excluded), falling back to train_steps / train_seconds when it has '
      'none. Compare them with benchmarks/run.py, which times both on the '
      'same batches.')
  lines += table('Inference ms per test graph', 'eval_seconds_per_graph',
                 1e3, 2)
  lines += table('DEAR solver iterations per test graph (mean)',
                 'solver_iters_mean', 1, 1)
  lines += table('True algorithm steps per test graph (mean)',
                 'algo_steps_mean', 1, 1)
  lines += table('Compiled train-step memory (MB)', 'memory_mb', 1, 1,
                 'XLA memory_analysis of one jitted training step on a batch '
                 'of the largest training size: temp + arguments + outputs, '
                 'donated buffers counted once. Same for every seed.')
  lines += ['', '## Notes', '',
            '- The published column is a reference, not a like-for-like '
            'run: Ibarz et al. trained 10,000 steps on the CLRS v1.0.0 '
            'splits; here the test split is regenerated with dm-clrs '
            f'{protocol["clrs_version"]} (see '
            '/work/shared/reference/published-scores.md). `clrs_official` is '
            'the local re-run of that baseline on exactly our data.',
            '- Per-run values: results.csv; settings: protocol.json; '
            'figures: plots/.']
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


# --- convergence trace -------------------------------------------------------------
def _load_best_params(workdir: str):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  mngr = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir,
                                                            'checkpoints')),
                               item_names=('state', 'meta'))
  try:
    step = mngr.latest_step()
    if step is None:
      raise CompareError(f'{workdir} has no checkpoint')
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
    return restored.state['best_params']
  finally:
    mngr.close()


def _ks(cap: int) -> list:
  grid = {1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, cap}
  return sorted(k for k in grid if k <= cap)


def convergence_trace(workdir: str) -> dict:
  """Residual per solver iteration on the first test batch, trained DEAR.

  The run's solver (e.g. Anderson) is re-run with its iteration cap set to
  k for a grid of k and a tolerance it cannot reach, so the residual of the
  k-th iterate is `stats.residual` (iterates do not depend on the tolerance).
  Plain fixed-point iteration h <- f(h) on the same map is traced alongside.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dear_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from dear_jax import solver, train  # pylint: disable=g-import-not-at-top
  from dear_jax.validation import solver_config  # pylint: disable=g-import-not-at-top

  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  config = ml_collections.ConfigDict(results['config'])
  algorithm = results['algorithm']
  spec = data_lib.processed_spec(algorithm)
  test = data_lib.load_split(algorithm, 'test', train.data_config(config),
                             keep_hints=False)
  batch = test.batches[0]
  model = train.build_model(config, spec, batch)
  params = _load_best_params(workdir)
  base = solver_config(config.dear)
  n = data_lib.num_nodes(batch)

  def f(h, proc_params, node, edge, graph, adj):
    h_new, _ = model.process(proc_params, node[None], edge[None], graph[None],
                             adj[None], h[None], triplets=False)
    return h_new[0]

  @jax.jit
  def encode(params, batch):
    node, edge, graph, adj = model.encode(params, batch['inputs'], n)
    return node, edge, graph, model.adjacency(batch, adj)

  args = encode(params, batch)
  h0 = jnp.zeros_like(args[0])
  graphs = min(test.num_samples, h0.shape[0])
  unreachable = 1e-30
  solver_res = []
  ks = _ks(base.max_iter_eval)
  for k in ks:
    cfg = dataclasses.replace(base, max_iter_eval=k, tol=unreachable)
    solve = jax.jit(lambda p, a, cfg=cfg: solver.solve(
        f, h0, p, a, config=cfg, training=False)[1].residual)
    solver_res.append(np.asarray(solve(params['processor'], args))[:graphs])
  actual = jax.jit(lambda p, a: solver.solve(
      f, h0, p, a, config=base, training=False)[1].iterations)(
          params['processor'], args)

  def rel(h, fh):
    a = jnp.sqrt(jnp.sum((fh - h) ** 2, axis=(-2, -1)))
    if base.tol_mode == 'abs':
      return a
    return a / (jnp.sqrt(jnp.sum(fh ** 2, axis=(-2, -1))) + 1e-9)

  fb = jax.vmap(f, in_axes=(0, None, 0, 0, 0, 0))

  @jax.jit
  def picard(p, a):
    def body(h, _):
      fh = fb(h, p, *a)
      return fh, rel(h, fh)
    _, res = jax.lax.scan(body, h0, None, length=ks[-1])
    return res

  picard_res = np.asarray(picard(params['processor'], args))[:, :graphs]
  return dict(
      run=workdir, algorithm=algorithm,
      method=base.method, tol=base.tol, tol_mode=base.tol_mode,
      cap=base.max_iter_eval, graphs=graphs, nodes=n, ks=ks,
      solver_residual=[r.tolist() for r in solver_res],
      picard_residual=picard_res.tolist(),
      actual_iterations=np.asarray(actual)[:graphs].tolist())


def cached_convergence_trace(out: str, runs: list):
  """The trace of the first finished dear run (seed 0 first), cached."""
  dear = [r for r in runs if r['model'] == 'dear']
  if not dear:
    return None
  run = sorted(dear, key=lambda r: (r['seed'], r['algorithm']))[0]
  stamp = os.path.getmtime(os.path.join(run['run_dir'], 'results.json'))
  path = os.path.join(out, 'plots', 'convergence.json')
  if os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
    if cached.get('source') == [run['run_dir'], stamp]:
      return cached
  trace = convergence_trace(run['run_dir'])
  trace['run'] = os.path.relpath(run['run_dir'], out)
  trace['source'] = [run['run_dir'], stamp]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(trace, f)
  return trace


# --- main ----------------------------------------------------------------------
def _fail(message: str) -> int:
  print(f'error: {message}', file=sys.stderr)
  return 2


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if 'clrs_official' in (args.models or PRESETS[args.preset]['models']):
    # BaselineModel runs on one device only (as baselines.clrs_official).
    os.environ.setdefault('CUDA_VISIBLE_DEVICES', '0')
  try:
    plan = resolve(args)
    protocol = build_protocol(plan)
    info = dict(presets=[plan.preset], algorithms=list(plan.algorithms),
                models=list(plan.models), seeds=list(plan.seeds),
                hardware=hardware_line())
    check_and_write_protocol(plan, protocol, info)
  except CompareError as e:
    return _fail(str(e))
  if 'clrs_official' in plan.models:
    from baselines import clrs_official  # pylint: disable=g-import-not-at-top
    try:
      clrs_official.check_single_device()
    except RuntimeError as e:
      return _fail(str(e).splitlines()[0])
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
      if isinstance(e.__cause__, KeyboardInterrupt):
        return _fail(f'{label}: {str(e).splitlines()[0]}')
      print(f'{label}: FAILED: {str(e).splitlines()[0]}', file=sys.stderr)
      failures += 1
      continue
    print(f'{label}: test {r["test_score"]:.4f}, val {r["val_score"]:.4f} '
          f'({time.time() - t0:.0f} s)')
  if plan.memory:
    for a in plan.algorithms:
      for m in plan.models:
        memory_for(plan, a, m)

  runs = collect(plan.out)
  rows = [csv_row(r, plan.out) for r in runs]
  write_csv(os.path.join(plan.out, 'results.csv'), rows)
  with open(os.path.join(plan.out, 'protocol.json')) as f:
    stored = json.load(f)
  write_markdown(os.path.join(plan.out, 'results.md'), rows, stored['info'],
                 stored['protocol'])
  from baselines import plots  # pylint: disable=g-import-not-at-top
  trace = cached_convergence_trace(plan.out, runs) if runs else None
  written = plots.write_all(os.path.join(plan.out, 'plots'), runs, rows,
                            PUBLISHED_TRIPLET_GMPNN, PUBLISHED_LABEL, trace,
                            MODELS)
  print(f'{len(rows)} runs: {os.path.join(plan.out, "results.csv")}, '
        f'{os.path.join(plan.out, "results.md")}, '
        f'{len(written)} plots in {os.path.join(plan.out, "plots")}')
  return 1 if failures else 0


if __name__ == '__main__':
  sys.exit(main())
