"""Per-sample attacks through torchattacks, foolbox and ART: agreement, sanity, results and CLI errors.

The model is fine-tuned here, in a few seconds: timm ``resnet10t`` (2 classes) on 32 px chest X-rays
from pneumoniacxr_128.npz, grey repeated to 3 channels, wrapped with its normalisation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robaudit.attacks.backends import ATTACKS, BACKENDS, backend_class, support_matrix
from robaudit.attacks.persample import run_attack
from robaudit.cli import main
from robaudit.core.errors import BadInput, RuntimeFailure
from robaudit.core.results import Result

SIZE = 32
CLASSES = ["normal", "pneumonia"]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _images(d, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(d[f"{split}_images"][:n]).float().div(255).unsqueeze(1)
    x = F.interpolate(x, size=SIZE, mode="area").repeat(1, 3, 1, 1)
    return x, torch.from_numpy(d[f"{split}_labels"][:n, 0].astype(np.int64))


@pytest.fixture(scope="module")
def finetuned(data_root):
    """(timm net, model in [0,1] with its normalisation, test images, labels): ~100 Adam steps."""
    import timm

    from robaudit.models.normalize import Normalized

    d = np.load(data_root / "pneumoniacxr_128.npz")
    x_train, y_train = _images(d, "train", 1200)
    x_test, y_test = _images(d, "test", 64)
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=2)
    model = Normalized(net, MEAN, STD)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(100):
        i = torch.randint(0, len(x_train), (32,), generator=gen)
        loss = F.cross_entropy(model(x_train[i]), y_train[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.inference_mode():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert acc >= 0.7, f"fine-tuning failed: test accuracy {acc:.2f}"
    return net, model, x_test, y_test


def _rows(result: Result) -> dict[float, tuple[float, float]]:
    return {r.eps: (r.robust_accuracy.value, r.success_rate.value) for r in result.per_eps}


# ---------------------------------------------------------------------------------------------- backends
@pytest.mark.parametrize("norm, eps", [("linf", 2 / 255), ("l2", 0.25)])
def test_pgd_agrees_across_backends(finetuned, norm, eps):
    """Same model, images, eps, steps and step size, no random start: the three backends agree.

    All three run the same iteration (signed or L2-normalised gradient step, projection onto the ball,
    clip to [0, 1], final iterate). Only float rounding differs (CE loss mean vs sum; L2 gradient
    normalisation adds 1e-10, 1e-12 or 1e-7), which can flip a near-zero gradient component of an image
    at the decision boundary: we allow one image of 48 (2.1 points) and observe none.
    """
    _, model, x, y = finetuned
    results = {b: run_attack(model, x[:48], y[:48], attack="pgd", norm=norm, eps=[eps], steps=10, backend=b,
                             class_names=CLASSES) for b in BACKENDS}
    ref = results["torchattacks"].per_eps[0]
    assert 0.1 < ref.success_rate.value < 0.9, "eps must make the comparison informative"
    for b, r in results.items():
        row = r.per_eps[0]
        assert r.attack.backend == b
        assert abs(row.robust_accuracy.k - ref.robust_accuracy.k) <= 1, (b, row, ref)
        assert abs(row.success_rate.k - ref.success_rate.k) <= 1, (b, row, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_success_is_total_at_large_eps_and_nil_at_zero(finetuned, backend):
    _, model, x, y = finetuned
    r = run_attack(model, x[:48], y[:48], attack="pgd", eps=[0, 1e-4, 0.1], steps=5, backend=backend,
                   class_names=CLASSES)
    rows = _rows(r)
    clean = r.metrics.clean_accuracy
    assert rows[0.0] == (clean, 0.0)
    assert rows[1e-4][1] <= 0.05  # through the backend: a 1e-4 step moves almost nothing
    assert rows[0.1][1] >= 0.95 and rows[0.1][0] <= 0.05
    assert r.per_eps[0].success_rate.n == round(clean * 48)  # success is over images correct when clean


def test_minimal_norm_attack_reports_the_norm_distribution(finetuned):
    _, model, x, y = finetuned
    eps = [0.05, 0.3, 5.0]
    r = run_attack(model, x, y, attack="deepfool", eps=eps, steps=30, backend="foolbox", class_names=CLASSES)
    mn = r.min_norm
    assert r.attack.mode == "minimal-norm" and r.attack.norm == "l2"
    assert mn.success_rate >= 0.9 and len(mn.values) == round(mn.success_rate * r.per_eps[0].success_rate.n)
    qs = list(mn.quantiles.values())
    assert qs == sorted(qs) and mn.quantiles["0.5"] == pytest.approx(mn.median) and 0 < mn.median < 5
    for row in r.per_eps:  # an image is broken at eps when its adversarial's norm is <= eps
        assert row.success_rate.k == sum(v <= row.eps for v in mn.values)
    assert _rows(r)[5.0][1] == pytest.approx(mn.success_rate)


def test_deepfool_l2_agrees_between_torchattacks_and_foolbox(finetuned):
    _, model, x, y = finetuned
    a, b = (run_attack(model, x[:12], y[:12], attack="deepfool", steps=20, backend=k).min_norm
            for k in ("torchattacks", "foolbox"))
    assert a.success_rate == b.success_rate
    assert a.median == pytest.approx(b.median, rel=0.02)


def test_fmn_linf_threshold_rows(finetuned):
    _, model, x, y = finetuned
    r = run_attack(model, x[:16], y[:16], attack="fmn", eps=[0.002, 0.05], steps=30)
    assert r.attack.backend == "foolbox" and r.attack.norm == "linf"
    assert r.min_norm.median < 0.05
    low, high = _rows(r)[0.002][1], _rows(r)[0.05][1]
    assert low < high and high >= 0.9


def test_targeted_attack_counts_hits_on_the_target(finetuned):
    _, model, x, y = finetuned
    r = run_attack(model, x, y, attack="pgd", eps=[0.1], steps=5, target=0, class_names=CLASSES)
    assert r.attack.targeted and r.attack.target_name == "normal"
    row = r.per_eps[0]
    with torch.inference_mode():
        clean = model(x).argmax(1)
    attacked = int(((clean == y) & (y != 0)).sum())  # correct when clean and not already labelled the target
    assert row.success_rate.n == r.metrics.targeted_success_rate.n == attacked
    assert row.success_rate.value >= 0.9
    assert any("target 'normal'" in n for n in r.notes)


def test_autoattack_binary_task_leaves_out_apgd_t(finetuned):
    _, model, x, y = finetuned
    r = run_attack(model, x[:8], y[:8], attack="autoattack", eps=[0.1], steps=5)
    assert r.attack.backend == "torchattacks"
    assert r.per_eps[0].success_rate.value >= 0.9
    assert any("without APGD-T" in n for n in r.notes)


# ------------------------------------------------------------------------------------- model handling
class _DictOut(torch.nn.Module):
    def __init__(self, model, kind):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x):
        logits = self.model(x)
        return {"logits": logits} if self.kind == "dict" else (logits, logits.detach() * 0)


@pytest.mark.parametrize("kind", ["dict", "tuple"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_models_returning_dicts_or_tuples(finetuned, backend, kind):
    _, model, x, y = finetuned
    plain = run_attack(model, x[:8], y[:8], attack="fgsm", eps=[0.01], backend=backend)
    wrapped = run_attack(_DictOut(model, kind).eval(), x[:8], y[:8], attack="fgsm", eps=[0.01], backend=backend)
    assert _rows(wrapped) == _rows(plain)


def test_model_state_is_restored_and_seeded_runs_repeat(finetuned):
    _, model, x, y = finetuned
    model.train()
    try:
        runs = [run_attack(model, x[:24], y[:24], attack="pgd", eps=[2 / 255], steps=5, random_start=True, seed=3)
                for _ in range(2)]
        assert model.training and all(p.requires_grad for p in model.parameters())
    finally:
        model.eval()
    assert _rows(runs[0]) == _rows(runs[1])
    assert runs[0].attack.seed == 3 and any("random start: True" in n for n in runs[0].notes)


def test_result_fields_and_schema(finetuned):
    _, model, x, y = finetuned
    r = run_attack(model, x[:32], y[:32], attack="fgsm", eps=[0.03, 0, 0.01, 0.01], backend="art",
                   class_names=CLASSES)
    again = Result.model_validate_json(r.model_dump_json())
    assert again.attack.kind == "per-sample" and again.attack.eps == [0.0, 0.01, 0.03]  # sorted, unique
    m = r.metrics
    assert sum(c.n for c in m.per_class) == 32 and np.sum(m.confusion) == 32
    assert m.adv_accuracy == r.per_eps[-1].robust_accuracy.value  # metrics are at the largest eps
    lo, hi = r.per_eps[-1].success_rate.ci
    assert lo <= r.per_eps[-1].success_rate.value <= hi
    assert r.environment["backend"] == "art" and r.environment["backend_version"] != "unknown"
    assert any(n.startswith("success: the adversarial prediction differs from the true label") for n in r.notes)


def test_backend_output_beyond_eps_is_an_error(finetuned, monkeypatch):
    _, model, x, y = finetuned
    cls = backend_class("foolbox")
    monkeypatch.setattr(cls, "perturb", lambda self, xb, yb, cfg: (xb + 2 * cfg.eps).clamp(0, 1))
    with pytest.raises(RuntimeFailure, match="perturbation"):
        run_attack(model, x[:8], y[:8], attack="fgsm", eps=[0.01], backend="foolbox")


def test_library_bad_input(finetuned):
    _, model, x, y = finetuned
    with pytest.raises(BadInput, match="diameter"):
        run_attack(model, x[:4], y[:4], attack="pgd", norm="l2", eps=[100.0])
    with pytest.raises(BadInput, match="outside 0..1"):
        run_attack(model, x[:4], y[:4], attack="pgd", eps=[0.1], target=5)
    with pytest.raises(BadInput, match="2 outputs but 3 class names"):
        run_attack(model, x[:4], y[:4], attack="pgd", eps=[0.1], class_names=["a", "b", "c"])
    with pytest.raises(BadInput, match="random start is a PGD option"):
        run_attack(model, x[:4], y[:4], attack="fgsm", eps=[0.1], random_start=True)


def test_support_matrix_covers_every_attack_and_norm():
    matrix = support_matrix()
    for name, spec in ATTACKS.items():
        assert spec.default_norm in spec.norms
        for norm in spec.norms:
            assert any(norm in norms for norms in matrix[name].values()), (name, norm)
    for b in BACKENDS:
        for attack, norm in backend_class(b).supports:
            assert norm in ATTACKS[attack].norms, (b, attack, norm)


# ------------------------------------------------------------------------------------------------ CLI
def _cli(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("args, fragment", [
    (["--attack", "pgdd", "--eps", "0.1"], "unknown attack 'pgdd'"),
    (["--attack", "pgd", "--backend", "fooolbox", "--eps", "0.1"], "did you mean 'foolbox'"),
    (["--attack", "pgd", "--eps", "0,1.5"], "outside [0, 1]"),
    (["--attack", "pgd", "--eps", "-0.1"], "outside [0, 1]"),
    (["--attack", "pgd", "--eps", "0.1,x"], "not a comma-separated list"),
    (["--attack", "pgd", "--eps", "0.1", "--steps", "0"], "--steps must be >= 1"),
    (["--attack", "pgd", "--eps", "0.1", "--steps", "-3"], "--steps must be >= 1"),
    (["--attack", "fmn", "--backend", "torchattacks", "--eps", "0.1"], "available in: foolbox"),
    (["--attack", "autoattack", "--backend", "art", "--eps", "0.1"], "available in: torchattacks"),
    (["--attack", "cw", "--norm", "linf"], "no linf version"),
    (["--attack", "fmn", "--norm", "l2"], "never projects onto its norm ball"),
    (["--attack", "deepfool", "--target", "1"], "no backend implements targeted deepfool"),
    (["--attack", "pgd"], "needs --eps"),
    (["--attack", "fgsm", "--eps", "0.1", "--steps", "3"], "takes no --steps"),
])
def test_cli_bad_input_is_one_line_exit_2(args, fragment, capsys):
    code, out, err = _cli(["attack", "--model", "pneumonia_resnet10t_nonexistent", *args], capsys)
    assert code == 2, err
    assert fragment in err and out == ""
    assert "Traceback" not in err and len([ln for ln in err.strip().splitlines() if ln.strip()]) == 1


def test_cli_attack_end_to_end(finetuned, tmp_path, capsys):
    from robaudit.models.store import ModelCard, save_model

    net, _, _, _ = finetuned
    name = "pneumonia_resnet10t_persample_test"
    save_model(net, ModelCard(name=name, arch="resnet10t", task="pneumonia", classes=CLASSES, input_size=SIZE,
                              mean=MEAN, std=STD))
    out = tmp_path / "run"
    code, stdout, err = _cli(["attack", "--model", name, "--attack", "pgd", "--eps", "0,0.1", "--steps", "5",
                              "--n", "24", "--target", "normal", "--out", str(out), "--json", "--no-report"], capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc == json.loads((out / "result.json").read_text())
    r = Result.model_validate(doc)
    assert r.attack.kind == "per-sample" and r.attack.target == 0 and r.data.n == 24
    assert r.model.name == name and r.data.name == "pneumonia" and r.data.sha256
    assert r.per_eps[-1].success_rate.value >= 0.9

    code, stdout, err = _cli(["attack", "--model", name, "--attack", "deepfool", "--backend", "foolbox", "--n", "16",
                              "--out", str(tmp_path / "df")], capsys)
    assert code == 0, err
    assert stdout == "" and "minimal l2 norm found" in err
    assert (tmp_path / "df" / "result.json").is_file() and (tmp_path / "df" / "report.html").is_file()
