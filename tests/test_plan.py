"""baselines.plan: the DEAR-10 presets resolve to the models they promise."""

import pytest

from baselines import compare, plan


def _resolve(*flags):
  return plan.resolve(compare.parse_args(['--out=unused', *flags]))


@pytest.mark.parametrize('preset, seeds, steps', [('dear10', 3, 31250),
                                                  ('dear10-cpu', 1, 1000)])
def test_dear10_presets(preset, seeds, steps):
  p = _resolve(f'--preset={preset}')
  assert p.algorithms == plan.PAPER_ALGORITHMS and len(p.algorithms) == 10
  assert set(p.models) == {'dear', 'dear_cgp', 'dear_align', 'nar',
                           'nar_nohint', 'clrs_official'}
  # The teacher trains before the model aligned to it.
  assert p.models.index('nar_nohint') < p.models.index('dear_align')
  assert p.seeds == tuple(range(seeds)) and p.train_steps == steps
  c = p.configs
  assert c['dear_cgp'].dear.cgp and not c['dear'].dear.cgp
  assert c['dear_align'].dear.align_weight == 0.01
  assert c['dear_align'].dear.stochastic_alpha == 0.1
  assert c['dear'].dear.align_weight == 0 == c['dear'].dear.stochastic_alpha
  # "DEAR (default)": the default preset's solver, not DEAR's release.
  assert c['dear'].dear.grad == 'ift' and c['dear'].dear.tol == 1e-3
  assert c['nar_nohint'].nar.hint_mode == 'none'
  assert c['nar'].nar.hint_mode == 'encoded_decoded'


def test_aligned_model_needs_its_teacher_in_the_sweep():
  with pytest.raises(plan.CompareError, match='add nar_nohint to --models'):
    _resolve('--preset=dear10-cpu', '--models=dear,dear_align')


def test_core_presets_keep_their_four_models():
  for preset in ('smoke', 'paper'):
    assert _resolve(f'--preset={preset}').models == plan.CORE_MODELS


@pytest.mark.parametrize('flag', ['--train_steps=0', '--eval_every=0'])
def test_zero_steps_is_refused_not_read_as_unset(flag):
  """0 once fell back to the config's value (`or`); it is an error."""
  with pytest.raises(plan.CompareError, match='must be >= 1'):
    _resolve('--preset=paper', flag)
  assert _resolve('--preset=paper').train_steps == 31250  # None: the config's


# DEAR's release, as stated in its code (processor, solver, optimiser).
RELEASE = {'model.processor': 'gmpnn', 'dear.tol': 0.1, 'dear.tol_mode': 'rel',
           'dear.max_iter_train': 40, 'dear.max_iter_eval': 40,
           'dear.grad': 'jfb', 'dear.jac_reg_weight': 1e-4,
           'dear.anderson_history': 6, 'dear.anderson_ridge': 1e-4,
           'dear.anderson_ridge_relative': False, 'dear.gate_bias': 0.0,
           'dear.method': 'anderson', 'model.hidden': 128,
           'train.learning_rate': 3e-4}


def _get(config, key):
  section, name = key.split('.')
  return getattr(getattr(config, section), name)


def test_dear_paper_beside_dear_in_one_sweep():
  """`dear_paper` is DEAR's release on the sweep's data and budget; `dear`
  keeps the sweep's dear config."""
  p = _resolve('--preset=dear10-cpu', '--models=dear,dear_paper,nar_lt')
  assert p.models == ('dear', 'dear_paper', 'nar_lt')
  paper, ours = p.configs['dear_paper'], p.configs['dear']
  for key, value in RELEASE.items():
    assert _get(paper, key) == value, key
  assert ours.model.processor == 'triplet_gmpnn' and ours.dear.tol == 1e-3
  assert paper.train.steps == 1000 == ours.train.steps
  assert paper.train.eval_every == 100
  assert paper.data.to_dict() == ours.data.to_dict()
  assert paper.data.train_sizes == (4, 7, 11, 13, 16)
  lt = p.configs['nar_lt']
  assert lt.model_kind == 'nar' and lt.nar.hint_mode == 'none'
  assert lt.nar.learn_termination


def test_dear_paper_takes_the_sweeps_overrides():
  p = _resolve('--preset=dear10-cpu', '--models=dear_paper',
               '--config.dear.tol=0.05', '--config.model.hidden=16')
  assert p.configs['dear_paper'].dear.tol == 0.05
  assert p.configs['dear_paper'].model.hidden == 16


@pytest.mark.parametrize('path, steps, sizes', [
    ('configs/dear_paper.py', 31250, tuple(range(8, 17))),
    ('configs/dear_paper_cpu.py', 1000, (4, 7, 11, 13, 16))])
def test_dear_paper_presets_build_a_gated_max_mpnn_dear(path, steps, sizes):
  from dear_jax import clrs_lib, factory, processors, splits, train  # pylint: disable=g-import-not-at-top
  from tests.conftest import tiny_data_config  # pylint: disable=g-import-not-at-top
  config = plan.load_config_file(path)
  for key, value in RELEASE.items():
    assert _get(config, key) == value, key
  assert config.train.steps == steps and config.data.train_sizes == sizes
  config.model.hidden = 8
  import tempfile  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as d:
    batch = splits.load_split('bfs', 'val', tiny_data_config(d)).batches[0]
  model = factory.build_model(config, clrs_lib.processed_spec('bfs'), batch)
  assert isinstance(model.processor, processors.GatedMaxMPNN)
  assert model.processor.gate_bias == 0.0
  s = model.solver_cfg
  assert (s.tol, s.max_iter_eval, s.grad, s.anderson_ridge_relative) == (
      0.1, 40, 'jfb', False)
  assert model.jac_reg_weight == 1e-4


def test_sharper_models_are_their_controls_with_one_option():
  """results/sharper's models: dear and nar_lt as the study ran them, with
  only the option changed."""
  p = _resolve('--preset=dear10-cpu', '--models=dear,nar_lt,dear_softmax,'
               'dear_decay,nar_lt_softmax,nar_lt_decay')
  c = {m: cfg.to_dict() for m, cfg in p.configs.items()}
  for base in ('dear', 'nar_lt'):
    for option, key, value in (('softmax', 'aggregation', 'softmax'),
                               ('decay', 'latent_decay', 0.9)):
      got, want = c[f'{base}_{option}'], c[base]
      assert got['model'][key] == value != want['model'][key]
      got['model'][key] = want['model'][key]
      assert got == want


def test_a_variant_added_to_the_table_is_a_model_compare_trains():
  """One Variant (baselines/variants.py) is all a new compared model takes:
  its overrides and hint mode reach its config, its teacher trains first,
  its colour reaches the plots."""
  from baselines import plots, variants  # pylint: disable=g-import-not-at-top
  new = variants.Variant('nar_small', 'nar', 'none', {'model.hidden': 8},
                         teacher='nar', colour='tab:brown')
  variants.add(new)
  try:
    p = _resolve('--models=nar_small,nar')
    assert p.models == ('nar', 'nar_small')
    config = p.configs['nar_small']
    assert (config.model.hidden, config.nar.hint_mode) == (8, 'none')
    assert p.configs['nar'].model.hidden == 128
    assert plots._color('nar_small', 0) == 'tab:brown'  # pylint: disable=protected-access
    assert not variants.official('nar_small')
    with pytest.raises(plan.CompareError, match='add nar to --models'):
      _resolve('--models=nar_small')
  finally:
    del variants.VARIANTS['nar_small']
