"""Runs the freeze-policy pipeline locally: TFX LocalDagRunner, Beam DirectRunner, SQLite ML Metadata.

    python local_runner.py                                  # the embedded demo (make run)
    python local_runner.py --freeze-policy policy.yaml --epochs 3 --output-dir /tmp/run
    python local_runner.py --retrain --freeze-policy kubeflow/policies/retrain_top_block.json   # cron-able

The terminal shows a line as each component starts and ends, a progress bar per training phase and the
summary; TensorFlow's, TFX's and Beam's logs and warnings go to `<output-dir>/logs/<UTC start>.log`, which
the summary names (`--verbose` shows them too).

One run at a time per --output-dir: while one holds `<output-dir>/.run.lock`, another exits at once with
status 75 (EX_TEMPFAIL) and one line naming it (pid, host, start time). A killed run leaves no stale lock.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import errno
import fcntl
import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator

import click

import freeze_trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from freeze_trainer.cli.parameter_options import pop_trainer_parameters, trainer_parameter_options
from freeze_trainer.cli.terminal import TerminalLog, echo_error, quiet_terminal, verbose_option
from freeze_trainer.policy import read_policy_source
from freeze_trainer.tfx.trainer_config import (
    ConfigError, TrainerConfig, config_with_hyperparameters, model_hyperparameters, read_hyperparameters_file,
)
from pipelines.demo_backbone import DEFAULT_BACKBONE_PATH, IMAGE_SIZE, transfer_report_path
from pipelines.model_options import ModelOptions
from pipelines.pipeline_options import PipelineOptions

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
PIPELINE_NAME = "freeze-trainer-demo"
LOCK_FILE = ".run.lock"
EXIT_OUTPUT_DIR_BUSY = 75  # EX_TEMPFAIL: another run holds the output folder; try again later
# The pipeline's options and defaults (PipelineOptions), but for the demo's data: its backbone's image size,
# and a lower accuracy floor than the pipelines' 0.5, since the tiny demo backbone (MobileNetV2 alpha 0.35 at
# 32 px, pretrained on digits 0-4) reaches only about 0.6 on digits 5-9 with its base frozen.
PIPELINE_OPTIONS = ModelOptions(PipelineOptions, defaults={"image_size": IMAGE_SIZE, "accuracy_floor": 0.4})


def lock_output_dir(output_dir: str) -> None:
    """Holds an exclusive flock on `<output_dir>/.run.lock` until this process exits, or exits at once
    with one line naming the run that holds it. The kernel drops the lock when its holder dies, so a
    killed run leaves no stale lock; the file only says who holds it (pid, host, start time)."""
    path = os.path.join(output_dir, LOCK_FILE)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise click.UsageError(f"output_dir: {output_dir}: is a file, not a folder")
    try:
        os.makedirs(output_dir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not truncated: the holder's note stays readable
    except OSError as err:  # a file, a read-only folder: before anything is written or any component runs
        raise click.UsageError(f"output_dir: {output_dir}: {err.strerror or err}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = {}
        for _ in range(20):  # the holder writes its note just after it takes the lock
            try:
                with open(path) as f:
                    holder = json.load(f)
                break
            except (OSError, ValueError):
                time.sleep(0.05)
        os.close(fd)
        echo_error(f"error: output folder {output_dir} is in use by another run (pid {holder.get('pid', '?')} on "
                   f"{holder.get('host', '?')}, started {holder.get('started', '?')}); not started")
        sys.exit(EXIT_OUTPUT_DIR_BUSY)
    note = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(note).encode(), 0)

    def release():
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    atexit.register(release)


def user_errors() -> tuple[type[Exception], ...]:
    """`USER_ERRORS`, imported when needed: it imports TensorFlow."""
    from freeze_trainer.tfx.trainer_model import USER_ERRORS

    return USER_ERRORS


# What a full disk (or quota) says, wherever it surfaces: an OSError's errno, TensorFlow's file system
# errors ("<file>; No space left on device", a ResourceExhaustedError, as an out-of-memory one is too),
# SQLite's through ML Metadata, and Beam's re-raised copies, which keep the text but not always the type.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXTS = (*(os.strerror(code) for code in DISK_FULL_ERRNOS), "database or disk is full")


def disk_full(err: BaseException) -> bool:
    """Whether `err`, or an exception it was raised from or while handling, says the disk is full: a
    component that fails writing its outputs often fails again publishing the failure to ML Metadata."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(err) for text in DISK_FULL_TEXTS):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def failures_in_one_line(output_dir: str) -> Iterator[None]:
    """Ends a run that fails once it owns `output_dir` with one line, not a traceback, where the reason
    says it all: a user error found once the data is read, a phase that fails its freeze check (diverged,
    a frozen variable moved), a full disk. The traceback goes to the log. Exit 1: the run started; a full
    disk leaves nothing a rerun trips on (a half-written execution's outputs are its own, and a RUNNING
    one is canceled by the next run: pipelines/crash_resume.py), so free space and run the same command."""
    from freeze_trainer.keras.training.freeze_proof import FreezeViolation

    try:
        yield
    except (*user_errors(), FreezeViolation) as err:
        logging.error("The run failed", exc_info=err)
        raise click.ClickException(str(err)) from None
    except Exception as err:
        if not disk_full(err):
            raise
        logging.error("The run failed: the disk is full", exc_info=err)
        raise click.ClickException(f"{output_dir}: no space left on device; free some space there and run the "
                                   "same command again") from None


