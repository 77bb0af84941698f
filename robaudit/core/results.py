"""The versioned result schema shared by ``uap``, ``attack`` and ``audit`` (pydantic models).

Every number that a choice can alter (clip or not, how zeta is scaled, fooling against the clean
prediction) is recorded here. ``robaudit/schema/result.schema.json`` is generated from these models
(``python -m robaudit.core.results`` rewrites it; a test checks it is current).

Values are checked when a result is read, not only its shape: rates and interval ends in [0, 1] with
lo <= value <= hi, counts non-negative and consistent (k <= n, n = the sum over classes), p in [0, 1], a
schema of this major version. Every reader (report, gate, audit cache, ``ra.Result``) validates through
these models, so a hand-edited or corrupted result (a fooling rate of 1.7) is one line naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from robaudit.core.bounds import Count, Fraction
from robaudit.core.errors import BadInput
from robaudit.core.files import read_json, validate

#: 1.1: attacker strength (threat model, budget, selection, candidates); 1.2: replicates;
#: 1.3: model format and preprocessing provenance, harm by diagnosis; threat models (query access, delivery:
#: optional fields within 1.3)
SCHEMA_VERSION = "1.4"
SCHEMA_PATH = Path(__file__).parents[1] / "schema" / "result.schema.json"
#: slack for float round-off when checking that an interval holds its value
_TOL = 1e-9


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _rate_or_unchecked(x: float) -> float:
    if x != -1.0 and not 0.0 <= x <= 1.0:
        raise ValueError(f"{x!r} is neither a rate in [0, 1] nor -1 (no selection check reached)")
    return x


#: a selection rate, or -1 when the build stopped before its first selection check (``Selection.best_rate``)
SelectionRate = Annotated[float, AfterValidator(_rate_or_unchecked)]


def _check_interval(value: float, ci: tuple[float, float], *, holds: bool = True) -> None:
    lo, hi = ci
    if lo > hi + _TOL:
        raise ValueError(f"ci: interval ({lo:g}, {hi:g}) is reversed")
    if holds and not lo - _TOL <= value <= hi + _TOL:
        raise ValueError(f"value {value:g} lies outside its interval ({lo:g}, {hi:g})")


class Rate(_Model):
    """A proportion k/n with a confidence interval."""

    value: Fraction = Field(description="k / n")
    ci: tuple[Fraction, Fraction] = Field(description="confidence interval for the proportion")
    n: Count = Field(description="number of images")
    k: Count | None = Field(default=None, description="number of successes")
    ci_method: str = Field(default="wilson", description="interval method (statsmodels proportion_confint)")
    confidence: float = Field(0.95, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> Rate:
        _check_interval(self.value, self.ci)
        if self.k is not None:
            if self.k > self.n:
                raise ValueError(f"k: {self.k} successes out of n = {self.n} images")
            if self.n and abs(self.value - self.k / self.n) > 1e-6:
                raise ValueError(f"value {self.value:g} is not k / n = {self.k}/{self.n}")
        return self


class TargetedRate(Rate):
    """Targeted success rate, with the clean rate of the target class beside it."""

    clean_rate: Fraction = Field(description="fraction of clean images already predicted as the target")


class ClassBreakdown(_Model):
    index: int
    name: str
    n: Count = Field(description="images whose true label is this class")
    clean_accuracy: Fraction | None = None
    adv_accuracy: Fraction | None = None
    fooling_rate: Fraction | None = None


class Delivered(_Model):
    """The perturbation as delivered (issue 26): added to the image at its stored size, saved as 8-bit (and
    JPEG at ``jpeg_quality``), then the model's own preprocessing; clean images go through the same steps."""

    delivery: str = Field(description="'stored' or 'jpeg=Q'")
    stored_size: int = Field(description="side of the stored image v is added to, in pixels")
    input_size: int
    jpeg_quality: int | None = None
    resize: str = Field("antialiased bilinear", description="the model's resize from stored to input size")
    v_at_stored: str = Field(description="how v (built at the model input) was placed on the stored image")
    fooling_rate: Rate = Field(description="prediction on delivered(x + v) differs from the one on delivered(x)")
    targeted_success_rate: Fraction | None = None
    clean_agreement: Fraction = Field(description="share of images whose delivered clean prediction equals the "
                                      "prediction on the model-input image (what the pipeline alone changes)")
    control_fooling_rate: Fraction | None = Field(default=None, description="mean over the control draws, "
                                                  "delivered the same way")
    p_vs_control: Fraction | None = Field(default=None, description="exact McNemar, delivered v vs the delivered "
                                          "median control draw, same images")


