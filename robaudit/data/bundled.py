"""An offline last-resort medical task from medical images that ship inside installed wheels.

With no data root, no MedMNIST cache and no network, ``robaudit demo`` still audits a real medical
classifier: *imaging-modality recognition* (CT / MR / ultrasound / microscopy-and-fundus photograph)
built from pydicom's test DICOM files, scikit-image's fundus and microscopy images and matplotlib's
MR slice. Many crops come from few source images, so accuracy on it says little about a clinical
model; the demo says so plainly wherever it uses it.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np

from robaudit.data.images import DecodeError, dicom_frames, read_image
from robaudit.errors import BadInput

CLASSES = ["CT", "MR", "ultrasound", "photograph (fundus / microscopy)"]
NAME = "modality"


def _pkg_dir(pkg: str) -> Path | None:
    spec = importlib.util.find_spec(pkg)
    return Path(list(spec.submodule_search_locations)[0]) if spec and spec.submodule_search_locations else None


def source_images() -> dict[int, list[tuple[str, np.ndarray]]]:
    """Source images per class index, from whatever of pydicom / scikit-image / matplotlib is installed."""
    found: dict[int, list[tuple[str, np.ndarray]]] = {i: [] for i in range(len(CLASSES))}
    try:
        from pydicom.data import get_testdata_file

        for cls, names in ((0, ["CT_small.dcm"]), (1, ["MR_small.dcm", "emri_small.dcm"]),
                           (2, ["examples_rgb_color.dcm", "examples_ybr_color.dcm"])):
            for n in names:
                f = get_testdata_file(n)
                if f:
                    try:
                        found[cls] += [(f"pydicom:{n}[{i}]", fr) for i, fr in enumerate(dicom_frames(Path(f)))]
                    except Exception:  # a decoder plugin may be missing for some transfer syntaxes
                        continue
    except ImportError:
        pass
    sk = _pkg_dir("skimage")
    if sk:
        for n in ("retina.jpg", "microaneurysms.png", "ihc.png", "cell.png"):
            try:
                found[3].append((f"skimage:{n}", read_image(sk / "data" / n)))
            except DecodeError:
                continue
    mpl = _pkg_dir("matplotlib")
    if mpl:
        f = mpl / "mpl-data" / "sample_data" / "s1045.ima.gz"
        if f.is_file():

            raw = np.frombuffer(gzip.open(f).read(), np.uint16).reshape(256, 256)
            img = (raw / max(raw.max(), 1) * 255).astype(np.uint8)
            found[1].append(("matplotlib:s1045.ima", np.repeat(img[..., None], 3, -1)))
    return found


def build_modality_task(root: Path, size: int = 64, per_class: int = 240, seed: int = 0) -> Path:
    """Write ``<root>/modality_<size>.npz`` + card: random crops of each class's images, split 70/10/20."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    found = source_images()
    classes = [i for i in range(len(CLASSES)) if found[i]]
    if len(classes) < 2:
        raise BadInput("no medical data available offline",
                       "set ROBAUDIT_DATA to a MedMNIST data root, or pip install pydicom scikit-image")
    images, labels, origins = [], [], []
    for new_label, cls in enumerate(classes):
        srcs = found[cls]
        for k in range(per_class):
            name, img = srcs[k % len(srcs)]
            h, w = img.shape[:2]
            s = int(min(h, w) * rng.uniform(0.55, 1.0))
            y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
            crop = Image.fromarray(np.ascontiguousarray(img[y:y + s, x:x + s])).resize((size, size), Image.LANCZOS)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            images.append(np.asarray(crop.convert("RGB")))
            labels.append(new_label)
            origins.append(name)
    images, labels = np.stack(images), np.array(labels, np.uint8)[:, None]
    order = rng.permutation(len(images))
    n_tr, n_va = int(0.7 * len(order)), int(0.1 * len(order))
    parts = {"train": order[:n_tr], "val": order[n_tr:n_tr + n_va], "test": order[n_tr + n_va:]}
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{NAME}_{size}.npz"
    np.savez_compressed(path, **{f"{s}_images": images[i] for s, i in parts.items()},
                        **{f"{s}_labels": labels[i] for s, i in parts.items()})
    card = {"task": NAME, "modality": "mixed (CT, MR, ultrasound, fundus and microscopy photographs)",
            "source": "medical images bundled in installed wheels (pydicom test files, scikit-image, matplotlib); "
                      f"{len({o.split('[')[0] for o in origins})} source files, random crops",
            "label_names": [CLASSES[c] for c in classes]}
    path.with_suffix(".json").write_text(json.dumps(card, indent=2))
    return path
