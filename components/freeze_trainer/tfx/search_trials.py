"""The trials of a policy search: the trainer's own training for each trial's values, sharing work.

Each trial trains as FreezeTrainer would with the trial's values applied (`trial_config`, as a
`hyperparameters` artifact applies them): the model the parameters describe, the policy's plan, either
loop, the freeze proof of every phase, on the schedule the trainer would build. What trials share: the
examples' schema and files, one FeatureCache that keeps every key it built (where the schedule caches a
phase, its frozen base's pooled features or its frozen prefix's outputs are computed once per cut for the
whole search, within one memory budget, the key covering the frozen part's weights), and the first
phase's result (keras/training/shared_phases.py): a trial whose first phase resolves as an earlier one's
did starts at its second phase from that state.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from typing import Any

import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import FnArgs

from freeze_trainer.keras.distribution import choose_strategy
from freeze_trainer.keras.data.example_feed import ExampleFeed
from freeze_trainer.keras.data.feature_cache import FeatureCache
from freeze_trainer.keras.planning.freeze_plan import PhasePlan, plan_policy
from freeze_trainer.keras.planning.phase_schedule import build_schedule
from freeze_trainer.keras.training.phase_runner import build_phase_optimizer
from freeze_trainer.keras.training.shared_phases import (
    PhaseState, RecordFirstPhase, can_share_first_phase, phase_key, write_resume_checkpoint,
)
from freeze_trainer.keras.training.with_proof import train_with_proof
from freeze_trainer.tfx.run_fn import data_contract, data_fingerprint, examples_schema, training_examples
from freeze_trainer.tfx.search_space import trial_config
from freeze_trainer.tfx.trainer_config import TrainerConfig
from freeze_trainer.tfx.trainer_model import bind_inputs, build_from_config


@dataclass(frozen=True)
class TrialResult:
    metrics: dict[str, float]  # the last epoch's, training and validation
    seconds: float
    reused: tuple[str, ...]  # the phases started from an earlier trial's state, by name
    trained_phases: tuple[str, ...]  # the phases this trial trained itself


def phase_name(plan: PhasePlan, index: int) -> str:
    return plan.phase.name or f"phase {index + 1}"


def first_phase_context(config: TrainerConfig, data_fingerprint: str, first_phase_steps: tuple | None) -> str:
    """What the first phase's result depends on besides its plan (which `phase_key` adds: the phase's own
    fields and each layer's resolved state, i.e. trainable, BatchNorm mode and rate): every parameter but
    the policy's later phases, the data and the first phase's steps (per epoch, and the remainder). The policy's global `batchnorm` reaches
    training in two ways only: the model is built with BatchNorm in inference mode or not
    (`bn_runs_in_inference_mode`, kept here), and each layer's mode and trainability in the plan, where a
    frozen layer is `frozen` whatever the field. So trials that differ only in `frozen` vs `affine` share a
    first phase that trains no BatchNorm layer (a frozen base's head phase); `train` builds another model."""
    policy = config.freeze_policy.model_dump(mode="json", exclude_none=True)
    policy["phases"] = policy["phases"][:1]
    policy["batchnorm"] = {"inference_mode": config.freeze_policy.bn_runs_in_inference_mode}
    parameters = config.model_dump(mode="json", exclude={"freeze_policy"})
    return json.dumps([parameters, policy, data_fingerprint, first_phase_steps], sort_keys=True, default=str)


class SearchTrials:
    """Runs trials on the data of `fn_args` (TFX's Tuner's) with the trainer parameters `base` (name ->
    value, None for the default); scratch files go under `working_dir`."""

    def __init__(self, fn_args: FnArgs, base: dict[str, Any], working_dir: str):
        self.fn_args, self.base, self.working_dir = fn_args, base, working_dir
        self.tft_output = tft.TFTransformOutput(fn_args.transform_output) if fn_args.transform_output else None
        self.schema = examples_schema(fn_args, self.tft_output)
        self.data_fingerprint = data_fingerprint(fn_args)
        base_config = TrainerConfig.from_parameters(**base)
        budget = base_config.feature_cache_memory_mb << 20
        self.feature_cache = FeatureCache(self.data_fingerprint, os.path.join(working_dir, "feature_cache"), budget,
                                          keep_stale=True)
        self.first_phases: dict[str, PhaseState] = {}  # phase_key -> the state after that first phase

    def close(self) -> None:
        self.feature_cache.close()

    def run(self, number: int, values: dict[str, Any]) -> TrialResult:
        """Trains trial `number` with `values` applied; raises what training raises (FreezeViolation...)."""
        started = time.perf_counter()
        config = trial_config(self.base, values)
        tf.keras.backend.clear_session()
        tf.keras.utils.set_random_seed(config.seed)
        contract = data_contract(self.fn_args, config, self.tft_output, self.schema)
        strategy = choose_strategy(config.distribution)
        with strategy.scope():
            model = build_from_config(config, contract)
            contract = bind_inputs(config, contract, model, from_module=False)
            plans = plan_policy(config.freeze_policy, model, config.learning_rate, config.epochs)
            optimizer = build_phase_optimizer(model, plans)
        train, evaluation = training_examples(self.fn_args, config, self.schema, contract)
        caching = config.feature_cache == "auto"
        feed = ExampleFeed(train, evaluation, config.batch_size, config.seed, self.feature_cache if caching else None)
        schedule = build_schedule(plans, feature_cache=caching, total_steps=self.fn_args.train_steps, model=model)
        first_steps = (schedule[0].steps_per_epoch, schedule[0].remainder_steps)
        key = phase_key(plans, first_phase_context(config, self.data_fingerprint, first_steps)) \
            if can_share_first_phase(plans) else None
        checkpoint_dir, record, reused = None, None, ()
        if key in self.first_phases:
            checkpoint_dir = os.path.join(self.working_dir, f"trial_{number}", "checkpoints")
            write_resume_checkpoint(self.first_phases[key], model, optimizer, checkpoint_dir)
            reused = (phase_name(plans[0], 0),)
        elif key:
            record = RecordFirstPhase(model, optimizer, plans[0])
        with strategy.scope():
            checks, metrics = train_with_proof(
                model, schedule, feed, loop=config.training_loop, strategy=strategy, task=contract.task,
                callbacks=[record] if record else [], optimizer=optimizer,
                jit_compile=config.jit_compile, checkpoint_dir=checkpoint_dir, verbose=0,
            )
        if record and record.state:
            self.first_phases[key] = replace(record.state, check=checks[0])
        if checkpoint_dir and tf.io.gfile.exists(os.path.dirname(checkpoint_dir)):
            tf.io.gfile.rmtree(os.path.dirname(checkpoint_dir))
        trained = tuple(phase_name(plan, index) for index, plan in enumerate(plans) if index >= len(reused))
        return TrialResult(metrics, time.perf_counter() - started, reused, trained)
