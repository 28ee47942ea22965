"""A TFX team's tabular pipeline as TFX's own examples write it (README "Tabular data"): scikit-learn's wine
table as CSV through CsvExampleGen, a Transform with one output per column (`<column>_xf`), and a base with
one named input per column, pretrained on a source task and saved as `.keras`. Each input is fed the
Transform output of its name; the base is frozen, then its top layer unfrozen; the pushed model serves raw
tf.Examples and reproduces TFMA's accuracy. A base whose input names the Transform does not make is refused
in one line naming every input and every Transform output."""

import csv
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_wine

from pipelines.run_summary import ACCURACY, summarize_latest_run
from tests.conftest import REPO_ROOT

TRANSFORM_MODULE = os.path.join(REPO_ROOT, "tests", "user_modules", "column_transform.py")
PIPELINE_FILE = os.path.join(REPO_ROOT, "pipelines", "tabular_pipeline.py")
LABEL = "target"


def _columns() -> list[str]:
    return [name.replace("/", "_") for name in load_wine().feature_names]  # od280/od315_... is not a Keras name


def _base(columns: list[str]) -> tf.keras.Model:
    """One input per Transform output, named like it; enc_1 and enc_2 are the blocks the policy names."""
    inputs = [tf.keras.Input((1,), name=f"{column}_xf") for column in columns]
    x = tf.keras.layers.Concatenate(name="columns")(inputs)
    x = tf.keras.layers.Dense(32, activation="relu", name="enc_1")(x)
    x = tf.keras.layers.Dense(16, activation="relu", name="enc_2")(x)
    return tf.keras.Model(inputs, x, name="wine_base")


def _pretrained_base(path: str, columns: list[str]) -> None:
    """Pretrained on a source task, class 0 against the rest, and saved as `.keras`."""
    tf.keras.utils.set_random_seed(0)
    data = load_wine()
    scaled = ((data.data - data.data.mean(axis=0)) / data.data.std(axis=0)).astype("float32")
    base = _base(columns)
    source = tf.keras.Model(base.inputs, tf.keras.layers.Dense(1, activation="sigmoid")(base.output))
    source.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    source.fit({f"{c}_xf": scaled[:, [i]] for i, c in enumerate(columns)}, (data.target == 0).astype("float32"),
               epochs=5, batch_size=16, verbose=0)
    base.save(path)


def _write_csv(path: str, columns: list[str]) -> None:
    data = load_wine()
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*columns, LABEL])
        for row, label in zip(data.data, data.target):
            writer.writerow([*(repr(float(value)) for value in row), int(label)])  # floats stay FLOAT columns


@pytest.fixture(scope="module")
def wine_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("wine")
    columns = _columns()
    (work / "data").mkdir()
    _write_csv(str(work / "data" / "wine.csv"), columns)
    base_path = str(work / "wine_base.keras")
    _pretrained_base(base_path, columns)
    output_dir = str(work / "run")
    result = subprocess.run([sys.executable, PIPELINE_FILE, str(work / "data"), TRANSFORM_MODULE, base_path,
                             output_dir], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return output_dir, summarize_latest_run(os.path.join(output_dir, "metadata.sqlite"), "tabular")


def test_a_base_with_thirteen_named_inputs_trains_proves_and_pushes(wine_run):
    _, summary = wine_run
    assert summary.blessed and summary.pushed_to, summary.lines()
    assert summary.model_properties["freeze_check"] == "passed"
    assert summary.metrics[ACCURACY] >= 0.8, summary.lines()
    with open(os.path.join(summary.pushed_to, "assets.extra", "freeze_report.json")) as f:
        report = json.load(f)
    head, top = report["phases"]
    assert head["trainable_variables"] == 2 and head["frozen_variables"] == 4  # the head; enc_1, enc_2 frozen
    assert top["trainable_variables"] == 4 and not top["changed_frozen"]  # + enc_2's kernel and bias


def test_serving_raw_examples_reproduces_tfma_accuracy(wine_run):
    output_dir, summary = wine_run
    # The examples TFMA evaluated: ExampleGen's eval split, raw tf.Examples as CsvExampleGen wrote them.
    files = glob.glob(os.path.join(output_dir, "pipeline_root", "CsvExampleGen", "examples", "*", "Split-eval", "*"))
    records = [record.numpy() for record in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    labels = np.array([tf.train.Example.FromString(r).features.feature[LABEL].int64_list.value[0] for r in records])
    serving = tf.saved_model.load(summary.pushed_to).signatures["serving_default"]
    served = serving(examples=tf.constant(records))
    assert served["probabilities"].shape == (len(records), 3)
    accuracy = float(np.mean(served["class_ids"].numpy() == labels))
    assert accuracy == pytest.approx(summary.metrics[ACCURACY], abs=1e-6), (accuracy, summary.metrics)


def _wine_tfrecords(folder: str, columns: list[str]) -> str:
    os.makedirs(folder)
    data = load_wine()
    with tf.io.TFRecordWriter(os.path.join(folder, "wine.tfrecord")) as writer:
        for row, label in zip(data.data, data.target):
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                **{name: tf.train.Feature(float_list=tf.train.FloatList(value=[value])) for name, value in zip(columns, row)},
                LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
            })).SerializeToString())
    return folder


