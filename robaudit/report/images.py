"""Pictures of a run: the perturbation (amplified) and before/after examples with predicted labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def amplify(v) -> np.ndarray:
    """Map a perturbation (C,H,W or 1,C,H,W) to an HWC uint8 image: 0.5 + v scaled to fill [0,1]."""
    a = np.asarray(v, dtype=np.float32)
    a = a.reshape(a.shape[-3:]).transpose(1, 2, 0)
    m = float(np.abs(a).max()) or 1.0
    return ((0.5 + 0.5 * a / m) * 255).round().clip(0, 255).astype(np.uint8)


def save_uap_png(v, path: Path, scale: int = 4) -> None:
    """Save the amplified perturbation as a PNG (nearest-neighbour upscaled for small inputs)."""
    from PIL import Image

    img = Image.fromarray(amplify(v.numpy() if hasattr(v, "numpy") else v))
    if img.width < 256:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)


def save_examples_png(x, v, clean, adv, classes: list[str], path: Path, n: int = 6, clip: bool = True) -> None:
    """A grid: clean images with their predictions above, x+v with adversarial predictions below.

    Fooled images are shown first, so a reviewer sees what the attack does.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean_np, adv_np = np.asarray(clean), np.asarray(adv)
    order = np.concatenate([np.flatnonzero(clean_np != adv_np), np.flatnonzero(clean_np == adv_np)])[:n]
    if len(order) == 0:
        return
    xs = x[order].float()
    xa = xs + v.reshape(1, *v.shape[-3:])
    if clip:
        xa = xa.clamp(0, 1)
    fig, axes = plt.subplots(2, len(order), figsize=(2.1 * len(order), 4.6), squeeze=False)
    for j, i in enumerate(order):
        for row, (img, pred) in enumerate(((xs[j], clean_np[i]), (xa[j], adv_np[i]))):
            ax = axes[row][j]
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            name = classes[int(pred)]
            ax.set_title(("clean: " if row == 0 else "x+v: ") + (name[:18] + "…" if len(name) > 19 else name),
                         fontsize=8, color="black" if row == 0 or clean_np[i] == adv_np[i] else "#b00020")
            ax.axis("off")
    fig.suptitle("Model predictions before (top) and after (bottom) adding the UAP", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
