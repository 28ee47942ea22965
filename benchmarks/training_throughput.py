"""Training throughput of the two loops under a frozen base, against a forward pass and full fine-tuning.

All runs share one process, one backbone architecture and the same synthetic in-memory data; each
run's first steps (tracing) are excluded. Prints examples/s per run and the ratios the project
tracks: tape/fit (goal >= 1.0) and frozen-step/forward-only (goal <= 1.15).

    python benchmarks/training_throughput.py                       # CPU: 96 px MobileNetV2, small
    python benchmarks/training_throughput.py --suite gpu           # GPU check: 224 px, both loops,
                                                                   # with and without mixed precision
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow is first imported

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import click  # noqa: E402

from freeze_trainer.cli.terminal import QuietCommand, quiet_terminal  # noqa: E402

with quiet_terminal(verbose="--verbose" in sys.argv):  # TensorFlow's start-up lines, before main's own log
    import tensorflow as tf

    from freeze_trainer.keras.models.backbones import build_backbone
    from freeze_trainer.keras.models.classifier_model import build_classifier
    from freeze_trainer.keras.training.fit_training import train_with_fit
    from freeze_trainer.keras.planning.freeze_plan import plan_policy
    from freeze_trainer.policy.freeze_policy import policy_from_dict
    from freeze_trainer.keras.training.gradient_tape_loop import train_with_gradient_tape
    from freeze_trainer.keras.tf_keras_autograph import exempt_tf_keras_from_autograph

FROZEN = [{"freeze": {"base": True}}]
FULL = [{"unfreeze": {"base": True}}]


@dataclass(frozen=True)
class Run:
    name: str
    loop: str  # fit | tape | forward
    rules: list
    mixed_precision: str = "none"


class _StepClock(tf.keras.callbacks.Callback):
    """Times the steps after `warmup`; reading the loss forces the step to finish."""

    def __init__(self, warmup: int):
        super().__init__()
        self.warmup, self.start, self.end, self.steps = warmup, None, None, 0

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.warmup:
            float(logs["loss"])
            self.start = time.perf_counter()
        elif batch + 1 > self.warmup:
            float(logs["loss"])
            self.end, self.steps = time.perf_counter(), batch + 1 - self.warmup


def _data(image_size: int, batch_size: int, classes: int = 10) -> tf.data.Dataset:
    images = tf.random.stateless_uniform((batch_size * 4, image_size, image_size, 3), seed=(1, 2))
    labels = tf.random.stateless_uniform((batch_size * 4,), seed=(3, 4), maxval=classes, dtype=tf.int32)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size).cache().repeat().prefetch(2)


def measure(run: Run, image_size: int, batch_size: int, warmup: int, steps: int, backbone: str) -> dict:
    tf.keras.mixed_precision.set_global_policy("float32" if run.mixed_precision == "none" else run.mixed_precision)
    tf.keras.utils.set_random_seed(0)
    shape = (image_size, image_size, 3)
    full = run.rules is FULL
    model = build_classifier(build_backbone(backbone, "none", shape), backbone, 10, bn_inference_mode=not full)
    data = _data(image_size, batch_size)
    if run.loop == "forward":
        exempt_tf_keras_from_autograph()
        forward = tf.function(lambda images: model(images, training=False))
        iterator = iter(data)
        for _ in range(warmup):
            forward(next(iterator)[0]).numpy()
        start = time.perf_counter()
        for _ in range(steps):
            out = forward(next(iterator)[0])
        out.numpy()
        return {"run": run.name, "examples_per_s": steps * batch_size / (time.perf_counter() - start)}
    policy = policy_from_dict({"version": 1, "batchnorm": "train" if full else "frozen",
                               "phases": [{"name": run.name, "steps": warmup + steps, "rules": run.rules}]})
    plans = plan_policy(policy, model, default_learning_rate=1e-3)
    clock = _StepClock(warmup)
    loop = train_with_fit if run.loop == "fit" else train_with_gradient_tape
    checks, _ = loop(model, plans, data, data.take(1), callbacks=[clock], verbose=0)
    return {
        "run": run.name,
        "examples_per_s": clock.steps * batch_size / (clock.end - clock.start),
        "freeze_proof": "passed" if all(check.passed for check in checks) else "FAILED",
    }


SUITES = {
    "cpu": [
        Run("forward only", "forward", FROZEN),
        Run("frozen base, fit", "fit", FROZEN),
        Run("frozen base, tape", "tape", FROZEN),
        Run("full fine-tune, fit", "fit", FULL),
    ],
    "gpu": [
        Run("forward only", "forward", FROZEN),
        Run("frozen base, fit", "fit", FROZEN),
        Run("frozen base, tape", "tape", FROZEN),
        Run("frozen base, fit, mixed_float16", "fit", FROZEN, "mixed_float16"),
        Run("frozen base, tape, mixed_float16", "tape", FROZEN, "mixed_float16"),
        Run("full fine-tune, fit", "fit", FULL),
    ],
}


@click.command(cls=QuietCommand)
@click.option("--suite", type=click.Choice(sorted(SUITES)), default="cpu", show_default=True)
@click.option("--backbone", default="MobileNetV2", show_default=True)
@click.option("--image-size", type=int, default=None, help="Default: 96 for cpu, 224 for gpu.")
@click.option("--batch-size", type=int, default=None, help="Default: 32 for cpu, 128 for gpu.")
@click.option("--warmup", type=int, default=5, show_default=True)
@click.option("--steps", type=int, default=None, help="Timed steps per run. Default: 30 for cpu, 300 for gpu.")
def main(suite, backbone, image_size, batch_size, warmup, steps):
    gpu = suite == "gpu"
    image_size = image_size or (224 if gpu else 96)
    batch_size = batch_size or (128 if gpu else 32)
    steps = steps or (300 if gpu else 30)
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or ["CPU"]
    click.echo(f"{backbone} {image_size}px, batch {batch_size}, {steps} timed steps on {', '.join(devices)}")
    results = {}
    for run in SUITES[suite]:
        result = measure(run, image_size, batch_size, warmup, steps, backbone)
        results[run.name] = result
        click.echo(f"  {run.name:<36} {result['examples_per_s']:9.1f} examples/s  {result.get('freeze_proof', '')}")
    rate = {name: result["examples_per_s"] for name, result in results.items()}
    ratios = {
        "tape/fit (frozen base, goal >= 1.0)": rate["frozen base, tape"] / rate["frozen base, fit"],
        "frozen fit step/forward-only time (goal <= 1.15)": rate["forward only"] / rate["frozen base, fit"],
        "frozen tape step/forward-only time (goal <= 1.15)": rate["forward only"] / rate["frozen base, tape"],
        "full fine-tune/frozen fit time": rate["frozen base, fit"] / rate["full fine-tune, fit"],
    }
    if gpu:
        ratios["mixed_float16/float32 (fit)"] = rate["frozen base, fit, mixed_float16"] / rate["frozen base, fit"]
        ratios["mixed_float16/float32 (tape)"] = rate["frozen base, tape, mixed_float16"] / rate["frozen base, tape"]
    for name, value in ratios.items():
        click.echo(f"  {name:<52} {value:6.3f}")
    click.echo(json.dumps({"results": results, "ratios": ratios}))


if __name__ == "__main__":
    main()
