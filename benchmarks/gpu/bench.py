"""The measuring steps of ``benchmarks/gpu/run.sh``; each writes ``<step>.json`` into ``--out``.

Steps (``python benchmarks/gpu/bench.py STEP --profile gpu|smoke --out DIR``):

* ``train``: fine-tune pneumonia-mini_tf_efficientnet_lite0 (offline ImageNet weights) with the paper
  slice's training settings, so the slice reuses it and the speed step attacks a real medical model.
* ``speed``: ART's ``UniversalPerturbation`` (attacker fgsm, step eps/10, 1 and 3 passes over the
  bundled photos) against robaudit's batched fgsm and sgd: seconds to reach ART's best *test* fooling
  rate (the share of the medical test images whose prediction changes), and the ratio.
* ``throughput``: at 224 px on a resnet50 (random weights; smaller in the smoke), images/s of the
  batched fgsm loop as a fraction of the model's own forward + backward at the auto batch size, in
  float32 and under ``--amp``.
* ``stream``: a folder of JPEGs generated here (random crops of the bundled photos), decoded with
  DataLoader workers: images/s with 0 and N workers, and a UAP built over the stream.
* ``paper``: a slice of the ``paper`` recipe through ``robaudit audit --recipe ... --train-missing``.
* ``summary``: every step's figures and checks into ``results.json`` and ``results.md``; exit 1 on
  any failed check.

``--profile gpu`` is sized for under 8 minutes on one H100-class GPU; ``smoke`` for 2 CPU cores in CI.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import throughput  # noqa: E402  (benchmarks/throughput.py)

TASK, ARCH = "pneumonia-mini", "tf_efficientnet_lite0"
MODEL = f"{TASK}_{ARCH}"
ZETA = 0.04  # the published magnitude (4 % of the mean image norm)


@dataclass(frozen=True)
class Profile:
    """Every size a step uses; ``gpu`` and ``smoke`` run the same steps."""

    device: str
    image_size: int  # medical model input (train, speed, stream, paper)
    epochs: int
    scratch_epochs: int
    train_batch: int
    train_limit: int | None
    photos: int  # natural photos for ART vs robaudit
    test_limit: int | None  # medical test images the fooling rates are measured on
    uap_batch: int
    max_passes: int  # robaudit passes tried before giving up on ART's rate
    tp_arch: str
    tp_size: int
    tp_images: int
    tp_passes: int
    tp_candidates: tuple[int, ...]
    tp_steps: int
    stream_images: int
    stream_px: int
    stream_serial: int  # images decoded without workers (the baseline)
    stream_workers: int
    stream_chunk: int
    paper_controls: int
    paper_eval_limit: int | None
    paper_source_limit: int | None
    paper_max_iter: int | None
    paper_budget: int  # augmented photos per natural cell, where the recipe has that knob


PROFILES = {
    "gpu": Profile(device="cuda", image_size=224, epochs=5, scratch_epochs=10, train_batch=64, train_limit=None,
                   photos=400, test_limit=None, uap_batch=64, max_passes=10,
                   tp_arch="resnet50", tp_size=224, tp_images=4096, tp_passes=3,
                   tp_candidates=(32, 64, 128, 256, 512), tp_steps=10,
                   stream_images=6000, stream_px=320, stream_serial=400, stream_workers=8, stream_chunk=250,
                   paper_controls=10, paper_eval_limit=None, paper_source_limit=None, paper_max_iter=None,
                   paper_budget=4000),
    "smoke": Profile(device="cpu", image_size=32, epochs=1, scratch_epochs=1, train_batch=64, train_limit=160,
                     photos=48, test_limit=96, uap_batch=16, max_passes=5,
                     tp_arch="resnet10t", tp_size=64, tp_images=64, tp_passes=2, tp_candidates=(8, 16, 32),
                     tp_steps=2, stream_images=96, stream_px=96, stream_serial=32, stream_workers=2,
                     stream_chunk=32, paper_controls=2, paper_eval_limit=48, paper_source_limit=32,
                     paper_max_iter=2, paper_budget=64),
}


def write(out: Path, name: str, doc: dict) -> None:
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")


def train_settings(p: Profile) -> dict:
    """The paper slice's ``[train]`` table; the ``train`` step uses the same, so the slice reuses the model."""
    return {k: v for k, v in dict(epochs=p.epochs, scratch_epochs=p.scratch_epochs, image_size=p.image_size,
                                  batch_size=p.train_batch, train_limit=p.train_limit, seed=0).items()
            if v is not None}


