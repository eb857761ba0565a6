"""Shared test set-up: CPU only, a persistent compilation cache, one tiny run
config, tiny data protocols cached under pytest's tmp dir, tiny models.

Environment (all optional):
  DEAR_JAX_TEST_JAX_CACHE  folder of jax's persistent compilation cache for
                           the tests (default ~/.cache/dear_jax/jax_cache;
                           empty: no persistent cache).
"""
import contextlib
import os

# Parity tests compare float32 programs with tight tolerances: never let a GPU
# (TF32 matmuls) run them by accident. Must precede jax's backend start-up.
os.environ['JAX_PLATFORMS'] = 'cpu'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # noqa: E402
import pytest  # noqa: E402

from dear_jax import clrs_lib  # noqa: E402
from dear_jax import compile_cache  # noqa: E402
from dear_jax import input_pipeline  # noqa: E402

jax.config.update('jax_platforms', 'cpu')  # in case a plugin imported jax

# Most of the suite's time is XLA compiling small programs, many of them
# identical across tests (same tiny config, same shapes) and across runs:
# keep executables on disk, including the cheap ones.
JAX_CACHE_DIR = os.path.expanduser(os.environ.get(
    'DEAR_JAX_TEST_JAX_CACHE', '~/.cache/dear_jax/jax_cache'))
# The command lines run inside tests (run.main, compare, Ray tasks) use it too.
os.environ[compile_cache.ENV] = JAX_CACHE_DIR
compile_cache.enable()


def pytest_addoption(parser):
  parser.addoption(
      '--all-algorithms', action='store_true', default=False,
      help='test_models.py: compile, train and evaluate all 30 algorithms in '
      'both hint modes (about 8 min on 2 CPU cores) instead of tracing most')


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'smoke: runs the code end to end and checks only that the '
      'result is well formed (kept cheap; deselect with -m "not smoke")')


# --- fast compiles ------------------------------------------------------------

@contextlib.contextmanager
def xla_fast_compile():
  """XLA with most optimisations off: compiles take half the time on CPU.
  For tiny programs whose results are compared only with programs compiled
  the same way."""
  old = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  try:
    yield
  finally:
    jax.config.update('jax_disable_most_optimizations', old)


@pytest.fixture(scope='module')
def fast_compile():
  """A module opts in with `pytestmark = pytest.mark.usefixtures(
  'fast_compile')`."""
  with xla_fast_compile():
    yield


@pytest.fixture
def drawn_batches(monkeypatch) -> list:
  """Grows by one for every training batch drawn (TrainStream.__next__):
  shows where a resumed run continued from."""
  drawn = []
  real_next = input_pipeline.TrainStream.__next__

  def counting_next(self):
    drawn.append(1)
    return real_next(self)

  monkeypatch.setattr(input_pipeline.TrainStream, '__next__', counting_next)
  return drawn


def count_loss_traces(model) -> list:
  """Wraps model.loss so that each jit trace of it appends to the returned
  list (a Python side effect: it runs when jit traces, not per step)."""
  traces = []
  loss = model.loss

  def traced_loss(*args, **kwargs):
    traces.append(1)
    return loss(*args, **kwargs)

  model.loss = traced_loss
  return traces


# --- one tiny run config ------------------------------------------------------

def tiny_config(cache_dir, kind='nar', steps=6):
  """configs/default.py shrunk to seconds: BFS-sized graphs of 5 nodes,
  batches of 2, 4 validation and 4 test graphs (n=5), hidden 16, validation
  (and a checkpoint) every 2 steps."""
  from configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.model_kind = kind
  c.data.train_sizes = (5,)
  c.data.batch_size = 2
  c.data.val_length = 5
  c.data.test_length = 5
  c.data.val_num_samples = 4
  c.data.test_num_samples = 4
  c.data.eval_batch_size = 2
  c.data.cache_dir = str(cache_dir)
  c.model.hidden = 16
  c.train.steps = steps
  c.train.eval_every = 2
  return c


