"""Policy search (issue #23): the freeze-aware search against the same policies trained one by one.

The demo: its pretrained backbone (MobileNetV2 0.35, 32 px, digits 0-4) on digits 5-9, Transformed once
by the bundled image Transform in a small TFX pipeline (ImportExampleGen, StatisticsGen, SchemaGen,
Transform; not timed). A head phase on the frozen base, then a fine-tune phase. The space: which of the
top groups the fine-tune phase unfreezes (none: the head alone at the new rate; block_16; block_15 and
block_16), its rate (1e-3, 1e-4) and the BatchNorm mode (frozen, affine): 12 combinations, of which
`--trials` (8) run in each arm, the same ones: those the search's seeded random oracle draws, in its order.
Every arm runs after one untimed warm-up trial (TensorFlow's first tracing, the files read once):

* `search`: `freeze_trainer.tfx.tuner.tuner_fn` and its tuner's `search()`, as TFX's Tuner runs them: the
  trials share the built model, the head phase (per BatchNorm inference mode) and the feature cache.
* `independent`: each policy trained from scratch by the same trainer code (`SearchTrials`, a new one
  per trial: its own model and feature cache, no shared phase), as separate FreezeTrainer runs would.
* `anchor`: what KerasTuner's RandomSearch over a hypermodel runs per trial, written as the plain loop
  (KerasTuner 1.4.8's hypermodel path fails with tf-keras): build the model, fit the head on the frozen
  base, unfreeze, recompile, fit, with plain tf.keras on the same batches.

Prints each arm's wall time and best eval accuracy, `search/independent time: 0.37x`, and PASS/FAIL for:
the search takes at most 0.4x the independent runs' time; at most the anchor's; its best trial's eval
accuracy is within one eval example of the best independent run's.

Measured on 2 shared cores (defaults): search 42.6 s, independent 116.7 s (0.37x: PASS; again 36.9 s
vs 97.0 s, 0.38x), anchor 157.7 s (PASS), best trial = best independent run (PASS; every trial equals
its independent run). The search's trials train one built model (its weights put back between trials),
start after the shared head phase and read each cut's cache computed once; the independent runs pay for
each of those themselves.

    python benchmarks/policy_search.py            # about 10 minutes on 2 shared cores
    python benchmarks/policy_search.py --trials 4 --head-epochs 3
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow is first imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for `pipelines`

import glob  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402

import click  # noqa: E402

from freeze_trainer.cli.terminal import QuietCommand, quiet_terminal  # noqa: E402

with quiet_terminal(verbose="--verbose" in sys.argv):  # TensorFlow's and TFX's start-up lines
    import tensorflow as tf
    from tfx.components.trainer import fn_args_utils
    from tfx.types import artifact_utils, standard_artifacts

    from freeze_trainer.keras.models.backbones import build_backbone
    from freeze_trainer.keras.models.classifier_model import backbone_of, build_classifier
    from freeze_trainer.tfx.run_fn import data_contract, training_examples
    from freeze_trainer.tfx.search_space import format_values, parse_search_space, trial_config
    from freeze_trainer.tfx.search_trials import SearchTrials
    from freeze_trainer.tfx.tuner import SEARCH_DIR_KEY, SEARCH_SPACE_KEY, TRAINER_PARAMETERS_KEY, tuner_fn
    from pipelines.demo_backbone import ALPHA, BACKBONE_NAME, DEFAULT_BACKBONE_PATH, IMAGE_SIZE

SEED = 0
BATCH_SIZE = 32
HEAD_LR = 1e-2
FREEZE_BASE = {"freeze": {"base": True}}
# The fine-tune phase's rules: the demo backbone's top blocks (MobileNetV2's block_15 and block_16).
UNFROZEN = {"none": [FREEZE_BASE], "block_16": [FREEZE_BASE, {"unfreeze": {"group": "block_16"}}],
            "block_15+16": [FREEZE_BASE, {"unfreeze": {"group": "block_15"}}, {"unfreeze": {"group": "block_16"}}]}
RATES = (1e-3, 1e-4)
BATCHNORM = ("frozen", "affine")


def _policy(head_epochs: int, finetune_epochs: int) -> dict:
    return {"version": 1, "phases": [
        {"name": "head", "epochs": head_epochs, "rules": [FREEZE_BASE]},
        {"name": "finetune", "epochs": finetune_epochs, "learning_rate": RATES[0], "rules": UNFROZEN["block_16"]},
    ]}


def _space(trials: int) -> str:
    """The 12 combinations, `trials` of them drawn by KerasTuner's random oracle (seeded by `seed`)."""
    return json.dumps({"version": 1, "algorithm": "random", "max_trials": trials, "objective": "val_accuracy",
                       "hyperparameters": {"policy.phases.1.rules": list(UNFROZEN.values()),
                                           "policy.phases.1.learning_rate": list(RATES),
                                           "policy.batchnorm": list(BATCHNORM)}})


