"""Where compare's runs train: one after another in this process (`local`),
or as Ray tasks on a cluster (`ray`).

Both executors skip a run whose results.json exists in --out (resume), count
a run that raised as a failure without stopping the others, and leave the
same --out layout: DIR/runs/ALGORITHM/MODEL/sSEED/ (results.json,
metrics.jsonl, checkpoints/) and DIR/runs/ALGORITHM/MODEL/memory.json.

The Ray executor assumes no shared filesystem: a task trains in a temporary
folder on its worker and returns that run folder's files as bytes; the driver
writes them into --out, where an interrupted write reads as an unfinished
run. With --stack_seeds both executors train the unfinished seeds of each
stackable (algorithm, model) together (one Ray task returns every seed's
files). `import ray` happens only here, inside `run_ray`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings

from . import variants
from .plan import CompareError, Plan, run_dir

# Set in every Ray worker (start_ray); _task_options adds per-task ones.
_WORKER_ENV = {'TF_CPP_MIN_LOG_LEVEL': '3'}


def train_one(plan: Plan, algorithm: str, model: str, seed: int) -> dict:
  workdir = run_dir(plan.out, algorithm, model, seed)
  if variants.official(model):
    from . import clrs_official  # pylint: disable=g-import-not-at-top
    return clrs_official.train_official(
        algorithm, seed=seed, train_steps=plan.train_steps,
        hint_mode=variants.VARIANTS[model].hint_mode, data_cfg=plan.official_data,
        workdir=workdir, eval_every=plan.eval_every, progress=plan.progress)
  from dear_jax import run_config, train  # pylint: disable=g-import-not-at-top
  config = run_config.typed(plan.configs[model]).with_seed(seed)
  if variants.teacher(model):  # this sweep's run of the teacher, same seed
    config = config.with_values({'dear.align_teacher': os.path.abspath(
        run_dir(plan.out, algorithm, variants.teacher(model), seed))})
  return train.train_and_evaluate(config, workdir, algorithm,
                                  progress=plan.progress, label=model)


def _todo(plan: Plan) -> list:
  """(label, algorithm, model, seed, finished) of every run of the plan."""
  runs = [(a, m, s) for a in plan.algorithms for m in plan.models
          for s in plan.seeds]
  return [(f'[{i}/{len(runs)}] {a} {m} seed {s}', a, m, s,
           os.path.exists(os.path.join(run_dir(plan.out, a, m, s),
                                       'results.json')))
          for i, (a, m, s) in enumerate(runs, 1)]


def _done_line(label: str, r: dict, seconds: float) -> str:
  return (f'{label}: test {r["test_score"]:.4f}, val {r["val_score"]:.4f} '
          f'({seconds:.0f} s)')


def _stackable(plan: Plan, model: str) -> bool:
  """Seeds of this model train as one stack (not the official model, not a
  student, whose teacher differs per seed)."""
  return (plan.stack_seeds and len(plan.seeds) > 1 and
          not variants.official(model) and not variants.teacher(model))


def _jobs(plan: Plan) -> list:
  """[(labels, algorithm, model, seeds)] of unfinished runs, in order: one
  job per run, or per (algorithm, model) when its seeds stack (only its
  unfinished seeds; a lone one trains as a plain run)."""
  jobs, grouped = [], {}
  for label, a, m, s, finished in _todo(plan):
    if finished:
      print(f'{label}: done, skipped')
    elif _stackable(plan, m):
      if (a, m) not in grouped:
        grouped[(a, m)] = ([], a, m, [])
        jobs.append(grouped[(a, m)])
      grouped[(a, m)][0].append(label)
      grouped[(a, m)][3].append(s)
    else:
      jobs.append(([label], a, m, [s]))
  return jobs


def _group_name(algorithm: str, model: str, seeds: list) -> str:
  return f'{algorithm} {model} seeds {seeds}'


def _train_stack(plan: Plan, algorithm: str, model: str, seeds: list) -> list:
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  return train.train_seeds(
      plan.configs[model], seeds,
      [run_dir(plan.out, algorithm, model, s) for s in seeds], algorithm,
      progress=plan.progress, label=model)


def run_local(plan: Plan) -> int | None:
  """Trains every unfinished run here, in order; the failure count, or None
  when the user interrupted (the interrupted run can be resumed)."""
  from dear_jax import train  # pylint: disable=g-import-not-at-top
  failures = 0
  for labels, a, m, seeds in _jobs(plan):
    t0 = time.time()
    try:
      if len(seeds) > 1:
        results = _train_stack(plan, a, m, seeds)
      else:
        results = [train_one(plan, a, m, seeds[0])]
    except (train.RunError, ValueError) as e:
      what = labels[0] if len(labels) == 1 else _group_name(a, m, seeds)
      message = f'{what}: {str(e).splitlines()[0]}'
      if isinstance(e.__cause__, KeyboardInterrupt):
        print(f'error: {message}', file=sys.stderr)
        return None
      print(f'FAILED {message}', file=sys.stderr)
      failures += 1
      continue
    for label, r in zip(labels, results):
      print(_done_line(label, r, time.time() - t0))
  return failures


# --- Ray ---------------------------------------------------------------------

@dataclasses.dataclass
class RayOptions:
  address: str | None = None     # None: start a local Ray here
  cpus_per_task: float = 1.0
  gpus_per_task: float | None = None  # None: 1 if the cluster has GPUs, else 0
  local_cpus: int | None = None  # CPUs of the local Ray (None: all)
  log_to_driver: bool = True     # forward workers' stdout/stderr
  env: dict = dataclasses.field(default_factory=dict)  # more worker env vars


def check_ray_installed() -> None:
  if importlib.util.find_spec('ray') is None:
    raise CompareError('--executor=ray needs the ray package (pip install '
                       'ray, or pip install -r requirements.txt)')


def _read_tree(root: str, start: str) -> dict:
  """{path relative to root: bytes} of every file under root/start."""
  files = {}
  for dirpath, _, names in os.walk(os.path.join(root, start)):
    for name in names:
      path = os.path.join(dirpath, name)
      with open(path, 'rb') as f:
        files[os.path.relpath(path, root)] = f.read()
  return files


def _rel(algorithm: str, model: str, seed: int) -> str:
  return os.path.relpath(run_dir('.', algorithm, model, seed), '.')


def _memory_files(local: Plan, algorithm: str, model: str) -> dict:
  """The model's memory.json, measured on this worker, as {path: bytes}."""
  from . import memory as memory_lib  # pylint: disable=g-import-not-at-top
  memory_lib.cached_train_step_mb(local, algorithm, model)
  mem = os.path.join('runs', algorithm, model, 'memory.json')
  if not os.path.exists(os.path.join(local.out, mem)):
    return {}
  with open(os.path.join(local.out, mem), 'rb') as f:
    return {mem: f.read()}


