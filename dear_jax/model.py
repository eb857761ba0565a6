"""What the stepwise NAR and DEAR share: encoders -> processor -> decoders.

A reasoner holds three Flax modules and applies them with explicit parameter
sub-trees {'encoders', 'processor', 'decoders'}: the equilibrium solver must
receive the processor's parameters as an explicit argument (implicit
differentiation through jaxopt breaks on captured parameters). Subclasses
define `forward`, i.e. how the processor is iterated.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np

import dataclasses

from dear_jax import batches as batch_lib
from dear_jax import losses
from dear_jax import sections
from dear_jax.decoders import Decoders, postprocess
from dear_jax.encoders import ENCODER_INITS, Encoders
from dear_jax.processors import (GatedMaxMPNN, build_processor,
                                 check_aggregation, check_latent_decay,
                                 check_processor)
from dear_jax.specs import Type


@dataclasses.dataclass(frozen=True)
class ModelConfig(sections.Section):
  """The `model` section: what both reasoners build, checked."""
  PREFIX = 'model.'
  processor: str = 'triplet_gmpnn'  # processors.PROCESSORS
  hidden: int = 128
  nb_triplet_fts: int = 8
  encoder_init: str = 'xavier_on_scalars'
  # Mirjanic et al. 2023 (docs/sharper.md): how the processor aggregates its
  # node messages (AGGREGATIONS: 'softmax' is each channel's soft max over
  # the senders) and the latent decay lambda (the state enters the processor
  # as lambda * h, in training and tests; 1: off; theirs 0.9).
  aggregation: str = 'max'
  latent_decay: float = 1.0
  # Tests only (the official test, the extra sizes and DEAR's checks;
  # validation and model selection never see them), so --reevaluate re-tests
  # a finished run with them (train.EVALUATION_KEYS): the aggregation the
  # tests use (None: `aggregation`; Mirjanic et al.'s code trains with
  # softmax and tests with max), and the adaptive temperature (Velickovic et
  # al. 2024) of the softmaxes that feed further computation: the softmax
  # aggregation and the Sinkhorn permutation decoder.
  test_aggregation: str | None = None
  adaptive_temperature: bool = False

  @classmethod
  def check(cls, v, prefix: str) -> None:
    check_processor(v.processor, f'{prefix}processor')
    sections.positive(f'{prefix}hidden', v.hidden)
    sections.int_at_least(f'{prefix}nb_triplet_fts', v.nb_triplet_fts, 1)
    sections.one_of(f'{prefix}encoder_init', v.encoder_init, ENCODER_INITS)
    check_aggregation(v.aggregation, f'{prefix}aggregation')
    if v.test_aggregation is not None:
      check_aggregation(v.test_aggregation, f'{prefix}test_aggregation')
    check_latent_decay(v.latent_decay, f'{prefix}latent_decay')
    if not isinstance(v.adaptive_temperature, bool):
      raise ValueError(f'{prefix}adaptive_temperature must be True or False, '
                       f'got {v.adaptive_temperature!r}')

  def test_processor_settings(self) -> dict:
    """The processor's keys that the tests change (`Reasoner.for_test`)."""
    return dict(aggregation=self.test_aggregation or self.aggregation,
                adaptive_temperature=self.adaptive_temperature)


