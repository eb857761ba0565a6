"""The DEAR-10 tables of docs/dear10-cpu.md (and the penalty folder's README)
are written by hand; every figure in them must be the committed results.csv's
of the seed the table names, rounded as shown, so the text cannot drift from
the data when runs are added or re-run."""

import csv
import json
import math
import os

import numpy as np
import pytest

from baselines import readme
from baselines import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = 'results/dear10-cpu'
STUDY = 'results/dear10'
PENALTY = 'results/dear10-cpu-penalty/jac0.1'
NO_RUN = '–'
DOC = 'docs/dear10-cpu.md'


def _rows(folder: str, seed: str = '0') -> dict:
  """One seed's rows of a committed results.csv, by (algorithm, model)."""
  with open(os.path.join(REPO, folder, 'results.csv')) as f:
    return {(r['algorithm'], r['model']): r for r in csv.DictReader(f)
            if r['seed'] == seed}


def _readme_table(header_start: str, readme: str = DOC) -> list:
  """The body rows of the table whose header begins so, as cell lists."""
  with open(os.path.join(REPO, readme)) as f:
    lines = [l.strip() for l in f]
  starts = [i for i, l in enumerate(lines) if l.startswith(header_start)]
  assert len(starts) == 1, f'{readme} has {len(starts)} tables "{header_start}"'
  rows = []
  for line in lines[starts[0] + 2:]:
    if not line.startswith('|'):
      break
    rows.append([c.strip().strip('*') for c in line.strip('|').split('|')])
  assert rows, f'{readme} table "{header_start}" has no rows'
  return rows


def _score(row) -> str:
  return NO_RUN if row is None else f'{100 * float(row["test_score"]):.1f}'


def _converged(row) -> str:
  return f'{100 * (1 - float(row["nonconverged_fraction"])):.1f}'


def test_test_score_table_is_the_committed_seed0_scores():
  sweep, penalty = _rows(SWEEP), _rows(PENALTY)
  columns = [(sweep, 'dear'), (penalty, 'dear'), (sweep, 'dear_cgp'),
             (sweep, 'nar_nohint'), (sweep, 'nar'), (sweep, 'clrs_official')]
  rows = _readme_table('| algorithm | DEAR (0.01) | DEAR, 0.1 |')
  assert sorted(r[0] for r in rows) == sorted({a for a, _ in sweep})
  wrong = []
  for algorithm, *cells in rows:
    want = [_score(rows_.get((algorithm, model))) for rows_, model in columns]
    want.append(f'{report.PUBLISHED_TRIPLET_GMPNN[algorithm][0]:.1f}')
    if cells != want:
      wrong.append(f'{algorithm}: table {cells}, results {want}')
  assert not wrong, '\n'.join(wrong)


def test_answer_and_time_table_is_the_committed_seed0_runs():
  sweep = _rows(SWEEP)
  rows = _readme_table('| algorithm | DEAR iterations / true steps |')
  wrong = []
  for algorithm, iters, converged, distance, ms in rows:
    dear = sweep[(algorithm, 'dear')]
    want_iters = (f'{float(dear["solver_iters_mean"]):.1f} / '
                  f'{float(dear["algo_steps_mean"]):.1f}')
    want_conv = f'{_converged(dear)} %'
    want_dist = f'{float(dear["fixed_point_distance_mean"]):.4f}'
    times = []
    for model in ('dear', 'nar_nohint', 'nar', 'clrs_official'):
      row = sweep.get((algorithm, model))
      times.append(NO_RUN if row is None else
                   f'{1000 * float(row["eval_seconds_per_graph"]):.0f}')
    want = [want_iters, want_conv, want_dist, ' / '.join(times)]
    if [iters, converged, distance, ms] != want:
      wrong.append(f'{algorithm}: table {[iters, converged, distance, ms]}, '
                   f'results {want}')
  assert not wrong, '\n'.join(wrong)


def test_cgp_table_is_the_committed_seed0_runs():
  sweep = _rows(SWEEP)
  rows = _readme_table('| algorithm | test %: DEAR → + CGP |')
  wrong = []
  for algorithm, scores, nohint, iters, *_ in rows:
    dear, cgp = sweep[(algorithm, 'dear')], sweep[(algorithm, 'dear_cgp')]
    want = [f'{_score(dear)} → {_score(cgp)}',
            _score(sweep.get((algorithm, 'nar_nohint'))),
            f'{float(dear["solver_iters_mean"]):.1f} → '
            f'{float(cgp["solver_iters_mean"]):.1f}']
    if [scores.replace('*', ''), nohint, iters] != want:
      wrong.append(f'{algorithm}: table {[scores, nohint, iters]}, '
                   f'results {want}')
  assert not wrong, '\n'.join(wrong)


