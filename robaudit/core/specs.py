"""Validated run specifications (pydantic): one ``UAPSpec`` is one UAP run, CLI, recipe or library.

Also the one table of norm spellings (``canonical_norm``) that the attack code and gate policies share.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import to_json

from robaudit.core.bounds import Float32, Fraction, PositiveFloat32
from robaudit.core.errors import BadInput
from robaudit.core.files import validate

Norm = Literal["linf", "l2"]
NORMS = ("linf", "l2")
#: accepted spellings of the two norms (CLI, library calls, gate selectors)
NORM_ALIASES = {"linf": "linf", "inf": "linf", "l-inf": "linf", "l_inf": "linf", "l2": "l2", "2": "l2"}


def canonical_norm(norm: str | int | float) -> str:
    """'linf' or 'l2' for the accepted spellings ('linf', 'inf', np.inf, 'l2', 2); BadInput otherwise."""
    key = "inf" if norm == float("inf") else str(norm).lower()
    if key not in NORM_ALIASES:
        raise BadInput(f"unknown norm {norm!r}", "choose linf or l2")
    return NORM_ALIASES[key]


Method = Literal["fgsm", "deepfool", "sgd", "perphoto", "best"]

#: published FGSM step sizes converted to [0,1] pixel units: they used 0.0005 (natural sources) and
#: 0.0024 (training images) on inputs scaled to [-1,1], i.e. half of that here. Used by reference mode;
#: the batched modes choose their own step unless --step-size is given.
DEFAULT_STEP = {"natural": 0.00025, "train": 0.0012}

#: augmented photos an attacker draws by default: on 2 CPU cores about the time of ART's one-pass run on
#: 200 photos (benchmarks/README.md), on a GPU nearer the published attacker's 100,000 photos
DEFAULT_BUDGET = {"cpu": 2000, "cuda": 50000}
#: a stream is attacked in chunks of at most this many views: the first selection check comes early
STREAM_CHUNK = 500

#: bumped when the engine's numbers for an unchanged spec change, so cached cells are not reused
#: (2: batched fgsm's linear step schedule and channels-last execution; 3: augmented photo streams,
#: selection on held-out medical images, strongest-of; 4: racing in best (fgsm, sgd, perphoto), the
#: statistical stop rule instead of patience 6, 256 selection images; 5: batch norm folded into the
#: convolutions for the build and the measure (float rounding only), no stop before ``stop_after`` views;
#: 6: the default is sgd, and on a two-class model a race of sgd builds toward each class)
ENGINE_REVISION = 6
#: methods `best` races (successive halving; benchmarks/README.md "Time to verdict")
BEST_OF = ("fgsm", "sgd", "perphoto")
#: toward_classes races an sgd build toward each class of a model with at most this many classes
TOWARD_MAX_CLASSES = 10
#: the default method: sgd alone came within 0.03 of 0.4's default on skin and above it on fundus, in 0.8-1.3x ART's
#: one-pass time, where best's race of three took 2.1-3.1x (benchmarks/README.md "The 0.9 default")
DEFAULT_METHOD = "sgd"


#: the order UAPSpec's fields had up to 0.4: cache keys hash the fields in this order, so cells cached by
#: earlier releases are still found after the settings moved into :class:`UAPConfig`
_KEY_ORDER = ("model", "checkpoint", "arch", "trust_checkpoint", "data", "split", "eval_limit", "source",
              "source_limit", "norm", "zeta", "eps", "method", "mode", "target", "max_iter", "step_size", "batch_size",
              "chunk_size", "controls", "control_kind", "clip", "seed", "device", "workers", "amp", "grayscale_source",
              "augment", "budget", "select", "select_limit", "select_every", "patience", "restarts", "surrogate",
              "weights_file",
              # added in 0.5 (engine revision 4)
              "stop_window", "stop_delta", "stop_confidence", "race_rung")


class UAPConfig(BaseModel):
    """How a UAP is built and measured: the one declaration of every setting (names, defaults, bounds, help)
    that ``ra.uap``, ``robaudit uap``, recipes and result.json's spec share. *What* is audited (model, data,
    source) is apart: objects in the library, names in the CLI (:class:`UAPSpec`)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    split: str = Field("test", description="split to evaluate on (the reported numbers)")
    eval_limit: int | None = Field(None, ge=1, description="evaluate on N images of the split (seeded subset)")
    source_limit: int | None = Field(None, ge=1, description="use N source images (seeded subset)")
    norm: Norm = Field("l2", description="linf or l2")
    # finite in float32, the dtype v is built in: inf passes "> 0" and 1e39 overflows to inf in the tensor
    zeta: Float32 | None = Field(None,
                               description="eps as a fraction of the mean Lp norm of the task's training images "
                               "(default 0.04)")
    eps: Float32 | None = Field(None, description="absolute eps in [0,1] pixel units")
    method: Method = Field(DEFAULT_METHOD, description="sgd (mini-batch steps on v; with toward_classes, builds "
                           "toward each class raced), fgsm (published, one step per photo), perphoto (each photo of "
                           "a batch iterates until fooled, as published), deepfool, or best (fgsm, sgd and perphoto "
                           "raced by successive halving on the selection split; with toward_classes, sgd builds "
                           "toward each class instead)")
    mode: Literal["batched", "reference"] = Field("batched", description="batched (fast) or reference (ART's exact "
                                                  "sequential loop, fgsm only)")
    target: str | None = Field(None, description="targeted UAP: class index or name")
    max_iter: int | None = Field(None, ge=1, description="passes over the source (plain sources; a stream: 1)")
    step_size: PositiveFloat32 | None = Field(None,
                                    description="step size in [0,1] pixel units (batched fgsm: the first step of the "
                                    "linear schedule; default twice eps/10 for linf, eps/sqrt(d)/10 for l2)")
    batch_size: int = Field(32, ge=1, description="images per attack step")
    chunk_size: int = Field(1000, ge=1, description="source images decoded at a time")
    controls: int = Field(10, ge=0, le=1000, description="random-noise control draws at the UAP's norm")
    control_kind: Literal["uniform", "art"] = Field("uniform", description="uniform, or art (the published draw)")
    clip: bool = Field(True, description="clip x+v to [0,1] (published: no clip)")
    seed: int = Field(0, description="seed of every random choice (subsets, stream, controls)")
    device: str = Field("auto", description="auto, cpu, cuda or mps")
    workers: int = Field(0, ge=0, description="decoding worker processes for large sources")
    amp: bool = Field(False, description="build the UAP under bfloat16 autocast (metrics stay float32)")
    grayscale_source: bool | None = Field(None, description="greyscale the photos (default: for grey tasks)")
    augment: bool = Field(True, description="stream a photo source as augmented views (crops, flips) up to the "
                          "budget; False: plain passes over the photos (max_iter)")
    budget: int | None = Field(None, ge=1, description="augmented photos the attacker draws (default: 2000 on CPU, "
                               "50000 on CUDA)")
    select: Literal["val", "train", "none"] = Field("val", description="split v is chosen on during the build: val "
                                                    "(train when the task has none), train, or none (the blind "
                                                    "attacker's last v)")
    select_limit: int = Field(256, ge=8, description="selection images (also what racing compares candidates on)")
    select_every: int | None = Field(None, ge=1, description="images between selection checks (default: about 16 "
                                     "checks over the build, >= 256)")
    patience: int | None = Field(None, ge=1, description="also stop after N selection checks without gain (None: the "
                                 "stop rule alone)")
    stop_delta: Fraction = Field(0.01, description="stop once the best v's gain over the last --stop-window checks "
                                 "is below this (selection rate) at --stop-confidence; 0: run the whole budget")
    stop_after: int = Field(2000, ge=0, description="views before which neither the stop rule nor patience ends a "
                            "build: fgsm's selection rate on the X-rays can stay flat for 1,500 views and then jump "
                            "(0.12 -> 0.65); the default is the whole CPU budget")
    stop_window: int = Field(4, ge=1, le=100, description="selection checks the stop rule's gain is measured over")
    stop_confidence: float = Field(0.9, gt=0, lt=1, description="confidence of the stop rule's upper bound on the "
                                     "gain (exact, paired on the selection images)")
    race_rung: int | None = Field(None, ge=1, description="a race (best, toward_classes, restarts): images each "
                                  "candidate gets before the first cut (successive halving, rungs doubling); default "
                                  "about a quarter of the budget, in whole check intervals")
    toward_classes: bool | None = Field(None, description="sgd or best, non-targeted, built on the audited model "
                                        "with a selection split: race sgd builds toward each class (and, above two "
                                        "classes, the non-targeted one; models of at most 10 classes), all judged "
                                        "by the non-targeted fooling rate on the selection split. None: on in sgd "
                                        "cells of two-class models. A non-targeted UAP settles on one class's "
                                        "direction, often not the strongest: on the X-rays it flips 28% of the "
                                        "scans, the build toward 'normal' 66-74%. The split's class mix decides "
                                        "between directions: where val's differs from test's, so may the pick "
                                        "(benchmarks/README.md \"The 0.9 default\")")
    restarts: int = Field(1, ge=1, le=20, description="builds per method with seeds seed, seed+1, ...; best kept")
    surrogate: str | None = Field(None, description="zero-knowledge: build v on 'pretrained' (the public ImageNet "
                                  "model of the audited arch), a zoo name or a checkpoint; the audited model is "
                                  "first used after v is fixed")
    weights_file: str | None = Field(None, description="ImageNet weights for surrogate 'pretrained' when the arch "
                                     "has none offline")
    # threat models (issue 26): what the attacker reaches, and how v reaches the model (robaudit.eval.query, .delivery)
    access: Literal["white-box", "query"] = Field("white-box", description="what the attacker has of the audited "
                                                  "model: white-box (its gradients, or a surrogate's) or query (a "
                                                  "forward-only oracle; v built by U-SimBA, no gradient taken)")
    query_output: Literal["scores", "labels"] = Field("scores", description="query access: what the oracle "
                                                      "returns, class scores (softmax) or the top label only")
    query_budget: int | None = Field(None, ge=1, description="query access: images the attacker may forward "
                                     "through the oracle, selection included (default: 100000 on CPU, 2000000 on "
                                     "CUDA)")
    delivery: str = Field("input", pattern=r"^(input|stored|jpeg=\d{1,3})$",
                          description="where v is measured: input (added to the model input, the published "
                          "convention), stored (added to the image at its stored size, saved as 8-bit, then the "
                          "model's resize), or jpeg=Q (stored, then JPEG at quality Q); both rates reported")
    eot: bool = Field(False, description="build v through random draws of the delivery (resize jitter, "
                      "differentiable JPEG, 8-bit rounding with a straight-through gradient) so it survives them")

    @model_validator(mode="after")
    def _check_config(self) -> UAPConfig:
        if self.zeta is not None and self.eps is not None:
            raise ValueError("give zeta or eps, not both")
        if self.zeta is None and self.eps is None:
            self.zeta = 0.04
        if self.zeta is not None and not 0 < self.zeta <= 1:
            raise ValueError(f"zeta must be in (0, 1] (a fraction; 0.04 = 4%), got {self.zeta}")
        if self.eps is not None and (self.eps <= 0 or (self.norm == "linf" and self.eps > 1)):
            raise ValueError(f"eps must be > 0 (and <= 1 for linf) in [0,1] pixel units, got {self.eps}")
        if self.mode == "reference" and self.method != "fgsm":
            raise ValueError("mode reference exists for method fgsm only")
        if self.delivery.startswith("jpeg=") and not 1 <= int(self.delivery[5:]) <= 100:
            raise ValueError(f"delivery jpeg=Q needs a quality Q in 1..100, got {self.delivery!r}")
        if self.access == "query" and (self.surrogate is not None or self.mode == "reference" or self.eot):
            raise ValueError("query access builds v from the oracle's outputs alone: it takes no surrogate, "
                             "reference mode or eot (which needs gradients)")
        if self.access != "query" and (self.query_budget is not None or self.query_output != "scores"):
            raise ValueError("query_budget and query_output are settings of access='query'")
        if self.eot and self.delivery == "input":
            raise ValueError("eot builds v to survive a delivery; give delivery='stored' or 'jpeg=Q'")
        if self.surrogate is not None and self.target is not None:
            raise ValueError("a zero-knowledge surrogate has no medical classes to target; drop target or "
                             "surrogate")
        return self


