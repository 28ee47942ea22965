"""What a person sees on the terminal (issue #15): a line per pipeline component as it starts and ends, one
progress bar per training phase and the summary; TensorFlow's, TFX's and Beam's logs and warnings go to
the log file the summary names, and `--verbose` shows them too. `--help` loads no TensorFlow."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from freeze_trainer.keras.data.example_feed import ExampleFeed
from freeze_trainer.keras.data.feature_cache import FeatureCache
from freeze_trainer.keras.training.fit_training import train_with_fit
from freeze_trainer.keras.planning.freeze_plan import plan_policy
from freeze_trainer.keras.training.gradient_tape_loop import train_with_gradient_tape
from freeze_trainer.policy.freeze_policy import policy_from_dict
from tests.conftest import REPO_ROOT
from tests.model_builders import random_images, tiny_classifier

# What must not reach the terminal by default: CUDA and its factories, warnings of any kind, TFMA's import
# error, TFX's ML Metadata query warning, TensorFlow's C++ log prefix and absl's.
NOISE = re.compile(r"cuda|cuFFT|cuDNN|cuBLAS|Warning|WARNING|FutureWarning|Error importing|property_predicate"
                   r"|^\d{4}-\d\d-\d\d .*\] |^[IWEF]\d{4} ")
COMPONENTS = ("ImportExampleGen", "StatisticsGen", "SchemaGen", "Transform", "FreezeTrainer", "Evaluator", "Pusher")
LOOPS = [train_with_fit, train_with_gradient_tape]


def noise_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if NOISE.search(line)]


def terminal_lines(text: str) -> list[str]:
    """The lines a terminal shows: a progress bar's carriage returns redraw a line rather than add one."""
    return [line.rsplit("\r", 1)[-1] for line in text.rstrip("\n").split("\n")]


# ---- The local runner, end to end -----------------------------------------------------------------------


def test_the_demo_run_shows_components_training_and_summary_and_nothing_else(demo_run):
    output_dir, result = demo_run
    shown = result.stdout + result.stderr
    lines = terminal_lines(shown)
    assert len(lines) < 40, shown
    assert noise_lines(shown) == [], shown
    for component in COMPONENTS:
        # A line as it starts and one as it ends, and no seconds table repeating them in the summary.
        started, ended = [line for line in lines if re.match(rf"  {component}\b", line)]
        assert started == f"  {component} ..." and re.fullmatch(rf"  {component} done +\d+\.\d s", ended), shown
    [header] = [line for line in lines if line.startswith("phase ")]
    epochs = int(re.match(r"phase 1/1 '\w+': (\d+) epochs x \d+ steps", header).group(1))
    # Captured, not a terminal: the phase's progress is one plain line per epoch, as in a KFP task's log.
    progress = [line for line in lines if re.match(r" *\d+/\d+ - \d+s - ", line)]
    assert len(progress) == epochs and re.match(r"(\d+)/\1 - ", progress[-1]), shown
    assert "val_loss" in progress[-1]
    for summary_line in ("run ", "  components total", "  blessed: True", "  freeze check: passed",
                         "  pipeline wall time", "  transfer check", "  log: "):
        assert any(line.startswith(summary_line) for line in lines), (summary_line, shown)
    # The log the summary names is in the output folder and holds what the terminal did not show.
    [log_path] = re.findall(r"^  log: (.+)$", result.stdout, re.M)
    assert os.path.dirname(log_path) == os.path.join(output_dir, "logs")
    with open(log_path) as f:
        log = f.read()
    assert "Component FreezeTrainer is finished." in log
    assert noise_lines(log)  # the warnings are there
    assert result.stderr == ""


# ---- `--help` ----------------------------------------------------------------------------------------------