def validated_config(image_size: int, trainer_module: str | None, hyperparameters: str | None,
                     **values) -> TrainerConfig:
    """The trainer configuration, checked against the model's layers before any data is read, with the
    `hyperparameters` file applied as the executor applies it (`config_with_hyperparameters`: names, types,
    bounds; a module's `build_model` gets the model's own values). Returns the configuration without the
    file: the executor applies it, and records it."""
    from freeze_trainer.tfx.trainer_model import plan_for_config

    try:
        if values.get("freeze_policy") is not None:  # a file or text; the option's default is the table's
            values["freeze_policy"] = read_policy_source(values["freeze_policy"])
        config = TrainerConfig.from_parameters(**values)
        overrides = read_hyperparameters_file(hyperparameters) if hyperparameters else {}
        build_model = load_build_model(trainer_module) if trainer_module else None
        planned = config_with_hyperparameters(values, overrides, user_model=trainer_module is not None) if overrides \
            else config
        plan_for_config(planned, (image_size, image_size, 3), build_model=build_model,
                        hyperparameters=model_hyperparameters(overrides) if build_model and overrides else None)
    except user_errors() as err:
        raise click.UsageError(str(err)) from None
    return config


def imported_file_folder(path: str, output_dir: str, name: str) -> str:
    """A folder `<output_dir>/<name>/<digest of the file's name and content>` holding only a copy of `path`:
    TFX imports folders, and readers take the one file in them. Nothing is deleted or overwritten: the
    user's file may itself lie in `<output_dir>/<name>`, even in an earlier run's copy. The copy is written
    beside its folder and renamed into place, so a folder that exists holds the whole file."""
    with open(path, "rb") as f:
        content = f.read()
    digest = hashlib.sha256(os.path.basename(path).encode() + b"\0" + content).hexdigest()[:16]
    folder = os.path.join(output_dir, name, digest)
    if not os.path.isdir(folder):
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{digest}-", dir=os.path.dirname(folder))
        with open(os.path.join(staging, os.path.basename(path)), "wb") as f:
            f.write(content)
        os.rename(staging, folder)
    return folder


def load_build_model(module_file: str):
    """The module's `build_model` hook, or None for a module with a `run_fn` (it plans for itself). Raises
    ConfigError naming the module when it does not import, exits at import (`sys.exit(0)` would end the run
    with status 0 and nothing said) or has neither hook."""
    # The source loader whatever the file's name: /dev/null or a `.txt` is read as Python and judged by that.
    loader = importlib.machinery.SourceFileLoader("user_trainer_module", module_file)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    try:
        loader.exec_module(module)
    except SystemExit as exit_:
        raise ConfigError("trainer_module", f"{module_file} exits at import (sys.exit({exit_.code!r}))") from None
    except Exception as err:  # noqa: BLE001 (the user's code: any failure is theirs, named in one line)
        raise ConfigError("trainer_module", f"{module_file} fails at import: {type(err).__name__}: {err}") from None
    if hasattr(module, "run_fn"):
        return None
    if not callable(getattr(module, "build_model", None)):
        raise ConfigError("trainer_module", f"{module_file} defines neither run_fn(fn_args) nor build_model(config, "
                                            "contract)")
    return module.build_model


