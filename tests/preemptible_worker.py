"""A deterministic two-phase training run with checkpoints, for the preemption test.

    python tests/preemptible_worker.py --loop fit|gradient_tape --checkpoints DIR --export DIR --output F
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

from components.freeze_trainer.backbones import build_backbone  # noqa: E402
from components.freeze_trainer.classifier_model import build_classifier  # noqa: E402
from components.freeze_trainer.fit_training import train_with_fit  # noqa: E402
from components.freeze_trainer.freeze_plan import plan_policy  # noqa: E402
from components.freeze_trainer.freeze_policy import policy_from_dict  # noqa: E402
from components.freeze_trainer.gradient_tape_loop import train_with_gradient_tape  # noqa: E402
from tests.model_builders import SHAPE, random_images  # noqa: E402

POLICY = {
    "version": 1,
    "phases": [
        {"name": "head", "epochs": 4, "rules": [{"freeze": {"base": True}}]},
        {"name": "top", "epochs": 4, "rules": [{"freeze": {"base": True}}, {"unfreeze": {"group": "block_16"}}]},
    ],
}


@click.command()
@click.option("--loop", type=click.Choice(["fit", "gradient_tape"]), required=True)
@click.option("--checkpoints", required=True)
@click.option("--export", required=True)
@click.option("--output", required=True)
def main(loop, checkpoints, export, output):
    tf.keras.utils.set_random_seed(0)
    model = build_classifier(build_backbone("MobileNetV2", "none", SHAPE, 0.35), "MobileNetV2", 3, True, dropout=0.0)
    images, labels = random_images(256)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    plans = plan_policy(policy_from_dict(POLICY), model, 1e-2, 1)
    train = train_with_fit if loop == "fit" else train_with_gradient_tape
    checks, _ = train(model, plans, data, data.take(1), verbose=0, checkpoint_dir=checkpoints)
    model.save_weights(os.path.join(export, "weights.h5"))  # stands in for the export, which comes last
    digest = hashlib.sha256(b"".join(np.asarray(v.numpy()).tobytes() for v in model.variables)).hexdigest()
    with open(output, "w") as f:
        json.dump({"digest": digest, "checks": [check.as_dict() for check in checks]}, f)


if __name__ == "__main__":
    main()
