"""The persistent compilation cache (dear_jax/compile_cache.py)."""

import os
import subprocess
import sys

import pytest

from dear_jax import compile_cache
from dear_jax import run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def clean_env(monkeypatch):
  for name in (compile_cache.ENV, 'XDG_CACHE_HOME'):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('HOME', '/home/someone')
  return monkeypatch


def test_folder_order_flag_then_environment_then_user_cache(clean_env):
  assert compile_cache.folder() == '/home/someone/.cache/dear_jax/jax_cache'
  clean_env.setenv('XDG_CACHE_HOME', '/xdg')
  assert compile_cache.folder() == '/xdg/dear_jax/jax_cache'
  clean_env.setenv(compile_cache.ENV, '~/jc')
  assert compile_cache.folder() == '/home/someone/jc'
  assert compile_cache.folder('/flag') == '/flag'
  # empty: off, from the flag or from the environment
  assert compile_cache.folder('') is None
  clean_env.setenv(compile_cache.ENV, '')
  assert compile_cache.folder() is None
  assert compile_cache.folder('/flag') == '/flag'


def _fresh_process(code: str, env: dict) -> None:
  subprocess.run([sys.executable, '-c', code], check=True, cwd=REPO,
                 env=dict(os.environ, JAX_PLATFORMS='cpu', **env), timeout=300)


_COMPILE = ('from dear_jax import compile_cache as c; '
            'c.MIN_COMPILE_SECONDS = 0; c.enable({arg}); import jax; '
            'jax.jit(lambda x: x * 3 + 1)(2.0).block_until_ready()')


def test_enable_writes_compiled_programs_to_the_folder(tmp_path):
  """A fresh process (jax reads the setting once): the flag's folder fills,
  the environment's folder is used without a flag, '' writes nothing."""
  flag_dir, env_dir = tmp_path / 'flag', tmp_path / 'env'
  _fresh_process(_COMPILE.format(arg=repr(str(flag_dir))),
                 {compile_cache.ENV: str(env_dir)})
  assert os.listdir(flag_dir) and not env_dir.exists()
  _fresh_process(_COMPILE.format(arg=''), {compile_cache.ENV: str(env_dir)})
  assert os.listdir(env_dir)
  off = tmp_path / 'off'
  _fresh_process(_COMPILE.format(arg="''"),
                 {compile_cache.ENV: str(off), 'XDG_CACHE_HOME': str(off)})
  assert not off.exists()


def test_worker_env_passes_the_drivers_choice(monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  updates = []
  monkeypatch.setattr(jax.config, 'update', lambda k, v: updates.append((k, v)))
  monkeypatch.setattr(compile_cache, '_setting', None)
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  assert compile_cache.worker_env() == {}
  compile_cache.enable('')
  assert compile_cache.worker_env() == {compile_cache.ENV: ''}
  assert updates == [('jax_enable_compilation_cache', False)]
  compile_cache.enable('/some/dir')
  assert compile_cache.worker_env() == {compile_cache.ENV: '/some/dir'}
  assert ('jax_compilation_cache_dir', '/some/dir') in updates
  # no flag: the environment's value travels (a worker resolves the default
  # against its own home when there is none)
  monkeypatch.setenv(compile_cache.ENV, '~/c')
  compile_cache.enable()
  assert compile_cache.worker_env() == {compile_cache.ENV: '~/c'}


def test_cli_passes_its_flag_before_anything_compiles(monkeypatch, capsys):
  got = []
  monkeypatch.setattr(compile_cache, 'enable', got.append)
  # an unknown algorithm fails right after the cache is set up
  with pytest.raises(SystemExit) as e:
    run.main(['run', '--algorithm=no_such_algorithm', '--jax_cache='])
  assert e.value.code == 2 and got == ['']
  got.clear()
  with pytest.raises(SystemExit):
    run.main(['run', '--algorithm=no_such_algorithm'])
  assert got == [None]
