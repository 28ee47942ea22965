"""E epochs of frozen-base training with and without the frozen-feature cache, on the same data.

One command; each mode runs in a fresh child process so that its peak resident memory is its own.
Prints the training wall time of each mode (model building excluded, the cache's one pass over the
data included), the speed-up uncached/cached against the goal (>= 0.8 * E for E >= 5), and each
child's peak resident memory.

    python benchmarks/feature_cache_speed.py                      # 5 epochs, 1,024 images at 96 px
    python benchmarks/feature_cache_speed.py --epochs 10 --loop gradient_tape
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow is first imported

import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import click  # noqa: E402

from freeze_trainer.cli.terminal import QuietCommand  # noqa: E402

MODES = {"uncached": None, "cached in memory": 1024, "cached on disk": 0}  # memory budget in MB


def train_once(mode: str, epochs: int, examples: int, image_size: int, batch_size: int, loop: str) -> dict:
    import tensorflow as tf

    from freeze_trainer.keras.models.backbones import build_backbone
    from freeze_trainer.keras.models.classifier_model import build_classifier
    from freeze_trainer.keras.data.example_feed import ExampleFeed
    from freeze_trainer.keras.data.feature_cache import FeatureCache
    from freeze_trainer.keras.training.fit_training import train_with_fit
    from freeze_trainer.keras.planning.freeze_plan import plan_policy
    from freeze_trainer.policy.freeze_policy import FROZEN_BASE_POLICY
    from freeze_trainer.keras.training.gradient_tape_loop import train_with_gradient_tape

    tf.keras.utils.set_random_seed(0)
    shape = (image_size, image_size, 3)
    model = build_classifier(build_backbone("MobileNetV2", "none", shape), "MobileNetV2", 10, bn_inference_mode=True)
    plans = plan_policy(FROZEN_BASE_POLICY, model, 1e-3, epochs)
    generator = tf.random.Generator.from_seed(0)
    images = generator.uniform((examples, *shape))
    labels = generator.uniform((examples,), maxval=10, dtype=tf.int32)
    train = tf.data.Dataset.from_tensor_slices((images, labels))
    evaluation = train.take(examples // 4)
    budget = MODES[mode]
    with tempfile.TemporaryDirectory() as spill_dir:
        cache = FeatureCache("benchmark", spill_dir, budget << 20) if budget is not None else None
        feed = ExampleFeed(train, evaluation, batch_size, shuffle_seed=0, feature_cache=cache)
        train_loop = train_with_fit if loop == "fit" else train_with_gradient_tape
        start = time.perf_counter()
        checks, metrics = train_loop(model, plans, feed, verbose=0)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "passed": all(c.passed for c in checks), "val_accuracy": metrics["val_accuracy"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


@click.command(cls=QuietCommand)
@click.option("--epochs", type=int, default=5, show_default=True)
@click.option("--examples", type=int, default=1024, show_default=True)
@click.option("--image-size", type=int, default=96, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--loop", type=click.Choice(["fit", "gradient_tape"]), default="fit", show_default=True)
@click.option("--child-mode", type=click.Choice(list(MODES)), default=None, hidden=True)
def main(epochs, examples, image_size, batch_size, loop, child_mode):
    settings = dict(epochs=epochs, examples=examples, image_size=image_size, batch_size=batch_size, loop=loop)
    if child_mode:
        print(json.dumps(train_once(child_mode, **settings)))
        return
    print(f"MobileNetV2 at {image_size} px, frozen base, {examples} training + {examples // 4} evaluation "
          f"images, batch {batch_size}, {epochs} epochs, loop {loop}")
    results = {}
    for mode in MODES:
        args = [f"--{key.replace('_', '-')}={value}" for key, value in settings.items()]
        child = subprocess.run([sys.executable, __file__, *args, f"--child-mode={mode}"], capture_output=True,
                               text=True, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        results[mode] = json.loads(child.stdout.strip().splitlines()[-1])
        r = results[mode]
        print(f"  {mode:<18} {r['seconds']:7.2f} s   peak RSS {r['peak_rss_mb']:7.0f} MB   "
              f"val_accuracy {r['val_accuracy']:.4f}   freeze check {'passed' if r['passed'] else 'FAILED'}")
    goal = 0.8 * epochs
    for mode in ("cached in memory", "cached on disk"):
        speedup = results["uncached"]["seconds"] / results[mode]["seconds"]
        verdict = "PASS" if speedup >= goal else "FAIL"
        print(f"  speed-up uncached / {mode}: {speedup:.2f}x   (goal >= 0.8 * E = {goal:.1f}x: {verdict})")


if __name__ == "__main__":
    main()
