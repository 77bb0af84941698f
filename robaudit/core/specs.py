"""Validated run specifications (pydantic): one ``UAPSpec`` is one UAP run, CLI, recipe or library.

Also the one table of norm spellings (``canonical_norm``) that the attack code and gate policies share.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


Method = Literal["fgsm", "deepfool", "sgd", "best"]

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
#: selection on held-out medical images, strongest-of)
ENGINE_REVISION = 3


class UAPSpec(BaseModel):
    """Everything that determines one UAP run's numbers (hashed for caching and resume)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str | None = None
    checkpoint: str | None = None
    arch: str | None = None
    trust_checkpoint: bool = False
    data: str | None = Field(None, description="task name or path; default: the model's own task")
    split: str = "test"
    eval_limit: int | None = Field(None, ge=1)
    source: str = "imagenet"
    source_limit: int | None = Field(None, ge=1)
    norm: Norm = "l2"
    # finite only: inf passes "> 0" and would fail as NaN far into the run
    zeta: float | None = Field(None, allow_inf_nan=False,
                               description="eps as a fraction of the mean Lp norm of the task's images")
    eps: float | None = Field(None, allow_inf_nan=False, description="absolute eps in [0,1] pixel units")
    method: Method = "best"
    mode: Literal["batched", "reference"] = "batched"
    target: str | None = None
    max_iter: int | None = Field(None, ge=1)
    step_size: float | None = Field(None, gt=0, allow_inf_nan=False)
    batch_size: int = Field(32, ge=1)
    chunk_size: int = Field(1000, ge=1)
    controls: int = Field(10, ge=0, le=1000)
    control_kind: Literal["uniform", "art"] = "uniform"
    clip: bool = True
    seed: int = 0
    device: str = "auto"
    workers: int = Field(0, ge=0)
    amp: bool = Field(False, description="build the UAP under bfloat16 autocast (metrics stay float32)")
    grayscale_source: bool | None = Field(None, description="default: greyscale sources for grey tasks")
    augment: bool = Field(True, description="stream a photo source as augmented views (crops, flips) up to the "
                          "budget; False: plain passes over the photos (max_iter)")
    budget: int | None = Field(None, ge=1, description="augmented photos drawn; default by device (DEFAULT_BUDGET)")
    select: Literal["val", "train", "none"] = Field("val", description="split v is chosen on during the build "
                                                    "(val falls back to train when the task has none)")
    select_limit: int = Field(128, ge=8, description="selection images")
    select_every: int | None = Field(None, ge=1, description="images between checks (default: see select_every_for)")
    patience: int | None = Field(6, ge=1, description="checks without gain before the build stops (None: never)")
    restarts: int = Field(1, ge=1, le=20, description="builds per method with seeds seed, seed+1, ...; best kept")
    surrogate: str | None = Field(None, description="'pretrained' (the public ImageNet model of the audited arch), "
                                  "a zoo name or a checkpoint: build v there, never touching the audited model")
    weights_file: str | None = Field(None, description="ImageNet weights for --surrogate pretrained, for an arch "
                                     "without offline weights")

    @model_validator(mode="after")
    def _check(self) -> UAPSpec:
        if self.zeta is not None and self.eps is not None:
            raise ValueError("give --zeta or --eps, not both")
        if self.zeta is None and self.eps is None:
            self.zeta = 0.04
        if self.zeta is not None and not 0 < self.zeta <= 1:
            raise ValueError(f"zeta must be in (0, 1] (a fraction; 0.04 = 4%), got {self.zeta}")
        if self.eps is not None and (self.eps <= 0 or (self.norm == "linf" and self.eps > 1)):
            raise ValueError(f"eps must be > 0 (and <= 1 for linf) in [0,1] pixel units, got {self.eps}")
        if self.mode == "reference" and self.method != "fgsm":
            raise ValueError("--mode reference exists for --method fgsm only")
        if self.surrogate is not None and self.target is not None:
            raise ValueError("a zero-knowledge surrogate has no medical classes to target; drop --target or "
                             "--surrogate")
        if self.surrogate is not None and self.source == "train":
            raise ValueError("a zero-knowledge attacker has no training images; use a photo source with --surrogate")
        if not self.model and not self.checkpoint:
            raise ValueError("give --model NAME or --checkpoint PATH")
        return self

    @property
    def targeted(self) -> bool:
        return self.target is not None

    def cache_key(self) -> str:
        """Hash of every field that alters the numbers (device and worker count excluded)."""
        payload = self.model_dump_json(exclude={"device", "workers"} | (set() if self.amp else {"amp"}))
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
    """Build a UAPSpec, turning validation errors into one-line BadInput messages."""
    return validate(UAPSpec, kwargs, flag=True)
