"""Bad inputs and leftovers (issue #12): a bad data folder fails in one line before any component runs,
the served model bounds what it is sent, and a run leaves no temporary packages, no checkpoints and no
local paths behind."""

import glob
import gzip
import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from freeze_trainer.tfx.image_transform import MAX_IMAGE_SIDE, decode_images, image_dimensions
from freeze_trainer.tfx.run_fn import weights_record
from freeze_trainer.tfx.serving_export import FREEZE_REPORT_ASSET, read_extra_asset
from freeze_trainer.tfx.trainer_config import TrainerConfig
from pipelines.data_checks import DataRootError, check_data_root
from pipelines.digits_data import TARGET_DIGITS, load_digit_pngs, to_example, write_digits_examples
from pipelines.freeze_pipeline import create_pipeline
from pipelines.pretrain_backbone import DEFAULT_BACKBONE_PATH
from tests.conftest import REPO_ROOT, run_local_runner

BUNDLED = TrainerConfig()


def _write(folder, records, name="data.tfrecord"):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    return path


def _digits(count=40, **keys):
    pngs, labels = load_digit_pngs(TARGET_DIGITS, count)
    return [to_example(png, int(label), **keys).SerializeToString() for png, label in zip(pngs, labels)]


def _example(**features):
    def feature(value):
        if isinstance(value, bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    return tf.train.Example(features=tf.train.Features(feature={k: feature(v) for k, v in features.items()}))


def _png(height, width):
    return tf.io.encode_png(tf.zeros([height, width, 1], tf.uint8)).numpy()


def _problem(data_root, config=BUNDLED, bundled_transform=True, **kwargs) -> str:
    with pytest.raises(DataRootError) as caught:
        check_data_root(str(data_root), config, bundled_transform, **kwargs)
    message = caught.value.format_message()
    assert "\n" not in message
    return message


# 1. The data root, checked before any component runs.

def test_good_data_passes_quickly(tmp_path):
    data_root = write_digits_examples(str(tmp_path / "data"))  # 900 examples
    started = time.monotonic()
    check_data_root(data_root, BUNDLED, bundled_transform=True)
    assert time.monotonic() - started < 10


def test_a_missing_or_empty_folder(tmp_path):
    assert _problem(tmp_path / "nowhere") == f"data_root: {tmp_path / 'nowhere'}: no such folder"
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert "holds no files (only folders" in _problem(tmp_path / "empty")


def test_a_truncated_file_names_the_file_wherever_it_was_cut(tmp_path):
    path = _write(tmp_path / "data", _digits(300))
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 10)  # far beyond the records the check parses
    message = _problem(tmp_path / "data", max_records=5)
    assert message.startswith(f"data_root: {path}: truncated: record 299")


def test_a_byte_flipped_record_names_the_file(tmp_path):
    path = _write(tmp_path / "data", _digits(5))
    data = bytearray(open(path, "rb").read())
    data[40] ^= 0xFF  # inside the first record's data: its checksum no longer matches
    open(path, "wb").write(bytes(data))
    message = _problem(tmp_path / "data")
    assert message.startswith(f"data_root: {path}: not a readable TFRecord file (corrupted record")


