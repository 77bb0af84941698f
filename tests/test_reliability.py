"""Reliability (issue 14): exit codes as an interface, one ``error:`` line for bad input, no traceback,
and no lost work.

0 pass (an audit with some failed cells too), 1 a gate rule failed, 2 bad input (a locked or unwritable
--out too), 3 runtime failure (an unexpected exception, an audit whose cells all failed, a write that
failed after the compute), 130 interrupted. Every bad input is generated here from the real data (a few
real images written as a broken npz, a PNG header that declares 20000x20000 pixels, ...). We run as root,
so permission bits stop nothing: write failures are injected at the two doors every file write goes
through (``open`` and ``os.open``), for paths under one folder only.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from robaudit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["normal", "pneumonia"]
SIZE = 32
#: the smallest real UAP run: 16 training images as the source, one pass, 8 test images, one control draw
FAST = ["--source", "train", "--source-limit", "16", "--eval-limit", "8", "--max-iter", "1", "--controls", "1",
        "--device", "cpu", "--no-report", "--seed", "0"]


def run(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_error(err: str, prefix: str = "error:") -> str:
    """The one ``error:`` / ``internal error:`` line of stderr (and no traceback)."""
    assert "Traceback" not in err, err
    lines = [ln.strip() for ln in err.splitlines() if ln.strip().startswith(("error:", "internal error:"))]
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0]


def bad_input(args, capsys, fragment: str) -> str:
    code, _, err = run(args, capsys)
    line = one_error(err)
    assert code == 2, err
    assert fragment in line, line
    return line


def bomb_png(path: Path, w: int = 20000, h: int = 20000) -> Path:
    """A valid PNG header declaring w x h pixels with almost no data: PIL's decompression-bomb case."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@contextmanager
def failing_writes(monkeypatch, under: Path, code: int, names: tuple[str, ...] | None = None):
    """Creating or writing a file below ``under`` (whose name contains one of ``names``) fails with ``code``."""
    under = Path(under).resolve()
    real_open, real_os_open = builtins.open, os.open

    def hit(file, writing) -> bool:
        if not writing or not isinstance(file, (str, os.PathLike)):
            return False
        p = Path(os.fspath(file)).resolve()
        return (p == under or under in p.parents) and (names is None or any(n in p.name for n in names))

    def fake_open(file, mode="r", *args, **kwargs):
        if hit(file, any(c in mode for c in "wax+")):
            raise OSError(code, os.strerror(code), str(file))
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if hit(path, flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
            raise OSError(code, os.strerror(code), str(path))
        return real_os_open(path, flags, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", fake_open)
        m.setattr(io, "open", fake_open)
        m.setattr(os, "open", fake_os_open)
        yield


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory, data_root):
    """A tiny real model as a checkpoint + card, a lite0 checkpoint without a card, and real test images."""
    import timm
    import torch
    from safetensors.torch import save_file

    from robaudit.models.store import ModelCard

    d = tmp_path_factory.mktemp("reliability")
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=len(CLASSES))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(d / "tiny.safetensors"))
    card = ModelCard(name="tiny", arch="resnet10t", init="random", task="pneumonia", classes=CLASSES,
                     input_size=SIZE, mean=(0.5,) * 3, std=(0.5,) * 3)
    (d / "tiny.json").write_text(card.model_dump_json())
    lite = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=len(CLASSES))
    save_file({k: v.contiguous() for k, v in lite.state_dict().items()}, str(d / "lite0.safetensors"))
    with np.load(data_root / "dermamnist.npz") as z:
        images = z["test_images"][:24]
    return d, images


@pytest.fixture(scope="module")
def reference(work, tmp_path_factory):
    """One complete run: its folder and the perturbation it built (runs are deterministic on the CPU)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["uap", "--checkpoint", str(work[0] / "tiny.safetensors"), *FAST, "--out", str(out)]) == 0
    return out, np.load(out / "uap.npy")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh ROBAUDIT_HOME (crash logs and rescued perturbations land here)."""
    h = tmp_path / "home"
    monkeypatch.setenv("ROBAUDIT_HOME", str(h))
    return h


def tiny(work) -> list[str]:
    return ["uap", "--checkpoint", work[0] / "tiny.safetensors"]


def rescued_from(line: str) -> Path:
    path = Path(re.search(r"kept in (\S+?-uap\.npy)", line)[1])
    assert path.name.endswith("-uap.npy") and path.is_file(), line
    return path


