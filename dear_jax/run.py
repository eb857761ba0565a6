"""Command line: python -m dear_jax.run --algorithm=bfs [--model=dear|nar] ...

Flags are defined when the CLI starts, not at import, on the CLI's own
FlagValues: `import clrs` registers absl flags on the global FLAGS (e.g.
`seeds`, `use_hints`), which therefore never see our command line, so our
`--seeds` does not collide with dm-clrs's.
"""

from __future__ import annotations

import os
import sys

from absl import flags
from ml_collections import config_flags

from dear_jax import MODEL_KINDS
from dear_jax import clrs_lib
from dear_jax import compile_cache
from dear_jax import loop
from dear_jax import nar
from dear_jax import run_config
from dear_jax import train
from dear_jax import validation


def _define_flags(fv: flags.FlagValues, argv):
  flags.DEFINE_string('algorithm', 'bfs', 'CLRS-30 algorithm name.',
                      flag_values=fv)
  flags.DEFINE_enum('model', None, MODEL_KINDS, 'dear (default) or nar; '
                    'overrides config.model_kind.', flag_values=fv)
  flags.DEFINE_integer('train_steps', None, 'Overrides config.train.steps.',
                       flag_values=fv)
  flags.DEFINE_integer('seed', None, 'Overrides config.train.seed.',
                       flag_values=fv)
  flags.DEFINE_list('seeds', None, 'Several seeds trained together in one '
                    'program (stacked, vmapped), e.g. 0,1,2; each writes what '
                    '--seed would into its own workdir, WORKDIR_sSEED.',
                    flag_values=fv)
  flags.DEFINE_string('workdir', None, 'Output folder (default: '
                      'runs/ALGORITHM_MODEL_sSEED).', flag_values=fv)
  flags.DEFINE_string('hint_mode', None, 'NAR hint mode: encoded_decoded, '
                      'decoded_only or none.', flag_values=fv)
  flags.DEFINE_bool('progress', True, 'Show a progress bar (loss, last '
                    'validation score, DEAR: mean solver iterations and the '
                    'share of graphs not converged in the batch).',
                    flag_values=fv)
  flags.DEFINE_string('jax_cache', None, compile_cache.FLAG_HELP,
                      flag_values=fv)
  flags.DEFINE_bool('reevaluate', False, 'On a finished workdir, score the '
                    'best parameters again and rewrite results.json (default: '
                    'print the stored results).', flag_values=fv)
  flags.DEFINE_bool('extend', False, 'Train a finished or checkpointed '
                    'workdir on to a larger --train_steps (refused without '
                    'this flag).', flag_values=fv)
  config_flags.DEFINE_config_file(
      'config', os.path.join(validation.CONFIGS, 'default.py'),
      'Config file, or a preset by name from any folder (dear_paper: '
      'configs/dear_paper.py); override keys with --config.KEY=VALUE.',
      flag_values=fv, lock_config=True, sys_argv=argv)


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


# Flags that set a config key, and the key: both given with different values
# is an error (neither silently wins).
_FLAG_KEYS = {'model': 'model_kind', 'train_steps': 'train.steps',
              'seed': 'train.seed', 'hint_mode': 'nar.hint_mode'}


def last_overrides(args) -> list:
  """`args` with only the last `--config.KEY=VALUE` of each KEY, as absl
  keeps the last of any flag (ml_collections would join a tuple key's
  values: (5,) then (0,) would give (5, 0))."""
  last = {}
  for i, a in enumerate(args):
    if a.startswith('--config.') and '=' in a:
      last[a.split('=', 1)[0]] = i
  return [a for i, a in enumerate(args) if not (
      a.startswith('--config.') and '=' in a and last[a.split('=', 1)[0]] != i)]


