"""Wall time and memory of the local demo pipeline against a stock TFX pipeline on the same data.

Two real local TFX runs (LocalDagRunner, Beam DirectRunner, SQLite ML Metadata), each in its own
subprocess with a fresh pipeline root and metadata store:

  ours   `python local_runner.py --output-dir DIR` (what `make run` runs): FreezeTrainer, the fast
         Beam args of pipelines/freeze_pipeline.py.
  stock  the same data, ImportExampleGen, StatisticsGen, SchemaGen, Transform (same preprocessing_fn),
         TFX's own Trainer with benchmarks/stock_trainer_module.py (the same pretrained backbone with
         trainable=False and the same head, epochs, batch size and learning rate; `fit` and
         `model.save`), Resolver, Evaluator (same EvalConfig) and Pusher, with TFX's default Beam args
         and every component's default options.

Hyperparameters are local_runner.py's defaults unless given here. Prints each component's time from
ML Metadata, each subprocess's wall time and peak resident memory (the largest single process, from
wait4, and the whole process tree, sampled), the ours/stock ratios and the project's goals. Before the
timed runs an untimed child imports TensorFlow and TFX once, so neither run pays a cold disk cache.
FAST_LOCAL_BEAM_ARGS (one in-memory worker) are also Beam 2.59's own defaults, so `--stock-beam-args`
fast and default should time the same.

    python benchmarks/pipeline_speed.py                 # the demo defaults (several minutes on 2 cores)
    python benchmarks/pipeline_speed.py --quick         # smoke run: 200 examples, 2 epochs (still minutes)
    python benchmarks/pipeline_speed.py --stock-beam-args fast --stock-api v1
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow is first imported

import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import click  # noqa: E402

from freeze_trainer.cli.terminal import QuietCommand  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, REPO_ROOT)  # the repository's `pipelines` and `local_runner`, from any working folder
LOCAL_RUNNER = os.path.join(REPO_ROOT, "local_runner.py")
STOCK_MODULE_FILE = os.path.join(BENCH_DIR, "stock_trainer_module.py")
STOCK_PIPELINE_NAME = "stock-tfx-trainer"
CONFIG_FILE = "benchmark_config.json"

GOAL_WALL_SECONDS = 90.0
GOAL_PEAK_BYTES = 4e9  # "4 GB", decimal
QUICK = {"sample": 200, "epochs": 2, "accuracy_floor": 0.0}
WARMUP_IMPORTS = "import tensorflow, tensorflow_transform, tensorflow_model_analysis, tfx.components"
_PAGE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------------------------------
# The stock pipeline (runs in its own subprocess: `--stock-run-in DIR`)


def _local_runner_defaults() -> dict:
    """local_runner.py's option defaults, so both pipelines train with the same settings."""
    import local_runner

    return {param.name: param.default for param in local_runner.main.params}


