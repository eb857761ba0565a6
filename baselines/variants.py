"""The compared models, in one table: what `baselines.compare` trains under
each name, against which teacher, by which learner, and in which colour the
plots and notebooks draw it.

A new variant is one more `Variant` in VARIANTS (or `add(Variant(...))` from
a module of one's own, before compare resolves its plan).
"""

from __future__ import annotations

import dataclasses

FLAX, OFFICIAL = 'flax', 'official'  # learners: dear_jax.train, clrs_official


@dataclasses.dataclass(frozen=True)
class Variant:
  """One compared model.

  kind: dear_jax's model_kind (None for dm-clrs's own BaselineModel);
  hint_mode: the NAR's (and BaselineModel's) hint mode, None: the config's;
  overrides: {'section.key': value} on top of its kind's config;
  config_file: (preset file, what it sets: sections or 'section.key') for a
  model whose model, solver and optimiser come from a config file of its own
  (with the sweep's --config overrides);
  teacher: the variant of the same sweep (algorithm and seed) it trains
  against, which must finish first;
  learner: FLAX (dear_jax.train) or OFFICIAL (baselines.clrs_official);
  colour: matplotlib's, None: the next of its cycle."""
  name: str
  kind: str | None
  hint_mode: str | None = None
  overrides: dict = dataclasses.field(default_factory=dict)
  config_file: tuple | None = None
  teacher: str | None = None
  learner: str = FLAX
  colour: str | None = None


VARIANTS: dict = {}


def add(variant: Variant) -> Variant:
  VARIANTS[variant.name] = variant
  return variant


for _v in (
    Variant('dear', 'dear', colour='tab:red'),
    # DEAR + CGP (the Cayley graph pass).
    Variant('dear_cgp', 'dear', overrides={'dear.cgp': True}),
    # The paper's "DEAR w/ GAS" without GRANOLA (not ported): alignment
    # with DEAR's weight and stochastic extra iterations with DEAR's alpha.
    Variant('dear_align', 'dear', overrides={'dear.align_weight': 0.01,
                                             'dear.stochastic_alpha': 0.1},
            teacher='nar_nohint'),
    # DEAR's release, trained on the sweep's data for the sweep's steps.
    Variant('dear_paper', 'dear', config_file=(
        'configs/dear_paper.py', ('model', 'dear', 'train.learning_rate')),
            colour='tab:orange'),
    Variant('nar', 'nar', 'encoded_decoded', colour='tab:blue'),
    Variant('nar_nohint', 'nar', 'none', colour='tab:cyan'),
    # DEAR's "NAR (LT)": the no-hint NAR that learns when to stop (told no
    # step count).
    Variant('nar_lt', 'nar', 'none', {'nar.learn_termination': True},
            colour='tab:purple'),
    Variant('clrs_official', None, 'encoded_decoded', learner=OFFICIAL,
            colour='tab:green'),
    # dear and nar_lt with Mirjanic et al.'s softmax aggregation or latent
    # decay (their 0.9): results/sharper/PROTOCOL.md.
    Variant('dear_softmax', 'dear', overrides={'model.aggregation': 'softmax'}),
    Variant('dear_decay', 'dear', overrides={'model.latent_decay': 0.9}),
    Variant('nar_lt_softmax', 'nar', 'none', {'nar.learn_termination': True,
                                              'model.aggregation': 'softmax'}),
    Variant('nar_lt_decay', 'nar', 'none', {'nar.learn_termination': True,
                                            'model.latent_decay': 0.9}),
):
  add(_v)


def official(model: str) -> bool:
  """Whether `model` trains as dm-clrs's BaselineModel."""
  return VARIANTS[model].learner == OFFICIAL


def colours() -> dict:
  """{name: colour} of the variants that have one."""
  return {v.name: v.colour for v in VARIANTS.values() if v.colour}


def teacher(model: str) -> str | None:
  """The variant `model` trains against, or None."""
  return VARIANTS[model].teacher