HELP_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import importlib
command = importlib.import_module(sys.argv[2]).main
command.main(sys.argv[3:], prog_name=sys.argv[2], standalone_mode=False)
heavy = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'tf_keras', 'tfx', 'apache_beam'})
print('HEAVY', heavy)
"""


@pytest.mark.parametrize("module, args", [
    ("local_runner", ["--help"]),
    ("freeze_trainer.cli.policy_cli", ["--help"]),  # the `freeze-policy` command
    ("freeze_trainer.cli.policy_cli", ["plan", "--help"]),
    ("kubeflow.run", ["--help"]),
    ("kubeflow.run", ["vertex", "--help"]),
    ("kubeflow.schedule", ["kfp", "--help"]),
    ("kubeflow.compile_pipeline", ["--help"]),
])
def test_help_imports_no_tensorflow(module, args):
    result = subprocess.run([sys.executable, "-c", HELP_PROBE, REPO_ROOT, module, *args], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Usage:" in result.stdout
    if args == ["--help"]:  # a group's subcommands take it from the group
        assert "--verbose" in result.stdout
    assert result.stdout.splitlines()[-1] == "HEAVY []", result.stdout[-2000:]
    assert result.stderr == ""


# ---- freeze-policy -----------------------------------------------------------------------------------------


def test_freeze_policy_plan_prints_the_plan_and_nothing_of_tensorflow(tmp_path):
    policy = json.dumps({"version": 1, "rules": [{"freeze": {"base": True}}, {"unfreeze": {"group": "block_16"}}]})
    picture = tmp_path / "plan.png"
    result = subprocess.run(
        [sys.executable, "-m", "freeze_trainer.cli.policy_cli", "plan", policy, "--image-size", "32", "--alpha",
         "0.35", "--picture", str(picture)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert noise_lines(result.stdout + result.stderr) == [], result.stdout + result.stderr
    assert result.stdout.startswith("MobileNetV2 alpha 0.35 at 32 px")
    assert result.stderr == f"plan picture: {picture}\n"  # its own message keeps stderr; the rest is logged
    assert picture.exists()


# ---- quiet_terminal ------------------------------------------------------------------------------------------

# Writes what the libraries write, each its own way: a C++ line straight to fd 2, a Python warning, absl
# warnings, TFMA's import error (sys.stderr, no newline), TFX's component records; then the command's own
# lines on stdout and stderr. `move_to` the log file if a path is given, then fail if asked to.
QUIET_SCRIPT = textwrap.dedent("""
    import os, sys, warnings
    import click
    from absl import logging
    from freeze_trainer.cli.terminal import echo_error, quiet_terminal

    verbose, ending, keep = sys.argv[1] == "verbose", sys.argv[2], sys.argv[3:]
    with quiet_terminal(verbose) as log:
        print("temporary", log.path, flush=True)
        os.write(2, b"2025-01-01 10:00:00.000000: E cuda_fft.cc:479] Unable to register cuFFT factory\\n")
        warnings.warn("a FutureWarning", FutureWarning)
        logging.warning("ArtifactQuery.property_predicate is not supported.")
        sys.stderr.write("Error importing: cannot import name 'addons'")
        logging.info("Component %s is running.", "Transform")
        logging.info("Component %s is finished.", "Transform")
        logging.info("Skipping component %s.", "Evaluator")
        if keep:
            log.move_to(keep[0])
            os.write(2, b"after the move\\n")
        print("our line")
        echo_error("our message")
        if ending == "error":
            raise RuntimeError("it broke")
        if ending == "usage":
            raise click.UsageError("a bad flag")
    print("log", log.path, os.path.exists(log.path))
