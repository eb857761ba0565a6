"""pyproject.toml: the checkout builds a wheel whose one top-level name is
dear_jax, and the installed copy runs from another folder.

The checkout is copied to a temporary folder first (pip builds in the source
tree and would leave build/ and *.egg-info in the checkout), built into a
wheel with `pip wheel --no-deps` (without the network when the environment has
setuptools: --no-build-isolation) and installed with `pip install --no-deps
--target`. The installed copy runs in subprocesses whose working directory is
outside the checkout, holds packages named `baselines` and `configs` of its
own (as a user's folder may), and whose PYTHONPATH is the target, with this
environment's dependencies.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Not needed to build; results/ alone is tens of MB.
_SKIP = ('.git', 'results', 'runs', 'workdir', 'build', '.venv', '__pycache__',
         '*.pyc', '*.egg-info', '.pytest_cache')
# What only the tests, the notebooks' kernel and compare's Ray executor use.
EXTRAS = {'test': ('pytest', 'pytest-xdist', 'import-linter', 'grimp'),
          'notebook': ('nbclient', 'nbformat', 'ipykernel'),
          'ray': ('ray',)}


def _requirements() -> list:
  with open(os.path.join(REPO, 'requirements.txt')) as f:
    lines = [line.split('#')[0].strip() for line in f]
  return [line for line in lines if line]


def _name(req: str) -> str:
  return re.sub(r'[-_.]+', '-', re.match(r'[A-Za-z0-9_.\-]+', req)[0]).lower()


def _normalise(req: str) -> str:
  """'numpy>=2.0,<2.5' and 'numpy<2.5,>=2.0' compare equal."""
  spec = req[len(re.match(r'[A-Za-z0-9_.\-]+', req)[0]):]
  return _name(req) + ','.join(sorted(s.strip() for s in spec.split(',') if s))


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('package')
  src, out = tmp / 'src', tmp / 'wheel'
  shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*_SKIP))
  cmd = [sys.executable, '-m', 'pip', 'wheel', '--no-deps',
         '--disable-pip-version-check', '-q', '-w', str(out), str(src)]
  try:
    import setuptools  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    cmd.insert(4, '--no-build-isolation')  # no download needed
  except ImportError:
    pass  # pip fetches setuptools into an isolated build environment
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  (path,) = out.iterdir()
  return path


@pytest.fixture(scope='module')
def installed(wheel, tmp_path_factory):
  target = tmp_path_factory.mktemp('site')
  proc = subprocess.run(
      [sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-compile',
       '--disable-pip-version-check', '-q', '--target', str(target),
       str(wheel)], capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return target


@pytest.fixture
def elsewhere(tmp_path):
  """A working directory with packages named as the checkout's folders,
  which an install that took those top-level names would import."""
  for name in ('baselines', 'configs', 'benchmarks'):
    (tmp_path / name).mkdir()
    (tmp_path / name / '__init__.py').write_text(
        f'raise ImportError("the working directory\'s {name} was imported")\n')
  return tmp_path


def _installed_run(target, cwd, *args) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(target), TF_CPP_MIN_LOG_LEVEL='3',
             JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, *args], capture_output=True,
                        text=True, cwd=cwd, env=env, timeout=300, check=False)


def test_wheel_has_one_top_level_name(wheel):
  """Everything installs under dear_jax: the checkout's baselines/ and
  configs/ as dear_jax.baselines and dear_jax.configs."""
  with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
  top = {n.split('/')[0] for n in names}
  (dist,) = top - {'dear_jax'}
  assert dist.endswith('.dist-info')
  for folder, package in (('dear_jax', 'dear_jax'),
                          ('baselines', 'dear_jax/baselines'),
                          ('configs', 'dear_jax/configs')):
    for root, _, files in os.walk(os.path.join(REPO, folder)):
      rel = os.path.relpath(root, os.path.join(REPO, folder))
      for f in files:
        if f.endswith('.py'):
          assert os.path.normpath(os.path.join(package, rel, f)) in names, f


def test_installed_copy_runs_from_another_folder(installed, elsewhere):
  """`python -m dear_jax.run --help` and the compare entry point run from
  the installed copy; a folder's own `baselines` and `configs` shadow
  nothing."""
  proc = _installed_run(installed, elsewhere, '-m', 'dear_jax.run', '--help')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.startswith('Train and test DEAR')
  proc = _installed_run(installed, elsewhere, '-m',
                        'dear_jax.baselines.compare', '--help')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'usage: python -m dear_jax.baselines.compare' in proc.stdout


def test_installed_presets_by_name(installed, elsewhere):
  """The presets load by name from the installed copy (one building on
  another, as dear_paper_cpu on dear_paper on default) with the values the
  checkout's presets have; --config=dear_paper reaches the CLI's checks after
  the preset loaded."""
  from dear_jax import validation  # pylint: disable=g-import-not-at-top
  names = [os.path.basename(p)[:-3] for p in validation.presets()]
  assert {'default', 'dear_paper', 'dear_paper_cpu'} <= set(names)
  script = textwrap.dedent(f"""
      import json, sys
      from dear_jax import validation
      from dear_jax.baselines import plan
      out = dict(configs=validation.CONFIGS, plan=plan.__file__,
                 presets={{n: validation.preset(n).to_dict() for n in {names}}},
                 compare=plan.load_config_file('dear_paper').to_dict())
      print(json.dumps(out, default=repr))
  """)
  proc = _installed_run(installed, elsewhere, '-c', script)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  for path in (out['configs'], out['plan']):
    assert os.path.realpath(path).startswith(os.path.realpath(installed)), path
  ours = {n: json.loads(json.dumps(validation.preset(n).to_dict(),
                                   default=repr)) for n in names}
  assert out['presets'] == ours
  assert out['compare'] == ours['dear_paper']
  assert ours['dear_paper_cpu']['train']['steps'] == 1000
  assert ours['dear_paper']['dear']['grad'] == 'jfb'
  proc = _installed_run(installed, elsewhere, '-m', 'dear_jax.run',
                        '--config=dear_paper', '--seed=1', '--seeds=1,2')
  assert proc.returncode == 2
  assert proc.stderr == 'error: give --seed=S or --seeds=S1,S2,..., not both\n'


def test_heavy_extras_are_not_imported(installed, elsewhere):
  """Ray, the notebook kernel and pytest load only where used: not by the
  CLI or compare's modules."""
  script = textwrap.dedent("""
      import json, sys
      import dear_jax.run, dear_jax.train
      import dear_jax.baselines.compare, dear_jax.baselines.executors
      import dear_jax.baselines.report, dear_jax.baselines.plots
      heavy = ('ray', 'nbclient', 'nbformat', 'ipykernel', 'pytest', 'xdist',
               'importlinter', 'grimp')
      print(json.dumps(sorted(m for m in sys.modules
                              if m.split('.')[0] in heavy)))
  """)
  proc = _installed_run(installed, elsewhere, '-c', script)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().splitlines()[-1] == '[]'


