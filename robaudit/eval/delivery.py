"""Delivery through the pipeline (``delivery="stored" | "jpeg=Q"``): does v survive the way images reach the model?

The published convention adds v to the exact tensor the model sees. Here v is placed on the image as
stored (the data's native size: v, built at the model input, upsampled bilinearly), x + v is saved as
the stored format (grey tasks as one luma channel; 8-bit; ``jpeg=Q``: JPEG at quality Q, Pillow's
libjpeg) and then goes through the model's own preprocessing (robaudit's antialiased bilinear resize
to the input size, the model's channels, its normalisation inside the model). Clean images go through
the same steps, so the delivered fooling rate compares like with like.

``eot=True`` builds v through random draws of these steps (expectation over transformation): a stored
size jittered by +-10 %, 8-bit rounding with a straight-through gradient and kornia's differentiable
JPEG at a quality drawn around Q, by signed-gradient ascent on the cross-entropy (white-box).
"""

from __future__ import annotations

import io
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from robaudit.attacks.lp import project
from robaudit.attacks.predict import predict
from robaudit.attacks.uap import UAPOutcome
from robaudit.core.console import info, progress
from robaudit.core.errors import BadInput
from robaudit.core.results import Delivered, success_vector
from robaudit.core.specs import DEFAULT_BUDGET
from robaudit.core.stats import mcnemar_exact, rate
from robaudit.data.images import resize_batch, to_channels

#: how v, built at the model input, is placed on the stored image
PLACE = "bilinear upsampling of v from the input size to the stored size"
#: EOT draws: stored size jitter (fraction) and JPEG quality spread below / above Q
JITTER, Q_BELOW, Q_ABOVE = 0.10, 15, 10


def quality(delivery: str) -> int | None:
    return int(delivery[5:]) if delivery.startswith("jpeg=") else None


def stored_side(task, split: str, input_size: int) -> int:
    """Side of the images as stored (the shorter one: robaudit centre-crops to a square), else the input size."""
    size = task.image_size(split) if hasattr(task, "image_size") else None
    return int(min(size)) if size else int(input_size)


def place(v: torch.Tensor, side: int) -> torch.Tensor:
    """v (1, C, S, S) at the model input -> the stored image's side (bilinear)."""
    if v.shape[-1] == side:
        return v
    return F.interpolate(v, size=(side, side), mode="bilinear", align_corners=False)


def _jpeg(x: torch.Tensor, q: int) -> torch.Tensor:
    """8-bit images (N, C, H, W) through a real JPEG encoder/decoder at quality ``q`` (grey: C = 1)."""
    out = []
    for img in (x * 255).round().clamp(0, 255).to(torch.uint8):
        arr = img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=q)
        buf.seek(0)
        dec = torch.from_numpy(np.array(Image.open(buf)))
        out.append(dec[None] if dec.ndim == 2 else dec.permute(2, 0, 1))
    return torch.stack(out).float() / 255


def deliver(x: torch.Tensor, *, grey: bool, q: int | None, input_size: int, channels: int) -> torch.Tensor:
    """Stored image (N, C, H, W) in [0, 1] (x + v, unclipped) -> what the model receives (N, channels, S, S)."""
    x = x.clamp(0, 1)
    if grey:
        x = to_channels(x, 1)
    x = (x * 255).round() / 255
    if q is not None:
        x = _jpeg(x, q)
    return to_channels(resize_batch(x, input_size), channels)


def stored_eval_images(task, spec, side: int, channels: int) -> torch.Tensor:
    """The evaluated images (the spec's split, limit and seed) at their stored side, with v's channels."""
    xs, _ = task.tensors(spec.split, size=side, limit=spec.eval_limit, seed=spec.seed)
    return to_channels(xs, channels) if xs.shape[1] != channels else xs


