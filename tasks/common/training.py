"""The training engine every paperline domain shares: one recipe, three ways to run it.

A *recipe* (torchtune's word) owns the maths: which models, their optimisers, how a batch is
made and what each model's loss is. The engine owns how it runs:

* ``torch`` — plain PyTorch in this process (CPU, or one GPU with bf16 autocast);
* ``deepspeed`` — every model wrapped by DeepSpeed (ZeRO stage 2, bf16 on GPUs); on CPU it runs
  in one process on the gloo backend without building any C++ op (the shared-memory all-reduce
  op is the only one a single CPU process would compile, and it is useless there);
* ``ray`` — Ray Train starts one worker per GPU (or ``num_workers``), each running the
  ``deepspeed`` path in one process group; the same recipe, so results are comparable.

``backend="auto"`` picks ``ray`` for several GPUs, ``deepspeed`` for one GPU and ``torch`` on CPU.
Models are updated in the recipe's order (a GAN: generator, then discriminator); while one model
steps, the others' parameters are frozen, so its loss cannot leak gradients into them.

Checkpoints are safetensors only (no pickles): per model its fp32 weights and its optimiser state
tensors (gathered from ZeRO partitions under DeepSpeed), plus a JSON with the step. They are
written every ``checkpoint_every`` steps through a temp folder renamed into place; a run that is
killed resumes from the newest complete checkpoint. Batches are a function of (seed, step, rank),
so a resumed run sees exactly the batches the uninterrupted one would have.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import torch
from pydantic import Field, PrivateAttr
from safetensors.torch import load_file, save_file

from .artifacts import atomic_path, read_json, write_json
from .config import ConfigSection

log = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "deepspeed", "ray"]
CKPT_PREFIX = "step_"


class TrainingConfig(ConfigSection):
    """How a recipe runs; what it computes is the recipe's business."""

    backend: Backend = "auto"
    """auto = ray with several GPUs, deepspeed with one GPU, plain torch on CPU."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto = bf16 on GPUs that support it (halves activation memory, fp32 range), fp32 on CPU."""
    zero_stage: int = Field(2, ge=0, le=3)
    """DeepSpeed ZeRO stage: 2 shards optimiser state and gradients, keeps weights whole."""
    num_workers: int = Field(0, ge=0)
    """Ray Train workers; 0 = one per GPU in the cluster."""
    checkpoint_every: int = Field(200, ge=1)
    """Steps between checkpoints (and at the end); a killed run resumes from the newest."""
    keep_checkpoints: int = Field(2, ge=1)
    """Checkpoints kept on disk (older ones are deleted after a newer one is complete)."""
    grad_clip: float = Field(1.0, ge=0.0)
    """Gradient-norm clip per model; 0 = off."""
    log_every: int = Field(50, ge=1)
    """Steps between loss records in the training history."""
    # The device is set by the step from the flow's resources.device, never by a user (one
    # device knob per flow): a private attribute, so it is neither a form field nor a param.
    _device: Literal["auto", "cpu", "cuda"] = PrivateAttr("auto")

    @property
    def device(self) -> str:
        """auto = the GPU Ray (or CUDA_VISIBLE_DEVICES) gives this process, else CPU."""
        return self._device

    def on(self, device: str) -> "TrainingConfig":
        """A copy that trains on ``device`` (auto / cpu / cuda; ``cuda:N`` is the GPU Ray gave)."""
        copy = self.model_copy()
        copy._device = device.split(":")[0]
        return copy