# --------------------------------------------------------------------------- the top-level handler
def test_unexpected_exception_is_one_internal_error_line_exit_3_with_the_traceback_logged(
        reference, home, monkeypatch, capsys):
    def boom(*args, **kwargs):
        raise ZeroDivisionError("boom in the report builder")

    monkeypatch.setattr("robaudit.reporting.build_report", boom)
    code, _, err = run(["report", reference[0] / "result.json"], capsys)
    line = one_error(err, "internal error:")
    assert code == 3 and "ZeroDivisionError: boom in the report builder" in line
    log = Path(line.split("details in ", 1)[1].split(";")[0])
    assert log.is_relative_to(home / "logs") and "Traceback" in log.read_text() and "boom" in log.read_text()


def test_crash_log_falls_back_to_the_temp_folder_when_home_is_a_file(reference, tmp_path, monkeypatch, capsys):
    (tmp_path / "home-file").write_text("not a folder")
    monkeypatch.setenv("ROBAUDIT_HOME", str(tmp_path / "home-file"))
    monkeypatch.setattr("robaudit.reporting.build_report", lambda *a, **k: 1 / 0)
    code, _, err = run(["report", reference[0] / "result.json"], capsys)
    line = one_error(err, "internal error:")
    log = Path(line.split("details in ", 1)[1].split(";")[0])
    assert code == 3 and log.is_file() and "robaudit-logs" in str(log)


def test_usage_errors_keep_exit_2(capsys):
    code, _, err = run(["uap", "--no-such-option"], capsys)
    assert code == 2 and "no-such-option" in one_error(err)


def test_home_that_is_a_file_is_bad_input(tmp_path, monkeypatch, capsys):
    (tmp_path / "home").write_text("")
    monkeypatch.setenv("ROBAUDIT_HOME", str(tmp_path / "home"))
    bad_input(["models", "list"], capsys, "cannot hold robaudit's files")


# ----------------------------------------------------------------------- checkpoints, archs, cards
def test_checkpoint_of_another_arch_is_bad_input(work, capsys):
    bad_input(["uap", "--checkpoint", work[0] / "lite0.safetensors", "--arch", "resnet18", "--data", "pneumonia",
               *FAST, "--out", work[0] / "never"], capsys, "fits neither timm's 'resnet18'")
    assert not (work[0] / "never").exists()  # the --out it created for the run is removed again


def test_unknown_arch_with_a_checkpoint_is_bad_input(work, capsys):
    bad_input(["uap", "--checkpoint", work[0] / "lite0.safetensors", "--arch", "no_such_net", "--data", "pneumonia",
               *FAST], capsys, "unknown architecture 'no_such_net'")


@pytest.mark.parametrize("field, value, fragment", [
    ("input_size", 1e9, "input_size"),
    ("input_size", -64, "input_size"),
    ("classes", [], "classes"),
    ("std", [0.5, 0.0, 0.5], "is not a positive float32"),
    ("classes", ["a", "b", "c"], "2-class head"),  # the checkpoint's head vs the card
])
def test_model_card_fields_are_bounded(work, tmp_path, field, value, fragment, capsys):
    card = json.loads((work[0] / "tiny.json").read_text()) | {field: value}
    shutil.copy(work[0] / "tiny.safetensors", tmp_path / "model.safetensors")
    (tmp_path / "model.json").write_text(json.dumps(card))
    bad_input(["uap", "--checkpoint", tmp_path / "model.safetensors", *FAST], capsys, fragment)


def test_dataset_card_names_must_be_distinct(work, tmp_path, capsys):
    np.savez(tmp_path / "t.npz", train_images=work[1], train_labels=np.arange(24) % 2)
    (tmp_path / "t.json").write_text(json.dumps({"label_names": ["same", "same"]}))
    bad_input([*tiny(work), "--data", tmp_path / "t.npz", *FAST], capsys, "label_names must be distinct")


# ------------------------------------------------------------------------------------ npz content
def npz_task(folder: Path, images, *, train_labels=None, test_labels=None, test_images=None) -> Path:
    n = len(images)
    labels = np.arange(n) % 2
    np.savez(folder / "task.npz", train_images=images, val_images=images,
             train_labels=labels if train_labels is None else train_labels, val_labels=labels,
             test_images=images if test_images is None else test_images,
             test_labels=labels if test_labels is None else test_labels)
    (folder / "task.json").write_text(json.dumps({"task": "t", "label_names": CLASSES}))
    return folder / "task.npz"


@pytest.mark.parametrize("case, fragment", [
    ("string labels", "labels are <U"),
    ("float labels", "label 0.5 is not a whole number"),
    ("label out of range", "labels range 0..7"),
    ("empty test split", "empty 'test' split"),
    ("float images", "expected uint8"),
    ("labels per image", "24 images but labels of shape"),
])
def test_npz_content_is_checked(work, tmp_path, case, fragment, capsys):
    images = work[1]
    kw = {"string labels": dict(test_labels=np.array(["normal", "pneumonia"] * 12)),
          "float labels": dict(test_labels=np.array([0.5, 1.5] * 12)),
          "label out of range": dict(test_labels=np.arange(24) % 8),
          "empty test split": dict(test_images=images[:0], test_labels=np.zeros(0, int)),
          "float images": dict(test_images=images.astype(np.float32) / 255),
          "labels per image": dict(test_labels=np.zeros(23, int))}[case]
    bad_input([*tiny(work), "--data", npz_task(tmp_path, images, **kw), *FAST], capsys, fragment)


