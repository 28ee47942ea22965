"""Trials sharing a first phase (keras/training/shared_phases.py): a trial started from another's first-phase state
ends exactly as if it had trained that phase itself, and the key tells apart what the phase depends on."""

import numpy as np
import pytest
import tensorflow as tf

from freeze_trainer.keras.models.classifier_model import build_classifier
from freeze_trainer.keras.training.fit_training import train_with_fit
from freeze_trainer.keras.planning.freeze_plan import plan_policy
from freeze_trainer.keras.training.phase_runner import build_phase_optimizer
from freeze_trainer.keras.training.shared_phases import (
    RecordFirstPhase, can_share_first_phase, load_state, phase_key,
)
from freeze_trainer.policy.freeze_policy import policy_from_dict
from tests.model_builders import SHAPE, random_images

HEAD = {"name": "head", "epochs": 2, "rules": [{"freeze": {"base": True}}]}


def _policy(second_rules: list, head: dict = HEAD, **second) -> dict:
    finetune = {"name": "finetune", "epochs": 2, "optimizer_state": "keep", "rules": second_rules, **second}
    return {"version": 1, "phases": [head, finetune]}


UNFREEZE_B = [{"freeze": {"base": True}}, {"unfreeze": {"names": ["conv_b"]}}]
UNFREEZE_ALL = [{"unfreeze": {"base": True}}]


def _tiny() -> tf.keras.Model:
    """conv_a, bn, conv_b under the standard head, without dropout: every step is deterministic."""
    backbone = tf.keras.Sequential(
        [tf.keras.Input(SHAPE), tf.keras.layers.Conv2D(4, 3, strides=4, name="conv_a"),
         tf.keras.layers.BatchNormalization(name="bn"), tf.keras.layers.Conv2D(2, 1, name="conv_b")],
        name="tiny_backbone",
    )
    return build_classifier(backbone, "MobileNetV2", 3, bn_inference_mode=True, dropout=0.0)


def _trial(policy: dict, state=None):
    """One trial: trains every phase, or only the later ones from `state`; returns the model, the checks,
    the first phase's recorded state and the batches trained."""
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(0)
    model = _tiny()
    plans = plan_policy(policy_from_dict(policy), model, 1e-2, 1)
    optimizer = build_phase_optimizer(model, plans)
    record, resume_from = None, None
    if state is not None:
        resume_from = load_state(state, model, optimizer)
    else:
        record = RecordFirstPhase(model, optimizer, plans[0])
    images, labels = random_images(16)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    batches = BatchCount()
    checks, _ = train_with_fit(model, plans, data, data, callbacks=[batches, *([record] if record else [])],
                               verbose=0, optimizer=optimizer, resume_from=resume_from)
    return model, checks, record.state if record else None, batches.count


class BatchCount(tf.keras.callbacks.Callback):
    count = 0

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1


@pytest.fixture(scope="module")
def first_trial():
    from dataclasses import replace

    model, checks, state, batches = _trial(_policy(UNFREEZE_B))
    assert batches == 8  # two phases of two epochs of two batches
    return model, checks, replace(state, check=checks[0])


def test_a_trial_from_the_shared_first_phase_ends_as_one_that_trained_it(first_trial):
    whole_model, whole_checks, state = first_trial
    model, checks, _, batches = _trial(_policy(UNFREEZE_B), state)
    assert batches == 4  # the second phase only
    assert [check.as_dict() for check in checks] == [check.as_dict() for check in whole_checks]
    for ours, whole in zip(model.variables, whole_model.variables, strict=True):
        np.testing.assert_array_equal(ours.numpy(), whole.numpy(), err_msg=ours.name)


def test_a_trial_whose_later_phase_trains_more_variables_starts_from_the_same_state(first_trial):
    """The optimizer of this trial covers the whole base (another checkpoint layout): the state still loads."""
    _, whole_checks, state = first_trial
    _, checks, _, batches = _trial(_policy(UNFREEZE_ALL), state)
    assert batches == 4
    assert checks[0].as_dict() == whole_checks[0].as_dict()  # carried over, not trained again
    assert checks[1].passed and checks[1] != whole_checks[1]


