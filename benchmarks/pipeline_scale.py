"""How the local pipeline scales with the data: 3k, 30k and 60k Fashion-MNIST images.

Each size is one real local run (`python local_runner.py --data-root DIR --output-dir DIR`, LocalDagRunner,
Beam DirectRunner, SQLite ML Metadata) in its own subprocess with a fresh output folder, on the first N
Fashion-MNIST training images as PNG tf.Examples (`image`: the 28 px grey PNG, `label`: 0-9; the bundled
Transform resizes to the demo backbone's 32 px RGB). The largest size runs once more with Beam's
DirectRunner in separate worker processes (`--direct_running_mode=multi_processing
--direct_num_workers=2`). Prints each component's seconds (from the run summary in ML Metadata), the
subprocess wall time, the peak resident memory of the whole process tree (sampled, as
benchmarks/pipeline_speed.py measures it) in all and while each component ran, the time and memory
growth, and PASS/FAIL per goal:

  time growth (largest / smallest, components total) <= 1.1 x the data growth
  peak RSS of the process tree at the largest size <= 1.5 x that at the smallest
  the multi-process Beam runner no slower than the in-memory one at the largest size (wall time)

The data come from Debian's `dataset-fashion-mnist` (apt-get install -y dataset-fashion-mnist), which
puts the IDX files in /usr/share/datasets/fashion-mnist.

    python benchmarks/pipeline_scale.py                      # 3k, 30k, 60k and 60k multi-process, 1 epoch
    python benchmarks/pipeline_scale.py --sizes 1000,3000 --epochs 1 --no-multi-processing
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow is first imported

import dataclasses  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import click  # noqa: E402
import numpy as np  # noqa: E402

from freeze_trainer.cli.terminal import QuietCommand  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

from pipeline_speed import LOCAL_RUNNER, REPO_ROOT, WARMUP_IMPORTS, _summary_or_none, _tail, run_child  # noqa: E402

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
MULTI_PROCESSING_BEAM_ARGS = ("--beam-arg=--direct_running_mode=multi_processing", "--beam-arg=--direct_num_workers=2")
GOAL_TIME_SLACK = 1.1  # time growth at most 1.1 x the data growth
GOAL_MEMORY_GROWTH = 1.5


def read_idx(path: str) -> np.ndarray:
    """An IDX file (gzipped) as an array: magic (2 zero bytes, dtype code, dims), big-endian sizes, data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_fashion_examples(output_dir: str, count: int) -> str:
    """The first `count` training images as PNG tf.Examples in one TFRecord file; returns `output_dir`."""
    import tensorflow as tf

    from pipelines.digits_data import to_example

    images = read_idx(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(FASHION_DIR, "train-labels-idx1-ubyte.gz"))
    if count > len(images):
        raise click.UsageError(f"Fashion-MNIST has {len(images)} training images, not {count}")
    os.makedirs(output_dir, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(output_dir, "fashion.tfrecord")) as writer:
        for image, label in zip(images[:count], labels[:count]):
            png = tf.io.encode_png(image[..., np.newaxis]).numpy()
            writer.write(to_example(png, int(label)).SerializeToString())
    return output_dir


def _label(count: int) -> str:
    return f"{count // 1000}k" if count % 1000 == 0 else str(count)


@click.command(cls=QuietCommand)
@click.option("--sizes", default="3000,30000,60000", show_default=True, help="Comma-separated image counts.")
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--multi-processing/--no-multi-processing", default=True, show_default=True,
              help="Also run the largest size with Beam's multi-process DirectRunner.")
