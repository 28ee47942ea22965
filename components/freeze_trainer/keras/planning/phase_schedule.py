"""The phase schedule: what each phase of a run does, resolved once from the plans and the run's numbers.

Everything that words a phase's length, numbers its epochs or decides whether it trains on cached
features reads it from here: the phase runner and both loops, the progress line, the freeze report and
the run report.

Epochs are numbered as Keras numbers them, from 0 across the whole run (`fit`'s `initial_epoch`, the
history's `epoch` column, a `restore_best` phase's `best_epoch`); a person reads them from 1
(`ScheduledPhase.epoch_text`, `best_epoch_text`). A `steps` phase is one epoch of that many batches, and
is left out when TFX's num_steps is spread over the epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from freeze_trainer.keras.models.classifier_model import feature_extractor
from freeze_trainer.keras.planning.freeze_plan import PhasePlan
from freeze_trainer.keras.planning.prefix_cut import PrefixCut, find_cut
from freeze_trainer.policy.freeze_policy import length_text

# The cut of a phase whose whole base is frozen: the base computed once up to its pooled features.
POOLED_FEATURES = "pooled features"


@dataclass(frozen=True)
class CacheUse:
    """How a phase uses the feature cache: the frozen part of the model below `cut` runs once, and the
    phase trains what lies above it on the cached outputs. `prefix` is the frozen prefix's cut
    (prefix_cut.py) where the phase trains part of the base; None where the whole base is frozen and the
    head trains on the pooled features."""

    cut: str  # POOLED_FEATURES, or the cut tensors' names: "block_15_add", "conv_c1, add_1"
    bytes_per_example: int | None = None  # what caching one example takes; None: not known (no model)
    prefix: PrefixCut | None = field(default=None, compare=False)

    @property
    def what_trains(self) -> str:
        """The progress line's words: "head on cached base features", "live part on cached block_15_add"."""
        return "head on cached base features" if self.prefix is None else f"live part on cached {self.cut}"

    @property
    def size_text(self) -> str:
        return "" if self.bytes_per_example is None else f" ({self.bytes_per_example:,} bytes per example)"


@dataclass(frozen=True)
class ScheduledPhase:
    index: int  # from 0, in the order the phases run
    plan: PhasePlan
    first_epoch: int  # Keras's numbering: from 0 across the whole run
    end_epoch: int  # one past its last epoch
    # Batches in each epoch; None: one pass over the training examples, counted by the feed.
    steps_per_epoch: int | None
    remainder_steps: int  # more batches in its last epoch, so that TFX's num_steps is met exactly
    cache: CacheUse | None
    cache_blocker: str | None  # why the phase does not cache; None when it does
    newly_trainable: frozenset[str]  # layers it trains that the phase before did not

    @property
    def cache_reason(self) -> str:
        """The run report's words for the cache's use in this phase."""
        if self.cache:
            return f"used: {self.cache.what_trains}{self.cache.size_text}"
        return "off (feature_cache: off)" if self.cache_blocker == _OFF else f"not used: {self.cache_blocker}"

    @property
    def cache_clause(self) -> str:
        """The plan summary's words: where the phase cuts and what that costs, or why it does not cache."""
        if self.cache and self.cache.prefix is not None:
            return f"trains on a cached frozen prefix: cuts at {self.cache.cut}{self.cache.size_text}"
        return cache_clause(self.plan, self.cache_blocker) + (self.cache.size_text if self.cache else "")

    @property
    def number(self) -> int:
        """The phase as a person counts it, from 1."""
        return self.index + 1

    @property
    def epoch_count(self) -> int:
        return self.end_epoch - self.first_epoch

    @property
    def length_text(self) -> str:
        """The phase's length as every report words it: "4 epochs", "1 epoch" or "250 steps"."""
        return phase_length(self.plan)

    @property
    def epoch_text(self) -> str:
        """Its epochs from 1, as a person reads them: "epoch 3" or "epochs 1-4"."""
        first, last = self.first_epoch + 1, self.end_epoch
        return f"epoch {first}" if first == last else f"epochs {first}-{last}"

    def best_epoch_text(self, best_epoch: int | None) -> str:
        """The epoch a `restore_best` phase ended with, as a person reads it: "epoch 3", "its start"
        (the previous phase's last epoch) or "-" (the phase does not restore)."""
        if best_epoch is None:
            return "-"
        return "its start" if best_epoch < self.first_epoch else f"epoch {best_epoch + 1}"

    def transition(self) -> dict:
        """optimizer_state, warmup, restore_best: how the phase starts from the one before."""
        return self.plan.transition()