def check_data(config: TrainerConfig, data_root: str | None, sample: int | None, transform_module: str | None,
               trainer_module: str | None, image_size: int) -> None:
    """The data against the parameters and the model's inputs, before anything is written or any component
    runs: the user's data root (pipelines/data_checks.py), or what the embedded digits are known to hold."""
    from pipelines.data_checks import check_data_root, check_labels_fit_task
    from pipelines.digits_data import digit_labels, digits_feature_spec
    from pipelines.model_input_checks import check_model_inputs

    if data_root:
        raw_feature_spec = check_data_root(data_root, config, bundled_transform=transform_module is None)
    else:  # one integer label an example
        check_labels_fit_task(config, transform_module is None, "int64_list",
                              {(int(label),) for label in digit_labels(limit=sample)}, "the embedded digits")
        raw_feature_spec = digits_feature_spec()
    check_model_inputs(config, raw_feature_spec, transform_module,
                       load_build_model(trainer_module) if trainer_module else None, image_size)


@click.command()
@click.option("--output-dir", default=os.path.join(REPO_ROOT, "runs"), show_default=True,
              help="Pipeline root, ML Metadata store, data and pushed models go here.")
@trainer_parameter_options(defaults={"backbone_weights": DEFAULT_BACKBONE_PATH},
                           aliases={"feature_key": "--image-key"})
