"""Typed config sections (dear_jax/sections.py): every section refuses a bad
value in one line naming the key as typed, on the command line and when
built directly; models take the typed sections."""

import dataclasses
import types

import pytest

from configs import default
from dear_jax import input_pipeline, run, run_config, solver, train
from dear_jax.dear import DearConfig, EquilibriumReasoner
from dear_jax.model import ModelConfig
from dear_jax.nar import NarConfig, StepwiseNAR


@pytest.mark.parametrize('flag, message', [
    ('--config.model_kind=gnn', "model_kind must be one of dear, nar, got 'gnn'"),
    ('--config.data.eval_batch_size=0',
     'data.eval_batch_size must be positive, got 0'),
    ('--config.data.size_schedule=random',
     "data.size_schedule must be one of cycle, uniform, got 'random'"),
    ('--config.data.test_num_samples=-3', 'data.test_num_samples must be '
     'positive, or None for the official count, got -3'),
    ('--config.model.processor=mpnn',
     "model.processor must be one of triplet_gmpnn, gmpnn, got 'mpnn'"),
    ('--config.model.encoder_init=xavier',
     "model.encoder_init must be one of xavier_on_scalars, default, got "
     "'xavier'"),
    ('--config.model.nb_triplet_fts=0',
     'model.nb_triplet_fts must be an int >= 1, got 0'),
    ('--config.nar.hint_mode=all', 'nar.hint_mode must be one of '
     "encoded_decoded, decoded_only, none, got 'all'"),
    ('--config.dear.anderson_history=1',
     'dear.anderson_history=1; must be an int >= 2'),
    ('--config.dear.state_noise=-0.5', 'dear.state_noise must be >= 0, got -0.5'),
    ('--config.dear.stochastic_decay=0.0',
     'dear.stochastic_decay must be in (0, 1], got 0.0'),
    ('--config.dear.check_max_iter=0', 'dear.check_max_iter must be positive, '
     'got 0'),
    ('--config.train.learning_rate=0.0',
     'train.learning_rate must be positive, got 0.0'),
    ('--model=nar --hint_mode=all', '--hint_mode must be one of '
     "encoded_decoded, decoded_only, none, got 'all'"),
])
def test_bad_value_of_each_section_is_one_line_naming_the_key(
    capsys, flag, message):
  with pytest.raises(SystemExit) as e:
    run.main(['run', '--algorithm=bfs', *flag.split()])
  assert e.value.code == 2
  assert capsys.readouterr().err == f'error: {message}\n'


@pytest.mark.parametrize('cls, field, value, key', [
    (input_pipeline.DataConfig, 'batch_size', 0, 'data.batch_size'),
    (ModelConfig, 'hidden', -1, 'model.hidden'),
    (NarConfig, 'hint_mode', 'sometimes', 'nar.hint_mode'),
    (DearConfig, 'align_samples', 0, 'dear.align_samples'),
    (run_config.TrainConfig, 'steps', 0, 'train.steps'),
])
def test_sections_check_themselves_when_built(cls, field, value, key):
  cls()  # the defaults are valid
  with pytest.raises(ValueError, match=f'^{key} must'):
    cls(**{field: value})
  section = default.get_config()[key.split('.')[0]].to_dict()
  cls.from_section(section, '--')  # configs/default.py's section is valid
  section[field] = value
  with pytest.raises(ValueError, match=f'^--{field} must'):
    cls.from_section(section, '--')


def test_typed_default_config_holds_the_defaults():
  config = default.get_config()
  typed = run_config.check_config(config)
  assert typed.data == train.data_config(config)
  assert typed.data.val_num_samples is None  # the official count
  assert typed.model == ModelConfig.from_section(config.model)
  assert typed.model.hidden == config.model.hidden == 128
  assert typed.dear.solver == solver.config_from_section(config.dear)
  assert typed.dear.solver.tol == config.dear.tol == 1e-3
  assert typed.dear.jac_reg_weight == config.dear.jac_reg_weight
  assert typed.train.steps == config.train.steps
  with pytest.raises(ValueError, match='unknown config key dear.tolerance'):
    DearConfig.from_section(dict(config.dear.to_dict(), tolerance=1.0))


def test_models_take_typed_sections():
  spec = {}  # no probes: only the configs are read
  batch = dict(inputs={}, hints={}, outputs={}, lengths=None)
  model_cfg = ModelConfig(processor='gmpnn', hidden=8)
  nar = StepwiseNAR(spec, batch, model_cfg, 'decoded_only')
  assert (nar.hidden, nar.encode_hints, nar.decode_hints) == (8, False, True)
  dear_cfg = DearConfig(solver=solver.SolverConfig(tol=0.25), cgp=True,
                        cgp_shared_weights=True)
  dear = EquilibriumReasoner(spec, batch, model_cfg, dear_cfg)
  assert dear.solver_cfg.tol == 0.25 and dear.cgp_shared
  with pytest.raises(ValueError, match='needs model.processor=gmpnn'):
    EquilibriumReasoner(spec, batch, ModelConfig(hidden=8), dear_cfg)


def test_clrs_official_data_flags_are_named_as_typed():
  from baselines import clrs_official  # pylint: disable=g-import-not-at-top
  args = types.SimpleNamespace(**{
      f.name: None for f in dataclasses.fields(input_pipeline.DataConfig)})
  args.val_num_samples = '0'
  with pytest.raises(ValueError, match='^--val_num_samples must be positive'):
    clrs_official._data_config(args)  # pylint: disable=protected-access
  args.val_num_samples = 'none'
  assert clrs_official._data_config(args).val_num_samples is None  # pylint: disable=protected-access


def test_training_checks_the_config_it_is_given(tmp_path):
  """train_and_evaluate called from code gets the CLI's checks, before it
  writes anything."""
  config = default.get_config()
  config.train.grad_clip = 0.0
  with pytest.raises(ValueError, match='^train.grad_clip must be positive'):
    train.train_and_evaluate(config, str(tmp_path / 'w'), 'bfs',
                             progress=False)
  assert not (tmp_path / 'w').exists()
