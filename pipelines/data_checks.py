"""Checks the local runner's `--data-root` before any pipeline component runs.

A bad data folder otherwise surfaces minutes later as a long ImportExampleGen, Transform or trainer
traceback, after the output folder has a pipeline root and an ML Metadata store. These checks fail in
one line, `data_root: <file>: <reason>` (a click usage error, exit status 2), before anything is written:

- the folder exists and holds files (ImportExampleGen reads every file directly in it, hidden ones too);
- every file is TFRecords (`.gz` ones gzipped, as Beam reads them): its first records read with their
  checksums (`tf.data.TFRecordDataset`), and its record framing is walked to the end, so a truncated
  file is caught wherever it was cut;
- those records parse as tf.Examples holding the label key and, for the bundled image Transform, the
  feature key, each with one value (else: the key, and the features there are);
- for the bundled image Transform, the images decode and are at most MAX_IMAGE_SIDE pixels a side;
- there are at least two label values (read further, label only, when the sample holds one);
- with a Transform module of the user's own and integer labels without a vocabulary, the labels the
  sample holds are class indices: not negative, and 0 or 1 for binary and multi-label tasks.
- string labels are class names a vocabulary file can hold: not empty, no line break;
- the task fits the labels (`check_labels_fit_task`, which the runner also applies to the embedded digits):
  regression needs numbers, multi_label a vector a label, binary two classes.

It reads at most `max_records` records in all, but at least the first of every file, so it stays fast,
and returns the raw feature spec those records show (what SchemaGen will infer), from which the Transform's
outputs are known before it runs (pipelines/model_input_checks.py).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

import click
import tensorflow as tf
from google.protobuf.message import DecodeError

from freeze_trainer.tfx.image_transform import MAX_IMAGE_SIDE, image_dimensions
from freeze_trainer.tfx.trainer_config import TrainerConfig

MAX_RECORDS = 2000  # records parsed in all (but at least one a file)
MAX_DECODED_IMAGES = 200  # of them, images decoded in full; the others' headers are read
MAX_FRAMING_RECORDS = 200_000  # record headers walked a file, looking for a truncated end
# Beam reads these by suffix (apache_beam.io.filesystem.CompressionTypes); tf.data reads only gzip of them.
GZIP_SUFFIXES = (".gz",)
OTHER_COMPRESSED_SUFFIXES = (".bz2", ".deflate", ".zst", ".zstd", ".xz", ".lzma")
IMAGE_FORMATS = "PNG, JPEG, GIF or BMP"


class DataRootError(click.UsageError):
    def __init__(self, where: str, reason: str):
        super().__init__(f"data_root: {where}: {reason}")


def _listed_files(data_root: str) -> list[str]:
    if not tf.io.gfile.exists(data_root):
        raise DataRootError(data_root, "no such folder")
    if not tf.io.gfile.isdir(data_root):
        raise DataRootError(data_root, "is a file; ImportExampleGen reads the TFRecord files in a folder")
    paths = [tf.io.gfile.join(data_root, name.rstrip("/")) for name in sorted(tf.io.gfile.listdir(data_root))]
    files = [path for path in paths if not tf.io.gfile.isdir(path)]
    if not files:
        raise DataRootError(data_root, "holds no files" + (" (only folders, which ImportExampleGen does not read)"
                                                           if paths else ""))
    return files


def _framing_error(path: str) -> str | None:
    """Why an uncompressed TFRecord file is cut short or not TFRecords at all, from its record headers
    (8-byte length, 4-byte checksum, data, 4-byte checksum); None when it ends where a record ends."""
    size = tf.io.gfile.stat(path).length
    position = records = 0
    with tf.io.gfile.GFile(path, "rb") as f:
        while position < size and records < MAX_FRAMING_RECORDS:
            f.seek(position)
            header = f.read(12)
            end = position + 12 + (struct.unpack("<Q", header[:8])[0] if len(header) == 12 else size) + 4
            if end > size and records == 0:
                return f"not a TFRecord file: its first record header does not fit in its {size} bytes"
            if end > size:
                return (f"truncated: record {records} (at byte {position}) runs past the end of the file, at byte "
                        f"{size}")
            position, records = end, records + 1
    return None


def _reason(err: tf.errors.OpError) -> str:
    """TensorFlow's message without the op and function names around it."""
    lines = [line for line in err.message.strip().splitlines() if line.strip()]
    reason = re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:.*$", "", lines[0] if lines else "")
    return reason or type(err).__name__


