"""compare's memory column: XLA's compiled memory of one training step of
each model (dear_jax.profiling), cached beside the run folders."""

from __future__ import annotations

import dataclasses
import json
import os

from . import variants
from .plan import Plan, run_dir
from dear_jax import profiling


def official_step_mb(spec: dict, batch: dict, hint_mode: str):
  """compiled_mb of dm-clrs BaselineModel's jitted feedback step."""
  import jax  # pylint: disable=g-import-not-at-top
  from . import clrs_official  # pylint: disable=g-import-not-at-top
  from dear_jax import clrs_lib  # pylint: disable=g-import-not-at-top
  feedback = clrs_lib.to_feedback(batch, spec)
  m = clrs_official.build_model(spec, feedback, hint_mode=hint_mode)
  m.init(feedback.features, 1)
  # pylint: disable=protected-access
  return profiling.compiled_mb(m.jitted_feedback.lower(
      m._device_params, jax.random.PRNGKey(0), feedback, m._device_opt_state,
      0).compile())


def _largest_train_batch(algorithm: str, data_cfg, keep_hints: bool):
  from dear_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  largest = max(input_pipeline.training_sizes(algorithm, data_cfg.train_sizes))
  cfg = dataclasses.replace(data_cfg, train_sizes=(largest,))
  return next(input_pipeline.TrainStream(algorithm, cfg, 0,
                                         keep_hints=keep_hints))


def train_step_mb(plan: Plan, algorithm: str, model: str) -> float | None:
  """Total compiled MB of `model`'s step on a batch of the largest training
  size of its data config."""
  from dear_jax import clrs_lib  # pylint: disable=g-import-not-at-top
  from dear_jax import factory, run_config, train  # pylint: disable=g-import-not-at-top
  spec = clrs_lib.processed_spec(algorithm)
  if variants.official(model):
    batch = _largest_train_batch(algorithm, plan.official_data, True)
    mb = official_step_mb(spec, batch, variants.VARIANTS[model].hint_mode)
  else:
    config = plan.configs[model]
    if variants.teacher(model):  # the step includes the teacher: the sweep's own
      config = run_config.typed(config).with_values({
          'dear.align_teacher': os.path.abspath(run_dir(
              plan.out, algorithm, variants.teacher(model), plan.seeds[0]))})
    batch = _largest_train_batch(algorithm, train.data_config(config),
                                 factory.uses_hints(config))
    mb = train.train_step_mb(config, spec, batch, batch)
  return None if mb is None else mb['total']


def cached_train_step_mb(plan: Plan, algorithm: str, model: str):
  """train_step_mb, kept in DIR/runs/ALG/MODEL/memory.json (seed-free)."""
  path = os.path.join(plan.out, 'runs', algorithm, model, 'memory.json')
  from dear_jax.results import read_json  # pylint: disable=g-import-not-at-top
  cached = read_json(path, ('train_step_memory_mb',),
                     'delete it (a cache, measured again)')
  if cached is not None:
    return cached['train_step_memory_mb']
  try:
    mb = train_step_mb(plan, algorithm, model)
  except Exception as e:  # pylint: disable=broad-except
    # A missing column must not lose the finished runs' tables.
    print(f'  memory of {algorithm}/{model} not measured: '
          f'{type(e).__name__}: {str(e).splitlines()[0][:160]}')
    return None
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(dict(train_step_memory_mb=mb, what='XLA compiled memory of one '
                   'train step (temp + arguments + outputs - aliased), batch '
                   'of the largest training size'), f, indent=2)
  return mb
