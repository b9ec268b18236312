"""Image files as 8-bit RGB, read within a pixel budget and scaled by their bit depth; ImageNet-style folders.

``PIL.Image.convert("RGB")`` clips 16-bit and 32-bit integer images at 255 and maps float images in [0, 1] to
0/1 (all but black): here every mode is scaled to 0..255 by its own range first:

- ``I;16`` (16-bit, e.g. a 16-bit PNG): value / 65535;
- ``I`` (32-bit signed integer): value / (2^31 - 1); negative values are refused;
- ``F`` (32-bit float): intensities in [0, 1]; a float image whose values exceed 1 is read as 0..255 levels;
  NaN/inf or values outside [0, 255] are refused;
- every other mode (1, L, P, LA, RGB, RGBA, CMYK, YCbCr, ...) through PIL's own conversion (8 bits already).

The image's size is read from its header and checked against :data:`MAX_PIXELS` before any pixel is decoded
(a decompression bomb is refused in one line); every error names the file.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .static import DatasetError

__all__ = ["MAX_PIXELS", "open_rgb", "to_rgb", "image_folder"]

MAX_PIXELS = 2**26  # 8192 x 8192: larger than any image these models take, far below a decompression bomb


def to_rgb(im: Image.Image, where: str = "image") -> Image.Image:
    """``im`` as an 8-bit RGB image, scaled by its mode's bit depth (see the module docstring)."""
    mode = im.mode
    if mode.startswith("I;16"):
        a = np.asarray(im).astype(np.float64) / 65535.0
    elif mode in ("I", "I;32", "I;32S"):
        a = np.asarray(im).astype(np.float64)
        if a.size and a.min() < 0:
            raise DatasetError(f"{where}: a 32-bit integer image with negative values ({a.min():.0f}); expected "
                               f"intensities 0..2^31-1")
        a /= 2**31 - 1
    elif mode == "F":
        a = np.asarray(im).astype(np.float64)
        if a.size and not np.isfinite(a).all():
            raise DatasetError(f"{where}: a float image with NaN/inf values")
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise DatasetError(f"{where}: a float image with values {lo:.4g}..{hi:.4g}; expected intensities in "
                               f"[0, 1] (or 0..255 levels)")
        if hi > 1:
            a = a / 255.0
    else:
        return im.convert("RGB")
    grey = np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def open_rgb(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Read image ``path`` as 8-bit RGB (loaded, file closed). Refused with a :class:`DatasetError` naming the
    file: not a regular file (a FIFO would block), not an image, larger than ``max_pixels`` (default
    :data:`MAX_PIXELS`), truncated or damaged."""
    from PIL import UnidentifiedImageError

    from ..bounds import regular_file

    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        regular_file(path, "an image", DatasetError)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > limit:
                    raise DatasetError(f"{path}: the image claims {w} x {h} = {w * h:,} pixels, more than the "
                                       f"{limit:,} allowed (a decompression bomb?): refused before decoding")
                im.load()
                return to_rgb(im, str(path))
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DatasetError(f"{path}: refused as a decompression bomb ({' '.join(str(e).split())[:160]})") from None
    except UnidentifiedImageError:
        raise DatasetError(f"{path}: not an image file PIL can read") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated JPEG/PNG, broken chunks
        why = " ".join(str(e).split()) or type(e).__name__
        raise DatasetError(f"{path}: damaged or truncated image ({why[:160]})") from None


# ---------------------------------------------------------------------------------------------- ImageNet folders
def image_folder(root: str | None, split: str, transform=None):
    from torchvision.datasets import ImageFolder

    root_p = Path(root or "./data/imagenet")
    names = ["train"] if split == "train" else ["val", "validation", "test"]
    d = next((root_p / n for n in names if (root_p / n).is_dir()), None)
    if d is None:
        raise DatasetError(f"ImageNet-style {split} folder not found under {root_p}. Expected "
                           f"{root_p}/{'train' if split == 'train' else 'val'}/<class_name>/<image>.JPEG")
    try:  # open_rgb: bit depth kept, pixel budget, errors naming the file (a truncated JPEG says which)
        ds = ImageFolder(str(d), transform=transform, loader=open_rgb)
    except (FileNotFoundError, RuntimeError) as e:
        raise DatasetError(f"{d}: {e}. Expected one sub-folder per class holding images") from e
    ds.num_classes = len(ds.classes)
    return ds
