"""The top-block phase with and without the frozen-prefix cache, on the same data and batches.

MobileNetV2 (alpha 1.0, random weights) trains block_16, the top (Conv_1, Conv_1_bn, out_relu) and the
head for E epochs; everything below runs in inference mode. Uncached, every step runs the whole model;
cached, the phase first computes the cut (`block_15_add`) once per example (training and evaluation
examples, through a FeatureCache with the trainer's default memory budget) and then trains the live part
on it. Each run is a fresh child process, so that its peak resident memory is its own. Prints per-step and
per-phase times and ratios (the cache build counts in the cached phase), the largest weight difference
after the phase (dropout off), each run's peak RSS, and PASS/FAIL against the goals: >= 2.5x at 96 px
and >= 6x at 224 px per phase, weights within rtol 1e-6, cached peak RSS <= 1.2x uncached.

The build runs the prefix once over the training and evaluation examples, which an uncached epoch does
too (the training step's forward pass and the evaluation): so with the build included the per-phase
speed-up stays below E however cheap the live part, E * step / (prefix forward + E * live step).

    python benchmarks/prefix_cache_speed.py                      # 96 and 224 px, 1,024 images, E=5
    python benchmarks/prefix_cache_speed.py --image-sizes 96 --loop gradient_tape
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

MODES = ("uncached", "cached")
GOALS = {96: 2.5, 224: 6.0}  # per-phase speed-up, cache build included
TOP_BLOCK = [{"freeze": {"base": True}}, {"unfreeze": {"group": "block_16"}}, {"unfreeze": {"group": "top"}}]


def train_once(mode: str, epochs: int, examples: int, image_size: int, batch_size: int, loop: str,
               weights_file: str) -> dict:
    import numpy as np
    import tensorflow as tf

    from freeze_trainer.keras.models.backbones import build_backbone
    from freeze_trainer.keras.models.classifier_model import build_classifier
    from freeze_trainer.keras.data.example_feed import ExampleFeed
    from freeze_trainer.keras.data.feature_cache import FeatureCache
    from freeze_trainer.keras.training.fit_training import train_with_fit
    from freeze_trainer.keras.planning.freeze_plan import apply_plan, plan_policy
    from freeze_trainer.keras.training.gradient_tape_loop import train_with_gradient_tape
    from freeze_trainer.keras.planning.prefix_cut import find_cut
    from freeze_trainer.policy.freeze_policy import policy_from_dict
    from freeze_trainer.tfx.trainer_config import TrainerConfig

    class StepClock(tf.keras.callbacks.Callback):
        """When training began and how long each step took; reading the loss forces the step to finish."""

        def __init__(self):
            super().__init__()
            self.begin, self.step_start, self.steps = None, None, []

        def on_train_begin(self, logs=None):
            self.begin = self.begin or time.perf_counter()

        def on_train_batch_begin(self, batch, logs=None):
            self.step_start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])
            self.steps.append(time.perf_counter() - self.step_start)

    tf.keras.utils.set_random_seed(0)
    shape = (image_size, image_size, 3)
    model = build_classifier(build_backbone("MobileNetV2", "none", shape), "MobileNetV2", 10, bn_inference_mode=True,
                             dropout=0.0)
    policy = policy_from_dict({"version": 1, "phases": [{"name": "top_block", "epochs": epochs, "rules": TOP_BLOCK}]})
    plans = plan_policy(policy, model, 1e-3, epochs)
    apply_plan(model, plans[0])
    cut = find_cut(model, plans[0])
    generator = tf.random.Generator.from_seed(0)
    images = generator.uniform((examples, *shape))
    labels = generator.uniform((examples,), maxval=10, dtype=tf.int32)
    train = tf.data.Dataset.from_tensor_slices((images, labels))
    evaluation = train.take(examples // 4)
    clock = StepClock()
    with tempfile.TemporaryDirectory() as spill_dir:
        feed_args = (train, evaluation, batch_size, 0)
        budget = TrainerConfig.model_fields["feature_cache_memory_mb"].default << 20  # the trainer's default
        # The schedule (built by the loop) caches where the feed has a FeatureCache: at `cut`.
        feed = ExampleFeed(*feed_args, FeatureCache("benchmark", spill_dir, budget) if mode == "cached" else None)
        train_loop = train_with_fit if loop == "fit" else train_with_gradient_tape
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        checks, _ = train_loop(model, plans, feed, callbacks=[clock], verbose=0)
        seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - cpu_start
    np.savez(weights_file, *[v.numpy() for v in model.variables])
    steady = clock.steps[2:]  # the first steps trace the step function
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "step_ms": 1e3 * float(np.median(steady)), "steps": len(clock.steps),
            "before_first_step_s": clock.begin - start, "passed": all(c.passed for c in checks),
            "cut": cut.describe(), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _cpu_seconds() -> float:
    """This process's CPU time: on a machine shared with other jobs, the work done, whatever the waiting."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _max_weight_difference(uncached_file: str, cached_file: str) -> tuple[float, bool]:
    import numpy as np

    with np.load(uncached_file) as expected, np.load(cached_file) as actual:
        pairs = [(expected[key], actual[key]) for key in expected.files]
    largest = max(float(np.max(np.abs(want - got))) for want, got in pairs)
    return largest, all(np.allclose(got, want, rtol=1e-6, atol=1e-7) for want, got in pairs)


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def _run_child(settings: dict, image_size: int, mode: str, weights_file: str) -> dict:
    args = [f"--{key.replace('_', '-')}={value}" for key, value in settings.items()]
    command = [sys.executable, __file__, *args, f"--image-sizes={image_size}", f"--child-mode={mode}",
               f"--weights-file={weights_file}"]
    child = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if child.returncode:
        raise click.ClickException(f"the {mode} run at {image_size} px failed:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def _compare(settings: dict, image_size: int) -> list[tuple[str, bool]]:
    """Runs both modes at one image size, prints their figures; returns the goals with their verdicts."""
    epochs = settings["epochs"]
    with tempfile.TemporaryDirectory() as tmp:
        files = {mode: os.path.join(tmp, f"{mode}.npz") for mode in MODES}
        runs = {mode: _run_child(settings, image_size, mode, files[mode]) for mode in MODES}
        difference, equal = _max_weight_difference(files["uncached"], files["cached"])
    print(f"{image_size} px: {runs['cached']['cut']}")
    for mode, r in runs.items():
        print(f"  {mode:<9} phase {r['seconds']:7.2f} s, {r['cpu_seconds']:7.2f} CPU s "
              f"({r['before_first_step_s']:6.2f} s before the first step)"
              f"   step {r['step_ms']:7.1f} ms x {r['steps']}   peak RSS {r['peak_rss_mb']:7.0f} MB"
              f"   freeze proof {'passed' if r['passed'] else 'FAILED'}")
    uncached, cached = runs["uncached"], runs["cached"]
    phase_ratio = uncached["seconds"] / cached["seconds"]
    rss_ratio = cached["peak_rss_mb"] / uncached["peak_rss_mb"]
    print(f"  per-step ratio uncached/cached: {uncached['step_ms'] / cached['step_ms']:.2f}x")
    print(f"  per-phase ratio uncached/cached (cache build included): {phase_ratio:.2f}x wall time, "
          f"{uncached['cpu_seconds'] / cached['cpu_seconds']:.2f}x CPU time")
    print(f"  largest weight difference after the phase: {difference:.3g}")
    print(f"  peak RSS cached/uncached: {rss_ratio:.2f}x")
    print(f"prefix cache speed-up (top-block phase, {image_size} px, E={epochs}): {phase_ratio:.2f}x")
    goal = GOALS.get(image_size)
    goals = [(f"weights after the phase equal within rtol 1e-6 ({image_size} px)", equal),
             (f"peak RSS of the cached run <= 1.2x the uncached one ({image_size} px)", rss_ratio <= 1.2),
             (f"freeze proof passed in both runs ({image_size} px)", uncached["passed"] and cached["passed"])]
    if goal:
        goals.insert(0, (f"speed-up >= {goal}x at {image_size} px (per phase, cache build included)",
                         phase_ratio >= goal))
    return goals


@click.command(cls=QuietCommand)
@click.option("--epochs", type=int, default=5, show_default=True)
@click.option("--examples", type=int, default=1024, show_default=True,
              help="Training images; a quarter more evaluate. Fewer leave the fixed costs (tracing) a larger share.")
@click.option("--image-sizes", default="96,224", show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--loop", type=click.Choice(["fit", "gradient_tape"]), default="fit", show_default=True)
@click.option("--child-mode", type=click.Choice(MODES), default=None, hidden=True)
@click.option("--weights-file", default=None, hidden=True)
def main(epochs, examples, image_sizes, batch_size, loop, child_mode, weights_file):
    settings = dict(epochs=epochs, examples=examples, batch_size=batch_size, loop=loop)
    sizes = [int(size) for size in image_sizes.split(",")]
    if child_mode:
        print(json.dumps(train_once(child_mode, image_size=sizes[0], weights_file=weights_file, **settings)))
        return
    print(f"MobileNetV2 alpha 1.0 (random weights), top-block phase (block_16, top, head), {examples} training + "
          f"{examples // 4} evaluation images, batch {batch_size}, E={epochs} epochs, loop {loop}, dropout off")
    goals = [goal for size in sizes for goal in _compare(settings, size)]
    for description, passed in goals:
        print(f"{_verdict(passed)}: {description}")


if __name__ == "__main__":
    main()
