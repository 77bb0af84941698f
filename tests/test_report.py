"""Reports: severity rule, HTML / Markdown / JSON / PDF, hostile strings, the ``report`` command.

Fixtures are real results: a ridge-regression classifier fitted on real DermaMNIST images, attacked with
universal perturbations computed from the real ImageNet photos under the data root (for a linear model the
average-gradient direction is a genuine UAP), against repeated random controls of exactly the same norm;
per-sample results use the exact minimal L2 distance to the decision boundary. ``test_gate.py`` and
``test_report_browser.py`` import these builders.
"""

from __future__ import annotations

import base64
import functools
import html.parser
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from robaudit.core.results import (
    AttackInfo,
    ClassBreakdown,
    Comparison,
    Control,
    ControlRate,
    DataInfo,
    EpsilonResult,
    Metrics,
    MinNorm,
    ModelInfo,
    Rate,
    Result,
    TargetedRate,
)
from robaudit.core.stats import mcnemar_exact, mean_ci, proportion_ci, rate
from robaudit.eval.metrics import harm_metrics

DATA = Path(os.environ.get("ROBAUDIT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
HOSTILE = "<script>window.__pwned=1</script>"
HOSTILE_IMG = '<img src=x onerror="window.__pwned=1">'
N_TEST = 400


# ----------------------------------------------------------------------------------- real fixtures


@functools.lru_cache(maxsize=1)
def linear_model():
    """Ridge one-vs-rest classifier on 1000 real DermaMNIST training images (dual form, < 1 s)."""
    d = np.load(DATA / "dermamnist.npz")
    classes = json.loads((DATA / "dermamnist.json").read_text())["label_names"]
    xtr = d["train_images"][:1000].reshape(1000, -1) / 255.0
    ytr = d["train_labels"][:1000, 0]
    xte = d["test_images"][:N_TEST].reshape(N_TEST, -1) / 255.0
    yte = d["test_labels"][:N_TEST, 0].astype(int)
    mu = xtr.mean(0)
    a = np.hstack([xtr - mu, np.ones((len(xtr), 1))])
    alpha = np.linalg.solve(a @ a.T + 10.0 * np.eye(len(a)), np.eye(7)[ytr] * 2 - 1)
    wb = a.T @ alpha
    return {"W": wb[:-1], "b": wb[-1], "mu": mu, "xte": xte, "yte": yte, "classes": classes,
            "mean_norm": float(np.linalg.norm(xtr, axis=1).mean()), "xtr": xtr}


def _scores(m, x):
    return (x - m["mu"]) @ m["W"] + m["b"]


@functools.lru_cache(maxsize=1)
def natural_images(n: int = 64) -> np.ndarray:
    """Real ImageNet photos from the data root, resized to 28 px, flattened, in [0, 1]."""
    from PIL import Image

    files = sorted((DATA / "imagenet").glob("*.JPEG"))[:n]
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((28, 28), Image.LANCZOS)).reshape(-1) / 255.0
                     for p in files])


def _direction(m, x, target=None):
    """Average-gradient direction of the margin over ``x`` (a universal perturbation for a linear model)."""
    s = _scores(m, x)
    p = s.argmax(1)
    if target is None:
        s2 = s.copy()
        s2[np.arange(len(s)), p] = -np.inf
        q = s2.argmax(1)
    else:
        q = np.full(len(s), target)
    g = (m["W"][:, q] - m["W"][:, p]).mean(1)
    return g / np.linalg.norm(g)


def uap_cell(*, zeta: float = 0.01, source: str = "imagenet", target: int | None = None, draws: int = 20,
             seed: int = 0, model_name: str = "skin_ridge", init: str = "imagenet", classes: tuple | None = None,
             command: str | None = None) -> tuple[Result, np.ndarray]:
    """A real UAP result on the ridge model and the perturbation (3, 28, 28); a fresh copy on every call."""
    result, v = _uap_cell(zeta, source, target, draws, seed, model_name, init, classes, command)
    return result.model_copy(deep=True), v.copy()