def test_files_that_are_not_tfrecords_of_examples(tmp_path):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "data.csv").write_text("image,label\n1,2\n" * 50)
    assert "data.csv: not a TFRecord file" in _problem(tmp_path / "csv")
    _write(tmp_path / "protos", [b"\xff\xff\xff"])
    assert "data.tfrecord: record 0 is not a serialized tf.Example" in _problem(tmp_path / "protos")
    data = write_digits_examples(str(tmp_path / "hidden"), limit=20)
    (tmp_path / "hidden" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" * 20)  # Beam reads hidden files too
    assert ".DS_Store: not a TFRecord file" in _problem(data)


def test_gzipped_tfrecords_are_read_as_beam_reads_them(tmp_path):
    path = _write(tmp_path / "data", _digits(20))
    with open(path, "rb") as f, gzip.open(path + ".gz", "wb") as out:
        out.write(f.read())
    os.remove(path)
    check_data_root(str(tmp_path / "data"), BUNDLED, bundled_transform=True)


def test_a_missing_key_names_it_and_the_features_there_are(tmp_path):
    _write(tmp_path / "data", _digits(10, image_key="pixels"))
    message = _problem(tmp_path / "data")
    assert message.endswith("record 0 has no feature 'image' (the feature_key (--image-key) parameter); "
                            "its features are: label, pixels")
    _write(tmp_path / "data2", _digits(3) + [_example(image=_png(8, 8)).SerializeToString()])
    assert "record 3 has no feature 'label' (the label_key parameter); its features are: image" in _problem(
        tmp_path / "data2")


def test_images_that_do_not_decode_or_are_too_large(tmp_path):
    _write(tmp_path / "text", _digits(3) + [_example(image=b"not an image", label=5).SerializeToString()])
    assert "record 3: feature 'image' is not an image TensorFlow decodes" in _problem(tmp_path / "text")
    wide = _example(image=_png(8, MAX_IMAGE_SIDE + 1), label=6).SerializeToString()
    _write(tmp_path / "wide", _digits(3) + [wide])
    assert f"record 3: feature 'image' is an image of 8 x {MAX_IMAGE_SIDE + 1} pixels" in _problem(tmp_path / "wide")
    huge = _example(image=_png(10_000, 10_000), label=6).SerializeToString()  # 97 KB; 1.2 GB decoded as floats
    _write(tmp_path / "huge", [huge] + _digits(3))
    started = time.monotonic()
    assert "record 0: feature 'image' is an image of 10000 x 10000 pixels" in _problem(tmp_path / "huge")
    assert time.monotonic() - started < 3  # read from the header, never decoded


def test_one_label_value_is_refused_but_a_second_one_beyond_the_sample_is_found(tmp_path):
    png = _png(8, 8)
    _write(tmp_path / "one", [_example(image=png, label=5).SerializeToString()] * 30)
    assert _problem(tmp_path / "one").endswith(
        "every example's label 'label' is 5; training needs at least two label values")
    _write(tmp_path / "sorted", [_example(image=png, label=5).SerializeToString()] * 30
           + [_example(image=png, label=6).SerializeToString()])
    check_data_root(str(tmp_path / "sorted"), BUNDLED, bundled_transform=True, max_records=10)


def test_integer_labels_are_class_indices_for_a_transform_of_your_own(tmp_path):
    records = [_example(f_00=b"x", label=label).SerializeToString() for label in (0, 1, -1)]
    _write(tmp_path / "data", records)
    config = TrainerConfig(transformed_feature_key="features_xf")
    assert "record 2: label 'label' is -1; with a Transform module of your own" in _problem(
        tmp_path / "data", config, bundled_transform=False)
    _write(tmp_path / "binary", [_example(f_00=b"x", label=label).SerializeToString() for label in (0, 1, 2)])
    assert "label 'label' is 2" in _problem(tmp_path / "binary", TrainerConfig(task="binary"), bundled_transform=False)
    # The bundled Transform indexes labels through a vocabulary: any integers are labels.
    _write(tmp_path / "images", [_example(image=_png(8, 8), label=label).SerializeToString() for label in (-1, 7)])
    check_data_root(str(tmp_path / "images"), BUNDLED, bundled_transform=True)


def test_the_local_runner_refuses_bad_data_in_one_line_and_writes_nothing(tmp_path):
    path = _write(tmp_path / "data", _digits(50))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 3)
    output_dir = tmp_path / "out"
    result = run_local_runner("--output-dir", str(output_dir), "--data-root", str(tmp_path / "data"), timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith(f"Error: data_root: {path}: truncated: record 49 "), errors
    assert "Traceback" not in result.stderr
    assert not output_dir.exists()  # no pipeline root, no metadata.sqlite, no lock file


# 2. Serving bounds (the served model itself is checked on a real run below).

def test_image_dimensions_come_from_the_header_of_each_format():
    image = tf.zeros([5, 7, 3], tf.uint8)
    assert image_dimensions(tf.io.encode_png(image)).numpy().tolist() == [5, 7]
    assert image_dimensions(tf.io.encode_jpeg(image)).numpy().tolist() == [5, 7]
    gif = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")
    assert image_dimensions(tf.constant(gif)).numpy().tolist() == [1, 1]
    assert image_dimensions(tf.constant(b"junk")).numpy().tolist() == [0, 0]


def test_a_small_file_of_a_huge_image_fails_before_it_is_decoded():
    huge = _png(10_000, 10_000)  # ~100 KB of PNG, 300 MB as RGB bytes, 1.2 GB as floats
    assert len(huge) < 200_000
    started = time.monotonic()
    with pytest.raises(tf.errors.InvalidArgumentError, match="image of 10000 x 10000 pixels .* is larger than"):
        decode_images(tf.constant([huge]), 32)
    assert time.monotonic() - started < 2
    assert decode_images(tf.constant([], tf.string), 32).shape == (0, 32, 32, 3)


# 3. Temporary files: local runs pass no Beam args.

def test_local_pipelines_pass_no_beam_args_and_explicit_ones_are_kept(tmp_path):
    def beam_args(**kwargs):
        return list(create_pipeline("p", str(tmp_path), str(tmp_path), str(tmp_path), **kwargs).beam_pipeline_args)

    assert beam_args() == []
    assert beam_args(beam_pipeline_args=["--direct_num_workers=2"]) == ["--direct_num_workers=2"]


# 4. Local paths.

def test_a_local_weights_file_is_recorded_by_name_and_digest_a_uri_as_is(tmp_path):
    digest = hashlib.sha256(open(DEFAULT_BACKBONE_PATH, "rb").read()).hexdigest()
    assert weights_record(DEFAULT_BACKBONE_PATH) == {"backbone_weights": os.path.basename(DEFAULT_BACKBONE_PATH),
                                                     "backbone_weights_sha256": digest}
    assert weights_record("gs://bucket/base.keras") == {"backbone_weights": "gs://bucket/base.keras"}
    assert weights_record("imagenet") == {"backbone_weights": "imagenet"}


# One real run on tiny data, with its own temp dir: what it leaves behind, and what its model serves.

def _ephemeral_packages(folder) -> list[str]:
    """What TFX's dependency packaging writes under the temp dir (tfx.utils.dependency_utils and
    tfx.components.util.udf_utils): `tmp*/build/tfx/...` with a `tfx_ephemeral-*.tar.gz`, wheels."""
    found = []
    for pattern in ("**/tfx_ephemeral*", "**/*.tar.gz", "**/*.whl", "**/build/tfx", "tfx_*"):
        found += glob.glob(os.path.join(folder, pattern), recursive=True)
    return sorted(set(found))


def _size(folder) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("tiny_run")
    temp_dir = work / "tmp"
    temp_dir.mkdir()
    output_dir = str(work / "out")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "local_runner.py"), "--output-dir", output_dir, "--sample", "80",
         "--epochs", "2", "--checkpoint-every-steps", "1", "--accuracy-floor", "0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "TMPDIR": str(temp_dir)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    print(f"tiny run: {time.monotonic() - started:.0f} s, temp dir after it: {_size(temp_dir)} bytes")
    [pushed] = glob.glob(os.path.join(output_dir, "serving", "*"))
    return output_dir, str(temp_dir), pushed, result