def test_npz_without_card_and_string_labels_is_bad_input(work, tmp_path, capsys):
    np.savez(tmp_path / "nocard.npz", train_images=work[1], train_labels=np.array(["a", "b"] * 12))
    bad_input([*tiny(work), "--data", tmp_path / "nocard.npz", *FAST], capsys, "labels are <U1")


def test_whole_float_labels_are_accepted(work):
    from robaudit.data.tasks import int_labels

    assert int_labels(np.array([[0.0], [1.0]]), "x").tolist() == [0, 1]


# ---------------------------------------------------------------------------------------- images
def folder_task(root: Path, images, bomb_in_test: bool) -> Path:
    from PIL import Image

    for split in ("train", "test"):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(c, 8, 2):
                Image.fromarray(images[i]).save(root / split / name / f"{i}.png")
    if bomb_in_test:
        bomb_png(root / "test" / "normal" / "zz-bomb.png")
    return root


def test_decompression_bomb_in_a_data_folder_is_bad_input(work, tmp_path, capsys):
    root = folder_task(tmp_path / "folder", work[1], bomb_in_test=True)
    line = bad_input([*tiny(work), "--data", root, *FAST], capsys, "decompression bomb")
    assert "zz-bomb.png" in line


def test_read_image_refuses_bombs_and_truncated_files(work, tmp_path):
    from PIL import Image

    from robaudit.data.images import DecodeError, read_image

    with pytest.raises(DecodeError, match="decompression bomb"):
        read_image(bomb_png(tmp_path / "bomb.png"))
    Image.fromarray(work[1][0]).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError):
        read_image(tmp_path / "cut.png")
    assert read_image(tmp_path / "ok.png").shape == (28, 28, 3)


def test_a_bad_photo_in_a_source_is_skipped_and_a_source_of_bad_photos_is_bad_input(data_root, tmp_path):
    from robaudit.core.errors import BadInput
    from robaudit.data import load_source

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in sorted((data_root / "imagenet").glob("*.JPEG"))[:3]:
        shutil.copy(f, mixed / f.name)
    bomb_png(mixed / "bomb.png")
    src = load_source(mixed)
    assert len(src.tensor(SIZE)) == 3 and src.skipped == 1
    chunks = list(load_source(mixed).chunks(SIZE, chunk_size=2))
    assert sum(len(c) for c in chunks) == 3
    only = tmp_path / "only-bombs"
    only.mkdir()
    bomb_png(only / "a.png")
    bomb_png(only / "b.png")
    with pytest.raises(BadInput, match="no decodable images"):
        list(load_source(only).chunks(SIZE))
    with pytest.raises(BadInput, match="no decodable images"):
        load_source(only).tensor(SIZE)


def test_a_uap_from_a_folder_with_a_bomb_among_its_photos_runs(work, data_root, tmp_path, capsys):
    from robaudit.core.specs import UAPSpec

    photos = tmp_path / "photos"
    photos.mkdir()
    for f in sorted((data_root / "imagenet").glob("*.JPEG"))[:4]:
        shutil.copy(f, photos / f.name)
    bomb_png(photos / "bomb.png")
    small = ["--budget", "16"] if "budget" in UAPSpec.model_fields else []  # an augmented photo stream's size
    fast = list(FAST)
    fast[fast.index("--source") + 1] = str(photos)
    code, _, err = run([*tiny(work), *fast, *small, "--out", tmp_path / "o"], capsys)
    assert code == 0 and "Traceback" not in err, err
    assert (tmp_path / "o" / "result.json").is_file()


# ------------------------------------------------------------------------ perturbation files
def test_init_given_an_npz_archive_is_bad_input(work, tmp_path, capsys):
    np.savez(tmp_path / "v.npz", v=np.zeros((1, 3, SIZE, SIZE), np.float32))
    bad_input([*tiny(work), *FAST, "--init", tmp_path / "v.npz", "--out", tmp_path / "o"], capsys,
              "is an .npz archive, not a .npy array")