@PIPELINE_OPTIONS
@click.option("--transform-module", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A module file with your own Transform preprocessing_fn; default: the bundled image one.")
@click.option("--trainer-module", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A module file with a run_fn, or a build_model(config, contract) hook.")
@click.option("--hyperparameters", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A KerasTuner best-hyperparameters JSON file; the values it names override the trainer's.")
@click.option("--search", "search", default=None, metavar="SPACE",
              help="A policy search space (YAML/JSON file): TFX's Tuner searches it before the trainer, which"
                   " trains with the best values. See `freeze-policy search`.")
@click.option("--max-trials", type=click.IntRange(min=1), default=None, help="With --search: at most N trials.")
@click.option("--data-root", default=None, help="Folder of TFRecord tf.Examples; default: the embedded digits 5-9.")
@click.option("--sample", type=click.IntRange(min=1), default=None, help="Use only the first N embedded examples (tests, smoke runs).")
@click.option("--beam-arg", "beam_args", multiple=True,
              help="A Beam pipeline argument (e.g. --direct_num_workers=4), instead of the defaults; repeatable.")
@verbose_option
def main(verbose, **options):
    # TensorFlow, TFX and Beam log to a file; the terminal shows the components, the training and the summary.
    with quiet_terminal(verbose) as log:
        run_pipeline(log, **options)


def validated_search(value: str, max_trials: int | None, image_size: int, parameters: dict) -> str:
    """The search space's text for the Tuner, checked (keys, values, every combination planned against the
    base) before anything runs; `max_trials` overrides the space's."""
    from freeze_trainer.tfx.search_space import SearchSpaceError, checked_search_text

    try:
        return checked_search_text(value, parameters, (image_size, image_size, 3), max_trials)
    except (SearchSpaceError, *user_errors()) as err:
        raise click.UsageError(str(err)) from None


@dataclass(frozen=True)
class RunPaths:
    """Where a run under `--output-dir` keeps everything, computed once."""

    output_dir: str  # absolute

    @classmethod
    def under(cls, output_dir: str) -> RunPaths:
        return cls(os.path.abspath(output_dir))

    @property
    def metadata(self) -> str:
        return os.path.join(self.output_dir, "metadata.sqlite")

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.output_dir, "pipeline_root")

    @property
    def serving(self) -> str:
        return os.path.join(self.output_dir, "serving")

    @property
    def digits(self) -> str:
        return os.path.join(self.output_dir, "data", "digits_5to9")

    def log(self, started_utc: str) -> str:
        return os.path.join(self.output_dir, "logs", f"{started_utc}.log")


def run_pipeline(log: TerminalLog, output_dir, transform_module, trainer_module, hyperparameters, data_root, sample,
                 beam_args, search=None, max_trials=None, **kwargs):
    options = PIPELINE_OPTIONS.validate(kwargs)
    parameters = pop_trainer_parameters(kwargs)
    config = validated_config(options.image_size, trainer_module, hyperparameters, **parameters)
    # The search's base: the parameters as given, the policy as read (the option names its file).
    search_space = validated_search(search, max_trials, options.image_size, {
        **parameters, "freeze_policy": config.freeze_policy.canonical_json()}) if search else None
    check_data(config, data_root, sample, transform_module, trainer_module, options.image_size)
    paths = RunPaths.under(output_dir)
    lock_output_dir(paths.output_dir)  # before anything is written there or TFX is imported
    with failures_in_one_line(paths.output_dir):
        # The run owns the folder now: the log so far (TensorFlow's start-up, the checks) moves into it.
        log.move_to(paths.log(datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")))
        wall = _run_local_pipeline(paths, options, config, transform_module, trainer_module, hyperparameters,
                                   data_root, sample, beam_args, search_space)
    _print_summary(paths, options, config, log, wall)


def _run_local_pipeline(paths: RunPaths, options, config, transform_module, trainer_module, hyperparameters,
                        data_root, sample, beam_args, search_space: str | None) -> float:
    """Runs the pipeline with LocalDagRunner; returns its wall time in seconds."""
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.orchestration.metadata import sqlite_metadata_connection_config

    from pipelines.crash_resume import resume_interrupted_training, run_fingerprint
    from pipelines.digits_data import write_digits_examples
    from pipelines.freeze_pipeline import create_pipeline

    # A run killed mid-training left its executions RUNNING: they become CANCELED, and this run's trainer
    # continues the killed one's training when the runs are the same (pipelines/crash_resume.py).
    parameters = config.parameter_values()
    trainer_resume = resume_interrupted_training(
        paths.metadata, PIPELINE_NAME, paths.pipeline_root,
        run_fingerprint(parameters, data_root or f"digits 5-9, sample {sample}",
                        [transform_module, trainer_module, hyperparameters, config.backbone_weights],
                        image_size=options.image_size, train_steps=options.train_steps,
                        eval_steps=options.eval_steps, retrain=options.retrain))
    pipeline = create_pipeline(
        pipeline_name=PIPELINE_NAME,
        pipeline_root=paths.pipeline_root,
        data_root=data_root or write_digits_examples(paths.digits, limit=sample),
        serving_dir=paths.serving,
        options=options,
        **parameters,
        transform_module_file=transform_module and os.path.abspath(transform_module),
        trainer_module_file=trainer_module and os.path.abspath(trainer_module),
        hyperparameters_uri=hyperparameters and imported_file_folder(hyperparameters, paths.output_dir,
                                                                     "hyperparameters"),
        search_space=search_space,
        # Per data: a rerun of a killed search on the same data resumes its finished trials.
        search_dir=os.path.join(paths.output_dir, "search", hashlib.sha256(
            f"{data_root}\0{sample}".encode()).hexdigest()[:16]) if search_space else None,
        metadata_connection_config=sqlite_metadata_connection_config(paths.metadata),
        trainer_custom_config=trainer_resume,
        beam_pipeline_args=list(beam_args) or None,
    )
    started = time.monotonic()
    LocalDagRunner().run(pipeline)  # its failures: failures_in_one_line
    return time.monotonic() - started


def _print_summary(paths: RunPaths, options, config, log: TerminalLog, wall: float) -> None:
    """The run's summary; exits non-zero when a first run's model was not pushed."""
    from pipelines.run_summary import summarize_latest_run

    summary = summarize_latest_run(paths.metadata, PIPELINE_NAME)
    click.echo("\n".join(summary.lines(per_component=False)))  # each component's seconds printed as it ended
    click.echo(f"  pipeline wall time               {wall:7.1f} s")
    report = transfer_report_path(config.backbone_weights)
    if os.path.exists(report):
        with open(report) as f:
            transfer = json.load(f)
        click.echo(
            "  transfer check (pretraining step, same head training): target accuracy with the pretrained"
            f" frozen base {transfer['target_eval_accuracy_pretrained_frozen_base']:.4f}, with a random frozen"
            f" base {transfer['target_eval_accuracy_random_frozen_base']:.4f}"
        )
    click.echo(f"  log: {log.path}")
    if not summary.pushed_to:
        if options.retrain:  # the gate did its job: serving keeps the previously pushed model
            click.echo("  retraining: the candidate was not blessed and was not pushed")
            return
        sys.exit("the model was not pushed")

if __name__ == "__main__":
    main()
