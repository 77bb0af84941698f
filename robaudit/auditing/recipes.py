"""Audit recipes: declarative TOML files (the top-level ``attacks/`` folder), validated with pydantic.

A recipe names models (zoo names and/or checkpoints), sources, norms, zetas, methods and targeted
settings; :meth:`AuditRecipe.cells` expands it into one :class:`~robaudit.core.specs.UAPSpec` per cell.
"""

from __future__ import annotations

import importlib.resources
import itertools
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from robaudit.core.errors import BadInput, unknown_name
from robaudit.core.files import read_toml, validate
from robaudit.core.specs import DEFAULT_METHOD, ModelRef, UAPSpec
from robaudit.models.train import TrainConfig
from robaudit.models.zoo import REPLICATE_SEP, model_name, parse_zoo_name, replicate_name

REPO_RECIPES = Path(__file__).resolve().parents[2] / "attacks"


def _as_in_spec(name: str):
    """The type and bounds of ``UAPSpec.<name>``: a recipe accepts exactly the values ``robaudit uap`` accepts,
    and a bad one is refused when the recipe loads, not as a ValidationError when its cells expand."""
    f = UAPSpec.model_fields[name]
    return Annotated[(f.annotation, *f.metadata)]


Controls = _as_in_spec("controls")
EvalLimit = _as_in_spec("eval_limit")
SourceLimit = _as_in_spec("source_limit")
MaxIter = _as_in_spec("max_iter")
BatchSize = _as_in_spec("batch_size")
QueryBudget = _as_in_spec("query_budget")
Delivery = _as_in_spec("delivery")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class CheckpointModel(ModelRef):
    """A ``[[checkpoints]]`` entry: your model file (``path``) with the model options every command takes
    (arch, arch_kwargs, trust_checkpoint, mean, std, input_size, channels, classes), its data and a name."""

    path: str
    data: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _path_only(self) -> CheckpointModel:
        if self.model or self.checkpoint:
            raise ValueError("a [[checkpoints]] entry names its file with path = '...'")
        return self

    def spec_fields(self) -> dict:
        """The entry as UAPSpec fields (the model arguments set, plus data)."""
        ref = self.model_dump(include=set(ModelRef.model_fields) - {"model", "checkpoint"}, exclude_none=True)
        return {**ref, "checkpoint": self.path, "data": self.data}

    def load_kwargs(self) -> dict:
        return {**super().load_kwargs(), "checkpoint": self.path}


class TrainSettings(TrainConfig):
    """How ``--train-missing`` trains zoo models the recipe needs: every :class:`TrainConfig` field (the one
    training settings model of ``robaudit train`` and hardening), plus the epochs of random-init models."""

    scratch_epochs: int | None = Field(None, ge=1, description="epochs for random-init ('scratch') models, "
                                       "which start far from a solution; default: epochs")

    def config(self, scratch: bool = False) -> TrainConfig:
        """The TrainConfig of a fine-tune (or, ``scratch``, of a random-init model)."""
        cfg = TrainConfig(**self.model_dump(exclude={"scratch_epochs"}))
        return cfg.model_copy(update={"epochs": self.scratch_epochs or self.epochs}) if scratch else cfg


class PerSampleSpec(_Strict):
    """A per-sample attack run on every model of the recipe (``robaudit attack``)."""

    attack: str
    backend: str = "torchattacks"
    norm: Literal["linf", "l2"] = "linf"
    eps: list[float]
    steps: int | None = None
    n: int = Field(200, ge=1)


SkipKey = Literal["transfer", "source", "target", "norm", "zeta", "method", "access", "surrogate"]