def _worker_setup() -> None:
  """A Ray worker is a fresh process: the driver's compilation cache
  setting reaches it through the environment (start_ray)."""
  from dear_jax import compile_cache  # pylint: disable=g-import-not-at-top
  compile_cache.enable()


def ray_task(plan: Plan, algorithm: str, model: str, seed: int,
             memory: bool, train=train_one, teacher=None) -> dict:
  """One run on a Ray worker: trains in a temporary --out, then returns its
  results and its files (and the model's memory.json when `memory`).

  teacher: the task result (or {'files': ...}) of the run this model trains
  against (its variant's teacher), laid into the temporary --out first; a stack's
  result (ray_stack_task) gives this seed's run."""
  _worker_setup()
  t0 = time.time()
  if teacher is not None and 'runs' in teacher:
    if seed not in teacher['runs']:
      raise RuntimeError(f'its teacher {variants.teacher(model)} seed {seed} failed')
    teacher = teacher['runs'][seed]
  with tempfile.TemporaryDirectory(prefix='dear_jax_ray_') as tmp:
    local = dataclasses.replace(plan, out=tmp, progress=False)
    if teacher is not None:
      write_files(tmp, _rel(algorithm, variants.teacher(model), seed),
                  teacher['files'])
    results = train(local, algorithm, model, seed)
    files = _read_tree(tmp, _rel(algorithm, model, seed))
    if memory:
      files.update(_memory_files(local, algorithm, model))
  return dict(results=results, files=files, seconds=time.time() - t0)