def resolve_config(fv, argv=()) -> run_config.RunConfig:
  """The config with command-line overrides applied, as the run's one typed,
  checked RunConfig; `argv`, the command line, to refuse a flag and its
  config key set to different values."""
  config = fv.config
  given = {a[len('--config.'):].split('=', 1)[0] for a in argv
           if a.startswith('--config.')}
  typed_keys = {}  # the values of keys typed beside their flag
  for flag, key in _FLAG_KEYS.items():
    if fv[flag].value is not None and key in given:
      section, _, name = key.rpartition('.')
      typed_keys[flag] = config[section][name] if section else config[name]
  if fv.seed is not None and not 0 <= fv.seed < 2**32:
    raise ValueError(f'--seed must be an integer in [0, 2**32), got {fv.seed}')
  with config.unlocked():
    if fv.model is not None:
      config.model_kind = fv.model
    if fv.train_steps is not None:
      config.train.steps = fv.train_steps
    if fv.seed is not None:
      config.train.seed = fv.seed
    if fv.hint_mode is not None:
      if config.model_kind != 'nar':
        raise ValueError('--hint_mode applies to --model=nar only (DEAR '
                         'uses no hints)')
      nar.hint_flags(fv.hint_mode, '--hint_mode')  # named as typed
      config.nar.hint_mode = fv.hint_mode
  run = run_config.check_config(config)
  for flag, value in typed_keys.items():
    if value != fv[flag].value:
      raise ValueError(f'--{flag}={fv[flag].value} and --config.'
                       f'{_FLAG_KEYS[flag]}={value} disagree; give one of them')
  return run


USAGE = """Train and test DEAR (or the stepwise NAR) on one CLRS-30 algorithm.

usage: python -m dear_jax.run --algorithm=ALG [--model=dear|nar] [--train_steps=N]
         [--seed=S | --seeds=S1,S2,...] [--workdir=DIR] [--config=PRESET|FILE.py]
         [--config.SECTION.KEY=VALUE ...] [--hint_mode=MODE] [--noprogress]
         [--reevaluate] [--extend]

Configs: configs/default.py (CPU-sized, the default) and configs/dear_paper.py
(DEAR's paper protocol); every key of their sections data, model, nar, dear and
train can be overridden, e.g. --config.dear.tol=1e-4 --config.train.steps=2000.
Writes WORKDIR/config.json, results.json, metrics.jsonl and checkpoints/;
rerunning resumes. A workdir belongs to the config that started it: a rerun
that changes the model, data or training is refused, more steps need --extend,
other test settings on a finished workdir --reevaluate.
--seeds trains several seeds in one program, into WORKDIR_sSEED each
(default runs/ALG_MODEL_sSEED); --config.train.data_parallel=True splits the
batches over all local devices.
"""


def registered() -> list:
  """The registries' names, as the config keys that take them (README,
  "Extending": a module of one's own adds to them)."""
  from dear_jax import processors, solver  # pylint: disable=g-import-not-at-top
  return [f'  {key}: {", ".join(names)}' for key, names in (
      ('model.processor', processors.PROCESSORS),
      ('dear.method', solver.SOLVERS), ('dear.grad', solver.GRADIENTS),
      ('data.options', clrs_lib.DATA_OPTIONS))]


def _help(fv) -> str:
  lines = [USAGE, 'registered names:', *registered(), '', 'flags:']
  for flag in sorted(sum(fv.flags_by_module_dict().values(), []),
                     key=lambda f: f.name):
    if flag.name == 'config':
      default = 'configs/default.py'
    else:
      default = flag.default
    lines.append(f'  --{flag.name}: {flag.help} (default: {default})')
  return '\n'.join(lines)


def _key_error(e) -> str:
  """ml_collections' KeyError text (quoted, with a "Did you mean" line) as one
  line: unknown config key 'hiden' (did you mean "hidden"?)."""
  text = (str(e.args[0]) if e.args else str(e)).replace('\\n', '\n')
  lines = [l.strip().strip('\\\'"') for l in text.splitlines() if l.strip()]
  msg = f'unknown config key {lines[0]!r}' if lines else 'unknown config key'
  hint = [l for l in lines[1:] if l.lower().startswith('did you mean')]
  if hint:
    msg += f' ({hint[0][0].lower() + hint[0][1:].split(" instead")[0]}?)'
  return msg + '; see configs/default.py for the allowed keys'


