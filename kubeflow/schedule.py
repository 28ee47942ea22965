"""Schedules recurring runs of a compiled pipeline on Vertex AI Pipelines or Kubeflow Pipelines 2.

    # Vertex: nightly retraining at 03:00 with the top-block policy (five-field cron, optional TZ= prefix)
    python -m kubeflow.schedule vertex --template pipeline.json --project P --location us-central1 \\
        --cron "TZ=Europe/Berlin 0 3 * * *" --freeze-policy kubeflow/policies/retrain_top_block.json
    # KFP: the same against a cluster (six-field cron, seconds first; a five-field one gets "0 " prepended)
    python -m kubeflow.schedule kfp --package pipeline.yaml --host https://KFP_HOST \\
        --cron "0 0 3 * * *" --freeze-policy kubeflow/policies/retrain_top_block.json --param epochs=3

Scheduled runs always run with caching off: a retraining run whose inputs look unchanged must still
train, evaluate against the current blessed model and decide whether to push. Parameter values are
checked against the parameters the compiled spec declares (name and type), and the policy is parsed,
before anything is submitted.
"""

from __future__ import annotations

import json
import re

import click
import yaml

import freeze_trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)

from freeze_trainer.policy import PolicyError, parse_policy, read_policy_source
from freeze_trainer.tfx.trainer_config import TRAINER_PARAMETER_NAMES, ConfigError, TrainerConfig

_PARAMETER_TYPES = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "BOOLEAN": bool}


def read_pipeline_spec(path: str) -> dict:
    """The PipelineSpec dict of a compiled `.json` PipelineJob or `.yaml` PipelineSpec."""
    with open(path) as f:
        document = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    return document.get("pipelineSpec", document)


def declared_parameters(path: str) -> dict[str, dict]:
    return read_pipeline_spec(path)["root"]["inputDefinitions"]["parameters"]


def parameter_values(path: str, overrides: dict[str, str]) -> dict[str, object]:
    """Typed values for `overrides` (name -> text) by the compiled spec's declared parameter types."""
    declared = declared_parameters(path)
    values: dict[str, object] = {}
    for name, text in overrides.items():
        if name not in declared:
            raise click.BadParameter(f"{name!r} is not a parameter of {path}; it has {sorted(declared)}")
        kind = _PARAMETER_TYPES[declared[name]["parameterType"]]
        try:
            values[name] = kind(text) if not isinstance(text, kind) else text
        except ValueError:
            raise click.BadParameter(f"{name}: {text!r} is not a {kind.__name__}") from None
    if "freeze_policy" in values:
        try:
            values["freeze_policy"] = parse_policy(values["freeze_policy"]).canonical_json()
        except PolicyError as err:
            raise click.BadParameter(str(err)) from None
    # The trainer's own validation, on the values the run will see (overrides over compiled defaults).
    effective = {name: parameter.get("defaultValue") for name, parameter in declared.items()} | values
    try:
        TrainerConfig.from_parameters(**{key: effective.get(key) for key in TRAINER_PARAMETER_NAMES})
    except (PolicyError, ConfigError) as err:
        raise click.BadParameter(str(err)) from None
    return values


def kfp_cron(cron: str) -> str:
    """KFP takes six fields (seconds first); Vertex and crontab take five."""
    fields = cron.split()
    if len(fields) == 5:
        return "0 " + cron
    if len(fields) == 6:
        return cron
    raise click.BadParameter(f"{cron!r}: a cron expression has five or six fields")


def vertex_cron(cron: str) -> str:
    fields = re.sub(r"^(TZ|CRON_TZ)=\S+\s+", "", cron).split()
    if len(fields) != 5:
        raise click.BadParameter(f"{cron!r}: Vertex takes a five-field cron, optionally prefixed by TZ=Zone")
    return cron


def vertex_pipeline_job(template_path: str, display_name: str, project: str, location: str,
                        values: dict[str, object], pipeline_root: str | None = None, credentials=None):
    """The aiplatform.PipelineJob a schedule runs; building it makes no network call."""
    from google.cloud import aiplatform

    return aiplatform.PipelineJob(
        display_name=display_name,
        template_path=template_path,
        project=project,
        location=location,
        parameter_values=values,
        pipeline_root=pipeline_root,
        enable_caching=False,
        credentials=credentials,
    )


def kfp_recurring_run_arguments(package_path: str, job_name: str, experiment_id: str, cron: str,
                                values: dict[str, object], pipeline_root: str | None = None) -> dict:
    """Keyword arguments of kfp.Client.create_recurring_run."""
    return dict(
        experiment_id=experiment_id,
        job_name=job_name,
        cron_expression=kfp_cron(cron),
        params=values,
        pipeline_package_path=package_path,
        pipeline_root=pipeline_root,
        enable_caching=False,
        max_concurrency=1,  # never two retrainings racing for the same serving directory
        no_catchup=True,  # a paused schedule does not replay every missed night when resumed
    )


def _overrides(params: tuple[str, ...], freeze_policy: str | None) -> dict[str, str]:
    result = {}
    for item in params:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: use NAME=VALUE")
        result[name] = value
    if freeze_policy is not None:
        result["freeze_policy"] = read_policy_source(freeze_policy)
    return result


_param_option = click.option("--param", "params", multiple=True, help="NAME=VALUE of a pipeline parameter; repeatable.")
_policy_option = click.option("--freeze-policy", default=None, help="The freeze_policy value: a JSON/YAML file or inline JSON.")


@click.group()
def main():
    """Recurring runs on Vertex AI Pipelines (vertex) or Kubeflow Pipelines 2 (kfp)."""


@main.command()
@click.option("--template", required=True, help="The compiled pipeline.json (or .yaml).")
@click.option("--project", required=True)
@click.option("--location", default="us-central1", show_default=True)
@click.option("--cron", required=True, help='Five-field cron, optionally "TZ=Zone ..."')
@click.option("--display-name", default="freeze-trainer-retraining", show_default=True)
@click.option("--pipeline-root", default=None, help="Overrides the compiled pipeline root.")
@click.option("--service-account", default=None)
@_param_option
@_policy_option
def vertex(template, project, location, cron, display_name, pipeline_root, service_account, params, freeze_policy):
    values = parameter_values(template, _overrides(params, freeze_policy))
    job = vertex_pipeline_job(template, display_name, project, location, values, pipeline_root)
    schedule = job.create_schedule(
        cron=vertex_cron(cron), display_name=display_name, max_concurrent_run_count=1, service_account=service_account
    )
    click.echo(f"created Vertex schedule {schedule.resource_name}")


@main.command()
@click.option("--package", required=True, help="The compiled pipeline.yaml.")
@click.option("--host", required=True, help="The KFP API endpoint.")
@click.option("--experiment", default="freeze-trainer", show_default=True)
@click.option("--cron", required=True, help="Six-field cron (seconds first) or five-field.")
@click.option("--job-name", default="freeze-trainer-retraining", show_default=True)
@click.option("--pipeline-root", default=None)
@click.option("--namespace", default="kubeflow", show_default=True)
@_param_option
@_policy_option
def kfp(package, host, experiment, cron, job_name, pipeline_root, namespace, params, freeze_policy):
    import kfp as kfp_sdk

    values = parameter_values(package, _overrides(params, freeze_policy))
    client = kfp_sdk.Client(host=host, namespace=namespace)
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    run = client.create_recurring_run(
        **kfp_recurring_run_arguments(package, job_name, experiment_id, cron, values, pipeline_root)
    )
    click.echo(f"created KFP recurring run {run.recurring_run_id}")


if __name__ == "__main__":
    main()
