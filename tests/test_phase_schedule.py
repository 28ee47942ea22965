"""The phase schedule: one value that numbers every phase's epochs, words its length and decides its cache
use, which the loops, the progress line and every report read."""

import json

from freeze_trainer.keras import plan_policy
from freeze_trainer.keras.planning.phase_schedule import POOLED_FEATURES, build_schedule
from freeze_trainer.policy.freeze_policy import parse_policy
from freeze_trainer.tfx.run_report import report_data
from freeze_trainer.tfx.trainer_config import TrainerConfig
from tests.model_builders import dense_classifier


def _plans():
    model = dense_classifier()
    policy = parse_policy(json.dumps({"version": 1, "phases": [
        {"name": "head", "epochs": 3, "rules": [{"freeze": {"base": True}}]},
        {"name": "all", "epochs": 1, "rules": [{"unfreeze": {"base": True}}]},
        {"name": "polish", "steps": 250, "rules": [{"unfreeze": {"base": True}}]}]}))
    return plan_policy(policy, model, 0.01, 1)


def test_one_numbering_one_length_and_num_steps_spread_over_the_counted_epochs():
    schedule = build_schedule(_plans(), total_steps=23)
    assert [(phase.first_epoch, phase.end_epoch) for phase in schedule] == [(0, 3), (3, 4), (4, 5)]
    assert [phase.length_text for phase in schedule] == ["3 epochs", "1 epoch", "250 steps"]
    assert [phase.epoch_text for phase in schedule] == ["epochs 1-3", "epoch 4", "epoch 5"]
    # 23 steps over the 4 counted epochs: 5 each, the last counted epoch 3 more; the steps phase its own.
    assert schedule.steps_per_epoch == 5
    assert [(phase.steps_per_epoch, phase.remainder_steps) for phase in schedule] == [(5, 0), (5, 3), (250, 0)]
    assert [sorted(phase.newly_trainable) for phase in schedule] == [["out"], ["enc_1"], []]


def test_the_cache_is_decided_once_and_the_report_says_the_same():
    plans = _plans()
    cached = build_schedule(plans)
    assert cached[0].cache.cut == POOLED_FEATURES and cached.caches
    assert cached[1].cache is None and cached[1].cache_blocker
    off = build_schedule(plans, feature_cache=False)
    assert not off.caches and all(phase.cache_reason == "off (feature_cache: off)" for phase in off)
    # With the cache off, no line of the report says the cache served (the summary beside it included).
    config = TrainerConfig.from_parameters(feature_cache="off")
    report = {"base_name": "m", "phases": []}
    data = report_data(config, plans, report, [], "/tmp")
    assert not any("cached" in phase["summary"] or "cached" in phase["feature_cache"] for phase in data["phases"])
    assert [phase["length"] for phase in data["phases"]] == ["3 epochs", "1 epoch", "250 steps"]
