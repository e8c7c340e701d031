"""``paperline``: list, inspect, run and serve the flows; start the local Prefect server.

    paperline list                      flows and their purpose
    paperline show FLOW [--set k=v ...] [--params F] [--resolved]
                                        settings (dotted keys): type, choices, value,
                                        default, description; --resolved: the YAML
    paperline run FLOW [--set k=v ...] [--params params.yaml] [--cfg job]
                                        --cfg job prints the resolved config, runs nothing
    paperline server [--stop]           local Prefect server (127.0.0.1, state in .prefect/)
    paperline serve                     the deployments of prefect.yaml, with their schedules
    paperline status                    each flow in DVC: never run, up to date, or what changed
    paperline readme [FLOW ...] [--check]
                                        README result tables regenerated from their runs
    paperline vidgan encode|decode IN OUT [--crf N] [--set k=v ...]
                                        the vidgan codec on one video file / bitstream
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap
import traceback
from pathlib import Path

# Prefect and Ray read their settings when first imported: telemetry goes off here, before this
# module or a flow, a step or Prefect itself can import them; each command that talks to Prefect
# sets its API URL (`_with_server`) before its first Prefect import. This import loads no Prefect.
from flows.platform.prefect_server import offline_defaults

offline_defaults()

from rich.console import Console  # noqa: E402
from rich.table import Table

from flows import FLOWS, get_flow
from tasks.common.artifacts import PROJECT_ROOT
from tasks.common.config import ConfigError, DataError, describe, format_value, load_config, resolved_yaml

console = Console()
err_console = Console(stderr=True)


def cmd_list(args: argparse.Namespace) -> int:
    t = Table("flow", "purpose", title="paperline flows")
    for spec in FLOWS.values():
        t.add_row(spec.name, spec.purpose)
    console.print(t)
    return 0


def _width() -> int:
    """The terminal's columns (``COLUMNS`` when set; 80 when not a terminal), within reason."""
    return max(40, min(shutil.get_terminal_size((80, 24)).columns, 160))


def _wrap(text: str, width: int, indent: int = 0, hang: int = 0) -> list[str]:
    return textwrap.wrap(text, width, initial_indent=" " * indent, subsequent_indent=" " * (indent + hang),
                         break_long_words=True, break_on_hyphens=False) or [""]


def render_config(spec, cls: type, cfg, source: str, width: int) -> list[str]:
    """``paperline show``'s text: one block per setting, every line at most ``width`` wide.

    A block is the dotted key with its type (choices and bounds spelled out), then the value in
    effect (as typed after ``--set key=``) beside the model's default, then the description."""
    lines = _wrap(f"{spec.name} ({cls.__name__}): {spec.purpose}", width, 0, 2)
    lines += _wrap(f"values from {source}; change one with --set KEY=VALUE", width, 0, 2)
    for row in describe(cls, cfg):
        lines.append("")
        if row["kind"] == "section":
            lines += _wrap(f"[{row['key']}] {row['description']}", width, 0, 2)
            continue
        lines += _wrap(f"{row['key']}: {row['type']}", width, 0, 6)
        value, default = format_value(row["value"]), format_value(row["default"])
        if value == default:
            lines += _wrap(f"= {value}  (the default)", width, 4, 2)
        else:
            lines += _wrap(f"= {value}", width, 4, 2) + _wrap(f"default: {default}", width, 4, 2)
        if row["description"]:
            lines += _wrap(row["description"], width, 4)
    return lines


def _resolved(args: argparse.Namespace):
    """(spec, config class, validated config) from params file ← ``--set``; no work is done."""
    spec = get_flow(args.flow)
    cls = spec.load_config_class()
    return spec, cls, load_config(spec.name, cls, params_path=args.params, overrides=args.set or [])


def cmd_show(args: argparse.Namespace) -> int:
    spec, cls, cfg = _resolved(args)
    if args.resolved:
        sys.stdout.write(resolved_yaml(spec.name, cfg))
        sys.stdout.flush()  # a closed pipe fails here, inside main, not at interpreter exit
        return 0
    source = args.params or "params.yaml"
    if args.set:
        source += " + --set " + " ".join(args.set)
    print("\n".join(render_config(spec, cls, cfg, source, _width())))
    sys.stdout.flush()
    return 0


def cmd_print_resolved(args: argparse.Namespace) -> int:
    """``run FLOW ... --cfg job`` (Hydra's convention): print the resolved config as YAML, run nothing."""
    spec, _, cfg = _resolved(args)
    sys.stdout.write(resolved_yaml(spec.name, cfg))
    sys.stdout.flush()
    return 0


def _with_server() -> str:
    """Point this process (and the Ray workers it starts) at a real Prefect API: ``PREFECT_API_URL``
    or this project's local server (started when needed, refused when the port holds another's).
    Call it before anything imports Prefect: Prefect reads the URL once, at import."""
    from flows.platform.prefect_server import prepare_environment

    return prepare_environment()