def _comma_list(value):
    """'0.62,0.52,0.48' (a CLI comma list) -> ['0.62', '0.52', '0.48']; one number -> [it]; lists and None pass."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return value


class ModelRef(BaseModel):
    """Which model is audited, by name or file, and the preprocessing it takes: the one declaration of the
    model arguments every command and ``ra.load_model`` share. Unset preprocessing fields come from the
    model's card, then from the architecture's defaults; where each came from is recorded in the result."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str | None = Field(None, description="zoo name (trained), e.g. skin_resnet50")
    checkpoint: str | None = Field(None, description="your model file: a state_dict (.pt/.safetensors), TorchScript, "
                                   "torch.export (.pt2) or ONNX, detected by content")
    arch: str | None = Field(None, description="architecture of a state_dict: a timm name, torchvision:NAME, or "
                             "package.module:factory (your code)")
    arch_kwargs: dict | None = Field(None, description="JSON keyword arguments for a package.module:factory arch, "
                                     "e.g. '{\"spatial_dims\": 2, \"in_channels\": 1, \"out_channels\": 2}'")
    trust_checkpoint: bool = Field(False, description="allow code in the model file (pickled objects, TorchScript)")
    mean: tuple[Float32, ...] | None = Field(None, description="per-channel mean the model subtracts, [0, 1] units, "
                                             "comma list (default: the card's, else the arch's)")
    std: tuple[PositiveFloat32, ...] | None = Field(None, description="per-channel std the model divides by, comma "
                                                    "list (default: the card's, else the arch's)")
    input_size: int | None = Field(None, ge=8, le=4096, description="square input side the model takes, in pixels "
                                   "(default: the card's, else the model file's or the arch's)")
    channels: Literal[1, 3] | None = Field(None, description="input channels the model takes, 1 or 3 (default: the "
                                           "card's, else read from the weights)")
    classes: list[str] | None = Field(None, description="the head's class order by the data's class names, comma "
                                      "list, e.g. nv,mel (default: the card's, else the data's order)")

    @field_validator("mean", "std", "classes", mode="before")
    @classmethod
    def _split(cls, value):
        return _comma_list(value)

    @field_validator("arch_kwargs", mode="before")
    @classmethod
    def _json(cls, value):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON ({exc.msg} at character {exc.pos})") from None
            if not isinstance(value, dict):
                raise ValueError("must be a JSON object of keyword arguments")
        return value

    @model_validator(mode="after")
    def _check_ref(self) -> ModelRef:
        for what in ("mean", "std"):
            vals = getattr(self, what)
            allowed = (1, self.channels) if self.channels else (1, 3)
            if vals is not None and len(vals) not in allowed:
                raise ValueError(f"{what} needs one value per channel (or one for all), got {len(vals)}")
        if self.classes is not None and (len(self.classes) < 2 or len(set(self.classes)) != len(self.classes)):
            raise ValueError(f"classes must name at least two distinct classes, got {self.classes}")
        if self.arch_kwargs is not None and not (self.arch and ":" in self.arch and not self.arch.startswith(
                ("timm:", "torchvision:"))):
            raise ValueError("arch_kwargs is for an arch of your own code (package.module:factory)")
        return self

    def preprocessing(self) -> dict:
        """The preprocessing fields given (the loader's overrides)."""
        return {k: getattr(self, k) for k in ("mean", "std", "input_size", "channels", "classes")
                if getattr(self, k) is not None}

    def load_kwargs(self) -> dict:
        """Keyword arguments of :func:`robaudit.models.load_model_and_task` for this reference."""
        return dict(model=self.model, checkpoint=self.checkpoint, arch=self.arch, arch_kwargs=self.arch_kwargs,
                    trust_checkpoint=self.trust_checkpoint, overrides=self.preprocessing())