def transformed_digits(workdir: str) -> dict:
    """Digits 5-9 through the demo pipeline's data components (untimed); TFX's Tuner's input artifacts."""
    from tfx.orchestration import pipeline
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.orchestration.metadata import sqlite_metadata_connection_config

    from pipelines.digits_data import write_digits_examples
    from pipelines.freeze_pipeline import _data_components

    components = _data_components(write_digits_examples(os.path.join(workdir, "data")), IMAGE_SIZE, None, "image", "label")
    root = os.path.join(workdir, "root")
    LocalDagRunner().run(pipeline.Pipeline(
        pipeline_name="policy-search-benchmark", pipeline_root=root, components=list(components),
        metadata_connection_config=sqlite_metadata_connection_config(os.path.join(workdir, "metadata.sqlite"))))

    def artifact(kind, *path: str):
        (uri,) = glob.glob(os.path.join(root, *path, "*"))
        instance = kind()
        instance.uri = uri
        return instance

    examples = artifact(standard_artifacts.Examples, "Transform", "transformed_examples")
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    return {"examples": [examples], "transform_graph": [artifact(standard_artifacts.TransformGraph, "Transform",
                                                                 "transform_graph")],
            "schema": [artifact(standard_artifacts.Schema, "SchemaGen", "schema")]}


def fn_args_for(inputs: dict, base: dict, space: str, workdir: str):
    """The FnArgs TFX's Tuner gives `tuner_fn`, with the space, the parameters and the search folder."""
    custom_config = {SEARCH_SPACE_KEY: space, TRAINER_PARAMETERS_KEY: base, SEARCH_DIR_KEY: workdir}
    fn_args = fn_args_utils.get_common_fn_args(
        inputs, {"train_args": "{}", "eval_args": "{}", "custom_config": json.dumps(custom_config)}, workdir)
    fn_args.transform_output = fn_args.transform_graph_path
    return fn_args


def run_search(fn_args) -> tuple[float, list[dict]]:
    started = time.perf_counter()
    result = tuner_fn(fn_args)
    result.tuner.search(**result.fit_kwargs)
    seconds = time.perf_counter() - started
    return seconds, result.tuner.records


def run_independent(fn_args, base: dict, combinations: list[dict], workdir: str) -> tuple[float, list[dict]]:
    started, records = time.perf_counter(), []
    for number, values in enumerate(combinations, start=1):
        trials = SearchTrials(fn_args, base, os.path.join(workdir, f"independent_{number}"))
        result = trials.run(values)
        trials.close()
        records.append({"values": values, "val_accuracy": result.metrics["val_accuracy"], "seconds": result.seconds})
    return time.perf_counter() - started, records


def _anchor_trial(config, train, evaluation, steps: int, num_classes: int) -> float:
    """One trial as a KerasTuner hypermodel user writes it: build, fit the head, unfreeze, recompile, fit."""
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(SEED)
    shape = (IMAGE_SIZE, IMAGE_SIZE, 3)
    model = build_classifier(build_backbone(BACKBONE_NAME, DEFAULT_BACKBONE_PATH, shape, ALPHA), BACKBONE_NAME,
                             num_classes, bn_inference_mode=True)
    base = backbone_of(model)
    head, finetune = config.freeze_policy.phases
    groups = [rule.unfreeze.group for rule in finetune.rules if rule.unfreeze is not None]
    affine = config.freeze_policy.batchnorm == "affine"

    def fit(learning_rate: float, epochs: int) -> None:
        model.compile(tf.keras.optimizers.Adam(learning_rate), tf.keras.losses.SparseCategoricalCrossentropy(),
                      metrics=["accuracy"])
        model.fit(train, validation_data=evaluation, epochs=epochs, steps_per_epoch=steps, verbose=0)

    base.trainable = False
    fit(config.learning_rate, head.epochs)
    base.trainable = True
    for layer in base.layers:  # the unfrozen blocks; their BatchNorm trains its scale and offset when affine
        in_group = any(layer.name.startswith(group + "_") for group in groups)
        layer.trainable = in_group and (affine or not isinstance(layer, tf.keras.layers.BatchNormalization))
    fit(finetune.learning_rate, finetune.epochs)
    return float(model.evaluate(evaluation, verbose=0)[1])