def ray_stack_task(plan: Plan, algorithm: str, model: str, seeds: list,
                   memory: bool, train_stack=None) -> dict:
  """The seeds of one (algorithm, model) trained stacked on a Ray worker
  (train_stack: _train_stack). Returns {'runs': {seed: {'results', 'files'}}}
  of the seeds that finished and 'error', a failure line or '': a seed that
  diverged must not lose the others' runs."""
  _worker_setup()
  t0 = time.time()
  with tempfile.TemporaryDirectory(prefix='dear_jax_ray_') as tmp:
    local = dataclasses.replace(plan, out=tmp, progress=False)
    error = ''
    try:
      (train_stack or _train_stack)(local, algorithm, model, seeds)
    except Exception as e:  # pylint: disable=broad-except
      error = _failure_line(e)
    runs = {}
    for s in seeds:
      path = os.path.join(run_dir(tmp, algorithm, model, s), 'results.json')
      if os.path.exists(path):
        with open(path) as f:
          runs[s] = dict(results=json.load(f),
                         files=_read_tree(tmp, _rel(algorithm, model, s)))
    if memory and runs:
      runs[min(runs)]['files'].update(_memory_files(local, algorithm, model))
  return dict(runs=runs, error=error, seconds=time.time() - t0)


def write_files(out: str, run: str, files: dict) -> None:
  """A task's files into out. The run folder is assembled beside its place
  (in a dot-folder rows.collect ignores), then swapped in, replacing a
  partial one: a driver killed meanwhile leaves an unfinished run, never a
  half-written one."""
  parent, name = os.path.split(os.path.join(out, run))
  # A task returns paths of its run folder and of the model's memory.json
  # beside it: nothing else of --out (a path from elsewhere is refused).
  model_dir = os.path.realpath(parent)
  for rel in files:
    dest = os.path.realpath(os.path.join(out, rel))
    if os.path.isabs(rel) or os.path.commonpath([model_dir, dest]) != model_dir:
      raise CompareError(f'a task for {run} returned the path {rel!r}, '
                         f'outside {parent}: nothing of it was written')
  incoming = os.path.join(parent, '.incoming-' + name)
  shutil.rmtree(incoming, ignore_errors=True)
  for rel in files:
    inside = os.path.relpath(rel, run)
    # memory.json lies beside the run folders, outside `run`.
    dest = (os.path.join(out, rel) if inside.startswith('..')
            else os.path.join(incoming, inside))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest + '.tmp', 'wb') as f:
      f.write(files[rel])
    os.replace(dest + '.tmp', dest)
  shutil.rmtree(os.path.join(out, run), ignore_errors=True)
  os.replace(incoming, os.path.join(out, run))


def _failure_line(e: BaseException) -> str:
  cause = getattr(e, 'cause', None) or e  # RayTaskError wraps the task's error
  lines = str(cause).strip().splitlines()
  return f'{type(cause).__name__}: {lines[0] if lines else ""}'[:300]


def _code_dirs() -> list:
  """The packages a worker imports, shipped with the job (Ray py_modules):
  dear_jax, which holds the rest when installed (dear_jax.baselines), or in a
  checkout dear_jax, baselines and the presets' folder."""
  import dear_jax  # pylint: disable=g-import-not-at-top
  from dear_jax import validation  # pylint: disable=g-import-not-at-top
  dirs = [os.path.dirname(os.path.abspath(dear_jax.__file__))]
  if '.' not in __package__:  # a checkout's top-level baselines
    dirs += [os.path.dirname(os.path.abspath(__file__)), validation.CONFIGS]
  return dirs


# How long a --ray_address has to answer (TCP, then gRPC's HTTP/2 greeting).
RAY_ANSWER_TIMEOUT_S = 30.0
_HTTP2_PREFACE = b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'
_HTTP2_SETTINGS = b'\x00\x00\x00\x04\x00\x00\x00\x00\x00'  # empty frame


