"""Submits one run of a compiled pipeline to Vertex AI Pipelines or Kubeflow Pipelines 2, checked first.

    # Vertex: one retraining run with the top-block policy and 3 epochs
    python -m kubeflow.run vertex --template pipeline.json --project P --location us-central1 \\
        --freeze-policy kubeflow/policies/retrain_top_block.json --param epochs=3
    # KFP: the same against a cluster
    python -m kubeflow.run kfp --package pipeline.yaml --host https://KFP_HOST \\
        --freeze-policy kubeflow/policies/retrain_top_block.json --param epochs=3
    # Either, checked and printed, not sent (no credentials, no network)
    python -m kubeflow.run vertex --template pipeline.json --project P --param epochs=3 --dry-run

The flags are `kubeflow.schedule`'s, less the cron, and so is the check before anything is submitted
(`kubeflow.submission`): every value against the compiled spec's parameters (name, type), the trainer's
validation, and the policy planned against the compiled backbone and image size. A bad value is one line
naming it (exit status 2), and nothing is submitted. Runs have caching off unless `--enable-caching`.
"""

from __future__ import annotations

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

_caching_option = click.option("--enable-caching", is_flag=True,
                               help="Reuse cached task outputs (off: every task runs, as retraining needs).")


def kfp_run_arguments(package_path: str, run_name: str, experiment: str, namespace: str,
                      values: dict[str, object], pipeline_root: str | None = None, enable_caching: bool = False,
                      service_account: str | None = None) -> dict:
    """Keyword arguments of kfp.Client.create_run_from_pipeline_package."""
    return dict(
        pipeline_file=package_path,
        arguments=values,
        run_name=run_name,
        experiment_name=experiment,
        namespace=namespace,
        pipeline_root=pipeline_root,
        enable_caching=enable_caching,
        service_account=service_account,
    )


@click.group(cls=QuietGroup)
def main():
    """One run on Vertex AI Pipelines (vertex) or Kubeflow Pipelines 2 (kfp)."""


@main.command()
@click.option("--template", required=True, help="The compiled pipeline.json (or .yaml).")
@click.option("--project", required=True)
@click.option("--location", default="us-central1", show_default=True)
@click.option("--display-name", default="freeze-trainer", show_default=True)
@click.option("--pipeline-root", default=None, help="Overrides the compiled pipeline root.")
@click.option("--service-account", default=None)
@_caching_option
@param_option
@policy_option
@dry_run_option
def vertex(template, project, location, display_name, pipeline_root, service_account, enable_caching, params,
           freeze_policy, dry_run):
    values = checked_values(template, params, freeze_policy)
    credentials = None
    if dry_run:  # the request is built, never sent: no credentials needed
        from google.auth.credentials import AnonymousCredentials

        credentials = AnonymousCredentials()
    job = vertex_pipeline_job(template, display_name, project, location, values, pipeline_root, credentials,
                              enable_caching=enable_caching)
    if dry_run:
        echo_request("Vertex pipeline job", vertex_job_request(job, service_account))
        return
    job.submit(service_account=service_account)
    click.echo(f"submitted Vertex pipeline job {job.resource_name}")


@main.command()
@click.option("--package", required=True, help="The compiled pipeline.yaml.")
@click.option("--host", required=True, help="The KFP API endpoint.")
@click.option("--experiment", default="freeze-trainer", show_default=True)
@click.option("--run-name", default="freeze-trainer", show_default=True)
@click.option("--pipeline-root", default=None)
@click.option("--namespace", default="kubeflow", show_default=True)
@click.option("--service-account", default=None)
@_caching_option
@param_option
@policy_option
@dry_run_option
def kfp(package, host, experiment, run_name, pipeline_root, namespace, service_account, enable_caching, params,
        freeze_policy, dry_run):
    values = checked_values(package, params, freeze_policy)
    arguments = kfp_run_arguments(package, run_name, experiment, namespace, values, pipeline_root, enable_caching,
                                  service_account)
    if dry_run:
        echo_request("KFP run", {"host": host, "create_run_from_pipeline_package": arguments})
        return
    import kfp as kfp_sdk

    result = kfp_sdk.Client(host=host, namespace=namespace).create_run_from_pipeline_package(**arguments)
    click.echo(f"submitted KFP run {result.run_id}")


if __name__ == "__main__":
    main()