class Metrics(_Model):
    clean_accuracy: Fraction
    adv_accuracy: Fraction
    fooling_rate: Rate
    targeted_success_rate: TargetedRate | None = None
    per_class: list[ClassBreakdown] = Field(default_factory=list)
    confusion: list[list[Count]] | None = Field(
        default=None, description="rows: clean prediction, columns: adversarial prediction")
    delivered: Delivered | None = Field(default=None, description="the same v as delivered through the stored "
                                        "format and the model's preprocessing (``--delivery``); the rates above "
                                        "are at the model input")

    @model_validator(mode="after")
    def _counts_agree(self) -> Metrics:
        total = sum(c.n for c in self.per_class)
        if self.per_class and self.fooling_rate.n > total:
            raise ValueError(f"fooling_rate.n: {self.fooling_rate.n} images, more than the {total} of per_class")
        if self.confusion is not None:
            k = len(self.confusion)
            if any(len(row) != k for row in self.confusion):
                raise ValueError("confusion: not a square matrix")
            if self.per_class and k != len(self.per_class):
                raise ValueError(f"confusion: {k} rows for {len(self.per_class)} classes")
            if self.per_class and sum(map(sum, self.confusion)) != total:
                raise ValueError(f"confusion: counts {sum(map(sum, self.confusion))} images, per_class {total}")
        return self


class ControlRate(_Model):
    """A rate over K random draws: mean value, interval over draws, and every draw's value."""

    value: Fraction
    ci: tuple[Fraction, Fraction]
    draws: list[Fraction] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ordered(self) -> ControlRate:
        _check_interval(self.value, self.ci, holds=False)  # a t-interval over draws, clipped to [0, 1]
        return self


class ClassHarm(_Model):
    """One class's sensitivity (recall: images of the class called the class) and specificity (images of
    other classes not called it), on clean images and under the perturbation, each paired test on the
    same images (exact McNemar on per-image correctness)."""

    index: int
    name: str
    sensitivity_clean: Rate
    sensitivity_adv: Rate
    sensitivity_p: Fraction | None = Field(default=None, description="exact McNemar, clean vs adversarial "
                                           "correctness of this class's images (None: no images)")
    specificity_clean: Rate
    specificity_adv: Rate
    specificity_p: Fraction | None = None


class CriticalHarm(_Model):
    """The declared critical class (the disease a missed call harms): how often the perturbation hides it
    or raises it where it is absent."""

    index: int
    name: str
    source: str = Field(description="where the critical class came from: 'flag' (--critical-class), 'card' "
                        "(dataset card critical_class), 'built-in' (robaudit's table for a shipped data set)")
    missed_disease: Rate = Field(description="of the critical class's images the model detects clean, the share "
                                 "the perturbation turns into another class")
    false_alarm: Rate = Field(description="of the other classes' images the model clean does not call critical, "
                              "the share the perturbation turns into the critical class")
    control_missed_disease: Fraction | None = Field(default=None, description="the same for the median control "
                                                    "draw (the draw the McNemar test uses)")
    control_false_alarm: Fraction | None = None
    missed_disease_p: Fraction | None = Field(default=None, description="exact McNemar: missed by the UAP vs "
                                              "missed by the median control draw, same images")
    direction: Literal["hides disease", "raises false alarms"] | None = Field(
        default=None, description="a targeted cell's clinical direction: toward another class hides the critical "
        "class (the clinically worst direction), toward it raises false alarms; None when not targeted")


