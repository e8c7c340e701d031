"""paperline's flows, by name. Imports are lazy so ``paperline list`` stays instant."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from tasks.common.config import ConfigError


@dataclass(frozen=True)
class FlowSpec:
    name: str
    module: str  # e.g. "flows.stun"
    function: str  # the @flow function in that module
    config: str  # "package.module:ClassName" of its pydantic config
    purpose: str

    def load_flow(self) -> Any:
        return getattr(importlib.import_module(self.module), self.function)

    def load_config_class(self) -> type:
        mod, cls = self.config.split(":")
        return getattr(importlib.import_module(mod), cls)


FLOWS: dict[str, FlowSpec] = {
    "stun": FlowSpec(
        "stun", "flows.stun", "stun", "tasks.stun.config:StunConfig",
        "STUN: expert-then-unstructured pruning of MoE LLMs vs Wanda/OWL/NAEE/frequency baselines",
    ),
    "animeceleb": FlowSpec(
        "animeceleb", "flows.animeceleb", "animeceleb", "tasks.animeceleb.config:AnimeCelebConfig",
        "AnimeCeleb-style data: procedural anime heads + anny human heads rendered by Blender workers",
    ),
    "s3nas": FlowSpec(
        "s3nas", "flows.s3nas", "s3nas", "tasks.s3nas.config:S3NASConfig",
        "S3NAS: NPU-aware NAS on a SCALE-Sim NPU, scaled to a latency target, vs random search and a hand-designed net",
    ),
    "reenact": FlowSpec(
        "reenact", "flows.reenact", "reenact", "tasks.reenact.config:ReenactConfig",
        "EDTN + Animo-style anime head generator: human-driven anime reenactment, trained on animeceleb renders",
    ),
    "erank_gs": FlowSpec(
        "erank_gs", "flows.erank_gs", "erank_gs", "tasks.erank_gs.config:ErankGSConfig",
        "erank-GS: 3D Gaussian Splatting ± effective-rank regularisation on Blender scenes with true depth, normals, mesh",
    ),
    "vidgan": FlowSpec(
        "vidgan", "flows.vidgan", "vidgan", "tasks.vidgan.config:VidganConfig",
        "Soft-edge video codec: H.264 key frames + losslessly coded edge maps + per-video pix2pix GAN, RD vs x264/x265",
    ),
    "pixelhuman": FlowSpec(
        "pixelhuman", "flows.pixelhuman", "pixelhuman", "tasks.pixelhuman.config:PixelHumanConfig",
        "PixelHuman: animatable humans from 1-5 images (skinning + pixel-aligned features) on anny bodies vs 2 baselines",
    ),
    "faceswap": FlowSpec(
        "faceswap", "flows.faceswap", "faceswap", "tasks.faceswap.config:FaceswapConfig",
        "SAMAE self-reconstruction face swapping vs SimSwap-like and warp-and-blend, scored against rendered true swaps",
    ),
}


class UnknownFlowError(ConfigError, LookupError):
    """A flow name that is not in :data:`FLOWS` (a configuration error: the CLI exits 2)."""


def get_flow(name: str) -> FlowSpec:
    try:
        return FLOWS[name]
    except KeyError:
        raise UnknownFlowError(f"unknown flow {name!r}; known: {', '.join(sorted(FLOWS))}") from None
