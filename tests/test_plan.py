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
