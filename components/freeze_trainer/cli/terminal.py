"""What a command shows on the terminal, and the log file that takes everything else.

By default a command shows its own lines, one line per pipeline component as it starts and as it ends,
Keras' progress bars and its summary. Everything else written to stderr goes to a log file: TensorFlow's
C++ logs (CUDA, cuDNN/cuFFT/cuBLAS, TF-TRT), absl and Python logging (at INFO), Python warnings and the
import errors some libraries print. `--verbose` shows all of that on the terminal too, and still logs it.

The log takes file descriptor 2 itself, not only `sys.stderr`: TensorFlow's C++ logging and the processes
a pipeline starts (Beam's workers) write to the descriptor. So the command's own messages for stderr go
through `echo_error`, which keeps the terminal; stdout is never redirected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from typing import Iterator, TextIO

import click
from absl import logging as absl_logging

# `--verbose`, as `verbose_option` decorates a command and as the option QuietCommand/QuietGroup add.
_VERBOSE = {"is_flag": True,
            "help": "Show everything on the terminal: TensorFlow's and the libraries' logs and warnings (logged anyway)."}
verbose_option = click.option("--verbose", **_VERBOSE)

# While a quiet terminal holds fd 2: a stream to the terminal's stderr, for our own messages.
_terminal_stderr: TextIO | None = None


def echo_error(message: str) -> None:
    """Prints one of the command's own messages to stderr: the terminal's, also while the log holds fd 2."""
    click.echo(message, file=_terminal_stderr, err=True)


def _flush() -> None:
    """Writes out what Python buffered for fd 1 and 2 before the descriptors change."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()


def _open_append(path: str) -> int:
    # O_APPEND: the processes a pipeline starts share the descriptor, and each write lands at the end.
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _writes_to_fd_2(stream) -> bool:
    """Whether `stream` is the process's stderr, rather than click's CliRunner or pytest's capture."""
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return False