def run_stock_pipeline(output_dir: str, overrides: dict, beam_args: str, api: str) -> None:
    if api == "v1":  # the public API the TFX tutorials and templates import; the same classes
        from tfx import v1 as _  # noqa: F401

    from tfx.components import Evaluator, ImportExampleGen, Pusher, SchemaGen, StatisticsGen, Trainer, Transform
    from tfx.dsl.components.common.resolver import Resolver
    from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
    from tfx.orchestration import pipeline
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.orchestration.metadata import sqlite_metadata_connection_config
    from tfx.proto import pusher_pb2
    from tfx.types import Channel, standard_artifacts

    from pipelines.digits_data import write_digits_examples
    from pipelines.freeze_pipeline import FAST_LOCAL_BEAM_ARGS, PREPROCESSING_FN, eval_config

    defaults = _local_runner_defaults()
    config = {key: overrides[key] if overrides.get(key) is not None else defaults[key]
              for key in ("epochs", "learning_rate", "batch_size", "backbone_weights", "image_size",
                          "accuracy_floor", "max_accuracy_drop", "sample")}
    config["stock_beam_pipeline_args"] = list(FAST_LOCAL_BEAM_ARGS) if beam_args == "fast" else []
    config["stock_api"] = api
    with open(os.path.join(output_dir, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2)

    # The same data and layout as local_runner.py.
    data_root = write_digits_examples(os.path.join(output_dir, "data", "digits_5to9"), limit=config["sample"])
    example_gen = ImportExampleGen(input_base=data_root)
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = SchemaGen(statistics=statistics_gen.outputs["statistics"])
    transform = Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config={"image_size": config["image_size"]},
    )
    trainer = Trainer(
        module_file=STOCK_MODULE_FILE,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        custom_config={key: config[key] for key in ("epochs", "learning_rate", "batch_size")}
        | {"backbone_path": config["backbone_weights"]},
    )
    model_resolver = Resolver(
        strategy_class=LatestBlessedModelStrategy,
        model=Channel(type=standard_artifacts.Model),
        model_blessing=Channel(type=standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    evaluator = Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"],
        eval_config=eval_config("multiclass", "label_xf", config["accuracy_floor"], config["max_accuracy_drop"]),
    )
    pusher = Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=os.path.join(output_dir, "serving"))
        ),
    )
    LocalDagRunner().run(
        pipeline.Pipeline(
            pipeline_name=STOCK_PIPELINE_NAME,
            pipeline_root=os.path.join(output_dir, "pipeline_root"),
            components=[example_gen, statistics_gen, schema_gen, transform, trainer, model_resolver, evaluator,
                        pusher],
            enable_cache=False,
            metadata_connection_config=sqlite_metadata_connection_config(os.path.join(output_dir, "metadata.sqlite")),
            beam_pipeline_args=config["stock_beam_pipeline_args"] or None,
        )
    )


# --------------------------------------------------------------------------------------------------
# Running and measuring one child


@dataclass
class ChildRun:
    name: str
    output_dir: str
    log_path: str
    returncode: int
    wall_seconds: float
    max_process_rss: int  # bytes: the largest single process of the tree (wait4's ru_maxrss)
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (Unix time, tree RSS bytes)

    @property
    def peak_tree_rss(self) -> int:
        """Bytes: the largest sampled sum over the child and all its descendants."""
        return max((rss for _, rss in self.rss_samples), default=0)

    @property
    def peak_bytes(self) -> int:
        return max(self.max_process_rss, self.peak_tree_rss)

    def peak_between(self, start: float, end: float) -> int | None:
        """The largest tree RSS sampled between two Unix times (a component's run), None if none was."""
        return max((rss for at, rss in self.rss_samples if start <= at <= end), default=None)


