"""Screenshots of what a person opens after a run: the run report (report.html) and a plan picture, rendered
by headless Chromium (Debian: `apt-get install -y chromium`), so a reviewer sees them without a browser.

    make plan ARGS="--picture plan.svg"          # the two-phase policy's plan picture
    python scripts/screenshot_report.py --run runs plan.svg --out-dir screenshots

`--run` takes a local runner's output folder and adds its newest report (a pushed model's, else a
trainer's). Each file becomes `<out-dir>/<name>.png`.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile

import click

REPORT_WINDOW = (1280, 4200)  # wide enough for the report's tables, tall enough for a two-phase report
_SVG_SIZE = re.compile(r'<svg[^>]*\swidth="([\d.]+)pt"[^>]*\sheight="([\d.]+)pt"')


def chromium() -> str:
    for path in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")):
        if path:
            return path
    raise click.ClickException("no Chromium found: apt-get install -y chromium")


def window_for(page: str) -> tuple[int, int]:
    """The report's window, or a picture's own size (matplotlib writes SVG sizes in points)."""
    if page.lower().endswith(".svg"):
        with open(page) as f:
            size = _SVG_SIZE.search(f.read(4096))
        if size:
            return tuple(round(float(points) * 96 / 72) + 16 for points in size.groups())
    return REPORT_WINDOW


def screenshot(page: str, png: str) -> None:
    """Renders `page` (an .html or .svg file) into `png` with headless Chromium."""
    window = window_for(page)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        # --no-sandbox: containers run as root, where Chromium's sandbox refuses to start.
        result = subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}", f"--screenshot={png}",
             "file://" + os.path.abspath(page)],
            capture_output=True, text=True, timeout=120,
        )
    if result.returncode or not os.path.exists(png):
        raise click.ClickException(f"{page}: Chromium failed: {result.stderr.strip().splitlines()[-1:]}")


def latest_report(output_dir: str) -> str:
    """The newest run report under a local runner's output folder: a pushed model's, else a trainer's."""
    reports = glob.glob(os.path.join(output_dir, "serving", "*", "assets.extra", "report.html"))
    reports = reports or glob.glob(os.path.join(output_dir, "pipeline_root", "FreezeTrainer", "model_run", "*",
                                                "report.html"))
    if not reports:
        raise click.ClickException(f"{output_dir}: no report.html from a finished run")
    return max(reports, key=os.path.getmtime)


@click.command()
@click.argument("pages", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="A local runner's output folder: screenshot its latest report and its policy's plan picture.")
@click.option("--out-dir", default="screenshots", show_default=True)
def main(pages: tuple[str, ...], run_dir: str | None, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    for page in [*pages, *([latest_report(run_dir)] if run_dir else [])]:
        png = os.path.join(out_dir, os.path.splitext(os.path.basename(page))[0] + ".png")
        screenshot(page, png)
        click.echo(png)


if __name__ == "__main__":
    main()
