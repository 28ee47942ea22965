"""One process of a two-worker MultiWorkerMirroredStrategy training run (TF_CONFIG names the cluster),
deterministic and checkpointed every few steps, for the multi-worker resume test: the chief checkpoints
to `--checkpoints`, the other worker to scratch, and on a rerun both resume from the chief's checkpoint.
Writes a digest of the final weights, the freeze checks, whether this is the chief and how many steps
this process trained to F as JSON.

    TF_CONFIG=... python tests/multi_worker_preemptible_worker.py [--checkpoints DIR] [--step-seconds S] --output F

`--step-seconds` sleeps after every batch (it changes no weight), so a test can kill the run mid-phase.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import hashlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import click  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from freeze_trainer.keras.distribution import choose_strategy, is_chief  # noqa: E402
from freeze_trainer.keras.data.example_feed import ExampleFeed  # noqa: E402
from freeze_trainer.keras.training.fit_training import train_with_fit  # noqa: E402
from freeze_trainer.keras.planning.freeze_plan import plan_policy  # noqa: E402
from freeze_trainer.keras.training.phase_runner import build_phase_optimizer  # noqa: E402
from freeze_trainer.policy.freeze_policy import policy_from_dict  # noqa: E402
from freeze_trainer.keras.models.classifier_model import backbone_of, build_classifier  # noqa: E402
from tests.model_builders import random_images, tiny_classifier  # noqa: E402

POLICY = {
    "version": 1,
    "phases": [
        {"name": "head", "epochs": 2, "rules": [{"freeze": {"base": True}}]},
        {"name": "all", "epochs": 2, "rules": [{"unfreeze": {"base": True}}]},
    ],
}
EXAMPLES, BATCH_SIZE = 128, 16  # global batches: 8 steps an epoch, 16 a phase
CHECKPOINT_EVERY_STEPS = 3  # steps 3, 6, 9, 12 and 15 of each phase (none at an epoch's end), and each phase's end


class Steps(tf.keras.callbacks.Callback):
    def __init__(self, seconds: float):
        super().__init__()
        self.steps, self.seconds = 0, seconds

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        time.sleep(self.seconds)


@click.command()
@click.option("--checkpoints", default=None)
@click.option("--step-seconds", type=float, default=0.0)
@click.option("--output", required=True)
def main(checkpoints, step_seconds, output):
    strategy = choose_strategy("multi_worker")
    tf.keras.utils.set_random_seed(0)
    images, labels = random_images(EXAMPLES)
    examples = tf.data.Dataset.from_tensor_slices((images, labels))
    steps = Steps(step_seconds)
    with strategy.scope():
        # No dropout: its random draws are not in the checkpoint, so a resumed run would draw others.
        model = build_classifier(backbone_of(tiny_classifier()), "MobileNetV2", 3, True, dropout=0.0)
        plans = plan_policy(policy_from_dict(POLICY), model, 1e-2, 1)
        optimizer = build_phase_optimizer(model, plans)
        checks, _ = train_with_fit(
            model, plans, ExampleFeed(examples, examples.take(BATCH_SIZE), BATCH_SIZE, shuffle_seed=3),
            callbacks=[steps], verbose=0, optimizer=optimizer, checkpoint_dir=checkpoints,
            checkpoint_every_steps=CHECKPOINT_EVERY_STEPS,
        )
    digest = hashlib.sha256(b"".join(np.asarray(v.numpy()).tobytes() for v in model.variables)).hexdigest()
    with open(output, "w") as f:
        json.dump({"digest": digest, "checks": [c.as_dict() for c in checks], "chief": is_chief(),
                   "steps": steps.steps, "replicas": strategy.num_replicas_in_sync,
                   "weights": [np.asarray(v.numpy()).tolist() for v in model.trainable_variables[-2:]]}, f)


if __name__ == "__main__":
    main()