class Harm(_Model):
    """Harm by diagnosis: per-class sensitivity and specificity before and after, and the critical class's
    missed-disease and false-alarm rates (the transition matrix is ``metrics.confusion``)."""

    classes: list[ClassHarm]
    critical: CriticalHarm | None = None
    test: str = "mcnemar-exact"


class Control(_Model):
    kind: str = Field(description="'uniform' (uniform per pixel in the L-inf box / uniform direction "
                      "on the L2 sphere, at exactly the UAP norm) or 'art' (the published draw)")
    draws: Count
    norm_value: float | None = Field(default=None, description="Lp norm of each control draw")
    fooling_rate: ControlRate
    targeted_success_rate: ControlRate | None = None


class Comparison(_Model):
    test: str = Field(description="e.g. 'mcnemar-exact' (UAP vs the median control draw, same images)")
    p_value: Fraction
    statistic: float | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class ModelInfo(_Model):
    name: str
    arch: str
    init: Literal["imagenet", "random", "unknown"] = "unknown"
    transfer: str | None = None
    task: str | None = None
    classes: list[str]
    input_size: int | None = None
    sha256: str | None = None
    replicate: int | None = Field(default=None, description="training replicate (zoo NAME@R); None: a pooled "
                                  "row or a model outside replicated training")
    channels: int | None = Field(default=None, description="input channels the audit fed the model")
    mean: list[float] | None = Field(default=None, description="per-channel mean robaudit subtracted ([0, 1] units)")
    std: list[float] | None = Field(default=None, description="per-channel std robaudit divided by")
    format: str | None = Field(default=None, description="how the model was read: 'robaudit store', 'torch "
                               "state_dict', 'safetensors state_dict', 'torchscript', 'torch.export', 'onnx', "
                               "'module' (a live nn.Module)")
    preprocessing: dict[str, Any] | None = Field(default=None, description="what the audit applied (mean, std, "
                                                 "input_size, interpolation, channels, classes) and `source`: "
                                                 "where each came from (card, flag, given, data, weights, model "
                                                 "file, default)")
    onnx_parity: float | None = Field(default=None, description="ONNX: max abs logit difference of the converted "
                                      "module vs onnxruntime on real inputs")
    trained_under: dict[str, Any] | None = Field(default=None, description="what decided the stored weights besides "
                                                 "seed and data: torch, timm, torch threads, CPU ISA, device")
    conditions_changed: list[str] | None = Field(default=None, description="training conditions that differ "
                                                 "between the stored weights and the process that audited them "
                                                 "('torch_threads 1 -> 2'): a retrain here gives other weights")


class DataInfo(_Model):
    name: str
    split: str
    n: Count
    sha256: str | None = None
    view: str | None = Field(default=None, description="label view, e.g. 'referable'")
    path: str | None = None


class StopRuleInfo(_Model):
    """Stop once the upper confidence bound of the best v's selection-rate gain over the last ``window``
    checks (exact conditional bound, paired on the selection images) is below ``delta``."""

    window: int = Field(ge=1)
    delta: Fraction
    confidence: Fraction
    after: int | None = Field(default=None, ge=0, description="views before which neither the rule nor patience "
                              "stops a build (None in results before 0.7)")


class RungResult(_Model):
    """A candidate at one successive-halving cut."""

    images: Count = Field(description="images seen at the cut")
    selection_rate: SelectionRate | None = Field(default=None, description="its best v's selection rate there")
    kept: bool
    p_vs_leader: Fraction | None = Field(default=None, description="exact McNemar p of its best v against the "
                                         "leader's on the selection images (None for the leader)")


class TrajectoryPoint(_Model):
    """One check of v during a build: after ``images`` source images, ``seconds`` into the build."""

    images: Count
    seconds: float
    selection_rate: Fraction = Field(description="success on the selection images (held out from the build)")
    test_rate: Fraction | None = Field(default=None, description="success of that v on the reported split "
                                    "(measured after the build, never used to choose)")
    upper_gain: float | None = Field(default=None, description="the stop rule's upper confidence bound on the best "
                                     "v's selection-rate gain over the last `window` checks, at this check")


