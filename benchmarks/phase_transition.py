"""Fine-tuning that keeps what the head learned (issue #14): the phase transition against the Keras guide.

The project's pretrained backbone (MobileNetV2 0.35, 32 px, pretrained on sklearn digits 0-4) on the
target task, digits 5-9; the same data, seed and batches for every run: a new head on the frozen base
for `HEAD_EPOCHS` at `HEAD_LR`, then block_16 and the top unfrozen for `FINETUNE_EPOCHS` at the
fine-tune rate (1e-3 and 1e-4). Runs:

* `keras-guide`: the anchor, plain tf.keras. The head trains on the frozen base with Adam; then
  block_16 and the top become trainable and the model is recompiled with a fresh Adam at the fine-tune
  rate (the Keras transfer-learning guide). Its head phase is trained once and shared by both rates.
* `project`: this project's defaults on the same two phases written as an explicit policy: per-variable
  bias correction, `optimizer_state: reset`, no warm-up, no restore_best. BatchNorm `affine`, which
  trains what the guide's `base.trainable = True` trains (gamma/beta on fixed statistics).
* `head_then_top`: the recipe with its defaults (restore_best), top 11 layers = block_16 and the top.
* `backbone_at_epoch` (head 10 epochs, then the whole backbone from 0.1 × the head's rate, × 1.5 an
  epoch) and `gradual` (3 auto groups, 2 epochs each) with their defaults.
* `--before`: the project before this change (one global Adam step count, state kept), for reference.
* `--variant NAME`: explicit two-phase policies with other transition settings (see VARIANTS).

Prints per run the last head epoch's training loss, the first unfrozen epoch's training loss, the
evaluation accuracy the head-only phase ended with and the final one, then PASS/FAIL per goal:

1. the project's first unfrozen epoch's loss <= the anchor's, at each rate;
2. the project's final accuracy >= the anchor's, at each rate;
3. every run with restore_best (all recipes) ends at or above its own head-only phase's accuracy.

    python benchmarks/phase_transition.py                 # about 3 minutes on 2 idle cores
    python benchmarks/phase_transition.py --no-recipes --before --variant reset_new --variant warmup1
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow is first imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for `pipelines`

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import click  # noqa: E402
import numpy as np  # noqa: E402

from freeze_trainer.cli.terminal import QuietCommand, quiet_terminal  # noqa: E402

with quiet_terminal(verbose="--verbose" in sys.argv):  # TensorFlow's start-up lines, before main's own log
    import tensorflow as tf

    from freeze_trainer.keras.models.backbones import build_backbone
    from freeze_trainer.keras.models.classifier_model import backbone_of, build_classifier
    from freeze_trainer.keras.data.example_feed import ExampleFeed, endless_batches
    from freeze_trainer.keras.data.feature_cache import FeatureCache
    from freeze_trainer.keras.training.fit_training import train_with_fit
    from freeze_trainer.keras.planning.freeze_plan import plan_policy
    from freeze_trainer.keras.training.layer_rate_optimizer import LayerRateAdam
    from freeze_trainer.policy.freeze_policy import policy_from_dict
    from pipelines.digits_data import TARGET_DIGITS
    from pipelines.pretrain_backbone import ALPHA, BACKBONE_NAME, DEFAULT_BACKBONE_PATH, IMAGE_SIZE, digit_split

SEED = 0
BATCH_SIZE = 32
HEAD_EPOCHS = 10
FINETUNE_EPOCHS = 6
HEAD_LR = 1e-2
RATES = (1e-3, 1e-4)
UNFROZEN_GROUPS = ("block_16", "top")  # 11 layers of MobileNetV2: block_16_expand .. out_relu
TOP_LAYERS = 11
SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)


@dataclass
class Result:
    run: str
    rate: float | None
    head_epochs: int  # how many epochs the head-only phase had
    epochs: list[dict] = field(default_factory=list)  # each epoch's logs, in order
    head_accuracy: float = float("nan")  # evaluation accuracy the head-only phase ended with
    final_accuracy: float = float("nan")
    seconds: float = 0.0
    restores_best: bool = False
    best_epochs: list = field(default_factory=list)  # each later phase's restored epoch (0: its start)

    @property
    def last_head_loss(self) -> float:
        return self.epochs[self.head_epochs - 1]["loss"]

    @property
    def first_unfrozen_loss(self) -> float:
        return self.epochs[self.head_epochs]["loss"]


class _EpochLog(tf.keras.callbacks.Callback):
    def __init__(self, logs: list):
        super().__init__()
        self.logs = logs

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append({key: float(value) for key, value in (logs or {}).items()})


def _data():
    (train_images, train_labels), (eval_images, eval_labels) = digit_split(TARGET_DIGITS)
    return (train_images, train_labels.astype("int64")), (eval_images, eval_labels.astype("int64"))


def _model() -> tf.keras.Model:
    tf.keras.utils.set_random_seed(SEED)
    backbone = build_backbone(BACKBONE_NAME, DEFAULT_BACKBONE_PATH, SHAPE, ALPHA)
    return build_classifier(backbone, BACKBONE_NAME, len(TARGET_DIGITS), bn_inference_mode=True)


def _accuracy(model: tf.keras.Model, evaluation) -> float:
    images, labels = evaluation
    predictions = model.predict(images, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(predictions, axis=1) == labels))


def keras_guide(train, evaluation, rates) -> list[Result]:
    """The anchor: plain tf.keras, the Keras transfer-learning guide's recipe, on the project's batches. The
    frozen base runs in inference mode and the dropout sits after it, so its head phase trains the head on
    the base's features computed once: the same training as on images, in a fraction of the time."""
    start = time.perf_counter()
    model = _model()
    base = backbone_of(model)
    examples = tf.data.Dataset.from_tensor_slices(train)
    eval_batches = tf.data.Dataset.from_tensor_slices(evaluation).batch(BATCH_SIZE)
    steps = -(-len(train[1]) // BATCH_SIZE)
    loss = tf.keras.losses.SparseCategoricalCrossentropy

    def fit(fitted: tf.keras.Model, data, validation, first_epoch: int, epochs: int, learning_rate: float, logs: list):
        fitted.compile(optimizer=tf.keras.optimizers.Adam(learning_rate), loss=loss(),
                       metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
        # Each phase starts the seeded stream of batches afresh, as the project's phases do.
        fitted.fit(endless_batches(data, BATCH_SIZE, SEED, 0), validation_data=validation, initial_epoch=first_epoch,
                   epochs=first_epoch + epochs, steps_per_epoch=steps, callbacks=[_EpochLog(logs)], verbose=0)

    base.trainable = False
    features = tf.keras.Model(model.inputs, model.get_layer("head_pool").output)
    head = tf.keras.Sequential([tf.keras.Input(features.output_shape[1:]), model.get_layer("head_dropout"),
                                model.get_layer("head_classifier")])

    def on_features(split):
        return features.predict(split[0], batch_size=256, verbose=0), split[1]

    head_logs: list = []
    train_features, eval_features = on_features(train), on_features(evaluation)
    fit(head, tf.data.Dataset.from_tensor_slices(train_features),
        tf.data.Dataset.from_tensor_slices(eval_features).batch(BATCH_SIZE), 0, HEAD_EPOCHS, HEAD_LR, head_logs)
    head_accuracy = _accuracy(model, evaluation)
    head_weights = model.get_weights()
    head_seconds = time.perf_counter() - start
    results = []
    for rate in rates:
        start = time.perf_counter()
        model.set_weights(head_weights)
        base.trainable = True
        for layer in base.layers:
            layer.trainable = any(layer.name.startswith(prefix) for prefix in ("block_16_", "Conv_1", "out_relu"))
        logs = list(head_logs)
        fit(model, examples, eval_batches, HEAD_EPOCHS, FINETUNE_EPOCHS, rate, logs)
        base.trainable = False
        results.append(Result("keras-guide", rate, HEAD_EPOCHS, logs, head_accuracy, _accuracy(model, evaluation),
                              head_seconds + time.perf_counter() - start))
    return results


class _GlobalStepAdam(LayerRateAdam):
    """The optimizer before this change: every variable's bias correction counts the optimizer's steps."""

    def update_step(self, gradient, variable):
        step = self._steps[self._index_dict[self._var_key(variable)]]
        step.assign(tf.cast(self.iterations, step.dtype))
        super().update_step(gradient, variable)


def project(name: str, policy: dict, train, evaluation, rate: float | None, before: bool = False) -> Result:
    """One run of this project's trainer (`fit`), with the frozen-feature cache for head-only phases."""
    start = time.perf_counter()
    model = _model()
    plans = plan_policy(policy_from_dict(policy), model, HEAD_LR, HEAD_EPOCHS)
    optimizer = None
    if before:
        optimizer = _GlobalStepAdam(plans[0].learning_rate)
        optimizer.build(list({v.ref(): v for plan in plans for v in plan.variable_split(model).trainable}.values()))
    logs: list = []
    examples = tf.data.Dataset.from_tensor_slices(train)
    eval_examples = tf.data.Dataset.from_tensor_slices(evaluation)
    with tempfile.TemporaryDirectory() as spill, FeatureCache(name, spill) as cache:
        feed = ExampleFeed(examples, eval_examples, BATCH_SIZE, SEED, cache)
        checks, _ = train_with_fit(model, plans, feed, callbacks=[_EpochLog(logs)], verbose=0, optimizer=optimizer)
    assert all(check.passed for check in checks)
    head_epochs = plans[0].epochs
    head_end = head_epochs if checks[0].best_epoch is None else checks[0].best_epoch
    return Result(name, rate, head_epochs, logs, logs[head_end - 1]["val_accuracy"], _accuracy(model, evaluation),
                  time.perf_counter() - start, any(plan.phase.restores_best for plan in plans[1:]),
                  [check.best_epoch for check in checks[1:]])


def two_phase_policy(rate: float, **finetune) -> dict:
    unfreeze = [{"unfreeze": {"group": group}} for group in UNFROZEN_GROUPS]
    return {
        "version": 1,
        "batchnorm": "affine",
        "phases": [
            {"name": "head", "epochs": HEAD_EPOCHS, "rules": [{"freeze": {"base": True}}]},
            {"name": "finetune", "epochs": FINETUNE_EPOCHS, "learning_rate": rate,
             "rules": [{"freeze": {"base": True}}, *unfreeze], **finetune},
        ],
    }


def head_then_top(rate: float) -> dict:
    return {"version": 1, "batchnorm": "affine", "recipe": {"head_then_top": {
        "head_epochs": HEAD_EPOCHS, "finetune_epochs": FINETUNE_EPOCHS, "top_layers": TOP_LAYERS,
        "finetune_learning_rate": rate}}}


RECIPES = {
    "backbone_at_epoch": {"version": 1, "recipe": {"backbone_at_epoch": {
        "unfreeze_at_epoch": HEAD_EPOCHS, "epochs": HEAD_EPOCHS + FINETUNE_EPOCHS}}},
    "gradual": {"version": 1, "auto_groups": 3, "recipe": {"gradual": {"epochs_per_group": 2}}},
}
VARIANTS = {
    "reset_new": {"optimizer_state": "reset_new"},
    "keep": {"optimizer_state": "keep"},
    "warmup1": {"warmup_epochs": 1},
    "warmup2": {"warmup_epochs": 2},
    "growth": {"warmup_growth": 2.0, "warmup_ratio": 0.25},
    "restore_best": {"restore_best": True},
}


def _fmt(value: float) -> str:
    return f"{value:.4f}" if value == value else "-"


def table(results: list[Result]) -> list[str]:
    row = "{:<18} {:>7} {:>14} {:>19} {:>13} {:>9} {:>13} {:>5}"
    lines = [row.format("run", "ft rate", "last head loss", "first unfrozen loss", "head-only acc", "final acc",
                        "restored", "s")]
    for r in results:
        restored = ",".join("-" if epoch is None else str(epoch) for epoch in r.best_epochs) if r.restores_best else ""
        lines.append(row.format(r.run, f"{r.rate:g}" if r.rate else "-", _fmt(r.last_head_loss),
                                _fmt(r.first_unfrozen_loss), _fmt(r.head_accuracy), _fmt(r.final_accuracy),
                                restored, f"{r.seconds:.0f}"))
    return lines


def goals(results: list[Result], rates) -> list[tuple[str, bool]]:
    by = {(r.run, r.rate): r for r in results}
    checks = []
    for rate in rates:
        anchor, ours = by[("keras-guide", rate)], by[("project", rate)]
        checks.append((f"1. rate {rate:g}: project's first unfrozen epoch loss {ours.first_unfrozen_loss:.4f} <= "
                       f"anchor's {anchor.first_unfrozen_loss:.4f}", ours.first_unfrozen_loss <= anchor.first_unfrozen_loss))
    for rate in rates:
        anchor, ours = by[("keras-guide", rate)], by[("project", rate)]
        checks.append((f"2. rate {rate:g}: project's final accuracy {ours.final_accuracy:.4f} >= anchor's "
                       f"{anchor.final_accuracy:.4f}", ours.final_accuracy >= anchor.final_accuracy))
    for r in results:
        if r.restores_best:
            at = f" at {r.rate:g}" if r.rate else ""
            checks.append((f"3. {r.run}{at} (restore_best): final accuracy {r.final_accuracy:.4f} >= its head-only "
                           f"phase's {r.head_accuracy:.4f}", r.final_accuracy >= r.head_accuracy))
    return checks


@click.command(cls=QuietCommand)
@click.option("--recipes/--no-recipes", default=True, help="Run backbone_at_epoch and gradual too.")
@click.option("--before/--no-before", default=False, help="Also run the optimizer before this change.")
@click.option("--variant", "variants", multiple=True, type=click.Choice(sorted(VARIANTS)),
              help="Also run the two phases with these transition settings.")
@click.option("--rate", "rates", type=float, multiple=True, help="Fine-tune rates (default: 1e-3 and 1e-4).")
@click.option("--json-out", default=None, help="Also write every epoch's logs here.")
def main(recipes: bool, before: bool, variants, rates: tuple[float, ...], json_out: str | None) -> None:
    rates = rates or RATES
    started = time.perf_counter()
    train, evaluation = _data()
    results = keras_guide(train, evaluation, rates)
    for rate in rates:
        results.append(project("project", two_phase_policy(rate), train, evaluation, rate))
        if before:
            results.append(project("before", two_phase_policy(rate, optimizer_state="keep"), train, evaluation, rate,
                                   before=True))
        for variant in variants:
            results.append(project(variant, two_phase_policy(rate, **VARIANTS[variant]), train, evaluation, rate))
        results.append(project("head_then_top", head_then_top(rate), train, evaluation, rate))
    if recipes:
        for name, policy in RECIPES.items():
            results.append(project(name, policy, train, evaluation, None))
    print(f"MobileNetV2 {ALPHA} {IMAGE_SIZE}px pretrained on digits 0-4 -> digits 5-9: {len(train[1])} train, "
          f"{len(evaluation[1])} eval examples; head {HEAD_EPOCHS} epochs at {HEAD_LR:g}, then {FINETUNE_EPOCHS} "
          f"epochs with block_16 and the top unfrozen; batch {BATCH_SIZE}, seed {SEED}")
    print("\n".join(table(results)))
    outcomes = goals(results, rates)
    for text, passed in outcomes:
        print(f"{'PASS' if passed else 'FAIL'}  {text}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if json_out:
        with open(json_out, "w") as f:
            json.dump([r.__dict__ for r in results], f, indent=1)
    sys.exit(0 if all(passed for _, passed in outcomes) else 1)


if __name__ == "__main__":
    main()
