"""The run report a person opens: report.html in the ModelRun and in the pushed model, from the shared demo
run (conftest.demo_run), parsed as HTML with every embedded picture decoded; and the curves' pieces."""

import base64
import glob
import io
import json
import os
from html.parser import HTMLParser

import pytest
from PIL import Image

from freeze_trainer.keras.training.training_curves import curve_names, read_history
from freeze_trainer.tfx.run_report import CURVES_PICTURE, HISTORY_FILE, REPORT_ASSET, REPORT_DATA_ASSET
from freeze_trainer.tfx.serving_export import EXTRA_ASSETS_DIR

SECTIONS = {"policy", "plan", "curves", "proof", "feature-cache", "metrics", "evaluation"}


class _Page(HTMLParser):
    """The page's section ids, its images' sources and its text."""

    def __init__(self, text: str):
        super().__init__()
        self.sections, self.images, self.words = set(), [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.add(attrs["id"])
        elif tag == "img":
            self.images.append(attrs["src"])

    def handle_data(self, data):
        self.words.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.words).split())


def _page(path: str) -> _Page:
    with open(path) as f:
        return _Page(f.read())


def _decoded(source: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert source.startswith(prefix), source[:40]  # inside the page: the file stands alone
    image = Image.open(io.BytesIO(base64.b64decode(source[len(prefix):], validate=True)))
    image.load()  # decodes every pixel; a truncated PNG raises
    return image


@pytest.fixture(scope="module")
def reports(demo_run):
    output_dir, result = demo_run
    [model_run_report] = glob.glob(os.path.join(output_dir, "pipeline_root", "FreezeTrainer", "model_run", "*",
                                                REPORT_ASSET))
    [pushed_report] = glob.glob(os.path.join(output_dir, "serving", "*", EXTRA_ASSETS_DIR, REPORT_ASSET))
    return model_run_report, pushed_report, result


def test_both_reports_hold_every_section_and_their_pictures_decode(reports):
    for path in reports[:2]:
        page = _page(path)
        assert page.sections == SECTIONS, path
        assert len(page.images) == 2, path  # the plan and the curves
        plan, curves = map(_decoded, page.images)
        assert plan.width >= 1000 and curves.width >= 500
        assert "passed" in page.text and "- freeze: {base: true}" in page.text  # the proof and the policy


def test_the_pushed_report_holds_the_evaluation_and_the_trainers_says_where_it_will_be(reports):
    model_run_report, pushed_report, _ = reports
    evaluation = _page(pushed_report).text.split("Evaluation (TFMA) and blessing")[1]
    assert evaluation.strip().startswith("Blessed , compared with no baseline (the first model).")
    assert "sparse_categorical_accuracy" in evaluation
    with open(os.path.join(os.path.dirname(pushed_report), REPORT_DATA_ASSET)) as f:
        assert json.load(f)["evaluation"]["blessed"] is True  # the data beside the page says the same
    assert "the Pusher writes" in _page(model_run_report).text


def test_the_summary_names_the_report_and_the_tensorboard_command(reports):
    model_run_report, pushed_report, result = reports
    assert f"report: {pushed_report}" in result.stdout
    assert f"tensorboard --logdir {os.path.dirname(model_run_report)}" in result.stdout


def test_the_trainer_recorded_every_epoch_for_the_curves(reports):
    model_run = os.path.dirname(reports[0])
    with Image.open(os.path.join(model_run, CURVES_PICTURE)) as picture:
        picture.load()
        assert picture.format == "PNG" and picture.width >= 500
    history = read_history(os.path.join(model_run, HISTORY_FILE))
    assert [row["epoch"] for row in history] == list(range(len(history))) and history
    assert curve_names(history)[0] == "loss" and len(curve_names(history)) == 2  # the loss and the task's metric
    assert all("val_loss" in row for row in history)


def test_a_resumed_epoch_keeps_its_last_row(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_loss\n0,2.0,2.1\n1,1.5,1.7\n1,1.4,1.6\n2,1.2,\n")
    assert read_history(str(path)) == [
        {"epoch": 0, "loss": 2.0, "val_loss": 2.1},
        {"epoch": 1, "loss": 1.4, "val_loss": 1.6},
        {"epoch": 2, "loss": 1.2},
    ]
    assert read_history(str(tmp_path / "none.csv")) == []
