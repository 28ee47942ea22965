"""A TFX team's own data and model, through the local runner, with real pipelines and MLMD:

- tabular: scikit-learn's breast-cancer table as tf.Examples with named numeric columns, the user's own
  Transform module, a base MLP pretrained here on a source task and saved as `.keras` (`backbone:
  custom`), a new binary head gated on AUC, the base frozen and then its top layer unfrozen; the pushed
  model beats the same head on a random-initialised frozen base;
- images under other names (`pixels`, `digit`, string labels through a vocabulary), a model from a
  trainer module's `build_model` with its own declared head, a Tuner-style hyperparameters file that
  changes the learning rate and shapes the module's model (`num_layers`), and TFX's train_args/eval_args
  step counts;
- each run's Model artifact and freeze report name the model's real source and its base.
"""

import hashlib

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import roc_auc_score

from freeze_trainer import parse_policy
from freeze_trainer.keras import build_classifier, plan_policy, train_with_proof
from freeze_trainer.keras.models.tasks import Task
from pipelines.digits_data import DIGIT_NAMES, TARGET_DIGITS, load_digit_pngs, to_example, write_digits_examples
from pipelines.run_summary import summarize_latest_run
from tests.conftest import REPO_ROOT, run_local_runner

MODULES = os.path.join(REPO_ROOT, "tests", "user_modules")
PIPELINE_NAME = "freeze-trainer-demo"
SOURCE_ROWS = 300  # pretraining rows; the pipeline trains and evaluates on the rest
HEAD_RATE = 0.05
TABULAR_POLICY = {
    "version": 1,
    "block_pattern": "(enc_\\d+)",
    "phases": [
        {"name": "head", "epochs": 10, "rules": [{"freeze": {"base": True}}]},
        {"name": "top", "epochs": 3, "learning_rate": 0.005,
         "rules": [{"freeze": {"base": True}}, {"unfreeze": {"group": "enc_2"}}]},
    ],
}


def _columns(data) -> list[str]:
    return [f"f_{index:02d}" for index in range(data.data.shape[1])]


def _tabular_examples(rows: np.ndarray, labels: np.ndarray, columns: list[str]) -> list[bytes]:
    return [
        tf.train.Example(features=tf.train.Features(feature={
            **{name: tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
               for name, value in zip(columns, row)},
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        })).SerializeToString()
        for row, label in zip(rows, labels)
    ]