def test_a_local_run_leaves_no_ephemeral_packages_in_the_temp_dir(tiny_run):
    _, temp_dir, _, _ = tiny_run
    assert _ephemeral_packages(temp_dir) == []
    assert _size(temp_dir) < 1 << 20  # with Beam args: ~42 MB for each of the 4 Beam components


def test_checkpoints_are_deleted_after_the_export(tiny_run):
    output_dir, _, _, result = tiny_run
    [model_run] = glob.glob(os.path.join(output_dir, "pipeline_root", "FreezeTrainer", "model_run", "*"))
    assert os.listdir(model_run)  # TensorBoard logs stay
    assert not os.path.exists(os.path.join(model_run, "checkpoints"))


def test_the_pushed_report_names_the_weights_file_not_its_path(tiny_run):
    _, _, pushed, _ = tiny_run
    report = read_extra_asset(pushed, FREEZE_REPORT_ASSET)
    assert report["backbone_weights"] == os.path.basename(DEFAULT_BACKBONE_PATH)
    assert report["backbone_weights_sha256"] == hashlib.sha256(open(DEFAULT_BACKBONE_PATH, "rb").read()).hexdigest()
    assert REPO_ROOT not in json.dumps(report)


@pytest.fixture(scope="module")
def serving(tiny_run):
    return tf.saved_model.load(tiny_run[2]).signatures["serving_default"]


def test_an_empty_batch_gets_empty_outputs(serving):
    outputs = serving(examples=tf.constant([], tf.string))
    assert outputs["probabilities"].shape == (0, len(TARGET_DIGITS))
    assert outputs["class_ids"].shape == (0,) and outputs["classes"].shape == (0,)
    assert serving(examples=tf.constant(_digits(3)))["probabilities"].shape == (3, len(TARGET_DIGITS))


def test_a_malformed_example_gets_a_clear_invalid_argument_error(serving):
    batch = tf.constant([_digits(1)[0], b"\xff\xfe\x80 not a proto \x00\xff"])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"examples\[1\] does not parse as a serialized "
                                                             r"tf.Example holding the features the model reads"):
        serving(examples=batch)


def test_a_huge_image_is_refused_by_the_served_model(serving):
    huge = _example(image=_png(10_000, 10_000), label=5).SerializeToString()
    started = time.monotonic()
    with pytest.raises(tf.errors.InvalidArgumentError, match="larger than the bundled image Transform decodes"):
        serving(examples=tf.constant([huge]))
    assert time.monotonic() - started < 5


def test_a_weights_file_that_does_not_fit_fails_at_start_up_in_one_line(tmp_path):
    from freeze_trainer.keras.models.backbones import BackboneError
    from freeze_trainer.tfx.trainer_config import TrainerConfig
    from freeze_trainer.tfx.trainer_model import plan_for_config

    random_bytes = tmp_path / "weights.h5"
    random_bytes.write_bytes(os.urandom(2048))
    for weights, reason in ((str(random_bytes), "not weights of this MobileNetV2"),
                            (str(tmp_path / "missing.h5"), "does not exist")):
        config = TrainerConfig.from_parameters(backbone_weights=weights, backbone_alpha=0.35)
        with pytest.raises(BackboneError, match=f"^backbone_weights: .*{reason}"):
            plan_for_config(config, (32, 32, 3))


def test_the_bundled_transform_builds_the_label_vocabulary_over_both_splits():
    from pipelines.freeze_pipeline import create_pipeline
    from pipelines.pipeline_options import PipelineOptions

    pipeline = create_pipeline("p", "/tmp/never-written", "/tmp/data", "/tmp/serving", PipelineOptions(image_size=32))
    (transform,) = [node for node in pipeline.components if node.id == "Transform"]
    splits = json.loads(transform.exec_properties["splits_config"])
    assert splits == {"analyze": ["train", "eval"], "transform": ["train", "eval"]}