def _read_records(path: str, limit: int) -> list[bytes]:
    compression = "GZIP" if path.lower().endswith(GZIP_SUFFIXES) else ""
    try:
        return [record.numpy() for record in tf.data.TFRecordDataset(path, compression_type=compression).take(limit)]
    except tf.errors.OpError as err:
        raise DataRootError(path, f"not a readable TFRecord file ({_reason(err)}); a damaged or truncated file, or not "
                                  "TFRecords") from None


def _values(feature: tf.train.Feature) -> tuple[str | None, list]:
    kind = feature.WhichOneof("kind")
    return kind, list(getattr(feature, kind).value) if kind else []


def _label_values(path: str, records, label_key: str, kind: str):
    """Label values of the examples of one file, read in batches (for the two-values check)."""
    dtype = {"bytes_list": tf.string, "float_list": tf.float32, "int64_list": tf.int64}[kind]
    compression = "GZIP" if path.lower().endswith(GZIP_SUFFIXES) else ""
    dataset = tf.data.TFRecordDataset(path, compression_type=compression).skip(records).batch(1024)
    try:
        for batch in dataset:
            parsed = tf.io.parse_example(batch, {label_key: tf.io.VarLenFeature(dtype)})[label_key]
            yield from parsed.values.numpy().tolist()
    except tf.errors.OpError:
        return  # a damaged tail: ImportExampleGen will say so; these checks read what they could


def _raw_feature_spec(seen: dict[str, tuple[str, set[int], int]], records: int) -> dict:
    """The raw feature spec SchemaGen (`infer_feature_shape=True`) infers from these examples: a fixed
    shape for a feature that every example holds with the same number of values, else a VarLenFeature."""
    dtypes = {"bytes_list": tf.string, "float_list": tf.float32, "int64_list": tf.int64}
    return {name: tf.io.FixedLenFeature([next(iter(counts))], dtypes[kind]) if len(counts) == 1 and present == records
            else tf.io.VarLenFeature(dtypes[kind]) for name, (kind, counts, present) in seen.items()}