def _tree_rss(root: int) -> int:
    """Resident bytes of `root` and its descendants now (RSS sums count shared pages more than once)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, ()))
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            pass
    return total


def run_child(name: str, command: list[str], output_dir: str, interval: float = 0.2) -> ChildRun:
    os.makedirs(output_dir, exist_ok=True)
    log_path = os.path.join(output_dir, f"{name}.log")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    samples, done = [], threading.Event()
    with open(log_path, "w") as log:
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

        def sample():
            while not done.wait(interval):
                samples.append((time.time(), _tree_rss(process.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage, not all children's so far
        wall = time.monotonic() - started
        done.set()
        sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(name, output_dir, log_path, process.returncode, wall, usage.ru_maxrss * 1024, samples)


def _overrides_args(overrides: dict) -> list[str]:
    args = []
    for key, value in overrides.items():
        if value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def _tail(path: str, lines: int = 40) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


# --------------------------------------------------------------------------------------------------
# Report


def _mb(value: int) -> str:
    return f"{value / 1e6:8.0f} MB"


def _ratio(ours: float | None, stock: float | None, floor: float = 0.5) -> str:
    """ours/stock, or `-` where either is missing or both are under `floor` (noise)."""
    if ours is None or not stock or max(ours, stock) < floor:
        return "     -"
    return f"{ours / stock:6.2f}"


def _component_rows(ours: dict[str, float], stock: dict[str, float]):
    """(label, ours seconds, stock seconds) in pipeline order; FreezeTrainer pairs with Trainer."""
    stock = dict(stock)
    for name, seconds in ours.items():
        if name == "FreezeTrainer":
            yield "FreezeTrainer | Trainer", seconds, stock.pop("Trainer", None)
        else:
            yield name, seconds, stock.pop(name, None)
    for name, seconds in stock.items():
        yield ("FreezeTrainer | Trainer" if name == "Trainer" else name), None, seconds


def _seconds(value: float | None) -> str:
    return f"{value:9.1f}" if value is not None else "        -"


def print_summary(output_dir: str, name: str) -> None:
    """One JSON line: the run's pipelines/run_summary.py summary (in a child: the parent stays TF-free)."""
    from local_runner import PIPELINE_NAME

    from pipelines.run_summary import summarize_latest_run

    pipeline_name = PIPELINE_NAME if name == "ours" else STOCK_PIPELINE_NAME
    summary = summarize_latest_run(os.path.join(output_dir, "metadata.sqlite"), pipeline_name)
    print(json.dumps({
        "component_seconds": summary.component_seconds,
        "component_spans": summary.component_spans,
        "accuracy": summary.accuracy,
        "blessed": summary.blessed,
        "pushed_to": summary.pushed_to,
        "freeze_check": summary.model_properties.get("freeze_check"),
    }))


@dataclass
class Summary:
    component_seconds: dict
    accuracy: float | None
    blessed: bool
    pushed_to: str | None
    freeze_check: str | None
    component_spans: dict = field(default_factory=dict)  # name -> [start, end], Unix seconds


def _summary_or_none(run: ChildRun) -> Summary | None:
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--summarize", run.output_dir, run.name],
        cwd=REPO_ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True,
    )
    if result.returncode:  # a failed run may have left no store behind
        click.echo(f"  (no ML Metadata summary for {run.name}: {result.stderr.strip().splitlines()[-1:]})")
        return None
    return Summary(**json.loads(result.stdout.strip().splitlines()[-1]))


