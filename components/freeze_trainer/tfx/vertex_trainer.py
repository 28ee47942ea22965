"""FreezeTrainer as a Vertex AI custom training job, through TFX's Vertex Trainer extension.

The pipeline task runs `VertexExecutor`, which submits a Vertex CustomJob (worker pools, GPUs) and waits.
Each replica of that job runs `python -m tfx.scripts.run_executor --executor_class_path
freeze_trainer.tfx.executor.Executor ...`: this project's executor, with the same validation and
freeze proof as the local run; the chief exports, and `VertexExecutor` copies the exported freeze report
onto the Model artifact once the job has ended. Vertex sets `TF_CONFIG` in every replica's environment;
the executor runs in that process, so the distribution code in run_fn sees it.

Kept apart from `component.py` because the extension imports the Google Cloud clients (slow), which the
local runner never needs. Lives under `components/` so the compiled spec's executor class path is
importable in the pipeline image, where this package is installed.
"""

from __future__ import annotations

from tfx.dsl.components.base import executor_spec
from tfx.extensions.google_cloud_ai_platform.trainer import executor as vertex_trainer_executor

from freeze_trainer.tfx.component import FreezeTrainer
from freeze_trainer.tfx.executor import (
    Executor,
    read_hyperparameters,
    record_exported_freeze_report,
    trainer_config_from_exec_properties,
)


class VertexExecutor(vertex_trainer_executor.GenericExecutor):
    """Launches the Vertex job; the job's replicas run `Executor` (not TFX's stock trainer executor)."""

    def _GetExecutorClass(self):
        return Executor

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        # A bad policy fails here, before a job (and its machines) is requested.
        config = trainer_config_from_exec_properties(exec_properties, read_hyperparameters(input_dict))
        super().Do(input_dict, output_dict, exec_properties)
        # The replicas' `run_executor` processes write the model, not this task's output metadata: the
        # properties are recorded here, from the report the chief exported.
        record_exported_freeze_report(output_dict, config)


class VertexFreezeTrainer(FreezeTrainer):
    """FreezeTrainer whose training runs as a Vertex custom job.

    `custom_config` must hold the extension's keys: `ai_platform_training_args` (project and the
    CustomJob `job_spec` with `worker_pool_specs`), `ai_platform_enable_vertex` and
    `ai_platform_vertex_region`; `kubeflow.pipeline_definition.VertexTraining` builds them from typed options.
    """

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(VertexExecutor)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The node keeps FreezeTrainer's id, so task names, resources and run summaries do not depend on
        # where training runs.
        self.with_id(FreezeTrainer.__name__)
