"""The model factory: which reasoner a run config builds (with DEAR's
alignment teacher read from its run folder), and what it needs of the data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dear_jax import alignment
from dear_jax import clrs_lib
from dear_jax import run_config
from dear_jax.checkpoints import load_best_params
from dear_jax.dear import EquilibriumReasoner
from dear_jax.model import ModelConfig
from dear_jax.nar import StepwiseNAR


def build_model(config, spec: dict, sample_batch: dict):
  """The config's model_kind (`config`: a RunConfig, or a ConfigDict typed
  here)."""
  run = run_config.typed(config)
  if run.model_kind == 'nar':
    return StepwiseNAR(spec, sample_batch, run.model, run.nar.hint_mode,
                       run.nar.learn_termination, run.nar.max_steps_factor)
  teacher = None
  if run.dear.align_weight > 0:
    teacher = load_teacher(run.dear.align_teacher, spec, sample_batch,
                           run.model)
  return EquilibriumReasoner(spec, sample_batch, run.model, run.dear, teacher)


def uses_hints(config) -> bool:
  """Training batches keep hints for the NAR, and for DEAR's alignment
  (they give the teacher its step count)."""
  return config.model_kind == 'nar' or (config.model_kind == 'dear' and
                                        config.dear.align_weight > 0)


def model_label(config) -> str:
  """The model as compare names it, for the progress bar."""
  if config.model_kind == 'nar' and config.nar.hint_mode == 'none':
    return 'nar_lt' if config.nar.learn_termination else 'nar_nohint'
  return config.model_kind


def load_teacher(workdir: str, spec: dict, sample_batch: dict, model_cfg):
  """(StepwiseNAR, its best parameters) from a finished no-hint NAR run.

  Raises ValueError (one line) when the workdir is missing, not such a run,
  trained on another algorithm or with another hidden size."""
  results = alignment.read_teacher_results(workdir)
  teacher_spec = clrs_lib.processed_spec(results['algorithm'])
  if _spec_signature(teacher_spec) != _spec_signature(spec):
    raise ValueError(f'dear.align_teacher {workdir!r} was trained on '
                     f'{results["algorithm"]}, not on this run\'s algorithm')
  cfg = ModelConfig.from_section(results['config']['model'],
                                 f'{workdir}: model.')
  if int(cfg.hidden) != int(model_cfg.hidden):
    raise ValueError(f'dear.align_teacher {workdir!r} has hidden size '
                     f'{cfg.hidden}; this run has {model_cfg.hidden} (states '
                     'are compared, so they must match)')
  teacher = StepwiseNAR(spec, sample_batch, cfg, 'none')
  params = load_best_params(workdir)
  want = jax.eval_shape(teacher.init, jax.random.PRNGKey(0), sample_batch)
  same = jax.tree_util.tree_structure(want) == jax.tree_util.tree_structure(
      params) and all(np.shape(a) == b.shape for a, b in zip(
          jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(want)))
  if not same:
    raise ValueError(f'dear.align_teacher {workdir!r}: its parameters do not '
                     'fit a no-hint NAR of this algorithm and model section')
  return teacher, jax.tree_util.tree_map(jnp.asarray, params)


def _spec_signature(spec: dict) -> tuple:
  return tuple(sorted((k, tuple(v)) for k, v in spec.items()))
