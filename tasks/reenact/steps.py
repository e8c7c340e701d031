"""The ``reenact`` flow's Prefect steps: bridge → (EDTN × seeds ‖ regressor → generator) → report.

Each step owns ``data/reenact/<step>/``. ``bridge`` and ``report`` are cached whole on (inputs,
config, code). The three training steps share one pattern (:func:`_train`): a step names its
recipe and the config and inputs its key depends on; the folder is a resumable step, the engine
checkpoints into ``<step>/checkpoints/`` as it goes, a crashed run picks up from the newest
checkpoint, and only a changed key (new data, config or code) starts over. The final weights
are ``<step>/<model>.safetensors`` beside ``train.json`` (losses, wall time, backend).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from tasks.common.artifacts import atomic_path, cache_key, cached_step, step_dir, write_json
from tasks.common.progress import Progress
from tasks.common.steps import ResumableStep, set_threads, step

from .config import ReenactConfig
from .data import ReenactData

FLOW = "reenact"


def _train(name: str, cfg: ReenactConfig, recipe: Callable[[], Any], *, config: dict, inputs: list[Path],
           threads: int, folder: str | None = None, seed: int | None = None,
           after: Callable[[Path], None] | None = None) -> Path:
    """Train ``recipe()`` (model ``name``) into ``data/reenact/<folder or name>/`` unless its key is
    already there, intact.

    The recipe is built only when there is work (building it loads the training images);
    ``after(folder)`` writes what the step derives from the trained weights before the
    folder is marked complete.
    """
    from safetensors.torch import save_file

    from tasks.common.training import load_weights, train

    set_threads(threads)
    # resources.device rules every step (cuda:N is the GPU Ray gave this step, seen as cuda)
    training = cfg.training.on(cfg.resources.device)
    out = step_dir(FLOW, folder or name)
    key = cache_key(step=folder or name, config={**config, "training": training,
                                                 "seed": cfg.seed if seed is None else seed}, inputs=inputs)
    run = ResumableStep(out, key)
    if run.is_complete():
        return out
    run.claim()
    job = recipe()
    with Progress(f"train {name}", job.steps) as bar:
        res = train(job, training, out / "checkpoints",
                    progress=lambda s, total, logs: bar.callback(s, total, dict(list(logs.items())[:3])))
    with atomic_path(out / f"{name}.safetensors") as tmp:
        save_file(load_weights(res.checkpoint, name), str(tmp))
    write_json(out / "train.json", {**res.to_json(), "config": cfg.model_dump(mode="json")})
    if after is not None:
        after(out)
    run.complete(steps=job.steps)
    return out


@step("reenact.bridge", run_name="bridge[ridge={cfg.bridge.ridge}]")
def bridge(cfg: ReenactConfig) -> Path:
    """Fit B (anime morphs → human blendshapes) on the canonical heads' landmarks."""
    from safetensors.torch import save_file

    from tasks.common.morphs import MorphModel

    from .bridge import bridge_from_models

    models = ReenactData.open(cfg).paths.morph_models
    out = step_dir(FLOW, "bridge")
    key = cache_key(step="bridge", config=cfg.bridge, inputs=[models / "anime.npz", models / "human.npz"])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            anime, human = MorphModel.load(models / "anime.npz"), MorphModel.load(models / "human.npz")
            B, info = bridge_from_models(anime, human, cfg.bridge.ridge)
            save_file({"B": torch.as_tensor(B)}, str(tmp / "bridge.safetensors"),
                      metadata={"rows": ",".join(anime.names), "cols": ",".join(human.names)})
            write_json(tmp / "bridge.json", info)
    return out


@step("reenact.edtn", run_name="train[edtn seed {index}, {cfg.edtn.steps} steps]")
def edtn(cfg: ReenactConfig, bridge_dir: Path, index: int = 0, threads: int = 1) -> Path:
    """Train EDTN number ``index`` (seed ``cfg.seed + index``) on the training human identities'
    heads through B, into ``edtn/seed_<index>/``."""
    from safetensors.torch import load_file

    from .data import human_expressions
    from .edtn import EDTNRecipe, HumanGeometry

    data, e = ReenactData.open(cfg), cfg.edtn

    def recipe() -> EDTNRecipe:
        B = load_file(str(Path(bridge_dir) / "bridge.safetensors"))["B"].numpy()
        geometry = HumanGeometry.from_morph_models(data.paths.morph_models, data.human_identities("train"), B)
        return EDTNRecipe(geometry, human_expressions(data.manifest, "train"), steps=e.steps, batch=e.batch, lr=e.lr,
                          max_active=e.max_active, hidden=e.hidden, seed=cfg.seed + index,
                          manifest_fraction=e.manifest_fraction, sampler=e.sampler)

    # the key leaves out what does not change this model (the seed count, the test-set sizes)
    train_cfg = e.model_dump(mode="json", exclude={"seeds", "eval_expressions", "distractor_expressions", "mouth_boost"})
    return _train("edtn", cfg, recipe, config={"edtn": train_cfg}, inputs=[*data.labels, bridge_dir], threads=threads,
                  folder=f"edtn/seed_{index}", seed=cfg.seed + index)