class SelectionInfo(_Model):
    """How the reported v was chosen among the v's a build went through."""

    split: str = Field(description="'val' or 'train' of the audited task (never the reported split), or "
                       "'held-out photos' (zero-knowledge: scored on the surrogate)")
    n: Count
    every: int = Field(description="images between checks")
    patience: int | None = None
    best_rate: SelectionRate
    best_at: Count = Field(description="images seen when the chosen v was reached")
    final_rate: Fraction | None = Field(default=None, description="selection rate of the last v of the build")
    plateau: bool = Field(default=False, description="the build stopped early (the stop rule, or `patience`)")
    stop_rule: StopRuleInfo | None = Field(default=None, description="the statistical stop rule in force")
    stop_reason: str | None = Field(default=None, description="why the build stopped early")
    race_rungs: list[Count] = Field(default_factory=list, description="images seen at each successive-halving cut "
                                    "(best / restarts on a stream)")
    check_seconds: float | None = Field(default=None, description="seconds spent scoring v on the selection images "
                                        "(all candidates)")
    build_seconds: float | None = Field(default=None, description="seconds of the whole build (all candidates)")
    trajectory: list[TrajectoryPoint] = Field(default_factory=list, description="the chosen candidate's checks; "
                                              "seconds on the build's clock (all candidates)")


class Candidate(_Model):
    """One build of a strongest-of attack (``--method best`` or restarts)."""

    method: str
    seed: int
    toward: str | None = Field(default=None, description="schema 1.4: a non-targeted race's sgd build aimed at "
                               "this class (judged by the non-targeted rate, like the others)")
    selection_rate: SelectionRate | None = None
    source_fooling_rate: Fraction | None = None
    images_seen: Count | None = None
    seconds: float | None = None
    chosen: bool = False
    skipped: str | None = Field(default=None, description="why this candidate was not run")
    dropped_at: Count | None = Field(default=None, description="images seen when successive halving dropped it")
    stop_reason: str | None = Field(default=None, description="why its build stopped early")
    rungs: list[RungResult] = Field(default_factory=list, description="its result at every cut it reached")

    @property
    def name(self) -> str:
        """How reports name it: the method, and the class a directed build aims at."""
        return f"{self.method} toward {self.toward}" if self.toward else self.method


class ThreatInfo(_Model):
    """A cell's threat model in the terms of NIST AI 100-2 (evasion; attacker knowledge, capability, goal)."""

    attack_class: str = "evasion (universal perturbation)"
    knowledge: str = Field(description="white-box (gradients of the audited model), gray-box (a surrogate: the "
                           "public pretrained model), black-box query access (scores or labels)")
    capability: str = Field(description="what the attacker holds and may do: natural photos or training images, "
                            "photos drawn, queries")
    goal: str = Field(description="availability/integrity: non-targeted misclassification, or targeted to a class")
    delivery: str = Field(description="where the perturbation enters: the model input, or the stored image "
                          "(8-bit, JPEG q) before the model's preprocessing")