def report(ours: ChildRun, stock: ChildRun, quick: bool) -> bool:
    ours_summary = _summary_or_none(ours)
    stock_summary = _summary_or_none(stock)
    ours_components = ours_summary.component_seconds if ours_summary else {}
    stock_components = stock_summary.component_seconds if stock_summary else {}

    click.echo(f"\n  {'component (s)':<34}{'ours':>9}{'stock':>10}  ours/stock")
    for label, ours_s, stock_s in _component_rows(ours_components, stock_components):
        click.echo(f"  {label:<34}{_seconds(ours_s)} {_seconds(stock_s)}      {_ratio(ours_s, stock_s)}")
    ours_total, stock_total = sum(ours_components.values()), sum(stock_components.values())
    click.echo(f"  {'components total':<34}{_seconds(ours_total)} {_seconds(stock_total)}      "
               f"{_ratio(ours_total, stock_total)}")
    click.echo(f"  {'subprocess wall time':<34}{_seconds(ours.wall_seconds)} {_seconds(stock.wall_seconds)}      "
               f"{_ratio(ours.wall_seconds, stock.wall_seconds)}")
    click.echo(f"  {'  outside components':<34}{_seconds(ours.wall_seconds - ours_total)} "
               f"{_seconds(stock.wall_seconds - stock_total)}")
    click.echo(f"  {'peak RSS, largest process':<34} {_mb(ours.max_process_rss)} {_mb(stock.max_process_rss)}   "
               f"{_ratio(ours.max_process_rss, stock.max_process_rss)}")
    click.echo(f"  {'peak RSS, process tree (sampled)':<34} {_mb(ours.peak_tree_rss)} {_mb(stock.peak_tree_rss)}   "
               f"{_ratio(ours.peak_tree_rss, stock.peak_tree_rss)}")
    for label, run, summary in (("ours", ours, ours_summary), ("stock", stock, stock_summary)):
        accuracy = f"{summary.accuracy:.4f}" if summary and summary.accuracy is not None else "-"
        click.echo(f"  {label:<6} exit {run.returncode}  eval accuracy (TFMA) {accuracy}  "
                   f"blessed {bool(summary and summary.blessed)}  pushed {bool(summary and summary.pushed_to)}"
                   + (f"  freeze check {summary.freeze_check}" if summary and summary.freeze_check else ""))
    ok = all(run.returncode == 0 for run in (ours, stock)) and all(
        summary is not None and summary.pushed_to for summary in (ours_summary, stock_summary))

    goals = [
        ("this project's run no slower than stock (subprocess wall time, ours/stock <= 1.00)",
         f"{ours.wall_seconds / stock.wall_seconds:.2f}", ours.wall_seconds <= stock.wall_seconds),
        (f"under {GOAL_WALL_SECONDS:.0f} s on these {os.cpu_count()} cores (ours, subprocess wall time)",
         f"{ours.wall_seconds:.1f} s", ours.wall_seconds < GOAL_WALL_SECONDS),
        ("peak resident memory of the whole run under 4 GB (ours, process tree)",
         f"{ours.peak_bytes / 1e9:.2f} GB", ours.peak_bytes < GOAL_PEAK_BYTES),
    ]
    click.echo("\ngoals" + (" (--quick: smaller data and fewer epochs than the demo, not the real check)" if quick
                            else ""))
    if not ok:  # a time or memory of a run that stopped early proves nothing
        goals = [(text, f"{value} (a run failed or did not push)", False) for text, value, _ in goals]
    for text, value, passed in goals:
        click.echo(f"  {'PASS' if passed else 'FAIL'}  {text}: {value}")
    click.echo(json.dumps({
        run.name: {
            "returncode": run.returncode,
            "wall_seconds": round(run.wall_seconds, 2),
            "max_process_rss_bytes": run.max_process_rss,
            "peak_tree_rss_bytes": run.peak_tree_rss,
            "component_seconds": summary.component_seconds if summary else None,
            "eval_accuracy": summary.accuracy if summary else None,
            "blessed": summary.blessed if summary else None,
            "pushed": bool(summary and summary.pushed_to),
        }
        for run, summary in ((ours, ours_summary), (stock, stock_summary))
    } | {"ratios_ours_over_stock": {
        "wall": ours.wall_seconds / stock.wall_seconds,
        "components_total": ours_total / stock_total if stock_total else None,
        "peak_bytes": ours.peak_bytes / stock.peak_bytes if stock.peak_bytes else None,
    }, "goals": {text: passed for text, _, passed in goals}}))
    return ok


# --------------------------------------------------------------------------------------------------


@click.command(cls=QuietCommand)
@click.option("--epochs", type=int, default=None, help="Default: local_runner.py's.")
@click.option("--sample", type=int, default=None, help="Use only the first N embedded examples. Default: all.")
@click.option("--accuracy-floor", type=float, default=None, help="Default: local_runner.py's.")
@click.option("--quick", is_flag=True,
              help=f"Smoke run: --sample {QUICK['sample']} --epochs {QUICK['epochs']} --accuracy-floor "
                   f"{QUICK['accuracy_floor']} unless given.")
@click.option("--stock-beam-args", type=click.Choice(["default", "fast"]), default="default", show_default=True,
              help="The stock pipeline's Beam args: TFX's defaults (none) or ours (FAST_LOCAL_BEAM_ARGS).")
@click.option("--stock-api", type=click.Choice(["components", "v1"]), default="components", show_default=True,
              help="components: import from tfx.components, as this project does; v1: also import the public "
                   "tfx.v1 API, as the TFX tutorials do (a longer start-up).")
