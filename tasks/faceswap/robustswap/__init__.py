"""RobustSwap (METHODS.md §6, arXiv 2303.15768) at toy scale, as a method of the ``faceswap`` flow.

The paper's parts, one module each:

* :mod:`.stylegan`  — StyleGAN2-style generator (mapping, modulated/demodulated convs, noise, toRGB
  skips, an F-space entry point) and discriminator (residual, minibatch std), NS loss + R1;
* :mod:`.face3d`    — the regressor R: image → (shape α, expression e, pose θ), DECA's stand-in, whose
  features also define our FID-like score (:mod:`.fid`);
* :mod:`.inversion` — the W+ encoder E, trained with reconstruction losses against frozen G;
* :mod:`.geometry`  — anny's head in the dataset's conventions, and the explicit 3D loss;
* :mod:`.swapper`   — the swapper: w = E(x_s) + MLP(α_s) on G's layers above F-space, the target's
  features in F-space, identity / reconstruction / 3D / adversarial losses, each guidance switchable;
* :mod:`.prior`     — trains R, G (+ FID curve) and E once, shared by RobustSwap and its ablations;
* :mod:`.method`    — the registry class (``train`` / ``swap``);
* :mod:`.leakage`   — how much of the source's pose, expression, lighting and hair shows in a swap.
"""
