"""FreezeTrainer as a Vertex AI custom training job, through TFX's Vertex Trainer extension.

The pipeline task runs `VertexExecutor`, which submits a Vertex CustomJob (worker pools, GPUs) and waits.
Each replica of that job runs `python -m tfx.scripts.run_executor --executor_class_path
components.freeze_trainer.executor.Executor ...`: this project's executor, with the same validation,
freeze proof and MLMD properties as the local run. Vertex sets `TF_CONFIG` in every replica's
environment; the executor runs in that process, so whatever distribution code run_fn has sees it.

Kept apart from `component.py` because the extension imports the Google Cloud clients (slow), which the
local runner never needs. Lives under `components/` so the compiled spec's executor class path is
importable in the pipeline image, where this package is installed.
"""

from __future__ import annotations

from tfx.dsl.components.base import executor_spec
from tfx.extensions.google_cloud_ai_platform.trainer import executor as vertex_trainer_executor

from components.freeze_trainer.component import FreezeTrainer
from components.freeze_trainer.executor import Executor


class VertexExecutor(vertex_trainer_executor.GenericExecutor):
    """Launches the Vertex job; the job's replicas run `Executor` (not TFX's stock trainer executor)."""

    def _GetExecutorClass(self):
        return Executor


class VertexFreezeTrainer(FreezeTrainer):
    """FreezeTrainer whose training runs as a Vertex custom job.

    `custom_config` must hold the extension's keys: `ai_platform_training_args` (project and the
    CustomJob `job_spec` with `worker_pool_specs`), `ai_platform_enable_vertex` and
    `ai_platform_vertex_region`; `kubeflow/vertex_job.py` builds them from typed options.
    """

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(VertexExecutor)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The node keeps FreezeTrainer's id, so task names, resources and run summaries do not depend on
        # where training runs.
        self.with_id(FreezeTrainer.__name__)
