"""Checks of user input, each failing with one line that says what is allowed.

The config's sections check themselves (dear_jax/sections.py); `typed`
composes them into a RunConfig, `check_config` adds what spans sections.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

from dear_jax import MODEL_KINDS
from dear_jax import sections
from dear_jax.dear import DearConfig, check_cgp_processor
from dear_jax.input_pipeline import DataConfig
from dear_jax.model import ModelConfig
from dear_jax.nar import NarConfig
from dear_jax.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """The command line's ConfigDict as typed, checked sections."""
  model_kind: str
  data: DataConfig
  model: ModelConfig
  nar: NarConfig
  dear: DearConfig
  train: TrainConfig


def typed(config) -> RunConfig:
  """Each section through its own checks; the first bad key fails."""
  sections.one_of('model_kind', config.model_kind, MODEL_KINDS)
  return RunConfig(config.model_kind, DataConfig.from_section(config.data),
                   ModelConfig.from_section(config.model),
                   NarConfig.from_section(config.nar),
                   DearConfig.from_section(config.dear),
                   TrainConfig.from_section(config.train))


def check_config(config) -> RunConfig:
  """`typed`, then what spans sections or reads files."""
  run = typed(config)
  check_cgp_processor(run.dear, run.model)
  if run.model_kind == 'dear' and run.dear.align_weight > 0:
    from dear_jax import alignment  # pylint: disable=g-import-not-at-top
    alignment.read_teacher_results(run.dear.align_teacher)
  if run.train.data_parallel:
    from dear_jax import seeds  # pylint: disable=g-import-not-at-top
    seeds.check_divisible(run.data.batch_size)
  return run


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


def check_workdir(workdir: str) -> None:
  """Fails early if the workdir cannot be written (before any training)."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ValueError(f'workdir {workdir!r} is not writable ({e.strerror})'
                     ) from e
