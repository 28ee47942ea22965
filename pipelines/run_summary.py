"""Reads a finished local run back from ML Metadata: per-component wall time, evaluation, push."""

from __future__ import annotations

from dataclasses import dataclass, field

import tensorflow_model_analysis as tfma
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

ACCURACY = "sparse_categorical_accuracy"
_BOOKKEEPING = {"example_count", "weighted_example_count"}


@dataclass
class RunSummary:
    run_id: str
    component_seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # TFMA's overall metrics
    blessed: bool = False
    pushed_to: str | None = None
    model_properties: dict[str, object] = field(default_factory=dict)

    @property
    def accuracy(self) -> float | None:
        return self.metrics.get(ACCURACY)

    def lines(self) -> list[str]:
        out = [f"run {self.run_id}"]
        out += [f"  {name:<32} {seconds:7.1f} s" for name, seconds in self.component_seconds.items()]
        out.append(f"  {'components total':<32} {sum(self.component_seconds.values()):7.1f} s")
        out += [f"  eval {name + ' (TFMA)':<27} {value:.4f}" for name, value in self.metrics.items()]
        out.append(f"  blessed: {self.blessed}   pushed to: {self.pushed_to or 'not pushed'}")
        out.append(f"  freeze check: {self.model_properties.get('freeze_check')}")
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
        summary.component_seconds[name.split(".")[-1]] = (
            execution.last_update_time_since_epoch - execution.create_time_since_epoch
        ) / 1000.0
    events = store.get_events_by_execution_ids([e.id for e in executions])
    outputs = [e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT]
    for artifact in store.get_artifacts_by_id(outputs):
        type_name = store.get_artifact_types_by_id([artifact.type_id])[0].name
        if type_name == "Model":
            summary.model_properties = {key: _custom(artifact, key) for key in artifact.custom_properties}
        elif type_name == "ModelBlessing":
            summary.blessed = bool(_custom(artifact, "blessed"))
        elif type_name == "ModelEvaluation":
            metrics = tfma.load_eval_result(artifact.uri).slicing_metrics[0][1]
            summary.metrics = {name: value["doubleValue"] for name, value in metrics[""][""].items()
                               if name not in _BOOKKEEPING and "doubleValue" in value}
        elif type_name == "PushedModel" and _custom(artifact, "pushed"):
            summary.pushed_to = _custom(artifact, "pushed_destination")
    return summary