def config_flags(config, sections=('data', 'model', 'train')) -> list:
  """--config.SECTION.KEY=VALUE flags that turn configs/default.py into
  `config` (its keys that differ from the default), for the CLI."""
  from configs import default  # pylint: disable=g-import-not-at-top
  base = default.get_config()
  flags = []
  for section in sections:
    for key, value in config[section].items():
      if value != base[section][key]:
        if isinstance(value, tuple):
          value = '(' + ','.join(map(str, value)) + ',)'
        flags.append(f'--config.{section}.{key}={value}')
  return flags


def tiny_data_config(cache_dir, **overrides) -> input_pipeline.DataConfig:
  """tiny_config's data section as a DataConfig, with `overrides`."""
  kw = tiny_config(cache_dir).data.to_dict()
  kw.update(overrides)
  return input_pipeline.DataConfig.from_section(kw)


def model_config(hidden=16, processor='triplet_gmpnn', nb_triplet_fts=8,
                 encoder_init='xavier_on_scalars'):
  """The typed `model` section StepwiseNAR/Reasoner read."""
  from dear_jax.model import ModelConfig  # pylint: disable=g-import-not-at-top
  return ModelConfig(hidden=hidden, processor=processor,
                     nb_triplet_fts=nb_triplet_fts, encoder_init=encoder_init)


@pytest.fixture(scope='session')
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('datasets')


@pytest.fixture(scope='session')
def data_cfg(cache_dir) -> input_pipeline.DataConfig:
  return tiny_data_config(cache_dir)


@pytest.fixture(scope='session')
def clrs():
  return clrs_lib.clrs()


# --- finished tiny runs, shared by the CLI / checkpoint / resume tests -------

class FinishedRun:
  """A `python -m dear_jax.run` of tiny_config(cache_dir, kind), trained to
  its end, with what an observer outside the code saw while it ran."""

  def __init__(self, kind, workdir, cache_dir, code, stdout, loss_traces):
    self.kind = kind
    self.workdir = workdir        # pathlib.Path: results.json, checkpoints/
    self.cache_dir = cache_dir
    self.code = code              # run.main's return value
    self.stdout = stdout
    self.loss_traces = loss_traces  # times the train step traced model.loss

  @property
  def config(self):
    return tiny_config(self.cache_dir, self.kind)

  @property
  def results(self) -> dict:
    import json  # pylint: disable=g-import-not-at-top
    return json.loads((self.workdir / 'results.json').read_text())


def cli_args(config, workdir) -> list:
  """run.main's argv for `config` on BFS."""
  return (['run', '--algorithm=bfs', f'--model={config.model_kind}',
           f'--workdir={workdir}', '--noprogress'] + config_flags(config))


@pytest.fixture(scope='session')
def finished_run(tmp_path_factory, cache_dir):
  """finished_run(kind) -> FinishedRun; each kind trains once per session.

  Do not modify its workdir: copy it (shutil.copytree) first. Compiled with
  jax_disable_most_optimizations, as test_train.py's own runs, so that a
  resumed run reproduces its numbers bit for bit.
  """
  import io  # pylint: disable=g-import-not-at-top
  from dear_jax import run, train  # pylint: disable=g-import-not-at-top
  done = {}

  def get(kind):
    if kind not in done:
      workdir = tmp_path_factory.mktemp(f'finished_{kind}') / 'w'
      traces = []
      real = train.make_train_step

      def counting_make_train_step(model, optimizer, *args, **kwargs):
        traces.append(count_loss_traces(model))
        return real(model, optimizer, *args, **kwargs)

      out = io.StringIO()
      with xla_fast_compile(), pytest.MonkeyPatch.context() as mp, \
          contextlib.redirect_stdout(out):
        mp.setattr(train, 'make_train_step', counting_make_train_step)
        code = run.main(cli_args(tiny_config(cache_dir, kind), workdir))
      done[kind] = FinishedRun(kind, workdir, cache_dir, code, out.getvalue(),
                               sum(map(len, traces)))
    return done[kind]

  return get
