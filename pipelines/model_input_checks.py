"""Checks the model's inputs against the Transform's outputs before any pipeline component runs.

The Transform's outputs are known before it runs: its `preprocessing_fn` (the user's module, or the
bundled image one) is traced the way TFT traces it, analyzers not run, on the raw feature spec the data
check read from `--data-root` (what SchemaGen will infer). The model is then built as the trainer builds
it, and its inputs are bound to those outputs as the trainer binds them (DataContract.inputs): a model with
one input reads `transformed_feature_key`, one with several each reads the output of its own name. A
missing or mis-shaped input fails in one line naming every input and every Transform output (a click usage
error, exit status 2), instead of in the trainer after ExampleGen, StatisticsGen and Transform have run.
"""

from __future__ import annotations

import json
import tempfile
from typing import Callable

import click
import tensorflow as tf

from freeze_trainer.tfx.data_contract import Shape
from freeze_trainer.tfx.trainer_config import TrainerConfig


def transform_outputs(raw_feature_spec: dict, transform_module: str | None, custom_config: dict
                      ) -> dict[str, Shape] | None:
    """Each Transform output's shape (None: no fixed shape), from tracing its `preprocessing_fn` on
    `raw_feature_spec`; None where it does not trace here (the Transform says why when it runs)."""
    from tensorflow_transform import impl_helper
    from tfx.components.transform import executor_utils, labels
    from tfx.components.util import udf_utils

    from pipelines.freeze_pipeline import PREPROCESSING_FN

    try:
        fn = udf_utils.get_fn({"module_file": transform_module} if transform_module else
                              {labels.PREPROCESSING_FN: PREPROCESSING_FN}, labels.PREPROCESSING_FN)
        fn = executor_utils.MaybeBindCustomConfig({labels.CUSTOM_CONFIG: json.dumps(custom_config)}, fn)
        with tempfile.TemporaryDirectory() as scratch:  # TFT writes dummy analyzer assets while tracing
            _, _, outputs = impl_helper.trace_preprocessing_function(
                fn, impl_helper.get_type_specs_from_feature_specs(raw_feature_spec), use_tf_compat_v1=False,
                base_temp_dir=scratch)
    except Exception:  # noqa: BLE001 (a user module's own failure is the Transform's to report, with its traceback)
        return None
    return {name: tuple(tensor.shape[1:]) if isinstance(tensor, tf.Tensor) and tensor.shape[1:].is_fully_defined()
            else None for name, tensor in outputs.items()}


def check_model_inputs(config: TrainerConfig, raw_feature_spec: dict, transform_module: str | None,
                       build_model: Callable[..., tf.keras.Model] | None, image_size: int) -> None:
    """Raises click.UsageError when the model's inputs do not find the Transform outputs they read (see the
    module doc); `raw_feature_spec` is what `check_data_root` read."""
    from freeze_trainer.tfx.trainer_config import CUSTOM_BACKBONE
    from freeze_trainer.tfx.trainer_model import USER_ERRORS, plan_for_config

    from pipelines.freeze_pipeline import transform_custom_config

    if transform_module is None and config.backbone != CUSTOM_BACKBONE and build_model is None:
        return  # the bundled Transform makes the images a keras.applications base is built for
    outputs = transform_outputs(raw_feature_spec, transform_module,
                                transform_custom_config(image_size, config.feature_key, config.label_key))
    if outputs is None:
        return
    features = {name: shape for name, shape in outputs.items() if name != config.model_label_key}
    try:
        plan_for_config(config, None, build_model=build_model, features=features)
    except USER_ERRORS as err:
        raise click.UsageError(str(err)) from None