# ------------------------------------------------------------------------------------------ train
def step_train(p: Profile, out: Path) -> None:
    from robaudit.models.train import TrainConfig, train_model

    t = train_settings(p)
    cfg = TrainConfig(epochs=t["epochs"], image_size=t["image_size"], batch_size=t["batch_size"],
                      train_limit=t.get("train_limit"), seed=0)
    t0 = time.perf_counter()
    card = train_model(MODEL, cfg, device=p.device, quiet=True, resume=False)
    write(out, "train", {"model": MODEL, "device": card.train["device"], "image_size": p.image_size,
                         "epochs": p.epochs, "n_train": card.train["n_train"], "wall_s": time.perf_counter() - t0,
                         "train_s": card.metrics["seconds"], "test_accuracy": card.metrics["test_accuracy"],
                         "val_accuracy": card.metrics["val_accuracy"]})


# ------------------------------------------------------------------------------------------ speed
def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def art_uap(model, x: torch.Tensor, classes: int, eps: float, passes: int, device) -> tuple[np.ndarray, float, float]:
    """ART's UniversalPerturbation (attacker fgsm, step eps/10, L-inf), as benchmarks/bench_uap.py drives it:
    (v, seconds, ART's own fooling rate on the photos)."""
    from art.attacks.evasion import UniversalPerturbation
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                            nb_classes=classes, clip_values=(0.0, 1.0),
                            device_type="gpu" if torch.device(device).type == "cuda" else "cpu")
    attack = UniversalPerturbation(clf, attacker="fgsm", attacker_params={"eps": eps / 10}, delta=1e-6,
                                   max_iter=passes, eps=eps, norm=np.inf, verbose=False)
    random.seed(0)
    np.random.seed(0)
    _sync(device)
    t0 = time.perf_counter()
    attack.generate(x.numpy())
    _sync(device)
    return attack.noise, time.perf_counter() - t0, float(attack.fooling_rate)


def step_speed(p: Profile, out: Path) -> None:
    from robaudit.attacks.predict import predict
    from robaudit.attacks.uap import build_uap
    from robaudit.data import load_source, load_task
    from robaudit.models import load_model

    lm = load_model(MODEL, device=p.device)
    model, size, dev = lm.module, lm.card.input_size, lm.device
    task = load_task(TASK)
    x_test, _ = task.tensors("test", size=size, limit=p.test_limit, seed=0)
    photos = load_source("natural", limit=p.photos, seed=0, grayscale=task.is_grey).tensor(size)
    eps = ZETA * task.mean_norm("linf", size)
    clean = predict(model, x_test, batch_size=256)

    def test_rate(v) -> float:
        return float((predict(model, x_test, torch.as_tensor(v).float(), batch_size=256) != clean).float().mean())

    build_uap(model, photos[: 2 * p.uap_batch], eps=eps, max_iter=1, batch_size=p.uap_batch)  # warm-up (kernels)
    art = []
    for passes in (1, 3):
        v, secs, src = art_uap(model, photos, len(lm.classes), eps, passes, dev)
        art.append({"passes": passes, "seconds": secs, "source_rate": src, "test_rate": test_rate(v)})
        print(f"ART {passes} pass(es): test fooling {art[-1]['test_rate']:.3f} in {secs:.1f} s", flush=True)
    best = max(art, key=lambda r: (r["test_rate"], -r["seconds"]))
    doc = {"device": str(dev), "model": MODEL, "image_size": size, "photos": len(photos), "test_images": len(x_test),
           "norm": "linf", "zeta": ZETA, "eps": eps, "batch_size": p.uap_batch, "art": art,
           "art_best_test_rate": best["test_rate"], "art_best_passes": best["passes"], "art_s": best["seconds"]}
    for method in ("fgsm", "sgd"):
        trail = []
        for k in range(1, p.max_passes + 1):  # each a fresh build, timed end to end, as a user would run it
            o = build_uap(model, photos, method=method, norm="linf", eps=eps, max_iter=k, batch_size=p.uap_batch,
                          seed=0)
            trail.append({"passes": k, "seconds": o.seconds, "test_rate": test_rate(o.v),
                          "source_rate": o.source_fooling_rate})
            if trail[-1]["test_rate"] >= best["test_rate"]:
                break
        hit = trail[-1]
        reached = hit["test_rate"] >= best["test_rate"]
        doc[method] = {"reached": reached, "passes": hit["passes"], "seconds": hit["seconds"],
                       "test_rate": hit["test_rate"], "speedup": best["seconds"] / hit["seconds"], "trail": trail}
        print(f"robaudit {method}: test fooling {hit['test_rate']:.3f} after {hit['passes']} pass(es) in "
              f"{hit['seconds']:.2f} s ({'reaches' if reached else 'does NOT reach'} ART's "
              f"{best['test_rate']:.3f}: {best['seconds'] / hit['seconds']:.1f}x)", flush=True)
    write(out, "speed", doc)