def delivered_predictions(module, xs: torch.Tensor, perts, *, grey: bool, q: int | None, input_size: int,
                          channels: int, device=None) -> list[np.ndarray]:
    """Predictions on the stored images ``xs`` plus each perturbation in ``perts`` (None: clean), delivered."""
    side = xs.shape[-1]
    kw = dict(grey=grey, q=q, input_size=input_size, channels=channels)
    return [predict(module, deliver(xs if p is None else xs + place(p, side), **kw), None, batch_size=256,
                    device=device).numpy() for p in perts]


def measure_delivery(prep, v: torch.Tensor, noises: torch.Tensor | None, median: int | None) -> Delivered:
    """v's fooling rate as delivered, its controls' likewise, on the evaluated images at their stored size."""
    spec, lm, task = prep.spec, prep.lm, prep.task
    side, q, size = stored_side(task, spec.split, prep.size), quality(spec.delivery), prep.size
    xs = stored_eval_images(task, spec, side, v.shape[1])  # x_eval's images, stored

    net = prep.fast if prep.fast is not None else lm.module  # batch norm folded (models/fuse.py)

    def delivered_pred(pert: torch.Tensor | None) -> np.ndarray:
        return delivered_predictions(net, xs, [pert], grey=bool(getattr(task, "is_grey", False)), q=q,
                                     input_size=size, channels=lm.channels, device=lm.device)[0]

    clean = delivered_pred(None)
    adv = delivered_pred(v)
    hit = success_vector(clean, adv, prep.target).astype(bool)
    at_input = predict(net, prep.x_eval, None, clip=spec.clip, batch_size=256, device=lm.device).numpy()
    ctrl_rate = p = None
    if noises is not None and len(noises):
        draws = [median] + [i for i in range(min(5, len(noises))) if i != median] if median is not None \
            else list(range(min(5, len(noises))))
        outs = [success_vector(clean, delivered_pred(noises[i][None]), prep.target).astype(bool) for i in draws]
        ctrl_rate = float(np.mean([o.mean() for o in outs]))
        p = mcnemar_exact(hit, outs[0])[1] if median is not None else None
    tgt = float((adv == prep.target).mean()) if prep.target is not None else None
    return Delivered(delivery=spec.delivery, stored_size=side, input_size=size, jpeg_quality=q,
                     v_at_stored=PLACE + (" (built so: eot)" if spec.eot else ""), fooling_rate=rate(hit),
                     targeted_success_rate=tgt, clean_agreement=float((clean == at_input).mean()),
                     control_fooling_rate=ctrl_rate, p_vs_control=p)


def _attacker_images(prep, side: int) -> torch.Tensor:
    """The attacker's images at the stored size: training images, or its photos (plain, not augmented)."""
    spec, task = prep.spec, prep.task
    if spec.source == "train":
        x, _ = task.tensors("train", size=side, limit=spec.source_limit, seed=spec.seed)
    elif spec.source == "tensor":
        raise BadInput("eot with photos given as a tensor is not supported", "pass source='natural' or a folder")
    else:
        from robaudit.data import load_source

        grey = task.is_grey if spec.grayscale_source is None else spec.grayscale_source
        x = load_source(spec.source, limit=spec.source_limit, seed=spec.seed, grayscale=grey).tensor(side)
    return to_channels(x, prep.lm.channels) if x.shape[1] != prep.lm.channels else x


def _eot_pipeline(x: torch.Tensor, v: torch.Tensor, side: int, q: int | None, grey: bool, size: int,
                  channels: int, gen: torch.Generator) -> torch.Tensor:
    """One random draw of the delivery, differentiable in v: jittered stored size, luma, 8-bit (straight-through),
    kornia's differentiable JPEG at a drawn quality, the model's antialiased bilinear resize."""
    from kornia.enhance import jpeg_codec_differentiable

    j = side + int(round(side * JITTER * (2 * torch.rand((), generator=gen).item() - 1)))
    img = (F.interpolate(x, size=(j, j), mode="bilinear", antialias=True, align_corners=False)
           + F.interpolate(v, size=(j, j), mode="bilinear", align_corners=False)).clamp(0, 1)
    if grey:
        img = to_channels(img, 1) if img.shape[1] == 3 else img
    img = img + ((img * 255).round() / 255 - img).detach()  # 8-bit, straight-through
    if q is not None:
        lo, hi = max(1, q - Q_BELOW), min(100, q + Q_ABOVE)
        qs = lo + torch.rand(len(img), generator=gen) * (hi - lo)
        rgb = img.expand(-1, 3, -1, -1) if img.shape[1] == 1 else img
        rgb = jpeg_codec_differentiable(rgb, qs.to(img.device))
        img = rgb[:, :1] if img.shape[1] == 1 else rgb
    img = F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return to_channels(img, channels) if img.shape[1] != channels else img