""")
HIDDEN = ["Unable to register cuFFT factory", "FutureWarning: a FutureWarning",
          "ArtifactQuery.property_predicate is not supported.", "Error importing: cannot import name 'addons'",
          "Component Transform is running."]


def _quiet(tmp_path, mode: str, ending: str = "ok", *keep: str) -> subprocess.CompletedProcess:
    script = tmp_path / "quiet.py"
    script.write_text(QUIET_SCRIPT)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, str(script), mode, ending, *keep], capture_output=True, text=True,
                          timeout=120, env=env)


def test_quiet_terminal_logs_everything_written_to_fd_2_and_keeps_stdout(tmp_path):
    kept = tmp_path / "out" / "logs" / "run.log"
    result = _quiet(tmp_path, "quiet", "ok", str(kept))
    stdout = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    assert stdout[1:] == ["  Transform ...", "  Transform done   0.0 s", "  Evaluator skipped", "our line",
                          f"log {kept} True"]
    assert result.stderr == "our message\n"
    log = kept.read_text()
    assert all(text in log for text in HIDDEN), log
    assert log.index("Component Transform is running.") < log.index("after the move")  # the log so far moved
    assert not os.path.exists(stdout[0].split()[1])  # the temporary file it started in


def test_a_temporary_log_goes_on_success_and_stays_named_on_failure(tmp_path):
    result = _quiet(tmp_path, "quiet", "ok")
    assert result.stdout.splitlines()[-1].endswith(" False")  # deleted
    failed = _quiet(tmp_path, "quiet", "error")
    assert failed.returncode == 1
    errors = failed.stderr.splitlines()
    temporary = failed.stdout.splitlines()[0].split()[1]
    assert errors[:2] == ["our message", f"log: {temporary}"]
    assert errors[-1] == "RuntimeError: it broke"  # the traceback reaches the terminal
    with open(temporary) as f:
        log = f.read()
    assert [text for text in HIDDEN if text not in log] == [], log


def test_a_usage_error_is_one_line_and_leaves_no_log(tmp_path):
    """click's own errors say it all: they print as always, without a line naming a log."""
    script = tmp_path / "command.py"
    script.write_text(textwrap.dedent("""
        import click, warnings
        from freeze_trainer.cli.terminal import QuietCommand

        @click.command(cls=QuietCommand)
        def main():
            warnings.warn("noise", UserWarning)
            raise click.UsageError("--epochs: not a number")

        main()
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TMPDIR": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "Error: --epochs: not a number"
    assert noise_lines(result.stderr) == [] and "log:" not in result.stderr
    assert os.listdir(tmp_path) == ["command.py"]


def test_verbose_shows_everything_and_still_logs_it(tmp_path):
    kept = tmp_path / "run.log"
    result = _quiet(tmp_path, "verbose", "ok", str(kept))
    assert result.returncode == 0, result.stderr
    assert all(text in result.stderr for text in HIDDEN), result.stderr
    assert "our message" in result.stderr and "after the move" in result.stderr
    log = kept.read_text()
    assert all(text in log for text in [*HIDDEN, "our message", "after the move"]), log


# ---- The progress bar of a training phase, in both loops --------------------------------------------------

POLICY = policy_from_dict({"version": 1, "phases": [
    {"name": "head", "epochs": 2, "rules": [{"freeze": {"base": True}}]},
    {"name": "top", "steps": 3, "rules": [{"freeze": {"base": True}}, {"unfreeze": {"names": ["conv_b"]}}]},
]})
IMAGES, LABELS = random_images(32)  # 4 batches of 8


def _train(loop, feed=None, policy=POLICY, **options):
    tf.keras.utils.set_random_seed(0)
    model = tiny_classifier()
    data = tf.data.Dataset.from_tensor_slices((IMAGES, LABELS)).batch(8)
    return loop(model, plan_policy(policy, model, 1e-2, 1), feed or data, None if feed else data, **options)


@pytest.mark.parametrize("loop", LOOPS)
def test_each_phase_prints_a_line_and_one_progress_bar(loop, capsys, tmp_path):
    examples = tf.data.Dataset.from_tensor_slices((IMAGES, LABELS))
    with FeatureCache("test", str(tmp_path / "spill")) as cache:
        _train(loop, ExampleFeed(examples, examples, 8, 0, cache), verbose=1)
    lines = terminal_lines(capsys.readouterr().out)
    assert len(lines) == 5, lines  # off a terminal (captured here), a plain line per epoch
    assert lines[0] == "phase 1/2 'head': 2 epochs x 4 steps, head on cached base features"
    number = r"[\d.e+-]+"
    assert lines[1].startswith("4/8 - ")
    assert re.fullmatch(rf"8/8 - \d+s - loss: {number} - accuracy: {number} - val_loss: {number} - "
                        rf"val_accuracy: {number} - \d+m?s/epoch - \d+m?s/step", lines[2]), lines[2]
    assert lines[3] == "phase 2/2 'top': 3 steps, live part on cached bn"  # conv_b trains on the stem's outputs
    assert lines[4].startswith("3/3 - ")


@pytest.mark.parametrize("loop", LOOPS)
def test_an_early_stop_ends_the_bar_where_the_phase_ended(loop, capsys):
    stopper = tf.keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e9)  # stops after 2 epochs
    policy = policy_from_dict({"version": 1, "phases": [{"name": "long", "epochs": 6,
                                                         "rules": [{"freeze": {"base": True}}]}]})
    _train(loop, policy=policy, callbacks=[stopper])
    lines = terminal_lines(capsys.readouterr().out)
    assert lines[0] == "phase 1/1 'long': 6 epochs x 4 steps"
    assert [line[:5] for line in lines[1:]] == [" 4/24", " 8/24"], lines  # the phase ended at batch 8


class _Preempted(Exception):
    pass


class _PreemptAfter(tf.keras.callbacks.Callback):
    def __init__(self, batches: int):
        super().__init__()
        self.batches = batches

    def on_train_batch_end(self, batch, logs=None):
        self.batches -= 1
        if not self.batches:
            raise _Preempted()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_resumed_phase_starts_its_bar_where_its_checkpoint_left_it(loop, capsys, tmp_path):
    policy = policy_from_dict({"version": 1, "phases": [{"name": "head", "epochs": 3,
                                                         "rules": [{"freeze": {"base": True}}]}]})
    checkpoints = {"checkpoint_dir": str(tmp_path), "checkpoint_every_steps": 1}
    with pytest.raises(_Preempted):  # in batch 6, before its checkpoint
        _train(loop, policy=policy, callbacks=[_PreemptAfter(6)], **checkpoints)
    header, first_epoch = terminal_lines(capsys.readouterr().out)
    assert header == "phase 1/1 'head': 3 epochs x 4 steps" and first_epoch.startswith(" 4/12 - ")
    _train(loop, policy=policy, **checkpoints)  # the rest of epoch 2, then epoch 3: two training calls
    lines = terminal_lines(capsys.readouterr().out)
    assert lines[0] == "phase 1/1 'head': 3 epochs x 4 steps, resumed at step 5"
    assert [line[:5] for line in lines[1:]] == [" 8/12", "12/12"], lines
