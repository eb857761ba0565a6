"""Checks of user input, each failing with one line that says what is allowed."""

from __future__ import annotations

import os
import tempfile

from dear_jax.nar import HINT_MODES
from dear_jax.processors import PROCESSORS
from dear_jax.solver import config_from_section

MODEL_KINDS = ('dear', 'nar')


def _positive(name: str, value) -> None:
  if not value > 0:
    raise ValueError(f'{name} must be positive, got {value}')


def check_config(config) -> None:
  if config.model_kind not in MODEL_KINDS:
    raise ValueError(f'model must be one of {", ".join(MODEL_KINDS)}, got '
                     f'{config.model_kind!r}')
  for name in ('steps', 'eval_every', 'learning_rate', 'grad_clip'):
    _positive(f'train.{name}', config.train[name])
  for name in ('batch_size', 'eval_batch_size', 'val_length', 'test_length'):
    _positive(f'data.{name}', config.data[name])
  for name in ('val_num_samples', 'test_num_samples'):
    value = config.data[name]
    if value is not None and not value > 0:
      raise ValueError(f'data.{name} must be positive, or None for the '
                       f'official count, got {value}')
  if not config.data.train_sizes or min(config.data.train_sizes) < 2:
    raise ValueError('data.train_sizes must be graph sizes >= 2, got '
                     f'{config.data.train_sizes}')
  if config.data.size_schedule not in ('cycle', 'uniform'):
    raise ValueError('data.size_schedule must be cycle or uniform, got '
                     f'{config.data.size_schedule!r}')
  if config.model.processor not in PROCESSORS:
    raise ValueError(f'model.processor must be one of {", ".join(PROCESSORS)},'
                     f' got {config.model.processor!r}')
  _positive('model.hidden', config.model.hidden)
  if config.nar.hint_mode not in HINT_MODES:
    raise ValueError(f'hint_mode must be one of {", ".join(HINT_MODES)}, got '
                     f'{config.nar.hint_mode!r}')
  for name in ('jac_reg_weight', 'state_noise', 'init_state_std'):
    if not config.dear[name] >= 0:
      raise ValueError(f'dear.{name} must be >= 0, got {config.dear[name]}')
  for name in ('check_tol', 'check_max_iter'):
    _positive(f'dear.{name}', config.dear[name])
  _check_dear_parts(config)
  config_from_section(config.dear, 'dear.')
  if config.train.get('data_parallel', False):
    from dear_jax import seeds  # pylint: disable=g-import-not-at-top
    seeds.check_divisible(config.data.batch_size)


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


def _check_dear_parts(config) -> None:
  """DEAR's stochastic iterations, CGP and alignment keys."""
  d = config.dear
  if not 0 <= d.stochastic_alpha < 1:
    raise ValueError('dear.stochastic_alpha must be in [0, 1) (0: off), got '
                     f'{d.stochastic_alpha}')
  if not 0 < d.stochastic_decay <= 1:
    raise ValueError('dear.stochastic_decay must be in (0, 1], got '
                     f'{d.stochastic_decay}')
  if not d.stochastic_max_steps >= 1:
    raise ValueError('dear.stochastic_max_steps must be an int >= 1, got '
                     f'{d.stochastic_max_steps}')
  if d.cgp and d.cgp_shared_weights and config.model.processor != 'gmpnn':
    raise ValueError('dear.cgp_shared_weights=True needs model.processor=gmpnn'
                     f' (got {config.model.processor}); use '
                     'dear.cgp_shared_weights=False for a separate Cayley '
                     'processor')
  if not d.align_weight >= 0:
    raise ValueError(f'dear.align_weight must be >= 0, got {d.align_weight}')
  if not d.align_samples >= 1:
    raise ValueError('dear.align_samples must be an int >= 1, got '
                     f'{d.align_samples}')
  if config.model_kind == 'dear' and d.align_weight > 0:
    from dear_jax import alignment  # pylint: disable=g-import-not-at-top
    alignment.read_teacher_results(d.align_teacher)


def check_workdir(workdir: str) -> None:
  """Fails early if the workdir cannot be written (before any training)."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ValueError(f'workdir {workdir!r} is not writable ({e.strerror})'
                     ) from e
