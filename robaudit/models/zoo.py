"""Zoo names: ``<task>_<arch>[_<transfer>]`` -> a training recipe (any timm architecture).

``skin_resnet50`` is ImageNet init with full fine-tuning; ``skin_resnet50_random`` is its random-init
twin; ``_linear`` freezes the ImageNet feature extractor and trains a new head; ``_top2`` trains the
last two stages and the head. The task part may carry a label view: ``retina-referable_resnet50``
(the embedded task ``pneumonia-mini`` keeps its hyphen: ``pneumonia-mini_tf_efficientnet_lite0``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import timm

from robaudit.data import embedded
from robaudit.errors import BadInput, unknown_name

TRANSFERS = ("full", "top-k", "linear", "scratch")
_SUFFIX = re.compile(r"_(random|scratch|linear|full|top(\d+))$")

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

    @property
    def init(self) -> str:
        return "random" if self.transfer == "scratch" else "imagenet"

    @property
    def task_ref(self) -> str:
        """The task as the data layer names it (``retina:referable``)."""
        return f"{self.task}:{self.view}" if self.view else self.task

    @property
    def twin(self) -> str:
        """The random-init twin's zoo name (or the ImageNet-init one for a random model)."""
        base = f"{self.task}-{self.view}" if self.view else self.task
        return f"{base}_{self.arch}" if self.init == "random" else f"{base}_{self.arch}_random"


def model_name(task: str, arch: str, transfer: str = "full", top_k: int | None = None) -> str:
    """Compose a zoo name (inverse of :func:`parse_zoo_name`); ``task`` may be ``retina:referable``."""
    base = task.replace(":", "-")
    suffix = {"full": "", "scratch": "_random", "linear": "_linear"}.get(transfer, f"_top{top_k}")
    return f"{base}_{arch}{suffix}"


def is_timm_arch(arch: str) -> bool:
    return bool(timm.is_model(arch))


def parse_zoo_name(name: str, check_arch: bool = True) -> ZooRecipe:
    """Parse ``<task>[-<view>]_<arch>[_random|_linear|_topK|_full]``; unknown archs suggest close matches."""
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
    return ZooRecipe(name=name, task=task, view=view or None, arch=arch, transfer=transfer, top_k=top_k)
