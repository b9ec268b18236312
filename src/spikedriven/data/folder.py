"""Your own images: a folder with ``train/`` and ``val/`` (or ``test/``) holding one sub-folder per class.

    D/train/<class>/<image>    D/val/<class>/<image>    (torchvision ImageFolder layout; val/ may be test/)

The classes are the training sub-folders (sorted names; label i is the i-th name, in every split, so a class
missing from val/ shifts nothing); channels, size and mean/std are read from the training images
(:func:`inspect_folder`), so that nothing has to be typed by hand.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .static import DatasetError

__all__ = ["IMAGE_SUFFIXES", "FolderImages", "folder_classes", "folder_images", "inspect_folder", "folder_label",
           "head_refusal", "LAYOUT"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
LAYOUT = "D/train/<class>/<image> and D/val/<class>/<image> (or D/test/...)"
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
STATS_IMAGES = 2000  # mean/std from at most this many training images (evenly spread over the classes)


def _split_dir(root: Path, split: str) -> Path:
    names = ["train", "training"] if split == "train" else ["val", "validation", "test"]
    d = next((root / n for n in names if (root / n).is_dir()), None)
    if d is None:
        if not root.is_dir():
            raise DatasetError(f"image folder {root} does not exist; expected {LAYOUT.replace('D/', f'{root}/')}")
        found = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir())) or "no sub-folder"
        raise DatasetError(f"{root} has no {names[0]}/ folder (found: {found}); expected "
                           f"{LAYOUT.replace('D/', f'{root}/')}")
    return d


def folder_classes(root: str | Path) -> list[str]:
    """The class names: the sub-folders of ``root/train`` (sorted)."""
    d = _split_dir(Path(root), "train")
    classes = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{d} holds no class sub-folder; expected {LAYOUT.replace('D/', f'{root}/')}")
    return classes


def folder_images(root: str | Path, split: str, classes: list[str]) -> tuple[list[Path], list[int]]:
    """(image paths, labels) of one split, labels indexing ``classes``; a class folder of val/ that train/ does
    not have is refused (its label would mean nothing)."""
    d = _split_dir(Path(root), split)
    index = {c: i for i, c in enumerate(classes)}
    extra = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in index)
    if extra:
        raise DatasetError(f"{d} has class folder(s) {', '.join(extra[:3])} that {Path(root) / 'train'} does not have "
                           f"(the classes are the training folders: {', '.join(classes[:8])})")
    files, labels = [], []
    for c in classes:
        cd = d / c
        if not cd.is_dir():
            continue
        fs = sorted(f for f in cd.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if not fs and split == "train":
            raise DatasetError(f"class folder {cd} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += fs
        labels += [index[c]] * len(fs)
    if not files:
        raise DatasetError(f"{d}: no image in its class folders")
    return files, labels


class FolderImages(Dataset):
    """``(PIL image, label)`` of one split of an image folder. ``classes`` (a trained model's, in label order):
    the folder's training sub-folders must be exactly these; None: they are taken from the folder."""

    def __init__(self, root: str | Path, split: str, classes: list[str] | None = None, transform=None):
        own = folder_classes(root) if classes is None or (Path(root) / "train").is_dir() else None
        if classes is not None and own is not None and own != list(classes):
            shown = ", ".join(list(classes)[:6]) + (", ..." if len(classes) > 6 else "")
            raise DatasetError(f"{root}: its class folders ({', '.join(own[:6])}{', ...' if len(own) > 6 else ''}) "
                               f"are not the classes the model was trained on ({shown}), in that order")
        self.classes, self.transform = list(classes if classes is not None else own), transform
        self.files, self.labels = folder_images(root, split, self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        img = _open(self.files[i])
        return (self.transform(img) if self.transform else img), self.labels[i]


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im if im.mode in ("L", "RGB") else im.convert("L" if im.mode in _GREY_MODES else "RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(f"{path}: not an image PIL can read ({type(e).__name__})") from None


def inspect_folder(root: str | Path, max_images: int = STATS_IMAGES, channels: int | None = None) -> dict:
    """What the training images say: ``classes``, ``in_channels`` (1 when every image is grey, else 3),
    ``img_size`` (the median shorter side), per-channel ``mean``/``std`` of the pixel values / 255 (of the images
    as ``channels`` channels when given: how the model will see them) and how many images they were computed from
    (``n_used`` of ``n_train``)."""
    import numpy as np

    classes = folder_classes(root)
    files, _ = folder_images(root, "train", classes)
    step = max(1, -(-len(files) // max_images))
    used = files[::step]
    imgs = [_open(f) for f in used]
    own = 1 if all(im.mode == "L" for im in imgs) else 3
    c = 1 if channels == 1 else (3 if channels else own)
    s = np.zeros(c)
    ss = np.zeros(c)
    n = 0
    for im in imgs:
        a = np.asarray(im.convert("L" if c == 1 else "RGB"), dtype=np.float64).reshape(-1, c) / 255.0
        s += a.sum(0)
        ss += (a * a).sum(0)
        n += len(a)
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean * mean, 0.0))
    std = np.where(std > 1e-6, std, 1.0)  # a constant channel: no division by ~0
    size = int(np.median([min(im.size) for im in imgs]))
    return {"classes": classes, "in_channels": own, "img_size": size, "mean": [round(float(v), 4) for v in mean],
            "std": [round(float(v), 4) for v in std], "n_used": len(used), "n_train": len(files)}


def folder_label(data_dir: str | Path) -> str:
    """How results on a folder are labelled: the folder's own name (``my_images test: top-1 ...``)."""
    p = Path(str(data_dir or "")).resolve() if data_dir else None
    return p.name if p is not None and p.name else "imagefolder"


def head_refusal(head: int, classes: list[str], where, *, chosen: bool = False) -> str | None:
    """Why a classifier with ``head`` outputs cannot be used on a folder of ``classes`` (None when it can).

    The one place that decides it. A smaller head never works (labels would fall outside it). A larger head works
    only when someone chose it: ``chosen`` is True when the user set ``--num-classes`` explicitly (fine-tuning
    from another head with ``--init-from`` builds the head from the folder and never reaches this refusal)."""
    k = len(classes)
    if head == k or (head > k and chosen):
        return None
    shown = ", ".join(classes[:5]) + (", ..." if k > 5 else "")
    return (f"{where} has {k} classes ({shown}) but the model's head has {head} outputs; "
            + ("set --num-classes to at least the number of class folders" if chosen and head < k else
               f"train a {k}-class model on it (spikedriven train --dataset imagefolder --data-dir {where}), "
               f"fine-tune one with --init-from CHECKPOINT, or choose another head with --num-classes"))