def test_a_missing_input_is_refused_before_any_component_runs_naming_every_input_and_output(tmp_path):
    """The local runner traces the user's Transform on the data's features at start-up and binds the base's
    inputs to its outputs: a typo'd input name is one line, exit status 2, and nothing is written."""
    from tests.conftest import run_local_runner

    columns = _columns()
    base = _base(columns)
    inputs = [tf.keras.Input((1,), name=name) for name in [*base.input_names[:-1], "prolin_xf"]]  # proline_xf
    typo = tf.keras.Model(inputs, base(inputs), name="typo_base")
    typo.save(tmp_path / "typo.keras")
    output_dir = tmp_path / "run"
    result = run_local_runner(
        "--output-dir", str(output_dir), "--data-root", _wine_tfrecords(str(tmp_path / "data"), columns),
        "--transform-module", TRANSFORM_MODULE, "--label-key", LABEL, "--backbone", "custom",
        "--backbone-weights", str(tmp_path / "typo.keras"), timeout=300)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "prolin_xf" in line]
    assert len(errors) == 1, result.stderr
    line = errors[0]
    assert "backbone_weights:" in line and "no feature 'prolin_xf'" in line
    assert all(f"{column}_xf" in line for column in columns)  # every Transform output (and every input)
    assert line.count("prolin_xf") == 2  # the problem, and the model's input list
    assert "Traceback" not in result.stderr and not (output_dir / "pipeline_root").exists()


def test_the_trainer_binds_inputs_by_name_and_refuses_a_missing_one_in_one_line():
    """The trainer's first line, where the Transform output is read: the same rule, the same message."""
    from freeze_trainer.tfx.data_contract import resolve_contract
    from freeze_trainer.tfx.trainer_config import ConfigError, TrainerConfig
    from freeze_trainer.tfx.trainer_model import bind_inputs, build_from_config

    spec = {"a_xf": tf.io.FixedLenFeature([1], tf.float32), "b_xf": tf.io.FixedLenFeature([2], tf.float32),
            "target_xf": tf.io.FixedLenFeature([], tf.int64)}
    config = TrainerConfig.from_parameters(label_key="target", backbone="custom")
    contract = resolve_contract(config, spec, "Transform output", lambda name: None, lambda key: 3, lambda: 3, True)

    def base(*names_and_widths):
        inputs = [tf.keras.Input((width,), name=name) for name, width in names_and_widths]
        x = tf.keras.layers.Concatenate()(inputs) if len(inputs) > 1 else inputs[0]
        x = tf.keras.layers.Dense(4, name="hidden")(x)  # a base below the head `enc_1` a case declares
        return tf.keras.Model(inputs, tf.keras.layers.Dense(3, activation="softmax", name="enc_1")(x))

    model = build_from_config(config, contract, given=base(("b_xf", 2), ("a_xf", 1)))
    bound = bind_inputs(config, contract, model)
    assert bound.inputs == {"b_xf": "b_xf", "a_xf": "a_xf"}
    assert model({"a_xf": tf.ones((4, 1)), "b_xf": tf.ones((4, 2))}).shape == (4, 3)
    for names, problem in (((("a_xf", 1), ("c_xf", 1)), "no feature 'c_xf'"), ((("a_xf", 1), ("b_xf", 3)), "'b_xf' is (2,)")):
        with pytest.raises(ConfigError) as raised:
            bind_inputs(config, contract, build_from_config(config, contract, given=base(*names)))
        message = str(raised.value)
        assert "\n" not in message and message.startswith("backbone_weights: ") and problem in message
        assert "The model's inputs: " in message and "The Transform output's features: a_xf (1,), b_xf (2,)" in message
    # One input keeps transformed_feature_key, whatever the input's name (a whole model, its head declared).
    config = config.model_copy(update={"transformed_feature_key": "b_xf", "head_layers": "enc_1"})
    contract = resolve_contract(config, spec, "Transform output", lambda name: None, lambda key: 3, lambda: 3, True)
    one = build_from_config(config, contract, given=base(("anything", 2)))
    assert bind_inputs(config, contract, one).inputs == {"anything": "b_xf"}
    with pytest.raises(ConfigError, match=r"^backbone_weights: the model's input 'anything' takes \(1,\); "
                                          r"transformed_feature_key 'b_xf' is \(2,\) in the Transform output$"):
        bind_inputs(config, contract, build_from_config(config, contract, given=base(("anything", 1))))


def test_the_readme_shows_the_tested_pipeline_and_transform_whole():
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        readme = f.read()
    for path in (PIPELINE_FILE, TRANSFORM_MODULE):
        with open(path) as f:
            assert f"```python\n{f.read().rstrip()}\n```" in readme, path


