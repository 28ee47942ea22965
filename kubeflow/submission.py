"""The one check every submission of a compiled pipeline passes, one run (`kubeflow.run`) or a schedule
(`kubeflow.schedule`), before anything is sent:

- every `--param NAME=VALUE` (and `--freeze-policy`) names a parameter the compiled spec declares and has
  its declared type, so `--param epochs=three` is refused;
- the trainer configuration the run would see (the compiled FreezeTrainer task's constants, the pipeline
  parameters' defaults, the overrides) passes the trainer's own validation (`TrainerConfig`);
- the policy is planned against the model of the compiled spec: its backbone, backbone_alpha, ... (the
  FreezeTrainer task's constant inputs) at its image size (the Transform task's custom_config), with
  `plan_for_config`, so a selector that matches no layer (`{"unfreeze": {"group": "block_99"}}`) is refused
  here, not an hour into a run.

A refused value is one line naming it (`Refused`, exit status 2), and nothing is submitted.

Planning builds the architecture with random weights and reads no data. A saved `.keras` backbone of a
named architecture that is not on this machine (a gs:// URI, a path in the image) is planned as that
architecture; a `custom` backbone, whose architecture is only in its file, is planned when the file is on
this machine, and otherwise not (a warning says so), like a trainer module's own model.
"""

from __future__ import annotations

import json
import os
from typing import Any

import click
import yaml

import freeze_trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from freeze_trainer.cli.terminal import echo_error
from freeze_trainer.policy import PolicyError, parse_policy, read_policy_source
from freeze_trainer.tfx.trainer_config import CUSTOM_BACKBONE, TRAINER_PARAMETER_NAMES, ConfigError, TrainerConfig
from kubeflow.pipeline_definition import PER_RUN_OPTIONS, TRAINER_NODE_ID, option_refusal

TRANSFORM_NODE_ID = "Transform"
_PARAMETER_TYPES = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "BOOLEAN": bool}
_TYPE_NAMES = {str: "a string", int: "an int", float: "a float", bool: "a boolean"}
# A compiled spec is ~100 kB (its policy included); the cap keeps a wrong --template (a data file) unread.
MAX_TEMPLATE_BYTES = 16 * 1024 * 1024
# Trainer task inputs that hand the model to the user's code: the plan is theirs to make.
_USER_CODE_INPUTS = ("module_file", "module_path", "run_fn")


class Refused(click.ClickException):
    """A submission the compiled pipeline would not run: one line naming the bad value."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # one line, whatever the validator wrote


def read_pipeline_spec(path: str) -> dict:
    """The PipelineSpec dict of a compiled `.json` PipelineJob or `.yaml` PipelineSpec; Refused, naming the
    file, when it is missing or unreadable, larger than MAX_TEMPLATE_BYTES (refused unread), or holds no
    compiled pipeline (no root parameters)."""
    if os.path.isfile(path) and os.path.getsize(path) > MAX_TEMPLATE_BYTES:
        raise Refused(f"template: {path}: larger than {MAX_TEMPLATE_BYTES} bytes: not a compiled pipeline")
    try:
        with open(path) as f:
            document = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    except OSError as err:
        raise Refused(f"template: {path}: {err.strerror or err}") from None
    except (ValueError, yaml.YAMLError) as err:  # UnicodeDecodeError too
        raise Refused(f"template: {path} is not {'JSON' if path.endswith('.json') else 'YAML'}: {err}") from None
    spec = document.get("pipelineSpec", document) if isinstance(document, dict) else None
    root = spec.get("root") if isinstance(spec, dict) else None
    definitions = root.get("inputDefinitions") if isinstance(root, dict) else None
    if not isinstance(definitions, dict) or not isinstance(definitions.get("parameters"), dict):
        raise Refused(f"template: {path} is no compiled pipeline (a PipelineJob .json or a PipelineSpec .yaml with "
                      "root parameters)")
    return spec


def _typed(name: str, text: Any, kind: type) -> Any:
    if isinstance(text, kind) and not (kind is not bool and isinstance(text, bool)):
        return text
    if kind is float and isinstance(text, int) and not isinstance(text, bool):
        return float(text)
    if kind is bool:
        lowered = str(text).strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
    elif isinstance(text, str):
        try:
            return kind(text)
        except ValueError:
            pass
    raise Refused(f"{name}: {text!r} is not {_TYPE_NAMES[kind]}")


def _constant(source: dict) -> Any:
    """The value of a task input that is a constant: schema 2.1 `runtimeValue.constant`, or schema 2.0
    `runtimeValue.constantValue.{stringValue,intValue,doubleValue}`."""
    runtime = source["runtimeValue"]
    if "constant" in runtime:
        return runtime["constant"]
    (value,) = runtime["constantValue"].values()
    return value


def _task(spec: dict, name: str, path: str) -> dict:
    try:
        return spec["root"]["dag"]["tasks"][name]
    except KeyError:
        raise Refused(f"{path} has no {name} task: not a FreezeTrainer pipeline") from None


def compiled_trainer_values(spec: dict, parameters: dict[str, Any], path: str) -> dict[str, Any]:
    """The trainer parameters the compiled FreezeTrainer task runs with: its constant inputs (compile-time
    parameters) and, for the inputs that are pipeline parameters, `parameters`' values."""
    inputs = _task(spec, TRAINER_NODE_ID, path)["inputs"].get("parameters", {})
    values = {}
    for name in TRAINER_PARAMETER_NAMES:
        source = inputs.get(name)
        if source is None:
            continue
        if "componentInputParameter" in source:
            values[name] = parameters.get(source["componentInputParameter"])
        elif "runtimeValue" in source:
            values[name] = _constant(source)
    return values