@step("reenact.generator", run_name="train[generator, {cfg.generator.steps} steps]")
def generator(cfg: ReenactConfig, regressor_dir: Path, threads: int = 1) -> Path:
    """Train the anime head generator (+ patch discriminator) on self-reenactment pairs, with the
    trained morph regressor's features as its perceptual loss."""
    from .data import PairSampler
    from .generator import GeneratorRecipe
    from .regressor import MorphRegressor

    data, g = ReenactData.open(cfg), cfg.generator

    def recipe() -> GeneratorRecipe:
        from safetensors.torch import load_file

        judge = None
        if g.w_perceptual > 0:
            judge = MorphRegressor(17, cfg.regressor.channels, g.image_size)
            judge.load_state_dict(load_file(str(Path(regressor_dir) / "regressor.safetensors")))
        return GeneratorRecipe(PairSampler(data.train_frames(g.styles, g.image_size), g.basis_source), g,
                               seed=cfg.seed, judge=judge)

    inputs = [*data.labels, data.paths.shards] + ([Path(regressor_dir)] if g.w_perceptual > 0 else [])
    return _train("generator", cfg, recipe, config={"g": g, "heldout": cfg.heldout_expression_fraction},
                  inputs=inputs, threads=threads)


@step("reenact.regressor", run_name="train[regressor, {cfg.regressor.steps} steps]")
def regressor(cfg: ReenactConfig, threads: int = 1) -> Path:
    """Train the morph regressor (the expression-fidelity judge) on real training renders, minus a
    validation share of poses on which it then proves which morphs it reads (``judge.json``)."""
    from tasks.common.morphs import ANIME_MORPH_NAMES

    from .regressor import MorphRegressor, Readability, RegressorRecipe, validation_split

    data, r, g = ReenactData.open(cfg), cfg.regressor, cfg.generator
    held: dict = {}

    def recipe() -> RegressorRecipe:
        frames = data.train_frames(r.styles, g.image_size)
        fit, held["validation"] = validation_split(frames, r.validation_fraction, cfg.seed)
        held["all"] = frames
        return RegressorRecipe(fit, steps=r.steps, batch=r.batch, lr=r.lr, channels=r.channels, seed=cfg.seed)

    def prove_reading(out: Path) -> None:
        from safetensors.torch import load_file

        reg = MorphRegressor(17, r.channels, g.image_size)
        reg.load_state_dict(load_file(str(out / "regressor.safetensors")))
        proof = Readability.measure(reg.eval(), held["validation"], held["all"], ANIME_MORPH_NAMES)
        write_json(out / "judge.json", proof.to_json())

    return _train("regressor", cfg, recipe, config={"r": r, "size": g.image_size,
                                                    "heldout": cfg.heldout_expression_fraction},
                  inputs=[*data.labels, data.paths.shards], threads=threads, after=prove_reading)


@step("reenact.report", run_name="report[{cfg.eval_pairs} pairs]")
def report(cfg: ReenactConfig, bridge_dir: Path, edtn_dirs: list[Path], generator_dir: Path, regressor_dir: Path,
           threads: int = 1) -> Path:
    """Metrics (a)(b)(c) on held-out identities and expressions; strips, the cross-domain MP4, tables."""
    from .report import write_report

    set_threads(threads)
    data = ReenactData.open(cfg)
    out = step_dir(FLOW, "report")
    key = cache_key(step="report", config=cfg.model_dump(mode="json", exclude={"resources"}),
                    inputs=[*data.labels, data.paths.shards, bridge_dir, *edtn_dirs, generator_dir, regressor_dir])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            write_report(tmp, cfg, data, bridge_dir, edtn_dirs, generator_dir, regressor_dir)
    return out
