"""``fanflow deploy lambda --dry-run``: what a Lambda deployment of fanflow's workers needs.

fanflow does not create cloud resources itself: accounts differ in how they
deploy (SAM, CDK, Terraform, the aws CLI) and in who may create roles. The
dry run prints everything such a tool needs, from this very installation:
the package layout (handler, runtime, the distributions to bundle with their
installed versions, the workflow's requirements), the function settings and
the IAM policies of the function's role and of the clients.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fanflow.cli.output import print_error
from fanflow.errors import MissingExtraError

HANDLER = "fanflow.worker.entry.lambda_handler"
RUNTIME = "python3.11"

deploy_app = typer.Typer(help="Plan deployments of fanflow workers.", no_args_is_help=True)


def _bundle() -> list[str]:
    """fanflow and every distribution it needs at run time, with the versions installed here."""
    from packaging.requirements import Requirement

    seen: dict[str, str] = {}
    todo = ["fanflow"]
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[key] = f"{dist.metadata['Name']}=={dist.version}"
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return sorted(seen.values(), key=str.lower)


def lambda_plan(function: str, region: str, memory_mb: int, timeout_s: int, requirements: str | None) -> dict[str, Any]:
    """The deployment plan printed by ``fanflow deploy lambda --dry-run``."""
    from fanflow.platforms.aws_lambda import EVENT_LIMIT_BYTES  # boto3 is imported only when asked for

    arn = f"arn:aws:lambda:{region}:<account-id>:function:{function}"
    workflow = [] if requirements is None else [f"-r {requirements}"]
    return {
        "package": {
            "handler": HANDLER,
            "runtime": RUNTIME,
            "layout": {
                "fanflow/": "this package (pip install --target build/ .)",
                "<dependencies>/": "the distributions below, built for Amazon Linux (manylinux wheels)",
                "<workflow modules>/": "modules your tasks import by name (tasks in scripts travel by value)",
            },
            "distributions": _bundle(),
            "workflow_requirements": workflow,
            "build": [
                "pip install --target build/ --platform manylinux2014_x86_64 --only-binary=:all: "
                + " ".join(["fanflow", *workflow]),
                "cd build && zip -qr ../fanflow-lambda.zip .",
            ],
            "alternative": "a container image from deploy/Dockerfile with the Lambda runtime interface client",
        },
        "function": {
            "name": function,
            "memory_mb": memory_mb,
            "vcpus": round(memory_mb / 1769, 2),
            "timeout_s": timeout_s,
            "environment": {"FANFLOW_SECRET": "<the clients' secret; keep it in Secrets Manager or KMS-encrypted>"},
            "async_invoke_config": {"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 3600},
            "network": "a VPC with a route to the Redis store (e.g. ElastiCache) when it is not public",
            "event_limit_bytes": EVENT_LIMIT_BYTES,
            "payloads": "inline below the event limit; larger DAGs go by reference through the store",
        },
        "iam": {
            "function_role_trust": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "lambda.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            },
            "function_role_policy": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "Logs",
                        "Effect": "Allow",
                        "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                        "Resource": "*",
                    },
                    {"Sid": "FanOut", "Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": arn},
                ],
            },
            "function_role_managed_policies_if_in_vpc": [
                "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
            ],
            "client_policy": {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": arn}],
            },
        },
        "client_config": {"platform": "lambda", "endpoints": arn, "secret": "<the same secret>"},
    }


@deploy_app.command("lambda")
def deploy_lambda(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; create nothing.")] = False,
    function: Annotated[str, typer.Option(help="Function name.")] = "fanflow-worker",
    region: Annotated[str, typer.Option(help="AWS region.")] = "us-east-1",
    memory_mb: Annotated[int, typer.Option(help="Function memory; 1769 MB = 1 vCPU.")] = 1769,
    timeout: Annotated[int, typer.Option(help="Function timeout in seconds (at most 900).")] = 900,
    requirements: Annotated[str | None, typer.Option(help="The workflow's requirements.txt to bundle.")] = None,
) -> None:
    """Plan a Lambda deployment of the workers: package layout, function settings, IAM."""
    err = Console(stderr=True)
    if not dry_run:
        err.print(
            "[bold red]error:[/] fanflow creates no AWS resources itself: run `fanflow deploy lambda --dry-run` "
            "and apply the plan with your tooling (SAM, CDK, Terraform or the aws CLI)",
            highlight=False,
        )
        raise typer.Exit(1)
    if requirements is not None and not Path(requirements).is_file():
        err.print(f"[bold red]error:[/] requirements file {requirements!r} does not exist", highlight=False)
        raise typer.Exit(1)
    if not 128 <= memory_mb <= 10240 or not 1 <= timeout <= 900:
        err.print("[bold red]error:[/] Lambda allows 128..10240 MB and 1..900 s", highlight=False)
        raise typer.Exit(1)
    try:
        plan = lambda_plan(function, region, memory_mb, timeout, requirements)
    except ModuleNotFoundError as exc:
        print_error(MissingExtraError("fanflow deploy lambda", "aws", exc.name))
        raise typer.Exit(1) from None
    typer.echo(json.dumps(plan, indent=2))


def register(app: typer.Typer) -> None:
    """Add ``deploy`` to the ``fanflow`` command."""
    app.add_typer(deploy_app, name="deploy")