@pytest.mark.parametrize('seed, first_column',
                         [('0', 'algorithm'), ('1', 'algorithm (seed 1)')])
def test_penalty_readme_tables_are_the_committed_runs(seed, first_column):
  sweep, penalty = _rows(SWEEP, seed), _rows(PENALTY, seed)
  rows = _readme_table(f'| {first_column} | test, 0.01 | test, 0.1 |',
                       os.path.join(os.path.dirname(PENALTY), 'README.md'))
  assert len(rows) == sum(1 for _, model in penalty if model == 'dear')
  wrong = []
  for algorithm, low, high, nohint, converged, distance, rho, iters in rows:
    a, b = sweep[(algorithm, 'dear')], penalty[(algorithm, 'dear')]

    def pair(key, fmt, a=a, b=b):
      return ' → '.join(f'{float(r[key]):{fmt}}' for r in (a, b))

    want = [f'{float(a["test_score"]):.3f}', f'{float(b["test_score"]):.3f}',
            f'{float(sweep[(algorithm, "nar_nohint")]["test_score"]):.3f}',
            f'{_converged(a)} → {_converged(b)}',
            pair('fixed_point_distance_mean', '.4f'),
            pair('spectral_radius_mean', '.2f'),
            f'{pair("solver_iters_mean", ".1f")} '
            f'({float(a["algo_steps_mean"]):.1f})']
    got = [low, high, nohint, converged, distance, rho, iters]
    if got != want:
      wrong.append(f'{algorithm}: table {got}, results {want}')
  assert not wrong, '\n'.join(wrong)


# README's generated blocks (baselines/readme.py).


def _readme(name: str = 'README.md') -> str:
  with open(os.path.join(REPO, name)) as f:
    return f.read()


def _block(name: str, file: str = 'README.md') -> str:
  text = _readme(file)
  start, end = f'<!-- {name}:start -->', f'<!-- {name}:end -->'
  assert text.count(start) == 1 and text.count(end) == 1, name
  return text.split(start)[1].split(end)[0]


def _scores(folder: str) -> tuple:
  """(results.csv's rows, {(algorithm, model): {seed: test score in %}})."""
  with open(os.path.join(REPO, folder, 'results.csv')) as f:
    rows = list(csv.DictReader(f))
  score = {}
  for r in rows:
    score.setdefault((r['algorithm'], r['model']), {})[r['seed']] = (
        100 * float(r['test_score']))
  return rows, score


def test_readme_generated_blocks_are_current():
  """README's (and docs') blocks are what `python -m baselines.readme`
  writes from the committed results: rerun it after the results change."""
  files = readme.generated_files(REPO)
  assert set(files) == {'README.md', DOC}
  for name, blocks in files.items():
    text = _readme(name)
    assert readme.render(text, blocks) == text, (
        f'{name} is stale: run python -m baselines.readme')


def test_readme_study_block_is_the_paired_t_intervals_of_the_study():
  """Every cell of README's study table against scipy on the study's
  results.csv: the means over seeds, and each paired difference's t interval
  (cut to the range of a difference) and verdict."""
  from scipy import stats as scipy_stats  # pylint: disable=g-import-not-at-top
  rows, score = _scores(STUDY)
  block = _block('study')
  lines = [l for l in block.splitlines() if l.startswith('| ')
           and not l.startswith(('| algorithm', '| mean'))]
  algorithms = sorted({r['algorithm'] for r in rows if r['model'] == 'dear'})
  assert [l.split('|')[1].strip() for l in lines] == algorithms
  for line in lines:
    a, *cells = [c.strip() for c in line.strip('|').split('|')]
    for model, cell in zip(('dear', 'nar_lt', 'nar_nohint'), cells):
      got = score.get((a, model), {})
      assert cell == (f'{sum(got.values()) / len(got):.1f} (n={len(got)})'
                      if got else '–'), (a, model)
    x = score[a, 'dear']
    for base, cell in zip(('nar_lt', 'nar_nohint'), cells[3:]):
      y = score.get((a, base), {})
      shared = sorted(set(x) & set(y))
      if not shared:
        assert cell == '–'
        continue
      mean = sum(x[s] - y[s] for s in shared) / len(shared)
      if len(shared) == 1:
        assert cell == f'{mean:+.1f} (one seed)', (a, base)
        continue
      ci = scipy_stats.ttest_rel([x[s] for s in shared],
                                 [y[s] for s in shared]).confidence_interval()
      verdict = ('cannot tell apart' if ci.low <= 0 <= ci.high
                 else 'better' if ci.low > 0 else 'worse')
      assert cell == (f'{mean:+.1f} [{max(ci.low, -100):+.1f}, '
                      f'{min(ci.high, 100):+.1f}] ({verdict})'), (a, base)
  runs = len(rows)
  assert f'so far {runs} runs on {len(algorithms)} of 10' in block
  # the mean over algorithms: its Welch-Satterthwaite t interval, by hand
  mean_row = [l for l in block.splitlines() if l.startswith('| mean')][0]
  cells = [c.strip() for c in mean_row.strip('|').split('|')][4:]
  for base, cell in zip(('nar_lt', 'nar_nohint'), cells):
    groups = []
    for a in algorithms:
      x, y = score[a, 'dear'], score.get((a, base), {})
      shared = sorted(set(x) & set(y))
      if shared:
        groups.append([x[s] - y[s] for s in shared])
    mean = sum(sum(g) / len(g) for g in groups) / len(groups)
    if any(len(g) < 2 for g in groups):
      assert cell.startswith(f'{mean:+.1f} over {len(groups)} (no interval'), (
          cell)
      continue
    w = [float(np.var(g, ddof=1)) / len(g) for g in groups]
    df = sum(w) ** 2 / sum(v ** 2 / (len(g) - 1) for v, g in zip(w, groups))
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(sum(w)) / len(groups)
    assert cell.startswith(f'{mean:+.1f} [{max(mean - half, -100):+.1f}, '
                           f'{min(mean + half, 100):+.1f}] over '
                           f'{len(groups)} ('), cell


