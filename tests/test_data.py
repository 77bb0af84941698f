"""Data layer on the real shared data: tasks, cards, views, folders, sources, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robaudit.core.errors import BadInput
from robaudit.data import load_source, load_task


def test_named_tasks_resolve_through_cards(data_root):
    skin = load_task("skin")
    assert skin.path.name == "dermamnist.npz"
    assert skin.num_classes == 7 and skin.label_names[4] == "melanoma"
    assert [skin.count(s) for s in ("train", "val", "test")] == [7007, 1003, 2005]
    # the manifest's per-class counts for the test split
    assert np.bincount(skin.labels("test")).tolist() == [66, 103, 220, 23, 223, 1341, 29]
    pneu = load_task("pneumonia")
    assert pneu.is_grey and pneu.label_names == ["normal", "pneumonia"]
    assert np.bincount(pneu.labels("test")).tolist() == [234, 390]


def test_referable_view_matches_manifest(data_root):
    dr = load_task("retina:referable")
    assert dr.label_names == ["non-referable", "referable"]
    assert np.bincount(dr.labels("test")).tolist() == [427, 274]
    assert np.bincount(dr.labels("train")).tolist() == [1494, 959]
    graded = load_task("retina")
    assert graded.num_classes == 5 and np.bincount(graded.labels("val")).tolist() == [179, 34, 92, 18, 27]
    with pytest.raises(BadInput, match="no label view"):
        load_task("skin:referable")


def test_tensors_are_resized_rgb_in_unit_range(data_root):
    x, y = load_task("pneumonia").tensors("test", size=64, limit=16, seed=3)
    assert x.shape == (16, 3, 64, 64) and str(x.dtype) == "torch.float32"
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert bool((x[:, 0] == x[:, 1]).all())  # grey repeated to 3 channels
    x2, y2 = load_task("pneumonia").tensors("test", size=64, limit=16, seed=3)
    assert (x == x2).all() and (y == y2).all()  # seeded subset is reproducible
    x3, _ = load_task("pneumonia").tensors("test", size=64, limit=16, seed=4)
    assert not (x3 == x).all()


def test_lookup_by_flag_path_and_suggestion(data_root):
    assert load_task("dermamnist").name == "skin"
    assert load_task(str(data_root / "aptosdr_64.npz")).name == "retina"
    with pytest.raises(BadInput, match="did you mean 'skin'"):
        load_task("skni")


def test_mean_norm_is_the_zeta_reference(data_root):
    t = load_task("skin")
    x, _ = t.tensors("train", size=28, limit=2000, seed=0)
    assert t.mean_norm("l2", 28) == pytest.approx(float(x.flatten(1).norm(dim=1).mean()), rel=1e-6)
    assert 0.5 < t.mean_norm("linf", 28) <= 1.0


def test_corrupt_and_wrong_shaped_npz(tmp_path):
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(BadInput, match="not a readable npz"):
        load_task(bad).labels("train")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, train_images=np.zeros((4, 8, 8, 5), np.uint8), train_labels=np.zeros((4, 1), np.uint8),
             test_images=np.zeros((3, 8, 8), np.uint8), test_labels=np.zeros((2, 1), np.uint8))
    t = load_task(wrong)
    with pytest.raises(BadInput, match="expected uint8"):
        t.labels("train")
    with pytest.raises(BadInput, match="3 images but labels"):
        t.labels("test")
    with pytest.raises(BadInput, match="no 'val' split"):
        t.labels("val")


def test_card_label_count_mismatch(tmp_path):
    npz = tmp_path / "mini.npz"
    np.savez(npz, train_images=np.zeros((4, 8, 8), np.uint8), train_labels=np.array([[0], [1], [2], [1]], np.uint8))
    (tmp_path / "mini.json").write_text(json.dumps({"task": "mini", "label_names": ["a", "b"]}))
    with pytest.raises(BadInput, match="card names 2 classes"):
        load_task(npz).labels("train")


def test_image_folder_task(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("benign", "malignant"):
            d = tmp_path / "lesions" / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(d / f"{i}.png")
    t = load_task(tmp_path / "lesions")
    assert t.label_names == ["benign", "malignant"] and t.splits == ["train", "test"]
    x, y = t.tensors("test", size=32)
    assert x.shape == (6, 3, 32, 32) and y.tolist() == [0, 0, 0, 1, 1, 1]


def test_dicom_folder_applies_modality_lut(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    src = get_testdata_file("CT_small.dcm")
    for cls in ("a", "b"):
        (tmp_path / "ct" / cls).mkdir(parents=True)
        for i in range(5):
            (tmp_path / "ct" / cls / f"{i}.dcm").write_bytes(open(src, "rb").read())
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    from robaudit.data.images import read_image

    t = load_task(tmp_path / "ct")
    x, _ = t.tensors("train", size=32)
    assert x.shape[1:] == (3, 32, 32) and t.count("train") + t.count("val") + t.count("test") == 10
    ds = pydicom.dcmread(src)
    hu = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(float)
    expected = np.round((hu - hu.min()) / (hu.max() - hu.min()) * 255)
    img = read_image(tmp_path / "ct" / "a" / "0.dcm")
    assert img.shape == (*ds.pixel_array.shape, 3) and np.array_equal(img[..., 0], expected.astype(np.uint8))


def test_natural_sources(data_root):
    imnet = load_source("imagenet", limit=10, seed=1)
    assert len(imnet) == 10
    x = imnet.tensor(48)
    assert x.shape == (10, 3, 48, 48)
    assert load_source("imagenet", limit=10, seed=1).items == imnet.items
    nat = load_source("natural")
    assert len(nat) > 200 and all("retina" not in str(i[0]) for i in nat.items)
    grey = load_source("imagenet", limit=4, grayscale=True).tensor(32)
    assert bool((grey[:, 0] == grey[:, 2]).all())


def test_source_errors(tmp_path):
    with pytest.raises(BadInput, match="contains no images"):
        load_source(tmp_path)
    with pytest.raises(BadInput, match="unknown source"):
        load_source("imagenett")
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    (tmp_path / "sub").mkdir()
    from PIL import Image

    Image.new("RGB", (20, 20), "red").save(tmp_path / "sub" / "ok.png")
    src = load_source(tmp_path)
    x = src.tensor(16)
    assert x.shape[0] == 1 and src.skipped == 1
    with pytest.raises(BadInput, match="cannot decode"):
        list(load_source(tmp_path).chunks(16, strict=True))


def test_fetch_downloads_through_medmnist_from_a_local_server(data_root, tmp_path, monkeypatch):
    """`robaudit data fetch` runs MedMNIST's real download (torchvision's download_url, MD5 check) against a
    local HTTP server holding the data root's dermamnist.npz; a wrong checksum fails in one line, exit 3."""
    import functools
    import hashlib
    import http.server
    import threading

    from medmnist import INFO

    from robaudit.cli import main

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    payload = (data_root / "dermamnist.npz").read_bytes()
    served = tmp_path / "zenodo"
    served.mkdir()
    (served / "dermamnist.npz").write_bytes(payload)
    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):  # the client closing a probe early is fine
            pass

    server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    try:
        monkeypatch.setitem(INFO["dermamnist"], "url", f"http://127.0.0.1:{server.server_port}/dermamnist.npz")
        monkeypatch.setitem(INFO["dermamnist"], "MD5", hashlib.md5(payload).hexdigest())
        root = tmp_path / "root"
        assert main(["--data-root", str(root), "data", "fetch", "skin"]) == 0  # task alias -> dermamnist
        assert (root / "dermamnist.npz").read_bytes() == payload
        monkeypatch.setenv("ROBAUDIT_DATA", str(root))
        assert load_task("skin").num_classes == 7 and len(load_task("skin").labels("test")) > 0

        (root / "dermamnist.npz").unlink()
        monkeypatch.setitem(INFO["dermamnist"], "MD5", "0" * 32)  # a corrupted or tampered download
        assert main(["--data-root", str(root), "data", "fetch", "dermamnist"]) == 3
    finally:
        server.shutdown()


def test_a_text_file_named_npz_gets_no_pickle_advice(tmp_path):
    bad = tmp_path / "x.npz"
    bad.write_text("garbage\n")  # NumPy would read it as a pickle and suggest allow_pickle
    with pytest.raises(BadInput, match="not a readable npz file: not a zip archive") as exc:
        load_task(bad).labels("train")
    assert "pickle" not in str(exc.value)