@pytest.mark.parametrize("content, fragment", [
    (b"", "is not a .npy file"),
    (b"garbage " * 8, "is not a .npy file"),
    (b"\x80\x04cos\nsystem\n(S'echo pwned'\ntR.", "is a Python pickle"),
    ("npz", "is an .npz archive"),
    ("truncated", "is not a readable .npy array"),
    ("object", "is not a readable .npy array"),
    ("strings", "holds <U1 values, not numbers"),
])
def test_read_npy_names_what_a_file_is(tmp_path, content, fragment):
    from robaudit.core.errors import BadInput
    from robaudit.core.files import read_npy

    f = tmp_path / "v.npy"
    if content == "npz":
        np.savez(tmp_path / "v.npz", v=np.zeros(3))
        (tmp_path / "v.npz").replace(f)
    elif content == "truncated":
        np.save(f, np.zeros(64))
        f.write_bytes(f.read_bytes()[:-16])
    elif content == "object":
        np.save(f, np.array([{}], dtype=object), allow_pickle=True)
    elif content == "strings":
        np.save(f, np.array(["a"]))
    else:
        f.write_bytes(content)
    with pytest.raises(BadInput, match=re.escape(fragment)):
        read_npy(f, "perturbation")


def test_garbage_partial_is_refused_naming_the_file_and_saying_delete_it(work, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "uap.partial.npy").write_bytes(b"\x80\x04cos\nsystem\n(S'echo pwned'\ntR.")  # a pickle, never run
    line = bad_input([*tiny(work), *FAST, "--out", out], capsys, "uap.partial.npy")
    assert "delete" in line and not (out / "result.json").exists()


# ----------------------------------------------------------------------------------- specs, recipes
def test_infinite_eps_is_bad_input(work, capsys):
    bad_input([*tiny(work), *FAST, "--eps", "inf", "--norm", "l2"], capsys, "--eps: Input should be a finite number")


def recipe(tmp_path: Path, body: str, name: str = "r.toml") -> Path:
    (tmp_path / name).write_text('name = "rel"\nsources = ["train"]\nzetas = [0.04]\neval_limit = 8\n'
                                 'source_limit = 16\nmax_iter = 1\ncontrols = 1\ndevice = "cpu"\n'
                                 'transfer_eval = false\n' + body)
    return tmp_path / name


def test_recipe_bounds_are_the_cli_bounds(tmp_path, capsys):
    path = recipe(tmp_path, "", "r.toml")
    path.write_text(path.read_text().replace("controls = 1", "controls = 5000"))
    bad_input(["audit", "--recipe", path, "--out", tmp_path / "o"], capsys, "controls: Input should be less than")


def test_recipe_cells_are_validated_as_runs(tmp_path, capsys):
    bad_input(["audit", "--recipe", recipe(tmp_path, 'checkpoints = [{path = ""}]\n'), "--out", tmp_path / "o"],
              capsys, "give --model NAME or --checkpoint PATH")


def test_recipe_that_is_not_utf8_is_bad_input(tmp_path, capsys):
    path = recipe(tmp_path, '# \xe9\n'.encode("latin-1").decode("latin-1"))
    path.write_bytes(path.read_text().encode("latin-1"))
    bad_input(["audit", "--recipe", path, "--out", tmp_path / "o"], capsys, "is not UTF-8")


# ------------------------------------------------------------------------------- results, report, gate
POLICY = 'version = 1\nname = "t"\n[[rule]]\nkind = "min_clean_accuracy"\nmin = 0.0\n'


def edited_result(reference, tmp_path: Path, edit) -> Path:
    doc = json.loads((reference[0] / "result.json").read_text())
    edit(doc)
    (tmp_path / "result.json").write_text(json.dumps(doc))
    return tmp_path / "result.json"


@pytest.mark.parametrize("version", ["1.99", "2.0", "banana"])
def test_result_from_a_future_schema_is_refused_by_report_and_gate(reference, tmp_path, version, capsys):
    res = edited_result(reference, tmp_path, lambda d: d.update(schema_version=version))
    (tmp_path / "p.toml").write_text(POLICY)
    fragment = "newer than this robaudit reads" if version != "banana" else "not MAJOR.MINOR"
    bad_input(["report", res, "--out", tmp_path / "r.html"], capsys, fragment)
    bad_input(["gate", res, "--policy", tmp_path / "p.toml"], capsys, fragment)


def test_gate_refuses_an_interrupted_result(reference, tmp_path, capsys):
    (tmp_path / "p.toml").write_text(POLICY)
    assert run(["gate", reference[0] / "result.json", "--policy", tmp_path / "p.toml"], capsys)[0] == 0
    res = edited_result(reference, tmp_path, lambda d: d["attack"].update(interrupted=True))
    bad_input(["gate", res, "--policy", tmp_path / "p.toml"], capsys, "from an interrupted run")


def test_deeply_nested_json_is_bad_input(tmp_path, capsys):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    bad_input(["report", tmp_path / "deep.json"], capsys, "nested too deeply")