@click.option("--order", type=click.Choice(["stock-first", "ours-first"]), default="stock-first", show_default=True)
@click.option("--work-dir", default=None, help="Where the two runs go. Default: a new temporary folder.")
@click.option("--keep", is_flag=True, help="Keep the work folder (it is always kept when a run fails).")
@click.option("--stock-run-in", hidden=True, default=None)
@click.option("--summarize", hidden=True, nargs=2, default=None)
def main(epochs, sample, accuracy_floor, quick, stock_beam_args, stock_api, order, work_dir, keep, stock_run_in,
         summarize):
    if summarize:  # a child: prints one run's ML Metadata summary
        print_summary(*summarize)
        return
    if quick:
        epochs = QUICK["epochs"] if epochs is None else epochs
        sample = QUICK["sample"] if sample is None else sample
        accuracy_floor = QUICK["accuracy_floor"] if accuracy_floor is None else accuracy_floor
    overrides = {"epochs": epochs, "sample": sample, "accuracy_floor": accuracy_floor}
    if stock_run_in:  # the stock child
        run_stock_pipeline(stock_run_in, overrides, stock_beam_args, stock_api)
        return

    work_dir = os.path.abspath(work_dir or tempfile.mkdtemp(prefix="pipeline-speed-"))
    commands = {
        "ours": [sys.executable, LOCAL_RUNNER, "--output-dir", os.path.join(work_dir, "ours"),
                 *_overrides_args(overrides)],
        "stock": [sys.executable, os.path.abspath(__file__), "--stock-run-in", os.path.join(work_dir, "stock"),
                  "--stock-beam-args", stock_beam_args, "--stock-api", stock_api, *_overrides_args(overrides)],
    }
    for name in ("ours", "stock"):
        if os.path.exists(os.path.join(work_dir, name)):
            raise click.UsageError(f"{os.path.join(work_dir, name)} exists; each run needs a fresh pipeline root")
    click.echo(f"work folder {work_dir}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
    click.echo("warm-up (untimed): " + WARMUP_IMPORTS)
    subprocess.run([sys.executable, "-c", WARMUP_IMPORTS], cwd=REPO_ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = {}
    for name in (("stock", "ours") if order == "stock-first" else ("ours", "stock")):
        click.echo(f"{name}: {' '.join(commands[name][1:])}")
        runs[name] = run_child(name, commands[name], os.path.join(work_dir, name))
        click.echo(f"  exit {runs[name].returncode} after {runs[name].wall_seconds:.1f} s"
                   f" (load average now {os.getloadavg()[0]:.2f}); log {runs[name].log_path}")
        if runs[name].returncode:
            click.echo(_tail(runs[name].log_path))

    config_path = os.path.join(work_dir, "stock", CONFIG_FILE)
    if not os.path.exists(config_path):
        sys.exit(f"the stock run failed before writing {config_path}; work folder kept: {work_dir}")
    with open(config_path) as f:
        config = json.load(f)
    click.echo(
        f"\nboth: local_runner.py defaults{' with overrides' if any(v is not None for v in overrides.values()) else ''}"
        f" - epochs {config['epochs']}, batch {config['batch_size']}, learning rate {config['learning_rate']},"
        f" {config['image_size']} px, sample {config['sample'] or 'all'}, accuracy floor {config['accuracy_floor']},"
        f"\n      backbone {os.path.relpath(config['backbone_weights'], REPO_ROOT)}"
        f"\nours:  FreezeTrainer, Beam args of pipelines/freeze_pipeline.py (FAST_LOCAL_BEAM_ARGS)"
        f"\nstock: Trainer + benchmarks/stock_trainer_module.py, Beam args "
        f"{config['stock_beam_pipeline_args'] or 'TFX default (none)'}, tfx API: {config['stock_api']}"
    )
    ok = report(runs["ours"], runs["stock"], quick)
    if ok and not keep:
        shutil.rmtree(work_dir, ignore_errors=True)
    else:
        click.echo(f"work folder kept: {work_dir}")
    if not ok:
        sys.exit("a run failed or did not push its model; see the logs above")


if __name__ == "__main__":
    main()
