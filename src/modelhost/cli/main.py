"""``modelhost`` command line: ``serve`` runs the server; every other command is a client of its HTTP API
(through boto3, as a user's code would be) and never imports server internals."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from modelhost.cli import client_commands

DEFAULT_URL = "http://127.0.0.1:8080"


def _serve(args: argparse.Namespace) -> int:
    from modelhost.server import run
    from modelhost.settings import Settings

    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.data_dir is not None:
        overrides["data_dir"] = Path(args.data_dir)
    run(Settings(**overrides))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelhost", description="Self-hosted model hosting with the SageMaker API."
    )
    p.add_argument(
        "--url",
        default=os.environ.get("MODELHOST_URL", DEFAULT_URL),
        help=f"server to talk to (default $MODELHOST_URL or {DEFAULT_URL})",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the server")
    s.add_argument("--host", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port for every API (default 8080)")
    s.add_argument("--data-dir", help="where metadata, objects and logs live (default ./modelhost-data)")
    s.set_defaults(func=_serve)

    e = sub.add_parser("endpoints", help="list and describe endpoints")
    esub = e.add_subparsers(dest="endpoints_command", required=True)
    el = esub.add_parser("list", help="list endpoints")
    el.set_defaults(func=client_commands.endpoints_list)
    ed = esub.add_parser("describe", help="describe one endpoint")
    ed.add_argument("name")
    ed.set_defaults(func=client_commands.endpoints_describe)

    i = sub.add_parser("invoke", help="send one request to an endpoint and print the answer")
    i.add_argument("name")
    i.add_argument("--content-type", default="application/json")
    i.add_argument("--accept")
    i.add_argument("--target-variant")
    i.add_argument("--custom-attributes")
    body = i.add_mutually_exclusive_group(required=True)
    body.add_argument("--body", help="request body as text")
    body.add_argument("--file", help="read the request body from this file ('-' for stdin)")
    i.set_defaults(func=client_commands.invoke)

    lg = sub.add_parser("logs", help="show the log streams of an endpoint's instances")
    lg.add_argument("name")
    lg.add_argument("-f", "--follow", action="store_true", help="keep streaming new lines")
    lg.add_argument("--tail", type=int, default=200, help="lines to show first (0 for all)")
    lg.set_defaults(func=client_commands.logs)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except client_commands.CliError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