def check_reachable(address: str, timeout: float | None = None) -> None:
  """A HOST:PORT or ray://HOST:PORT that does not answer as Ray (a gRPC
  server: its HTTP/2 SETTINGS frame) within `timeout` seconds (default
  RAY_ANSWER_TIMEOUT_S) fails here: ray.init would retry or wait for it for
  minutes."""
  import socket  # pylint: disable=g-import-not-at-top
  timeout = RAY_ANSWER_TIMEOUT_S if timeout is None else timeout
  host, _, port = address.split('://')[-1].rpartition(':')
  if not host or not port.isdigit():
    return  # 'auto', or a form Ray resolves itself
  valid = 'valid: auto, HOST:PORT of its head (6379), ray://HOST:10001'
  try:
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
      sock.settimeout(timeout)
      sock.sendall(_HTTP2_PREFACE + _HTTP2_SETTINGS)
      reply = b''
      while len(reply) < 9:
        chunk = sock.recv(9 - len(reply))
        if not chunk:
          break
        reply += chunk
  except socket.timeout:
    raise CompareError(f'{address} does not answer as a Ray cluster within '
                       f'{timeout:g} s; {valid}') from None
  except OSError as e:
    raise CompareError(f'cannot reach a Ray cluster at {address} '
                       f'({e.strerror or type(e).__name__}); {valid}'
                       ) from None
  if len(reply) < 9 or reply[3] != 0x04:  # frame type SETTINGS
    raise CompareError(f'{address} answers, but not as a Ray cluster (no '
                       f'gRPC greeting); {valid}')


def start_ray(opts: RayOptions) -> None:
  """ray.init with the job's code and environment (a local Ray without an
  address: no dashboard, Ray's own logs at ERROR)."""
  import ray  # pylint: disable=g-import-not-at-top
  from dear_jax import compile_cache  # pylint: disable=g-import-not-at-top
  runtime_env = dict(py_modules=_code_dirs(), excludes=['__pycache__', '*.pyc'],
                     env_vars=dict(_WORKER_ENV, **compile_cache.worker_env(),
                                   **opts.env))
  kw = dict(runtime_env=runtime_env, logging_level=logging.ERROR,
            log_to_driver=opts.log_to_driver)
  if opts.address:
    kw['address'] = opts.address
  else:
    kw.update(num_cpus=opts.local_cpus or os.cpu_count(),
              include_dashboard=False)
  try:
    with warnings.catch_warnings():
      # Ray starts its processes with fork+exec, which jax warns about.
      warnings.filterwarnings('ignore', message='os.fork',
                              category=RuntimeWarning)
      ray.init(**kw)
  except Exception as e:  # pylint: disable=broad-except
    where = (f'reach the Ray cluster at {opts.address}' if opts.address
             else 'start a local Ray')
    lines = str(e).strip().splitlines()
    hint = ('; a cluster with token authentication needs RAY_AUTH_MODE=token '
            'and its token here (RAY_AUTH_TOKEN or ~/.ray/auth_token)'
            if opts.address else '')
    raise CompareError(f'cannot {where}: {type(e).__name__}: '
                       f'{lines[0] if lines else ""}{hint}') from None


def _task_options(ray, opts: RayOptions) -> dict:
  gpus = opts.gpus_per_task
  if gpus is None:
    gpus = 1 if ray.cluster_resources().get('GPU', 0) > 0 else 0
  env = {}  # added to the job's env_vars (start_ray)
  if not gpus:  # a run that asked for no GPU must not take one
    env['JAX_PLATFORMS'] = 'cpu'
  elif gpus < 1:
    # Several runs share a GPU: jax must not take 75 % of it up front.
    env['XLA_PYTHON_CLIENT_PREALLOCATE'] = 'false'
  # max_calls=1: a fresh process per run (a GPU task must see only the
  # CUDA_VISIBLE_DEVICES Ray gives it; no state leaks between runs).
  return dict(num_cpus=opts.cpus_per_task, num_gpus=gpus, max_calls=1,
              runtime_env=dict(env_vars=env))


def _teacher_failed(ray, ref, seed: int) -> bool:
  """Whether the teacher task `ref` (a run or a stack) left no run of seed."""
  try:
    got = ray.get(ref, timeout=0)
  except Exception:  # pylint: disable=broad-except
    return True
  return 'runs' in got and seed not in got['runs']


