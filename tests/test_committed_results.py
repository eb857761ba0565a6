"""The committed comparison folders under results/: each results.csv and
results.md is what baselines.compare's report makes of the run folders next to
it (a reader can re-derive every table), and nothing committed points at a
path of the machine that wrote it."""

import glob
import os
import re
import subprocess

import pytest

from baselines import compare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (a sweep still running its first invocation has written no results.md yet)
FOLDERS = sorted(os.path.relpath(os.path.dirname(p), REPO) for p in glob.glob(
    os.path.join(REPO, 'results', '**', 'results.md'), recursive=True)
                 if os.path.exists(os.path.join(os.path.dirname(p),
                                                'protocol.json')))
# An absolute path of a machine: a home, a scratch or a temporary folder.
MACHINE_PATH = re.compile(r'(?<![\w.])/(?:work|tmp|home|root|Users|mnt|var)/')


def test_there_are_committed_comparisons():
  assert 'results/dear10-cpu' in FOLDERS, FOLDERS


@pytest.mark.parametrize('folder', FOLDERS)
def test_tables_are_rederived_from_the_run_folders(folder, tmp_path):
  out = os.path.join(REPO, folder)
  _, rows = compare.write_tables(out, str(tmp_path))
  assert rows, f'{folder} holds no finished run'
  for name in ('results.csv', 'results.md'):
    with open(os.path.join(out, name)) as f:
      committed = f.read()
    assert (tmp_path / name).read_text() == committed, (
        f'{folder}/{name} is not its runs\' report: run python -m '
        f'baselines.compare --report_only --out={folder}')


SHARPER, SHARPER_CONTROL = 'results/sharper', 'results/dear10'


def test_sharper_tables_are_rederived_from_the_run_folders(tmp_path):
  """sharper.csv is what baselines.sharper gathers from the study's run
  folders and its controls', and sharper.md what it writes from that CSV."""
  from baselines import rows as rows_lib, sharper  # pylint: disable=g-import-not-at-top
  out = os.path.join(REPO, SHARPER)
  if not os.path.exists(os.path.join(out, 'sharper.csv')):
    pytest.skip('no sharper run has landed yet')
  again = tmp_path / 'sharper.csv'
  rows_lib.write_csv(str(again), sharper.gather(
      out, os.path.join(REPO, SHARPER_CONTROL)), sharper.COLUMNS)
  hint = (f'run python -m baselines.sharper --out={SHARPER} '
          f'--control={SHARPER_CONTROL}')
  with open(os.path.join(out, 'sharper.csv')) as f:
    assert again.read_text() == f.read(), hint
  sharper.write_all(str(tmp_path), sharper.read_csv(str(again)))
  with open(os.path.join(out, 'sharper.md')) as f:
    assert (tmp_path / 'sharper.md').read_text() == f.read(), hint


def _tracked_files() -> list:
  try:
    listed = subprocess.run(['git', 'ls-files', '-z'], cwd=REPO, check=True,
                            capture_output=True).stdout.decode()
  except (OSError, subprocess.CalledProcessError):
    pytest.skip('not a git checkout')
  return [p for p in listed.split('\0') if p]


def test_nothing_committed_points_at_a_machine_path():
  hits = []
  for path in _tracked_files():
    if path.endswith(('.png', '.pdf', '.ipynb')) or path.startswith('tests/'):
      continue  # images; notebooks are checked output-free; tests name paths
    try:
      with open(os.path.join(REPO, path), encoding='utf-8') as f:
        text = f.read()
    except (UnicodeDecodeError, FileNotFoundError):
      continue
    m = MACHINE_PATH.search(text)
    if m:
      line = text.count('\n', 0, m.start()) + 1
      hits.append(f'{path}:{line}')
  assert not hits, hits
