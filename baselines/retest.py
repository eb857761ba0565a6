"""A finished run tested again with other test settings, into a folder of
its own: the source run and its results stay as they are.

    python -m baselines.retest --source=DIR/runs/bfs/dear_softmax/s0 \
        --dest=DIR/runs/bfs/dear_softmax_at/s0 \
        --config.model.adaptive_temperature=True

Only test settings may change (dear_jax.train.EVALUATION_KEYS: the test
sizes and counts, DEAR's checks, model.test_aggregation,
model.adaptive_temperature); anything else would need training, and is
refused. The source folder (checkpoints included) is copied to a hidden
sibling, tested there with --reevaluate's code (its results.json then
records `reevaluated_with`), and renamed to DEST once its results.json is
written: a report never reads a half-made DEST, and an interrupted retest
starts again. A DEST already tested with these settings is left alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys


class RetestError(Exception):
  """A problem the user can fix: one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message}\n')


def _parse(argv):
  p = _Parser(prog='python -m baselines.retest',
              description='Test a finished run again with other test '
                          'settings, into a folder of its own.')
  p.add_argument('--source', required=True, help='a finished run folder')
  p.add_argument('--dest', required=True, help='the re-tested copy')
  p.add_argument('--quiet', action='store_true', help='no progress bars')
  args, rest = p.parse_known_args(argv)
  args.overrides = [a for a in rest if a.startswith('--config.')]
  unknown = [a for a in rest if not a.startswith('--config.')]
  if unknown:
    p.error(f'unrecognized arguments: {" ".join(unknown)}')
  if not args.overrides:
    p.error('give the test settings to change, --config.SECTION.KEY=VALUE')
  return args


def retest_config(source: str, overrides: list):
  """(the source run's stored config with `overrides` applied, typed and
  checked; its algorithm). RetestError when SOURCE holds no finished run or
  an override is not a test setting."""
  from . import plan  # pylint: disable=g-import-not-at-top
  from dear_jax import run_config, train  # pylint: disable=g-import-not-at-top
  from dear_jax.results import REQUIRED_KEYS, read_json  # pylint: disable=g-import-not-at-top
  bad = [o.split('=', 1)[0][len('--config.'):] for o in overrides]
  bad = [k for k in bad if k not in train.EVALUATION_KEYS]
  if bad:
    raise RetestError(f'--config.{bad[0]} changes the trained model, not its '
                      f'test; a retest may set only '
                      f'{", ".join(train.EVALUATION_KEYS)}')
  try:
    done = read_json(os.path.join(source, 'results.json'), REQUIRED_KEYS,
                     'train that run again')
  except ValueError as e:
    raise RetestError(str(e).splitlines()[0]) from None
  if done is None:
    raise RetestError(f'{source} holds no finished run (no results.json)')
  try:
    # as the command line's ConfigDict (a None key a typed placeholder)
    config = run_config.typed(train.stored_config(
        done['config'], source)).to_config_dict()
    config = plan.apply_overrides(config, overrides)
    run = run_config.check_config(config)
  except (plan.CompareError, ValueError) as e:
    raise RetestError(str(e).splitlines()[0]) from None
  return run, done['algorithm']


def retest(source: str, dest: str, overrides: list,
           progress: bool = True) -> dict:
  """DEST's results: SOURCE's best parameters tested with `overrides`."""
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  from dear_jax import validation  # pylint: disable=g-import-not-at-top
  config, algorithm = retest_config(source, overrides)
  if os.path.abspath(source) == os.path.abspath(dest):
    raise RetestError('--dest must differ from --source (the source run '
                      'keeps its results)')
  try:
    validation.check_writable_dir(os.path.dirname(os.path.abspath(dest)),
                                  '--dest\'s folder')
  except ValueError as e:
    raise RetestError(str(e)) from None
  if os.path.exists(dest):
    if not os.path.exists(os.path.join(dest, 'results.json')):
      raise RetestError(f'{dest} exists without results.json; move it away')
    try:  # tested with these settings: its results; else a one-line refusal
      return train.train_and_evaluate(config, dest, algorithm, progress)
    except train.RunError as e:
      raise RetestError(str(e).splitlines()[0]) from None
  parent, name = os.path.split(os.path.abspath(dest))
  work = os.path.join(parent, f'.retest-{name}')  # a sibling: same relpaths
  shutil.rmtree(work, ignore_errors=True)  # an interrupted retest's copy
  shutil.copytree(source, work)
  try:
    results = train.train_and_evaluate(config, work, algorithm, progress,
                                       reevaluate=True)
  except train.RunError as e:
    raise RetestError(str(e).splitlines()[0]) from None
  os.replace(work, dest)
  return results


def main(argv=None) -> int:
  args = _parse(sys.argv[1:] if argv is None else argv)
  try:
    r = retest(args.source, args.dest, args.overrides, not args.quiet)
  except RetestError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'{args.dest}: test score {r["test_score"]:.4f}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
