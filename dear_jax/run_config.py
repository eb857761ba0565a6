"""The run config: the command line's ConfigDict as one typed, checked
`RunConfig`, built once per run and passed down.

Each section's dataclass lives beside the code that reads it (DataConfig in
input_pipeline.py, ModelConfig in model.py, NarConfig in nar.py, DearConfig
in dear.py); `TrainConfig` is here, as the training loop's settings.
`typed` composes the sections, `check_config` adds what spans sections or
reads files.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from dear_jax import MODEL_KINDS
from dear_jax import alignment
from dear_jax import sections
from dear_jax import seeds
from dear_jax import validation
from dear_jax.dear import DearConfig, check_cgp_processor
from dear_jax.input_pipeline import DataConfig
from dear_jax.model import ModelConfig
from dear_jax.nar import NarConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig(sections.Section):
  """The `train` section, checked."""
  PREFIX = 'train.'
  steps: int = 500
  learning_rate: float = 1e-3
  grad_clip: float = 1.0
  eval_every: int = 50
  seed: int = 0
  # Split every training batch over all local devices (jax.sharding mesh;
  # batch_size must be a multiple of the device count). Same results to
  # float tolerance, so a finished run stays finished when it changes.
  data_parallel: bool = False

  @classmethod
  def check(cls, v, prefix: str) -> None:
    for name in ('steps', 'eval_every', 'learning_rate', 'grad_clip'):
      sections.positive(prefix + name, getattr(v, name))
    sections.int_at_least(prefix + 'seed', v.seed, 0)  # numpy's seed range
    if v.seed >= 2**32:
      raise ValueError(f'{prefix}seed must be < 2**32, got {v.seed}')


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """The command line's ConfigDict as typed, checked sections; its defaults
  (`RunConfig()`) are the project's, and configs/default.py is built from
  them (`to_config_dict`)."""
  model_kind: str = 'dear'  # MODEL_KINDS; --model sets it
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  nar: NarConfig = NarConfig()
  dear: DearConfig = DearConfig()
  train: TrainConfig = TrainConfig()

  @classmethod
  def from_config(cls, config) -> RunConfig:
    """Each section through its own checks; the first bad key fails."""
    sections.one_of('model_kind', config.model_kind, MODEL_KINDS)
    return cls(config.model_kind, DataConfig.from_section(config.data),
               ModelConfig.from_section(config.model),
               NarConfig.from_section(config.nar),
               DearConfig.from_section(config.dear),
               TrainConfig.from_section(config.train))

  def to_dict(self) -> dict:
    """As ConfigDict.to_dict() gives it (what results.json stores)."""
    return dict(model_kind=self.model_kind, **{
        f.name: getattr(self, f.name).to_dict()
        for f in dataclasses.fields(self) if f.name != 'model_kind'})

  def to_config_dict(self):
    """As the command line's ConfigDict (keys that may be None are typed
    placeholders, so that --config.data.val_num_samples=64 parses)."""
    return ml_collections.ConfigDict(dict(model_kind=self.model_kind, **{
        f.name: getattr(self, f.name).to_config_dict()
        for f in dataclasses.fields(self) if f.name != 'model_kind'}))

  def with_values(self, values: dict) -> RunConfig:
    """A copy with {'section.key': value} set (each section checked again)."""
    sections_ = {}
    for key, value in values.items():
      section, name = key.split('.')
      sections_.setdefault(section, {})[name] = value
    changed = {}
    for section, changes in sections_.items():
      part = getattr(self, section)
      if section == 'dear':
        solver_keys = {k: changes.pop(k) for k in list(changes)
                       if k in type(part.solver).__dataclass_fields__}
        if solver_keys:
          changes['solver'] = dataclasses.replace(part.solver, **solver_keys)
      changed[section] = dataclasses.replace(part, **changes)
    return dataclasses.replace(self, **changed)

  def with_seed(self, seed: int) -> RunConfig:
    return self.with_values({'train.seed': int(seed)})


def typed(config) -> RunConfig:
  """`config` (a ConfigDict, or a RunConfig, returned as it is) typed."""
  if isinstance(config, RunConfig):
    return config
  return RunConfig.from_config(config)


def check_config(config) -> RunConfig:
  """`typed`, then what spans sections or reads files."""
  run = typed(config)
  check_cgp_processor(run.dear, run.model)
  validation.check_writable_dir(run.data.cache_dir, 'data.cache_dir')
  if run.model_kind == 'dear' and run.dear.align_weight > 0:
    alignment.read_teacher_results(run.dear.align_teacher)
  if run.train.data_parallel:
    seeds.check_divisible(run.data.batch_size)
  check_pad_nodes(run)
  return run


# What data.pad_nodes supports: the node mask reaches these processors.
PAD_PROCESSORS = ('triplet_gmpnn', 'gmpnn')


def check_pad_nodes(run: RunConfig, spec: dict | None = None) -> None:
  """data.pad_nodes=True with what the node mask does not reach is refused
  (one line, naming the key), never computed wrong; with `spec` (the
  algorithm's processed spec), also the algorithms it cannot pad."""
  if not run.data.pad_nodes:
    return
  refused = [
      (run.model.processor not in PAD_PROCESSORS,
       f'model.processor={run.model.processor} (allowed: '
       f'{", ".join(PAD_PROCESSORS)})'),
      (run.train.data_parallel, 'train.data_parallel=True'),
      (run.model_kind == 'nar' and run.nar.learn_termination,
       'nar.learn_termination=True'),
      (run.model_kind == 'dear' and run.dear.cgp,
       'dear.cgp=True (the Cayley graph is built for the true size)'),
      (run.model_kind == 'dear' and run.dear.align_weight > 0,
       'dear.align_weight > 0'),
      (run.model_kind == 'dear' and run.dear.state_noise > 0,
       'dear.state_noise > 0'),
      (run.model_kind == 'dear' and run.dear.init_state_std > 0,
       'dear.init_state_std > 0'),
  ]
  if spec is not None:
    perm = sorted(k for k, (_, _, t) in spec.items()
                  if t == 'permutation_pointer')
    refused.append((bool(perm), f'an algorithm with permutation pointers '
                                f'({", ".join(perm)}: Sinkhorn over nodes)'))
  for bad, what in refused:
    if bad:
      raise ValueError(f'data.pad_nodes=True does not support {what}; set '
                       'data.pad_nodes=False')