def compiled_image_size(spec: dict, path: str) -> int | None:
    """The image size the Transform task resizes to (its custom_config), or None when it sets none."""
    inputs = _task(spec, TRANSFORM_NODE_ID, path)["inputs"].get("parameters", {})
    if "custom_config" not in inputs or "runtimeValue" not in inputs["custom_config"]:
        return None
    custom_config = _constant(inputs["custom_config"])
    custom_config = json.loads(custom_config) if isinstance(custom_config, str) else custom_config
    size = (custom_config or {}).get("image_size")
    return int(size) if size is not None else None


def _uses_user_code(spec: dict) -> bool:
    inputs = spec["root"]["dag"]["tasks"][TRAINER_NODE_ID]["inputs"].get("parameters", {})
    return any("runtimeValue" in inputs[name] and _constant(inputs[name]) for name in _USER_CODE_INPUTS
               if name in inputs)


def plan_compiled(config: TrainerConfig, image_size: int | None, path: str) -> str | None:
    """Plans `config`'s policy on the compiled model; raises Refused naming a bad value. Returns a warning
    when the model cannot be built here (and so is not planned), else None."""
    from freeze_trainer.tfx.trainer_model import USER_ERRORS, plan_for_config

    weights = config.backbone_weights
    if weights.lower() not in ("imagenet", "none") and not os.path.exists(weights):  # a URI: not read here
        if config.backbone == CUSTOM_BACKBONE:
            return (f"warning: the freeze policy is not planned: the custom backbone {weights} is not on this "
                    "machine; the trainer plans it when the run starts")
        # A weights file or saved backbone of a named architecture has that architecture's layers.
        config = config.model_copy(update={"backbone_weights": "none"})
    if image_size is None and config.backbone != CUSTOM_BACKBONE:
        raise Refused(f"{path}: its {TRANSFORM_NODE_ID} task sets no image_size to plan the policy at")
    try:
        plan_for_config(config, (image_size, image_size, 3) if image_size else None)
    except USER_ERRORS as err:
        raise Refused(str(err)) from None
    return None


def parameter_values(path: str, overrides: dict[str, Any], plan: bool = True) -> dict[str, Any]:
    """Typed values for `overrides` (name -> text) by the compiled spec's declared parameter types, after
    the whole check (module docstring). Raises Refused, naming the bad value."""
    spec = read_pipeline_spec(path)
    declared = spec["root"]["inputDefinitions"]["parameters"]
    values: dict[str, Any] = {}
    for name, text in overrides.items():
        if name not in declared:
            raise Refused(f"{name!r} is not a parameter of {path}; it has {', '.join(sorted(declared))}")
        values[name] = _typed(name, text, _PARAMETER_TYPES[declared[name]["parameterType"]])
        if name in PER_RUN_OPTIONS and (refusal := option_refusal(name, values[name])):
            raise Refused(refusal)
    if "freeze_policy" in values:
        try:
            values["freeze_policy"] = parse_policy(values["freeze_policy"]).canonical_json()
        except PolicyError as err:
            raise Refused(str(err)) from None
    # The trainer's own validation, on the values the run will see (overrides over compiled defaults).
    effective = {name: parameter.get("defaultValue") for name, parameter in declared.items()} | values
    trainer_values = compiled_trainer_values(spec, effective, path)
    try:
        config = TrainerConfig.from_parameters(**trainer_values)
    except (PolicyError, ConfigError) as err:
        raise Refused(str(err)) from None
    if "search_space" in values:  # a policy search's space, checked against the trainer's values as compiled
        values["search_space"] = checked_search_space(values["search_space"], trainer_values)
    if plan:
        if _uses_user_code(spec):
            echo_error("warning: the freeze policy is not planned: the trainer task runs a module of its own")
        elif warning := plan_compiled(config, compiled_image_size(spec, path), path):
            echo_error(warning)
    return values