class AttackInfo(_Model):
    kind: Literal["uap", "per-sample"]
    method: str
    mode: str | None = None
    backend: str | None = None
    norm: Literal["linf", "l2"]
    zeta: float | None = Field(default=None, description="eps / mean Lp norm of the task's images in [0,1]")
    eps: float | list[float] | None = None
    eps_scale: str = Field(default="[0,1] pixel space", description="unit of eps")
    zeta_reference: str | None = Field(default=None, description="which images the zeta mean norm is over")
    targeted: bool = False
    target: int | None = None
    target_name: str | None = None
    source: str | None = None
    source_n: Count | None = None
    clip: bool = True
    max_iter: int | None = None
    steps: int | None = None
    step_size: float | None = None
    batch_size: int | None = None
    seed: int | None = None
    seconds: float | None = None
    device: str | None = None
    uap_norm: float | None = Field(default=None, description="achieved Lp norm of the perturbation")
    source_fooling_rate: Fraction | None = None
    interrupted: bool = False
    threat_model: Literal["white-box natural", "zero-knowledge surrogate", "training images", "query-only (scores)",
                          "query-only (labels)", "other"] | None = None
    threat: ThreatInfo | None = Field(default=None, description="the threat model in NIST AI 100-2 terms")
    access: Literal["white-box", "query"] | None = Field(default=None, description="what the attacker reached of "
                                                          "the model built on")
    query_output: Literal["scores", "labels"] | None = None
    query_budget: Count | None = Field(default=None, description="images the query-only attacker may forward")
    queries_used: Count | None = Field(default=None, description="images it forwarded (selection included)")
    delivery: str | None = Field(default=None, description="'input' (the published convention), 'stored' or "
                                 "'jpeg=Q'")
    eot: bool | None = Field(default=None, description="v built through random draws of the delivery")
    surrogate: str | None = Field(default=None, description="the model the UAP was built on, when not the audited one")
    budget: int | None = Field(default=None, description="augmented source images drawn (None: plain passes)")
    selection: SelectionInfo | None = None
    candidates: list[Candidate] = Field(default_factory=list)


class EpsilonResult(_Model):
    """Per-sample attacks: one row per epsilon (foolbox style)."""

    eps: float
    robust_accuracy: Rate
    success_rate: Rate


class MinNorm(_Model):
    median: float
    quantiles: dict[str, float]
    success_rate: Fraction
    values: list[float] = Field(default_factory=list)


class PooledInfo(_Model):
    """A row pooled over training replicates: the unit of inference is the training run.

    ``rates[i]`` is replicate ``replicates[i]``'s rate (the mean over its attack seeds); the pooled rate is
    their mean with a t-interval over replicates (df = R - 1), the control likewise, and the comparison a
    paired t-test of (UAP - control) over replicates."""

    replicates: list[int]
    rates: list[Fraction]
    control_rates: list[Fraction] = Field(default_factory=list)
    attack_seeds: int = Field(1, description="attack seeds per replicate (their rates are averaged first)")
    between_replicate_sd: float | None = Field(default=None, description="SD of the replicate rates")
    within_replicate_sd: float | None = Field(default=None, description="mean SD over attack seeds within a "
                                              "replicate (None with one seed)")
    interval: str = "t over replicates"
    cells: list[str] = Field(default_factory=list, description="the pooled cells' folders")


