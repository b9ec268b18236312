"""What we know about each dataset, without reading any file: classes, channels, size, mean/std, kind.

The one table every part of the package reads (recipes fill unset keys from it, the official DVS mode is derived
from it, inference normalises with it). Light on purpose: no torch, numpy or PIL import.
"""
from __future__ import annotations

__all__ = ["DATASET_INFO", "DATASET_ALIASES", "canonical_name", "dataset_normalisation", "is_event", "uses_erode",
           "is_folder", "is_embedded"]

DATASET_INFO: dict[str, dict] = {
    "imagenet": dict(num_classes=1000, in_channels=3, img_size=224, mean=(0.485, 0.456, 0.406),
                     std=(0.229, 0.224, 0.225), is_event=False),
    "cifar10": dict(num_classes=10, in_channels=3, img_size=32, mean=(0.4914, 0.4822, 0.4465),
                    std=(0.2470, 0.2435, 0.2616), is_event=False),
    "cifar100": dict(num_classes=100, in_channels=3, img_size=32, mean=(0.5071, 0.4867, 0.4408),
                     std=(0.2675, 0.2565, 0.2761), is_event=False),
    # mean/std of the 60k training images (uint8 / 255)
    "fashion-mnist": dict(num_classes=10, in_channels=1, img_size=28, mean=(0.2860,), std=(0.3530,), is_event=False),
    # mean/std of the 8x8 digits scaled to 0..255 then /255 (all 1797 images)
    "digits": dict(num_classes=10, in_channels=1, img_size=8, mean=(0.3050,), std=(0.3800,), is_event=False,
                   embedded=True),
    # your own images (data/folder.py): classes, channels, size and mean/std are read from the folder
    "imagefolder": dict(is_event=False, folder=True),
    "gesture": dict(num_classes=11, in_channels=2, img_size=128, is_event=True),
    "cifar10-dvs": dict(num_classes=10, in_channels=2, img_size=64, is_event=True, erode=True),
    "cifar10-dvs-tet": dict(num_classes=10, in_channels=2, img_size=64, is_event=True, erode=True),
    "sim-fashion-mnist-dvs": dict(num_classes=10, in_channels=2, img_size=34, is_event=True, simulated=True),
}

# other spellings (official configs, torchvision/timm names) -> our dataset names
DATASET_ALIASES = {
    "torch/cifar10": "cifar10", "torch/cifar100": "cifar100", "cifar-10": "cifar10", "cifar-100": "cifar100",
    "torch/fashion_mnist": "fashion-mnist", "torch/fashionmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist", "dvs128-gesture": "gesture",
    "dvsgesture": "gesture", "dvs-gesture": "gesture", "imagenet1k": "imagenet", "torch/imagenet": "imagenet",
    "image-folder": "imagefolder", "image_folder": "imagefolder", "folder": "imagefolder",
}


def canonical_name(name: str) -> str:
    """Our name for a dataset spelled ``name`` (case-insensitive; aliases resolved; unknown names lower-cased)."""
    n = str(name or "").strip().lower()
    return DATASET_ALIASES.get(n, n)


def dataset_normalisation(name: str):
    """(mean, std) a model trained by our recipes on dataset ``name`` saw (DATASET_INFO, else 0.5 / 0.5)."""
    info = DATASET_INFO.get(canonical_name(name), {})
    return info.get("mean") or 0.5, info.get("std") or 0.5


def is_event(name: str) -> bool:
    """True for event-camera datasets (samples are [T, 2, H, W] frames of event counts)."""
    return bool(DATASET_INFO.get(canonical_name(name), {}).get("is_event"))


def uses_erode(name: str) -> bool:
    """The official code switches on its DVS "Erode" (``dvs_mode``) for these datasets (CIFAR10-DVS)."""
    return bool(DATASET_INFO.get(canonical_name(name), {}).get("erode"))


def is_folder(name: str) -> bool:
    """True for ``imagefolder``: everything about the data is read from the user's folder (``--data-dir``)."""
    return bool(DATASET_INFO.get(canonical_name(name), {}).get("folder"))


def is_embedded(name: str) -> bool:
    """True for data shipped inside a package (digits): there is no folder to point at."""
    return bool(DATASET_INFO.get(canonical_name(name), {}).get("embedded"))
