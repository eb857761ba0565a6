"""The stepwise CLRS reasoner: one processor step per algorithm step.

Mirrors dm-clrs `nets.Net`: it is told the true number of steps (padded T, each
sample frozen after its own length), step 0 sees the true initial hints, later
steps see the model's own soft hint predictions (teacher forcing 0, run.py's
default) when hints are encoded.

It computes less than dm-clrs's loop for the same function (float rounding
aside): inputs are encoded once, not at every step; the layers that read the
encoded edge features are composed with the encoders' small layers instead
of multiplying (B, N, N, H) features (`EdgeMaps`); and outputs are decoded
once, after the loop, from the decoder inputs of the step each sample ended
at (dm-clrs decodes them at every step and freezes the logits; a decoder of
frozen inputs is the frozen decoder). Gumbel noise of permutation outputs is
drawn at every step and frozen with them, so training draws the same noise
as a per-step decode would.

With `nar.learn_termination` (DEAR's "NAR (LT)", no hints only) a termination
head, a linear map of the max-pooled node states to one "continue" logit,
reads the state after every step. Training runs the true number of steps
(as DEAR's release does) and adds the binary cross-entropy of the head
against the true continue flag (`termination_loss`). Evaluation ignores the
batch's lengths and hints: every graph runs until its head says stop (logit
<= 0; its outputs are those of the step it stopped at) or until the cap
ceil(max_steps_factor * n), a function of the graph size only.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dear_jax import batches as batch_lib
from dear_jax import sections
from dear_jax.decoders import Decoders, edge_layer, gumbel_probe, postprocess
from dear_jax.encoders import POINTERS, Encoders, expand_pointer
from dear_jax.groups import eval_chunk, in_graph_groups
from dear_jax.model import Reasoner
from dear_jax.processors import torch_uniform

HINT_MODES = ('encoded_decoded', 'decoded_only', 'none')


def hint_flags(hint_mode: str, key: str = 'nar.hint_mode') -> tuple:
  """(encode hints, decode hints) of a hint mode, as run.py's main()."""
  sections.one_of(key, hint_mode, HINT_MODES)
  return hint_mode == 'encoded_decoded', hint_mode != 'none'


@dataclasses.dataclass(frozen=True)
class NarConfig(sections.Section):
  """The `nar` section, checked."""
  PREFIX = 'nar.'
  hint_mode: str = 'encoded_decoded'  # HINT_MODES
  # DEAR's NAR (LT) (hint_mode 'none' only): a head learns when to stop;
  # tests run until it says stop, told no step count, capped at
  # ceil(max_steps_factor * n) steps (6: above every DEAR algorithm's true
  # count, SCC's ~6n the longest). results.json reports the steps.
  learn_termination: bool = False
  max_steps_factor: float = 6.0

  @classmethod
  def check(cls, v, prefix: str) -> None:
    hint_flags(v.hint_mode, f'{prefix}hint_mode')
    if not isinstance(v.learn_termination, bool):
      raise ValueError(f'{prefix}learn_termination must be True or False, '
                       f'got {v.learn_termination!r}')
    if v.learn_termination and v.hint_mode != 'none':
      raise ValueError(f'{prefix}learn_termination=True needs {prefix}'
                       f'hint_mode=none (DEAR\'s NAR (LT) has no hints), got '
                       f'{v.hint_mode!r}')
    sections.positive(f'{prefix}max_steps_factor', v.max_steps_factor)


def step_cap(nb_nodes: int, factor: float) -> int:
  """The learnt-termination loop's cap: ceil(factor * n), at least 1. A
  function of the graph size only, never of the graph's true step count;
  the default 6 covers the longest of DEAR's ten algorithms (SCC, about 6n
  steps; DFS and DAG shortest paths about 3n; the rest n or fewer)."""
  return max(1, math.ceil(factor * nb_nodes))


class TerminationHead(nn.Module):
  """DEAR's termination network: Linear(H -> 1) on the max over nodes."""

  @nn.compact
  def __call__(self, hidden):
    pooled = jnp.max(hidden, axis=1)
    return nn.Dense(1, kernel_init=torch_uniform, name='linear')(pooled)[:, 0]


