"""The DEAR-10 tables of docs/dear10-cpu.md (and the penalty folder's README)
are written by hand; every figure in them must be the committed results.csv's
of the seed the table names, rounded as shown, so the text cannot drift from
the data when runs are added or re-run."""

import csv
import os

import pytest

from baselines import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = 'results/dear10-cpu'
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
