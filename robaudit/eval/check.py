"""Before an audit: is this the model the user meant, read the way it was trained? Clean accuracy, balanced
accuracy and the confusion matrix on the data, with the two classic signs of a wrong class order or
normalisation: accuracy significantly below chance, and predictions collapsed onto one class."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy.stats import binomtest
from sklearn.metrics import balanced_accuracy_score, confusion_matrix

from robaudit.attacks.predict import predict
from robaudit.core.errors import BadInput
from robaudit.core.fmt import pct
from robaudit.data.images import to_channels

#: below chance: accuracy under a one-sided binomial test against a predictor with the same prediction
#: shares but independent of the labels (p below this)
BELOW_CHANCE_P = 0.01
#: collapse: this share of predictions in one class while no class holds COLLAPSE_TRUE of the labels
COLLAPSE_PRED, COLLAPSE_TRUE = 0.95, 0.8


@dataclass
class ModelCheck:
    """What ``robaudit models check`` prints and ``ra.check`` returns; ``below_chance`` refuses an audit."""

    model: dict
    data: dict
    classes: list[str]
    n: int
    clean_accuracy: float
    balanced_accuracy: float
    chance_accuracy: float
    p_below_chance: float
    confusion: list[list[int]]
    predicted_share: list[float]
    warnings: list[str] = field(default_factory=list)
    predictions: torch.Tensor | None = field(default=None, repr=False)

    @property
    def below_chance(self) -> bool:
        return self.p_below_chance < BELOW_CHANCE_P and self.balanced_accuracy < 1 / len(self.classes)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("predictions")
        return out | {"below_chance": self.below_chance}

    def refusal(self) -> BadInput:
        return BadInput(f"model {self.model['name']!r} is below chance on {self.data['name']} {self.data['split']}: "
                        f"accuracy {pct(self.clean_accuracy)} (chance {pct(self.chance_accuracy)}, p = "
                        f"{self.p_below_chance:.2g}), balanced accuracy {pct(self.balanced_accuracy)}",
                        "check --classes (the head's order) and --mean/--std with 'robaudit models check', or pass "
                        "--force to audit it anyway")


def check_model(lm, task, split: str = "test", limit: int | None = None, seed: int = 0,
                x: torch.Tensor | None = None, y: torch.Tensor | None = None, batch_size: int = 256) -> ModelCheck:
    """Clean predictions of ``lm`` on ``task``'s ``split`` (or the given ``x``, ``y``) and what they say."""
    if x is None:
        x, y = task.tensors(split, size=lm.input_size, limit=limit, seed=seed)
        x = to_channels(x, lm.channels)
    pred = predict(lm.module, x, None, clip=True, batch_size=batch_size, device=lm.device)
    k = len(lm.classes)
    yt, pt = y.numpy(), pred.numpy()
    n = len(yt)
    correct = int((yt == pt).sum())
    true_share = np.bincount(yt, minlength=k) / n
    pred_share = np.bincount(pt, minlength=k) / n
    chance = float((true_share * pred_share).sum())
    p = float(binomtest(correct, n, p=min(max(chance, 1e-12), 1 - 1e-12), alternative="less").pvalue)
    present = sorted(set(yt.tolist()))
    bacc = float(balanced_accuracy_score(yt, pt)) if len(present) > 1 else float((yt == pt).mean())
    warnings = []
    chk = ModelCheck(model=_model_facts(lm), data=_data_facts(task, split, yt, k), classes=lm.classes, n=n,
                     clean_accuracy=correct / n, balanced_accuracy=bacc, chance_accuracy=chance, p_below_chance=p,
                     confusion=confusion_matrix(yt, pt, labels=list(range(k))).tolist(),
                     predicted_share=pred_share.round(4).tolist(), warnings=warnings, predictions=pred)
    if chk.below_chance:
        warnings.append(f"accuracy {pct(chk.clean_accuracy)} is below chance ({pct(chance)}, p = {p:.2g}): the head's "
                        "class order or the normalisation is likely wrong")
    top = int(pred_share.argmax())
    if pred_share[top] >= COLLAPSE_PRED and true_share.max() < COLLAPSE_TRUE:
        warnings.append(f"{pct(pred_share[top])} of predictions are {lm.classes[top]!r} (the labels' largest class "
                        f"holds {pct(true_share.max())}): predictions collapse to one class, the sign of wrong "
                        "preprocessing (mean/std, input size, channels)")
    return chk


def _model_facts(lm) -> dict:
    card = lm.card
    params = sum(p.numel() for p in lm.module.parameters())
    return {"name": card.name, "arch": card.arch, "format": card.format or "module", "parameters": int(params),
            "sha256": card.weights_sha256, "input_size": card.input_size, "channels": lm.channels,
            "mean": list(lm.mean), "std": list(lm.std), "classes": lm.classes,
            "provenance": dict(card.provenance or {}), "onnx_parity": card.parity}


def _data_facts(task, split: str, y: np.ndarray, k: int) -> dict:
    counts = np.bincount(y, minlength=k).tolist()
    return {"name": task.full_name, "split": split, "counts": dict(zip(task.label_names, counts, strict=True)),
            "mapping": getattr(task, "mapping", None)}