def termination_loss(logits, lengths):
  """DEAR's `get_termination_loss`: logits [S, B] read after processor
  steps 1..S. At step t (0-based) graph b is still running while
  t < lengths_b - 1 and should continue while t + 1 < lengths_b - 1; the
  loss is the mean over steps with a running graph of the mean BCE over
  the running graphs."""
  t = jnp.arange(logits.shape[0])[:, None]
  target = (t + 1 < lengths[None] - 1).astype(logits.dtype)
  running = (t < lengths[None] - 1).astype(logits.dtype)
  bce = optax.sigmoid_binary_cross_entropy(logits, target)
  per_step = (jnp.sum(bce * running, axis=1) /
              jnp.maximum(jnp.sum(running, axis=1), 1))
  has = (jnp.sum(running, axis=1) > 0).astype(logits.dtype)
  return jnp.sum(per_step * has) / jnp.maximum(jnp.sum(has), 1)


def termination_summary(steps, capped, lengths, cap: int) -> dict:
  """results.json's account of learnt termination on a split: steps taken
  against the true steps (lengths - 1, at least 1, as the NAR told the
  lengths runs), per graph and summarised."""
  steps = np.asarray(steps, np.int64)
  true = np.maximum(np.asarray(lengths, np.int64) - 1, 1)
  return dict(
      nar_steps_mean=float(steps.mean()),
      nar_true_steps_mean=float(true.mean()),
      nar_stopped_early_fraction=float((steps < true).mean()),
      nar_stopped_exact_fraction=float((steps == true).mean()),
      nar_stopped_late_fraction=float((steps > true).mean()),
      nar_step_cap=int(cap),
      nar_cap_hit_fraction=float(np.asarray(capped, bool).mean()),
      nar_steps=steps.tolist(), nar_true_steps=true.tolist())


def _freeze(lengths, step, new, old):
  """Keeps `old` for samples whose trajectory ended before `step`."""
  not_done = lengths > step + 1
  return jnp.where(not_done.reshape(not_done.shape + (1,) * (new.ndim - 1)),
                   new, old)


def _as_fed(spec: dict, hints: dict, nb_nodes: int, dtype) -> dict:
  """True hints in the form later steps feed soft predictions back (the
  model's float type, pointers one-hot): encoding them gives the same features, and the step's
  fed hints can be carried (and frozen) through the loop."""
  return {k: (expand_pointer(v, nb_nodes) if spec[k][2] in POINTERS
              else v).astype(dtype) for k, v in hints.items()}


class EdgeMaps:
  """Every linear layer that reads edge features, without (B, N, N, H) x
  (H, .) products.

  Edge features are sums of encodings, each a linear layer on a probe's
  low-dimensional data x_p (a mask, a one-hot pointer, ...): at a step,
  edge = sum_p (x_p W_p + b_p) over the inputs and the encoded hints (a mean
  over one node axis for edge pointers, which commutes with the rest). For a
  layer L(e) = e K + c this gives L(edge) = sum_p (x_p (W_p K) + b_p K) + c:
  the encoders with composed parameters and K's width. So the processor's
  `EDGE_LAYERS` and the e_t layer of each decoder in `dec_names` (its first H
  kernel rows; the edge latent's rows stay in the decoder) each read the
  inputs' part, computed once per forward, plus the step's hints pushed
  through its composed encoders: a broadcast product that XLA fuses into the
  layer's consumer (one concatenated map for all layers would materialise,
  and in the gradient transpose, a wide array at every step).
  """

  def __init__(self, spec, params, hidden, inputs, proc_layers, dec_names,
               fed_names, nb_nodes, node_mask=None):
    self.spec = spec
    self.node_mask = node_mask  # a padded batch's (encoders' means)
    maps = {('processor', n): params['processor'][n] for n in proc_layers}
    maps.update({('decoders', n): params['decoders'][edge_layer(spec, n)]
                 for n in dec_names if edge_layer(spec, n)})
    probes = set(inputs) | set(fed_names)
    self.enc_params, self.base = {}, {}
    for key, p in maps.items():
      kernel = p['kernel'][:hidden]
      self.enc_params[key] = {
          layer: {'kernel': q['kernel'] @ kernel, 'bias': q['bias'] @ kernel}
          for layer, q in params['encoders'].items()
          if layer.rsplit('_enc_', 1)[0] in probes}
      self.base[key] = p['bias'] + self._encode(key, inputs, nb_nodes)

  def _encode(self, key, probes, nb_nodes):
    width = next(iter(self.enc_params[key].values()))['kernel'].shape[1]
    return Encoders(spec=self.spec, hidden=width).apply(
        {'params': self.enc_params[key]}, probes, nb_nodes, self.node_mask)[1]

  def __call__(self, fed: dict, nb_nodes: int) -> dict:
    """{'processor': {layer: L(edge)}, 'decoders': {probe: L(edge)}} for the
    edge features of a step whose encoded hints are `fed`."""
    out = {'processor': {}, 'decoders': {}}
    for (group, name), base in self.base.items():
      out[group][name] = (base + self._encode((group, name), fed, nb_nodes)
                          if fed else base)
    return out