@click.option("--work-dir", default=None, help="Where the data and runs go. Default: a new temporary folder.")
def main(sizes, epochs, multi_processing, work_dir):
    counts = sorted(int(size) for size in sizes.split(","))
    if not os.path.exists(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz")):
        sys.exit(f"no Fashion-MNIST in {FASHION_DIR}: apt-get install -y dataset-fashion-mnist")
    work_dir = os.path.abspath(work_dir or tempfile.mkdtemp(prefix="pipeline-scale-"))
    click.echo(f"work folder {work_dir}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; "
               f"{epochs} epoch(s)")
    data = {count: write_fashion_examples(os.path.join(work_dir, "data", _label(count)), count) for count in counts}
    subprocess.run([sys.executable, "-c", WARMUP_IMPORTS], cwd=REPO_ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # untimed: a warm disk cache for all

    plans = [(_label(count), count, ()) for count in counts]
    if multi_processing:
        plans.append((f"{_label(counts[-1])} multi-process", counts[-1], MULTI_PROCESSING_BEAM_ARGS))
    runs = []
    for name, count, beam_args in plans:
        output_dir = os.path.join(work_dir, name.replace(" ", "-"))
        command = [sys.executable, LOCAL_RUNNER, "--output-dir", output_dir, "--data-root", data[count],
                   "--epochs", str(epochs), "--accuracy-floor", "0", *beam_args]
        click.echo(f"{name}: {' '.join(command[1:])}")
        run = run_child("scale", command, output_dir)
        click.echo(f"  exit {run.returncode} after {run.wall_seconds:.1f} s (load average now "
                   f"{os.getloadavg()[0]:.2f}); log {run.log_path}")
        if run.returncode:
            click.echo(_tail(run.log_path))
        summary = _summary_or_none(dataclasses.replace(run, name="ours"))  # this project's pipeline name
        runs.append((name, count, run, summary))

    components = list(dict.fromkeys(c for *_, s in runs if s for c in s.component_seconds))
    click.echo(f"\n  {'seconds':<28}" + "".join(f"{name:>18}" for name, *_ in runs))
    for component in components:
        click.echo(f"  {component:<28}" + "".join(
            f"{s.component_seconds[component]:18.1f}" if s and component in s.component_seconds else f"{'-':>18}"
            for *_, s in runs))
    totals = [sum(s.component_seconds.values()) if s else None for *_, s in runs]
    click.echo(f"  {'components total':<28}" + "".join(f"{t:18.1f}" if t is not None else f"{'-':>18}" for t in totals))
    click.echo(f"  {'subprocess wall time':<28}" + "".join(f"{r.wall_seconds:18.1f}" for _, _, r, _ in runs))
    click.echo(f"  {'peak RSS, tree (MB)':<28}" + "".join(f"{r.peak_bytes / 1e6:18.0f}" for _, _, r, _ in runs))
    click.echo(f"  {'freeze check':<28}" + "".join(f"{str(s and s.freeze_check):>18}" for *_, s in runs))
    click.echo(f"  {'pushed':<28}" + "".join(f"{str(bool(s and s.pushed_to)):>18}" for *_, s in runs))
    click.echo(f"\n  {'peak RSS while running (MB)':<28}" + "".join(f"{name:>18}" for name, *_ in runs))
    for component in components:  # where the memory goes
        peaks = [r.peak_between(*s.component_spans[component]) if s and component in s.component_spans else None
                 for _, _, r, s in runs]
        if any(peaks):
            click.echo(f"  {component:<28}" + "".join(f"{p / 1e6:18.0f}" if p else f"{'-':>18}" for p in peaks))

    ok = all(r.returncode == 0 and s and s.pushed_to for _, _, r, s in runs)
    small, large = runs[0], runs[len(counts) - 1]
    data_growth = large[1] / small[1]
    time_growth = totals[len(counts) - 1] / totals[0] if ok else float("nan")
    wall_growth = large[2].wall_seconds / small[2].wall_seconds
    memory_growth = large[2].peak_bytes / small[2].peak_bytes
    click.echo(f"\n  data growth {data_growth:.1f}x; time growth {time_growth:.2f}x (components total), "
               f"{wall_growth:.2f}x (wall); memory growth {memory_growth:.2f}x")
    if len(counts) > 1:
        per_image = [(t - totals[0]) / (c - counts[0]) * 1000
                     for t, c in zip(totals[1:len(counts)], counts[1:])] if ok else []
        click.echo("  marginal seconds per 1000 images beyond the smallest: "
                   + ", ".join(f"{p:.2f}" for p in per_image))
    goals = [
        (f"time growth <= {GOAL_TIME_SLACK} x data growth ({large[0]} vs {small[0]}, components total)",
         f"{time_growth:.2f}x vs {GOAL_TIME_SLACK * data_growth:.1f}x", time_growth <= GOAL_TIME_SLACK * data_growth),
        (f"peak RSS at {large[0]} <= {GOAL_MEMORY_GROWTH} x that at {small[0]} (process tree)",
         f"{memory_growth:.2f}x", memory_growth <= GOAL_MEMORY_GROWTH),
    ]
    if multi_processing:
        multi = runs[-1]
        ratio = multi[2].wall_seconds / large[2].wall_seconds
        goals.append((f"multi-process Beam runner as fast as the in-memory one at {large[0]} "
                      "(wall, multi/in-memory <= 1.00)", f"{ratio:.2f}", ratio <= 1.0))
    click.echo("\ngoals")
    if not ok:
        goals = [(text, f"{value} (a run failed or did not push)", False) for text, value, _ in goals]
    for text, value, passed in goals:
        click.echo(f"  {'PASS' if passed else 'FAIL'}  {text}: {value}")
    click.echo(json.dumps({name: {"images": count, "returncode": run.returncode,
                                  "wall_seconds": round(run.wall_seconds, 2), "peak_tree_rss_bytes": run.peak_bytes,
                                  "component_seconds": summary.component_seconds if summary else None}
                           for name, count, run, summary in runs} | {"goals": {t: p for t, _, p in goals}}))
    sys.exit(0 if ok and all(p for *_, p in goals) else 1)


if __name__ == "__main__":
    main()
