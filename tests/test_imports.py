"""The import layers (.importlinter), checked by import-linter: no module
imports itself back through any chain, the dear_jax stack runs one way
(CLI, training, loop and factory, run config, reasoners, model parts), the
models never reach the data side, and dear_jax never imports the comparison
harness, the benchmarks or the experiments."""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TREES = ('dear_jax', 'baselines', 'benchmarks', 'experiments')


def _lint(cwd: str) -> subprocess.CompletedProcess:
  lint = os.path.join(os.path.dirname(sys.executable), 'lint-imports')
  env = dict(os.environ, PYTHONPATH=cwd)
  return subprocess.run([lint, '--no-cache'], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300,
                        check=False)


def test_the_layers_hold():
  proc = _lint(REPO)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
  assert '0 broken' in proc.stdout


@pytest.mark.parametrize('module, line, contract', [
    # a cycle hidden in a function: validation <-> train
    ('validation', 'def _late():\n  from dear_jax import train  # noqa\n',
     'No module imports itself back'),
    # a model part that loads the data side
    ('nar', 'from dear_jax import input_pipeline  # noqa\n',
     'The models never import the data side'),
    # the package reaching for the harness
    ('loop', 'def _harness():\n  import baselines.plan  # noqa\n',
     'dear_jax never imports'),
])
def test_a_broken_layer_fails(tmp_path, module, line, contract):
  """The same check on a copy of the tree with one bad import added."""
  for tree in TREES:
    shutil.copytree(os.path.join(REPO, tree), tmp_path / tree,
                    ignore=shutil.ignore_patterns('__pycache__', 'results'))
  shutil.copy(os.path.join(REPO, '.importlinter'), tmp_path)
  path = tmp_path / 'dear_jax' / f'{module}.py'
  path.write_text(path.read_text() + '\n\n' + line)
  proc = _lint(str(tmp_path))
  assert proc.returncode != 0, proc.stdout[-4000:]
  assert f'{contract}' in proc.stdout
  broken = [l for l in proc.stdout.splitlines() if l.endswith('BROKEN')]
  assert broken and all(contract in l or 'stack' in l for l in broken), broken