@dataclass
class _RecordChecks:
    """What every record must hold, and what the records read so far held."""

    config: TrainerConfig
    bundled_transform: bool
    required: dict[str, str]  # key -> the parameter that names it
    label_key: str | None
    class_indices: bool
    binary_indices: bool
    labels: set[tuple] = field(default_factory=set)
    label_kind: str | None = None
    seen: dict[str, tuple[str, set[int], int]] = field(default_factory=dict)  # feature -> kind, counts, examples

    @classmethod
    def of(cls, config: TrainerConfig, bundled_transform: bool) -> _RecordChecks:
        required = {}
        if bundled_transform:
            required[config.feature_key] = "feature_key (--image-key)"
        if bundled_transform or not config.transformed_label_key:  # else the user's Transform makes its own label
            required.setdefault(config.label_key, "label_key")
        return cls(config, bundled_transform, required, config.label_key if config.label_key in required else None,
                   not bundled_transform and not config.label_vocabulary and config.task != "regression",
                   config.task in ("binary", "multi_label"))

    def record(self, path: str, index: int, record: bytes) -> bytes | None:
        """Checks one record; returns its encoded image under the bundled Transform."""
        try:
            example = tf.train.Example.FromString(record)
        except DecodeError:
            raise DataRootError(path, f"record {index} is not a serialized tf.Example") from None
        features = example.features.feature
        for key, feature in features.items():
            kind, values = _values(feature)
            if kind:
                _, counts, present = self.seen.get(key, (kind, set(), 0))
                self.seen[key] = (kind, counts | {len(values)}, present + 1)
        for key, parameter in self.required.items():
            if key not in features:
                raise DataRootError(path, f"record {index} has no feature {key!r} (the {parameter} parameter); "
                                          f"its features are: {', '.join(sorted(features)) or 'none'}")
        image = None
        if self.bundled_transform:
            feature_key = self.config.feature_key
            kind, values = _values(features[feature_key])
            if kind != "bytes_list" or len(values) != 1:
                raise DataRootError(path, f"record {index}: feature {feature_key!r} holds {len(values)} "
                                          f"{kind or 'empty'} value(s); the bundled image Transform takes one "
                                          f"encoded image ({IMAGE_FORMATS}) an example")
            image = values[0]
        if self.label_key is not None:
            self._label(path, index, *_values(features[self.label_key]))
        return image

    def _label(self, path: str, index: int, kind: str | None, values) -> None:
        label_key = self.label_key
        if not values or self.bundled_transform and len(values) != 1:
            raise DataRootError(path, f"record {index}: label {label_key!r} holds {len(values)} values; "
                                      + ("the bundled image Transform takes one an example" if values else
                                         "every example needs its label"))
        if problem := _label_value_problem(kind, values):
            raise DataRootError(path, f"record {index}: label {label_key!r} is {problem}")
        self.label_kind = self.label_kind or kind
        if kind != self.label_kind:
            raise DataRootError(path, f"record {index}: label {label_key!r} is a {kind}, earlier ones a "
                                      f"{self.label_kind}")
        if self.class_indices and kind == "int64_list":
            bad = [value for value in values if value < 0 or self.binary_indices and value > 1]
            if bad:
                expected = "0 or 1" if self.binary_indices else "class indices 0, 1, ... (not negative)"
                raise DataRootError(path, f"record {index}: label {label_key!r} is {bad[0]}; with a Transform "
                                          "module of your own and no label_vocabulary, integer labels are "
                                          f"{expected}")
        self.labels.add(tuple(values))


