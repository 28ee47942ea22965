"""A deterministic two-phase training run on shuffled data, for the preemption test: with
`--checkpoints`, checkpointed every few steps and resumed from there; with `--feature-cache`, the head
trains on cached pooled features and the top phase on the cached outputs of its frozen prefix. Writes a
digest of the final weights, the freeze checks and how many steps this process trained to F as JSON.

    python tests/preemptible_worker.py --loop fit|gradient_tape [--checkpoints DIR] [--feature-cache SPILL_DIR]
        --export DIR --output F
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import hashlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import click  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from freeze_trainer.keras.models.backbones import build_backbone  # noqa: E402
from freeze_trainer.keras.models.classifier_model import build_classifier  # noqa: E402
from freeze_trainer.keras.data.example_feed import ExampleFeed  # noqa: E402
from freeze_trainer.keras.data.feature_cache import FeatureCache  # noqa: E402
from freeze_trainer.keras.training.fit_training import train_with_fit  # noqa: E402
from freeze_trainer.keras.planning.freeze_plan import plan_policy  # noqa: E402
from freeze_trainer.policy.freeze_policy import policy_from_dict  # noqa: E402
from freeze_trainer.keras.training.gradient_tape_loop import train_with_gradient_tape  # noqa: E402
from tests.model_builders import SHAPE, random_images  # noqa: E402

POLICY = {
    "version": 1,
    "phases": [
        {"name": "head", "epochs": 4, "rules": [{"freeze": {"base": True}}]},
        {"name": "top", "epochs": 4, "rules": [{"freeze": {"base": True}}, {"unfreeze": {"group": "block_16"}}]},
    ],
}
EXAMPLES, BATCH_SIZE = 256, 16  # 16 steps an epoch, 64 a phase
# Checkpoints at steps 13, 26, 39 and 52 of each phase, none at an epoch's end, and at each phase's end.
CHECKPOINT_EVERY_STEPS = 13


class StepCounter(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1


@click.command()
@click.option("--loop", type=click.Choice(["fit", "gradient_tape"]), required=True)
@click.option("--checkpoints", default=None)
@click.option("--feature-cache", "spill_dir", default=None)
@click.option("--export", required=True)
@click.option("--output", required=True)
def main(loop, checkpoints, spill_dir, export, output):
    tf.keras.utils.set_random_seed(0)
    model = build_classifier(build_backbone("MobileNetV2", "none", SHAPE, 0.35), "MobileNetV2", 3, True, dropout=0.0)
    images, labels = random_images(EXAMPLES)
    examples = tf.data.Dataset.from_tensor_slices((images, labels))
    cache = FeatureCache("worker", spill_dir) if spill_dir else None
    feed = ExampleFeed(examples, examples.take(BATCH_SIZE), BATCH_SIZE, shuffle_seed=3, feature_cache=cache)
    plans = plan_policy(policy_from_dict(POLICY), model, 1e-2, 1)
    train = train_with_fit if loop == "fit" else train_with_gradient_tape
    counter = StepCounter()
    checks, _ = train(model, plans, feed, callbacks=[counter], verbose=0, checkpoint_dir=checkpoints,
                      checkpoint_every_steps=CHECKPOINT_EVERY_STEPS)
    model.save_weights(os.path.join(export, "weights.h5"))  # stands in for the export, which comes last
    digest = hashlib.sha256(b"".join(np.asarray(v.numpy()).tobytes() for v in model.variables)).hexdigest()
    with open(output, "w") as f:
        json.dump({"digest": digest, "checks": [check.as_dict() for check in checks], "steps": counter.steps,
                   "cached_examples": cache.cached_examples if cache else {}}, f)


if __name__ == "__main__":
    main()