def test_report_on_a_run_whose_uap_npy_is_an_npz_archive(reference, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)
    np.savez(run_dir / "v.npz", v=reference[1])
    (run_dir / "v.npz").replace(run_dir / "uap.npy")
    code, _, err = run(["report", run_dir / "result.json", "--out", tmp_path / "r.html"], capsys)
    assert code == 0 and (tmp_path / "r.html").is_file() and "Traceback" not in err, err


def test_report_and_gate_outputs_in_impossible_places_are_bad_input(reference, tmp_path, capsys):
    res = reference[0] / "result.json"
    (tmp_path / "file").write_text("")
    (tmp_path / "p.toml").write_text(POLICY)
    bad_input(["report", res, "--out", tmp_path / "file" / "r.html"], capsys, "is a file, not a folder")
    bad_input(["report", res, "--out", tmp_path / "file" / "deeper" / "r.html"], capsys, "a part of its path is a file")
    bad_input(["gate", res, "--policy", tmp_path / "p.toml", "--summary-md", tmp_path], capsys, "is a folder")
    bad_input(["gate", res, "--policy", tmp_path / "p.toml", "--junit-xml", tmp_path / "file" / "j.xml"], capsys,
              "is a file")
    bad_input(["gate", res, "--policy", tmp_path / "p.toml", "--junit-xml", tmp_path], capsys, "is a folder")
    assert run(["report", res, "--out", tmp_path], capsys)[0] == 0  # a folder: report.html goes inside
    assert (tmp_path / "report.html").is_file()


# --------------------------------------------------------------------------------- the output folder
def test_out_that_is_a_file_is_refused_before_any_compute(work, tmp_path, capsys):
    (tmp_path / "out").write_text("precious")
    bad_input([*tiny(work), *FAST, "--out", tmp_path / "out"], capsys, "is a file, not a folder")
    assert (tmp_path / "out").read_text() == "precious"


def test_attack_out_that_is_a_file_is_refused_before_the_attack(work, tmp_path, monkeypatch, capsys):
    import robaudit.attacks.persample as persample

    monkeypatch.setattr(persample, "run_attack", lambda *a, **k: pytest.fail("attacked although --out is a file"))
    (tmp_path / "out").write_text("precious")
    bad_input(["attack", "--attack", "fgsm", "--checkpoint", work[0] / "tiny.safetensors", "--n", "4", "--eps", "0.01",
               "--device", "cpu", "--out", tmp_path / "out"], capsys, "is a file, not a folder")


def test_read_only_out_is_refused_before_any_compute(work, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    import robaudit.eval.run as run_mod

    def never(*a, **k):
        raise AssertionError("computed although --out is not writable")

    monkeypatch.setattr(run_mod, "prepare", never)
    with failing_writes(monkeypatch, out, errno.EACCES):
        bad_input([*tiny(work), *FAST, "--out", out], capsys, "is not writable: Permission denied")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("names", [("uap.npy", "result.json"), ("result.json",)], ids=["disk full", "at result.json"])
def test_a_failed_write_keeps_the_perturbation_and_exits_3(work, reference, home, tmp_path, monkeypatch, names,
                                                            capsys):
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)  # an earlier complete run stays complete
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    with failing_writes(monkeypatch, out, errno.ENOSPC, names):
        code, _, err = run([*tiny(work), *FAST, "--seed", "0", "--out", out], capsys)
    line = one_error(err)
    assert code == 3 and "No space left on device" in line
    kept = rescued_from(line)
    assert kept.is_relative_to(home / "rescued")
    np.testing.assert_array_equal(np.load(kept), reference[1])  # the v that was built, not lost
    assert json.loads(kept.with_name(kept.name.replace("-uap.npy", "-result.json")).read_text())["attack"]
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # no half-written run, no staging folder


def test_interrupted_run_that_cannot_save_its_partial_keeps_it_elsewhere(reference, home, tmp_path, monkeypatch):
    import torch

    from robaudit.core.errors import Interrupted
    from robaudit.core.specs import make_spec
    from robaudit.eval.artifacts import save_partial

    v = torch.from_numpy(reference[1])
    with failing_writes(monkeypatch, tmp_path / "o", errno.ENOSPC), pytest.raises(Interrupted) as exc:
        save_partial(tmp_path / "o", v, make_spec(model="x"))
    assert exc.value.exit_code == 130 and "--init" in exc.value.message
    np.testing.assert_array_equal(np.load(rescued_from(exc.value.message)), reference[1])


HOLD_LOCK = ("import sys, time; from pathlib import Path; from robaudit.core.files import OutputLock; "
             "lock = OutputLock(Path(sys.argv[1])); lock.acquire(); print('locked', flush=True); time.sleep(120)")