def run_anchor(fn_args, base: dict, combinations: list[dict]) -> tuple[float, list[dict]]:
    started, records = time.perf_counter(), []
    trials = SearchTrials(fn_args, base, tempfile.mkdtemp())  # only for its data: the same examples
    for values in combinations:
        config = trial_config(base, values)
        contract = data_contract(fn_args, config, trials.tft_output, trials.schema)
        contract = replace(contract, inputs={"image": contract.feature_key})  # the images alone, as plain Keras takes them
        train, evaluation = (split.map(lambda features, label: (features["image"], label))
                             for split in training_examples(fn_args, config, trials.schema, contract))
        steps = -(-int(train.reduce(0, lambda count, _: count + 1)) // BATCH_SIZE)
        train = train.shuffle(4096, seed=SEED).batch(BATCH_SIZE).repeat()
        accuracy = _anchor_trial(config, train, evaluation.batch(BATCH_SIZE), steps, contract.num_classes)
        records.append({"values": values, "val_accuracy": accuracy})
    trials.close()
    return time.perf_counter() - started, records


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


@click.command(cls=QuietCommand)
@click.option("--trials", type=click.IntRange(1, 12), default=8, show_default=True)
@click.option("--head-epochs", type=click.IntRange(1), default=3, show_default=True)
@click.option("--finetune-epochs", type=click.IntRange(1), default=2, show_default=True)
def main(trials, head_epochs, finetune_epochs):
    base = {"freeze_policy": json.dumps(_policy(head_epochs, finetune_epochs)), "backbone": BACKBONE_NAME,
            "backbone_weights": DEFAULT_BACKBONE_PATH, "backbone_alpha": ALPHA, "learning_rate": HEAD_LR,
            "batch_size": BATCH_SIZE, "seed": SEED}
    space_text = _space(trials)
    warm_up = next(parse_search_space(space_text, base).combinations())
    with tempfile.TemporaryDirectory() as workdir:
        inputs = transformed_digits(workdir)
        fn_args = fn_args_for(inputs, base, space_text, os.path.join(workdir, "search"))
        eval_files = [path for pattern in fn_args.eval_files for path in tf.io.gfile.glob(pattern)]
        eval_examples = sum(1 for _ in tf.data.TFRecordDataset(eval_files, compression_type="GZIP"))
        run_independent(fn_args, base, [warm_up], os.path.join(workdir, "warm_up"))
        search_seconds, search_records = run_search(fn_args)
        search_records = sorted(search_records, key=lambda record: record["trial"])
        combinations = [record["values"] for record in search_records]
        independent_seconds, independent_records = run_independent(fn_args, base, combinations, workdir)
        anchor_seconds, anchor_records = run_anchor(fn_args, base, combinations)
    _report(trials, eval_examples, (search_seconds, search_records), (independent_seconds, independent_records),
            (anchor_seconds, anchor_records))


def _report(trials: int, eval_examples: int, search, independent, anchor) -> None:
    (search_seconds, search_records), (independent_seconds, independent_records) = search, independent
    anchor_seconds, anchor_records = anchor
    print(f"{trials} trials of head {BACKBONE_NAME} {ALPHA} at {IMAGE_SIZE} px on digits 5-9"
          f" ({eval_examples} eval examples)")
    for record, alone, plain in zip(search_records, independent_records, anchor_records):
        print(f"  {format_values(record['values'])}")
        print(f"    search {record['objective']['val_accuracy']:.4f} in {record['seconds']:.1f} s"
              f" (reused: {', '.join(record['reused']) or 'nothing'}); independent {alone['val_accuracy']:.4f} in"
              f" {alone['seconds']:.1f} s; anchor {plain['val_accuracy']:.4f}")
    best_search = max(record["objective"]["val_accuracy"] for record in search_records)
    best_independent = max(record["val_accuracy"] for record in independent_records)
    print(f"search wall time      {search_seconds:7.1f} s, best eval accuracy {best_search:.4f}")
    print(f"independent wall time {independent_seconds:7.1f} s, best eval accuracy {best_independent:.4f}")
    print(f"anchor wall time      {anchor_seconds:7.1f} s, best eval accuracy "
          f"{max(record['val_accuracy'] for record in anchor_records):.4f}")
    ratio = search_seconds / independent_seconds
    print(f"search/independent time: {ratio:.2f}x")
    print(f"search/anchor time: {search_seconds / anchor_seconds:.2f}x")
    print(f"{_verdict(ratio <= 0.4)}: search <= 0.4x the independent runs' time ({ratio:.2f}x)")
    print(f"{_verdict(search_seconds <= anchor_seconds)}: search <= the anchor's time"
          f" ({search_seconds:.1f} s vs {anchor_seconds:.1f} s)")
    gap = abs(best_search - best_independent) * eval_examples
    print(f"{_verdict(gap <= 1 + 1e-6)}: best trial within one eval example of the best independent run"
          f" ({gap:.1f} examples apart)")


if __name__ == "__main__":
    main()
