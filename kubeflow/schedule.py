"""Schedules recurring runs of a compiled pipeline on Vertex AI Pipelines or Kubeflow Pipelines 2.

    # Vertex: nightly retraining at 03:00 with the top-block policy (five-field cron, optional TZ= prefix)
    python -m kubeflow.schedule vertex --template pipeline.json --project P --location us-central1 \\
        --cron "TZ=Europe/Berlin 0 3 * * *" --freeze-policy kubeflow/policies/retrain_top_block.json
    # KFP: the same against a cluster (six-field cron, seconds first; a five-field one gets "0 " prepended)
    python -m kubeflow.schedule kfp --package pipeline.yaml --host https://KFP_HOST \\
        --cron "0 0 3 * * *" --freeze-policy kubeflow/policies/retrain_top_block.json --param epochs=3

Scheduled runs always run with caching off: a retraining run whose inputs look unchanged must still
train, evaluate against the current blessed model and decide whether to push. Before anything is
submitted, the values pass the check `kubeflow.run` uses too (`kubeflow.submission`): names and types
against the compiled spec's parameters, the trainer's validation, and the policy planned against the
compiled backbone and image size; the cron expression is read by croniter (it must name a date that
exists) and its time zone by zoneinfo. `--dry-run` prints the request instead of sending it.
"""

from __future__ import annotations

import datetime
import re
import zoneinfo

import click

import freeze_trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from freeze_trainer.cli.terminal import QuietGroup

from kubeflow.submission import (
    checked_values,
    dry_run_option,
    echo_request,
    param_option,
    policy_option,
    vertex_job_request,
    vertex_pipeline_job,
)


_TIME_ZONE_PREFIX = re.compile(r"^(?:TZ|CRON_TZ)=(\S+)\s+")


def check_cron_fields(cron: str, fields: str, seconds_first: bool = False, time_zone: str | None = None) -> None:
    """Refuses (click.BadParameter naming `cron`) cron `fields` croniter cannot read, or that never fire (the
    31st of February), and a `time_zone` the zoneinfo database does not know."""
    from croniter import CroniterBadDateError, CroniterError, croniter

    zone = None
    if time_zone is not None:
        try:
            zone = zoneinfo.ZoneInfo(time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise click.BadParameter(
                f"{cron!r}: unknown time zone {time_zone!r} (an IANA name, e.g. Europe/Berlin)") from None
    try:
        croniter(fields, datetime.datetime.now(zone), second_at_beginning=seconds_first).get_next()
    except CroniterBadDateError:
        raise click.BadParameter(f"{cron!r}: matches no date: the schedule would never run") from None
    except (CroniterError, ValueError, KeyError) as err:
        raise click.BadParameter(f"{cron!r}: not a cron expression croniter reads: {err}") from None


def kfp_cron(cron: str) -> str:
    """KFP takes six fields (seconds first) and no time zone; Vertex and crontab take five."""
    if _TIME_ZONE_PREFIX.match(cron):
        raise click.BadParameter(f"{cron!r}: KFP schedules take no TZ= prefix (they run in the cluster's UTC)")
    fields = cron.split()
    if len(fields) not in (5, 6):
        raise click.BadParameter(f"{cron!r}: a cron expression has five or six fields")
    six = cron if len(fields) == 6 else "0 " + cron
    check_cron_fields(cron, six, seconds_first=True)
    return six


def vertex_cron(cron: str) -> str:
    prefix = _TIME_ZONE_PREFIX.match(cron)
    fields = cron[prefix.end():] if prefix else cron
    if len(fields.split()) != 5:
        raise click.BadParameter(f"{cron!r}: Vertex takes a five-field cron, optionally prefixed by TZ=Zone")
    check_cron_fields(cron, fields, time_zone=prefix.group(1) if prefix else None)
    return cron


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


@click.group(cls=QuietGroup)
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
@param_option
@policy_option
@dry_run_option
def vertex(template, project, location, cron, display_name, pipeline_root, service_account, params, freeze_policy,
           dry_run):
    cron = vertex_cron(cron)
    values = checked_values(template, params, freeze_policy)
    credentials = None
    if dry_run:  # the request is built, never sent: no credentials needed
        from google.auth.credentials import AnonymousCredentials

        credentials = AnonymousCredentials()
    job = vertex_pipeline_job(template, display_name, project, location, values, pipeline_root, credentials)
    if dry_run:
        echo_request("Vertex schedule", {
            "parent": job._parent,  # noqa: SLF001
            "schedule": {"displayName": display_name, "cron": cron, "maxConcurrentRunCount": 1,
                         "createPipelineJobRequest": vertex_job_request(job, service_account)},
        })
        return
    schedule = job.create_schedule(
        cron=cron, display_name=display_name, max_concurrent_run_count=1, service_account=service_account
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
@param_option
@policy_option
@dry_run_option
def kfp(package, host, experiment, cron, job_name, pipeline_root, namespace, params, freeze_policy, dry_run):
    kfp_cron(cron)
    values = checked_values(package, params, freeze_policy)
    if dry_run:
        arguments = kfp_recurring_run_arguments(package, job_name, "<id of experiment " + experiment + ">", cron,
                                                values, pipeline_root)
        echo_request("KFP recurring run", {"host": host, "namespace": namespace, "experiment": experiment,
                                           "create_recurring_run": arguments})
        return
    import kfp as kfp_sdk

    client = kfp_sdk.Client(host=host, namespace=namespace)
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    run = client.create_recurring_run(
        **kfp_recurring_run_arguments(package, job_name, experiment_id, cron, values, pipeline_root)
    )
    click.echo(f"created KFP recurring run {run.recurring_run_id}")


if __name__ == "__main__":
    main()