def _metadata(installed) -> str:
  (dist,) = [d for d in os.listdir(installed) if d.endswith('.dist-info')]
  with open(installed / dist / 'METADATA') as f:
    return f.read()


def test_dependencies_are_the_requirements_pins_split_into_extras(installed):
  """requirements.txt is the full set: the wheel requires its pins, the
  tools of the tests, the notebooks and Ray only as the extras test,
  notebook and ray."""
  metadata = _metadata(installed)
  requires = re.findall(r'^Requires-Dist: (.+)$', metadata, re.M)
  runtime = [r for r in requires if ';' not in r]
  extras = {}
  for r in requires:
    if ';' in r:
      req, marker = r.split(';', 1)
      extra = re.fullmatch(r'\s*extra == "(\w+)"\s*', marker)[1]
      extras.setdefault(extra, []).append(req.strip())
  assert sorted(map(_normalise, runtime + sum(extras.values(), []))) == sorted(
      map(_normalise, _requirements()))
  assert {k: sorted(map(_name, v)) for k, v in extras.items()} == {
      k: sorted(v) for k, v in EXTRAS.items()}
  assert not {_name(r) for r in runtime} & set(sum(EXTRAS.values(), ()))
  assert re.search(r'^Requires-Python: >=3\.11$', metadata, re.M)


def test_repository_url_is_written_once():
  """pyproject's Repository URL is the address of the notebooks' Colab badges
  and clone and of README's badges."""
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    url = tomllib.load(f)['project']['urls']['Repository']
  name = 'dear_jax_notebooks_generate'  # as tests/test_notebooks.py loads it
  if name not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(REPO, 'notebooks', 'generate.py'))
    sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[name])
  gen = sys.modules[name]
  assert f'https://github.com/{gen.GITHUB_REPO}' == url
  # generate.py writes README's badges from it, whatever they held before.
  old = ('[![Open In Colab](https://colab.research.google.com/assets/colab-'
         'badge.svg)](https://colab.research.google.com/github/a-b/c.d/blob/'
         'main/notebooks/quickstart.ipynb)')
  assert gen.readme_badges(old) == old.replace(
      'github/a-b/c.d/', f'github/{url.split("github.com/")[1]}/')
  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  assert gen.readme_badges(readme) == readme


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