def cmd_run(args: argparse.Namespace) -> int:
    spec = get_flow(args.flow)
    cls = spec.load_config_class()
    cfg = load_config(spec.name, cls, params_path=args.params, overrides=args.set or [])  # fails before any work
    external_api = bool(os.environ.get("PREFECT_API_URL"))
    url = _with_server()
    from flows.platform.console import run_console
    from flows.platform.runner import make_task_runner

    with run_console(spec.name, console, verbose=getattr(args, "verbose", False)) as log:
        console.print(f"[bold]{spec.name}[/] · Prefect API {url} · log {_short(log.path)}", highlight=False,
                      soft_wrap=True)
        fn = spec.load_flow().with_options(task_runner=make_task_runner())
        try:
            result = fn(config=cfg)
        except BaseException:
            console.print(f"full log: {_short(log.path)}", highlight=False, soft_wrap=True)
            raise
    console.rule(f"{spec.name}: results")
    console.print(result.get("table", "").rstrip(), highlight=False, soft_wrap=True, markup=False)
    where = " · ".join(f"{k} {_short(v) if isinstance(v, str) else v}" for k, v in result.items() if k not in ("table", "dvc"))
    console.print(f"outputs: {where}", highlight=False, soft_wrap=True, markup=False)
    dvc = result.get("dvc") or {}
    console.print(f"DVC: {dvc.get('recorded_by')}" + (f"; pushed to {dvc['pushed_to']}" if dvc.get("pushed_to") else "")
                  + (f" (git {dvc.get('git')})" if dvc.get("git") else ""), highlight=False, soft_wrap=True, markup=False)
    server = (f"; Prefect server still running, dashboard {url.rsplit('/api', 1)[0]} (`paperline server --stop` "
              f"ends it)") if not external_api else ""
    console.print(f"full log: {_short(log.path)}{server}", highlight=False, soft_wrap=True, markup=False)
    return 0


