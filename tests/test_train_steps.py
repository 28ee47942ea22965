"""TFX's `train_args.num_steps` is the number of training steps, exactly: spread over the epochs of every
phase, with the remainder in the last epoch (250 steps over 20 epochs: 19 of 12 and one of 22, not 260)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from freeze_trainer.keras import plan_policy, train_with_proof
from freeze_trainer.keras.training.phase_runner import build_phase_optimizer, remaining_epochs
from freeze_trainer.policy.freeze_policy import parse_policy
from tests.model_builders import dense_classifier


@pytest.mark.parametrize("first, end, steps, remainder", [(0, 20, 12, 10), (3, 6, 4, 3), (0, 1, 5, 2), (2, 5, 4, 0)])
def test_the_calls_from_any_position_cover_the_rest_of_the_phase_exactly(first, end, steps, remainder):
    total = (end - first) * steps + remainder
    for position in range(total):
        calls = remaining_epochs(first, end, steps, position, remainder)
        covered = position
        for call_first, call_end, per_epoch, start in calls:
            assert start == covered and first <= call_first < call_end <= end
            covered += (call_end - call_first) * per_epoch
        assert covered == total, (position, calls)
        assert calls[-1][1] == end
    # From the start: every epoch but the last takes `steps`, the last takes the remainder too.
    lengths = [per_epoch for call_first, call_end, per_epoch, _ in remaining_epochs(first, end, steps, 0, remainder)
               for _ in range(call_first, call_end)]
    assert lengths == [steps] * (end - first - 1) + [steps + remainder]


@pytest.mark.parametrize("loop", ["fit", "gradient_tape"])
def test_both_loops_train_exactly_the_steps_asked_for(loop):
    """23 steps over 3 + 2 epochs (4 each, the fifth 7), then a `steps` phase of its own 3."""
    tf.keras.utils.set_random_seed(0)
    model = dense_classifier()
    policy = parse_policy(json.dumps({"version": 1, "phases": [
        {"name": "head", "epochs": 3, "rules": [{"freeze": {"base": True}}]},
        {"name": "all", "epochs": 2, "rules": [{"unfreeze": {"base": True}}]},
        {"name": "polish", "steps": 3, "rules": [{"unfreeze": {"base": True}}]}]}))
    plans = plan_policy(policy, model, 0.01, 1)
    optimizer = build_phase_optimizer(model, plans)
    features = np.random.default_rng(0).normal(size=(20, 4)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((features, np.arange(20) % 3)).batch(8)
    checks, _ = train_with_proof(model, plans, data, loop=loop, verbose=0, optimizer=optimizer, steps_per_epoch=4,
                                 remainder_steps=3)
    assert all(check.passed for check in checks)
    assert int(optimizer.iterations) == 3 * 4 + (4 + 4 + 3) + 3