class AuditRecipe(_Strict):
    name: str
    description: str = ""
    models: list[str] = Field(default_factory=list, description="zoo names")
    tasks: list[str] = Field(default_factory=list, description="with archs/transfers: models = product")
    archs: list[str] = Field(default_factory=list)
    transfers: list[Literal["full", "scratch", "linear"] | str] = Field(default_factory=lambda: ["full", "scratch"])
    checkpoints: list[CheckpointModel] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=lambda: ["imagenet", "train"])
    norms: list[Literal["linf", "l2"]] = Field(default_factory=lambda: ["l2"])
    zetas: list[float] = Field(default_factory=lambda: [0.04])
    methods: list[Literal["fgsm", "deepfool", "sgd", "best"]] = Field(default_factory=lambda: [DEFAULT_METHOD])
    mode: Literal["batched", "reference"] = "batched"
    targets: Literal["none", "all"] | list[str | int] = "none"
    targeted_also_untargeted: bool = Field(True, description="with targets: also run the non-targeted cells")
    controls: Controls = 10
    split: str = "test"
    eval_limit: EvalLimit = None
    source_limit: SourceLimit = None
    max_iter: MaxIter = None
    batch_size: BatchSize = 32
    clip: bool = True
    seed: int = 0
    seeds: list[int] = Field(default_factory=list, description="repeat every cell for each seed")
    replicates: int = Field(1, ge=1, le=100, description="training replicates of every zoo model (NAME, NAME@1, ...): "
                            "cells run per replicate and pooled rows use the replicates as the unit (>= 3 for a "
                            "comparison)")
    attack_seeds: int | None = Field(None, ge=1, le=100, description="K attack seeds per cell (seed .. seed+K-1), "
                                     "averaged within a replicate, so attack-seed variance is reported apart "
                                     "from training variance; exclusive with `seeds`")
    device: str = "auto"
    transfer_eval: bool = True
    train: TrainSettings = Field(default_factory=TrainSettings)
    per_sample: list[PerSampleSpec] = Field(default_factory=list)
    augment: bool = Field(True, description="photo sources as augmented streams up to `budget` (see robaudit uap)")
    budget: int | None = Field(None, ge=1, description="augmented photos drawn per cell (default: by device)")
    select: Literal["val", "train", "none"] = "val"
    select_limit: int = Field(128, ge=8)
    patience: int | None = Field(6, ge=1)
    restarts: int = Field(1, ge=1, le=20)
    toward_classes: bool | None = Field(None, description="sgd or best, non-targeted cells: race sgd builds toward "
                                        "each class (None: in sgd cells of two-class models; see robaudit uap "
                                        "--toward-classes)")
    surrogates: list[str] = Field(default_factory=list, description="zero-knowledge cells: for every model and "
                                  "photo source, a non-targeted UAP built on each surrogate ('pretrained' = the public "
                                  "ImageNet model of the model's arch, or a zoo name / checkpoint)")
    access: list[Literal["white-box", "query"]] = Field(default_factory=lambda: ["white-box"], min_length=1,
                                                        description="attacker access per cell: white-box, and/or "
                                                        "query (a query-only U-SimBA cell per model, source, norm, "
                                                        "zeta, seed and target; no method axis)")
    query_output: Literal["scores", "labels"] = "scores"
    query_budget: QueryBudget = None
    delivery: Delivery = "input"
    eot: bool = Field(False, description="white-box cells build v through the delivery (needs delivery != input)")
    skip: list[dict[SkipKey, str | float | None]] = Field(
        default_factory=list, description="cells left out of the cross product: each entry names fields (transfer, "
        "source, target, norm, zeta, method, access, surrogate); a cell matching every field of an entry is not run "
        "(target 'none' matches the non-targeted cells)")
    harden: bool = Field(False, description="add hardened twins (robaudit harden) of the zoo models, set apart from "
                         "this audit's photos, selection images and seeds; the document gains a mitigation section")

    @field_validator("zetas")
    @classmethod
    def _zetas(cls, v: list[float]) -> list[float]:
        bad = [z for z in v if not 0 < z <= 1]
        if bad:
            raise ValueError(f"zetas must be in (0, 1] (0.04 = 4%), got {bad}")
        return v

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: list[str]) -> list[str]:
        # 'random' names the random-noise control, which every cell already measures
        return [s for s in v if s != "random"]

    @model_validator(mode="after")
    def _seeds(self) -> AuditRecipe:
        if self.attack_seeds is not None and self.seeds:
            raise ValueError("give `attack_seeds` (a count) or `seeds` (a list), not both")
        replicated = [m for m in self.models if REPLICATE_SEP in m]
        if replicated and self.replicates > 1:
            raise ValueError(f"models {replicated} name a replicate while replicates = {self.replicates}; "
                             "list base names and let `replicates` expand them")
        return self

    def attack_seed_list(self) -> list[int]:
        """The attack seeds every cell runs with: ``seeds``, or ``seed .. seed+attack_seeds-1``, or ``[seed]``."""
        if self.attack_seeds is not None:
            return list(range(self.seed, self.seed + self.attack_seeds))
        return list(self.seeds) or [self.seed]

    def base_names(self) -> list[str]:
        """The recipe's zoo models, one name per configuration (replicate 0)."""
        names = list(self.models)
        for task, arch, transfer in itertools.product(self.tasks, self.archs, self.transfers):
            top_k = int(transfer[3:]) if transfer.startswith("top") and transfer[3:].isdigit() else None
            kind = "top-k" if top_k else transfer
            names.append(model_name(task, arch, kind, top_k))
        return list(dict.fromkeys(names))

    def model_names(self) -> list[str]:
        """Every zoo model the recipe runs: each configuration's replicates (``NAME``, ``NAME@1``, ...)."""
        return [replicate_name(n, r) for n in self.base_names() for r in range(self.replicates)]

    def cells(self, classes_of) -> list[UAPSpec]:
        """Expand the matrix; ``classes_of(model)`` gives a model's class names (for ``targets = 'all'``)."""
        specs = []
        models = [(n, None) for n in self.model_names()] + [(c.name or Path(c.path).stem, c) for c in self.checkpoints]
        for (name, ckpt), source, norm, zeta, method, seed in itertools.product(
                models, self.sources, self.norms, self.zetas, self.methods, self.attack_seed_list()):
            if self.targets == "none":
                targets: list = [None]
            elif self.targets == "all":
                targets = list(range(len(classes_of(name if ckpt is None else ckpt))))
            else:
                targets = list(self.targets)
            if self.targets != "none" and self.targeted_also_untargeted:
                targets = [None] + targets
            # a query-only cell has no method axis (U-SimBA): one per cell of the first method
            accesses = [a for a in self.access if a == "white-box" or method == self.methods[0]]
            for target, access in itertools.product(targets, accesses):  # validated as the CLI validates a run
                specs.append(validate(UAPSpec, dict(
                    **(ckpt.spec_fields() if ckpt else {"model": name}), split=self.split,
                    eval_limit=self.eval_limit, source=source, source_limit=self.source_limit, norm=norm, zeta=zeta,
                    method=method, mode=self.mode if method == "fgsm" and access == "white-box" else "batched",
                    target=None if target is None else str(target), max_iter=self.max_iter,
                    batch_size=self.batch_size, controls=self.controls, clip=self.clip, seed=seed,
                    device=self.device, **self._attacker(), **self._threat(access)),
                    where=f"recipe {self.name!r}, cell {name} {source} {norm} z={zeta:g} {access}"))
            if source != "train":  # zero-knowledge cells: the same attack built on each surrogate, never targeted
                for surrogate in self.surrogates:
                    specs.append(validate(UAPSpec, dict(
                        **(ckpt.spec_fields() if ckpt else {"model": name}), split=self.split,
                        eval_limit=self.eval_limit, source=source, source_limit=self.source_limit, norm=norm,
                        zeta=zeta, method=method, mode=self.mode if method == "fgsm" else "batched",
                        max_iter=self.max_iter, batch_size=self.batch_size, controls=self.controls, clip=self.clip,
                        seed=seed, device=self.device, **self._attacker(), **self._threat("white-box"),
                        surrogate=surrogate),
                        where=f"recipe {self.name!r}, surrogate cell {name} {source} {surrogate}"))
        return [s for s in specs if not self.skipped(s)]

    def skipped(self, spec: UAPSpec) -> bool:
        """Whether ``skip`` leaves ``spec`` out (a zoo model's transfer read from its name)."""
        if not self.skip:
            return False
        transfer = None
        if spec.model and spec.checkpoint is None:
            transfer = parse_zoo_name(spec.model, check_arch=False).transfer
        fields = {"transfer": transfer, "source": spec.source, "target": spec.target or "none", "norm": spec.norm,
                  "zeta": spec.zeta, "method": spec.method, "access": spec.access, "surrogate": spec.surrogate}
        return any(all(str(fields[k]) == str(v) for k, v in rule.items()) for rule in self.skip)

    def _threat(self, access: str) -> dict:
        """A cell's threat-model settings: its access (query settings only for query cells) and delivery."""
        query = access == "query"
        return dict(access=access, query_output=self.query_output if query else "scores",
                    query_budget=self.query_budget if query else None, delivery=self.delivery,
                    eot=self.eot and not query)

    def _attacker(self) -> dict:
        """The attacker settings every cell shares (photo budget, selection, restarts)."""
        return dict(augment=self.augment, budget=self.budget, select=self.select, select_limit=self.select_limit,
                    patience=self.patience, restarts=self.restarts, toward_classes=self.toward_classes)