def check_data_root(data_root: str, config: TrainerConfig, bundled_transform: bool,
                    max_records: int = MAX_RECORDS) -> dict:
    """Raises DataRootError (a click.UsageError) naming the file and the problem; see the module doc.
    `bundled_transform`: the pipeline runs the bundled image Transform (no `--transform-module`). Returns
    the raw feature spec of the records read."""
    files = _listed_files(data_root)
    checks = _RecordChecks.of(config, bundled_transform)
    readable = [path for path in files if not path.lower().endswith(OTHER_COMPRESSED_SUFFIXES)]
    per_file = max(1, max_records // max(1, len(readable)))
    decoded = 0
    sampled: list[tuple[str, int]] = []  # (file, records read) of each file
    for path in readable:
        if not path.lower().endswith(GZIP_SUFFIXES):
            if problem := _framing_error(path):
                raise DataRootError(path, problem)
        records = _read_records(path, per_file)
        sampled.append((path, len(records)))
        images = [(path, index, image) for index, record in enumerate(records)
                  if (image := checks.record(path, index, record)) is not None]
        _check_image_sizes(images, config.feature_key)  # from the headers, before any image is decoded
        for path, index, data in images[:max(0, MAX_DECODED_IMAGES - decoded)]:
            _check_decodes(path, index, config.feature_key, data)
        decoded += len(images)
    if not any(count for _, count in sampled) and sampled:
        raise DataRootError(data_root, "its files hold no examples")
    if checks.label_key is not None and checks.label_kind is not None:
        check_labels_fit_task(config, bundled_transform, checks.label_kind, checks.labels, data_root)
        if len(checks.labels) < 2:
            _check_two_labels(data_root, sampled, checks.label_key, checks.label_kind, checks.labels)
    return _raw_feature_spec(checks.seen, sum(count for _, count in sampled))


def _label_value_problem(kind: str, values: list) -> str | None:
    """Why a string label cannot be a class name: the vocabulary file holds one name a line, so an empty
    name or one with a line break does not come back from it (the example's class index would be -1)."""
    if kind != "bytes_list":
        return None
    for value in values:
        if not value.strip():
            return "an empty string" if not value else f"only white space ({value!r})"
        if b"\n" in value or b"\r" in value:
            return f"{value!r}, a line break in a class name"
    return None


def check_labels_fit_task(config: TrainerConfig, bundled_transform: bool, kind: str, labels: set[tuple],
                          where: str) -> None:
    """The task against the labels read, before training (`labels`: each example's label values; `kind`:
    their tf.train.Feature kind; `where`: the data, for the message): regression needs numbers, multi_label
    a vector a label, binary two classes. Raises a click.UsageError naming `task`. With a Transform of the
    user's own, whose output may differ, only string labels for regression are refused (integer labels
    are checked as class indices above)."""
    label = f"label {config.label_key!r} in {where}"
    if config.task == "regression" and (bundled_transform or kind == "bytes_list"):
        reason = "the bundled image Transform makes class indices of every label" if bundled_transform else "strings"
        raise click.UsageError(f"task: regression needs numeric labels; {label}: {reason}")
    if config.task == "multi_label" and bundled_transform:
        raise click.UsageError(f"task: multi_label needs a vector of 0/1 a class in every label; the bundled image "
                               f"Transform takes one value an example ({label})")
    values = sorted({value for example in labels for value in example})
    if config.task == "binary" and bundled_transform and len(values) > 2:
        shown = ", ".join(repr(v.decode() if isinstance(v, bytes) else v) for v in values[:5])
        raise click.UsageError(f"task: binary needs two classes; {label} has {len(values)} in the examples read "
                               f"({shown}{', ...' if len(values) > 5 else ''})")


def _check_decodes(path: str, index: int, key: str, data: bytes) -> None:
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.OpError as err:
        raise DataRootError(path, f"record {index}: feature {key!r} is not an image TensorFlow decodes "
                                  f"({IMAGE_FORMATS}): {_reason(err)}") from None


@tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
def _dimensions(encoded: tf.Tensor) -> tf.Tensor:
    return tf.map_fn(image_dimensions, encoded, fn_output_signature=tf.TensorSpec([2], tf.int64))


def _check_image_sizes(images: list[tuple[str, int, bytes]], key: str) -> None:
    """Every image at most MAX_IMAGE_SIDE pixels a side, read from its header (the bundled Transform
    refuses larger ones, so a run would fail in Transform)."""
    sizes = [size for start in range(0, len(images), 128)
             for size in _dimensions(tf.constant([data for _, _, data in images[start:start + 128]])).numpy()]
    for (path, index, _), (height, width) in zip(images, sizes):
        if max(height, width) > MAX_IMAGE_SIDE:
            raise DataRootError(path, f"record {index}: feature {key!r} is an image of {height} x {width} pixels "
                                      f"(height x width); the bundled image Transform takes at most {MAX_IMAGE_SIDE} "
                                      "a side")


def _check_two_labels(data_root: str, sampled: list[tuple[str, int]], label_key: str, kind: str,
                      labels: set[tuple]) -> None:
    """The sample holds one label value: the rest of the data is read, label only, for a second one."""
    seen = {value for values in labels for value in values}
    for path, records in sampled:
        for value in _label_values(path, records, label_key, kind):
            seen.add(value)
            if len(seen) > 1 or len(labels) > 1:
                return
    only = next(iter(labels)) if labels else ()
    shown = only[0] if len(only) == 1 else list(only)
    raise DataRootError(data_root, f"every example's label {label_key!r} is {shown!r}; training needs at least "
                                   "two label values")
