"""The embedded ``pneumonia-mini`` task: shipped bytes, provenance, splits and resolution without a data root."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from robaudit.data import embedded as E

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "build_embedded_data.py"
#: the counts NOTICE.md documents: split -> (normal, pneumonia)
DOCUMENTED = {"train": (400, 400), "val": (50, 50), "test": (150, 150)}


def _arrays() -> dict[str, np.ndarray]:
    with np.load(E.NPZ, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _source() -> Path:
    env = os.environ.get("ROBAUDIT_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    src = root / E.SOURCE_FILE
    if not src.is_file():
        pytest.skip(f"{E.SOURCE_FILE} not in {root}: cannot rebuild the embedded data")
    return src


def _env(**kv) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ROBAUDIT_DATA"}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}, **kv)
    return env


def test_shipped_file_is_small_and_its_arrays_have_the_recorded_sha256():
    assert E.NPZ.stat().st_size < 5_000_000
    arrays = _arrays()
    assert set(arrays) == {f"{s}_{k}" for s in DOCUMENTED for k in ("images", "labels")}
    got = {k: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for k, a in arrays.items()}
    assert got == E.SHA256
    for s in DOCUMENTED:
        n = arrays[f"{s}_labels"].shape[0]
        assert arrays[f"{s}_images"].dtype == np.uint8 and arrays[f"{s}_images"].shape == (n, 64, 64)
        assert arrays[f"{s}_labels"].dtype == np.uint8 and arrays[f"{s}_labels"].shape == (n, 1)


def test_split_sizes_and_class_counts_are_as_documented():
    arrays = _arrays()
    assert E.COUNTS == DOCUMENTED
    notice = E.NOTICE.read_text()
    for s, (n0, n1) in DOCUMENTED.items():
        y = arrays[f"{s}_labels"].reshape(-1)
        assert np.bincount(y, minlength=2).tolist() == [n0, n1]
        assert f"| {s} | {n0 + n1} | {n0} | {n1} |" in notice
    for needle in ("CC BY 4.0", "10.17632/rscbjbr9sj", "resized, subset", "scripts/build_embedded_data.py --check",
                   "Cell* 172(5):1122-1131"):
        assert needle in notice
    card = E.card()
    assert (card.task, card.modality, card.label_names) == ("pneumonia-mini", "chest X-ray", ["normal", "pneumonia"])


def test_package_data_covers_every_embedded_file():
    import fnmatch

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["robaudit.data"]
    for f in E.DIR.iterdir():
        rel = f"embedded_data/{f.name}"
        assert any(fnmatch.fnmatch(rel, g) for g in globs), f"{rel} would not ship in the wheel"


def test_check_mode_reports_a_changed_pixel():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_embedded_data", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    arrays, index_csv = _arrays(), E.INDEX.read_text()
    assert mod.check(arrays, index_csv) == []
    arrays["test_images"] = arrays["test_images"].copy()
    arrays["test_images"][0, 0, 0] ^= 1
    problems = mod.check(arrays, index_csv)
    assert any(p.startswith("test_images") for p in problems) and any("sha256" in p for p in problems)


def test_rebuild_from_the_shared_file_is_identical():
    src = _source()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check", "--source", str(src)], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "matches the rebuild" in proc.stdout


def test_every_image_comes_from_the_same_source_split_and_no_other():
    from PIL import Image

    src = _source()

    def resize(img: np.ndarray) -> bytes:
        return np.asarray(Image.fromarray(img, "L").resize((64, 64), Image.Resampling.LANCZOS)).tobytes()

    with np.load(src, allow_pickle=False) as z:
        source = {s: z[f"{s}_images"] for s in DOCUMENTED}
    small = {s: [resize(img) for img in imgs] for s, imgs in source.items()}
    where = {s: {b: i for i, b in enumerate(bs)} for s, bs in small.items()}
    arrays = _arrays()
    rows = list(csv.DictReader(E.INDEX.open()))
    for split in DOCUMENTED:
        mine = [r for r in rows if r["split"] == split]
        assert [int(r["index"]) for r in mine] == list(range(arrays[f"{split}_labels"].shape[0]))
        for i, img in enumerate(arrays[f"{split}_images"]):
            b = img.tobytes()
            assert b in where[split], f"{split}[{i}] is not a resized image of the source {split} split"
            for other in DOCUMENTED:
                if other != split:
                    assert b not in where[other], f"{split}[{i}] also appears in the source {other} split"
            r = mine[i]
            assert r["source_split"] == split and small[split][int(r["source_index"])] == b
            assert int(r["label"]) == int(arrays[f"{split}_labels"][i, 0])


_PROBE = """
import json
from robaudit.data import list_tasks, load_task
from robaudit.models.zoo import parse_zoo_name
t = load_task("pneumonia-mini")
z = load_task(parse_zoo_name("pneumonia-mini_tf_efficientnet_lite0", check_arch=False).task_ref)
print(json.dumps({"summary": t.summary(), "zoo": z.full_name,
                  "listed": [[x.name, x.embedded] for x in list_tasks()]}))
"""


@pytest.mark.parametrize("where", ["empty ROBAUDIT_DATA", "no ROBAUDIT_DATA, empty HOME"])
def test_loads_by_name_with_no_data(where, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = _env(ROBAUDIT_DATA=str(empty)) if where.startswith("empty") else _env(HOME=str(empty))
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    s = out["summary"]
    assert s["name"] == "pneumonia-mini" and s["embedded"] is True and s["modality"] == "chest X-ray"
    assert s["counts"] == {"train": 800, "val": 100, "test": 300}
    assert out["zoo"] == "pneumonia-mini"
    assert out["listed"] == [["pneumonia-mini", True]]


def test_tensors_and_mean_norm():
    from robaudit.data import load_task

    task = load_task("pneumonia-mini")
    assert task.embedded and task.is_grey and task.num_classes == 2
    x, y = task.tensors("test", size=64)
    assert x.dtype.is_floating_point and tuple(x.shape) == (300, 3, 64, 64)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y.tolist() == task.labels("test").tolist() and sorted(set(y.tolist())) == [0, 1]
    l2, linf = task.mean_norm("l2", 64), task.mean_norm("linf", 64)
    assert 0 < linf <= 1 and linf < l2 < 64 * np.sqrt(3)


def test_a_data_root_task_of_the_same_name_wins(tmp_path, monkeypatch):
    from robaudit.data import list_tasks, load_task

    rng = np.random.default_rng(0)
    arrays = {}
    for s in ("train", "val", "test"):
        arrays[f"{s}_images"] = rng.integers(0, 256, (4, 64, 64), dtype=np.uint8)
        arrays[f"{s}_labels"] = np.array([[0], [1], [0], [1]], np.uint8)
    np.savez_compressed(tmp_path / "mine_64.npz", **arrays)
    (tmp_path / "mine_64.json").write_text(json.dumps({"task": "pneumonia-mini", "label_names": ["a", "b"]}))
    monkeypatch.setenv("ROBAUDIT_DATA", str(tmp_path))
    task = load_task("pneumonia-mini")
    assert task.path == tmp_path / "mine_64.npz" and not task.embedded
    assert [(t.name, t.embedded) for t in list_tasks()] == [("pneumonia-mini", False)]
    (tmp_path / "mine_64.json").unlink()
    assert load_task("pneumonia-mini").embedded  # the data root no longer has that name
    assert [(t.name, t.embedded) for t in list_tasks()] == [("mine_64", False), ("pneumonia-mini", True)]
