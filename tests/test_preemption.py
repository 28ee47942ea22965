"""A trainer killed mid-epoch resumes from its checkpoint at the same batch of the shuffled data and ends
with the weights and freeze checks of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from freeze_trainer.keras.models.classifier_model import backbone_of
from freeze_trainer.keras.training.fit_training import train_with_fit
from freeze_trainer.keras.planning.freeze_plan import plan_policy
from freeze_trainer.policy.freeze_policy import policy_from_dict
from freeze_trainer.keras.training.freeze_proof import FreezeViolation
from tests.model_builders import random_images, tiny_classifier
from tests.preemptible_worker import BATCH_SIZE, EXAMPLES

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "preemptible_worker.py")
EPOCH_STEPS, PHASE_STEPS = 16, 64  # the worker's 256 examples in batches of 16, 4 epochs a phase


def _start(loop, directory, name, checkpoints=True, cached=False):
    export = directory / f"{name}_export"
    export.mkdir(exist_ok=True)
    command = [sys.executable, WORKER, "--loop", loop, "--export", str(export),
               "--output", str(directory / f"{name}.json")]
    if checkpoints:
        command += ["--checkpoints", str(directory / f"{name}_checkpoints")]
    if cached:
        command += ["--feature-cache", str(directory / f"{name}_spill")]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process):
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-4000:]


def _latest_progress(directory) -> dict | None:
    """The training progress stored in the latest checkpoint in `directory`, if any."""
    latest = tf.train.latest_checkpoint(str(directory))
    if latest is None:
        return None
    return json.loads(tf.train.load_checkpoint(latest).get_tensor("progress/.ATTRIBUTES/py_state"))


@pytest.mark.parametrize("loop, cached", [("fit", False), ("gradient_tape", False), ("fit", True),
                                          ("gradient_tape", True)],
                         ids=["fit", "gradient_tape", "fit on the cut", "gradient_tape on the cut"])
def test_killed_trainer_resumes_to_the_same_weights(tmp_path, loop, cached):
    """`cached`: the top phase, killed inside, trains its live part on its frozen prefix's cached outputs."""
    _finish(_start(loop, tmp_path, "whole", checkpoints=False, cached=cached))
    whole = json.loads((tmp_path / "whole.json").read_text())
    assert whole["steps"] == 2 * PHASE_STEPS

    # Killed once a checkpoint inside the second phase exists: one saved at a step that ends no epoch.
    process = _start(loop, tmp_path, "preempted", cached=cached)
    checkpoints = tmp_path / "preempted_checkpoints"
    deadline = time.monotonic() + 500
    while process.poll() is None and time.monotonic() < deadline:
        progress = _latest_progress(checkpoints)
        if progress and progress["phase"] == 1 and progress["position"]:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # preemption: no chance to clean up
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, "training finished before it could be killed"
    killed_at = _latest_progress(checkpoints)
    assert killed_at["phase"] == 1 and killed_at["position"] % EPOCH_STEPS != 0
    assert not os.listdir(tmp_path / "preempted_export")  # nothing exported by the killed run

    _finish(_start(loop, tmp_path, "preempted", cached=cached))
    resumed = json.loads((tmp_path / "preempted.json").read_text())
    assert resumed["steps"] == PHASE_STEPS - killed_at["position"]  # only what was left after the checkpoint
    assert resumed["digest"] == whole["digest"]
    assert resumed["cached_examples"] == ({"train": EXAMPLES, "eval": BATCH_SIZE} if cached else {})
    assert [check["phase"] for check in resumed["checks"]] == ["head", "top"]
    assert all(check["passed"] for check in resumed["checks"])
    # The completed phase's check comes from the checkpoint, the resumed one is proven against its start.
    assert resumed["checks"] == whole["checks"]


class _Preempted(Exception):
    pass


class _MoveFrozenThenStop(tf.keras.callbacks.Callback):
    """Moves a frozen kernel after the first batch (before that batch's checkpoint), stops after the second."""

    def __init__(self, kernel):
        super().__init__()
        self.kernel, self.batches = kernel, 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.batches == 1:
            self.kernel.assign_add(tf.ones_like(self.kernel))
        else:
            raise _Preempted()


def test_a_frozen_variable_moved_before_the_checkpoint_fails_the_resumed_phase(tmp_path):
    images, labels = random_images(32)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    policy = policy_from_dict({"version": 1, "rules": [{"freeze": {"base": True}}]})

    def train(callbacks):
        tf.keras.utils.set_random_seed(0)
        model = tiny_classifier()
        plans = plan_policy(policy, model, 1e-2, 1)
        kernel = backbone_of(model).get_layer("conv_a").kernel
        train_with_fit(model, plans, data, data, callbacks=callbacks(kernel), verbose=0,
                       checkpoint_dir=str(tmp_path), checkpoint_every_steps=1)

    with pytest.raises(_Preempted):
        train(lambda kernel: [_MoveFrozenThenStop(kernel)])
    # The rerun restores the moved kernel; against the restored weights the phase would look frozen.
    with pytest.raises(FreezeViolation, match="conv_a/kernel"):
        train(lambda kernel: [])