def _short(p: object) -> str:
    """A path relative to the working directory when it is under it."""
    try:
        return str(Path(str(p)).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def cmd_server(args: argparse.Namespace) -> int:
    from flows.platform.prefect_server import api_url, ensure_server, prefect_home, stop_server

    if args.stop:
        console.print("stopped" if stop_server() else "no server started by paperline is running")
        return 0
    os.environ.pop("PREFECT_API_URL", None)
    url = ensure_server(port=args.port)
    console.print(f"Prefect server: {url} (dashboard {url.rsplit('/api', 1)[0]}); state in {prefect_home()}")
    console.print(f"use it from other shells with: export PREFECT_API_URL={api_url(port=args.port)}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    _with_server()  # first: `prefect` (and the flows) must be imported with the URL already set
    from prefect import serve

    from flows.platform.deployments import load_deployments

    deployments = load_deployments(Path(args.file), activate=args.activate)
    names = ", ".join(d.name for d in deployments)
    console.print(f"serving {len(deployments)} deployment(s): {names} (Ctrl-C / SIGTERM stops)")
    serve(*deployments)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from flows.platform.dvcstatus import flow_status

    t = Table("flow", "state", "what", "to do", title="paperline flows in DVC", show_lines=True)
    colour = {"never run": "dim", "up to date": "green", "changed": "yellow"}
    for r in flow_status(PROJECT_ROOT):
        t.add_row(r.stage, f"[{colour[r.state]}]{r.state}[/]", r.detail, r.hint)
    console.print(t)
    return 0


def cmd_readme(args: argparse.Namespace) -> int:
    from flows.platform.readme import regenerate

    readme = PROJECT_ROOT / "README.md"
    text, updated = regenerate(readme, flows=args.flow or None)
    if args.check:
        stale = text != readme.read_text()
        console.print("README tables are stale: run `paperline readme`" if stale else "README tables match the runs")
        return 1 if stale else 0
    readme.write_text(text)
    console.print(f"README: regenerated {', '.join(updated) or 'nothing (no finished runs with a report)'}")
    return 0


def cmd_vidgan(args: argparse.Namespace) -> int:
    """``paperline vidgan encode|decode IN OUT``: the vidgan codec on one file (tasks/vidgan/cli.py)."""
    from tasks.vidgan import cli as vidgan_cli

    spec = get_flow("vidgan")
    cfg = load_config(spec.name, spec.load_config_class(), params_path=args.params, overrides=args.set or [])
    say = lambda m: console.print(m, highlight=False, soft_wrap=True, markup=False)  # noqa: E731
    if args.action == "encode":
        vidgan_cli.encode_file(args.input, Path(args.output), cfg, crf=args.crf, say=say)
    else:
        vidgan_cli.decode_file(Path(args.input), Path(args.output), cfg, say=say)
    return 0


def build_parser() -> argparse.ArgumentParser:
    verbose_help = "show everything: the full log on the console and the traceback of a failure"
    p = argparse.ArgumentParser(prog="paperline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="exit status: 0 done, 1 failed (the last line says why; -v adds the "
                                       "traceback), 2 a configuration or input-data error (each line names the "
                                       "field or file), 130 interrupted")
    p.add_argument("-v", "--verbose", action="count", default=0, help=verbose_help)
    # -v is also accepted after the command (`paperline run stun -v`), where people type it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=verbose_help)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", parents=[common], help="flows and their one-line purpose").set_defaults(func=cmd_list)
    s = sub.add_parser("show", parents=[common], help="a flow's settings: type, choices, value, default, description")
    s.add_argument("flow")
    s.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE", help="override config fields (YAML values)")
    s.add_argument("--params", default=None, help="params file (default: the project's params.yaml)")
    s.add_argument("--resolved", action="store_true",
                   help="print the validated config after --params/--set as YAML (a params file) instead")
    s.set_defaults(func=cmd_show)
    r = sub.add_parser("run", parents=[common], help="run a flow on the Ray task runner")
    r.add_argument("flow")
    r.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE", help="override config fields (YAML values)")
    r.add_argument("--params", default=None, help="params file (default: the project's params.yaml)")
    r.add_argument("--cfg", choices=["job"], default=None,
                   help="job: print the resolved config as YAML and exit without running (Hydra's --cfg job)")
    r.set_defaults(func=cmd_run)
    sv = sub.add_parser("server", parents=[common], help="start (or --stop) the local Prefect server")
    sv.add_argument("--port", type=int, default=int(os.environ.get("PAPERLINE_PREFECT_PORT", "4200")))
    sv.add_argument("--stop", action="store_true")
    sv.set_defaults(func=cmd_server)
    se = sub.add_parser("serve", parents=[common], help="serve prefect.yaml's deployments with their schedules")
    se.add_argument("--file", default=str(PROJECT_ROOT / "prefect.yaml"))
    se.add_argument("--activate", action="store_true", help="turn the (inactive by default) schedules on")
    se.set_defaults(func=cmd_serve)
    st = sub.add_parser("status", parents=[common], help="each flow's DVC state: never run, up to date, or what changed")
    st.set_defaults(func=cmd_status)
    rd = sub.add_parser("readme", parents=[common], help="regenerate README result tables from the runs they report")
    rd.add_argument("flow", nargs="*", help="only these flows (default: every flow with a finished run)")
    rd.add_argument("--check", action="store_true", help="exit 1 when a README table differs from its run")
    rd.set_defaults(func=cmd_readme)
    vg = sub.add_parser("vidgan", parents=[common], help="the vidgan codec on one video: encode IN OUT / decode IN OUT")
    vg.add_argument("action", choices=["encode", "decode"])
    vg.add_argument("input", help="encode: a video file (or a named clip); decode: a .vgan bitstream")
    vg.add_argument("output", help="encode: the .vgan bitstream; decode: an .mp4 video")
    vg.add_argument("--crf", type=int, default=None, help="key-frame CRF (default: the config's first key_crfs)")
    vg.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE", help="override vidgan config fields")
    vg.add_argument("--params", default=None, help="params file (default: the project's params.yaml)")
    vg.set_defaults(func=cmd_vidgan)
    return p


COMMANDS = {"list": cmd_list, "show": cmd_show, "run": cmd_run, "server": cmd_server, "serve": cmd_serve,
            "status": cmd_status, "readme": cmd_readme, "vidgan": cmd_vidgan}


def _root_cause(e: BaseException) -> BaseException:
    """The error a step raised, out of the wrappers it travelled in (Ray's ``RayTaskError``
    keeps it as ``.cause``; its own text is a remote traceback)."""
    seen = set()
    while isinstance(getattr(e, "cause", None), BaseException) and id(e) not in seen:
        seen.add(id(e))
        e = e.cause
    return e


def _error_lines(*lines: str) -> None:
    for line in lines:
        err_console.print(line, style="red", markup=False, highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit 2 for a configuration or input-data error (``ConfigError``,
    ``DataError``: every line ``<where>: <message>``), 1 for any other failure (one final line
    ``<flow>: <ExcType>: <message>``; the traceback only under ``-v``), 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", 0)
    func = cmd_print_resolved if getattr(args, "cfg", None) == "job" else args.func
    flow = getattr(args, "flow", None)
    where = (flow if isinstance(flow, str) and flow in FLOWS else None) or f"paperline {args.command}"
    try:
        return func(args)
    except KeyboardInterrupt:
        _error_lines(f"{where}: interrupted")
        return 130
    except BrokenPipeError:  # `paperline show stun | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:  # noqa: BLE001 - the one place every failure is turned into an exit status
        cause = _root_cause(e)
        if verbose:
            traceback.print_exception(e, file=sys.stderr)
        if isinstance(cause, (ConfigError, DataError)):
            _error_lines(*[line for line in str(cause).splitlines() if line.strip()])
            return 2
        text = " ".join(str(cause).split())
        text = text if len(text) <= 500 else text[:499] + "…"
        _error_lines(f"{where}: {type(cause).__name__}" + (f": {text}" if text else ""))
        return 1


if __name__ == "__main__":
    sys.exit(main())
