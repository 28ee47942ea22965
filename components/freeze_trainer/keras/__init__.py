"""Freeze policies in plain Keras, without TFX: plan, apply, train with the proof.

Three calls, in the spirit of Lightning's `BaseFinetuning` helpers and timm's `freeze`/`unfreeze`:
`plan_policy` resolves a policy against a model into one `PhasePlan` per phase (pure data: which layer
trains, at which rate), `apply_plan` sets Keras' `trainable` flags for one phase, and `train_with_proof`
trains every phase and proves that what was frozen did not move.

The model is a pretrained base, nested as one Keras model, under a new head named as
`build_classifier` names it:

>>> import numpy as np, tensorflow as tf
>>> from freeze_trainer import parse_policy
>>> from freeze_trainer.keras import apply_plan, build_classifier, plan_policy, train_with_proof
>>> base = tf.keras.Sequential([tf.keras.Input((8, 8, 3)), tf.keras.layers.Conv2D(4, 3, name="conv_a"),
...                             tf.keras.layers.Conv2D(4, 3, name="conv_b")], name="base")
>>> model = build_classifier(base, None, num_classes=3, bn_inference_mode=True)
>>> policy = parse_policy('{"version": 1, "phases": ['
...     '{"name": "head", "epochs": 1, "rules": [{"freeze": {"base": true}}]},'
...     '{"name": "top", "epochs": 1, "rules": [{"freeze": {"base": true}}, {"unfreeze": {"names": ["conv_b"]}}]}]}')
>>> plans = plan_policy(policy, model, default_learning_rate=1e-2)
>>> [plan.phase.name for plan in plans], [plan.is_trainable("conv_b") for plan in plans]
(['head', 'top'], [False, True])
>>> apply_plan(model, plans[0]); [v.name for v in model.trainable_variables]
['head_classifier/kernel:0', 'head_classifier/bias:0']
>>> images, labels = np.random.rand(16, 8, 8, 3).astype("float32"), np.arange(16) % 3
>>> data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
>>> checks, metrics = train_with_proof(model, plans, data, verbose=0)
>>> [(check.phase, check.passed, check.changed_frozen) for check in checks]
[('head', True, ()), ('top', True, ())]
"""

from freeze_trainer.keras.models.classifier_model import build_classifier
from freeze_trainer.keras.planning.freeze_plan import PhasePlan, VariableSplit, apply_plan, plan_policy
from freeze_trainer.keras.training.freeze_proof import FreezeCheck, FreezeViolation
from freeze_trainer.keras.training.with_proof import train_with_proof

__all__ = [
    "FreezeCheck",
    "FreezeViolation",
    "PhasePlan",
    "VariableSplit",
    "apply_plan",
    "build_classifier",
    "plan_policy",
    "train_with_proof",
]