@contextmanager
def lock_holder(folder: Path):
    """Another process that holds ``folder``'s lock (killed with SIGKILL on exit, leaving the lock behind)."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()


def test_two_runs_into_one_out_the_second_is_refused_and_a_killed_run_resumes(work, reference, tmp_path, capsys):
    out = tmp_path / "run"
    with lock_holder(out) as holder:
        line = bad_input([*tiny(work), *FAST, "--out", out], capsys, "is in use by another robaudit run")
        assert f"pid {holder.pid}" in line
        body = f'checkpoints = [{{path = "{work[0] / "tiny.safetensors"}"}}]\n'
        bad_input(["audit", "--recipe", recipe(tmp_path, body), "--out", out], capsys, "in use by another robaudit run")
    # the holder was SIGKILLed: its lock is stale, and the partial it left is resumed
    assert (out / ".robaudit.lock").is_file()
    np.save(out / "uap.partial.npy", reference[1])
    code, _, err = run([*tiny(work), *FAST, "--out", out], capsys)
    assert code == 0, err
    err = " ".join(err.split())  # rich wraps info lines at 120 columns
    assert "taking over the lock" in err and f"pid {holder.pid}" in err and "resuming from the partial" in err
    assert not (out / ".robaudit.lock").exists() and not (out / "uap.partial.npy").exists()
    assert (out / "result.json").is_file()


# ------------------------------------------------------------------------------------------- audits
def test_audit_with_a_failed_cell_exits_0_with_a_warning_and_no_report_claim(work, tmp_path, capsys):
    body = (f'checkpoints = [{{path = "{work[0] / "tiny.safetensors"}", name = "tiny"}}, '
            f'{{path = "{tmp_path / "gone.safetensors"}", arch = "resnet10t", data = "pneumonia", name = "gone"}}]\n')
    out = tmp_path / "audit"
    code, _, err = run(["audit", "--recipe", recipe(tmp_path, body), "--out", out, "--no-report"], capsys)
    assert code == 0, err
    assert "1 of 2 cells failed" in err and "report.html" not in err and not (out / "report.html").exists()
    doc = json.loads((out / "audit.json").read_text())
    assert doc["counts"]["done"] == 1 and doc["counts"]["failed"] == 1
    assert "does not exist" in doc["failed"][0]["error"] and "5. Failed cells" in doc["tables"]
    assert not (out / ".robaudit.lock").exists()


def test_audit_whose_cells_all_failed_exits_3(tmp_path, capsys):
    body = f'checkpoints = [{{path = "{tmp_path / "gone.safetensors"}", arch = "resnet10t", data = "pneumonia"}}]\n'
    out = tmp_path / "audit"
    code, _, err = run(["audit", "--recipe", recipe(tmp_path, body), "--out", out], capsys)
    line = one_error(err)
    assert code == 3 and "every cell of audit 'rel' failed" in line
    assert json.loads((out / "audit.json").read_text())["counts"]["failed"] == 1


# ------------------------------------------------------------- issue 28: mechanisms, not cases
# Every stop signal is Ctrl-C. The child is the real CLI; a hook prints "working" on stdout once the
# command's inner loop has run ``after`` steps (so the signal lands in the work, not in the imports), and
# slows each later step so the work cannot finish before the signal arrives.
CHILD = """
import importlib
import sys
import time
mod, attr, after = sys.argv[1], sys.argv[2], int(sys.argv[3])
owner = importlib.import_module(mod)
*path, name = attr.split(".")
for p in path:
    owner = getattr(owner, p)
real, calls = getattr(owner, name), [0]
def hooked(*a, **k):
    calls[0] += 1
    if calls[0] == after:
        print("working", flush=True)
    if calls[0] >= after:
        time.sleep(0.05)  # the work goes on (slowly) until the signal lands, however loaded the machine
    return real(*a, **k)