class StepwiseNAR(Reasoner):

  def __init__(self, spec, sample_batch, cfg, hint_mode: str,
               learn_termination: bool = False, max_steps_factor: float = 6.0):
    """cfg: a model.ModelConfig (or the `model` section)."""
    NarConfig(hint_mode=hint_mode, learn_termination=learn_termination,
              max_steps_factor=max_steps_factor)  # checks them
    self.encode_hints, self.decode_hints = hint_flags(hint_mode)
    self.hint_mode = hint_mode
    self.learn_termination = bool(learn_termination)
    self.max_steps_factor = float(max_steps_factor)
    self.termination = TerminationHead()
    super().__init__(spec, sample_batch, cfg)

  def init(self, key, batch):
    params = super().init(key, batch)
    if self.learn_termination:
      h = jnp.zeros((len(batch['lengths']), batch_lib.num_nodes(batch),
                     self.hidden))
      params['termination'] = self.termination.init(
          jax.random.fold_in(key, 7), h)['params']
    return params

  def continue_logits(self, params, hidden):
    """[B] logits of the termination head: continue while > 0."""
    return self.termination.apply({'params': params['termination']}, hidden)

  def loss(self, params, batch, key, step=None):
    """Reasoner.loss plus, with learnt termination, `termination_loss`."""
    loss, aux = super().loss(params, batch, key, step)
    return loss + aux.get('termination_loss', 0.0), aux

  def predict(self, params, batch, key=None):
    """Reasoner.predict, on a CPU one graph at a time (groups.eval_chunk): a
    batch's triplet tensors outgrow the caches, and with learnt termination
    no graph steps on for its batchmates. The same predictions."""
    return in_graph_groups(
        lambda group: super(StepwiseNAR, self).predict(params, group, key),
        batch, eval_chunk())

  def summarise(self, auxes, evalset):
    """With learnt termination, the steps taken against the true steps."""
    if not self.learn_termination:
      return {}
    n = evalset.num_samples
    return termination_summary(
        np.concatenate([a['nar_steps'] for a in auxes])[:n],
        np.concatenate([a['nar_capped'] for a in auxes])[:n],
        evalset.lengths, int(auxes[0]['nar_step_cap']))

  def results(self, results, config, test_set):
    results['hint_mode'] = self.hint_mode

  def _encode_fed(self, params, node0, graph0, fed, nb_nodes, node_mask=None):
    """Node and graph features of a step (its edge features: EdgeMaps)."""
    if not fed:
      return node0, graph0
    d_node, _, d_graph, _ = self.encode(params, fed, nb_nodes, node_mask)
    return node0 + d_node, graph0 + d_graph

  def forward(self, params, batch, *, training, key):
    nb_nodes = batch_lib.num_nodes(batch)
    node_mask = batch.get('node_mask')  # a padded batch's
    # The input edge features are only read through EdgeMaps.
    node0, _, graph0, adj = self.encode(params, batch['inputs'], nb_nodes,
                                        node_mask)
    batch_size = node0.shape[0]
    adj = self.adjacency(batch, adj)
    fed_names = tuple(batch['hints']) if self.encode_hints else ()
    proc_layers = [n for n in self.processor.EDGE_LAYERS
                   if n in params['processor']]
    step_maps, out_maps = (
        EdgeMaps(self.spec, params, self.hidden, batch['inputs'], layers,
                 names, fed_names, nb_nodes, node_mask)
        for layers, names in ((proc_layers, self.hint_names),
                              ((), self.output_names)))
    out_reads_edges = bool(out_maps.base)
    draws_noise = training and any(gumbel_probe(self.spec, k)
                                   for k in self.decoders.names)

    def step(hidden, i, fed):
      """-> (h_new, hint logits, what the output decoders would read)."""
      node, graph = self._encode_fed(params, node0, graph0, fed, nb_nodes,
                                     node_mask)
      terms = step_maps(fed, nb_nodes)
      h_new, tri = self.process(params['processor'], node, None, graph, adj,
                                hidden, edge_terms=terms['processor'],
                                node_mask=node_mask)
      step_key = jax.random.fold_in(key, i)
      noise = {}
      if draws_noise:  # as a decode of all probes at this step would draw
        noise = self.decoders.apply(
            {'params': params['decoders']}, batch_size, nb_nodes,
            method=Decoders.draw_gumbel, rngs={'gumbel': step_key})
      hint_preds = {}
      if self.decode_hints:
        _, hint_preds = self.decode(
            params, node, hidden, h_new, None, tri, graph, training, step_key,
            names=self.hint_names, edge_terms=terms['decoders'],
            gumbel={k: v for k, v in noise.items() if k in self.hint_names},
            node_mask=node_mask)
      ends = dict(fed=fed, h_prev=hidden, h_new=h_new,
                  noise={k: v for k, v in noise.items()
                         if k in self.output_names})
      if out_reads_edges:
        ends['tri'] = tri
      return h_new, hint_preds, ends

    def decode_ends(ends):
      node, graph = self._encode_fed(params, node0, graph0, ends['fed'],
                                     nb_nodes, node_mask)
      outs, _ = self.decode(
          params, node, ends['h_prev'], ends['h_new'], None, ends.get('tri'),
          graph, training, key, names=self.output_names,
          edge_terms=out_maps(ends['fed'], nb_nodes)['decoders'],
          gumbel=ends['noise'], node_mask=node_mask)
      return outs

    if self.learn_termination and not training:
      # Told nothing of the true steps: neither lengths nor hints are read.
      ends, aux = self._until_stop(params, step, jnp.zeros(node0.shape),
                                   step_cap(nb_nodes, self.max_steps_factor))
      return decode_ends(ends), None, aux

    lengths = batch['lengths']
    nb_steps = max(1, batch_lib.num_steps(batch) - 1)
    first = (_as_fed(self.spec, {k: v[0] for k, v in batch['hints'].items()},
                     nb_nodes, node0.dtype) if self.encode_hints else {})
    hidden, hint_preds, ends = step(jnp.zeros(node0.shape), 0, first)
    head = lambda h: (self.continue_logits(params, h) if
                      self.learn_termination else jnp.zeros(h.shape[:1]))

    def body(carry, i):
      hidden, hint_preds, ends = carry
      fed = (postprocess(self.spec, hint_preds, hard=False)
             if self.encode_hints else {})
      hidden, hint_preds, new_ends = step(hidden, i, fed)
      ends = jax.tree_util.tree_map(
          lambda n, o: _freeze(lengths, i, n, o), new_ends, ends)
      return (hidden, hint_preds, ends), (hint_preds, head(hidden))

    (_, _, ends), (later_hints, later_logits) = jax.lax.scan(
        body, (hidden, hint_preds, ends), jnp.arange(1, nb_steps))
    outs = decode_ends(ends)
    stacked = None
    if self.decode_hints:
      stacked = jax.tree_util.tree_map(
          lambda first, rest: jnp.concatenate([first[None], rest]),
          hint_preds, later_hints)
    aux = {}
    if self.learn_termination:
      logits = jnp.concatenate([head(hidden)[None], later_logits])
      aux['termination_loss'] = termination_loss(logits, lengths)
    return outs, stacked, aux

  def _until_stop(self, params, step, h0, cap: int):
    """Steps every graph until its head says stop or `cap` steps: (the
    decoder inputs of each graph's last step, {'nar_steps': [B] steps
    taken, 'nar_capped': [B] still running at the cap, 'nar_step_cap'})."""
    hidden, _, ends = step(h0, 0, {})
    running = self.continue_logits(params, hidden) > 0
    steps = jnp.ones(running.shape, jnp.int32)

    def cond(carry):
      i, _, _, running, _ = carry
      return (i < cap) & jnp.any(running)

    def body(carry):
      i, hidden, ends, running, steps = carry
      hidden, _, new_ends = step(hidden, i, {})
      ends = jax.tree_util.tree_map(
          lambda n, o: jnp.where(
              running.reshape(running.shape + (1,) * (n.ndim - 1)), n, o),
          new_ends, ends)
      steps = steps + running.astype(jnp.int32)
      running = running & (self.continue_logits(params, hidden) > 0)
      return i + 1, hidden, ends, running, steps

    _, _, ends, running, steps = jax.lax.while_loop(
        cond, body, (jnp.asarray(1), hidden, ends, running, steps))
    return ends, dict(nar_steps=steps, nar_capped=running,
                      nar_step_cap=jnp.asarray(cap))
