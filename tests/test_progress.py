"""dear_jax/progress.py: "compiling…" and no ETA until a step has run that did
not compile, then the rate and ETA of such steps, on a fake clock."""

import io

import pytest
import tqdm

from dear_jax import progress


class Clock:

  def __init__(self):
    self.t = 1000.0

  def __call__(self):
    return self.t


def _bar(clock, **kw):
  return progress.ProgressBar(file=io.StringIO(), mininterval=0, miniters=1,
                              clock=clock, **kw)


def _shown(bar) -> dict:
  """What the bar would print: its postfix, ETA and rate as text."""
  d = bar.format_dict
  text = tqdm.tqdm.format_meter(
      **dict(d, bar_format='{postfix}|{remaining}|{remaining_s}|{rate_fmt}'))
  postfix, remaining, remaining_s, rate = text.split('|')
  return dict(postfix=postfix.strip(', '), remaining=remaining,
              remaining_s=float(remaining_s), rate=rate.strip())


@pytest.mark.parametrize('initial', [0, 500])  # a fresh run, a resumed one
def test_eta_leaves_out_the_steps_that_compiled(initial):
  clock, total = Clock(), 1000
  bar = _bar(clock, total=total, initial=initial)
  clock.t += 30.0  # before any step: compiling, however long it takes
  assert _shown(bar)['postfix'] == progress.COMPILING
  assert _shown(bar)['remaining'] == '?'
  # Three steps compile (the first of each training size), 60 s each; the
  # loop's postfix comes after the first.
  for _ in range(3):
    clock.t += 60.0
    bar.step(compiled=True)
    bar.set_postfix(loss='0.123', refresh=False)
    shown = _shown(bar)
    assert shown['postfix'] == f'{progress.COMPILING}, loss=0.123'
    assert shown['remaining'] == '?'
  # Then 40 steps in 10 s (a validation pause among them counts, as it will
  # recur), a fourth size compiling among them: 4 steps/s.
  for i in range(41):
    clock.t += {20: 2.2, 30: 45.0}.get(i, 0.2)
    bar.step(compiled=i == 30)
  done = initial + 3 + 41
  expected = (total - done) * 10.0 / 40
  shown = _shown(bar)
  assert shown['postfix'] == 'loss=0.123'
  assert shown['remaining_s'] == pytest.approx(expected)
  assert shown['rate'] == '4.00it/s'
  # tqdm's own average would count the compiling.
  plain = (total - done) / (44 / (30 + 180 + 10 + 45))
  assert plain > 5 * expected
  bar.close()


def test_a_quiet_bar_draws_nothing():
  out = io.StringIO()
  bar = progress.ProgressBar(file=out, total=10, disable=True, clock=Clock())
  bar.step(compiled=False)
  bar.close()
  assert out.getvalue() == ''


def test_the_bar_is_drawn_with_compiling_before_the_first_step():
  out = io.StringIO()
  bar = progress.ProgressBar(file=out, total=10, desc='dear bfs',
                             clock=Clock())
  assert progress.COMPILING in out.getvalue()
  bar.close()
