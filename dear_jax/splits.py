"""Validation and test sets, generated once and cached on disk.

The test split is dm-clrs's official one (seed, size and count of its
benchmark dataset); the validation split is drawn like `clrs/examples/run.py`
draws it, from a seed derived from the run's seed. Each is generated under a
protocol (a dict of every parameter that determines its content) and cached
as cache_dir/ALGORITHM_SPLIT_nLENGTH_KEY.npz, KEY hashing the protocol
(`clrs_lib.protocol_key`), so a changed parameter never reads a stale file.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from dear_jax import batches as batch_lib
from dear_jax import clrs_lib
from dear_jax import input_pipeline
from dear_jax.batches import Batch, Spec
from dear_jax.input_pipeline import DataConfig


@dataclasses.dataclass
class EvalSet:
  """A whole split as fixed-shape batches; the last one padded by repetition."""
  batches: list
  num_samples: int
  outputs: dict       # unpadded truth, numpy, for clrs.evaluate
  lengths: np.ndarray  # unpadded true hint lengths
  spec: Spec
  key: str            # the cache key: identifies the protocol

  def head(self, k: int) -> 'EvalSet':
    """The first k graphs (all when k is 0 or at least the split's size), as
    whole batches: the graphs past k in the last batch are computed and then
    dropped, as padding is (`only_its_graphs` cuts them)."""
    if not k or k >= self.num_samples:
      return self
    bs = len(self.batches[0]['lengths'])
    return dataclasses.replace(
        self, batches=self.batches[:-(-k // bs)], num_samples=k,
        outputs={name: v[:k] for name, v in self.outputs.items()},
        lengths=self.lengths[:k])

  def only_its_graphs(self) -> 'EvalSet':
    """The split with its last batch cut to the graphs it counts (no padding
    and nothing past a `head`): a cost per graph, as a timed test's or the
    fixed-point checks', is then paid for these graphs only, at the price
    of one more compiled shape."""
    bs = len(self.batches[0]['lengths'])
    keep = self.num_samples - (len(self.batches) - 1) * bs
    if keep >= len(self.batches[-1]['lengths']):
      return self
    last = batch_lib.take_graphs(self.batches[-1], slice(0, keep))
    return dataclasses.replace(self, batches=list(self.batches[:-1]) + [last])

  def one_batch_per_shape(self) -> list:
    """A batch of each shape the split holds (the last may hold fewer
    graphs): what compiling its evaluation needs."""
    return list({len(b['lengths']): b for b in self.batches}.values())


def validation_length(algorithm: str, cfg: DataConfig) -> int:
  """run.py validates at the largest training size (20 for string matchers)."""
  if algorithm in clrs_lib.STRING_MATCHERS:
    return (cfg.val_length * 5) // 4
  return cfg.val_length


def split_size(algorithm: str, split: str, cfg: DataConfig) -> int:
  """Graphs in a split: data.SPLIT_num_samples, or where that is None the
  official count times the algorithm's num_samples_multiplier: 64 for val
  (clrs/examples/run.py), 32 for test (dm-clrs's dataset.py)."""
  n = cfg.val_num_samples if split == 'val' else cfg.test_num_samples
  if n is not None:
    return n
  mult = clrs_lib.clrs().CLRS_30_ALGS_SETTINGS[algorithm][
      'num_samples_multiplier']
  return (64 if split == 'val' else 32) * mult


def _split_protocol(algorithm: str, split: str, cfg: DataConfig,
                    seed: int, length: int | None = None,
                    num_samples: int | None = None) -> dict:
  """Every parameter that determines a split's content. A data option
  (`better_search`, ...) is a key only where it changes the data, so the
  keys of every other split (and cache file names) are those of before the
  option existed. A test split of another `length` and `num_samples` is
  drawn as the official one (same seed and sampler settings)."""
  protocol = _base_split_protocol(algorithm, split, cfg, seed)
  if split == 'test':
    if length is not None:
      protocol['length'] = int(length)
    if num_samples is not None:
      protocol['num_samples'] = int(num_samples)
  option = input_pipeline.data_option(algorithm, cfg)
  if option:
    protocol[option] = True
  return protocol


def _base_split_protocol(algorithm: str, split: str, cfg: DataConfig,
                         seed: int) -> dict:
  c = clrs_lib.clrs()
  if split == 'test':
    # The official test set (dataset.py): seed 3, 32*mult graphs at n=64,
    # default sampler kwargs and no random pos.
    return dict(algorithm=algorithm, split=split, length=cfg.test_length,
                seed=c.CLRS30['test']['seed'],
                num_samples=split_size(algorithm, split, cfg),
                sampler_kwargs={}, pos_seed=None)
  if split == 'val':
    rng = np.random.RandomState(seed)
    val_seed, pos_seed = rng.randint(2**32, size=2)
    length = validation_length(algorithm, cfg)
    kwargs = clrs_lib.train_sampler_kwargs(algorithm, length)
    return dict(algorithm=algorithm, split=split, length=length,
                seed=int(val_seed),
                num_samples=split_size(algorithm, split, cfg),
                sampler_kwargs={k: list(v) if isinstance(v, tuple) else v
                                for k, v in kwargs.items()},
                pos_seed=int(pos_seed))
  raise ValueError(f'split must be val or test, got {split!r}')


def _generate(protocol: dict) -> Batch:
  kwargs = {k: tuple(v) if isinstance(v, list) else v
            for k, v in protocol['sampler_kwargs'].items()}
  sampler = clrs_lib.build_sampler(
      protocol['algorithm'], next(
          (o for o in clrs_lib.DATA_OPTIONS if protocol.get(o) is True), None),
      num_samples=protocol['num_samples'], length=protocol['length'],
      seed=protocol['seed'], **kwargs)
  pos_rng = (None if protocol['pos_seed'] is None
             else np.random.RandomState(protocol['pos_seed']))
  fb = clrs_lib.preprocess(sampler.next(), protocol['algorithm'], pos_rng)
  spec = clrs_lib.processed_spec(protocol['algorithm'])
  return batch_lib.to_batch(fb, spec, num_steps=int(np.max(fb.features.lengths)))


def _take(batch: Batch, idx: np.ndarray, num_steps: int) -> Batch:
  """Graphs `idx`, hints zero-padded in time to `num_steps`."""
  taken = batch_lib.take_graphs(batch, idx)
  for k, v in taken['hints'].items():
    pad = [(0, num_steps - v.shape[0])] + [(0, 0)] * (v.ndim - 1)
    taken['hints'][k] = np.pad(v, pad)
  return taken


def load_split(algorithm: str, split: str, cfg: DataConfig, seed: int = 0,
               keep_hints: bool = True, length: int | None = None,
               num_samples: int | None = None,
               batch_size: int | None = None) -> EvalSet:
  """The validation (depends on seed) or official test split, cached on disk;
  for 'test', `length` and `num_samples` draw it at another size and count.
  Batches of `batch_size` graphs (default data.eval_batch_size)."""
  protocol = _split_protocol(algorithm, split, cfg, seed, length, num_samples)
  key = clrs_lib.protocol_key(protocol)
  cache_dir = os.path.expanduser(cfg.cache_dir)
  os.makedirs(cache_dir, exist_ok=True)
  path = os.path.join(cache_dir,
                      f'{algorithm}_{split}_n{protocol["length"]}_{key}.npz')
  if os.path.exists(path):
    full = batch_lib.load(path)
  else:
    full = _generate(protocol)
    batch_lib.save(path, full)
  n = len(full['lengths'])
  bs = batch_size or cfg.eval_batch_size
  t = batch_lib.time_bucket(int(full['lengths'].max()))
  if not keep_hints:
    full = dict(full, hints={})
  batches = []
  for start in range(0, n, bs):
    idx = np.arange(start, start + bs)
    idx = np.minimum(idx, n - 1)  # pad the last batch by repeating a graph
    batches.append(_take(full, idx, t))
  return EvalSet(batches=batches, num_samples=n, outputs=full['outputs'],
                 lengths=full['lengths'], spec=clrs_lib.processed_spec(algorithm),
                 key=key)


def eval_batch_size(nb_nodes: int, cfg: DataConfig) -> int:
  """Graphs per evaluation batch at size n: data.eval_batch_size, shrunk so
  that a batch holds no more node pairs than the official test's batches
  (eval_batch_size graphs of n = test_length). The models' largest arrays
  are per pair ([B, n, n, hidden] messages), so memory stays that of the
  official test: at n=512 one graph per batch (32 at n=64)."""
  pairs = cfg.eval_batch_size * max(cfg.test_length, 1) ** 2
  return max(1, min(cfg.eval_batch_size, pairs // (nb_nodes * nb_nodes)))


def load_extra_test(algorithm: str, nb_nodes: int, cfg: DataConfig,
                    keep_hints: bool = True) -> EvalSet:
  """data.extra_test_num_samples graphs of size `nb_nodes`, drawn with the
  official test split's sampler and seed (DEAR tests at 128, 256, 512), in
  batches of `eval_batch_size(nb_nodes, cfg)`; cached like every split.
  Where the split's graphs are not complete, each batch also holds their
  sender lists ('senders', `batches.aggregation_senders`, one width for the
  whole split), which the gated max-MPNN aggregates over instead of all
  node pairs."""
  evalset = load_split(algorithm, 'test', cfg, keep_hints=keep_hints,
                       length=nb_nodes, num_samples=cfg.extra_test_num_samples,
                       batch_size=eval_batch_size(nb_nodes, cfg))
  widths = [batch_lib.aggregation_senders(b, evalset.spec)
            for b in evalset.batches]
  if widths[0] is not None:
    width = max(w.shape[-1] for w in widths)  # one shape: one compile
    if width < nb_nodes:
      for batch in evalset.batches:
        batch['senders'] = batch_lib.aggregation_senders(
            batch, evalset.spec, width)
  return evalset