def build_eot(prep, quiet: bool) -> UAPOutcome:
    """A white-box v (at the model input size, in the same Lp ball) built through the delivery's random draws."""
    spec, lm = prep.spec, prep.lm
    start = time.perf_counter()
    side, q, size = stored_side(prep.task, spec.split, prep.size), quality(spec.delivery), prep.size
    grey = bool(getattr(prep.task, "is_grey", False))
    x = _attacker_images(prep, side)
    total = spec.budget or DEFAULT_BUDGET["cuda" if lm.device.type == "cuda" else "cpu"]
    b = min(spec.batch_size, len(x))
    steps = max(1, total // b)
    info(f"eot: v built through {spec.delivery} delivery draws (stored {side} px +-{JITTER:.0%}, 8-bit"
         + (f", JPEG q{max(1, q - Q_BELOW)}-{min(100, q + Q_ABOVE)}" if q else "") + f"), {steps} steps of {b} "
         f"of {len(x)} attacker images at {side} px")
    gen = torch.Generator().manual_seed(spec.seed)
    net = prep.fast if prep.fast is not None else lm.module
    dev = lm.device
    with torch.inference_mode():
        y = torch.cat([net(to_channels(resize_batch(x[i:i + 256], size), lm.channels).to(dev)).argmax(1).cpu()
                       for i in range(0, len(x), 256)])
    v = torch.zeros(1, lm.channels, size, size, device=dev) if prep.init is None else \
        project(prep.init.reshape(1, lm.channels, size, size).float(), spec.norm, prep.eps).to(dev)
    base = spec.step_size or prep.eps / 10  # L-inf: per pixel; L2: the step's length (linear decay from twice it)
    history, hits = [], []
    with progress(disable=quiet or not prep.is_main) as prog:
        bar = prog.add_task(f"UAP eot/{spec.delivery} on {spec.source}", total=steps * b, status="")
        for t in range(steps):
            idx = torch.randint(len(x), (b,), generator=gen)
            xb = x[idx].to(dev)
            yb = (torch.full((b,), prep.target) if prep.target is not None else y[idx]).to(dev)
            v.requires_grad_(True)
            logits = net(_eot_pipeline(xb, v, side, q, grey, size, lm.channels, gen))
            loss = F.cross_entropy(logits, yb)
            (g,) = torch.autograd.grad(-loss if prep.target is not None else loss, v)
            lr = base * 2 * (1 - t / steps)
            with torch.no_grad():
                step = g.sign() if spec.norm == "linf" else g / g.norm().clamp_min(1e-12)
                v = project(v.detach() + lr * step, spec.norm, prep.eps)
                hit = (logits.argmax(1) == yb) if prep.target is not None else (logits.argmax(1) != yb)
                hits.append(float(hit.float().mean()))
            history.append(((t + 1) * b, float(np.mean(hits[-20:]))))
            prog.update(bar, advance=b)
    prep.candidates, prep.race = [], {"rungs": [], "check_seconds": None, "seconds": time.perf_counter() - start}
    prep.select_score, prep.select_split, prep.select_n = None, None, 0
    outcome = UAPOutcome(v=v.detach().cpu(), source_fooling_rate=float(np.mean(hits[-20:])) if hits else 0.0,
                         iterations=1, images_seen=steps * b, seconds=time.perf_counter() - start, history=history)
    prep.outcome = outcome
    return outcome
