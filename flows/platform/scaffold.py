"""The flow scaffold: what every flow does around its chain of steps, written once.

A flow module defines only its runbook::

    @paperline_flow("stun", StunConfig)
    def stun(cfg: StunConfig, res: Resources) -> FlowReport:
        with res.steps(cpus=1):
            corpus = steps.build_corpus.submit(cfg).result()
        ...
        return FlowReport(table_md, report_dir, outputs={...})

and the scaffold supplies the rest: the Prefect flow (its one pydantic parameter is the form
the dashboard shows, defaults from ``params.yaml``), the Ray task runner, the run lock on
``data/<flow>/``, sweeping temp folders an interrupted run left, the resource and GPU rule,
one retry of the chain when a step was lost with its process (never for a configuration or
data error: those fail once, and that error is the last thing printed), the DVC record of the
run's resolved config and outputs, and the report artifact in the dashboard.

This module deliberately has no ``from __future__ import annotations``: Prefect reads the
flow's parameter annotation at decoration time and it must be the config class itself.
"""
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from prefect import flow

from tasks.common.artifacts import data_root, sweep_temps
from tasks.common.config import ConfigError, FlowConfig, Resources, load_config
from tasks.common.steps import is_transient

from .locks import run_lock
from .readme import write_run_record
from .runner import cluster_resources, make_task_runner, step_options
from .versioning import publish_report, record_outputs

log = logging.getLogger("paperline.flow")


@dataclass(frozen=True)
class RunResources:
    """What this run may use: the cluster's CPUs and GPUs under the config's ``resources``."""

    cpus: int  # CPUs a heavy step may take
    gpus: int  # GPUs in the cluster this run may use (0 when resources.device is cpu)
    workers: int  # actors in a worker pool (Blender, profilers, NPU simulators)
    threads_per_worker: int

    @classmethod
    def resolve(cls, spec: Resources) -> "RunResources":
        res = cluster_resources()
        cluster_cpus, cluster_gpus = int(res.get("CPU", 1)), int(res.get("GPU", 0))
        spec.check_device(cluster_gpus)
        gpus = 0 if spec.device == "cpu" else cluster_gpus
        cpus = min(spec.cpus_per_step or cluster_cpus, cluster_cpus)
        workers = spec.workers or (gpus if gpus else max(1, cluster_cpus // spec.threads_per_worker))
        return cls(cpus=max(1, cpus), gpus=gpus, workers=workers, threads_per_worker=spec.threads_per_worker)

    @property
    def use_gpu(self) -> bool:
        return self.gpus > 0

    @contextmanager
    def steps(self, *, cpus: float = 1, gpu: bool = False) -> Iterator[None]:
        """Ray options for the steps submitted inside: ``cpus`` each (0 for a step that only
        drives actors), one GPU each when ``gpu`` and the run has GPUs."""
        with step_options(num_cpus=min(cpus, self.cpus) if cpus else 0, num_gpus=1 if (gpu and self.gpus) else 0):
            yield


@dataclass
class FlowReport:
    """What a flow body returns: its markdown table, report folder and named outputs."""

    table: str
    report: Path
    outputs: dict[str, Any] = field(default_factory=dict)
    extra_md: str = ""


def _attempt_chain(name: str, body: Callable[[Any, RunResources], FlowReport], cfg: Any, res: RunResources,
                   attempts: int) -> FlowReport:
    for attempt in range(1, attempts + 1):
        try:
            return body(cfg, res)
        except Exception as e:
            if attempt == attempts or not is_transient(e):
                raise
            # A step lost with its process (a killed Ray worker, a removed node): the step cache
            # and shard files make this second pass redo only what was lost.
            log.warning("%s: a step was lost (%s: %s); running the chain again, reusing finished steps",
                        name, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
    raise AssertionError("unreachable")


def run_flow(name: str, cfg: FlowConfig, body: Callable[[Any, RunResources], FlowReport], *, attempts: int = 2) -> dict:
    """Lock, sweep, resolve resources, run the chain (retrying a lost step once), record, publish."""
    with run_lock(name):
        swept = sweep_temps(data_root() / name)
        if swept:
            log.info("%s: removed %d temp folder(s) an interrupted run left", name, len(swept))
        try:
            res = RunResources.resolve(cfg.resources)
        except ConfigError as e:
            raise ConfigError(f"{name}.{e}") from None
        t0 = time.monotonic()
        report = _attempt_chain(name, body, cfg, res, attempts)
        dvc = record_outputs(name, cfg)
        write_run_record(name, cfg, dvc, time.monotonic() - t0)
        publish_report(name, report.table, dvc, extra_md=report.extra_md)
        return {"report": str(report.report), "table": report.table,
                **{k: (str(v) if isinstance(v, Path) else v) for k, v in report.outputs.items()}, "dvc": dvc}


def paperline_flow(name: str, config_cls: type[FlowConfig], *, attempts: int = 2) -> Callable[[Callable], Any]:
    """Turn a flow body ``(cfg, res) -> FlowReport`` into the Prefect flow ``name``."""

    def deco(body: Callable[[Any, RunResources], FlowReport]) -> Any:
        def entry(config):  # the dashboard form: one pydantic parameter
            if not isinstance(config, config_cls):
                raise ConfigError(f"{name}: config must be a {config_cls.__name__}")
            return run_flow(name, config, body, attempts=attempts)

        entry.__annotations__ = {"config": config_cls, "return": dict}
        # The dashboard form's defaults: params.yaml's section (validation is pure: no work, no writes).
        entry.__defaults__ = (load_config(name, config_cls),)
        entry.__name__ = entry.__qualname__ = body.__name__
        entry.__module__ = body.__module__
        entry.__doc__ = body.__doc__
        # log_prints stays off: a step's progress bar and event lines are printed for the run console
        # (tqdm_ray decodes them in the driver) and must not arrive wrapped in a log prefix.
        return flow(name=name, task_runner=make_task_runner(), log_prints=False, validate_parameters=True)(entry)

    return deco


__all__ = ["paperline_flow", "run_flow", "RunResources", "FlowReport"]