def test_without_a_transform_named_inputs_read_raw_features_and_warm_start(tmp_path):
    """No Transform: each input reads the raw feature of its name through the schema, the export serves raw
    examples, and a retrained model warm-starts every variable from the exported one."""
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import io_utils

    from freeze_trainer.keras import build_classifier
    from freeze_trainer.tfx.executor import Executor
    from freeze_trainer.tfx.warm_start import warm_start_from_saved_model
    from tests.test_user_run_fn import _artifact

    tf.keras.utils.set_random_seed(0)  # the random base below, whatever ran before
    data = load_wine()
    rows = ((data.data - data.data.mean(axis=0)) / data.data.std(axis=0)).astype("float32")
    columns = _columns()[:4]  # alcohol, malic_acid, ash, alcalinity_of_ash: raw names, no `_xf`

    def example(row, label) -> bytes:
        return tf.train.Example(features=tf.train.Features(feature={
            **{name: tf.train.Feature(float_list=tf.train.FloatList(value=[value])) for name, value in zip(columns, row)},
            LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        })).SerializeToString()

    order = np.random.default_rng(0).permutation(len(rows))
    splits = {"train": order[:120], "eval": order[120:]}
    for split, index in splits.items():
        (tmp_path / "examples" / f"Split-{split}").mkdir(parents=True)
        with tf.io.TFRecordWriter(str(tmp_path / "examples" / f"Split-{split}" / "data.gz"),
                                  tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
            for i in index:
                writer.write(example(rows[i], data.target[i]))
    schema = schema_pb2.Schema()
    for name, kind in [*((column, schema_pb2.FLOAT) for column in columns), (LABEL, schema_pb2.INT)]:
        feature = schema.feature.add(name=name, type=kind)  # as SchemaGen writes it with infer_feature_shape
        feature.shape.dim.add(size=1)
        feature.presence.min_fraction = 1.0
    (tmp_path / "schema").mkdir()
    io_utils.write_pbtxt_file(str(tmp_path / "schema" / "schema.pbtxt"), schema)
    inputs = [tf.keras.Input((1,), name=column) for column in columns]
    base = tf.keras.Model(inputs, tf.keras.layers.Dense(16, activation="relu", name="enc_1")(
        tf.keras.layers.Concatenate()(inputs)), name="raw_base")
    base.save(str(tmp_path / "base.keras"))

    executor_inputs = {"examples": [_artifact(standard_artifacts.Examples, str(tmp_path / "examples"), True)],
                       "schema": [_artifact(standard_artifacts.Schema, str(tmp_path / "schema"))]}
    outputs = {"model": [_artifact(standard_artifacts.Model, str(tmp_path / "model"))],
               "model_run": [_artifact(standard_artifacts.ModelRun, str(tmp_path / "model_run"))]}
    properties = {"freeze_policy": '{"version": 1, "rules": [{"freeze": {"base": true}}]}', "epochs": 5,
                  "backbone": "custom", "backbone_weights": str(tmp_path / "base.keras"), "label_key": LABEL,
                  "dropout": 0.0, "learning_rate": 0.05, "train_args": "{}", "eval_args": "{}", "custom_config": "null"}
    Executor().Do(executor_inputs, outputs, properties)
    assert outputs["model"][0].get_string_custom_property("freeze_check") == "passed"
    export_dir = str(tmp_path / "model" / "Format-Serving")
    serving = tf.saved_model.load(export_dir).signatures["serving_default"]
    served = serving(examples=tf.constant([example(rows[i], data.target[i]) for i in splits["eval"]]))
    assert served["probabilities"].shape == (len(splits["eval"]), 3)
    assert np.mean(served["class_ids"].numpy() == data.target[splits["eval"]]) > 0.7  # the majority class: 0.45

    fresh = build_classifier(tf.keras.models.load_model(str(tmp_path / "base.keras")), None, 3,
                             bn_inference_mode=True, dropout=0.0)
    report = warm_start_from_saved_model(fresh, export_dir)
    assert report.loaded == len(fresh.variables) and not report.missing and not report.shape_mismatch
    assert np.allclose(fresh({c: rows[splits["eval"]][:, [i]] for i, c in enumerate(columns)}).numpy(),
                       served["probabilities"].numpy(), atol=1e-5)


def test_a_saved_base_of_another_shape_is_named_with_every_input(tmp_path):
    from freeze_trainer.keras.models.backbones import BackboneError, build_backbone

    columns = _columns()
    _base(columns).save(tmp_path / "base.keras")
    with pytest.raises(BackboneError) as raised:
        build_backbone(None, str(tmp_path / "base.keras"), (13,))
    assert all(f"{column}_xf (1,)" in str(raised.value) for column in columns)  # the first one too
    assert str(raised.value).endswith("the data has (13,)")