# ------------------------------------------------------------------------------------------ throughput
def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1] (content does not change the cost of a step)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand((n, 3, max(2, size // 8), max(2, size // 8)), generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def loop_rate(model, x, batch_size: int, passes: int, device) -> tuple[float, float]:
    """(steady-state, end-to-end) images/s of one batched fgsm build (steady: from the progress timestamps)."""
    from robaudit.attacks.uap import build_uap

    stamps: list[tuple[float, int]] = []

    def progress(n: int, status: str | None = None) -> None:
        if n:
            stamps.append((time.perf_counter(), n))

    build_uap(model, x[: 2 * batch_size], eps=8 / 255, max_iter=1, batch_size=batch_size, device=device)  # warm-up
    o = build_uap(model, x, eps=8 / 255, max_iter=passes, batch_size=batch_size, progress=progress, device=device)
    (t0, _), (t1, _) = stamps[0], stamps[-1]
    return sum(n for _, n in stamps[1:]) / (t1 - t0), o.images_seen / o.seconds


def step_throughput(p: Profile, out: Path) -> None:
    import timm

    from robaudit.models.normalize import Normalized, channels_last_model, fast_model

    dev = torch.device(p.device)
    torch.manual_seed(0)
    model = Normalized(timm.create_model(p.tp_arch, pretrained=False, num_classes=2), (0.5,) * 3, (0.5,) * 3)
    model = model.to(dev).eval()
    shape = (3, p.tp_size, p.tp_size)
    with channels_last_model(model) as net:  # the loop's own memory format
        bs, sweep = throughput.suggest_batch_size(net, shape, dev, candidates=p.tp_candidates)
        model_rate = throughput.grad_throughput(net, shape, bs, dev, steps=p.tp_steps)
    x = smooth_images(p.tp_images, p.tp_size)
    steady, e2e = loop_rate(model, x, bs, p.tp_passes, dev)
    doc = {"device": str(dev), "arch": p.tp_arch, "size": p.tp_size, "images": p.tp_images, "passes": p.tp_passes,
           "batch_size": bs, "sweep_images_per_s": {str(k): v for k, v in sweep.items()},
           "model_images_per_s": model_rate, "loop_images_per_s": steady, "loop_fraction": steady / model_rate,
           "end_to_end_images_per_s": e2e, "end_to_end_fraction": e2e / model_rate}
    with fast_model(model, dev, amp=True) as net:
        with channels_last_model(net) as cl:  # as build_uap runs it (fast_model is channels-last on CUDA only)
            amp_rate = throughput.grad_throughput(cl, shape, bs, dev, steps=p.tp_steps)
        amp_steady, amp_e2e = loop_rate(net, x, bs, p.tp_passes, dev)
    doc.update(amp_model_images_per_s=amp_rate, amp_loop_images_per_s=amp_steady,
               amp_loop_fraction=amp_steady / amp_rate, amp_end_to_end_images_per_s=amp_e2e,
               amp_speedup=amp_steady / steady)
    print(f"{p.tp_arch} @ {p.tp_size} px, auto batch {bs}: model {model_rate:.0f} img/s, fgsm loop {steady:.0f} "
          f"({steady / model_rate:.2f}); --amp: model {amp_rate:.0f}, loop {amp_steady:.0f} "
          f"({amp_steady / amp_rate:.2f})", flush=True)
    write(out, "throughput", doc)


# ------------------------------------------------------------------------------------------ stream
_PHOTOS: list = []


def _write_jpegs(job: tuple[str, int, int, int]) -> int:
    """Write JPEGs ``start..stop-1``: seeded random square crops (scale 0.3-1) of the bundled photos."""
    from PIL import Image

    from robaudit.data.sources import bundled_photos

    folder, start, stop, px = job
    if not _PHOTOS:
        _PHOTOS.extend(img for _, img in bundled_photos() if min(img.shape[:2]) >= 128)
    for i in range(start, stop):
        rng = np.random.default_rng([7, i])
        img = _PHOTOS[i % len(_PHOTOS)]
        h, w = img.shape[:2]
        s = int(min(h, w) * rng.uniform(0.3, 1.0))
        y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        crop = Image.fromarray(np.ascontiguousarray(img[y:y + s, x:x + s])).convert("RGB")
        crop.resize((px, px), Image.BILINEAR).save(Path(folder) / f"{i:06d}.jpg", quality=90)
    return stop - start


def generate_photos(folder: Path, n: int, px: int, procs: int) -> None:
    step = -(-n // (procs * 4))
    jobs = [(str(folder), a, min(n, a + step), px) for a in range(0, n, step)]
    with ProcessPoolExecutor(max_workers=procs) as pool:
        assert sum(pool.map(_write_jpegs, jobs)) == n


def _count(chunks) -> tuple[int, float]:
    t0, seen = time.perf_counter(), 0
    for x in chunks:
        seen += len(x)
    return seen, time.perf_counter() - t0


def step_stream(p: Profile, out: Path) -> None:
    from robaudit.attacks.uap import build_uap
    from robaudit.data import load_source, load_task
    from robaudit.models import load_model
    from robaudit.models.normalize import channels_last_model

    cpus = os.cpu_count() or 1
    workers = max(1, min(p.stream_workers, cpus - 1))
    with tempfile.TemporaryDirectory(prefix="robaudit-stream-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        generate_photos(folder, p.stream_images, p.stream_px, max(1, min(cpus, 16)))  # before CUDA is initialised
        gen_s = time.perf_counter() - t0
        lm = load_model(MODEL, device=p.device)
        size, grey = lm.card.input_size, load_task(TASK).is_grey
        src = load_source(folder, grayscale=grey)
        serial = load_source(folder, limit=p.stream_serial, seed=0, grayscale=grey)
        n0, s0 = _count(serial.chunks(size, chunk_size=p.stream_chunk, workers=0))
        n1, s1 = _count(src.chunks(size, chunk_size=p.stream_chunk, workers=workers))
        with channels_last_model(lm.module) as net:
            model_rate = throughput.grad_throughput(net, (3, size, size), p.uap_batch, lm.device, steps=p.tp_steps)
        eps = ZETA * load_task(TASK).mean_norm("linf", size)
        o = build_uap(lm.module, src.chunks(size, chunk_size=p.stream_chunk, workers=workers), eps=eps, max_iter=1,
                      batch_size=p.uap_batch, seed=0)
    doc = {"device": str(lm.device), "images": p.stream_images, "jpeg_px": p.stream_px, "size": size,
           "generate_s": gen_s, "serial_images": n0, "serial_images_per_s": n0 / s0, "workers": workers,
           "workers_images": n1, "workers_images_per_s": n1 / s1, "workers_speedup": (n1 / s1) / (n0 / s0),
           "skipped": src.skipped, "uap_images": o.images_seen, "uap_images_per_s": o.images_seen / o.seconds,
           "model_images_per_s": model_rate, "uap_fraction_of_model": o.images_seen / o.seconds / model_rate}
    print(f"{p.stream_images} JPEGs ({p.stream_px} px) -> {size} px: {n0 / s0:.0f} img/s without workers, "
          f"{n1 / s1:.0f} with {workers}; fgsm UAP over the stream {doc['uap_images_per_s']:.0f} img/s "
          f"({doc['uap_fraction_of_model']:.2f} of the model's fwd+bwd)", flush=True)
    write(out, "stream", doc)


# ------------------------------------------------------------------------------------------ paper
def paper_recipe(p: Profile) -> str:
    """A slice of attacks/paper.toml: one task, one arch, natural + train sources, L2, zeta 4%."""
    from robaudit.auditing.recipes import AuditRecipe

    opt = {"eval_limit": p.paper_eval_limit, "source_limit": p.paper_source_limit, "max_iter": p.paper_max_iter}
    if "budget" in AuditRecipe.model_fields:  # augmented photo streams: size the draw to the time box
        opt["budget"] = p.paper_budget
    lines = ['name = "paper-slice"',
             'description = "A slice of the paper recipe sized for benchmarks/gpu/run.sh."',
             f'tasks = ["{TASK}"]', f'archs = ["{ARCH}"]', 'transfers = ["full", "scratch"]',
             'sources = ["natural", "train"]', 'norms = ["l2"]', f"zetas = [{ZETA}]", 'methods = ["fgsm"]',
             'targets = "all"', f"controls = {p.paper_controls}", 'split = "test"', "batch_size = 64",
             "clip = false", "seed = 0", f'device = "{p.device}"', "transfer_eval = true"]
    lines += [f"{k} = {v}" for k, v in opt.items() if v is not None]
    lines += ["", "[train]"] + [f"{k} = {v}" for k, v in train_settings(p).items()]
    return "\n".join(lines) + "\n"


def step_paper(p: Profile, out: Path) -> None:
    from robaudit.models.store import model_dir, read_card

    recipe = out / "paper-slice.toml"
    recipe.write_text(paper_recipe(p))
    audit_dir = out / "paper-slice"
    cmd = [sys.executable, "-m", "robaudit.cli", "audit", "--recipe", str(recipe), "--train-missing", "--out",
           str(audit_dir), "--no-report"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (out / "paper-slice.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"robaudit audit exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    doc = json.loads((audit_dir / "audit.json").read_text())
    table = doc["tables"]["1. UAP vs random control (every cell)"]
    scratch = read_card(model_dir(f"{MODEL}_random") / "card.json")
    write(out, "paper", {"command": " ".join(cmd[1:]), "wall_s": wall, "cells_s": doc["seconds"],
                         "cells": doc["counts"]["cells"], "done": doc["counts"]["done"],
                         "failed": doc["counts"]["failed"], "scratch_train_s": scratch.metrics["seconds"],
                         "scratch_test_accuracy": scratch.metrics["test_accuracy"],
                         "device": doc["environment"].get("device"), "table": table})
    print(f"paper slice: {doc['counts']['done']}/{doc['counts']['cells']} cells in {wall:.0f} s wall "
          f"(cells {doc['seconds']:.0f} s)", flush=True)


# ------------------------------------------------------------------------------------------ summary
#: the figures results.json must hold (finite numbers): step -> (key, meaning); benchmarks/README.md lists them
FIGURES = {
    "tests": [("passed", "device tests passed"), ("failed", "device tests failed or errored"),
              ("skipped", "device tests skipped"), ("cuda_passed", "passed tests on the cuda device"),
              ("wall_s", "seconds for the tests step")],
    "train": [("train_s", "seconds to fine-tune the lite0 model"),
              ("test_accuracy", "its accuracy on the pneumonia-mini test split")],
    "speed": [("art_best_test_rate", "ART's best test fooling rate (1 or 3 passes)"),
              ("art_best_passes", "ART passes that gave it"), ("art_s", "ART seconds for that run"),
              ("fgsm.seconds", "robaudit batched fgsm: seconds of the first build reaching ART's rate"),
              ("fgsm.passes", "its passes"), ("fgsm.test_rate", "its test fooling rate"),
              ("fgsm.speedup", "ART seconds / robaudit seconds"),
              ("sgd.seconds", "robaudit batched sgd: the same"), ("sgd.passes", "its passes"),
              ("sgd.test_rate", "its test fooling rate"), ("sgd.speedup", "ART seconds / robaudit seconds")],
    "throughput": [("batch_size", "auto batch size (throughput knee)"),
                   ("model_images_per_s", "model forward+backward to the input, images/s"),
                   ("loop_images_per_s", "batched fgsm UAP loop, steady state, images/s"),
                   ("loop_fraction", "loop / model"),
                   ("end_to_end_images_per_s", "the build end to end (clean and final predictions included)"),
                   ("amp_model_images_per_s", "model under --amp (bfloat16 autocast + channels-last)"),
                   ("amp_loop_images_per_s", "fgsm loop under --amp"), ("amp_loop_fraction", "amp loop / amp model"),
                   ("amp_speedup", "amp loop / float32 loop")],
    "stream": [("images", "JPEGs generated and streamed"), ("generate_s", "seconds to write them"),
               ("serial_images_per_s", "decoded images/s without workers"), ("workers", "decoding workers"),
               ("workers_images_per_s", "decoded images/s with the workers"),
               ("workers_speedup", "workers / serial"),
               ("uap_images_per_s", "batched fgsm UAP over the streamed folder, images/s"),
               ("uap_fraction_of_model", "that / the model's forward+backward images/s")],
    "paper": [("wall_s", "robaudit audit wall seconds (training the random-init twin included)"),
              ("cells_s", "seconds in the cells"), ("cells", "cells"), ("done", "cells done"),
              ("failed", "cells failed"), ("scratch_train_s", "seconds to train the random-init twin")],
}


def dig(doc, key: str):
    for part in key.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def junit(path: Path) -> dict:
    """Counts from pytest's JUnit XML; ``cuda_passed``: passed tests whose id names the cuda device."""
    res = {"passed": 0, "failed": 0, "skipped": 0, "cuda_passed": 0, "failures": []}
    if not path.is_file():
        return res
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name", "")
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            res["failed"] += 1
            res["failures"].append(f"{name}: {(bad.get('message') or '')[:300]}")
        elif case.find("skipped") is not None:
            res["skipped"] += 1
        else:
            res["passed"] += 1
            res["cuda_passed"] += "cuda" in name.split("[", 1)[-1]
    return res


def environment(p: Profile) -> dict:
    env = {"profile": "smoke" if p.device == "cpu" else "gpu", "torch": torch.__version__, "cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "cpus": os.cpu_count(), "python": platform.python_version(),
           "machine": platform.machine(), "host_cpu": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return env


def step_summary(p: Profile, out: Path) -> int:
    steps = {}
    if (out / "steps.tsv").is_file():
        for line in (out / "steps.tsv").read_text().splitlines():
            name, rc, secs = line.split("\t")
            steps[name] = {"exit_code": int(rc), "wall_s": float(secs)}
    doc: dict = {"environment": environment(p), "steps": steps}
    for name in FIGURES:
        f = out / f"{name}.json"
        doc[name] = json.loads(f.read_text()) if f.is_file() else None
    doc["tests"] = junit(out / "tests.xml") | {"wall_s": steps.get("tests", {}).get("wall_s", float("nan"))}
    doc["wall_s"] = sum(s["wall_s"] for s in steps.values())
    smoke = p.device == "cpu"
    doc["time_target_s"] = 180 if smoke else 480  # the targets; reported, not a check
    doc["time_target_met"] = doc["wall_s"] <= doc["time_target_s"]
    checks = [("CUDA is available" + (" (not required: --cpu-smoke)" if smoke else ""),
               smoke or torch.cuda.is_available())]
    checks += [(f"step {n} exited 0", s["exit_code"] == 0) for n, s in steps.items()]
    checks += [("device tests ran, none failed", doc["tests"]["passed"] > 0 and doc["tests"]["failed"] == 0)]
    if not smoke:
        checks.append(("CUDA device tests ran (pytest -m cuda)", doc["tests"]["cuda_passed"] > 0))
        for name in ("train", "speed", "throughput", "stream", "paper"):
            checks.append((f"{name} ran on cuda", str(dig(doc, f"{name}.device") or "").startswith("cuda")))
    for name, figures in FIGURES.items():
        bad = [k for k, _ in figures if not finite(dig(doc, f"{name}.{k}"))]
        checks.append((f"{name}: figures finite" + (f" (missing or not finite: {', '.join(bad)})" if bad else ""),
                       not bad))
    checks.append(("paper slice: every cell done", finite(dig(doc, "paper.cells")) and
                   dig(doc, "paper.done") == dig(doc, "paper.cells") and dig(doc, "paper.failed") == 0))
    checks.append(("stream: every generated image decoded", dig(doc, "stream.workers_images") == p.stream_images
                   and dig(doc, "stream.uap_images") == p.stream_images))
    doc["checks"] = [{"check": c, "ok": bool(ok)} for c, ok in checks]
    doc["ok"] = all(ok for _, ok in checks)
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    (out / "results.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0 if doc["ok"] else 1


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown(doc: dict) -> str:
    env = doc["environment"]
    where = env.get("gpu") or f"CPU only ({env['cpus']} cores)"
    lines = [f"# robaudit GPU check ({env['profile']})", "",
             f"Measured on: **{where}**; torch {env['torch']} (CUDA {env['cuda']}), {env['cpus']} CPU cores; "
             f"total {doc['wall_s']:.0f} s (target {doc['time_target_s']} s: "
             f"{'met' if doc['time_target_met'] else 'NOT met'}).", "",
             "| step | figure | value | meaning |", "|---|---|---:|---|"]
    for name, figures in FIGURES.items():
        lines += [f"| {name} | {k} | {_fmt(dig(doc, f'{name}.{k}'))} | {what} |" for k, what in figures]
    lines += ["", "| step | exit code | wall s |", "|---|---:|---:|"]
    lines += [f"| {n} | {s['exit_code']} | {s['wall_s']:.1f} |" for n, s in doc["steps"].items()]
    table = dig(doc, "paper.table")
    if table:
        lines += ["", "Paper slice (table 1 of the audit: UAP vs random control, every cell):", "",
                  "| " + " | ".join(table["columns"]) + " |", "|" + "---|" * len(table["columns"])]
        lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in table["rows"]]
    if doc["tests"].get("failures"):
        lines += ["", "Failed tests:", ""] + [f"- {f}" for f in doc["tests"]["failures"]]
    lines += ["", "| check | ok |", "|---|---|"] + [f"| {c['check']} | {'yes' if c['ok'] else '**NO**'} |"
                                                   for c in doc["checks"]]
    lines += ["", f"**{'ALL CHECKS PASSED' if doc['ok'] else 'SOME CHECKS FAILED'}**", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["train", "speed", "throughput", "stream", "paper", "summary"])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="gpu")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    p = PROFILES[a.profile]
    a.out.mkdir(parents=True, exist_ok=True)
    if a.step == "summary":
        return step_summary(p, a.out)
    print(json.dumps({"step": a.step, "profile": asdict(p)}), flush=True)
    {"train": step_train, "speed": step_speed, "throughput": step_throughput, "stream": step_stream,
     "paper": step_paper}[a.step](p, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
