"""The client-side CLI commands: boto3 against the server, rich tables on the terminal."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

T = TypeVar("T")
_STATUS_STYLE = {
    "InService": "green",
    "Failed": "red",
    "Creating": "yellow",
    "Updating": "yellow",
    "Deleting": "magenta",
}


class CliError(Exception):
    pass


def _client(url: str, service: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=url,
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "modelhost"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "modelhost"),
        config=Config(retries={"max_attempts": 1}, read_timeout=75),
    )


def _call(url: str, fn: Callable[[], T]) -> T:
    from botocore.exceptions import ClientError, EndpointConnectionError

    try:
        return fn()
    except EndpointConnectionError:
        raise CliError(f"cannot reach modelhost at {url}: is `modelhost serve` running?") from None
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise CliError(f"{err.get('Code')}: {err.get('Message')}") from None


def _when(t: Any) -> str:
    if isinstance(t, dt.datetime):
        return t.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return str(t)


def _status(s: str) -> str:
    return f"[{_STATUS_STYLE.get(s, 'white')}]{s}[/]"


def endpoints_list(args: argparse.Namespace) -> int:
    sm = _client(args.url, "sagemaker")
    items: list[dict[str, Any]] = []
    for page in _call(args.url, lambda: list(sm.get_paginator("list_endpoints").paginate())):
        items.extend(page["Endpoints"])
    table = Table(title=f"Endpoints at {args.url}")
    for col in ("Name", "Status", "Created", "Last modified"):
        table.add_column(col)
    for e in items:
        table.add_row(
            e["EndpointName"],
            _status(e["EndpointStatus"]),
            _when(e["CreationTime"]),
            _when(e["LastModifiedTime"]),
        )
    Console().print(table if items else "No endpoints yet.")
    return 0


def endpoints_describe(args: argparse.Namespace) -> int:
    sm = _client(args.url, "sagemaker")
    d = _call(args.url, lambda: sm.describe_endpoint(EndpointName=args.name))
    console = Console()
    console.print(
        f"[bold]{d['EndpointName']}[/]  {_status(d['EndpointStatus'])}  config {d['EndpointConfigName']}"
    )
    console.print(
        f"ARN {d['EndpointArn']}\ncreated {_when(d['CreationTime'])}, modified {_when(d['LastModifiedTime'])}"
    )
    if d.get("FailureReason"):
        console.print(f"[red]Failure reason:[/] {d['FailureReason']}", highlight=False)
    table = Table(title="Production variants")
    for col in ("Variant", "Image", "Weight (current/desired)", "Instances (current/desired)"):
        table.add_column(col)
    for v in d.get("ProductionVariants", []):
        image = ", ".join(i["SpecifiedImage"] for i in v.get("DeployedImages", []))
        table.add_row(
            v["VariantName"],
            image,
            f"{v.get('CurrentWeight', '-')}/{v.get('DesiredWeight', '-')}",
            f"{v.get('CurrentInstanceCount', '-')}/{v.get('DesiredInstanceCount', '-')}",
        )
    console.print(table)
    pending = d.get("PendingDeploymentSummary")
    if pending:
        console.print(f"Pending deployment of config {pending['EndpointConfigName']}")
    return 0


def invoke(args: argparse.Namespace) -> int:
    rt = _client(args.url, "sagemaker-runtime")
    if args.body is not None:
        body = args.body.encode()
    elif args.file == "-":
        body = sys.stdin.buffer.read()
    else:
        try:
            with open(args.file, "rb") as f:
                body = f.read()
        except OSError as exc:
            raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    kw: dict[str, Any] = {"EndpointName": args.name, "ContentType": args.content_type, "Body": body}
    if args.accept:
        kw["Accept"] = args.accept
    if args.target_variant:
        kw["TargetVariant"] = args.target_variant
    if args.custom_attributes:
        kw["CustomAttributes"] = args.custom_attributes
    resp = _call(args.url, lambda: rt.invoke_endpoint(**kw))
    out = resp["Body"].read()
    sys.stdout.buffer.write(out if out.endswith(b"\n") else out + b"\n")
    Console(stderr=True).print(
        f"[dim]variant {resp.get('InvokedProductionVariant')}, {resp.get('ContentType')}[/]", highlight=False
    )
    return 0


def logs(args: argparse.Namespace) -> int:
    query = f"tail={args.tail}&follow={str(args.follow).lower()}"
    url = f"{args.url}/modelhost/v1/endpoints/{args.name}/logs?{query}"
    try:
        with urllib.request.urlopen(url) as resp:
            while chunk := resp.read1(65536):
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
    except urllib.error.HTTPError as exc:
        raise CliError(exc.read().decode(errors="replace").strip()) from None
    except urllib.error.URLError as exc:
        raise CliError(f"cannot reach modelhost at {args.url}: {exc.reason}") from None
    return 0