def test_readme_summary_is_the_paired_t_intervals_of_results_csv():
  """Every row of the summary against scipy's paired t-test on the committed
  results.csv (an independent computation of the same intervals)."""
  from scipy import stats as scipy_stats  # pylint: disable=g-import-not-at-top
  rows, score = _scores(SWEEP)
  lines = [l for l in _block('summary', DOC).splitlines()
           if l.startswith('| ') and not l.startswith(('| algorithm',
                                                       '| mean'))]
  algorithms = sorted({r['algorithm'] for r in rows})
  assert [l.split('|')[1].strip() for l in lines] == algorithms
  verdicts = []
  for line in lines:
    a, seeds, dear, nar, diff, verdict = [c.strip() for c in
                                          line.strip('|').split('|')]
    x, y = score[a, 'dear'], score[a, 'nar_nohint']
    shared = sorted(set(x) & set(y))
    dx, dy = [x[s] for s in shared], [y[s] for s in shared]
    ci = scipy_stats.ttest_rel(dx, dy).confidence_interval(0.95)
    low, high = max(ci.low, -100), min(ci.high, 100)  # a difference's range
    mean = sum(dx) / len(dx) - sum(dy) / len(dy)
    want = [str(len(shared)), f'{sum(dx) / len(dx):.1f}',
            f'{sum(dy) / len(dy):.1f}',
            f'{mean:+.1f} [{low:+.1f}, {high:+.1f}]',
            'indistinguishable' if ci.low <= 0 <= ci.high
            else ('better' if ci.low > 0 else 'worse')]
    assert [seeds, dear, nar, diff, verdict] == want, a
    verdicts.append(want[-1])
  same = verdicts.count('indistinguishable')
  assert f'cannot be told apart on {same} of {len(lines)} algorithms' in (
      _block('summary', DOC))
  protocol = os.path.join(REPO, SWEEP, 'protocol.json')
  with open(protocol) as f:
    weight = json.load(f)['protocol']['models']['dear']['dear'][
        'jac_reg_weight']
  assert f'dear.jac_reg_weight={weight:g}' in _block('summary', DOC)


def test_readme_quickstart_figures_are_the_recorded_run():
  with open(os.path.join(REPO, readme.QUICKSTART_RUN)) as f:
    run = json.load(f)
  block = _block('quickstart')
  assert f'test score **{run["test_score"]:.3f}**' in block
  assert f'Its {run["train_steps"]} training steps took ' \
         f'{run["train_seconds"] / 60:.1f} min' in block
  assert 'a 2-core CPU' in block  # the run's hardware line names 2 cores
  assert 'Xeon' not in block and 'EPYC' not in block


def test_render_refuses_a_file_without_markers(tmp_path, capsys):
  with pytest.raises(ValueError, match='summary:start'):
    readme.render('# no blocks\n', {'summary': ['x']})
  (tmp_path / 'README.md').write_text('# no blocks\n')
  assert readme.main([str(tmp_path)]) == 2
  assert (tmp_path / 'README.md').read_text() == '# no blocks\n'
  assert capsys.readouterr().err.startswith('error: ')
  assert readme.main(['--bogus']) == 2