def newly_trainable(plan: PhasePlan, previous: PhasePlan | None) -> frozenset[str]:
    """The layers `plan` trains that `previous` did not (all it trains when it is the first phase): the
    ones a transition's `reset_new` and warm-up act on."""
    return frozenset(plan.trainable_layers() - (previous.trainable_layers() if previous else set()))


def phase_length(plan: PhasePlan) -> str:
    """"4 epochs", "1 epoch" or "250 steps"."""
    return length_text(plan.epochs, plan.steps)


def cache_clause(plan: PhasePlan, blocker: str | None = None) -> str:
    """The plan summary's words for the phase's cache use: `blocker` is why the run does not cache (None:
    the plan's own reason, if any)."""
    blocker = blocker or plan.feature_cache_blocker
    return f"no feature cache: {blocker}" if blocker else "head trains on cached base features"


@dataclass(frozen=True)
class PhaseSchedule:
    phases: tuple[ScheduledPhase, ...]
    # The batches of an epoch counted in epochs; None: one pass over the training examples.
    steps_per_epoch: int | None = None

    def __iter__(self):
        return iter(self.phases)

    def __len__(self) -> int:
        return len(self.phases)

    def __getitem__(self, index: int) -> ScheduledPhase:
        return self.phases[index]

    @property
    def plans(self) -> list[PhasePlan]:
        return [phase.plan for phase in self.phases]

    @property
    def caches(self) -> bool:
        """Whether any phase trains on cached features, i.e. whether the run needs a feature cache."""
        return any(phase.cache for phase in self.phases)


_OFF = "feature_cache: off"


def _bytes_per_example(output) -> int:
    return int(np.prod(output.shape[1:])) * tf.as_dtype(output.dtype).size


def _cache(plan: PhasePlan, feature_cache: bool, model: tf.keras.Model | None
           ) -> tuple[CacheUse | None, str | None]:
    """Where the phase caches, or None with the reason: the one place that decides it. The whole base
    frozen: the pooled features; else, given the model, the frozen prefix's cut where it is deterministic."""
    if not feature_cache:
        return None, _OFF
    if plan.caches_features:
        return CacheUse(POOLED_FEATURES, model and _bytes_per_example(feature_extractor(model).output)), None
    if model is None:
        return None, plan.feature_cache_blocker
    cut = find_cut(model, plan)
    if not cut.caches:
        return None, cut.blocker
    return CacheUse(", ".join(cut.names), cut.bytes_per_example, cut), None


def build_schedule(plans: list[PhasePlan], feature_cache: bool = True, total_steps: int | None = None,
                   steps_per_epoch: int | None = None, remainder_steps: int = 0,
                   model: tf.keras.Model | None = None) -> PhaseSchedule:
    """The schedule of `plans`. `feature_cache`: whether cached features may serve (the `feature_cache`
    parameter is `auto`); `model`, the planned model: without it only phases whose whole base is frozen
    cache, and no phase says where it would cut. `total_steps` (TFX's train_args.num_steps) is spread exactly over the epochs of
    every phase counted in epochs, at least one step each, the last epoch taking the remainder; without it,
    `steps_per_epoch` (None: one pass over the training examples) and `remainder_steps` are given as is."""
    counted = [index for index, plan in enumerate(plans) if not plan.steps]
    if total_steps:
        counted_epochs = sum(plans[index].epochs for index in counted)
        steps_per_epoch = max(1, total_steps // counted_epochs) if counted_epochs else None
        remainder_steps = max(0, total_steps - steps_per_epoch * counted_epochs) if steps_per_epoch else 0
    last_counted = counted[-1] if counted else None
    phases, first = [], 0
    for index, plan in enumerate(plans):
        epochs = 1 if plan.steps else plan.epochs
        cache, reason = _cache(plan, feature_cache, model)
        phases.append(ScheduledPhase(
            index=index, plan=plan, first_epoch=first, end_epoch=first + epochs,
            steps_per_epoch=plan.steps or steps_per_epoch,
            remainder_steps=remainder_steps if index == last_counted and steps_per_epoch else 0,
            cache=cache, cache_blocker=reason,
            newly_trainable=newly_trainable(plan, plans[index - 1] if index else None),
        ))
        first += epochs
    return PhaseSchedule(tuple(phases), steps_per_epoch)