def _mlp_base(width: int) -> tf.keras.Model:
    inputs = tf.keras.Input((width,), name="features")
    x = tf.keras.layers.Dense(16, activation="relu", name="enc_1")(inputs)
    x = tf.keras.layers.Dense(3, activation="relu", name="enc_2")(x)
    return tf.keras.Model(inputs, x, name="mlp_base")


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory):
    """Pretrains an MLP base on a source task (rows 0-299: is the mean radius above its median?), saves it as
    `.keras`, and runs the pipeline on the target task (the diagnosis) over the other rows."""
    tf.keras.utils.set_random_seed(0)
    work = tmp_path_factory.mktemp("tabular")
    data = load_breast_cancer()
    columns = _columns(data)
    mean, std = data.data.mean(axis=0), data.data.std(axis=0)
    scaled = ((data.data - mean) / std).astype("float32")
    source_x = scaled[:SOURCE_ROWS]
    source_y = (data.data[:SOURCE_ROWS, 0] > np.median(data.data[:SOURCE_ROWS, 0])).astype("int64")
    base = _mlp_base(len(columns))
    pretrain = tf.keras.Sequential([base, tf.keras.layers.Dense(1, activation="sigmoid")])
    pretrain.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    pretrain.fit(source_x, source_y, epochs=30, batch_size=32, verbose=0)
    base_path = str(work / "mlp_base.keras")
    base.save(base_path)
    random_base_path = str(work / "random_base.keras")
    _mlp_base(len(columns)).save(random_base_path)

    data_root = work / "data"
    data_root.mkdir()
    target_rows, target_labels = data.data[SOURCE_ROWS:], data.target[SOURCE_ROWS:]
    with tf.io.TFRecordWriter(str(data_root / "cancer.tfrecord")) as writer:
        for record in _tabular_examples(target_rows, target_labels, columns):
            writer.write(record)
    output_dir = str(work / "run")
    result = run_local_runner(
        "--output-dir", output_dir, "--data-root", str(data_root),
        "--transform-module", os.path.join(MODULES, "tabular_transform.py"),
        "--backbone", "custom", "--backbone-weights", base_path,
        "--transformed-feature-key", "features_xf", "--task", "binary",
        "--freeze-policy", json.dumps(TABULAR_POLICY), "--batch-size", "16", "--learning-rate", str(HEAD_RATE),
        "--dropout", "0", "--accuracy-floor", "0.8",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return output_dir, result, target_rows, target_labels, columns, random_base_path


def _serve(export_dir: str, records: list[bytes]) -> dict[str, np.ndarray]:
    serving = tf.saved_model.load(export_dir).signatures["serving_default"]
    return {key: value.numpy() for key, value in serving(examples=tf.constant(records)).items()}


def _pushed(output_dir: str) -> str:
    summary = summarize_latest_run(os.path.join(output_dir, "metadata.sqlite"), PIPELINE_NAME)
    assert summary.pushed_to, summary.lines()
    return summary.pushed_to


def test_tabular_binary_pipeline_gates_on_auc_and_proves_the_frozen_base(tabular_run):
    output_dir, result, *_ = tabular_run
    summary = summarize_latest_run(os.path.join(output_dir, "metadata.sqlite"), PIPELINE_NAME)
    assert summary.blessed and summary.metrics["auc"] >= 0.8, summary.lines()
    assert summary.model_properties["freeze_check"] == "passed"
    with open(os.path.join(_pushed(output_dir), "assets.extra", "freeze_report.json")) as f:
        report = json.load(f)
    assert report["task"] == "binary"
    head, top = report["phases"]
    assert head["trainable_variables"] == 2  # the new head's kernel and bias
    assert top["trainable_variables"] == 4 and not top["changed_frozen"]  # + enc_2's kernel and bias
    # The head trained on the base's cached features; the top phase's live part (enc_2 and the head) on
    # enc_1's cached outputs: the proof still covers the whole model, and the export serves it whole (below).
    assert [(phase["feature_cache"], phase["feature_cache_cut"]) for phase in report["phases"]] == [
        (True, "pooled features"), (True, "enc_1")]
    with open(os.path.join(_pushed(output_dir), "assets.extra", "run_report.json")) as f:
        words = [phase["feature_cache"] for phase in json.load(f)["phases"]]
    assert words[1] == "used: live part on cached enc_1 (64 bytes per example)", words


def test_tabular_model_serves_raw_rows_and_beats_a_random_frozen_base(tabular_run):
    output_dir, _, rows, labels, columns, random_base_path = tabular_run
    served = _serve(_pushed(output_dir), _tabular_examples(rows, labels, columns))
    assert served["probabilities"].shape == (len(rows), 1)
    assert set(np.unique(served["class_ids"])) <= {0, 1}
    pushed_auc = roc_auc_score(labels, served["probabilities"][:, 0])

    # The same head, trained as long on the same rows, on a random-initialised frozen base.
    tf.keras.utils.set_random_seed(0)
    scaled = ((rows - rows.mean(axis=0)) / rows.std(axis=0)).astype("float32")
    random_base = tf.keras.models.load_model(random_base_path, compile=False)
    model = build_classifier(random_base, None, 2, bn_inference_mode=True, dropout=0.0, input_name="features",
                             task=Task("binary"))
    plans = plan_policy(parse_policy(json.dumps({"version": 1, "rules": [{"freeze": {"base": True}}]})), model,
                        HEAD_RATE, 13)
    data = tf.data.Dataset.from_tensor_slices((scaled, labels.reshape(-1, 1).astype("float32"))).batch(16)
    checks, _ = train_with_proof(model, plans, data, verbose=0, task=Task("binary"))
    assert checks[0].passed
    random_auc = roc_auc_score(labels, model.predict(scaled, verbose=0)[:, 0])
    assert pushed_auc > random_auc, (pushed_auc, random_auc)
    assert pushed_auc > 0.9


@pytest.fixture(scope="module")
def renamed_images_run(tmp_path_factory):
    """Digits under `pixels` with string labels under `digit`; the model comes from a trainer module's
    `build_model` with its own head; a hyperparameters file sets the learning rate and the module's
    `num_layers`."""
    work = tmp_path_factory.mktemp("renamed")
    data_root = write_digits_examples(str(work / "data"), limit=240, image_key="pixels", label_key="digit",
                                      label_names=True)
    hyperparameters = work / "best_hyperparameters.txt"
    hyperparameters.write_text(json.dumps({"space": [], "values": {"learning_rate": 0.02, "units": 8,
                                                                    "num_layers": 3}}))
    output_dir = str(work / "run")
    result = run_local_runner(
        "--output-dir", output_dir, "--data-root", data_root, "--image-key", "pixels", "--label-key", "digit",
        "--trainer-module", os.path.join(MODULES, "small_cnn.py"), "--head-layers", "digit_head",
        "--hyperparameters", str(hyperparameters), "--train-steps", "30", "--eval-steps", "2", "--epochs", "3",
        "--accuracy-floor", "0.0",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return output_dir, result


def test_renamed_keys_and_a_module_model_serve_string_classes(renamed_images_run):
    output_dir, _ = renamed_images_run
    summary = summarize_latest_run(os.path.join(output_dir, "metadata.sqlite"), PIPELINE_NAME)
    assert summary.model_properties["freeze_check"] == "passed"
    pngs, labels = load_digit_pngs(TARGET_DIGITS, limit=40)
    records = [to_example(png, DIGIT_NAMES[label], "pixels", "digit").SerializeToString() for png, label in
               zip(pngs, labels)]
    served = _serve(_pushed(output_dir), records)
    assert served["probabilities"].shape == (40, 5)
    assert {name.decode() for name in served["classes"]} <= {DIGIT_NAMES[d] for d in TARGET_DIGITS}
    with open(os.path.join(_pushed(output_dir), "assets.extra", "freeze_report.json")) as f:
        report = json.load(f)
    # The module model's base (conv_1 to conv_3) is frozen by the default policy; only its own head trains.
    assert report["phases"][0]["trainable_variables"] == 2 and report["task"] == "multiclass"


def test_hyperparameters_override_the_learning_rate_visibly(renamed_images_run):
    output_dir, result = renamed_images_run
    summary = summarize_latest_run(os.path.join(output_dir, "metadata.sqlite"), PIPELINE_NAME)
    assert dict(summary.model_properties["hyperparameters"].items()) == {"learning_rate": 0.02, "units": 8,
                                                                         "num_layers": 3}
    with open(os.path.join(_pushed(output_dir), "assets.extra", "freeze_report.json")) as f:
        report = json.load(f)
    assert report["phases"][0]["learning_rate"] == 0.02
    # The module's build_model received the model's own hyperparameters: three convolutions, not its two.
    assert report["phases"][0]["frozen_variables"] == 6
    assert 'Hyperparameters override the trainer parameters: {"learning_rate": 0.02' in result.stdout


def _file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _provenance(output_dir: str) -> tuple[dict, dict]:
    """The pushed freeze report's and the Model artifact's source fields."""
    summary = summarize_latest_run(os.path.join(output_dir, "metadata.sqlite"), PIPELINE_NAME)
    with open(os.path.join(_pushed(output_dir), "assets.extra", "freeze_report.json")) as f:
        report = json.load(f)
    fields = ("model_source", "base_name", "backbone", "backbone_weights", "backbone_weights_sha256", "module_file",
              "module_file_sha256")
    return ({key: report[key] for key in fields if key in report},
            {key: summary.model_properties[key] for key in fields if key in summary.model_properties})


def test_a_build_model_run_names_its_module_and_base_not_a_backbone(renamed_images_run):
    report, properties = _provenance(renamed_images_run[0])
    module = os.path.join(MODULES, "small_cnn.py")
    assert report == {"model_source": "module_file", "module_file": "small_cnn.py",
                      "module_file_sha256": _file_sha256(module), "base_name": "small_cnn"}
    assert properties == report


def test_a_keras_file_run_names_the_file_and_its_base(tabular_run):
    output_dir, *_, random_base_path = tabular_run
    report, properties = _provenance(output_dir)
    base_path = os.path.join(os.path.dirname(random_base_path), "mlp_base.keras")
    assert report == {"model_source": "model_file", "backbone": "custom", "backbone_weights": "mlp_base.keras",
                      "backbone_weights_sha256": _file_sha256(base_path), "base_name": "mlp_base"}
    assert properties == report


def test_train_and_eval_steps_mean_what_they_mean_for_the_stock_trainer(renamed_images_run):
    output_dir, _ = renamed_images_run
    with open(os.path.join(_pushed(output_dir), "assets.extra", "freeze_report.json")) as f:
        report = json.load(f)
    assert report["phases"][0]["epochs"] == 3
    assert report["steps_per_epoch"] == 10  # train_args.num_steps 30 over 3 epochs


def test_a_missing_key_fails_before_training_in_one_line_naming_it():
    from freeze_trainer.tfx.data_contract import resolve_contract
    from freeze_trainer.tfx.trainer_config import ConfigError, TrainerConfig

    spec = {"pixels_xf": tf.io.FixedLenFeature([32, 32, 3], tf.float32), "digit_xf": tf.io.FixedLenFeature([], tf.int64)}
    config = TrainerConfig.from_parameters(feature_key="pixels", label_key="label")
    with pytest.raises(ConfigError) as raised:
        resolve_contract(config, spec, "Transform output", lambda name: None, lambda key: None, lambda: 5, True)
    assert str(raised.value) == ("label_key: no feature 'label_xf' in the Transform output; its features are "
                                 "digit_xf, pixels_xf")
    ok = resolve_contract(config.model_copy(update={"label_key": "digit"}), spec, "Transform output",
                          lambda name: None, lambda key: None, lambda: 5, True)
    assert (ok.feature_key, ok.label_key, ok.task.name, ok.num_classes) == ("pixels_xf", "digit_xf", "multiclass", 5)


@pytest.mark.parametrize("task_name", ["regression", "multi_label"])
@pytest.mark.parametrize("loop", ["fit", "gradient_tape"])
def test_regression_and_multi_label_heads_train_with_the_proof_in_both_loops(task_name, loop):
    tf.keras.utils.set_random_seed(0)
    task = Task(task_name)
    features = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
    targets = (features[:, :3] > 0).astype("float32") if task_name == "multi_label" else features[:, :1] * 2.0
    base = tf.keras.Sequential([tf.keras.Input((6,)), tf.keras.layers.Dense(8, activation="relu", name="enc_1")])
    model = build_classifier(base, None, 3, bn_inference_mode=True, dropout=0.0, input_name="features", task=task)
    assert model.output_shape == (None, task.units(3))
    policy = parse_policy(json.dumps({"version": 1, "phases": [
        {"name": "head", "epochs": 3, "rules": [{"freeze": {"base": True}}]},
        {"name": "all", "epochs": 3, "rules": [{"unfreeze": {"base": True}}]}]}))
    data = tf.data.Dataset.from_tensor_slices((features, targets)).batch(16)
    before = float(tf.reduce_mean(task.loss()(targets, model(features))))
    checks, metrics = train_with_proof(model, plan_policy(policy, model, 0.02, 3), data, data, loop=loop,
                                       verbose=0, task=task)
    assert [check.passed for check in checks] == [True, True]
    assert checks[0].trainable_variables == 2 and checks[1].trainable_variables == 4
    assert metrics["val_loss"] < before
    assert ("val_mse" if task_name == "regression" else "val_accuracy") in metrics


@pytest.mark.parametrize("task_name, metric, bound", [("multiclass", "SparseCategoricalAccuracy", "lower_bound"),
                                                       ("binary", "AUC", "lower_bound"),
                                                       ("multi_label", "BinaryAccuracy", "lower_bound"),
                                                       ("regression", "MeanSquaredError", "upper_bound")])
def test_the_evaluator_gate_follows_the_task(task_name, metric, bound):
    from pipelines.freeze_pipeline import eval_config

    config = eval_config(task_name, "label_xf", 0.7, 0.05)
    gate = config.metrics_specs[0].metrics[0]
    assert gate.class_name == metric
    assert gate.threshold.value_threshold.HasField(bound)
    assert config.model_specs[0].label_key == "label_xf"
    assert config.model_specs[0].prediction_key == ("predictions" if task_name == "regression" else "probabilities")