def recipe_names() -> list[str]:
    names = set()
    for folder in _recipe_dirs():
        names |= {p.stem for p in folder.glob("*.toml")}
    return sorted(names)


def _recipe_dirs() -> list[Path]:
    dirs = []
    try:
        pkg = importlib.resources.files("robaudit.recipes")
        dirs.append(Path(str(pkg)))
    except (ModuleNotFoundError, TypeError):
        pass
    if REPO_RECIPES.is_dir():
        dirs.append(REPO_RECIPES)
    return [d for d in dirs if d.is_dir()]


def load_recipe(name_or_path: str | Path) -> tuple[AuditRecipe, str]:
    """Load a recipe by packaged name (``quick``, ``paper``) or TOML path; returns (recipe, its text)."""
    path = Path(name_or_path)
    if not path.is_file():
        for folder in _recipe_dirs():
            if (folder / f"{name_or_path}.toml").is_file():
                path = folder / f"{name_or_path}.toml"
                break
        else:
            if path.suffix == ".toml":
                raise BadInput(f"recipe file {str(path)!r} does not exist")
            raise unknown_name("recipe", str(name_or_path), recipe_names(), "or pass a path to a .toml recipe")
    raw, text = read_toml(path, "recipe", "save the recipe as UTF-8 TOML")  # size and nesting checked first
    raw.setdefault("name", path.stem)
    recipe = validate(AuditRecipe, raw, where=f"recipe {str(path)!r}", hint="see attacks/quick.toml for the fields")
    return recipe, text