@functools.lru_cache(maxsize=64)
def _uap_cell(zeta, source, target, draws, seed, model_name, init, classes, command):
    m = linear_model()
    classes = list(classes or m["classes"])
    xte, yte = m["xte"], m["yte"]
    src = natural_images() if source == "imagenet" else m["xtr"][:64]
    eps = zeta * m["mean_norm"]
    v = _direction(m, src, target) * eps
    clean = _scores(m, xte).argmax(1)
    adv = _scores(m, xte + v).argmax(1)
    fooled = adv != clean
    rng = np.random.default_rng(seed)
    ctrl_fool, ctrl_tsr, ctrl_vecs, ctrl_preds = [], [], [], []
    for _ in range(draws):
        r = rng.standard_normal(xte.shape[1])
        r *= eps / np.linalg.norm(r)
        pr = _scores(m, xte + r).argmax(1)
        ctrl_fool.append(float((pr != clean).mean()))
        ctrl_tsr.append(float((pr == target).mean()) if target is not None else 0.0)
        ctrl_vecs.append(pr != clean)
        ctrl_preds.append(pr)
    median_draw = int(np.argsort(ctrl_fool)[len(ctrl_fool) // 2])
    median = ctrl_vecs[median_draw]
    stat, p, detail = mcnemar_exact(fooled, median)
    conf = np.zeros((7, 7), int)
    np.add.at(conf, (clean, adv), 1)
    tsr = None
    ctsr = None
    if target is not None:
        hit = adv == target
        tsr = TargetedRate(**rate(hit).model_dump(), clean_rate=float((clean == target).mean()))
        ctsr = ControlRate(value=float(np.mean(ctrl_tsr)), ci=mean_ci(ctrl_tsr), draws=ctrl_tsr)
    per_class = [ClassBreakdown(index=i, name=classes[i], n=int((yte == i).sum()),
                                clean_accuracy=float((clean[yte == i] == i).mean()) if (yte == i).any() else None,
                                adv_accuracy=float((adv[yte == i] == i).mean()) if (yte == i).any() else None,
                                fooling_rate=float(fooled[yte == i].mean()) if (yte == i).any() else None)
                 for i in range(7)]
    result = Result(
        robaudit_version="0.1.0", created="2025-11-22T03:00:00+00:00",
        command=command or f"robaudit uap {model_name} --source {source} --norm l2 --zeta {zeta}"
        + (f" --target {target}" if target is not None else ""),
        environment={"python": "3.11", "numpy": np.__version__, "device": "cpu"},
        model=ModelInfo(name=model_name, arch="ridge-linear", init=init, transfer="full", task="skin",
                        classes=classes, input_size=28, sha256="0" * 64),
        data=DataInfo(name="dermamnist", split="test", n=len(xte), sha256="1" * 64, path=str(DATA / "dermamnist.npz")),
        attack=AttackInfo(kind="uap", method="mean-gradient", norm="l2", zeta=zeta, eps=eps,
                          targeted=target is not None, target=target,
                          target_name=classes[target] if target is not None else None, source=source,
                          source_n=len(src), seed=seed, zeta_reference="dermamnist train (1000 images)",
                          uap_norm=float(np.linalg.norm(v)), clip=False),
        metrics=Metrics(clean_accuracy=float((clean == yte).mean()), adv_accuracy=float((adv == yte).mean()),
                        fooling_rate=rate(fooled), targeted_success_rate=tsr, per_class=per_class,
                        confusion=conf.tolist()),
        control=Control(kind="uniform", draws=draws, norm_value=eps,
                        fooling_rate=ControlRate(value=float(np.mean(ctrl_fool)), ci=mean_ci(ctrl_fool),
                                                 draws=ctrl_fool),
                        targeted_success_rate=ctsr),
        comparison=Comparison(test="mcnemar-exact", p_value=p, statistic=stat, detail=detail),
        harm=harm_metrics(clean, adv, yte, classes, critical=classes.index("melanoma") if "melanoma" in classes else
                          None, critical_source="card", target=target, control_adv=ctrl_preds[median_draw]),
    )
    return result, v.reshape(28, 28, 3).transpose(2, 0, 1)


def per_sample_cell(eps_list=(0.05, 0.1, 0.2, 0.4)) -> Result:
    """Exact minimal-L2 per-sample attack on the ridge model (distance to the nearest pairwise boundary)."""
    m = linear_model()
    s = _scores(m, m["xte"])
    p = s.argmax(1)
    w = m["W"]
    dist = np.full(len(s), np.inf)
    for j in range(7):
        dw = w[:, p] - w[:, [j]]
        nrm = np.linalg.norm(dw, axis=0)
        ok = nrm > 0
        dist[ok] = np.minimum(dist[ok], (s[np.arange(len(s)), p] - s[:, j])[ok] / nrm[ok])
    correct = p == m["yte"]
    rows = []
    for e in eps_list:
        success = dist <= e
        rows.append(EpsilonResult(eps=e, robust_accuracy=rate(correct & ~success), success_rate=rate(success)))
    q = {k: float(np.quantile(dist, float(k))) for k in ("0.1", "0.5", "0.9")}
    return Result(robaudit_version="0.1.0", created="2025-11-22T03:10:00+00:00",
                  command="robaudit attack skin_ridge --method deepfool --norm l2",
                  model=ModelInfo(name="skin_ridge", arch="ridge-linear", init="imagenet", classes=m["classes"]),
                  data=DataInfo(name="dermamnist", split="test", n=len(p)),
                  attack=AttackInfo(kind="per-sample", method="deepfool", norm="l2", eps=list(eps_list)),
                  metrics=Metrics(clean_accuracy=float(correct.mean()), adv_accuracy=float((correct & (dist > max(
                      eps_list))).mean()), fooling_rate=rate(dist <= max(eps_list))),
                  per_eps=rows, min_norm=MinNorm(median=float(np.median(dist)), quantiles=q, success_rate=1.0))


def write_run(folder: Path, result: Result, uap: np.ndarray | None = None, examples: bool = False) -> Path:
    """Write a run folder like the ``uap`` command: result.json, uap.npy and examples.png."""
    folder.mkdir(parents=True, exist_ok=True)
    artifacts = {}
    if uap is not None:
        np.save(folder / "uap.npy", uap.astype(np.float32))
        artifacts["uap"] = "uap.npy"
    if examples:
        _examples_png(folder / "examples.png", result, uap)
        artifacts["examples"] = "examples.png"
    result = result.model_copy(update={"artifacts": artifacts})
    path = folder / "result.json"
    path.write_text(result.model_dump_json(indent=2))
    return path


def _examples_png(path: Path, result: Result, uap: np.ndarray) -> None:
    from matplotlib.figure import Figure

    m = linear_model()
    v = uap.transpose(1, 2, 0).reshape(-1)
    fig = Figure(figsize=(6, 3))
    axes = fig.subplots(2, 4)
    for i in range(4):
        x = m["xte"][i]
        for row, img in enumerate((x, x + v)):
            pred = int(_scores(m, img[None]).argmax(1)[0])
            axes[row, i].imshow(np.clip(img.reshape(28, 28, 3), 0, 1))
            axes[row, i].set_title(result.model.classes[pred][:14], fontsize=6)
            axes[row, i].set_axis_off()
    fig.savefig(path, format="png")


def counted_cell(k: int, n: int, control: tuple[float, ...] | None = (0.10, 0.12, 0.11, 0.09, 0.13), *,
                 zeta: float = 0.04, targeted_k: int | None = None, clean_rate: float = 0.1,
                 p_value: float | None = None, model: str = "skin_counts", source: str = "imagenet",
                 norm: str = "l2", clean_accuracy: float = 0.75,
                 classes=("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"), target: int | None = None) -> Result:
    """A UAP result from counts (Wilson intervals and the t-interval over control draws computed for real)."""
    tsr = ctsr = None
    if targeted_k is not None:
        tsr = TargetedRate(value=targeted_k / n, ci=proportion_ci(targeted_k, n), n=n, k=targeted_k,
                           clean_rate=clean_rate)
        ctsr = ControlRate(value=clean_rate + 0.01, ci=(clean_rate, clean_rate + 0.02), draws=[clean_rate + 0.01] * 3)
        target = 0 if target is None else target
    ctrl = None
    if control is not None:
        fr = ControlRate(value=float(np.mean(control)), ci=mean_ci(control), draws=list(control))
        ctrl = Control(kind="uniform", draws=len(control), fooling_rate=fr, targeted_success_rate=ctsr)
    return Result(robaudit_version="0.1.0", created="2025-11-22T03:00:00+00:00",
                  model=ModelInfo(name=model, arch="resnet10t", init="imagenet", classes=list(classes)),
                  data=DataInfo(name="dermamnist", split="test", n=n),
                  attack=AttackInfo(kind="uap", method="fgsm", norm=norm, zeta=zeta, source=source,
                                    targeted=targeted_k is not None, target=target),
                  metrics=Metrics(clean_accuracy=clean_accuracy, adv_accuracy=clean_accuracy * (1 - k / n),
                                  fooling_rate=Rate(value=k / n, ci=proportion_ci(k, n), n=n, k=k),
                                  targeted_success_rate=tsr),
                  control=ctrl,
                  comparison=Comparison(test="mcnemar-exact", p_value=p_value) if p_value is not None else None)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A run folder: a natural-source L2 UAP at zeta = 2% with uap.npy and examples.png."""
    result, v = uap_cell(zeta=0.02)
    return write_run(tmp_path_factory.mktemp("run") / "uap-run", result, v, examples=True)


@pytest.fixture(scope="module")
def real_audit(tmp_path_factory) -> Path:
    """An audit JSON: a zeta sweep, a random-init model, task-image and targeted UAPs, a per-sample cell,
    a transfer matrix and a derived table; the worst cell has its perturbation in a sub-folder."""
    folder = tmp_path_factory.mktemp("audit")
    cells = []
    for i, z in enumerate((0.005, 0.01, 0.02, 0.04)):
        r, v = uap_cell(zeta=z, seed=i)
        if z == 0.04:
            (folder / "cells").mkdir()
            np.save(folder / "cells" / "uap-l2-4.npy", v)
            r = r.model_copy(update={"artifacts": {"uap": "cells/uap-l2-4.npy"}})
        cells.append(r)
    cells.append(uap_cell(zeta=0.02, model_name="skin_ridge_scratch", init="random", seed=7)[0])
    cells.append(uap_cell(zeta=0.02, source="dermamnist:train", seed=8)[0])
    cells += [uap_cell(zeta=0.02, target=t, seed=10 + t)[0] for t in (0, 4, 5)]
    cells.append(per_sample_cell())
    audit = {"kind": "audit", "command": "robaudit audit skin_ridge --recipe quick", "seconds": 12.5,
             "recipe": {"name": "quick", "models": ["skin_ridge"], "zetas": [0.005, 0.02, 0.04]},
             "environment": {"python": "3.11", "numpy": np.__version__}, "counts": {"cells": 9, "done": 9},
             "multiple_comparison": {"method": "holm", "family_size": 8, "comparison_p_values": [],
                                     "comparison_families": []},
             "cells": [json.loads(c.model_dump_json()) for c in cells],
             "tables": {"fooling_by_zeta": [{"zeta": c.attack.zeta, "fooling_rate": c.metrics.fooling_rate.value}
                                            for c in cells[:4]]},
             "transfer": {"rows": ["skin_ridge", "skin_ridge_scratch"], "cols": ["skin_ridge", "skin_ridge_scratch"],
                          "values": [[0.93, 0.41], [0.35, None]], "metric": "fooling rate"}}
    path = folder / "audit.json"
    path.write_text(json.dumps(audit))
    return path


# ------------------------------------------------------------------------------------------ helpers


class _Tags(html.parser.HTMLParser):
    """Every start tag and attribute of an HTML document."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parse_tags(text: str) -> list[tuple[str, dict]]:
    p = _Tags()
    p.feed(text)
    return p.tags


def data_images(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/(?:png|jpeg);base64,([A-Za-z0-9+/=]+)"', text)]


def run_cli(args: list[str]) -> int:
    from robaudit.cli import main

    return main([str(a) for a in args])


# ------------------------------------------------------------------------------------------- grading


def test_severity_grades_follow_the_documented_rule():
    from robaudit.grading import assess

    # pessimistic effect = Wilson lower bound; control upper bound ~ 0.13
    assert assess(counted_cell(300, 400, p_value=1e-9)).severity == "critical"   # lower ~0.71
    assert assess(counted_cell(150, 400, p_value=1e-9)).severity == "high"       # lower ~0.33
    assert assess(counted_cell(90, 1000, (0.01, 0.012, 0.011), p_value=1e-9)).severity == "low"      # lower ~0.074
    assert assess(counted_cell(140, 1000, (0.01, 0.012, 0.011), p_value=1e-9)).severity == "moderate"  # lower ~0.12
    # inside the control band: none, whatever the point estimate
    a = assess(counted_cell(60, 400, p_value=1e-3))
    assert a.severity == "none" and a.beyond_control is False and "does not exceed" in a.reason
    # beyond the band but the paired test is not significant: none
    assert assess(counted_cell(150, 400, p_value=0.2)).severity == "none"
    # no control: graded on the lower bound alone, and says so
    a = assess(counted_cell(300, 400, control=None))
    assert a.severity == "critical" and a.beyond_control is None and "no random control" in a.reason


def test_targeted_severity_subtracts_the_clean_rate_of_the_target():
    from robaudit.grading import assess

    cell = counted_cell(100, 400, targeted_k=260, clean_rate=0.55, p_value=1e-6)
    a = assess(cell)
    assert a.measure == "targeted success"
    lower = proportion_ci(260, 400)[0]
    assert a.effect_lower == pytest.approx(lower - 0.55)
    assert a.severity == "low"                     # 0.60 - 0.55 is small, though 65% looks alarming
    assert assess(counted_cell(100, 400, targeted_k=260, clean_rate=0.05, p_value=1e-6)).severity == "critical"


def test_report_verdict_is_the_worst_cell_and_pvalues_are_holm_adjusted():
    from robaudit.reporting import build_report

    cells = [counted_cell(150, 400, p_value=0.03), counted_cell(150, 400, p_value=0.04, zeta=0.06),
             counted_cell(300, 400, p_value=1e-12, zeta=0.08)]
    rep = build_report(cells)
    assert rep.severity == "critical" and rep.headline == 2
    # Holm: 3 * 1e-12, then 2 * 0.03 = 0.06, then max(1 * 0.04, 0.06): both moderate-looking cells drop to none
    assert [a.p_adjusted for a in rep.assessments] == pytest.approx([0.06, 0.06, 3e-12])
    assert rep.counts() == {"critical": 1, "high": 0, "moderate": 0, "low": 0, "none": 2}
    assert [a.severity for a in build_report(cells[:1]).assessments] == ["high"]     # alone, unadjusted
    rep2 = build_report([counted_cell(150, 400, p_value=0.03), counted_cell(150, 400, p_value=0.9)])
    assert rep2.assessments[0].p_adjusted == pytest.approx(0.06) and rep2.severity == "none"


def test_real_ridge_results_grade_as_expected():
    from robaudit.grading import source_kind
    from robaudit.reporting import build_report

    weak, _ = uap_cell(zeta=0.005)
    strong, _ = uap_cell(zeta=0.04, seed=3)
    rep = build_report([weak, strong])
    assert strong.metrics.fooling_rate.value > 0.5 > weak.metrics.fooling_rate.value
    assert rep.headline == 1 and rep.severity == "critical"
    assert source_kind(strong) == "natural"
    assert source_kind(uap_cell(zeta=0.02, source="dermamnist:train", seed=8)[0]) == "task"


# -------------------------------------------------------------------------------------------- input


def test_load_input_reads_results_audits_and_lists(real_run, real_audit, tmp_path):
    from robaudit.grading import load_input

    one = load_input(real_run)
    assert one.kind == "result" and len(one.cells) == 1 and one.run_dir == real_run.parent
    audit = load_input(real_audit)
    assert audit.kind == "audit" and len(audit.cells) == 10
    assert audit.transfer["metric"] == "fooling rate" and "fooling_by_zeta" in audit.tables
    assert audit.meta["command"].startswith("robaudit audit")
    lst = tmp_path / "cells.json"
    lst.write_text(json.dumps(json.loads(real_audit.read_text())["cells"][:2]))
    assert len(load_input(lst).cells) == 2


@pytest.mark.parametrize("content, needle", [
    (None, "does not exist"),
    ("{not json", "not valid JSON"),
    ('{"kind": "audit", "cells": [{"robaudit_version": "0.1"}]}', "cell 0 does not match result schema"),
    ('{"kind": "audit"}', "no 'cells' list"),
    ('{"kind": "robaudit-gate", "checks": []}', "not a result or an audit"),
])
def test_load_input_rejects_bad_files_with_one_line(tmp_path, content, needle):
    from robaudit.core.errors import BadInput
    from robaudit.grading import load_input

    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BadInput) as exc:
        load_input(path)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


# --------------------------------------------------------------------------------------------- HTML


def test_html_report_is_self_contained_with_every_section(real_run):
    from robaudit.grading import load_input
    from robaudit.reporting import build_report
    from robaudit.reporting.html import render_html

    text = render_html(build_report(load_input(real_run)))
    # a reader's order: verdict, harm and findings first, the reviewer's section, the technical appendix last
    order = [text.index(f'<section id="{s}">') for s in ("verdict", "harm", "findings", "review", "plots",
                                                         "perturbation", "appendix")]
    assert order == sorted(order)
    for part in ("threat-model", "models", "data", "settings", "bom", "limitations", "mitigations"):
        assert f'<h3 id="{part}">' in text
    tags = parse_tags(text)
    # nothing is fetched: every src/href is a data: URI or an in-page anchor; no scripts at all
    for tag, attrs in tags:
        for key in ("src", "href", "srcset", "action", "poster", "data"):
            if key in attrs:
                assert attrs[key].startswith(("data:", "#")), (tag, key, attrs[key][:60])
    assert not any(t == "script" for t, _ in tags) and not any(t == "link" for t, _ in tags)
    assert "url(" not in text and "@import" not in text
    csp = [a["content"] for t, a in tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0] and "img-src data:" in csp[0]
    # plots, perturbation and the run's examples.png, each a decodable PNG
    for fig in ("fig-rate-vs-zeta", "fig-confusion", "fig-perturbation", "fig-examples"):
        assert f'id="{fig}"' in text
    images = data_images(text)
    assert len(images) == 4 and all(img.startswith(b"\x89PNG\r\n\x1a\n") for img in images)
    assert (real_run.parent / "examples.png").read_bytes() in images
    # reproduction: the exact command, environment and versions
    assert "robaudit uap skin_ridge --source imagenet --norm l2 --zeta 0.02" in text
    assert np.__version__ in text and "@media print" in text and "@page" in text
    assert "fig-targeted-per-class" not in text and "fig-transfer" not in text and "fig-robust-accuracy" not in text


def test_html_audit_renders_what_exists(real_audit):
    from robaudit.grading import load_input
    from robaudit.reporting import build_report
    from robaudit.reporting.html import render_html

    rep = build_report(load_input(real_audit))
    text = render_html(rep)
    for fig in ("rate-vs-zeta", "init-comparison", "targeted-per-class", "transfer", "confusion", "robust-accuracy",
                "perturbation"):
        assert f'id="fig-{fig}"' in text, fig
    assert 'id="fig-examples"' not in text                     # no examples.png in this audit
    assert "uap-l2-4.npy" in text              # the headline (targeted) cell has none: the next UAP cell's
    assert "Per-sample attacks" in text and "fooling_by_zeta" in text
    assert "robaudit audit skin_ridge --recipe quick" in text
    assert rep.cells[rep.headline].attack.source == "dermamnist:train" and rep.severity == "critical"
    # the document's structures (recipe, environment, p-value lists) stay in audit.json, never raw on the page
    assert "{&#34;" not in text and "[{" not in text and "Audit</h3>" in text
    assert "<td>quick</td>" in text and "holm over 8 tests" in text and "12 s" in text
    assert all(img.startswith(b"\x89PNG") for img in data_images(text))


def test_artifact_paths_cannot_leave_the_run_folder(tmp_path):
    from robaudit.reporting import build_report
    from robaudit.reporting.html import render_html

    secret = tmp_path / "secret.png"
    shutil.copy(Path(__file__).parent.parent / "robaudit" / "reporting" / "templates" / "report.html.j2", secret)
    png = tmp_path / "outside.png"
    from matplotlib.figure import Figure

    Figure(figsize=(1, 1)).savefig(png)
    run = tmp_path / "run"
    run.mkdir()
    cell = counted_cell(300, 400, p_value=1e-9).model_copy(
        update={"artifacts": {"examples": "../outside.png", "uap": "../../etc/passwd.npy"}})
    text = render_html(build_report([cell], run_dir=run))
    assert 'id="fig-examples"' not in text and 'id="fig-perturbation"' not in text
    (run / "examples.png").write_bytes(secret.read_bytes())   # not an image: never inlined
    assert 'id="fig-examples"' not in render_html(build_report([cell.model_copy(update={"artifacts": {}})],
                                                               run_dir=run))


def test_hostile_strings_are_escaped_everywhere(tmp_path):
    from robaudit.reporting import build_report, render

    classes = [HOSTILE, HOSTILE_IMG, "bkl", "df", "mel $x^$ {", "nv", "vasc | [link](http://evil)"]
    cell = counted_cell(300, 400, p_value=1e-9, model=f"m{HOSTILE}", source=f"img{HOSTILE_IMG}", targeted_k=300,
                        classes=classes).model_copy(update={"command": f"robaudit uap '</pre>{HOSTILE}' ```"})
    cell.attack.target_name = HOSTILE
    cell.notes.append(HOSTILE_IMG)
    rep = build_report([cell], tables={HOSTILE: [{HOSTILE_IMG: HOSTILE}]},
                       transfer={"rows": [HOSTILE], "cols": [HOSTILE_IMG], "values": [[0.5]]})
    text = render(rep, "html")
    assert HOSTILE not in text and HOSTILE_IMG not in text and "</pre><script" not in text
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in text
    tags = parse_tags(text)
    assert not any(t == "script" for t, _ in tags)
    assert not any(k.startswith("on") for _, attrs in tags for k in attrs)
    assert {t for t, _ in tags if t == "img"} and all(a["src"].startswith("data:") for t, a in tags if t == "img")
    md = render(rep, "md")
    # the command sits verbatim in a fence longer than any backtick run it contains (code, never markup) ...
    fenced = re.findall(r"^(`{4,})sh\n(.*?)\n\1$", md, flags=re.M | re.S)
    assert [body for _, body in fenced] == [f"robaudit uap '</pre>{HOSTILE}' ```"]
    # ... and everywhere else markup and links are escaped
    prose = re.sub(r"^(`{4,})sh\n.*?\n\1$", "", md, flags=re.M | re.S)
    assert "<script" not in prose and "<img" not in prose and "](http://evil)" not in prose
    assert "&lt;script&gt;" in prose
    payload = json.loads(render(rep, "json"))
    assert payload["findings"][0]["model"] == f"m{HOSTILE}"    # JSON keeps data verbatim (it is data)


# ----------------------------------------------------------------------------------- Markdown / JSON


def test_markdown_is_a_compact_summary(real_audit):
    from robaudit.grading import load_input
    from robaudit.reporting import build_report
    from robaudit.reporting.markdown import render_markdown

    rep = build_report(load_input(real_audit))
    md = render_markdown(rep, max_rows=5)
    lines = md.splitlines()
    assert lines[0].startswith("## ") and "CRITICAL" in lines[0]
    from robaudit.core.fmt import ICONS

    table = [ln for ln in lines if ln.startswith(tuple(f"| {ICONS[s]} " for s in ("critical", "high", "moderate",
                                                                                     "low", "none")))]
    assert len(table) == 5 and "… and 4 more cell(s)" in md
    harm = [ln for ln in lines if ln.startswith("| ") and "| melanoma |" in ln]
    assert len(harm) == 5 and "**Harm by diagnosis**" in md and "**Limitations**" in md
    assert "**Per-sample attacks**" in md and "<details>" in md and "robaudit audit skin_ridge --recipe quick" in md
    assert len(md) < 12000 and "data:image" not in md  # the reviewer's part is folded in <details>


def test_report_json_lists_every_finding(real_audit, capsys):
    assert run_cli(["report", real_audit, "--format", "json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["kind"] == "robaudit-report" and payload["severity"] == "critical"
    assert len(payload["findings"]) == 10
    kinds = {f["kind"]: f["severity"] for f in payload["findings"]}
    assert kinds["per-sample"] == "info"
    assert payload["counts"]["critical"] >= 1 and "Holm" in payload["severity_rule"]


# ------------------------------------------------------------------------------------------- the CLI


def test_cli_report_writes_next_to_the_result(real_run, capsys):
    assert run_cli(["report", real_run]) == 0
    out = real_run.parent / "report.html"
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert "wrote" in capsys.readouterr().err
    assert run_cli(["report", real_run, "--format", "md", "--out", "-"]) == 0
    assert capsys.readouterr().out.startswith("## ")


def test_cli_markdown_appends_to_the_github_step_summary(real_run, tmp_path, monkeypatch):
    step = tmp_path / "step-summary.md"
    step.write_text("## earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    assert run_cli(["report", real_run, "--format", "md", "--out", step]) == 0
    text = step.read_text()
    assert text.startswith("## earlier step\n## ") and "MODERATE" in text


def test_cli_report_bad_input_exits_2_with_one_line(tmp_path, real_run, capsys):
    assert run_cli(["report", tmp_path / "missing.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1
    assert run_cli(["report", real_run, "--format", "docx"]) == 2
    assert "unknown report format 'docx'" in capsys.readouterr().err
    assert run_cli(["report", real_run, "--format", "pdf", "--out", "-"]) == 2


def test_write_reports_api_for_the_uap_command(tmp_path):
    from robaudit.reporting import write_reports

    result, v = uap_cell(zeta=0.02)
    np.save(tmp_path / "uap.npy", v)
    result = result.model_copy(update={"artifacts": {"uap": "uap.npy"}})
    paths = write_reports(result, tmp_path, formats=("html", "markdown", "json"))
    assert set(paths) == {"html", "md", "json"}
    assert all(p.parent == tmp_path and p.stat().st_size > 0 for p in paths.values())
    assert 'id="fig-perturbation"' in paths["html"].read_text()      # run_dir defaults to out_dir
    assert json.loads(paths["json"].read_text())["findings"][0]["zeta"] == 0.02


# ----------------------------------------------------------------------------------------------- PDF


def _chromium_or_skip():
    from robaudit.reporting.pdf import find_chromium

    if find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but Chromium is missing: run scripts/install-chromium.sh")
        pytest.skip("Chromium is not installed (scripts/install-chromium.sh); CI runs this test")


def test_pdf_report_through_headless_chromium(real_run, tmp_path):
    _chromium_or_skip()
    out = tmp_path / "r.pdf"
    assert run_cli(["report", real_run, "--format", "pdf", "--out", out]) == 0
    data = out.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert len(re.findall(rb"/Type\s*/Page[^s]", data)) >= 2 and len(data) > 20_000


def test_pdf_without_chromium_is_one_clear_line(real_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROBAUDIT_CHROMIUM", str(tmp_path / "no-such-chromium"))
    assert run_cli(["report", real_run, "--format", "pdf", "--out", tmp_path / "r.pdf"]) == 2
    err = capsys.readouterr().err.strip()
    assert "need headless Chromium" in err and "install-chromium.sh" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r.pdf").exists()


# ------------------------------------------------------------------------------------- plot helpers


def test_transfer_matrix_in_the_audit_shape():
    from robaudit.reporting.plots import parse_matrix

    rows, cols, vals, metric = parse_matrix({"rows": ["a", "b"], "cols": ["x"], "values": [[0.1], [None]],
                                             "metric": "fooling rate"})
    assert (rows, cols, metric) == (["a", "b"], ["x"], "fooling rate")
    assert vals[0] == [0.1] and math.isnan(vals[1][0])


@pytest.mark.parametrize("obj", [
    {"sources": ["a"], "targets": ["x", "y"], "fooling_rate": [[0.2, 0.3]]},
    {"a": {"x": 0.5, "y": 0.1}, "b": {"x": 0.2}},
    {"matrix": {"a": {"x": 0.5}}, "metric": "targeted success"},
])
def test_transfer_matrix_other_spellings_are_not_read(obj):
    from robaudit.reporting.plots import parse_matrix

    assert parse_matrix(obj) is None


def test_unreadable_transfer_matrix_is_skipped():
    from robaudit.reporting import build_report
    from robaudit.reporting.plots import parse_matrix, transfer_heatmap

    assert parse_matrix({"rows": ["a"], "cols": ["x", "y"], "values": [[0.1]]}) is None
    assert parse_matrix({"note": "not run"}) is None
    assert transfer_heatmap(build_report([counted_cell(10, 100)], transfer={"status": "pending"})) is None


def test_per_sample_only_result_reports_info_not_a_uap_verdict():
    from robaudit.reporting import build_report, render

    rep = build_report(per_sample_cell())
    assert rep.severity == "info" and rep.headline is None and rep.counts()["critical"] == 0
    assert "per-sample success at eps=0.4" in rep.summary
    text = render(rep, "html")
    assert 'id="fig-robust-accuracy"' in text and 'id="fig-rate-vs-zeta"' not in text
    assert "No universal-perturbation cells" in text
