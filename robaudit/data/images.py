"""Image decoding and resizing: PIL for photos, pydicom for DICOM, torchvision for tensor resizing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from timm.data import create_transform

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
DICOM_EXTS = {".dcm", ".dicom"}


class DecodeError(Exception):
    """An image file could not be decoded."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTS | DICOM_EXTS and not path.name.startswith(".")


def read_image(path: Path) -> np.ndarray:
    """Decode one file to uint8 RGB (H, W, 3); DICOM goes through its modality LUT and VOI window.

    Every failure is a :class:`DecodeError`: truncated or corrupt files, and images that declare more
    pixels than PIL's ``MAX_IMAGE_PIXELS`` (a decompression bomb: a few bytes that would decode to
    gigabytes). PIL only warns between one and two times the limit; here that is refused too."""
    if path.suffix.lower() in DICOM_EXTS:
        return read_dicom(path)
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return np.array(im.convert("RGB"))  # writable: torch.from_numpy warns on read-only arrays
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DecodeError(f"{path}: declares more than {Image.MAX_IMAGE_PIXELS:,} pixels (a decompression bomb?)"
                          ) from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, MemoryError) as exc:
        raise DecodeError(f"{path}: {exc}") from None


def image_header(path: Path) -> tuple[tuple[int, int], bool] | None:
    """((height, width), single-channel) from a file's header without decoding its pixels; None if unreadable.
    DICOM: grey when SamplesPerPixel is 1."""
    if path.suffix.lower() in DICOM_EXTS:
        try:
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return (int(ds.Rows), int(ds.Columns)), int(getattr(ds, "SamplesPerPixel", 1)) == 1
        except Exception:  # noqa: BLE001 - pydicom raises many types on foreign files; unreadable is the answer
            return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return (im.height, im.width), im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None


def read_dicom(path: Path) -> np.ndarray:
    """Decode a DICOM image (the middle frame of a multi-frame file) as :func:`dicom_frames` does."""
    frames = dicom_frames(path)
    return frames[len(frames) // 2]


def dicom_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a DICOM file as uint8 RGB (H, W, 3): grey frames through the modality LUT and the
    VOI LUT / window (MONOCHROME1 inverted), colour frames as stored; each frame min-max scaled."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pragma: no cover - depends on the optional extra
        raise DecodeError(f"{path}: reading DICOM needs pydicom (pip install 'robaudit[dicom]')") from None
    try:
        ds = pydicom.dcmread(str(path))
        arr = ds.pixel_array
        frames = arr if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 else arr[None]
        photometric = str(getattr(ds, "PhotometricInterpretation", ""))
        out = []
        for f in frames:
            if photometric.startswith("RGB") or f.ndim == 3 and f.shape[-1] == 3:
                img = f.astype(np.float64)
            else:
                img = apply_voi_lut(apply_modality_lut(f, ds), ds).astype(np.float64)
                if photometric == "MONOCHROME1":
                    img = img.max() - img
            out.append(img)
    except Exception as exc:  # pydicom raises many types for broken files
        raise DecodeError(f"{path}: {exc}") from None
    return [_to_rgb_uint8(img) for img in out]


def _to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(img)
    img = img.round().astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img


def to_float_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N,H,W) or (N,H,W,C) -> float32 (N,3,H,W) in [0,1]; grey is repeated to 3 channels."""
    t = torch.from_numpy(np.ascontiguousarray(images))
    if t.ndim == 3:
        t = t.unsqueeze(-1)
    t = t.permute(0, 3, 1, 2).float().div_(255.0)
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    elif t.shape[1] == 4:
        t = t[:, :3]
    return t.contiguous()


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> ``channels`` channels: grey repeated to 3, colour to grey by ITU-R 601
    luma (torchvision's weights); grey images already repeated to 3 channels keep their exact values."""
    if x.shape[1] == channels:
        return x
    if channels == 3 and x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and x.shape[1] == 3:
        if torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2]):
            return x[:, :1].contiguous()
        from torchvision.transforms.v2 import functional as F

        return F.rgb_to_grayscale(x, num_output_channels=1).clamp_(0.0, 1.0)
    raise ValueError(f"cannot convert {x.shape[1]} channels to {channels}")


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a float batch to (size, size) with antialiased bilinear interpolation (torchvision)."""
    from torchvision.transforms.v2 import functional as F

    if x.shape[-2:] == (size, size):
        return x
    if x.shape[-1] != x.shape[-2]:
        x = F.center_crop(x, [min(x.shape[-2:])] * 2)
    return F.resize(x, [size, size], antialias=True).clamp_(0.0, 1.0)


def photo_transform(size: int, grayscale: bool = False):
    """timm's eval transform for photos: resize the shorter side, centre crop, to [0,1] tensor."""

    t = create_transform(input_size=(3, size, size), is_training=False, crop_pct=1.0, crop_mode="center",
                         interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    if not grayscale:
        return t

    def grey(img):
        return t(img.convert("L").convert("RGB"))

    return grey
