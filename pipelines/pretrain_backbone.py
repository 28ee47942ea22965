"""Pretrains the demo backbone on the source task and measures how well it transfers.

Source task: digits 0-4. Target task: digits 5-9, which the pipeline fine-tunes for. The backbone
(MobileNetV2, width 0.35, 32 px) is trained from scratch on the source task and saved as a `.keras`
file that FreezeTrainer loads in safe mode. The transfer report then trains the same new head on
the target task twice, on the pretrained frozen base and on a randomly initialised frozen base.

    python -m pipelines.pretrain_backbone            # or: make pretrain
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import json  # noqa: E402

import click  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from freeze_trainer.keras.models.backbones import build_backbone  # noqa: E402
from freeze_trainer.keras.models.classifier_model import build_classifier  # noqa: E402
from freeze_trainer.keras.training.fit_training import train_with_fit  # noqa: E402
from freeze_trainer.keras.planning.freeze_plan import plan_policy  # noqa: E402
from freeze_trainer.policy.freeze_policy import FROZEN_BASE_POLICY, FreezePolicy  # noqa: E402
from freeze_trainer.tfx.image_transform import decode_images  # noqa: E402
from pipelines.demo_backbone import ALPHA, BACKBONE_NAME, DEFAULT_BACKBONE_PATH, IMAGE_SIZE, transfer_report_path  # noqa: E402
from pipelines.digits_data import SOURCE_DIGITS, TARGET_DIGITS, load_digit_pngs  # noqa: E402

TRAIN_EVERYTHING = FreezePolicy.model_validate({"version": 1, "batchnorm": "train", "rules": [{"unfreeze": {"base": True}}]})


def digit_split(digits: tuple[int, ...]):
    """Images in [0, 1] and class indices, split 2:1 into train and eval by position."""
    pngs, labels = load_digit_pngs(digits)
    images = decode_images(tf.constant(pngs), IMAGE_SIZE).numpy()
    classes = np.searchsorted(np.array(digits), labels)
    is_eval = np.arange(len(labels)) % 3 == 2
    return (images[~is_eval], classes[~is_eval]), (images[is_eval], classes[is_eval])


def _batches(split, batch_size: int, augment: bool = False) -> tf.data.Dataset:
    dataset = tf.data.Dataset.from_tensor_slices(split).shuffle(len(split[1]), seed=0).batch(batch_size)
    if not augment:
        return dataset
    # Small shifts, turns and zooms make the source features describe strokes rather than the exact
    # pixels of five digits, which is what lets them transfer to the other five.
    augmentation = tf.keras.Sequential(
        [
            tf.keras.layers.RandomTranslation(0.1, 0.1, seed=0),
            tf.keras.layers.RandomRotation(0.08, seed=0),
            tf.keras.layers.RandomZoom(0.1, seed=0),
        ]
    )
    return dataset.map(lambda images, labels: (augmentation(images, training=True), labels))


def train_classifier(backbone, policy: FreezePolicy, digits, epochs: int, learning_rate: float, augment=False):
    """Trains a new head (and whatever `policy` unfreezes); returns the model and eval accuracy."""
    train, evaluation = digit_split(digits)
    model = build_classifier(backbone, BACKBONE_NAME, len(digits), bn_inference_mode=policy.bn_runs_in_inference_mode)
    _, metrics = train_with_fit(
        model,
        plan_policy(policy, model, learning_rate, epochs),
        _batches(train, 32, augment),
        _batches(evaluation, 256),
        verbose=0,
    )
    return model, metrics["val_accuracy"]


def pretrain(output: str, epochs: int, head_epochs: int) -> dict:
    tf.keras.utils.set_random_seed(0)
    shape = (IMAGE_SIZE, IMAGE_SIZE, 3)
    source_backbone = build_backbone(BACKBONE_NAME, "none", shape, ALPHA)
    for layer in source_backbone.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            # Keras' default momentum (0.999) leaves the moving statistics near their initial values
            # after the few hundred steps this small source set gives, and evaluation uses them.
            layer.momentum = 0.9
    _, source_accuracy = train_classifier(source_backbone, TRAIN_EVERYTHING, SOURCE_DIGITS, epochs, 2e-3, augment=True)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    source_backbone.save(output)

    tf.keras.utils.set_random_seed(0)
    pretrained = build_backbone(BACKBONE_NAME, output, shape)
    _, pretrained_accuracy = train_classifier(pretrained, FROZEN_BASE_POLICY, TARGET_DIGITS, head_epochs, 1e-2)
    tf.keras.utils.set_random_seed(0)
    random_base = build_backbone(BACKBONE_NAME, "none", shape, ALPHA)
    _, random_accuracy = train_classifier(random_base, FROZEN_BASE_POLICY, TARGET_DIGITS, head_epochs, 1e-2)
    report = {
        "backbone": f"{BACKBONE_NAME} alpha={ALPHA} {IMAGE_SIZE}px",
        "source_task": f"digits {SOURCE_DIGITS}",
        "target_task": f"digits {TARGET_DIGITS}",
        "source_eval_accuracy": round(source_accuracy, 4),
        "target_eval_accuracy_pretrained_frozen_base": round(pretrained_accuracy, 4),
        "target_eval_accuracy_random_frozen_base": round(random_accuracy, 4),
        "pretrain_epochs": epochs,
        "head_epochs": head_epochs,
    }
    with open(transfer_report_path(output), "w") as f:
        json.dump(report, f, indent=2)
    return report


@click.command()
@click.option("--output", default=DEFAULT_BACKBONE_PATH, show_default=True, help="Where to save the backbone.")
@click.option("--epochs", default=20, show_default=True, help="Source-task training epochs.")
@click.option("--head-epochs", default=10, show_default=True, help="Target-task head epochs for the report.")
def main(output: str, epochs: int, head_epochs: int) -> None:
    click.echo(json.dumps(pretrain(output, epochs, head_epochs), indent=2))


if __name__ == "__main__":
    main()