class Recipe(Protocol):
    """What the engine needs from a training job. Must be picklable (Ray ships it to workers)."""

    steps: int
    micro_batch: int

    def build(self) -> dict[str, torch.nn.Module]:
        """Fresh models, in update order (seeded inside: same weights every call)."""

    def optimizer(self, name: str, module: torch.nn.Module) -> torch.optim.Optimizer: ...

    def batch(self, step: int, rank: int, device: torch.device) -> dict[str, torch.Tensor]:
        """The batch of ``step`` for ``rank``: a pure function of them (resumes see the same data)."""

    def loss(self, name: str, models: dict[str, Callable], batch: dict[str, torch.Tensor],
             cache: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss that updates model ``name``; ``cache`` carries outputs between models of a step."""

    # Optional hooks (looked up with getattr, so existing recipes need neither):
    #
    # def schedule(self, name: str, optimizer: torch.optim.Optimizer, step: int) -> None:
    #     """Set model ``name``'s learning rates for ``step`` (a pure function of the step, so a
    #     resumed run sets what the unbroken one did), before its loss is computed."""
    #
    # def grad_clip(self, name: str, step: int) -> float:
    #     """Gradient-norm clip of model ``name`` at ``step`` (0 = off), overriding the config's
    #     ``grad_clip`` for recipes whose clipping changes by phase; plain-torch backend only."""


@dataclass
class TrainResult:
    backend: str
    start_step: int
    steps: int
    wall_seconds: float
    device: str
    precision: str
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ------------------------------------------------------------------------------ backend choice


def resolve_backend(cfg: TrainingConfig) -> str:
    if cfg.backend != "auto":
        return cfg.backend
    gpus = torch.cuda.device_count() if torch.cuda.is_available() and cfg.device != "cpu" else 0
    try:
        import ray

        if ray.is_initialized() and cfg.device != "cpu":
            gpus = max(gpus, int(ray.cluster_resources().get("GPU", 0)))
    except Exception:  # Ray not importable or not connected: local GPUs decide
        pass
    if gpus > 1 or cfg.num_workers > 1:
        return "ray"
    return "deepspeed" if gpus == 1 else "torch"


def _device(cfg: TrainingConfig) -> torch.device:
    if cfg.device == "cpu" or not torch.cuda.is_available():
        if cfg.device == "cuda":
            raise ValueError("training.device: 'cuda' but no CUDA device is visible")
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def _precision(cfg: TrainingConfig, device: torch.device) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


# ------------------------------------------------------------------------------ checkpoints


def checkpoints(ckpt_dir: Path | str) -> list[Path]:
    """Complete checkpoints, oldest first (a folder counts once its ``meta.json`` exists)."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob(f"{CKPT_PREFIX}*") if (p / "meta.json").is_file())


def latest_checkpoint(ckpt_dir: Path | str) -> Path | None:
    found = checkpoints(ckpt_dir)
    return found[-1] if found else None


def load_weights(ckpt: Path | str, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(ckpt) / f"model-{name}.safetensors"))


def _module_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """fp32 CPU copies of a module's state. Tied tensors (one storage under two names, e.g. a
    language model's embedding and output head) get a copy each: safetensors refuses to write
    tensors that share memory, and loading both names restores the tie's single value."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in module.state_dict().items():
        t = v.detach().float().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        out[k] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out


class _Slot:
    """One model as the engine drives it: plain module + optimiser, or a DeepSpeed engine."""

    def __init__(self, name: str, module: torch.nn.Module, opt: torch.optim.Optimizer, engine: Any = None):
        self.name, self.module, self.opt, self.engine = name, module, opt, engine

    @property
    def forward(self) -> Callable:
        return self.engine if self.engine is not None else self.module

    def params(self) -> list[tuple[str, torch.nn.Parameter]]:
        return list(self.module.named_parameters())

    # -- state out ---------------------------------------------------------------------------
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
        """(fp32 weights, optimiser state tensors, optimiser scalars), full (not partitioned)."""
        weights, optim, scalars = {}, {}, {}
        if self.engine is None:
            weights = _module_weights(self.module)
            for pname, p in self.params():
                for key, val in self.opt.state.get(p, {}).items():
                    if torch.is_tensor(val):
                        optim[f"{pname}::{key}"] = val.detach().cpu().contiguous()
            scalars["param_groups"] = [{k: v for k, v in g.items() if k != "params"} for g in self.opt.param_groups]
            return weights, optim, scalars
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        weights = _module_weights(self.module)
        keys = self._ds_state_keys()
        self._ds_link()
        for pname, p in self.params():
            full = safe_get_full_fp32_param(p)
            if full is not None:
                weights[pname] = full.detach().float().cpu().contiguous()
            for key in keys:
                val = safe_get_full_optimizer_state(p, key)
                if val is not None:
                    optim[f"{pname}::{key}"] = val.detach().float().cpu().contiguous()
        scalars["ds_step"] = self._ds_step()
        scalars["param_groups"] = [{k: v for k, v in g.items() if k != "params"} for g in self.engine.optimizer.param_groups]
        return weights, optim, scalars

    def _ds_link(self) -> None:
        # ZeRO links each parameter to its slice of the optimiser state lazily (at the first
        # step); checkpointing before or right after that needs the link made now.
        link = getattr(self.engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
        if link is not None and any(self._ds_inner().state.values()):
            self.engine.optimizer._hp_optimizer_states_linked = False
            link()

    def _ds_materialise_state(self) -> None:
        """Adam creates its moments at the first step; a restore needs them to exist. A step with
        zero gradients and zero moments moves no weight (the weights are overwritten next anyway)."""
        inner = self._ds_inner()
        if any(inner.state.values()):
            return
        flat = [p for g in inner.param_groups for p in g["params"]]
        for p in flat:
            p.grad = torch.zeros_like(p)
        inner.step()
        for p in flat:
            p.grad = None

    def _ds_inner(self) -> torch.optim.Optimizer:
        opt = self.engine.optimizer
        return getattr(opt, "optimizer", opt)

    def _ds_state_keys(self) -> list[str]:
        keys: set[str] = set()
        for st in self._ds_inner().state.values():
            keys |= {k for k, v in st.items() if torch.is_tensor(v) and v.dim() > 0}
        return sorted(keys)

    def _ds_step(self) -> float:
        for st in self._ds_inner().state.values():
            if "step" in st:
                s = st["step"]
                return float(s.item() if torch.is_tensor(s) else s)
        return 0.0

    # -- state in ----------------------------------------------------------------------------
    def load_module(self, weights: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.module.load_state_dict(weights, strict=False)
        if unexpected or [m for m in missing if not m.endswith("num_batches_tracked")]:
            raise RuntimeError(f"checkpoint of {self.name!r} does not fit the model: missing {missing}, unexpected {unexpected}")

    def load_state(self, weights: dict[str, torch.Tensor], optim: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
        if self.engine is None:
            self.load_module(weights)
            by_name = dict(self.params())
            for k, v in optim.items():
                pname, key = k.split("::", 1)
                p = by_name[pname]
                self.opt.state.setdefault(p, {})[key] = v.to(p.device) if key != "step" else v
            for g, saved in zip(self.opt.param_groups, scalars.get("param_groups", [])):
                g.update({k: v for k, v in saved.items() if k in g})
            return
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        self._ds_materialise_state()
        self._ds_link()
        for pname, p in self.params():
            if pname in weights:
                w = weights[pname].to(p.device)
                safe_set_full_fp32_param(p, w)
                with torch.no_grad():
                    p.data.copy_(w.to(p.dtype))
            for k, v in optim.items():
                if k.startswith(pname + "::"):
                    safe_set_full_optimizer_state(p, v.to(p.device), k.split("::", 1)[1])
        # Buffers (BatchNorm running stats, spectral norm's u/v) are part of the model's state too;
        # ZeRO does not partition them, so they are copied in directly.
        with torch.no_grad():
            for bname, b in self.module.named_buffers():
                if bname in weights:
                    b.copy_(weights[bname].to(b.device, b.dtype))
        step = scalars.get("ds_step", 0.0)
        for st in self._ds_inner().state.values():
            if "step" in st:
                st["step"] = torch.full_like(st["step"], step) if torch.is_tensor(st["step"]) else step
        for g, saved in zip(self.engine.optimizer.param_groups, scalars.get("param_groups", [])):
            g.update({k: v for k, v in saved.items() if k in g and k in ("lr", "betas", "weight_decay", "eps")})


def save_checkpoint(ckpt_dir: Path, step: int, slots: list[_Slot], *, write: bool, keep: int, extra: dict | None = None) -> Path:
    """Gather every model's full state (a collective under ZeRO: all ranks call it), rank 0 writes."""
    states = {s.name: s.state_tensors() for s in slots}
    final = Path(ckpt_dir) / f"{CKPT_PREFIX}{step:08d}"
    if not write:
        return final
    with atomic_path(final, is_dir=True) as tmp:
        scalars = {}
        for name, (weights, optim, sc) in states.items():
            save_file(weights, str(tmp / f"model-{name}.safetensors"), metadata={"step": str(step)})
            save_file(optim or {"__empty__": torch.zeros(0)}, str(tmp / f"optim-{name}.safetensors"))
            scalars[name] = sc
        write_json(tmp / "meta.json", {"step": step, "optimizers": scalars, **(extra or {})})
    for old in checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def restore_checkpoint(ckpt: Path, slots: list[_Slot]) -> int:
    meta = read_json(ckpt / "meta.json")
    for s in slots:
        weights = load_weights(ckpt, s.name)
        optim = {k: v for k, v in load_file(str(ckpt / f"optim-{s.name}.safetensors")).items() if k != "__empty__"}
        s.load_state(weights, optim, meta["optimizers"].get(s.name, {}))
    return int(meta["step"])


# ------------------------------------------------------------------------------ DeepSpeed set-up


def init_deepspeed_process(device: torch.device) -> None:
    """Join (or create) the process group DeepSpeed needs; one process by default."""
    import deepspeed
    import deepspeed.ops

    for k, v in {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(k, v)
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    if device.type == "cpu":
        # The shared-memory all-reduce is the one op DeepSpeed builds on CPU (~1-4 min of C++);
        # gloo does the same job, and with one process there is nothing to reduce.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed("nccl" if device.type == "cuda" else "gloo")
    else:
        deepspeed.init_distributed()  # adopts the group Ray Train (or the caller) created


def deepspeed_config(cfg: TrainingConfig, micro_batch: int, precision: str) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        # DeepSpeed >= 0.19 casts only parameters and keeps buffers fp32; a module that mixes a
        # buffer into its parameters' maths (spectral norm's u/v, BatchNorm's running stats) then
        # fails with a dtype mismatch. Buffers follow the parameters, as module.bfloat16() did.
        **({"data_types": {"buffer_dtype": "bf16"}} if precision == "bf16" else {}),
        "gradient_clipping": cfg.grad_clip,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


# ------------------------------------------------------------------------------ the loop


def train(recipe: Recipe, cfg: TrainingConfig, ckpt_dir: Path | str, *,
          progress: Callable[[int, int, dict], None] | None = None) -> TrainResult:
    """Run ``recipe`` to ``recipe.steps`` with the configured backend, resuming from ``ckpt_dir``."""
    backend = resolve_backend(cfg)
    if backend == "ray":
        return _train_ray(recipe, cfg, Path(ckpt_dir))
    return train_local(recipe, cfg, Path(ckpt_dir), backend=backend, progress=progress)


def train_local(recipe: Recipe, cfg: TrainingConfig, ckpt_dir: Path, *, backend: str,
                progress: Callable[[int, int, dict], None] | None = None) -> TrainResult:
    t0 = time.time()
    device = _device(cfg)
    precision = _precision(cfg, device)
    if backend == "deepspeed":
        init_deepspeed_process(device)
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank, world = 0, 1
    models = recipe.build()
    slots: list[_Slot] = []
    for name, module in models.items():
        module.to(device)
        opt = recipe.optimizer(name, module)
        if backend == "deepspeed":
            import deepspeed

            engine, ds_opt, _, _ = deepspeed.initialize(model=module, optimizer=opt,
                                                        config=deepspeed_config(cfg, recipe.micro_batch, precision))
            slots.append(_Slot(name, engine.module, ds_opt, engine))
        else:
            slots.append(_Slot(name, module, opt))

    start = 0
    latest = latest_checkpoint(ckpt_dir)
    if latest is not None:
        start = restore_checkpoint(latest, slots)
        log.info("resumed %s from %s (step %d)", type(recipe).__name__, latest, start)
    if start >= recipe.steps and latest is not None:
        meta = read_json(latest / "meta.json")
        return TrainResult(backend, start, recipe.steps, 0.0, str(device), precision, meta.get("history", []), str(latest))

    history: list[dict[str, float]] = []
    prev = read_json(latest / "meta.json").get("history", []) if latest is not None else []
    history.extend(h for h in prev if h.get("step", 0) <= start)
    forwards = {s.name: s.forward for s in slots}
    autocast = backend == "torch" and precision == "bf16" and device.type == "cuda"
    cast_bf16 = backend == "deepspeed" and precision == "bf16"
    last_ckpt = latest
    schedule = getattr(recipe, "schedule", None)
    clip_at = getattr(recipe, "grad_clip", None)
    for step in range(start, recipe.steps):
        batch = recipe.batch(step, rank, device)
        if cast_bf16:
            batch = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
        cache: dict[str, Any] = {}
        logs: dict[str, float] = {}
        for s in slots:
            for o in slots:
                o.module.requires_grad_(o is s)
            if schedule is not None:
                schedule(s.name, s.opt, step)
            # The model being updated runs through its DeepSpeed engine; the frozen others run as
            # plain modules: an engine's forward registers a post-backward hook that reduces *its*
            # gradients, which would fire inside another engine's backward (a GAN's generator loss
            # goes through the discriminator) before that engine set up its buffers.
            step_forwards = {o.name: (forwards[o.name] if o is s else o.module) for o in slots}
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                loss, info = recipe.loss(s.name, step_forwards, batch, cache, step)
            if loss is None:
                continue
            if not torch.isfinite(loss.detach()).all():
                raise FloatingPointError(f"{type(recipe).__name__}: {s.name} loss is {loss.item()} at step {step}")
            if s.engine is not None:
                s.engine.backward(loss)
                s.engine.step()
            else:
                s.opt.zero_grad(set_to_none=True)
                loss.backward()
                clip = clip_at(s.name, step) if clip_at is not None else cfg.grad_clip
                if clip > 0:
                    torch.nn.utils.clip_grad_norm_(s.module.parameters(), clip)
                s.opt.step()
            logs.update({f"{s.name}/{k}": float(v) for k, v in info.items()})
        for s in slots:
            s.module.requires_grad_(True)
        done = step + 1
        if done % cfg.log_every == 0 or done == recipe.steps or done == 1:
            history.append({"step": done, **logs})
        if progress is not None:
            progress(done, recipe.steps, logs)
        if done % cfg.checkpoint_every == 0 or done == recipe.steps:
            last_ckpt = save_checkpoint(ckpt_dir, done, slots, write=rank == 0, keep=cfg.keep_checkpoints,
                                        extra={"history": history, "backend": backend, "world_size": world})
    return TrainResult(backend, start, recipe.steps, time.time() - t0, str(device), precision, history,
                       str(last_ckpt) if last_ckpt else "")


def _train_ray(recipe: Recipe, cfg: TrainingConfig, ckpt_dir: Path) -> TrainResult:
    """One DeepSpeed process per Ray Train worker (one per GPU by default), same recipe.

    ``ckpt_dir`` must be on storage every worker sees (one node, or a shared file system).
    """
    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    gpus = int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else torch.cuda.device_count()
    use_gpu = gpus > 0 and cfg.device != "cpu"
    workers = cfg.num_workers or max(gpus, 1)
    inner = cfg.model_copy(update={"backend": "deepspeed", "device": "cuda" if use_gpu else "cpu"})

    def loop(_: dict) -> None:
        import ray.train

        result = train_local(recipe, inner, ckpt_dir, backend="deepspeed")
        if ray.train.get_context().get_world_rank() == 0:
            write_json(ckpt_dir / "ray_result.json", result.to_json())

    trainer = TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
                           torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"))
    t0 = time.time()
    trainer.fit()
    r = read_json(ckpt_dir / "ray_result.json")
    r.update(backend=f"ray+deepspeed x{workers}", wall_seconds=time.time() - t0)
    return TrainResult(**r)


def seeded_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The RNG of one batch: independent of how many steps ran before in this process."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1))


__all__ = ["TrainingConfig", "Recipe", "TrainResult", "train", "train_local", "resolve_backend", "checkpoints",
           "latest_checkpoint", "load_weights", "seeded_generator", "init_deepspeed_process"]