def apply_overrides(config, overrides: list):
  """`config` with `--config.SECTION.KEY=VALUE` flags applied by
  ml_collections' own parser (the one `--config=FILE` uses here: types,
  tuples, None placeholders); a bad flag is a one-line ValueError."""
  fv = flags.FlagValues()
  argv = ['dear_jax'] + last_overrides(overrides)
  try:
    config_flags.DEFINE_config_dict('config', config, flag_values=fv,
                                    lock_config=True, sys_argv=argv)
    fv(argv)
  except (KeyError, AttributeError) as e:
    raise ValueError(_key_error(e)) from None
  except flags.Error as e:
    raise ValueError(str(e).strip().splitlines()[0]) from None
  return fv.config


def main(argv=None) -> int:
  argv = sys.argv if argv is None else argv
  fv = flags.FlagValues()
  if any(a in ('--help', '-h', '--helpfull') for a in argv[1:]):
    _define_flags(fv, [argv[0]])
    print(_help(fv))
    return 0
  config_file = next((a.split('=', 1)[1] for a in argv[1:]
                      if a.startswith('--config=')), None)
  if config_file is not None and not os.path.isfile(config_file):
    preset = validation.preset_path(config_file)  # a preset, from anywhere
    if preset is None:
      _fail(f'config file {config_file!r} not found; use one of '
            f'{", ".join(validation.presets())}')
    argv = [f'--config={preset}' if a.startswith('--config=') else a
            for a in argv]
    config_file = preset
  try:
    if config_file is not None:  # each way a config file fails, in one line
      validation.load_config_file(config_file)
    argv = argv[:1] + last_overrides(argv[1:])
    _define_flags(fv, argv)  # config overrides are parsed here already
    fv(argv)
    config = resolve_config(fv, argv[1:])
    seeds = None
    if fv.seeds is not None:
      if fv.seed is not None:
        raise ValueError('give --seed=S or --seeds=S1,S2,..., not both')
      seeds = validation.check_seeds(fv.seeds)
    if fv.workdir is not None and not fv.workdir.strip():
      raise ValueError('--workdir is empty; give a folder, or leave the flag '
                       'out for runs/ALGORITHM_MODEL_sSEED')
  except (KeyError, AttributeError) as e:
    _fail(_key_error(e))
  except (flags.Error, ValueError, TypeError, OSError) as e:
    _fail(str(e).strip().splitlines()[0])

  compile_cache.enable(fv.jax_cache)
  loop.stop_on_sigterm()
  try:
    clrs_lib.check_algorithm(fv.algorithm)
    if seeds is None:
      seeds = [int(config.train.seed)]
      workdirs = [fv.workdir or default_workdir(fv.algorithm, config, seeds[0])]
    else:
      workdirs = [f'{fv.workdir}_s{s}' if fv.workdir else
                  default_workdir(fv.algorithm, config, s) for s in seeds]
    for workdir in workdirs:
      validation.check_workdir(workdir)
    results = train.train_seeds(config, seeds, workdirs, fv.algorithm,
                                progress=fv.progress, reevaluate=fv.reevaluate,
                                extend=fv.extend)
  except (ValueError, train.RunError) as e:
    _fail(str(e).strip().splitlines()[0])
  for r, workdir in zip(results, workdirs):
    print(train.summary_table(r))
    print(f'results: {os.path.join(workdir, "results.json")}')
  return 0


def default_workdir(algorithm: str, config, seed: int) -> str:
  return os.path.join('runs', f'{algorithm}_{config.model_kind}_s{seed}')


if __name__ == '__main__':
  sys.exit(main())
