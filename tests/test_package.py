"""pyproject.toml: the checkout installs as a package that imports from anywhere.

The checkout's sources are copied to a temporary folder first (pip builds in
the source tree and would leave build/ and *.egg-info in the checkout), then
installed with `pip install --no-deps --target`, without the network when the
environment has setuptools (--no-build-isolation). The installed modules are
imported in a subprocess whose working directory is outside the checkout and
whose PYTHONPATH is the target, so they cannot come from the checkout.
"""

import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('dear_jax', 'baselines', 'configs', 'benchmarks')
FILES = ('pyproject.toml', 'requirements.txt', 'README.md', 'LICENSE')


def _requirements() -> list:
  with open(os.path.join(REPO, 'requirements.txt')) as f:
    lines = [line.split('#')[0].strip() for line in f]
  return [line for line in lines if line]


def _normalise(req: str) -> str:
  """'numpy>=2.0,<2.5' and 'numpy<2.5,>=2.0' compare equal."""
  name, spec = re.match(r'([A-Za-z0-9_.\-\[\]]+)\s*(.*)', req).groups()
  name = re.sub(r'[-_.]+', '-', name).lower()
  return name + ','.join(sorted(s.strip() for s in spec.split(',') if s))


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('package')
  src, target = tmp / 'src', tmp / 'site'
  src.mkdir()
  ignore = shutil.ignore_patterns('__pycache__', '*.pyc')
  for name in PACKAGES:
    shutil.copytree(os.path.join(REPO, name), src / name, ignore=ignore)
  for name in FILES:
    shutil.copy(os.path.join(REPO, name), src / name)
  cmd = [sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-compile',
         '--disable-pip-version-check', '-q', '--target', str(target),
         str(src)]
  try:
    import setuptools  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    cmd.insert(4, '--no-build-isolation')  # no download needed
  except ImportError:
    pass  # pip fetches setuptools into an isolated build environment
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return target


def test_installed_package_imports_from_another_directory(installed, tmp_path):
  script = textwrap.dedent("""
      import json, os, sys, types
      import dear_jax, dear_jax.train, dear_jax.solver, dear_jax.dear
      import baselines, baselines.compare, baselines.plan
      import configs.default, configs.dear_paper
      import benchmarks.run
      mods = [dear_jax, dear_jax.train, baselines.compare, configs.default,
              configs.dear_paper, benchmarks.run]
      # compare's --dear_config=configs/... resolves next to the package.
      path = baselines.plan.REPO
      cfg = baselines.plan.load_config_file('configs/dear_paper.py')
      # --config=dear_paper: the installed preset, by name.
      from dear_jax import validation
      preset = validation.preset_path('dear_paper')
      mods.append(types.SimpleNamespace(__file__=preset))
      print(json.dumps(dict(files=[m.__file__ for m in mods], plan_repo=path,
                            steps=cfg.train.steps,
                            hidden=configs.default.get_config().model.hidden)))
  """)
  env = dict(os.environ, PYTHONPATH=str(installed), TF_CPP_MIN_LOG_LEVEL='3')
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True,
                        text=True, cwd=tmp_path, env=env, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  import json  # pylint: disable=g-import-not-at-top
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  for f in out['files']:
    assert os.path.realpath(f).startswith(os.path.realpath(installed)), f
  assert os.path.realpath(out['plan_repo']) == os.path.realpath(installed)
  assert out['steps'] == 31250 and out['hidden'] == 128


def test_dependencies_are_the_requirements_pins(installed):
  """requirements.txt is the one list: the wheel requires exactly its lines."""
  (dist,) = [d for d in os.listdir(installed) if d.endswith('.dist-info')]
  with open(installed / dist / 'METADATA') as f:
    metadata = f.read()
  requires = re.findall(r'^Requires-Dist: (.+)$', metadata, re.M)
  assert sorted(map(_normalise, requires)) == sorted(
      map(_normalise, _requirements()))
  assert re.search(r'^Requires-Python: >=3\.11$', metadata, re.M)


def _python(script: str, **kw) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS='cpu', **kw.pop('env', {}))
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)
  return subprocess.run([sys.executable, '-c', textwrap.dedent(script)],
                        capture_output=True, text=True, cwd=REPO, env=env,
                        timeout=300, check=False, **kw)


def test_models_import_neither_dm_clrs_nor_tensorflow():
  """The models see the data side through dear_jax.batches only: importing
  them loads no module that can pull in dm-clrs (and TensorFlow)."""
  proc = _python("""
      import json, sys
      import dear_jax.model, dear_jax.nar, dear_jax.dear, dear_jax.alignment
      import dear_jax.encoders, dear_jax.decoders, dear_jax.losses
      import dear_jax.processors, dear_jax.solver, dear_jax.batches
      print(json.dumps(sorted(m for m in sys.modules if m in (
          'clrs', 'tensorflow', 'dear_jax.clrs_lib', 'dear_jax.input_pipeline',
          'dear_jax.splits'))))
  """)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().splitlines()[-1] == '[]'


@pytest.mark.parametrize('fail', [False, True])
def test_clrs_import_is_quiet_unless_it_fails(tmp_path, fail):
  """clrs_lib.clrs() captures what the import writes to fd 2 (TensorFlow's
  C++ start-up lines) and writes it back only when the import fails. A stand-in
  `clrs` package writes to fd 2 itself, so dm-clrs is never imported here."""
  fake = tmp_path / 'clrs'
  fake.mkdir()
  (fake / '__init__.py').write_text(textwrap.dedent("""
      import os
      os.write(2, b'C++ start-up line\\n')
      if os.environ.get('FAKE_CLRS_FAIL'):
        raise ImportError('dm-clrs is broken')
      __version__ = 'stand-in'
  """))
  proc = _python("""
      import os
      from dear_jax import clrs_lib
      print(clrs_lib.clrs().__version__, os.environ['TF_CPP_MIN_LOG_LEVEL'])
  """, env=dict(PYTHONPATH=f'{tmp_path}{os.pathsep}{REPO}',
                FAKE_CLRS_FAIL='1' if fail else ''))
  if fail:
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert 'C++ start-up line' in lines
    assert lines.index('C++ start-up line') < lines.index(
        'ImportError: dm-clrs is broken')
  else:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ''
    # set before the import (nothing imported jax first in this process)
    assert proc.stdout.split() == ['stand-in', '3']
