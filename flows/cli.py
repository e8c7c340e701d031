"""``paperline``: list, inspect, run and serve the flows; start the local Prefect server.

    paperline list                      flows and their purpose
    paperline show FLOW                 config fields: type, default, description
    paperline run FLOW [--set k=v ...] [--params params.yaml]
    paperline server [--stop]           local Prefect server (127.0.0.1, state in .prefect/)
    paperline serve                     the deployments of prefect.yaml, with their schedules
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from flows import FLOWS, get_flow
from tasks.common.artifacts import PROJECT_ROOT
from tasks.common.config import ConfigError, load_config

console = Console()


def cmd_list(args: argparse.Namespace) -> int:
    t = Table("flow", "purpose", title="paperline flows")
    for spec in FLOWS.values():
        t.add_row(spec.name, spec.purpose)
    console.print(t)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from tasks.common.config import describe

    spec = get_flow(args.flow)
    cls = spec.load_config_class()
    cfg = load_config(spec.name, cls, params_path=args.params)
    t = Table("field", "type", "value (params.yaml)", "description", title=f"{spec.name}: {cls.__name__}")
    current = cfg.model_dump()
    for row in describe(cls):
        t.add_row(row["name"], row["type"], repr(current[row["name"]]), row["description"])
    console.print(t)
    return 0


def _with_server() -> str:
    """Point this process (and the Ray workers it starts) at a real Prefect API."""
    from tasks.common.prefect_server import ensure_server

    url = ensure_server()
    os.environ["PREFECT_API_URL"] = url
    return url


def cmd_run(args: argparse.Namespace) -> int:
    spec = get_flow(args.flow)
    cls = spec.load_config_class()
    cfg = load_config(spec.name, cls, params_path=args.params, overrides=args.set or [])  # fails before any work
    url = _with_server()
    console.print(f"[bold]{spec.name}[/] · Prefect API {url}")
    from tasks.common.runner import make_task_runner

    fn = spec.load_flow().with_options(task_runner=make_task_runner())
    result = fn(config=cfg)
    if isinstance(result, dict) and result.get("table"):
        console.rule(f"{spec.name}: results")
        console.print(result["table"])
        for k, v in result.items():
            if k != "table":
                console.print(f"{k}: {v}")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from tasks.common.prefect_server import api_url, ensure_server, stop_server

    if args.stop:
        console.print("stopped" if stop_server() else "no server started by paperline is running")
        return 0
    os.environ.pop("PREFECT_API_URL", None)
    url = ensure_server(port=args.port)
    console.print(f"Prefect server: {url} (dashboard {url.rsplit('/api', 1)[0]}); state in .prefect/")
    console.print(f"use it from other shells with: export PREFECT_API_URL={api_url(port=args.port)}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from prefect import serve

    from tasks.common.deployments import load_deployments

    _with_server()
    deployments = load_deployments(Path(args.file), activate=args.activate)
    names = ", ".join(d.name for d in deployments)
    console.print(f"serving {len(deployments)} deployment(s): {names} (Ctrl-C / SIGTERM stops)")
    serve(*deployments)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="paperline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="flows and their one-line purpose").set_defaults(func=cmd_list)
    s = sub.add_parser("show", help="a flow's config fields")
    s.add_argument("flow")
    s.add_argument("--params", default=None, help="params file (default: the project's params.yaml)")
    s.set_defaults(func=cmd_show)
    r = sub.add_parser("run", help="run a flow on the Ray task runner")
    r.add_argument("flow")
    r.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE", help="override config fields (YAML values)")
    r.add_argument("--params", default=None, help="params file (default: the project's params.yaml)")
    r.set_defaults(func=cmd_run)
    sv = sub.add_parser("server", help="start (or --stop) the local Prefect server")
    sv.add_argument("--port", type=int, default=int(os.environ.get("PAPERLINE_PREFECT_PORT", "4200")))
    sv.add_argument("--stop", action="store_true")
    sv.set_defaults(func=cmd_server)
    se = sub.add_parser("serve", help="serve prefect.yaml's deployments with their schedules")
    se.add_argument("--file", default=str(PROJECT_ROOT / "prefect.yaml"))
    se.add_argument("--activate", action="store_true", help="turn the (inactive by default) schedules on")
    se.set_defaults(func=cmd_serve)
    return p


COMMANDS = {"list": cmd_list, "show": cmd_show, "run": cmd_run, "server": cmd_server, "serve": cmd_serve}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        console.print(f"[red]{e}[/]", highlight=False, soft_wrap=True)
        return 2
    except KeyError as e:
        console.print(f"[red]{e.args[0]}[/]", highlight=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
