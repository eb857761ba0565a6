"""Checks of user input beyond the config's sections (those check
themselves, dear_jax/run_config.py), each failing with one line that says
what is allowed."""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile

# The presets, configs/NAME.py: inside the package when installed
# (dear_jax.configs), beside it in a checkout.
_HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(_HERE, 'configs')
if not os.path.isdir(CONFIGS):
  CONFIGS = os.path.join(os.path.dirname(_HERE), 'configs')


def presets() -> list:
  """The preset files, as configs/NAME.py."""
  return sorted(f'configs/{f}' for f in os.listdir(CONFIGS)
                if f.endswith('.py') and not f.startswith('_'))


def preset_path(name: str) -> str | None:
  """The file of a preset given by name (`dear_paper`) or as
  `configs/dear_paper.py`, from any working directory; None for neither."""
  if name.endswith('.py'):
    rel = os.path.normpath(name)
  else:
    rel = os.path.join('configs', name + '.py')
  if rel not in [os.path.normpath(p) for p in presets()]:
    return None
  return os.path.join(os.path.dirname(CONFIGS), rel)


def preset(name: str):
  """get_config() of the preset `name` (`default`, `dear_paper`): how one
  preset builds on another, in a checkout and installed alike."""
  path = preset_path(name)
  if path is None:
    raise ValueError(f'no preset {name!r}; presets: {", ".join(presets())}')
  return load_config_file(path)


def check_seeds(seeds) -> list:
  """--seeds: distinct integers in numpy's seed range, as ints."""
  try:
    out = [int(s) for s in seeds]
  except ValueError as e:
    raise ValueError(f'--seeds must be comma-separated integers, got '
                     f'{",".join(seeds)!r}') from e
  if not out or len(set(out)) != len(out) or not all(
      0 <= s < 2**32 for s in out):
    raise ValueError('--seeds must be distinct integers in [0, 2**32), got '
                     f'{",".join(map(str, seeds))!r}')
  return out


def check_writable_dir(path: str, what: str) -> None:
  """Fails (one line) unless `path` is, or can be made, a folder this
  process can write in; creates nothing (a temporary file in its nearest
  existing folder is the probe)."""
  if not path or not str(path).strip():
    raise ValueError(f'{what} is empty; give a folder')
  full = os.path.abspath(os.path.expanduser(path))
  probe = full
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise ValueError(f'{what} {path!r} cannot be a folder: {probe} is a file')
  try:
    with tempfile.TemporaryFile(dir=probe):
      pass
  except OSError as e:
    raise ValueError(f'{what} {path!r} is not writable ({e.strerror})') from e


def check_workdir(workdir: str) -> None:
  """Fails early if the workdir cannot be written (before any training)."""
  check_writable_dir(workdir, 'workdir')


def _first_line(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  return f'{type(e).__name__}: {lines[0]}' if lines else type(e).__name__


def load_config_file(path: str):
  """get_config() of a config file (configs/*.py); a file that does not load
  (syntax error, an exception), has no get_config() or whose get_config()
  raises is a one-line ValueError naming it."""
  name = 'dear_jax_config_' + re.sub(r'\W', '_', os.path.basename(path))
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None:
    raise ValueError(f'config file {path!r} is not a Python file')
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ValueError(f'config file {path!r} has a syntax error at line '
                     f'{e.lineno}: {e.msg}') from None
  except Exception as e:  # pylint: disable=broad-except  # the file's own code
    raise ValueError(f'config file {path!r} failed to load '
                     f'({_first_line(e)})') from None
  get_config = getattr(module, 'get_config', None)
  if not callable(get_config):
    raise ValueError(f'config file {path!r} defines no get_config(); a config '
                     'file returns its ConfigDict from get_config(), as '
                     'configs/default.py')
  try:
    return get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'get_config() of config file {path!r} raised '
                     f'{_first_line(e)}') from None
