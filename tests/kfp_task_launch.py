"""Runs one task of a compiled KFP v2 / Vertex pipeline spec the way the KFP launcher runs its pod.

The launcher resolves the task's inputs (upstream artifacts, pipeline parameters, constants) into an
`ExecutorInput`, substitutes it for the `{{$}}` placeholder in the container arguments and runs the
container command. Here the upstream artifacts come from a local pipeline run's ML Metadata, converted
with TFX's own `to_runtime_artifact`, and the container is a subprocess of this virtualenv's Python.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import yaml
from google.protobuf import json_format, struct_pb2
from kfp.pipeline_spec import pipeline_spec_pb2
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils
from tfx.types import artifact_utils

EXECUTOR_INPUT_PLACEHOLDER = "{{$}}"


def load_pipeline_spec(path: str) -> pipeline_spec_pb2.PipelineSpec:
    """Parses a compiled `.yaml` PipelineSpec or `.json` PipelineJob strictly: an unknown field fails."""
    with open(path) as f:
        document = yaml.safe_load(f)  # JSON is YAML
    spec = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(document.get("pipelineSpec", document), spec, ignore_unknown_fields=False)
    return spec


def mlmd_store(metadata_path: str) -> metadata_store.MetadataStore:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    return metadata_store.MetadataStore(config)


def _node_id(store, execution) -> str:
    node = execution.custom_properties.get("__node_id__") or execution.properties.get("component_id")
    if node is not None:
        return node.string_value
    return store.get_execution_types_by_id([execution.type_id])[0].name.split(".")[-1]


def upstream_artifact(store, producer_node: str, output_key: str):
    """The latest artifact the local run's node `producer_node` output under `output_key`, as a TFX Artifact."""
    executions = [e for e in store.get_executions() if _node_id(store, e) == producer_node]
    events = store.get_events_by_execution_ids([e.id for e in executions])
    ids = [e.artifact_id for e in events
           if e.type == metadata_store_pb2.Event.OUTPUT and e.path.steps[0].key == output_key]
    if not ids:
        raise LookupError(f"the local run has no {producer_node}.{output_key} artifact")
    [mlmd_artifact] = store.get_artifacts_by_id([max(ids)])
    [artifact_type] = store.get_artifact_types_by_id([mlmd_artifact.type_id])
    return artifact_utils.deserialize_artifact(artifact_type, mlmd_artifact)


def _value(python_value) -> struct_pb2.Value:
    value = struct_pb2.Value()
    if isinstance(python_value, bool):
        value.bool_value = python_value
    elif isinstance(python_value, (int, float)):
        value.number_value = python_value
    else:
        value.string_value = str(python_value)
    return value


@dataclass
class TaskLaunch:
    command: list[str]
    executor_input: pipeline_spec_pb2.ExecutorInput
    executor_class_path: str


def build_task_launch(spec: pipeline_spec_pb2.PipelineSpec, task_name: str, store, output_root: str,
                      parameter_overrides: dict | None = None) -> TaskLaunch:
    task = spec.root.dag.tasks[task_name]
    component = spec.components[task.component_ref.name]
    deployment = json_format.MessageToDict(spec.deployment_spec, preserving_proto_field_name=False)
    container = deployment["executors"][component.executor_label]["container"]
    root_parameters = spec.root.input_definitions.parameters
    overrides = parameter_overrides or {}
    unknown = set(overrides) - set(root_parameters)
    if unknown:
        raise KeyError(f"not pipeline parameters: {sorted(unknown)}")

    executor_input = pipeline_spec_pb2.ExecutorInput()
    name_from_id: dict[int, str] = {}
    for name, spec_in in task.inputs.artifacts.items():
        producer = spec_in.task_output_artifact
        artifact = upstream_artifact(store, producer.producer_task, producer.output_artifact_key)
        runtime = kubeflow_v2_entrypoint_utils.to_runtime_artifact(artifact, name_from_id)
        runtime.name = f"local/artifacts/{artifact.id}"
        runtime.type.CopyFrom(component.input_definitions.artifacts[name].artifact_type)
        executor_input.inputs.artifacts[name].artifacts.append(runtime)

    for name, spec_in in task.inputs.parameters.items():
        kind = spec_in.WhichOneof("kind")
        if kind == "runtime_value":
            executor_input.inputs.parameter_values[name].CopyFrom(spec_in.runtime_value.constant)
        elif kind == "component_input_parameter":
            pipeline_parameter = spec_in.component_input_parameter
            if pipeline_parameter in overrides:
                executor_input.inputs.parameter_values[name].CopyFrom(_value(overrides[pipeline_parameter]))
            else:
                executor_input.inputs.parameter_values[name].CopyFrom(root_parameters[pipeline_parameter].default_value)
        else:
            raise NotImplementedError(f"parameter {name}: {kind}")

    for name, spec_out in component.output_definitions.artifacts.items():
        runtime = executor_input.outputs.artifacts[name].artifacts.add()
        runtime.type.CopyFrom(spec_out.artifact_type)
        runtime.uri = os.path.join(output_root, task_name, name)
        runtime.name = f"local/artifacts/{task_name}-{name}"
    executor_input.outputs.output_file = os.path.join(output_root, task_name, "executor_output.json")

    serialized = json_format.MessageToJson(executor_input)
    args = [serialized if arg == EXECUTOR_INPUT_PLACEHOLDER else arg for arg in container["args"]]
    command = list(container["command"])
    if command[0] == "python":  # the image's interpreter; here, this virtualenv's
        command[0] = sys.executable
    executor_class_path = args[args.index("--executor_class_path") + 1]
    return TaskLaunch(command + args, executor_input, executor_class_path)


def run_task(launch: TaskLaunch, cwd: str, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(launch.command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def read_executor_output(launch: TaskLaunch) -> pipeline_spec_pb2.ExecutorOutput:
    output = pipeline_spec_pb2.ExecutorOutput()
    with open(launch.executor_input.outputs.output_file) as f:
        json_format.Parse(f.read(), output)
    return output


def install_like_image(dockerfile: str, repo_root: str, scratch: str) -> str:
    """Installs the plugin as the Dockerfile does: copies what its `COPY ... /tmp/freeze-trainer...` lines
    copy, then `pip install`s that folder (without dependencies: this virtualenv has them) into a
    target folder. Returns the folder to put on PYTHONPATH."""
    import shutil

    source = os.path.join(scratch, "src")
    os.makedirs(source)
    with open(dockerfile) as f:
        copies = [line.split()[1:] for line in f if line.startswith("COPY ")]
    for *paths, destination in copies:
        if not destination.startswith("/tmp/freeze-trainer"):
            continue
        relative = destination[len("/tmp/freeze-trainer"):].strip("/")
        for path in paths:
            src = os.path.join(repo_root, path)
            dst = os.path.join(source, relative) if relative else os.path.join(source, os.path.basename(path))
            if os.path.isdir(src):
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(src, dst)
    site = os.path.join(scratch, "site-packages")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", site,
         source],
        check=True, capture_output=True, text=True, cwd=scratch,
    )
    return site
