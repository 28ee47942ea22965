"""A head as users write it: the last layer without activation, outputting logits (the Keras
`from_logits=True` convention). The trainer detects it (`head_output: auto`), trains with a loss and metrics
that take logits, and serves probabilities, so TFMA's gate reads what it expects.

The pipeline: scikit-learn's wine table (13 columns, 3 classes) as tf.Examples, the user's Transform stacking
the columns into one vector, and a trainer module's `build_model` whose own head is `Dense(3)`.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_wine

from freeze_trainer import parse_policy
from freeze_trainer.keras import plan_policy, train_with_proof
from freeze_trainer.keras.models.classifier_model import HeadError, declare_head, resolve_head_output
from freeze_trainer.keras.training.freeze_proof import FreezeViolation
from freeze_trainer.keras.models.tasks import Task
from pipelines.run_summary import summarize_latest_run
from tests.conftest import REPO_ROOT, run_local_runner

MODULES = os.path.join(REPO_ROOT, "tests", "user_modules")
PIPELINE_NAME = "freeze-trainer-demo"
WINE_POLICY = {
    "version": 1,
    "phases": [
        {"name": "head", "epochs": 5, "rules": [{"freeze": {"base": True}}]},
        {"name": "all", "epochs": 10, "learning_rate": 0.01, "rules": [{"unfreeze": {"base": True}}]},
    ],
}


def _wine_examples() -> tuple[list[bytes], np.ndarray]:
    data = load_wine()
    records = [
        tf.train.Example(features=tf.train.Features(feature={
            **{f"f_{index:02d}": tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
               for index, value in enumerate(row)},
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        })).SerializeToString()
        for row, label in zip(data.data, data.target)
    ]
    return records, data.target


@pytest.fixture(scope="module")
def logits_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("logits_head")
    data_root = work / "data"
    data_root.mkdir()
    records, labels = _wine_examples()
    with tf.io.TFRecordWriter(str(data_root / "wine.tfrecord")) as writer:
        for record in records:
            writer.write(record)
    output_dir = str(work / "run")
    result = run_local_runner(
        "--output-dir", output_dir, "--data-root", str(data_root),
        "--transform-module", os.path.join(MODULES, "tabular_transform.py"),
        "--trainer-module", os.path.join(MODULES, "logits_mlp.py"), "--head-layers", "logits",
        "--transformed-feature-key", "features_xf", "--freeze-policy", json.dumps(WINE_POLICY),
        "--batch-size", "16", "--learning-rate", "0.05", "--accuracy-floor", "0.8",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return output_dir, records, labels


def test_a_logits_head_trains_well_above_chance_and_is_blessed(logits_run):
    output_dir, *_ = logits_run
    summary = summarize_latest_run(os.path.join(output_dir, "metadata.sqlite"), PIPELINE_NAME)
    assert summary.blessed and summary.pushed_to, summary.lines()
    assert summary.metrics["sparse_categorical_accuracy"] >= 0.85, summary.lines()  # chance: 0.40 at most
    assert summary.model_properties["freeze_check"] == "passed"
    with open(os.path.join(summary.pushed_to, "assets.extra", "freeze_report.json")) as f:
        report = json.load(f)
    assert (report["task"], report["head_output"]) == ("multiclass", "logits")


def test_the_pushed_model_serves_probabilities_from_the_logits(logits_run):
    output_dir, records, labels = logits_run
    pushed = summarize_latest_run(os.path.join(output_dir, "metadata.sqlite"), PIPELINE_NAME).pushed_to
    serving = tf.saved_model.load(pushed).signatures["serving_default"]
    served = {key: value.numpy() for key, value in serving(examples=tf.constant(records)).items()}
    probabilities = served["probabilities"]
    assert probabilities.shape == (len(records), 3)
    assert np.all(probabilities >= 0) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.array_equal(served["class_ids"], probabilities.argmax(axis=1))
    assert np.mean(served["class_ids"] == labels) >= 0.85


def _small_model(activation: str | None, task: Task, bias: float = 0.0) -> tf.keras.Model:
    inputs = tf.keras.Input((4,), name="features")
    x = tf.keras.layers.Dense(8, activation="relu", name="enc_1")(inputs)
    outputs = tf.keras.layers.Dense(task.units(3), activation=activation, name="out", kernel_initializer="zeros",
                                    bias_initializer=tf.keras.initializers.Constant(bias))(x)
    return declare_head(tf.keras.Model(inputs, outputs), ["out"])


@pytest.mark.parametrize("activation, task_name, requested, expected", [
    (None, "multiclass", "auto", "logits"),
    ("linear", "binary", "auto", "logits"),
    ("softmax", "multiclass", "auto", "probabilities"),
    ("sigmoid", "multi_label", "auto", "probabilities"),
    (None, "regression", "auto", "probabilities"),  # a regression head's values are what it predicts
    (None, "multiclass", "probabilities", "probabilities"),
    ("relu", "multiclass", "logits", "logits"),
])
def test_the_head_output_is_detected_from_the_last_layer_or_taken_as_given(activation, task_name, requested, expected):
    task = Task(task_name)
    assert resolve_head_output(_small_model(activation, task), task, requested).head_output == expected


@pytest.mark.parametrize("activation, task_name, message", [
    ("softmax", "multiclass", "head_output: logits, but the head's last layer 'out' applies softmax; set head_output: "
                              "probabilities or auto"),
    (None, "regression", "head_output: logits needs a classification task; a regression head predicts values"),
])
def test_logits_that_contradict_the_head_or_the_task_are_refused_in_one_line(activation, task_name, message):
    task = Task(task_name)
    with pytest.raises(HeadError) as raised:
        resolve_head_output(_small_model(activation, task), task, "logits")
    assert str(raised.value) == message


@pytest.mark.parametrize("task_name", ["multiclass", "binary"])
@pytest.mark.parametrize("loop", ["fit", "gradient_tape"])
def test_both_loops_train_a_logits_head_with_logits_metrics(task_name, loop):
    tf.keras.utils.set_random_seed(0)
    features = np.random.default_rng(0).normal(size=(96, 4)).astype("float32")
    classes = 3 if task_name == "multiclass" else 2
    labels = np.digitize(features[:, 0], [-0.5, 0.5] if classes == 3 else [0.0])
    model = _small_model(None, Task(task_name))
    task = resolve_head_output(model, Task(task_name))
    targets = task.prepare_labels(tf.constant(labels))
    data = tf.data.Dataset.from_tensor_slices((features, targets)).batch(16)
    policy = parse_policy(json.dumps({"version": 1, "rules": [{"unfreeze": {"base": True}}]}))
    checks, metrics = train_with_proof(model, plan_policy(policy, model, 0.05, 20), data, data, loop=loop,
                                       verbose=0, task=task)
    assert checks[0].passed
    assert metrics["val_accuracy"] >= 0.85, metrics  # thresholds on logits at 0, not 0.5


def test_a_head_that_gives_no_gradient_is_named_as_the_likely_cause():
    """Logits taken for probabilities: the loss clips outputs below 0 into (0, 1), so no gradient flows."""
    task = Task("multiclass")
    model = _small_model(None, task, bias=-5.0)
    task = resolve_head_output(model, task, "probabilities")
    features = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((features, np.arange(32) % 3)).batch(16)
    policy = parse_policy(json.dumps({"version": 1, "rules": [{"unfreeze": {"base": True}}]}))
    with pytest.raises(FreezeViolation) as raised:
        train_with_proof(model, plan_policy(policy, model, 0.05, 1), data, verbose=0, task=task)
    assert str(raised.value) == (
        "phase 'train': none of its 4 trainable variables changed; likely cause: the head's last layer 'out' has "
        "activation 'linear', so it does not output the probabilities the multiclass loss takes: end the head in "
        "softmax, or without activation and set head_output: logits (or auto)")


@pytest.mark.parametrize("task, scores, probabilities, class_ids", [
    (Task("binary", "logits"), [[0.0], [2.0], [-1.0]], [[0.5], [0.8808], [0.2689]], [0, 1, 0]),
    (Task("multiclass", "logits"), [[0.0, 0.0], [1.0, 3.0]], [[0.5, 0.5], [0.1192, 0.8808]], [0, 1]),
    (Task("binary"), [[0.2], [0.7]], [[0.2], [0.7]], [0, 1]),
])
def test_the_export_serves_probabilities_whatever_the_head_outputs(task, scores, probabilities, class_ids):
    from freeze_trainer.tfx.serving_export import _outputs

    outputs = _outputs(task, tf.constant(scores), None)
    np.testing.assert_allclose(outputs["probabilities"].numpy(), probabilities, atol=1e-4)
    assert outputs["class_ids"].numpy().tolist() == class_ids
