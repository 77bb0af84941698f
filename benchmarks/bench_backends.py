"""Throughput of the per-sample attack backends against the model's own forward/backward speed.

For one model and one batch of real images (pneumoniacxr_128 test split, grey repeated to 3
channels) it times, per backend, one full ``perturb`` call (the adapter, the library and, for ART, the
NumPy round trip) and compares it with the floor: the model's forward + backward pass with respect to
the input, the work a gradient attack cannot avoid (PGD-k needs k of them, FGSM one). DeepFool-L2
(up to 50 steps) is timed too; its work depends on the model (steps until each image crosses the
boundary), so only its fwd+bwd equivalents are given. Measurements are interleaved (floor, then each
backend, per repeat) and the median is reported, so load from other processes affects every row alike.
The model is randomly initialised (2 classes): speed does not depend on the weights except DeepFool's.

    python benchmarks/bench_backends.py                      # resnet10t @ 32 px, batch 64
    python benchmarks/bench_backends.py --arch tf_efficientnet_lite0 --size 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robaudit.attacks.backends import BACKENDS, AttackConfig, create_backend  # noqa: E402
from robaudit.attacks.persample import attack_mode  # noqa: E402
from robaudit.models.normalize import Normalized  # noqa: E402

DATA = Path(os.environ.get("ROBAUDIT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def images(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = np.load(DATA / "pneumoniacxr_128.npz")
    x = torch.from_numpy(d["test_images"][:n]).float().div(255).unsqueeze(1)
    x = F.interpolate(x, size=size, mode="area").repeat(1, 3, 1, 1)
    return x, torch.from_numpy(d["test_labels"][:n, 0].astype(np.int64))


def fwd_bwd(model, x, y) -> None:
    """The floor: one forward and one backward pass with respect to the input."""
    xr = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(xr), y)
    torch.autograd.grad(loss, xr)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet10t")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="PGD iterations")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-deepfool", action="store_true", help="leave out DeepFool (slow in torchattacks)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    import timm

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Normalized(timm.create_model(args.arch, pretrained=False, num_classes=2), (0.5,) * 3, (0.25,) * 3).eval()
    x, y = images(args.batch, args.size)
    eps = 2 / 255
    # name -> (config, backends, the fwd+bwd passes the algorithm needs: None when it depends on the model)
    configs = {
        "fgsm": (AttackConfig("fgsm", "linf", eps, 2), BACKENDS, 1),
        f"pgd-{args.steps}": (AttackConfig("pgd", "linf", eps, 2, steps=args.steps, step_size=2.5 * eps / args.steps),
                              BACKENDS, args.steps),
        "deepfool-l2": (AttackConfig("deepfool", "l2", None, 2, steps=50), BACKENDS, None),
    }
    if args.skip_deepfool:
        del configs["deepfool-l2"]
    rows: dict[tuple[str, str], list[float]] = {}
    floor: list[float] = []
    with attack_mode(model):
        adapters = {b: create_backend(b, model) for b in BACKENDS}
        for bk in adapters.values():  # warm-up: library imports, ART's classifier
            bk.perturb(x[:2], y[:2], configs["fgsm"][0])
        fwd_bwd(model, x, y)
        for _ in range(args.repeats):
            floor.append(timed(lambda: fwd_bwd(model, x, y)))
            for name, (cfg, backends, _) in configs.items():
                for b in backends:
                    bk = adapters[b]
                    rows.setdefault((name, b), []).append(timed(lambda bk=bk, cfg=cfg: bk.perturb(x, y, cfg)))
    t_fb = statistics.median(floor)
    out = {"arch": args.arch, "size": args.size, "batch": args.batch, "repeats": args.repeats,
           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
           "platform": platform.platform(), "floor_fwd_bwd_s": t_fb, "floor_images_per_s": args.batch / t_fb,
           "rows": []}
    print(f"{args.arch} @ {args.size} px, batch {args.batch}, {torch.get_num_threads()} threads, median of "
          f"{args.repeats}: forward+backward {1000 * t_fb:.1f} ms = {args.batch / t_fb:.0f} images/s\n")
    print("| attack | backend | seconds / batch | images / s | fwd+bwd equivalents | overhead vs the passes needed |")
    print("|---|---|---:|---:|---:|---:|")
    for (name, b), ts in rows.items():
        t = statistics.median(ts)
        passes = configs[name][2]
        overhead = t / (passes * t_fb) if passes else None
        out["rows"].append({"attack": name, "backend": b, "seconds": t, "images_per_s": args.batch / t,
                            "fwd_bwd_equivalents": t / t_fb, "overhead": overhead})
        print(f"| {name} | {b} | {t:.3f} | {args.batch / t:.1f} | {t / t_fb:.1f} | "
              f"{f'{overhead:.2f}' if overhead else 'depends on the model'} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
