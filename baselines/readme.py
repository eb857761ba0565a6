"""README.md's and docs/dear10-cpu.md's generated blocks, rewritten from the
committed results:

    python -m baselines.readme [REPO_DIR]

Each block lies between `<!-- NAME:start -->` and `<!-- NAME:end -->`;
tests fail when a committed file differs from what this writes. Every file
is rendered before any is written, so a missing marker changes nothing.
"""

from __future__ import annotations

import os
import sys

from . import report
from . import sharper

README = 'README.md'
GENERATED_DOC = 'docs/dear10-cpu.md'


def generated_files(repo: str = '.') -> dict:
  """{file: {block name: lines}} for every file with generated blocks."""
  return {README: dict(quickstart=report.quickstart_lines(repo),
                       study=report.study_lines(repo),
                       sharper=sharper.readme_lines(repo)),
          GENERATED_DOC: dict(summary=report.summary_lines(repo),
                              seed0=report.seed0_lines(repo))}


def _markers(name: str) -> tuple:
  return f'<!-- {name}:start -->', f'<!-- {name}:end -->'


def render(text: str, blocks: dict) -> str:
  """TEXT with each marked block replaced by its generated lines."""
  for name, lines in blocks.items():
    start, end = _markers(name)
    head, sep, rest = text.partition(start + '\n')
    _, sep2, tail = rest.partition(end)
    if not sep or not sep2:
      raise ValueError(f'no "{start}" ... "{end}" block')
    text = head + start + '\n' + '\n'.join(lines) + '\n' + end + tail
  return text


def main(argv: list) -> int:
  if len(argv) > 1 or (argv and argv[0].startswith('-')):
    print('error: usage: python -m baselines.readme [REPO_DIR] (rewrites '
          f'the generated blocks of {README} and {GENERATED_DOC})',
          file=sys.stderr)
    return 2
  repo = argv[0] if argv else '.'
  new = {}
  try:  # every file is rendered before any is written
    files = generated_files(repo)
  except (OSError, ValueError, KeyError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for name, blocks in files.items():
    path = os.path.join(repo, name)
    try:
      with open(path) as f:
        text = f.read()
      new[name] = (text, render(text, blocks))
    except (OSError, ValueError) as e:
      print(f'error: {path}: {e}', file=sys.stderr)
      return 2
  for name, (old, text) in new.items():
    path = os.path.join(repo, name)
    if text != old:
      with open(path, 'w') as f:
        f.write(text)
    print(f'{path}: {"rewritten" if text != old else "already up to date"}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
