"""Reads a finished local run back from ML Metadata: per-component wall time, evaluation, push, run report."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from freeze_trainer.tfx.run_report import REPORT_ASSET, overall_metrics
from freeze_trainer.tfx.serving_export import EXTRA_ASSETS_DIR

ACCURACY = "sparse_categorical_accuracy"


@dataclass
class RunSummary:
    run_id: str
    component_spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # start, end: Unix seconds
    metrics: dict[str, float] = field(default_factory=dict)  # TFMA's overall metrics
    blessed: bool = False
    pushed_to: str | None = None
    model_properties: dict[str, object] = field(default_factory=dict)
    model_run_dir: str | None = None  # the trainer's ModelRun: TensorBoard logs, its run report
    pushed_model_dir: str | None = None

    @property
    def component_seconds(self) -> dict[str, float]:
        return {name: end - start for name, (start, end) in self.component_spans.items()}

    @property
    def accuracy(self) -> float | None:
        return self.metrics.get(ACCURACY)

    @property
    def report_path(self) -> str | None:
        """The most complete run report: the pushed model's, or the Pusher's copy for a model it did not
        push (both with the evaluation), or else the trainer's."""
        candidates = [
            self.pushed_to and os.path.join(self.pushed_to, EXTRA_ASSETS_DIR, REPORT_ASSET),
            self.pushed_model_dir and os.path.join(self.pushed_model_dir, REPORT_ASSET),
            self.model_run_dir and os.path.join(self.model_run_dir, REPORT_ASSET),
        ]
        return next((path for path in candidates if path and os.path.exists(path)), None)

    def lines(self, per_component: bool = True) -> list[str]:
        """The summary; without `per_component`, only the total of the components' seconds."""
        out = [f"run {self.run_id}"]
        if per_component:
            out += [f"  {name:<32} {seconds:7.1f} s" for name, seconds in self.component_seconds.items()]
        out.append(f"  {'components total':<32} {sum(self.component_seconds.values()):7.1f} s")
        out += [f"  eval {name + ' (TFMA)':<27} {value:.4f}" for name, value in self.metrics.items()]
        out.append(f"  blessed: {self.blessed}   pushed to: {self.pushed_to or 'not pushed'}")
        out.append(f"  freeze check: {self.model_properties.get('freeze_check')}")
        report_path = self.report_path  # looked up on disk: once
        if report_path:
            out.append(f"  report: {report_path}")
        if self.model_run_dir:
            out.append(f"  TensorBoard: tensorboard --logdir {self.model_run_dir}")
        return out


def _custom(artifact, key: str):
    value = artifact.custom_properties.get(key)
    if value is None:
        return None
    kind = value.WhichOneof("value")
    if kind == "struct_value":
        return value.struct_value
    return getattr(value, kind)


def summarize_latest_run(metadata_path: str, pipeline_name: str) -> RunSummary:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    runs = [c for c in store.get_contexts_by_type("pipeline_run") if c.name]
    pipeline = store.get_context_by_type_and_name("pipeline", pipeline_name)
    pipeline_executions = {e.id for e in store.get_executions_by_context(pipeline.id)}
    runs = [r for r in runs if {e.id for e in store.get_executions_by_context(r.id)} & pipeline_executions]
    run = max(runs, key=lambda context: context.create_time_since_epoch)
    summary = RunSummary(run_id=run.name)
    executions = sorted(store.get_executions_by_context(run.id), key=lambda e: e.create_time_since_epoch)
    for execution in executions:
        node = execution.custom_properties.get("__node_id__") or execution.properties.get("component_id")
        name = node.string_value if node is not None else store.get_execution_types_by_id([execution.type_id])[0].name
        summary.component_spans[name.split(".")[-1]] = (
            execution.create_time_since_epoch / 1000.0, execution.last_update_time_since_epoch / 1000.0)
    events = store.get_events_by_execution_ids([e.id for e in executions])
    outputs = [e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT]
    for artifact in store.get_artifacts_by_id(outputs):
        type_name = store.get_artifact_types_by_id([artifact.type_id])[0].name
        if type_name == "Model":
            summary.model_properties = {key: _custom(artifact, key) for key in artifact.custom_properties}
        elif type_name == "ModelBlessing":
            summary.blessed = bool(_custom(artifact, "blessed"))
        elif type_name == "ModelEvaluation":
            summary.metrics = overall_metrics(artifact.uri)
        elif type_name == "ModelRun":
            summary.model_run_dir = artifact.uri
        elif type_name == "PushedModel":
            summary.pushed_model_dir = artifact.uri
            if _custom(artifact, "pushed"):
                summary.pushed_to = _custom(artifact, "pushed_destination")
    return summary