def checked_search_space(text: str, trainer_values: dict[str, Any]) -> str:
    """A run's `search_space` (a spec compiled with `--search`): its keys and values checked against the
    trainer's parameters, as the Tuner will check them when it starts; the JSON text it will read."""
    from freeze_trainer.tfx.search_space import SearchSpaceError, parse_search_space

    try:
        space = parse_search_space(text, trainer_values)
    except SearchSpaceError as err:
        raise Refused(str(err)) from None
    return json.dumps(space.model_dump(mode="json", exclude_none=True))


def overrides_from_options(params: tuple[str, ...], freeze_policy: str | None) -> dict[str, str]:
    """NAME=VALUE texts of `--param` and the `--freeze-policy` file or inline text, by name."""
    result = {}
    for item in params:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise Refused(f"--param {item!r}: use NAME=VALUE")
        result[name] = value
    if freeze_policy is not None:
        try:
            result["freeze_policy"] = read_policy_source(freeze_policy)
        except (OSError, PolicyError) as err:
            raise Refused(f"--freeze-policy: {err}") from None
    return result


def checked_values(path: str, params: tuple[str, ...], freeze_policy: str | None) -> dict[str, Any]:
    """The submission check of both commands: the typed parameter values to submit, or Refused."""
    return parameter_values(path, overrides_from_options(params, freeze_policy))


param_option = click.option("--param", "params", multiple=True,
                            help="NAME=VALUE of a pipeline parameter; repeatable.")
policy_option = click.option("--freeze-policy", default=None,
                             help="The freeze_policy value: a JSON/YAML file or inline JSON.")
dry_run_option = click.option("--dry-run", is_flag=True,
                              help="Check the values, print the request that would be sent, send nothing.")


def vertex_pipeline_job(template_path: str, display_name: str, project: str, location: str,
                        values: dict[str, Any], pipeline_root: str | None = None, credentials=None,
                        enable_caching: bool = False):
    """The aiplatform.PipelineJob a run or a schedule submits; building it makes no network call."""
    from google.cloud import aiplatform

    return aiplatform.PipelineJob(
        display_name=display_name,
        template_path=template_path,
        project=project,
        location=location,
        parameter_values=values,
        pipeline_root=pipeline_root,
        enable_caching=enable_caching,
        credentials=credentials,
    )


def vertex_job_request(job, service_account: str | None = None) -> dict:
    """The CreatePipelineJob request `job.submit(service_account=...)` sends, as JSON; the compiled
    pipelineSpec, unchanged from the template, is abbreviated to its name and tasks."""
    from google.protobuf import json_format

    resource = type(job._gca_resource).pb(job._gca_resource)  # noqa: SLF001
    request_job = type(resource)()
    request_job.CopyFrom(resource)  # a copy: submit() sets the service account on the job itself
    if service_account:
        request_job.service_account = service_account
    pipeline_job = json_format.MessageToDict(request_job)
    spec = pipeline_job.pop("pipelineSpec", {})
    pipeline_job["pipelineSpec"] = {
        "abbreviated": "the compiled spec, as in the template",
        "pipelineInfo": spec.get("pipelineInfo"),
        "tasks": sorted(spec.get("root", {}).get("dag", {}).get("tasks", {})),
    }
    return {"parent": job._parent, "pipelineJobId": job.job_id, "pipelineJob": pipeline_job}  # noqa: SLF001


def echo_request(title: str, request: dict) -> None:
    """A dry run's output: the request as JSON on stdout, then a line on stderr that nothing was sent."""
    click.echo(json.dumps(request, indent=2, sort_keys=True, default=str))
    echo_error(f"dry run: {title} checked, nothing submitted")
