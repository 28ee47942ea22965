"""The pipeline's own parameters, beside the trainer's table: declared once, with their defaults and bounds,
for `create_pipeline`, the local runner's options and the Kubeflow compiler's flags (`model_options`).

This module imports no TensorFlow or TFX, so command-line `--help` stays fast.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class PipelineOptions(BaseModel):
    """What the pipeline does around the trainer: the bundled Transform's image size, the Trainer's
    `train_args`/`eval_args` steps, the Evaluator's gate and the retraining mode. Fixed when a pipeline is
    built (compiled): none is a pipeline parameter of a compiled spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # 224 px: the input size the keras.applications backbones were trained at. The bound keeps a typo
    # (10000) from decoding 300 MB per image.
    image_size: int = Field(224, ge=8, le=1024, description="Side of the square images the bundled Transform makes.")
    train_steps: PositiveInt | None = Field(None, description="train_args.num_steps: training steps in all.")
    eval_steps: PositiveInt | None = Field(None, description="eval_args.num_steps: evaluation batches.")
    # No upper bound: for a regression task the gate is a ceiling on the mean squared error.
    accuracy_floor: float = Field(
        0.5, ge=0.0, allow_inf_nan=False,
        description="The Evaluator blesses only models whose gate metric reaches this: accuracy (AUC for binary; "
                    "for regression, a ceiling on MSE).",
    )
    max_accuracy_drop: float = Field(
        0.02, ge=0.0, allow_inf_nan=False,
        description="... and whose gate metric is at most this much worse than the last blessed model's.",
    )
    retrain: bool = Field(
        False,
        description="Warm-start from the latest blessed model and push only a candidate that passes the gate "
                    "against it; a rejected candidate is not an error.",
    )
