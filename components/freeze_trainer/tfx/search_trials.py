"""The trials of a policy search: the trainer's own training for each trial's values, sharing work.

Each trial trains as FreezeTrainer would with the trial's values applied (`trial_config`, as a
`hyperparameters` artifact applies them): the model the parameters describe, the policy's plan, either
loop, the freeze proof of every phase, on the schedule the trainer would build. What trials share:
- the examples' schema and files;
- the built model: trials whose values differ only in what training reads (`model_key`) train one model,
  its weights reset to the built ones, as a new build under the same seed would make them;
- one FeatureCache that keeps every key it built: where the schedule caches a phase, its frozen base's
  pooled features or its frozen prefix's outputs are computed once per cut for the whole search, within
  one memory budget, the key covering the frozen part's weights;
- phases (keras/training/shared_phases.py): a trial whose first phase resolves as an earlier one's did
  starts at its second phase from that state, and a trial whose every phase does is that trial.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import FnArgs

from freeze_trainer.keras.distribution import choose_strategy
from freeze_trainer.keras.data.example_feed import ExampleFeed
from freeze_trainer.keras.data.feature_cache import FeatureCache
from freeze_trainer.keras.planning.freeze_plan import PhasePlan, plan_policy
from freeze_trainer.keras.planning.phase_schedule import PhaseSchedule, build_schedule
from freeze_trainer.keras.training.phase_runner import build_phase_optimizer
from freeze_trainer.keras.training.shared_phases import (
    PhaseState, RecordFirstPhase, can_share_first_phase, load_state, phase_key,
)
from freeze_trainer.keras.training.with_proof import train_with_proof
from freeze_trainer.tfx.data_contract import DataContract
from freeze_trainer.tfx.run_fn import data_contract, data_fingerprint, examples_schema, training_examples
from freeze_trainer.tfx.search_space import trial_config
from freeze_trainer.tfx.trainer_config import TRAINER_PARAMETERS, TrainerConfig
from freeze_trainer.tfx.trainer_model import bind_inputs, build_from_config


@dataclass(frozen=True)
class TrialResult:
    metrics: dict[str, float]  # the last epoch's, training and validation
    seconds: float
    reused: tuple[str, ...]  # the phases started from an earlier trial's state, by name
    trained_phases: tuple[str, ...]  # the phases this trial trained itself


def phase_name(plan: PhasePlan, index: int) -> str:
    return plan.phase.name or f"phase {index + 1}"


_TRAINING_ONLY = {parameter.name for parameter in TRAINER_PARAMETERS if parameter.training_only}


def model_key(config: TrainerConfig) -> str:
    """What building the trial's model reads: every parameter but the table's `training_only` ones (the seed
    stays: it draws the new head's weights), and of the policy whether BatchNorm runs in inference mode.
    Trials with one key train one built model."""
    parameters = config.model_dump(mode="json", exclude={"freeze_policy", *_TRAINING_ONLY})
    return json.dumps([parameters, config.freeze_policy.bn_runs_in_inference_mode], sort_keys=True, default=str)


def phases_context(config: TrainerConfig, data_fingerprint: str, schedule: PhaseSchedule, count: int) -> str:
    """What the result of the first `count` phases depends on besides their plans (which `phase_key` adds:
    each phase's own fields and each layer's resolved state, i.e. trainable, BatchNorm mode and rate): every
    parameter but the policy's later phases, the data and those phases' steps (per epoch, and the remainder).
    The policy's global `batchnorm` reaches training in two ways only: the model is built with BatchNorm in
    inference mode or not (`bn_runs_in_inference_mode`, kept here), and each layer's mode and trainability
    in the plan, where a frozen layer is `frozen` whatever the field. So trials that differ only in `frozen`
    vs `affine` share phases that train no BatchNorm layer (a frozen base's head phase); `train` builds
    another model."""
    policy = config.freeze_policy.model_dump(mode="json", exclude_none=True)
    policy["phases"] = policy["phases"][:count]
    policy["batchnorm"] = {"inference_mode": config.freeze_policy.bn_runs_in_inference_mode}
    parameters = config.model_dump(mode="json", exclude={"freeze_policy"})
    steps = [(phase.steps_per_epoch, phase.remainder_steps) for phase in schedule.phases[:count]]
    return json.dumps([parameters, policy, data_fingerprint, steps], sort_keys=True, default=str)


@dataclass(frozen=True)
class _BuiltModel:
    """A trial's model, its strategy, the contract bound to its inputs, and its weights as built."""

    strategy: tf.distribute.Strategy
    model: tf.keras.Model
    contract: DataContract
    weights: tuple[np.ndarray, ...]


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
        self.models: dict[str, _BuiltModel] = {}  # model_key -> the model its trials train
        self.first_phases: dict[str, PhaseState] = {}  # phase_key -> the state after that first phase
        self.results: dict[str, TrialResult] = {}  # phase_key over every phase -> the trial that trained them

    def close(self) -> None:
        """Deletes the cached features and lets the built models go."""
        self.feature_cache.close()
        self.models.clear()

    def run(self, values: dict[str, Any]) -> TrialResult:
        """Trains a trial with `values` applied; raises what training raises (FreezeViolation...)."""
        started = time.perf_counter()
        config = trial_config(self.base, values)
        built = self._model(config)
        model, strategy = built.model, built.strategy
        with strategy.scope():
            plans = plan_policy(config.freeze_policy, model, config.learning_rate, config.epochs)
            optimizer = build_phase_optimizer(model, plans)
        train, evaluation = training_examples(self.fn_args, config, self.schema, built.contract)
        caching = config.feature_cache == "auto"
        feed = ExampleFeed(train, evaluation, config.batch_size, config.seed, self.feature_cache if caching else None)
        schedule = build_schedule(plans, feature_cache=caching, total_steps=self.fn_args.train_steps, model=model)
        names = tuple(phase_name(plan, index) for index, plan in enumerate(plans))
        whole_key = phase_key(plans, phases_context(config, self.data_fingerprint, schedule, len(plans)), len(plans))
        if whole_key in self.results:  # every phase as an earlier trial's: the same training, already done
            return replace(self.results[whole_key], seconds=time.perf_counter() - started, reused=names,
                           trained_phases=())
        key = phase_key(plans, phases_context(config, self.data_fingerprint, schedule, 1)) \
            if can_share_first_phase(plans) else None
        resume_from, record = None, None
        if key in self.first_phases:
            resume_from = load_state(self.first_phases[key], model, optimizer)
        elif key:
            record = RecordFirstPhase(model, optimizer, plans[0])
        with strategy.scope():
            checks, metrics = train_with_proof(
                model, schedule, feed, loop=config.training_loop, strategy=strategy, task=built.contract.task,
                callbacks=[record] if record else [], optimizer=optimizer,
                jit_compile=config.jit_compile, resume_from=resume_from, verbose=0,
            )
        if record and record.state:
            self.first_phases[key] = replace(record.state, check=checks[0])
        reused = names[:resume_from.phase] if resume_from else ()
        result = TrialResult(metrics, time.perf_counter() - started, reused, names[len(reused):])
        self.results[whole_key] = result
        return result

    def _model(self, config: TrainerConfig) -> _BuiltModel:
        """The model `config` describes: built for the first trial with its `model_key`, and for a later
        one the same model with the built weights back, under the trial's seed either way."""
        key = model_key(config)
        built = self.models.get(key)
        if built is None:
            tf.keras.backend.clear_session()
            tf.keras.utils.set_random_seed(config.seed)
            contract = data_contract(self.fn_args, config, self.tft_output, self.schema)
            strategy = choose_strategy(config.distribution)
            with strategy.scope():
                model = build_from_config(config, contract)
            contract = bind_inputs(config, contract, model, from_module=False)
            built = self.models[key] = _BuiltModel(strategy, model, contract, tuple(v.numpy() for v in model.variables))
        else:
            for variable, value in zip(built.model.variables, built.weights, strict=True):
                variable.assign(value)
            built.model.stop_training = False
            tf.keras.utils.set_random_seed(config.seed)
        return built
