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
      import json, os, sys
      import dear_jax, dear_jax.train, dear_jax.solver, dear_jax.dear
      import baselines, baselines.compare, baselines.plan
      import configs.default, configs.dear_paper
      import benchmarks.run
      mods = [dear_jax, dear_jax.train, baselines.compare, configs.default,
              configs.dear_paper, benchmarks.run]
      # compare's --dear_config=configs/... resolves next to the package.
      path = baselines.plan.REPO
      cfg = baselines.plan.load_config_file('configs/dear_paper.py')
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
