"""One set of defaults: configs/default.py is the typed sections' dataclass
defaults, generated; the values are those the preset file held as literals
(kept here as the reference, so that no run changes)."""

import dataclasses

import ml_collections
import pytest
from ml_collections.config_dict import placeholder

from configs import default
from dear_jax import run_config
from dear_jax import solver
from dear_jax.dear import DearConfig
from dear_jax.input_pipeline import DataConfig
from dear_jax.model import ModelConfig
from dear_jax.nar import NarConfig

SECTIONS = dict(data=DataConfig, model=ModelConfig, nar=NarConfig,
                dear=DearConfig, train=run_config.TrainConfig)


def _literal_default():
  """configs/default.py as it was written by hand, value by value."""
  c = ml_collections.ConfigDict()
  c.model_kind = 'dear'
  c.data = ml_collections.ConfigDict(dict(
      train_sizes=(4, 7, 11, 13, 16), size_schedule='cycle', batch_size=32,
      val_length=16, test_length=64, val_num_samples=placeholder(int),
      test_num_samples=placeholder(int), eval_batch_size=32,
      cache_dir='~/.cache/dear_jax/datasets', recorded_stream=False,
      better_search=False, extra_test_lengths=(), extra_test_num_samples=100,
      extra_test_max_seconds=placeholder(float), options=(), pad_nodes=False))
  c.model = ml_collections.ConfigDict(dict(
      processor='triplet_gmpnn', hidden=128, nb_triplet_fts=8,
      encoder_init='xavier_on_scalars', aggregation='max', latent_decay=1.0,
      test_aggregation=placeholder(str), adaptive_temperature=False))
  c.nar = ml_collections.ConfigDict(dict(
      hint_mode='encoded_decoded', learn_termination=False,
      max_steps_factor=6.0))
  c.dear = ml_collections.ConfigDict(dict(
      method='anderson', max_iter_train=40, max_iter_eval=100, tol=1e-3,
      tol_mode='rel', anderson_history=6, anderson_ridge=1e-4,
      anderson_ridge_relative=True, anderson_beta=1.0, damping=1.0,
      broyden_history=0, grad='ift', phantom_steps=5, phantom_tau=0.5,
      backward_solver='anderson', backward_tol=1e-3, backward_max_iter=40,
      jac_reg_weight=0.1, state_noise=0.0, init_state_std=0.0, gate_bias=0.0,
      spectral_norm=False, stochastic_alpha=0.0, stochastic_decay=0.998,
      stochastic_max_steps=9, cgp=False, cgp_shared_weights=False,
      align_weight=0.0, align_teacher=placeholder(str), align_samples=1,
      diagnostics=True, check_tol=1e-5, check_max_iter=1000, check_graphs=8))
  c.train = ml_collections.ConfigDict(dict(
      steps=500, learning_rate=1e-3, grad_clip=1.0, eval_every=50, seed=0,
      data_parallel=False))
  return c


def _field_defaults(cls) -> dict:
  """Each field's default as the dataclass declares it (DearConfig's solver
  flattened into its keys, as the config file writes them)."""
  out = {}
  for f in dataclasses.fields(cls):
    if f.name == 'solver':
      out.update(_field_defaults(solver.SolverConfig))
    else:
      out[f.name] = f.default
  return out


def test_the_default_preset_is_the_dataclass_defaults():
  config = default.get_config()
  assert set(config.keys()) == {'model_kind', *SECTIONS}
  assert config.model_kind == run_config.RunConfig().model_kind
  for name, cls in SECTIONS.items():
    section = config[name].to_dict()
    fields = _field_defaults(cls)
    assert set(section) == set(fields), name  # a key per field, both ways
    for key, value in section.items():
      assert value == fields[key] and type(value) is type(fields[key]), (
          name, key)


def test_the_defaults_are_the_values_the_preset_held():
  """Runs do not change: the generated preset equals the hand-written one,
  value and type, placeholders included."""
  new, old = default.get_config(), _literal_default()
  assert new.to_dict() == old.to_dict()
  for name in SECTIONS:
    for key in old[name].keys():
      assert type(new[name][key]) is type(old[name][key]), (name, key)


@pytest.mark.parametrize('section, key, kind', [
    ('data', 'val_num_samples', int), ('data', 'test_num_samples', int),
    ('dear', 'align_teacher', str), ('model', 'test_aggregation', str)])
def test_keys_that_may_be_none_are_typed_placeholders(section, key, kind):
  config = default.get_config()
  assert config[section][key] is None
  config[section][key] = kind(7)  # takes its type
  with pytest.raises(TypeError):
    config[section][key] = [1]