def test_the_key_covers_the_first_phase_and_not_the_later_ones():
    model = _tiny()

    def key(policy, context="data"):
        return phase_key(plan_policy(policy_from_dict(policy), model, 1e-2, 1), context)

    assert key(_policy(UNFREEZE_B)) == key(_policy(UNFREEZE_ALL, learning_rate=1e-4))
    assert key(_policy(UNFREEZE_B)) != key(_policy(UNFREEZE_B, head={**HEAD, "epochs": 3}))
    assert key(_policy(UNFREEZE_B)) != key(_policy(UNFREEZE_B, head={**HEAD, "learning_rate": 1e-3}))
    assert key(_policy(UNFREEZE_B)) != key(_policy(UNFREEZE_B), context="other data")
    restoring = _policy(UNFREEZE_B, restore_best=True)
    assert not can_share_first_phase(plan_policy(policy_from_dict(restoring), model, 1e-2, 1))


def test_an_affine_trial_from_a_frozen_trials_head_phase_ends_as_one_that_trained_it(first_trial):
    """BatchNorm `frozen` vs `affine` changes nothing in a head phase on the frozen base (its BatchNorm layers
    are frozen and in inference mode either way): an affine trial that unfreezes the base (its BatchNorm's
    scale and offset train) started from the frozen trial's head phase ends bit-identical to the same affine
    trial trained whole."""
    _, _, state = first_trial
    affine = {**_policy(UNFREEZE_ALL), "batchnorm": "affine"}
    whole_model, whole_checks, _, _ = _trial(affine)
    model, checks, _, batches = _trial(affine, state)
    assert batches == 4
    assert [check.as_dict() for check in checks] == [check.as_dict() for check in whole_checks]
    bn_scale = next(v for v in model.variables if "bn/gamma" in v.name)
    assert not np.array_equal(bn_scale.numpy(), np.ones_like(bn_scale.numpy()))  # affine trained it
    for ours, whole in zip(model.variables, whole_model.variables, strict=True):
        np.testing.assert_array_equal(ours.numpy(), whole.numpy(), err_msg=ours.name)


def test_the_search_keys_share_phases_across_frozen_and_affine_batchnorm_only_where_no_batchnorm_trains():
    """The search's context keeps of `policy.batchnorm` only whether BatchNorm runs in inference mode; the
    plan keeps each layer's mode. A phase that trains a BatchNorm layer is not shared across modes; a trial
    whose every phase trains none is shared whole."""
    import json

    from freeze_trainer.keras.planning.phase_schedule import build_schedule
    from freeze_trainer.tfx.search_trials import phases_context
    from freeze_trainer.tfx.trainer_config import TrainerConfig

    model = _tiny()

    def key(policy: dict, batchnorm: str, count: int = 1) -> str:
        config = TrainerConfig.from_parameters(freeze_policy=json.dumps({**policy, "batchnorm": batchnorm}))
        plans = plan_policy(config.freeze_policy, model, 1e-2, 1)
        return phase_key(plans, phases_context(config, "data", build_schedule(plans), count), count)

    head_then_base = _policy(UNFREEZE_ALL)
    assert key(head_then_base, "frozen") == key(head_then_base, "affine") != key(head_then_base, "train")
    assert key(head_then_base, "frozen", 2) != key(head_then_base, "affine", 2)  # affine trains BatchNorm then
    head_twice = _policy([{"freeze": {"base": True}}], learning_rate=1e-3)
    assert key(head_twice, "frozen", 2) == key(head_twice, "affine", 2) != key(head_twice, "train", 2)
    assert key(head_twice, "frozen", 2) != key(_policy([{"freeze": {"base": True}}], learning_rate=1e-4), "frozen", 2)
    base_first = _policy(UNFREEZE_B, head={**HEAD, "rules": UNFREEZE_ALL})  # the first phase trains the BatchNorm
    assert key(base_first, "frozen") != key(base_first, "affine")


def test_trials_share_a_built_model_unless_a_parameter_building_it_differs():
    """`model_key`: the table's training-only parameters and the policy's phases do not change the built
    model; the seed (the new head's weights), dropout and BatchNorm's `train` mode (built in training mode) do."""
    import json

    from freeze_trainer.tfx.search_trials import model_key
    from freeze_trainer.tfx.trainer_config import TrainerConfig

    def key(policy: dict = _policy(UNFREEZE_B), **parameters) -> str:
        return model_key(TrainerConfig.from_parameters(freeze_policy=json.dumps(policy), **parameters))

    same = key()
    assert key(_policy(UNFREEZE_ALL, learning_rate=1e-4), learning_rate=1e-3, epochs=3, batch_size=8,
               training_loop="gradient_tape", feature_cache="off", checkpoint_every_steps=5) == same
    assert key({**_policy(UNFREEZE_B), "batchnorm": "affine"}) == same
    assert same not in {key(seed=1), key(dropout=0.5), key({**_policy(UNFREEZE_B), "batchnorm": "train"})}