#: ModelRef fields added after 0.4: hashed only when set, so unchanged specs keep their cache keys
_NEW_KEYS = ("arch_kwargs", "mean", "std", "input_size", "channels", "classes", "critical_class")
#: settings added since 0.6 (threat models, the stop floor) and their defaults: hashed only when not default, so
#: unchanged specs keep their cache keys
_THREAT_KEYS = {"access": "white-box", "query_output": "scores", "query_budget": None, "delivery": "input",
                "eot": False, "stop_after": 2000, "toward_classes": None}
#: images a query-only attacker may forward by default (U-SimBA's rounds; benchmarks/README.md "Threat models")
DEFAULT_QUERY_BUDGET = {"cpu": 100_000, "cuda": 2_000_000}


class UAPSpec(ModelRef, UAPConfig):
    """One UAP run by names (CLI, recipes, cache): what is audited, plus the :class:`UAPConfig` settings.

    Everything here determines the run's numbers and is hashed for caching and resume."""

    data: str | None = Field(None, description="task name or path; default: the model's own task")
    critical_class: str | None = Field(None, description="the class whose missed call harms (the disease), name or "
                                       "index: its missed-disease and false-alarm rates lead the report (default: "
                                       "the dataset card's critical_class)")
    source: str = Field("imagenet", description="imagenet, natural (photos in wheels), train, or a folder")
    force: bool = Field(False, description="audit a model that is below chance on the data (a wrong class order or "
                        "normalisation, usually)")

    @model_validator(mode="after")
    def _check(self) -> UAPSpec:
        if self.surrogate is not None and self.source == "train":
            raise ValueError("a zero-knowledge attacker has no training images; use a photo source with surrogate")
        if not self.model and not self.checkpoint:
            raise ValueError("give --model NAME or --checkpoint PATH")
        return self

    def ref(self) -> ModelRef:
        """The model arguments alone."""
        return ModelRef(**self.model_dump(include=set(ModelRef.model_fields)))

    def config(self) -> UAPConfig:
        """The settings alone (what a library call takes as keyword arguments)."""
        return UAPConfig(**self.model_dump(include=set(UAPConfig.model_fields)))

    @property
    def targeted(self) -> bool:
        return self.target is not None

    def cache_key(self) -> str:
        """Hash of every field that alters the numbers (device and worker count excluded)."""
        skip = {"device", "workers"} | (set() if self.amp else {"amp"})
        dump = self.model_dump()
        keyed = {k: dump[k] for k in _KEY_ORDER if k not in skip}
        keyed.update({k: dump[k] for k in _NEW_KEYS if dump[k] is not None})
        keyed.update({k: dump[k] for k, d in _THREAT_KEYS.items() if dump[k] != d})
        payload = to_json(keyed).decode()
        return hashlib.sha256(f"{ENGINE_REVISION}:{payload}".encode()).hexdigest()[:20]

    @property
    def streamed(self) -> bool:
        """Whether the source is drawn as an augmented stream (photo sources, batched mode, augment on)."""
        return self.augment and self.source != "train" and self.mode == "batched"

    def default_max_iter(self) -> int:
        """Published passes: one over a natural source, 15 over training images (batched: a few more).
        An augmented stream is drawn once, whatever ``max_iter`` says (which counts passes over plain
        sources): its budget, not passes, sets how much the attacker sees."""
        if self.streamed:
            return 1
        if self.max_iter:
            return self.max_iter
        if self.source == "train":
            return 15 if self.mode == "reference" else 10
        return 1 if self.mode == "reference" else 5

    def resolved_budget(self, device_type: str) -> int | None:
        """Augmented images drawn: ``budget``, else the device's default; None for plain sources."""
        if not self.streamed:
            return None
        return self.budget or DEFAULT_BUDGET["cuda" if device_type == "cuda" else "cpu"]

    def resolved_query_budget(self, device_type: str) -> int | None:
        """Queries a query-only attacker may make: ``query_budget``, else the device's default; None otherwise."""
        if self.access != "query":
            return None
        return self.query_budget or DEFAULT_QUERY_BUDGET["cuda" if device_type == "cuda" else "cpu"]

    def select_every_for(self, images: int) -> int:
        """Images between selection checks: ``select_every``, else about 16 checks over the build (>= 256)."""
        return self.select_every or max(256, images // 16)

    def resolved_step(self) -> float | None:
        """``step_size``, else the published step for reference fgsm, else None (the method's own default)."""
        if self.step_size:
            return self.step_size
        if self.method != "fgsm" or self.mode != "reference":
            return None
        return DEFAULT_STEP["train" if self.source == "train" else "natural"]


def make_spec(**kwargs) -> UAPSpec:
    """Build a UAPSpec, turning validation errors into one-line BadInput messages (in --flag terms)."""
    return validate(UAPSpec, kwargs, flag=True)


def make_config(**kwargs) -> UAPConfig:
    """Build the settings of a library call; errors name the keyword arguments."""
    return validate(UAPConfig, kwargs)