def _land_stack(plan: Plan, job: tuple, got: dict) -> int:
  """Writes a stack task's finished seeds into --out; 1 if some failed."""
  labels, a, m, seeds = job
  for label, s in zip(labels, seeds):
    if s in got['runs']:
      write_files(plan.out, _rel(a, m, s), got['runs'][s]['files'])
      print(_done_line(label, got['runs'][s]['results'], got['seconds']))
  lost = [s for s in seeds if s not in got['runs']]
  if not got['error'] and not lost:
    return 0
  of = f' of {seeds}' if len(lost) < len(seeds) else ''
  print(f'FAILED {_group_name(a, m, lost)}{of}: '
        f'{got["error"] or "no results"}', file=sys.stderr)
  return 1


def run_ray(plan: Plan, opts: RayOptions, train=None) -> int | None:
  """Trains every unfinished run as a Ray task (with plan.stack_seeds, the
  unfinished seeds of each stackable (algorithm, model) as one task); the
  failure count, or None when the user interrupted (finished runs are in
  --out; rerun to resume).

  `train(plan, algorithm, model, seed) -> results` runs on the workers (a
  test swaps in one that fails on purpose); default: train_one. Stacks run
  _train_stack (looked up here, so a test can swap it too)."""
  import ray  # pylint: disable=g-import-not-at-top
  train = train or train_one
  jobs = _jobs(plan)
  if not jobs:
    return 0
  started_here = not ray.is_initialized()
  if started_here:
    start_ray(opts)
  try:
    options = _task_options(ray, opts)
    remote = ray.remote(**options)(ray_task)
    remote_stack = ray.remote(**options)(ray_stack_task)
    plan_ref = ray.put(plan)
    memory_for = set()
    refs, submitted = {}, {}
    for job in jobs:  # plan.models lists teachers first
      labels, a, m, seeds = job
      memory = plan.memory and (a, m) not in memory_for and not os.path.exists(
          os.path.join(plan.out, 'runs', a, m, 'memory.json'))
      memory_for.add((a, m))
      if len(seeds) > 1:
        ref = remote_stack.remote(plan_ref, a, m, seeds, memory, _train_stack)
      else:
        s = seeds[0]
        teacher, key = None, (a, variants.teacher(m), s)
        if key in submitted:
          # Ray starts this task once its teacher's has returned (and fails
          # it if that one failed).
          teacher = submitted[key]
        elif variants.teacher(m):  # finished earlier: sent from DIR
          teacher = dict(files=_read_tree(plan.out, _rel(*key)))
        ref = remote.remote(plan_ref, a, m, s, memory, train, teacher)
      refs[ref] = job
      submitted.update({(a, m, s): ref for s in seeds})
    failures = 0
    waiting = list(refs)
    try:
      while waiting:
        (ref,), waiting = ray.wait(waiting, num_returns=1)
        labels, a, m, seeds = job = refs.pop(ref)
        try:
          got = ray.get(ref)
        except Exception as e:  # pylint: disable=broad-except
          s = seeds[0]
          teacher = submitted.get((a, variants.teacher(m), s))
          why = (f'its teacher {variants.teacher(m)} seed {s} failed'
                 if teacher is not None and _teacher_failed(ray, teacher, s)
                 else _failure_line(e))
          what = labels[0] if len(seeds) == 1 else _group_name(a, m, seeds)
          print(f'FAILED {what}: {why}', file=sys.stderr)
          failures += 1
          continue
        if len(seeds) > 1:
          failures += _land_stack(plan, job, got)
          continue
        write_files(plan.out, _rel(a, m, seeds[0]), got['files'])
        print(_done_line(labels[0], got['results'], got['seconds']))
    except KeyboardInterrupt:
      for ref in waiting:
        ray.cancel(ref, force=True)
      print(f'error: interrupted; {len(waiting)} tasks cancelled, finished '
            'runs are kept (rerun to resume)', file=sys.stderr)
      return None
    return failures
  finally:
    if started_here:
      ray.shutdown()
