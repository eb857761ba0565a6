"""The notebooks in notebooks/: committed without outputs, up to date with
notebooks/generate.py, and run end to end in a real Jupyter kernel (ipykernel,
this interpreter) under the smoke budget DEAR_JAX_NOTEBOOK_SMOKE=1, every
cell tagged 'figure' showing at least one PNG.

The kernels share one fresh temporary folder (TMPDIR), so results.ipynb reuses
the tiny comparison that dear_vs_stepwise.ipynb trained (pytest runs the
parameters in the order listed).
"""

import importlib.util
import os
import sys
import time

import nbformat
import pytest

import conftest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(REPO, 'notebooks')
NOTEBOOKS = ('quickstart', 'dear_vs_stepwise', 'implicit_gradients', 'results',
             'pretrained')
FIGURE_TAG = 'figure'


def _generator():
  """notebooks/generate.py as a module (loaded once)."""
  name = 'dear_jax_notebooks_generate'
  if name not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(NB_DIR, 'generate.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
  return sys.modules[name]


def _read(name: str):
  return nbformat.read(os.path.join(NB_DIR, f'{name}.ipynb'), as_version=4)


def test_every_notebook_is_listed():
  found = sorted(f[:-6] for f in os.listdir(NB_DIR) if f.endswith('.ipynb'))
  assert found == sorted(NOTEBOOKS)
  assert sorted(_generator().NOTEBOOKS) == sorted(NOTEBOOKS)


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_committed_notebook_has_no_outputs_and_matches_generator(name):
  nb = _read(name)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert cell.outputs == [] and cell.execution_count is None, (
          f'{name}.ipynb is committed with outputs: regenerate it with '
          'python notebooks/generate.py')
  assert nb == _generator().build(name), (
      f'{name}.ipynb differs from notebooks/generate.py: edit the generator '
      'and rerun it')
  gen = _generator()
  first = nb.cells[0]
  assert first.cell_type == 'markdown'
  assert gen.colab_url(name) in first.source.splitlines()[0]
  setup = nb.cells[1].source
  assert "'google.colab' in sys.modules" in setup
  assert f"GITHUB_REPO = '{gen.GITHUB_REPO}'" in setup
  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  assert gen.colab_url(name) in readme, f'README does not link {name}'


@pytest.fixture(scope='module')
def kernel_env(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('notebooks')
  env = dict(os.environ)
  env.update(DEAR_JAX_NOTEBOOK_SMOKE='1', TMPDIR=str(tmp),
             TF_CPP_MIN_LOG_LEVEL='3', PYTHONUNBUFFERED='1')
  env.pop('MPLBACKEND', None)  # the kernel's inline backend draws the PNGs
  if conftest.JAX_CACHE_DIR:  # the tests' compilation cache (conftest.py)
    env.update(JAX_COMPILATION_CACHE_DIR=conftest.JAX_CACHE_DIR,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return env


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs_in_a_kernel_with_smoke_budget(name, kernel_env):
  from jupyter_client.kernelspec import NATIVE_KERNEL_NAME  # pylint: disable=g-import-not-at-top
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  nb = _read(name)
  client = NotebookClient(
      nb, kernel_name=NATIVE_KERNEL_NAME, timeout=600,
      resources={'metadata': {'path': NB_DIR}})  # the kernel's working dir
  t0 = time.time()
  client.execute(env=kernel_env)  # raises CellExecutionError on any error
  seconds = time.time() - t0
  figures = [c for c in nb.cells if FIGURE_TAG in c.metadata.get('tags', [])]
  assert figures, f'{name}: no cell is tagged {FIGURE_TAG!r}'
  for cell in figures:
    pngs = [o for o in cell.outputs if 'image/png' in o.get('data', {})]
    assert pngs, f'{name}: a figure cell drew no PNG:\n{cell.source[:300]}'
  errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
            if o.output_type == 'error']
  assert not errors
  print(f'{name}: {seconds:.0f} s')
