"""Zoo names: ``<task>_<arch>[_<transfer>]`` -> a training recipe (any timm architecture).

``skin_resnet50`` is ImageNet init with full fine-tuning; ``skin_resnet50_random`` is its random-init
twin; ``_linear`` freezes the ImageNet feature extractor and trains a new head; ``_top2`` trains the
last two stages and the head. The task part may carry a label view: ``retina-referable_resnet50``
(the embedded task ``pneumonia-mini`` keeps its hyphen: ``pneumonia-mini_tf_efficientnet_lite0``).

Training replicates: ``skin_resnet50@2`` is replicate 2 of ``skin_resnet50`` (another training run:
its own head/net initialisation, data order and augmentation); the bare name is replicate 0.
``skin_resnet50_hardened`` (``@R`` kept: ``skin_resnet50_hardened@2``) is a model hardened by
``robaudit harden``: stored like any model, never trained by ``robaudit train``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import timm

from robaudit.core.errors import BadInput, unknown_name
from robaudit.data import embedded

TRANSFERS = ("full", "top-k", "linear", "scratch")
_SUFFIX = re.compile(r"_(random|scratch|linear|full|top(\d+))$")
REPLICATE_SEP = "@"
HARDENED_SUFFIX = "_hardened"

#: defaults sized for the machine: 64 px on CPU; the paper used 299 px on a GPU (pass --image-size)
DEFAULT_IMAGE_SIZE = 64


@dataclass(frozen=True)
class ZooRecipe:
    name: str
    task: str
    view: str | None
    arch: str
    transfer: str = "full"
    top_k: int | None = None
    replicate: int = 0
    hardened: bool = False

    @property
    def init(self) -> str:
        return "random" if self.transfer == "scratch" else "imagenet"

    @property
    def task_ref(self) -> str:
        """The task as the data layer names it (``retina:referable``)."""
        return f"{self.task}:{self.view}" if self.view else self.task

    @property
    def base(self) -> str:
        """The name without its replicate (``skin_resnet50@2`` -> ``skin_resnet50``)."""
        return split_replicate(self.name)[0]

    @property
    def twin(self) -> str:
        """The random-init twin's zoo name (or the ImageNet-init one for a random model), same replicate."""
        base = f"{self.task}-{self.view}" if self.view else self.task
        twin = f"{base}_{self.arch}" if self.init == "random" else f"{base}_{self.arch}_random"
        return replicate_name(twin, self.replicate)


def split_replicate(name: str) -> tuple[str, int]:
    """``skin_resnet50@2`` -> (``skin_resnet50``, 2); a name without ``@`` is replicate 0."""
    base, sep, rep = name.partition(REPLICATE_SEP)
    if not sep:
        return name, 0
    if not rep.isdigit() or not base:
        raise BadInput(f"{name!r}: a replicate is a whole number after '@'",
                       "e.g. skin_resnet50@1 (replicate 1); the bare name is replicate 0")
    return base, int(rep)


def replicate_name(base: str, replicate: int) -> str:
    """The stored name of ``replicate`` of ``base`` (replicate 0 is the bare name, as before replicates)."""
    if replicate < 0:
        raise BadInput(f"replicate {replicate} is negative", "replicates are 0, 1, 2, ...")
    return base if replicate == 0 else f"{base}{REPLICATE_SEP}{replicate}"


def with_replicate(name: str, replicate: int | None) -> str:
    """``name`` as replicate ``replicate`` (None keeps the name's own; a different ``@R`` in it is an error)."""
    base, own = split_replicate(name)
    if replicate is None:
        return replicate_name(base, own)
    if REPLICATE_SEP in name and own != replicate:
        raise BadInput(f"{name!r} names replicate {own} but --replicate is {replicate}", "give one of them")
    return replicate_name(base, replicate)


def canonical_name(name: str) -> str:
    """``NAME@0`` and ``NAME`` are one model: the store folder and card use the bare name."""
    return replicate_name(*split_replicate(name))


def is_hardened_name(name: str) -> bool:
    """Whether ``name`` (any replicate) names a model made by ``robaudit harden``."""
    return split_replicate(name)[0].endswith(HARDENED_SUFFIX)


def hardened_name(name: str) -> str:
    """The name ``robaudit harden`` stores ``name``'s hardened twin under (replicate kept)."""
    base, rep = split_replicate(name)
    return replicate_name(base if base.endswith(HARDENED_SUFFIX) else base + HARDENED_SUFFIX, rep)


def model_name(task: str, arch: str, transfer: str = "full", top_k: int | None = None) -> str:
    """Compose a zoo name (inverse of :func:`parse_zoo_name`); ``task`` may be ``retina:referable``."""
    base = task.replace(":", "-")
    suffix = {"full": "", "scratch": "_random", "linear": "_linear"}.get(transfer, f"_top{top_k}")
    return f"{base}_{arch}{suffix}"


def is_timm_arch(arch: str) -> bool:
    return bool(timm.is_model(arch))


def parse_zoo_name(name: str, check_arch: bool = True) -> ZooRecipe:
    """Parse ``<task>[-<view>]_<arch>[_random|_linear|_topK|_full][_hardened][@R]``; unknown archs suggest
    close matches."""
    full = canonical_name(name)
    name, replicate = split_replicate(full)
    hardened = name.endswith(HARDENED_SUFFIX)
    if hardened:
        name = name[: -len(HARDENED_SUFFIX)]
    if "_" not in name:
        raise BadInput(f"{name!r} is not a zoo model name",
                       "zoo names look like <task>_<arch>, e.g. skin_resnet50 or skin_resnet50_random")
    transfer, top_k = "full", None
    m = _SUFFIX.search(name)
    stem = name
    if m:
        stem = name[: m.start()]
        kind = m.group(1)
        if kind in ("random", "scratch"):
            transfer = "scratch"
        elif kind == "linear":
            transfer = "linear"
        elif kind.startswith("top"):
            transfer, top_k = "top-k", int(m.group(2))
            if top_k < 1:
                raise BadInput(f"{name!r}: top-k needs k >= 1")
    task_part, _, arch = stem.partition("_")
    # a hyphen names a label view (retina-referable), except inside an embedded task's own name
    task, view = (task_part, "") if task_part in embedded.names() else task_part.partition("-")[::2]
    if not task or not arch:
        raise BadInput(f"{name!r} is not a zoo model name", "zoo names look like <task>_<arch>, e.g. skin_resnet50")
    if check_arch and not is_timm_arch(arch):
        raise unknown_name("architecture", arch, timm.list_models(), "any timm architecture works")
    return ZooRecipe(name=full, task=task, view=view or None, arch=arch, transfer=transfer, top_k=top_k,
                     replicate=replicate, hardened=hardened)