class TerminalLog:
    """The log file that takes fd 2 while `quiet_terminal` runs: a temporary file until `move_to` puts it
    where the command keeps it. `verbose` copies what reaches fd 2 to the terminal as well."""

    def __init__(self, verbose: bool):
        self.verbose = verbose
        fd, self.path = tempfile.mkstemp(prefix="freeze-trainer-", suffix=".log")
        os.close(fd)
        self.kept = False  # True once moved where the command keeps it: never deleted then
        self._log_fd: int | None = _open_append(self.path)
        self._lock = threading.Lock()  # the copier's writes against `move_to` and `close`
        _flush()
        self._terminal_fd = os.dup(2)
        self.terminal_stderr = None
        if verbose:
            read_end, write_end = os.pipe()
            os.dup2(write_end, 2)
            os.close(write_end)
            self._copier = threading.Thread(target=self._copy, args=(read_end, os.dup(self._terminal_fd)),
                                             daemon=True)
            self._copier.start()
        else:
            self._copier = None
            if _writes_to_fd_2(sys.stderr):
                self.terminal_stderr = os.fdopen(os.dup(self._terminal_fd), "w", buffering=1,
                                                 encoding=sys.stderr.encoding, errors="replace")
            os.dup2(self._log_fd, 2)

    def _copy(self, read_end: int, terminal_fd: int) -> None:
        """Verbose: what reaches fd 2, to the terminal and the log, until every writer has closed the pipe."""
        while data := os.read(read_end, 1 << 16):
            _write_all(terminal_fd, data)
            with self._lock:
                if self._log_fd is not None:
                    _write_all(self._log_fd, data)
        os.close(read_end)
        os.close(terminal_fd)

    def move_to(self, path: str) -> None:
        """Continues the log at `path` (appended to), starting with what it holds so far."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        new_fd = _open_append(path)
        _flush()
        with self._lock:
            with open(self.path, "rb") as so_far:
                _write_all(new_fd, so_far.read())
            if not self.verbose:
                os.dup2(new_fd, 2)
            os.close(self._log_fd)
            self._log_fd = new_fd
            os.unlink(self.path)
        self.path, self.kept = os.path.abspath(path), True

    def close(self, failed: bool) -> None:
        """Gives fd 2 back to the terminal. A failed command's log stays and is named; a temporary log of a
        command that did not fail is deleted."""
        _flush()
        os.dup2(self._terminal_fd, 2)
        os.close(self._terminal_fd)
        if self.terminal_stderr:
            self.terminal_stderr.close()
        if self._copier:
            # The copier ends when the pipe has no writer left; a process the command started may hold it.
            self._copier.join(timeout=2)
        with self._lock:
            os.close(self._log_fd)
            self._log_fd = None
        if failed:
            click.echo(f"log: {self.path}", err=True)
        elif not self.kept:
            os.unlink(self.path)


class ComponentLines(logging.Handler):
    """One stdout line as TFX's LocalDagRunner starts a component, and one with its seconds as it finishes
    it. It matches the runner's message templates (tfx/orchestration/local/local_dag_runner.py), which
    stay the same whatever the component, not the formatted text."""

    RUNNING = "Component %s is running."
    FINISHED = "Component %s is finished."
    SKIPPED = "Skipping component %s."

    def __init__(self):
        super().__init__(logging.INFO)
        self._started: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == self.RUNNING:
            self._started[record.args[0]] = time.monotonic()
            click.echo(f"  {record.args[0]} ...")
        elif record.msg == self.FINISHED:
            seconds = time.monotonic() - self._started.pop(record.args[0])
            click.echo(f"  {record.args[0]} done {seconds:5.1f} s")
        elif record.msg == self.SKIPPED:
            click.echo(f"  {record.args[0]} skipped")


@contextlib.contextmanager
def quiet_terminal(verbose: bool = False) -> Iterator[TerminalLog]:
    """Sends everything written to fd 2 to a log file (see the module's docstring) and prints a line per
    pipeline component, until the block ends; yields the log. Whatever the block raises reaches the
    terminal: click's one-line errors and real tracebacks alike; after any other exception than click's
    own, one more line names the log.

    The log starts as a temporary file, deleted unless the block fails; `move_to` keeps it."""
    global _terminal_stderr
    # Fewer C++ lines even where fd 2 escapes the log (a process that reopens it); a level already set stays.
    set_cpp_log_level = not verbose and "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    if set_cpp_log_level:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    log = TerminalLog(verbose)
    previous_terminal_stderr, _terminal_stderr = _terminal_stderr, log.terminal_stderr
    absl_verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)  # the log has the pipeline's INFO lines
    component_lines = ComponentLines()
    logging.getLogger("absl").addHandler(component_lines)
    failed = False
    try:
        yield log
    except Exception as err:
        # click's exceptions print a message that says it all (Exit, of --help and the like, is no failure).
        failed = not isinstance(err, (click.ClickException, click.exceptions.Exit))
        raise
    finally:
        logging.getLogger("absl").removeHandler(component_lines)
        absl_logging.set_verbosity(absl_verbosity)
        _terminal_stderr = previous_terminal_stderr
        log.close(failed)
        if set_cpp_log_level:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)


class _Quiet:
    """Runs a click command, or a group's subcommand, under `quiet_terminal`, and adds `--verbose`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(["--verbose"], **_VERBOSE))

    def invoke(self, ctx: click.Context):
        with quiet_terminal(ctx.params.pop("verbose")):
            return super().invoke(ctx)


class QuietCommand(_Quiet, click.Command):
    """`@click.command(cls=QuietCommand)`: the command runs under `quiet_terminal`, with `--verbose`."""


class QuietGroup(_Quiet, click.Group):
    """`@click.group(cls=QuietGroup)`: every subcommand runs under `quiet_terminal`; `--verbose` goes
    before the subcommand (`freeze-policy --verbose plan ...`)."""