setattr(owner, name, hooked)
from robaudit.cli import main
sys.exit(main(sys.argv[4:]))
"""
SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"]
#: the inner step each building command runs (hooked) and the step after which to signal: a uap/audit build
#: step; the second epoch's first training step (so one epoch is checkpointed and must survive)
UAP_STEP = ("robaudit.attacks.uap.state", "UAPState.tick", 1)


def signalled(args, sig: str, hook, tmp_path: Path) -> tuple[int, str]:
    """Run ``robaudit ARGS`` in a child, send ``sig`` once its work has started; (exit code, stderr)."""
    import signal

    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200"}
    errf = tmp_path / f"{sig}.stderr"
    with open(errf, "w") as ef:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, hook[0], hook[1], str(hook[2]), *map(str, args)],
                                stdout=subprocess.PIPE, stderr=ef, text=True, env=env)
        try:
            line = proc.stdout.readline()
            assert line.strip() == "working", errf.read_text()
            proc.send_signal(getattr(signal, sig))
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
    return code, errf.read_text()


def assert_stopped(code: int, err: str, sig: str, hint: str) -> None:
    import signal

    assert code == 128 + getattr(signal, sig), err
    assert "Traceback" not in err and hint in " ".join(err.split()), err
    if sig != "SIGINT":
        assert f"{sig}:" in err, err


@pytest.mark.parametrize("sig", SIGNALS)
def test_every_stop_signal_during_uap_saves_the_partial_and_releases_the_lock(work, tmp_path, sig):
    """SIGTERM (timeout, CI cancel, docker stop) and SIGHUP used to kill the run silently, losing v."""
    out = tmp_path / "run"
    args = [*tiny(work), *FAST, "--method", "fgsm", "--max-iter", "100000", "--out", out]
    code, err = signalled(args, sig, UAP_STEP, tmp_path)
    assert_stopped(code, err, sig, "re-run the same command with the same --out to resume")
    assert np.load(out / "uap.partial.npy").shape[0] == 1 and not (out / ".robaudit.lock").exists()


@pytest.mark.parametrize("sig", SIGNALS)
def test_every_stop_signal_during_audit_keeps_the_running_cells_partial(work, tmp_path, sig):
    """The running cell saves its partial and the audit says how to resume, for every stop signal."""
    body = f'checkpoints = [{{path = "{work[0] / "tiny.safetensors"}", name = "tiny"}}]\nmethods = ["fgsm"]\n'
    path = recipe(tmp_path, body)
    path.write_text(path.read_text().replace("max_iter = 1", "max_iter = 100000"))
    out = tmp_path / "audit"
    code, err = signalled(["audit", "--recipe", path, "--out", out, "--no-report"], sig, UAP_STEP, tmp_path)
    assert_stopped(code, err, sig, f"--resume --out {out}")
    assert list(out.glob("cells/*/uap.partial.npy")) and not list(out.rglob(".robaudit.lock"))


@pytest.mark.parametrize("sig", SIGNALS)
def test_every_stop_signal_during_train_keeps_the_finished_epoch(data_root, home, tmp_path, sig):
    """Training checkpoints each epoch; a stop signal in epoch 2 must leave epoch 1's checkpoint to resume."""
    args = ["train", "pneumonia_resnet10t_random", "--epochs", "50", "--image-size", "16", "--train-limit", "16",
            "--batch-size", "8", "--device", "cpu"]
    code, err = signalled(args, sig, ("robaudit.models.train", "augment", 3), tmp_path)
    assert_stopped(code, err, sig, "interrupted")
    assert list(home.rglob("train_state.json")) and not list(home.rglob("card.json"))


@pytest.mark.parametrize("sig", SIGNALS)
def test_every_stop_signal_during_harden_keeps_the_finished_epoch(work, home, tmp_path, sig):
    """Hardening resumes after its last finished epoch for every stop signal, not only Ctrl-C."""
    args = ["harden", "--checkpoint", work[0] / "tiny.safetensors", "--arch", "resnet10t", "--epochs", "50",
            "--train-limit", "16", "--batch-size", "8", "--no-reaudit", "--device", "cpu", "--select-limit", "8"]
    code, err = signalled(args, sig, ("robaudit.training.harden", "augment", 3), tmp_path)
    assert_stopped(code, err, sig, "resumes after the last finished epoch")
    assert list(home.rglob("harden_state.json"))


def test_a_signal_ignored_at_start_stays_ignored_and_handlers_are_restored():
    """``nohup`` ignores SIGHUP: robaudit must not re-enable it; in-process callers get their handlers back."""
    import signal

    from robaudit.core.errors import stop_signals

    before = signal.getsignal(signal.SIGTERM)
    old_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with stop_signals():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not before
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGHUP, old_hup)


# One reader for every structured input: size and nesting are checked on the text, before a parser recurses.
DEEP_TOML = ["x = " + "[" * 5000 + "]" * 5000 + "\n", "x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n",
             "a" + ".a" * 5000 + " = 1\n", "[" + ".".join(["t"] * 5000) + "]\n"]


@pytest.mark.parametrize("body", DEEP_TOML, ids=["arrays", "inline tables", "dotted key", "table header"])
def test_deeply_nested_toml_recipe_and_policy_are_bad_input(reference, tmp_path, body, capsys):
    """Was 'internal error: RecursionError' and exit 3 for the TOML twins of the JSON nesting fix."""
    (tmp_path / "deep.toml").write_text(body)
    bad_input(["audit", "--recipe", tmp_path / "deep.toml", "--out", tmp_path / "o"], capsys, "nested too deeply")
    bad_input(["gate", reference[0] / "result.json", "--policy", tmp_path / "deep.toml"], capsys, "nested too deeply")


