"""Policy search: TFX's Tuner with the freeze-aware `tuner_fn` before FreezeTrainer, in a real local pipeline.

A 4-trial grid over head_then_top.json's fine-tune phase (its rate x the block it unfreezes): every trial
has the same head phase, so the search trains it once and the other three trials start after it. The best
values become the Tuner's best_hyperparameters, which FreezeTrainer applies and records on the Model.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from google.protobuf import json_format

from tests.conftest import REPO_ROOT, run_local_runner

SPACE = """\
version: 1
algorithm: random
objective: val_accuracy
hyperparameters:
  policy.phases.1.learning_rate: [1.0e-3, 1.0e-4]
  policy.phases.1.rules.1.unfreeze:
    - {group: top}
    - {group: block_16}
"""
POLICY = os.path.join(REPO_ROOT, "kubeflow", "policies", "head_then_top.json")
TRIAL_LINE = re.compile(r"^trial (\d+)/(\d+): (.*)  val_accuracy (\S+) in (\S+) s \(reused: (.*)\)$", re.M)


def _search_args(output_dir: str, space_path: str) -> list[str]:
    return ["--output-dir", output_dir, "--sample", "150", "--epochs", "1", "--accuracy-floor", "0",
            "--freeze-policy", POLICY, "--search", space_path]


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("search_run"))
    space_path = os.path.join(output_dir, "..", "space.yaml")
    with open(space_path, "w") as f:
        f.write(SPACE)
    result = run_local_runner(*_search_args(output_dir, space_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return output_dir, result


def test_one_line_per_trial_and_the_head_phase_trained_once(search_run):
    _, result = search_run
    trials = TRIAL_LINE.findall(result.stdout)
    print("\n".join(line for line in result.stdout.splitlines() if line.startswith(("trial ", "best:"))))
    assert [(number, total) for number, total, *_ in trials] == [(str(n), "4") for n in range(1, 5)]
    # The first trial trains the head; the three others start after it: every one shares its head phase.
    assert [reused for *_, reused in trials] == ["nothing", "head", "head", "head"]
    values = {text for _, _, text, *_ in trials}
    assert len(values) == 4  # a grid of 4: every combination once
    assert all("policy.phases.1.learning_rate=" in text and "policy.phases.1.rules.1.unfreeze={" in text
               for text in values)


def test_best_values_are_applied_and_recorded_on_the_model(search_run):
    output_dir, result = search_run
    from pipelines.run_summary import summarize_latest_run

    trials = TRIAL_LINE.findall(result.stdout)
    best_score = max(float(score) for *_, score, _, _ in trials)
    summary = summarize_latest_run(os.path.join(output_dir, "metadata.sqlite"), "freeze-trainer-demo")
    recorded = json_format.MessageToDict(summary.model_properties["hyperparameters"])
    # The selector comes back as the space wrote it (an object), not as KerasTuner's JSON text.
    assert recorded["policy.phases.1.rules.1.unfreeze"] in ({"group": "top"}, {"group": "block_16"})
    assert recorded["policy.phases.1.learning_rate"] in (1e-3, 1e-4)
    best_lines = [line for line in result.stdout.splitlines() if line.startswith("best: ")]
    assert best_lines and f"val_accuracy {best_score:.3f}" in best_lines[0]
    # FreezeTrainer trained the best trial's policy: its exported policy holds the chosen block and rate.
    policy = json.loads(summary.model_properties["freeze_policy"])
    assert policy["phases"][1]["rules"][1]["unfreeze"] == recorded["policy.phases.1.rules.1.unfreeze"]
    assert policy["phases"][1]["learning_rate"] == recorded["policy.phases.1.learning_rate"]


def test_the_tuner_keeps_every_trial_and_the_report_shows_them(search_run):
    """FreezeTuner's `tuner_results` output holds `trials.json` (every trial's values, objective, seconds and
    reused phases); FreezeTrainer takes it, and its run report has the trials table and their plot."""
    output_dir, result = search_run
    (trials_path,) = glob.glob(os.path.join(output_dir, "pipeline_root", "FreezeTuner", "tuner_results", "*",
                                            "trials.json"))
    with open(trials_path) as f:
        trials = json.load(f)
    assert [trial["trial"] for trial in trials] == [1, 2, 3, 4]  # max_trials rows: the grid of 4
    lines = {int(number): (float(score), float(seconds), reused)
             for number, _, _, score, seconds, reused in TRIAL_LINE.findall(result.stdout)}
    for trial in trials:
        score, seconds, reused = lines[trial["trial"]]
        assert set(trial["values"]) == {"policy.phases.1.learning_rate", "policy.phases.1.rules.1.unfreeze"}
        assert round(trial["objective"]["val_accuracy"], 3) == score and trial["direction"] == "max"
        assert abs(trial["seconds"] - seconds) < 0.1
        assert (", ".join(trial["reused"]) or "nothing") == reused
    (report_path,) = glob.glob(os.path.join(output_dir, "pipeline_root", "FreezeTrainer", "model_run", "*",
                                            "report.html"))
    with open(report_path) as f:
        page = f.read()
    section = page[page.index('<section id="search">'):page.index("</section>", page.index('<section id="search">'))]
    assert section.count("<tr>") == 1 + len(trials)  # the header and one row a trial
    assert section.count("<td><strong>applied</strong></td>") == 1  # the trial whose values it applied
    assert 'alt="The objective by trial, and the best so far" src="data:image/png;base64,' in section


def test_an_unknown_key_is_refused_before_any_component_runs(tmp_path):
    space_path = tmp_path / "space.yaml"
    space_path.write_text("version: 1\nhyperparameters:\n  policy.batchnrom: [frozen, affine]\n")
    output_dir = tmp_path / "run"
    result = run_local_runner(*_search_args(str(output_dir), str(space_path)))
    assert result.returncode == 2
    assert "hyperparameters.policy.batchnrom: unknown hyperparameter; closest: policy.batchnorm" in result.stderr
    assert "Traceback" not in result.stderr
    assert not output_dir.exists()  # no data written, no pipeline started


def test_a_killed_search_resumes_its_finished_trials(tmp_path, search_run):
    """Killed after two trials, a rerun on the same folder runs only the other two (KerasTuner's oracle
    state under `<output-dir>/search`); its first trial trains the head again on a newly built model (the
    shared state and the built model are held in memory by one search), the next one reuses both. Each ends
    as the same values did in the uninterrupted search, where they trained on the model two trials before
    them had trained."""
    space_path = tmp_path / "space.yaml"
    space_path.write_text(SPACE)
    args = _search_args(str(tmp_path / "run"), str(space_path))
    runner = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, "local_runner.py"), *args], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    # Killed once the oracle holds trial 2 as finished (it records a trial after the trial's line), during trial 3.
    finished = os.path.join(str(tmp_path / "run"), "search", "*", "search_*", "trial_1", "trial.json")
    try:
        for line in runner.stdout:
            if line.startswith("trial 2/4: "):
                break
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(
                '"COMPLETED"' in open(path).read() for path in glob.glob(finished)):
            time.sleep(0.2)
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
    result = run_local_runner(*args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    trials = TRIAL_LINE.findall(result.stdout)
    assert [(number, reused) for number, *_, reused in trials] == [("3", "nothing"), ("4", "head")]
    uninterrupted = {text: score for _, _, text, score, *_ in TRIAL_LINE.findall(search_run[1].stdout)}
    assert {text: score for _, _, text, score, *_ in trials} == {text: uninterrupted[text] for _, _, text, *_ in trials}


def test_unreadable_trials_leave_the_report_without_its_search_section(tmp_path):
    """The report's trials are a side output: a broken `trials.json` is a warning, never a failed run."""
    from tfx.types import standard_artifacts

    from freeze_trainer.tfx.search_report import read_trials

    results = standard_artifacts.TunerResults()
    results.uri = str(tmp_path)
    (tmp_path / "trials.json").write_text("{not json")
    assert read_trials({"tuner_results": [results]}) is None
    (tmp_path / "trials.json").write_text('[{"trial": 2}, {"trial": 1}]')
    assert read_trials({"tuner_results": [results]}) == [{"trial": 1}, {"trial": 2}]
    assert read_trials({}) is None
