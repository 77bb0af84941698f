"""One UAP over two processes (torchrun, gloo) equals one process on the same data and total batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from robaudit.attacks.uap import build_uap
from robaudit.core.errors import BadInput

NAME, SIZE, CLASSES = "pneumonia_resnet10t_dist_test", 32, ["normal", "pneumonia"]
N = 41  # odd: the two shards differ in size, and the last global mini-batch leaves one rank empty

#: build_uap settings compared image for image: (method, norm, eps, targeted, options, chunked)
CASES = {
    "fgsm-linf": ("fgsm", "linf", 0.03, False, {}, False),
    "fgsm-l2-targeted": ("fgsm", "l2", 1.5, True, {}, False),
    "fgsm-linf-chunks": ("fgsm", "linf", 0.03, False, {}, True),
    "sgd-sign": ("sgd", "linf", 0.03, False, {}, False),
    "sgd-adam-clamped": ("sgd", "l2", 1.5, False, {"optimizer": "adam", "loss": "clamped"}, True),
    "deepfool-l2": ("deepfool", "l2", 1.5, False, {"df_iter": 3}, True),
}

WORKER = textwrap.dedent('''
    """torchrun worker: the CASES with build_uap, run_uap on a streamed folder source, then the CLI."""
    import json, sys
    from pathlib import Path

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from robaudit.attacks.uap import build_uap
    from robaudit.cli import main
    from robaudit.core.specs import make_spec
    from robaudit.attacks.uap.group import init_from_env, shard
    from robaudit.core.errors import BadInput
    from robaudit.eval.run import run_uap
    from robaudit.models import load_model

    work = Path(sys.argv[1])
    cfg = json.loads((work / "cfg.json").read_text())
    group = init_from_env("cpu")
    r = group.rank
    model = load_model(cfg["name"], device="cpu").module
    x = torch.load(work / "photos.pt")
    for name, (method, norm, eps, targeted, options, chunked) in cfg["cases"].items():
        src = [x[:20], x[20:40], x[40:]] if chunked else x
        out = build_uap(model, shard(src, group), method=method, norm=norm, eps=eps, target=1 if targeted else None,
                        max_iter=2, batch_size=8, seed=3, distributed=True, **options)
        np.save(work / f"{name}.rank{r}.npy", out.v.numpy())
        (work / f"{name}.rank{r}.json").write_text(json.dumps({"rate": out.source_fooling_rate,
                                                               "seen": out.images_seen, "history": out.history}))
    try:
        build_uap(model, shard(x, group), eps=0.03, max_iter=1, mode="reference", distributed=True)
    except BadInput as exc:
        (work / f"reference.rank{r}.txt").write_text(str(exc))
    spec = make_spec(**cfg["spec"])
    run = run_uap(spec, out_dir=work / "run_uap", quiet=True)
    np.save(work / f"run_uap.rank{r}.npy", run.v.numpy())
    sys.exit(main(cfg["cli"]))
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, data_root):
    """A saved tiny model, N ImageNet photos at 32 px, and the run settings shared by both sides."""
    import timm

    from robaudit.models.store import ModelCard, save_model

    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=len(CLASSES))
    save_model(net, ModelCard(name=NAME, arch="resnet10t", init="random", task="pneumonia", classes=CLASSES,
                              input_size=SIZE, mean=(0.5,) * 3, std=(0.5,) * 3))
    files = sorted((data_root / "imagenet").glob("*.JPEG"))[:N]
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)) for f in files]
    photos = (torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255).contiguous()
    work = tmp_path_factory.mktemp("dist")
    torch.save(photos, work / "photos.pt")
    spec = dict(model=NAME, source=str(data_root / "imagenet"), source_limit=N, chunk_size=10, norm="linf",
                zeta=0.08, max_iter=2, batch_size=8, eval_limit=24, controls=2, device="cpu", seed=1, augment=False,
                select="none", method="fgsm")
    cli = ["uap", "--model", NAME, "--source", "train", "--source-limit", "30", "--norm", "l2", "--zeta", "0.1",
           "--max-iter", "2", "--batch-size", "8", "--eval-limit", "24", "--controls", "2", "--device", "cpu",
           "--method", "sgd", "--out", str(work / "cli"), "--json", "--no-report", "--select", "none"]
    (work / "cfg.json").write_text(json.dumps({"name": NAME, "cases": CASES, "spec": spec, "cli": cli}))
    (work / "worker.py").write_text(WORKER)
    return work, photos, spec, cli


@pytest.fixture(scope="module")
def torchrun(setup):
    """Launch the worker on two gloo processes; returns (workdir, stdout, stderr)."""
    work = setup[0]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "--master_addr=127.0.0.1", str(work / "worker.py"), str(work)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=work)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work, proc.stdout, proc.stderr


def _single(model, photos, method, norm, eps, targeted, options, chunked):
    src = [photos[:20], photos[20:40], photos[40:]] if chunked else photos
    return build_uap(model, src, method=method, norm=norm, eps=eps, target=1 if targeted else None, max_iter=2,
                     batch_size=8, seed=3, **options)


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_build_the_single_process_uap(case, setup, torchrun):
    from robaudit.models import load_model

    work, photos = setup[0], setup[1]
    model = load_model(NAME, device="cpu").module
    one = _single(model, photos, *CASES[case])
    v0, v1 = np.load(work / f"{case}.rank0.npy"), np.load(work / f"{case}.rank1.npy")
    np.testing.assert_array_equal(v0, v1)  # every rank applied the same steps
    assert np.abs(one.v.numpy()).max() > 0
    if CASES[case][0] == "deepfool":
        # deepfool stops per image once it is fooled: a last-bit difference between batch-4 (per rank) and batch-8
        # kernels can flip that decision for an image on the boundary and the paths part (seen on an AMD EPYC:
        # 1 of 41 images, cosine 0.91). Same steps, same images, v in the same direction, rates one image apart.
        a, b = v0.ravel(), one.v.numpy().ravel()
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.85
        rate = json.loads((work / f"{case}.rank0.json").read_text())["rate"]
        assert abs(rate - one.source_fooling_rate) <= 1 / N + 1e-9
    else:
        np.testing.assert_allclose(v0, one.v.numpy(), rtol=0, atol=1e-5)
    meta = json.loads((work / f"{case}.rank0.json").read_text())
    assert meta["seen"] == one.images_seen == 2 * N
    if CASES[case][0] == "deepfool":
        return  # its rates and history are one image apart at most (above)
    assert meta["rate"] == pytest.approx(one.source_fooling_rate, abs=1e-9)
    assert [h[0] for h in meta["history"]] == [h[0] for h in one.history]
    assert [h[1] for h in meta["history"]] == pytest.approx([h[1] for h in one.history], abs=1e-6)


def test_reference_mode_is_refused_under_torchrun(torchrun):
    work = torchrun[0]
    for r in (0, 1):
        msg = (work / f"reference.rank{r}.txt").read_text()
        assert "sequential" in msg and "\n" not in msg


def test_runner_streams_shards_and_only_rank0_writes(setup, torchrun):
    """run_uap over a streamed folder source (chunks of 10 -> 5 per rank, one rank runs out first)."""
    from robaudit.core.specs import make_spec
    from robaudit.eval.run import run_uap

    work, _, spec, _ = setup
    single = run_uap(make_spec(**spec), out_dir=work / "single", quiet=True)
    v0, v1 = np.load(work / "run_uap.rank0.npy"), np.load(work / "run_uap.rank1.npy")
    np.testing.assert_array_equal(v0, v1)
    np.testing.assert_allclose(v0, single.v.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.load(work / "run_uap" / "uap.npy"), v0, rtol=0, atol=0)
    doc = json.loads((work / "run_uap" / "result.json").read_text())
    assert doc["environment"]["distributed"]["world_size"] == 2
    assert doc["metrics"]["fooling_rate"]["value"] == pytest.approx(single.result.metrics.fooling_rate.value)
    assert doc["attack"]["source_fooling_rate"] == pytest.approx(single.result.attack.source_fooling_rate)


def test_cli_under_torchrun_prints_once(setup, torchrun):
    from robaudit.cli import main

    work, _, _, cli = setup
    stdout = torchrun[1]
    doc = json.loads(stdout)  # rank 0's JSON, nothing from rank 1
    assert doc == json.loads((work / "cli" / "result.json").read_text())
    assert doc["environment"]["distributed"] == {"world_size": 2, "backend": "gloo",
                                                 "batch": "batch_size is the total mini-batch over all ranks"}
    single_out = work / "cli-single"
    assert main([*cli[:-4], "--select", "none", "--out", str(single_out), "--no-report"]) == 0  # the same cell
    np.testing.assert_allclose(np.load(work / "cli" / "uap.npy"), np.load(single_out / "uap.npy"), rtol=0, atol=1e-5)
    assert not (work / "cli" / "report.html").exists()


def test_distributed_without_a_group_is_bad_input(tiny_model):
    with pytest.raises(BadInput, match="torchrun"):
        build_uap(tiny_model, torch.rand(4, 3, 16, 16), eps=0.03, max_iter=1, distributed=True)


def test_amp_bfloat16_on_cpu_keeps_the_verdict(setup):
    """--amp builds the UAP under bfloat16 autocast; judged in float32 it fools as the float32 UAP does."""
    from robaudit.attacks.predict import predict
    from robaudit.core.specs import make_spec
    from robaudit.core.stats import rate
    from robaudit.eval.run import run_uap
    from robaudit.models import load_model
    from robaudit.models.normalize import fast_model

    work, photos = setup[0], setup[1]
    model = load_model(NAME, device="cpu").module
    fooled = {}
    for amp in (False, True):
        with fast_model(model, torch.device("cpu"), amp) as net:
            assert (net is model) != amp
            out = build_uap(net, photos, eps=0.1, max_iter=3, batch_size=8, seed=0)
        assert out.v.dtype == torch.float32 and out.v.abs().max() <= 0.1 + 1e-7
        fooled[amp] = (predict(model, photos, out.v) != predict(model, photos)).numpy()
    fp32, amp = rate(fooled[False]), rate(fooled[True])
    assert fp32.value > 0.2  # a verdict worth keeping
    assert fp32.ci[0] <= amp.value <= fp32.ci[1]

    spec = dict(model=NAME, source="train", source_limit=16, eval_limit=16, max_iter=1, batch_size=8, controls=1,
                select="none", method="fgsm",
                device="cpu")
    assert make_spec(**spec, amp=False).cache_key() == make_spec(**spec).cache_key() != \
        make_spec(**spec, amp=True).cache_key()
    r = run_uap(make_spec(**spec, amp=True), out_dir=work / "amp", quiet=True).result
    assert any("bfloat16" in n for n in r.notes)
