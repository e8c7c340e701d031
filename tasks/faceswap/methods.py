"""The registry of face-swap methods: every swapper the ``faceswap`` flow trains and scores.

A method is a class with the :class:`SwapMethod` shape, registered under a name with
:func:`register` (one line per method or ablation below). The flow's ``methods`` list is
validated against this registry; every listed method is trained with the same budget
(:class:`MethodRun`: steps, batch, resolution, backbone width) on the same training FaceSet,
then asked to swap the same test pairs, and scored by the same evaluation (our identity
encoder and attribute regressors from :mod:`tasks.faceswap.tools`, dlib's descriptor, PSNR/SSIM
against the ground-truth swap). The table and the strips list every method automatically.

An ablation is the same class registered under another name with fixed ``options``
(``samae_noperf`` = SAMAE with ``perforation=False``). A method's own knobs are its pydantic
``Options`` class; ``FaceswapConfig.method_options[name]`` overrides them (validated up front,
errors named ``method_options.<name>.<field>``).

Contract of a method class::

    class MyMethod:
        Options = MyOptions            # pydantic ConfigSection (may have no fields)
        learned = True                 # False for training-free methods (train is not called)
        def __init__(self, name: str, options: MyOptions): ...
        def train(self, run: MethodRun, faces: FaceSet, out_dir: Path) -> None:
            # checkpoint into out_dir (use run.engine_dir for the engine's resumable
            # checkpoints); seeded by run.seed; on run.device
        def swap(self, out_dir: Path, source: FaceBatch, target: FaceBatch, device: str) -> Tensor:
            # [N, 3, R, R] in [0, 1], R = source.images.shape[-1]: source's identity, target's rest
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from .dataset import FaceBatch, FaceSet


@dataclass(frozen=True)
class MethodRun:
    """What the flow hands every learned method: the shared budget and where things live."""

    steps: int  # optimisation steps (same for every learned method)
    batch: int  # batch size
    resolution: int  # model side, pixels (faces are resized to it)
    width: int  # backbone base channel count (same for every learned method)
    lr: float
    seed: int
    device: str  # "cpu" or "cuda"
    tools_dir: Path  # the trained identity encoder + attribute regressors (tasks.faceswap.tools.load_tools)
    engine_dir: Path  # resumable checkpoints of tasks.common.training.train
    training: Any = None  # tasks.common.training.TrainingConfig (engine: torch on CPU, DeepSpeed on GPU)
    extra: dict[str, Any] = field(default_factory=dict)


class SwapMethod(Protocol):
    name: str
    learned: bool

    def train(self, run: MethodRun, faces: FaceSet, out_dir: Path) -> None: ...

    def swap(self, out_dir: Path, source: FaceBatch, target: FaceBatch, device: str) -> Any: ...


@dataclass(frozen=True)
class MethodSpec:
    name: str
    target: str  # "package.module:Class"
    options: dict[str, Any] = field(default_factory=dict)  # fixed option values (ablations)
    description: str = ""

    def cls(self) -> type:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)

    def code(self) -> str:
        """Fingerprint of the method's own code (its module and every project module it imports).
        The registry loads the class by name, so the train/evaluate steps' own import closure
        cannot see it: their cache keys must carry this, or an edited method reuses stale output."""
        from tasks.common.codehash import code_fingerprint

        cls = self.cls()
        return code_fingerprint(cls.train) + code_fingerprint(cls.swap)  # train may be inherited

    def options_model(self, overrides: dict[str, Any] | None = None) -> BaseModel:
        """The method's validated options: class defaults < this spec's fixed options < overrides."""
        return self.cls().Options(**{**self.options, **(overrides or {})})

    def build(self, overrides: dict[str, Any] | None = None) -> SwapMethod:
        return self.cls()(self.name, self.options_model(overrides))


METHODS: dict[str, MethodSpec] = {}


def register(name: str, target: str, description: str = "", **options: Any) -> MethodSpec:
    if name in METHODS:
        raise KeyError(f"swap method {name!r} is already registered")
    METHODS[name] = MethodSpec(name, target, dict(options), description)
    return METHODS[name]


def get(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown swap method {name!r}; known: {', '.join(METHODS)}") from None


# ---------------------------------------------------------------------------------------- registry
register("samae", "tasks.faceswap.samae:SAMAE", "SAMAE: masked self-reconstruction, perforation + mesh scaling")
register("samae_noperf", "tasks.faceswap.samae:SAMAE", "SAMAE without perforation confusion", perforation=False)
register("samae_noscale", "tasks.faceswap.samae:SAMAE", "SAMAE without random mesh scaling", mesh_scaling=False)
register("simswap", "tasks.faceswap.simswap:SimSwapLike",
         "target-oriented baseline: identity injection, identity + attribute losses, no ground truth")
register("warp_blend", "tasks.faceswap.geometric:WarpBlend",
         "classic geometric swap: source face warped to the target landmarks, Poisson-blended (OpenCV)")
register("robustswap", "tasks.faceswap.robustswap.method:RobustSwap", "RobustSwap: StyleGAN W+ source latents + MLP(anny shape), target in F-space, explicit 3D loss")  # noqa: E501
register("robustswap_no_implicit3d", "tasks.faceswap.robustswap.method:RobustSwap", "RobustSwap without MLP(shape)", implicit_3d=False)  # noqa: E501
register("robustswap_no_explicit3d", "tasks.faceswap.robustswap.method:RobustSwap", "RobustSwap without the 3D vertex loss", explicit_3d=False)  # noqa: E501

#: the flow's default ``methods`` (SAMAE, its two ablations, both baselines)
DEFAULT_METHODS: list[str] = ["samae", "samae_noperf", "samae_noscale", "simswap", "warp_blend"]