class Result(_Model):
    """One attack run: a UAP (``attack.kind == 'uap'``) or a per-sample attack."""

    schema_version: str = SCHEMA_VERSION
    robaudit_version: str
    created: str
    command: str | None = None
    environment: dict[str, Any] = Field(default_factory=dict)
    model: ModelInfo
    data: DataInfo
    attack: AttackInfo
    metrics: Metrics | None = None
    control: Control | None = None
    comparison: Comparison | None = None
    per_eps: list[EpsilonResult] | None = None
    min_norm: MinNorm | None = None
    pooled: PooledInfo | None = Field(default=None, description="set on a row pooled over training replicates")
    harm: Harm | None = Field(default=None, description="harm by diagnosis (UAP cells, schema 1.3)")
    artifacts: dict[str, str] = Field(default_factory=dict, description="file names in the run folder")
    notes: list[str] = Field(default_factory=list)

    @field_validator("schema_version")
    @classmethod
    def _same_major(cls, v: str) -> str:
        got, ours = _major_minor(v), _major_minor(SCHEMA_VERSION)
        if got is None:
            raise ValueError(f"{v!r} is not MAJOR.MINOR")
        if got[0] != ours[0] or got > ours:
            raise ValueError(f"{v} is not a result schema this robaudit reads ({ours[0]}.0 to {SCHEMA_VERSION})")
        return v

    @model_validator(mode="after")
    def _uap_counts(self) -> Result:
        m = self.metrics
        if self.attack.kind == "uap" and m is not None and m.per_class:
            total = sum(c.n for c in m.per_class)
            if m.fooling_rate.n != total:
                raise ValueError(f"metrics.fooling_rate.n: {m.fooling_rate.n} images, but per_class sums to {total}")
        return self

    def primary_rate(self) -> Rate | None:
        """The rate a UAP cell is judged on: targeted success for a targeted UAP, else the fooling rate."""
        m = self.metrics
        if m is None:
            return None
        return m.targeted_success_rate if self.attack.targeted and m.targeted_success_rate is not None \
            else m.fooling_rate

    def control_rate(self) -> ControlRate | None:
        """The random control's rate of the same measure as :meth:`primary_rate`."""
        c = self.control
        if c is None:
            return None
        targeted = self.attack.targeted and self.metrics is not None and self.metrics.targeted_success_rate is not None
        return c.targeted_success_rate if targeted else c.fooling_rate

    # ---- reports: the report layer sits above core and registers its renderer (robaudit.reporting) ----
    def render(self, fmt: str = "html") -> str:
        """This result's report as text (``html``: self-contained page, ``md``: Markdown)."""
        return _renderer()(self, fmt)

    def to_html(self, path: str | Path) -> Path:
        """Write the self-contained HTML report card of this result."""
        return _write(Path(path), self.render("html"))

    def to_markdown(self, path: str | Path) -> Path:
        """Write the Markdown report of this result."""
        return _write(Path(path), self.render("md"))

    def _repr_html_(self) -> str:  # a notebook shows the report card inline
        return self.render("html")


#: set by robaudit.reporting on import: (result, fmt) -> text
RENDERER = None


def _renderer():
    if RENDERER is None:  # a plugin import: the report layer registers itself (core may not import it)
        import importlib

        importlib.import_module("robaudit.reporting")
    return RENDERER


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def success_vector(clean, adv, target: int | None):
    """Per-image success of a perturbation: predicted as ``target`` (targeted) or away from the clean prediction."""
    clean, adv = np.asarray(clean), np.asarray(adv)
    return adv == target if target is not None else adv != clean


def load_result(path: str | Path) -> Result:
    """Read and validate a result.json (BadInput with a one-line reason on failure)."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"result file {str(p)!r} does not exist", "pass the result.json a run wrote")
    return validate_result(read_json(p, "result file"), f"result file {str(p)!r}",
                           "regenerate it with this robaudit version")


def validate_result(raw: Any, where: str, hint: str | None = None) -> Result:
    """One result document validated against the schema (BadInput naming ``where`` on failure)."""
    check_schema_version(raw, where)
    return validate(Result, raw, where=f"{where} does not match result schema {SCHEMA_VERSION}", hint=hint)


def _major_minor(version: Any) -> tuple[int, int] | None:
    parts = str(version).split(".")
    if len(parts) not in (1, 2, 3) or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0


def check_schema_version(raw: Any, where: str) -> None:
    """Refuse a result written by a newer robaudit (a schema MAJOR.MINOR above :data:`SCHEMA_VERSION`):
    its fields may change what the numbers mean, and grading or gating it as if they did not could pass
    a model that should fail."""
    if not isinstance(raw, dict) or "schema_version" not in raw:
        return
    version = raw["schema_version"]
    got = _major_minor(version)
    if got is None:
        raise BadInput(f"{where} has schema_version {version!r}, not MAJOR.MINOR",
                       "regenerate it with robaudit")
    if got > _major_minor(SCHEMA_VERSION):
        raise BadInput(f"{where} uses result schema {version}, newer than this robaudit reads "
                       f"({SCHEMA_VERSION})", "upgrade robaudit (pip install -U robaudit) to read it")


def json_schema() -> dict[str, Any]:
    schema = Result.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://robaudit.dev/schema/result-{SCHEMA_VERSION}.json"
    return schema


if __name__ == "__main__":
    SCHEMA_PATH.write_text(json.dumps(json_schema(), indent=2) + "\n")
    print(f"wrote {SCHEMA_PATH}")
