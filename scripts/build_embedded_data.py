#!/usr/bin/env python
"""Rebuild (or check) the embedded ``pneumonia-mini`` task from the data root's ``pneumoniacxr_128.npz``.

    python scripts/build_embedded_data.py            # write embedded_data/pneumonia_mini_64.{npz,index.csv}
    python scripts/build_embedded_data.py --check    # rebuild in memory, compare with the shipped files

The source is ``--source``, else ``$ROBAUDIT_DATA/pneumoniacxr_128.npz``, else ``../shared/data/`` beside the
repository. Each split is drawn from the same split of the source (train from train, val from val, test from
test), class-balanced with ``numpy.random.default_rng(SEED)``, shuffled, and resized 128 -> 64 px with
Pillow's Lanczos filter. Counts, seed and the expected sha256 of every decoded array live in
``robaudit/data/embedded.py``. ``--check`` exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robaudit.data import embedded as E  # noqa: E402
from robaudit.models.store import sha256_file  # noqa: E402

SPLITS = ("train", "val", "test")


def find_source(source: str | None = None) -> Path:
    """The source npz: ``source``, else $ROBAUDIT_DATA/pneumoniacxr_128.npz, else ../shared/data/."""
    if source:
        return Path(source).expanduser()
    env = os.environ.get("ROBAUDIT_DATA")
    root = Path(env).expanduser() if env else REPO.parent / "shared" / "data"
    return root / E.SOURCE_FILE


def array_sha256(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """sha256 of each decoded array's bytes (C order)."""
    return {k: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for k, a in sorted(arrays.items())}


def resize(images: np.ndarray, size: int = E.SIZE) -> np.ndarray:
    """(N,H,W) uint8 grey -> (N,size,size) uint8, Pillow Lanczos."""
    out = [np.asarray(Image.fromarray(img, "L").resize((size, size), Image.Resampling.LANCZOS)) for img in images]
    return np.stack(out).astype(np.uint8) if out else np.zeros((0, size, size), np.uint8)


def select(labels: np.ndarray, counts: tuple[int, ...], rng: np.random.Generator, split: str) -> np.ndarray:
    """Source indices: ``counts[c]`` images of each class c drawn without replacement, then shuffled."""
    picks = []
    for c, n in enumerate(counts):
        pool = np.flatnonzero(labels == c)
        if n > pool.size:
            raise SystemExit(f"{split}: {n} images of class {c} asked for, the source has {pool.size}")
        picks.append(np.sort(rng.choice(pool, n, replace=False)))
    idx = np.concatenate(picks)
    return idx[rng.permutation(idx.size)]


def build(source: Path) -> tuple[dict[str, np.ndarray], str]:
    """The subset's arrays (MedMNIST layout) and its index CSV text."""
    if not source.is_file():
        raise SystemExit(f"source {source} not found; pass --source or set ROBAUDIT_DATA")
    digest = sha256_file(source)
    if digest != E.SOURCE_SHA256:
        raise SystemExit(f"source {source} has sha256 {digest}, expected {E.SOURCE_SHA256} (MANIFEST.md)")
    rng = np.random.default_rng(E.SEED)
    arrays: dict[str, np.ndarray] = {}
    rows = ["split,index,label,source_split,source_index"]
    with np.load(source, allow_pickle=False) as z:
        for split in SPLITS:
            labels = z[f"{split}_labels"].reshape(-1)
            idx = select(labels, E.COUNTS[split], rng, split)
            arrays[f"{split}_images"] = resize(z[f"{split}_images"][idx])
            arrays[f"{split}_labels"] = labels[idx].astype(np.uint8).reshape(-1, 1)
            rows += [f"{split},{i},{int(labels[s])},{split},{int(s)}" for i, s in enumerate(idx)]
    return arrays, "\n".join(rows) + "\n"


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: arrays[k] for k in sorted(arrays)})
    return buf.getvalue()


def check(arrays: dict[str, np.ndarray], index_csv: str) -> list[str]:
    """Differences between a rebuild and the shipped files (empty when identical)."""
    problems = []
    if not E.NPZ.is_file():
        return [f"{E.NPZ} is missing"]
    with np.load(E.NPZ, allow_pickle=False) as z:
        shipped = {k: z[k] for k in z.files}
    if set(shipped) != set(arrays):
        problems.append(f"keys differ: shipped {sorted(shipped)}, rebuilt {sorted(arrays)}")
    for k in sorted(set(shipped) & set(arrays)):
        a, b = shipped[k], arrays[k]
        if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
            problems.append(f"{k}: shipped {a.dtype}{a.shape} differs from rebuilt {b.dtype}{b.shape}")
    rebuilt = array_sha256(arrays)
    if rebuilt != dict(sorted(E.SHA256.items())):
        problems.append("sha256 constants in robaudit/data/embedded.py differ from the rebuild")
    if not E.INDEX.is_file() or E.INDEX.read_text() != index_csv:
        problems.append(f"{E.INDEX.name} differs from the rebuild")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", help=f"path of {E.SOURCE_FILE} (default: $ROBAUDIT_DATA or ../shared/data)")
    ap.add_argument("--check", action="store_true", help="compare a rebuild with the shipped files; exit 1 on mismatch")
    args = ap.parse_args(argv)
    arrays, index_csv = build(find_source(args.source))
    sums = array_sha256(arrays)
    if args.check:
        problems = check(arrays, index_csv)
        for p in problems:
            print(f"MISMATCH {p}", file=sys.stderr)
        if not problems:
            print(f"ok: {E.NPZ.name} matches the rebuild ({len(sums)} arrays)")
        return 1 if problems else 0
    data = npz_bytes(arrays)
    E.DIR.mkdir(parents=True, exist_ok=True)
    E.NPZ.write_bytes(data)
    E.INDEX.write_text(index_csv)
    print(f"wrote {E.NPZ} ({len(data):,} bytes) and {E.INDEX.name}")
    for split in SPLITS:
        y = arrays[f"{split}_labels"].reshape(-1)
        print(f"  {split}: {y.size} images, per class {np.bincount(y, minlength=2).tolist()}")
    print("SHA256 = {")
    for k, v in sums.items():
        print(f'    "{k}": "{v}",')
    print("}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