def test_a_huge_structured_file_is_refused_before_it_is_parsed(tmp_path, monkeypatch, capsys):
    from robaudit.core import files

    monkeypatch.setattr(files, "MAX_DOCUMENT_BYTES", 1000)
    (tmp_path / "big.json").write_text(json.dumps({"notes": ["x" * 2000]}))
    bad_input(["report", tmp_path / "big.json"], capsys, "too large to be a robaudit document")


def test_nesting_scan_ignores_brackets_in_strings_and_comments():
    from robaudit.core.files import nesting_depth

    assert nesting_depth('{"a": "[[[[[[", "b": [1, {"c": 2.5}]}') == 3
    assert nesting_depth('s = "[[[[" # [[[[\nt = """\n{{{{\n"""\nu = [1.5, 2.5]\n[a.b]\nc.d = 1\n', toml=True) == 4


def test_every_shipped_document_passes_the_limits():
    from robaudit.core.files import MAX_DOCUMENT_DEPTH, nesting_depth

    repo = Path(__file__).resolve().parents[1]
    for f in [*repo.glob("attacks/*.toml"), *repo.glob("docs/*.toml"), *repo.glob("reports/example/**/*.json")]:
        assert nesting_depth(f.read_text(), toml=f.suffix == ".toml") <= MAX_DOCUMENT_DEPTH // 4, f


# Results are validated by value when read: report and gate refuse with one line naming the field.
BAD_VALUES = [
    (lambda d: d["metrics"]["fooling_rate"].update(value=1.7), "metrics.fooling_rate.value"),
    (lambda d: d["data"].update(n=-5), "data.n"),
    (lambda d: d["metrics"]["fooling_rate"].update(n=-1), "metrics.fooling_rate.n"),
    (lambda d: d["metrics"]["fooling_rate"].update(ci=[0.9, 0.1]), "reversed"),
    (lambda d: d["metrics"]["fooling_rate"].update(ci=[0.0, 0.01], value=0.5, k=4), "outside its interval"),
    (lambda d: d["metrics"]["fooling_rate"].update(k=d["metrics"]["fooling_rate"]["n"] + 1), "successes out of"),
    (lambda d: d["metrics"]["per_class"][0].update(n=d["metrics"]["per_class"][0]["n"] + 3), "per_class"),
    (lambda d: d["comparison"].update(p_value=1.5), "comparison.p_value"),
    (lambda d: d["metrics"].update(clean_accuracy=float("nan")), "metrics.clean_accuracy"),
    (lambda d: d.update(schema_version="0.9"), "schema_version"),
]


@pytest.mark.parametrize("edit,field", BAD_VALUES, ids=[f for _, f in BAD_VALUES])
def test_a_result_with_impossible_values_is_refused_by_report_and_gate(reference, tmp_path, edit, field, capsys):
    """report rendered a fooling rate of 1.7 and gate passed a negative image count."""
    res = edited_result(reference, tmp_path, edit)
    (tmp_path / "p.toml").write_text(POLICY)
    bad_input(["report", res, "--out", tmp_path / "r.html"], capsys, field)
    bad_input(["gate", res, "--policy", tmp_path / "p.toml"], capsys, field)


def test_every_result_robaudit_writes_passes_the_value_checks(reference):
    from robaudit.core.results import load_result
    from robaudit.grading import load_input

    load_result(reference[0] / "result.json")
    repo = Path(__file__).resolve().parents[1]
    for f in repo.glob("reports/example/cells/*/result.json"):
        load_result(f)
    if (repo / "reports/example/audit.json").is_file():
        load_input(repo / "reports/example/audit.json")


# Messages from facts: the closing line names only the files this run wrote.
def test_no_report_closing_line_names_no_report_even_when_an_old_one_is_there(work, reference, tmp_path, capsys):
    """With --no-report the closing line still named report.html (a stale one from an earlier run)."""
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    (out / "report.html").write_text("<html>an earlier run's report</html>")
    code, _, err = run([*tiny(work), *FAST, "--seed", "1", "--out", out], capsys)
    assert code == 0, err
    closing = [ln for ln in err.splitlines() if ln.startswith("wrote")]
    assert closing and "result.json" in closing[-1] and "report.html" not in closing[-1], err


def test_float32_bounds_refuse_what_overflows_in_float32():
    """robaudit.core.bounds, for the settings model: 1e39 is finite in float64 but inf in a float32 tensor."""
    from pydantic import TypeAdapter, ValidationError

    from robaudit.core.bounds import Float32, PositiveFloat32

    assert TypeAdapter(PositiveFloat32).validate_python(0.5) == 0.5
    for bounded, bad in ((PositiveFloat32, 1e39), (PositiveFloat32, 0.0), (PositiveFloat32, 1e-45),
                         (Float32, -1e39), (Float32, float("inf"))):
        with pytest.raises(ValidationError):
            TypeAdapter(bounded).validate_python(bad)