class Reasoner:
  """Base class; `encode_hints`/`decode_hints` are set by subclasses."""
  encode_hints = False
  decode_hints = False

  def __init__(self, spec: dict, sample_batch: dict, cfg, gate_bias=None):
    """cfg: a ModelConfig (or the `model` section, converted)."""
    cfg = ModelConfig.coerce(cfg)
    self.spec = spec
    self.hidden = cfg.hidden
    self.output_names = tuple(sample_batch['outputs'])
    self.hint_names = tuple(sample_batch['hints']) if self.decode_hints else ()
    nb_dims = {k: int(v.shape[-1]) for group in ('outputs', 'hints')
               for k, v in sample_batch[group].items()
               if spec[k][2] == Type.CATEGORICAL}
    self.encoders = Encoders(spec=spec, hidden=cfg.hidden,
                             init_mode=cfg.encoder_init)
    self.processor = build_processor(cfg.processor, cfg.hidden,
                                     cfg.nb_triplet_fts, gate_bias,
                                     cfg.aggregation, cfg.latent_decay)
    self.test_settings = cfg.test_processor_settings()
    self.decoders = Decoders(spec=spec,
                             names=self.output_names + self.hint_names,
                             hidden=cfg.hidden, nb_dims=nb_dims)

  def for_test(self) -> 'Reasoner':
    """This reasoner as the tests run it, on the same parameters: the
    processor with model.test_aggregation and model.adaptive_temperature,
    the permutation decoder's Sinkhorn at an adaptive temperature. Itself
    when those change nothing."""
    settings = self._test_settings(self.processor)
    if (all(getattr(self.processor, k) == v for k, v in settings.items())
        and not self.test_settings['adaptive_temperature']):
      return self
    other = copy.copy(self)
    other.processor = self.processor.clone(**settings)
    other.decoders = self.decoders.clone(
        adaptive_temperature=self.test_settings['adaptive_temperature'])
    return other

  def _test_settings(self, processor) -> dict:
    """The test settings `processor` has fields for."""
    return {k: v for k, v in self.test_settings.items()
            if hasattr(processor, k)}

  # --- the three stages, each with its own parameters -----------------------
  def encode(self, params, probes: dict, nb_nodes: int, node_mask=None):
    return self.encoders.apply({'params': params['encoders']}, probes, nb_nodes,
                               node_mask)

  def adjacency(self, batch: dict, adj_from_encoders):
    """Aggregation graph for processors that use one: the input graph's
    edges (+ pointer edges, as dm-clrs accumulates them), or all pairs for
    algorithms without an `adj` input (arrays, strings), as DEAR does. For
    the gated max-MPNN, a batch's 'senders' (the same graph as sender lists,
    `batches.aggregation_senders`; large test graphs) replace it."""
    if 'senders' in batch and isinstance(self.processor, GatedMaxMPNN):
      return jnp.asarray(batch['senders'])
    if 'adj' in batch['inputs']:
      return (adj_from_encoders > 0).astype(jnp.float32)
    return jnp.ones_like(adj_from_encoders)

  def process(self, proc_params, node, edge, graph, adj, hidden,
              triplets: bool = True, edge_terms=None, node_mask=None,
              **kwargs):
    """With `edge_terms` (see processors.py) `edge` is not read; `kwargs`
    go to the processor (`neighbours` for the gated max-MPNN). `node_mask`
    (a padded batch's) goes to it only when given, so a registered
    processor without one runs unpadded batches as before."""
    if node_mask is not None:
      kwargs['node_mask'] = node_mask
    return self.processor.apply({'params': proc_params}, node, edge, graph,
                                adj, hidden, triplets=triplets,
                                edge_terms=edge_terms, **kwargs)

  def decode(self, params, node, h_prev, h_new, edge, edge_latent, graph,
             training: bool, key, names=None, edge_terms=None, gumbel=None,
             node_mask=None):
    """(output preds, hint preds); with `names`, only those probes are
    decoded. With `edge_terms` (see decoders.py) `edge` is not read."""
    h_t = jnp.concatenate([node, h_prev, h_new], axis=-1)
    if edge_terms is not None:
      e_t = edge_latent
    else:
      e_t = edge if edge_latent is None else jnp.concatenate(
          [edge, edge_latent], axis=-1)
    preds = self.decoders.apply({'params': params['decoders']}, h_t, e_t, graph,
                                training=training, names=names,
                                edge_terms=edge_terms, gumbel=gumbel,
                                node_mask=node_mask, rngs={'gumbel': key})
    return ({k: preds[k] for k in self.output_names if k in preds},
            {k: preds[k] for k in self.hint_names if k in preds})

  # --- parameters ------------------------------------------------------------
  def init(self, key, batch: dict) -> dict:
    """Initialises all parameters by tracing one forward pass on `batch`."""
    k_enc, k_proc, k_dec = jax.random.split(key, 3)
    nb_nodes = batch_lib.num_nodes(batch)
    probes = dict(batch['inputs'])
    if self.encode_hints:
      probes.update({k: v[0] for k, v in batch['hints'].items()})
    enc = self.encoders.init(k_enc, probes, nb_nodes)['params']
    node, edge, graph, adj = self.encoders.apply({'params': enc}, probes,
                                                 nb_nodes)
    hidden = jnp.zeros(node.shape)
    proc = self.processor.init(k_proc, node, edge, graph, adj, hidden)['params']
    h_new, tri = self.processor.apply({'params': proc}, node, edge, graph, adj,
                                      hidden)
    h_t = jnp.concatenate([node, hidden, h_new], axis=-1)
    e_t = edge if tri is None else jnp.concatenate([edge, tri], axis=-1)
    dec = self.decoders.init(k_dec, h_t, e_t, graph)['params']
    return {'encoders': enc, 'processor': proc, 'decoders': dec}

  # --- what training and evaluation call ------------------------------------
  def forward(self, params, batch, *, training: bool, key):
    """-> (output logits, stacked hint logits or None, aux dict)."""
    raise NotImplementedError

  def loss(self, params, batch, key, step=None):
    """Training loss; `step` (the training step, traced) is for schedules
    (DEAR's stochastic iterations) and unused here."""
    del step
    outputs, hints, aux = self.forward(params, batch, training=True, key=key)
    loss = losses.total_loss(self.spec, batch, outputs, hints)
    return loss + aux.pop('penalty', 0.0), aux

  def predict(self, params, batch, key=None):
    """Hard predictions as dm-clrs scores them (50 Sinkhorn steps)."""
    key = jax.random.PRNGKey(0) if key is None else key
    outputs, _, aux = self.forward(params, batch, training=False, key=key)
    return self.hard(outputs), aux

  def hard(self, outputs):
    """Output logits as the hard predictions `predict` returns."""
    return postprocess(self.spec, outputs, hard=True, sinkhorn_steps=50)

  # --- its own keys: the loop and `train.evaluate` never ask which model ----
  def summarise(self, auxes: list, evalset) -> dict:
    """Its own keys of an evaluation of `evalset` (`train.evaluate`'s dict):
    `auxes`, `predict`'s aux of each batch, on the host."""
    del auxes, evalset
    return {}

  def metrics(self, evaluation: dict) -> dict:
    """Which of its keys of a validation's evaluation metrics.jsonl logs."""
    del evaluation
    return {}

  def progress(self, aux) -> dict:
    """Progress-bar entries (name: text) from a training step's aux."""
    del aux
    return {}

  def results(self, results: dict, config, test_set) -> None:
    """Its own results.json keys, set in `results` (which holds the test
    evaluation's keys already)."""


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
