"""Issue #20, items 4 and 6: a wrong input is refused in one line naming its key or file, with exit status 2,
before any component runs and before anything is written to the output folder; the task is checked against
the labels before training."""

import os
import subprocess
import sys

import click
import pytest
import tensorflow as tf
from click.testing import CliRunner

from freeze_trainer.tfx.data_contract import resolve_contract
from freeze_trainer.tfx.trainer_config import ConfigError, TrainerConfig
from pipelines.data_checks import check_data_root
from pipelines.demo_backbone import DEFAULT_BACKBONE_PATH
from pipelines.digits_data import TARGET_DIGITS, load_digit_pngs, to_example, write_digits_examples
from tests.conftest import REPO_ROOT, run_local_runner


def _labelled(folder, label_of) -> str:
    """Digits 5-9 whose labels are `label_of(index, digit)`."""
    os.makedirs(folder)
    pngs, labels = load_digit_pngs(TARGET_DIGITS, 30)
    with tf.io.TFRecordWriter(os.path.join(folder, "data.tfrecord")) as writer:
        for index, (png, label) in enumerate(zip(pngs, labels)):
            writer.write(to_example(png, label_of(index, int(label))).SerializeToString())
    return str(folder)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every bad input the runner cases name, made once."""
    root = tmp_path_factory.mktemp("inputs")
    files = {
        "not_json": "not json", "nan": '{"learning_rate": NaN}', "huge": '{"values": {"learning_rate": 1e999}}',
        "text": "hello world\n", "exits": "import sys\nsys.exit(0)\n", "raises": "raise RuntimeError('no GPU')\n",
        "no_hooks": "VALUE = 42\n", "returns_42": "def build_model(config, contract):\n    return 42\n", "file": "",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    base = tf.keras.Input((32, 32, 3), name="image_xf")
    pooled = tf.keras.layers.GlobalAveragePooling2D(name="pool")(tf.keras.layers.Conv2D(4, 3, name="conv")(base))
    tf.keras.Model(base, [pooled, tf.keras.layers.Dense(2, name="aux")(pooled)]).save(str(root / "two_outputs.keras"))
    other = tf.keras.Input((32, 32, 3), name="other_image")
    joined = tf.keras.layers.Concatenate()([tf.keras.layers.GlobalAveragePooling2D()(tensor) for tensor in (base, other)])
    tf.keras.Model([base, other], joined).save(str(root / "two_inputs.keras"))
    layers = tf.keras.models.load_model(DEFAULT_BACKBONE_PATH, compile=False).layers
    return {"root": str(root), "every_layer": ",".join(layer.name for layer in layers),
            "names": write_digits_examples(str(root / "names"), limit=30, label_names=True)}


# (case, runner arguments with {root} for the inputs folder, what the one error line names)
RUNNER_CASES = [
    ("hyperparameters not JSON", ["--hyperparameters", "{root}/not_json"], "hyperparameters: {root}/not_json is not JSON"),
    ("hyperparameters NaN", ["--hyperparameters", "{root}/nan"], "NaN is not a finite number"),
    ("hyperparameters 1e999", ["--hyperparameters", "{root}/huge"], "1e999 is not a finite number"),
    ("hyperparameters missing", ["--hyperparameters", "{root}/nowhere.json"], "'--hyperparameters'"),
    ("task binary on 5 classes", ["--task", "binary"], "task: binary needs two classes; label 'label' in the "
                                                       "embedded digits has 5"),
    ("task regression on class indices", ["--task", "regression"], "task: regression needs numeric labels"),
    ("task multi_label on scalars", ["--task", "multi_label"], "task: multi_label needs a vector"),
    ("task regression on strings", ["--task", "regression", "--data-root", "{root}/names"],
     "task: regression needs numeric labels"),
    ("accuracy floor NaN", ["--accuracy-floor", "nan"], "--accuracy-floor"),
    ("accuracy floor inf", ["--accuracy-floor", "inf"], "--accuracy-floor"),
    ("label vocabulary a path", ["--label-vocabulary", "../../etc/passwd"], "label_vocabulary: '../../etc/passwd' is "
                                                                           "a path"),
    ("sample 0", ["--sample", "0"], "'--sample'"),
    ("empty image key", ["--image-key", ""], "feature_key: empty"),
    ("empty label key", ["--label-key", " "], "label_key: empty"),
    ("head layers naming every layer", ["--head-layers", "{every_layer}"], "head_layers: names every layer of model "
                                                                           "'mobilenetv2_0.35_32'"),
    ("two-output base", ["--backbone", "custom", "--backbone-weights", "{root}/two_outputs.keras"],
     "backbone_weights: {root}/two_outputs.keras: the model has 2 outputs (pool, aux); a base has one"),
    ("two-input base, one input without a feature", ["--backbone", "custom", "--backbone-weights",
                                                     "{root}/two_inputs.keras"],
     "backbone_weights: the model's 2 inputs read the Transform output's features of their names: no feature "
     "'other_image'"),
    ("trainer module /dev/null", ["--trainer-module", "/dev/null"], "trainer_module: /dev/null defines neither"),
    ("trainer module a text file", ["--trainer-module", "{root}/text"], "trainer_module: {root}/text fails at "
                                                                        "import: SyntaxError"),
    ("trainer module exits", ["--trainer-module", "{root}/exits"], "trainer_module: {root}/exits exits at import "
                                                                   "(sys.exit(0))"),
    ("trainer module raises", ["--trainer-module", "{root}/raises"], "RuntimeError: no GPU"),
    ("trainer module's build_model returns 42", ["--trainer-module", "{root}/returns_42"],
     "trainer_module: build_model returned int 42, not a Keras model"),
    ("trainer module without hooks", ["--trainer-module", "{root}/no_hooks"], "defines neither"),
    ("freeze policy missing", ["--freeze-policy", "{root}/nowhere.yaml"], "{root}/nowhere.yaml does not exist"),
    ("freeze policy a folder", ["--freeze-policy", "{root}"], "{root} is a directory"),
    ("freeze policy /dev/null", ["--freeze-policy", "/dev/null"], "/dev/null is not a regular file"),
    ("output folder a file", ["--output-dir", "{root}/file"], "output_dir: {root}/file: is a file, not a folder"),
]


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stdout + result.stderr
    return errors[0]


@pytest.mark.parametrize("arguments, names", [case[1:] for case in RUNNER_CASES], ids=[case[0] for case in RUNNER_CASES])
def test_the_local_runner_refuses_in_one_line_before_any_component(inputs, tmp_path, arguments, names):
    output_dir = tmp_path / "out"
    arguments = [argument.format(**inputs) for argument in arguments]
    if "--output-dir" not in arguments:
        arguments = ["--output-dir", str(output_dir), *arguments]
    small = [] if "--sample" in arguments else ["--sample", "60"]
    result = run_local_runner(*arguments, *small, "--epochs", "1", timeout=300)
    assert names.format(**inputs) in _one_error_line(result)
    assert "ImportExampleGen" not in result.stdout  # no component started
    assert not output_dir.exists()  # nothing written
    assert os.path.getsize(os.path.join(inputs["root"], "file")) == 0


@pytest.mark.parametrize("label_of, names", [
    (lambda index, digit: "" if index == 3 else str(digit), "record 3: label 'label' is an empty string"),
    (lambda index, digit: "five\nsix" if index == 4 else str(digit), "record 4: label 'label' is b'five\\nsix', a "
                                                                     "line break in a class name"),
    (lambda index, digit: " " if index == 5 else str(digit), "record 5: label 'label' is only white space"),
], ids=["empty", "newline", "white space"])
def test_labels_a_vocabulary_cannot_hold_are_named(tmp_path, label_of, names):
    data_root = _labelled(tmp_path / "data", label_of)
    with pytest.raises(click.UsageError) as raised:
        check_data_root(data_root, TrainerConfig(), bundled_transform=True)
    assert names in raised.value.format_message() and "\n" not in raised.value.format_message()


@pytest.mark.parametrize("task, bundled, names", [
    ("binary", True, "task: binary needs two classes; label 'label' in {root} has 5 in the examples read ('eight', "
                     "'five', 'nine', 'seven', 'six')"),
    ("regression", True, "task: regression needs numeric labels; label 'label' in {root}: the bundled image "
                         "Transform makes class indices of every label"),
    ("regression", False, "task: regression needs numeric labels; label 'label' in {root}: strings"),
    ("multi_label", True, "task: multi_label needs a vector of 0/1 a class in every label; the bundled image "
                          "Transform takes one value an example (label 'label' in {root})"),
])
def test_the_data_root_check_refuses_a_task_the_labels_do_not_fit(inputs, task, bundled, names):
    with pytest.raises(click.UsageError) as raised:
        check_data_root(inputs["names"], TrainerConfig(task=task), bundled_transform=bundled)
    assert raised.value.format_message() == names.format(root=inputs["names"])


def test_tasks_the_labels_fit_pass(inputs):
    check_data_root(inputs["names"], TrainerConfig(task="multiclass"), bundled_transform=True)
    # A Transform of the user's own may make numbers or vectors of the labels: not judged from the raw data.
    check_data_root(inputs["names"], TrainerConfig(task="multi_label"), bundled_transform=False)


SPEC = {"image_xf": tf.io.FixedLenFeature([32, 32, 3], tf.float32), "label_xf": tf.io.FixedLenFeature([], tf.int64)}


@pytest.mark.parametrize("task, vocabulary, message", [
    ("regression", ["cat", "dog"], "task: regression needs numeric labels; label 'label_xf' holds class indices of the "
                                   "vocabulary 'label'"),
    ("multi_label", None, "task: multi_label needs a vector of 0/1 a class in every label; label 'label_xf' holds one "
                          "value an example"),
    ("binary", None, "task: binary needs two classes; label 'label_xf' has 5"),
])
def test_the_trainer_refuses_a_task_the_labels_do_not_fit_before_training(task, vocabulary, message):
    config = TrainerConfig.from_parameters(task=task)
    with pytest.raises(ConfigError) as raised:
        resolve_contract(config, SPEC, "Transform output", lambda name: vocabulary, lambda key: None, lambda: 5, True)
    assert str(raised.value) == message
    # Integer labels without a vocabulary are numbers: regression takes them.
    if task == "regression":
        contract = resolve_contract(config, SPEC, "Transform output", lambda name: None, lambda key: None, lambda: 5, True)
        assert contract.task.name == "regression"


def test_compile_refuses_an_output_that_is_neither_json_nor_yaml(tmp_path):
    from kubeflow import compile_pipeline as compile_cli

    result = CliRunner().invoke(compile_cli.main, [
        "--output", str(tmp_path / "p.txt"), "--image", "example/image:1", "--pipeline-root", "gs://b/root",
        "--serving-dir", "gs://b/serving", "--data-root", "gs://b/data"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: Invalid value for '--output': {tmp_path / 'p.txt'}: .json (Vertex PipelineJob) or "
                      ".yaml (KFP PipelineSpec)"]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command, name, text, names", [
    ("run", "missing.json", None, "template: {path}: No such file or directory"),
    ("run", "broken.json", "{", "template: {path} is not JSON"),
    ("schedule", "other.yaml", "a: 1\n", "template: {path} is no compiled pipeline"),
])
def test_run_and_schedule_refuse_a_template_that_is_no_pipeline(tmp_path, command, name, text, names):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    arguments = ["vertex", "--template", str(path), "--project", "p", "--dry-run"]
    if command == "schedule":
        arguments += ["--cron", "0 3 * * *"]
    result = subprocess.run([sys.executable, "-m", f"kubeflow.{command}", *arguments], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and names.format(path=path) in errors[0], result.stderr


def test_a_template_that_is_no_pipeline_is_refused_before_any_parameter_is_read(tmp_path):
    from kubeflow.submission import Refused, read_pipeline_spec

    for name, text in {"list.yaml": "- 1\n", "root.json": '{"root": []}', "bytes.json": "\udcff"}.items():
        (tmp_path / name).write_text(text, errors="surrogateescape")
        with pytest.raises(Refused, match=f"^template: {tmp_path / name} is"):
            read_pipeline_spec(str(tmp_path / name))
