"""freeze_trainer: a TFX Trainer that fine-tunes pretrained Keras models under a declarative freeze policy.

    from freeze_trainer import FreezeTrainer

    trainer = FreezeTrainer(
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        freeze_policy='{"version": 1, "rules": [{"freeze": {"base": true}}]}',
        backbone="MobileNetV2",
        backbone_weights="gs://bucket/backbone.keras",
    )

The layers, each importing nothing from the ones after it:

- `freeze_trainer.policy`: the policy language (models, recipes, parsing, schema); no TensorFlow.
- `freeze_trainer.keras`: plan, apply and train with the proof in plain Keras; no TFX.
- `freeze_trainer.tfx`: the component, its executor and run_fn, the parameter table, export.
- `freeze_trainer.cli`: the `freeze-policy` command.

The public names below load their layer on first use, so `import freeze_trainer` stays cheap.
"""

from __future__ import annotations

import importlib

from freeze_trainer.legacy_keras import require_legacy_keras
from freeze_trainer.tfma_addons import stand_in_for_missing_tfma_addons

require_legacy_keras()  # before anything here can import TensorFlow
stand_in_for_missing_tfma_addons()  # before anything here can import TFX, which imports TFMA

_EXPORTS = {
    "FreezeTrainer": "freeze_trainer.tfx.component",
    "TrainerConfig": "freeze_trainer.tfx.trainer_config",
    "FreezePolicy": "freeze_trainer.policy",
    "PolicyError": "freeze_trainer.policy",
    "parse_policy": "freeze_trainer.policy",
    "plan_policy": "freeze_trainer.keras",
    "apply_plan": "freeze_trainer.keras",
    "train_with_proof": "freeze_trainer.keras",
    "FreezeViolation": "freeze_trainer.keras",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'freeze_trainer' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
