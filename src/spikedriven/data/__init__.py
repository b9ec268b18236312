"""Datasets: ``create_dataset(name, root, split, T=...)`` and ``DATASET_INFO``. Nothing is ever downloaded.

Static datasets return ``(PIL image, label)`` before ``transform``; event datasets return
``(float32 [T, 2, H, W] event counts, label)``.
"""
from __future__ import annotations

from pathlib import Path

from .events import (EventFrameDataset, TETFolderDataset, cifar10_dvs, gesture, integrate_frames,
                     read_npz_events, read_tonic_npy)
from .simulate import image_to_events, write_simulated_dataset
from .static import DatasetError, cifar, digits, fashion_mnist, image_folder, read_idx

__all__ = ["DATASET_INFO", "DATASET_ALIASES", "canonical_name", "dataset_normalisation", "create_dataset", "DatasetError", "integrate_frames", "read_idx", "read_npz_events",
           "read_tonic_npy", "image_to_events", "write_simulated_dataset", "EventFrameDataset"]

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
    "digits": dict(num_classes=10, in_channels=1, img_size=8, mean=(0.3050,), std=(0.3800,), is_event=False),
    "gesture": dict(num_classes=11, in_channels=2, img_size=128, is_event=True),
    "cifar10-dvs": dict(num_classes=10, in_channels=2, img_size=64, is_event=True),
    "cifar10-dvs-tet": dict(num_classes=10, in_channels=2, img_size=64, is_event=True),
    "sim-fashion-mnist-dvs": dict(num_classes=10, in_channels=2, img_size=34, is_event=True, simulated=True),
}

# other spellings (official configs, torchvision/timm names) -> our dataset names
DATASET_ALIASES = {
    "torch/cifar10": "cifar10", "torch/cifar100": "cifar100", "cifar-10": "cifar10", "cifar-100": "cifar100",
    "torch/fashion_mnist": "fashion-mnist", "torch/fashionmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist", "dvs128-gesture": "gesture",
    "dvsgesture": "gesture", "dvs-gesture": "gesture", "imagenet1k": "imagenet", "torch/imagenet": "imagenet",
}


def canonical_name(name: str) -> str:
    """Our name for a dataset spelled ``name`` (case-insensitive; aliases resolved; unknown names lower-cased)."""
    n = str(name or "").strip().lower()
    return DATASET_ALIASES.get(n, n)


def dataset_normalisation(name: str):
    """(mean, std) a model trained by our recipes on dataset ``name`` saw (DATASET_INFO, else 0.5 / 0.5)."""
    info = DATASET_INFO.get(canonical_name(name), {})
    return info.get("mean") or 0.5, info.get("std") or 0.5


def _split(split: str) -> str:
    s = split.lower()
    if s in ("train", "training"):
        return "train"
    if s in ("test", "val", "validation", "eval"):
        return "test"
    raise ValueError(f"split must be 'train' or 'test'/'val', got {split!r}")


def create_dataset(name: str, root: str | None = None, split: str = "train", *, T: int | None = None,
                   transform=None, download: bool = False, **kwargs):
    """Build a dataset from files on disk. ``T`` (frames) is required for event datasets."""
    name = canonical_name(name)
    if name not in DATASET_INFO:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASET_INFO))}")
    if download:
        raise RuntimeError(f"spikedriven never downloads data; place the {name} files under a folder and pass it "
                           f"as root (the error for a missing folder shows the expected layout)")
    split = _split(split)
    info = DATASET_INFO[name]
    if info["is_event"] and (T is None or T < 1):
        raise ValueError(f"{name} is an event dataset: pass T (number of frames), e.g. T=16")
    if name == "fashion-mnist":
        return fashion_mnist(root, split, transform)
    if name == "digits":
        return digits(split, transform, **kwargs)
    if name in ("cifar10", "cifar100"):
        return cifar(name, root, split, transform)
    if name == "imagenet":
        return image_folder(root, split, transform)
    if name == "gesture":
        return gesture(root, split, T, transform=transform, **kwargs)
    if name == "cifar10-dvs":
        return cifar10_dvs(root, split, T, transform=transform, **kwargs)
    if name == "cifar10-dvs-tet":
        return TETFolderDataset(Path(root or "./data/cifar10-dvs-tet"), split, transform=transform)
    # sim-fashion-mnist-dvs: generated once from Fashion-MNIST, then read like any DVS folder
    return _simulated_fmnist(root, split, T, transform, **kwargs)


def _simulated_fmnist(root, split, T, transform, n_per_split: int | None = None, fmnist_root: str | None = None):
    out = Path(root or "./data/sim-fashion-mnist-dvs")
    d = out / "events_np" / split
    if not d.is_dir():
        src = fashion_mnist(fmnist_root, split)
        n = n_per_split or len(src)
        write_simulated_dataset(src.images[:n], src.labels[:n], out, split, sensor=34, seed=0 if split == "train"
                                else 1)
    files, labels = [], []
    for ld in sorted((p for p in d.iterdir() if p.is_dir()), key=lambda p: int(p.name)):
        fs = sorted(ld.glob("*.npz"), key=lambda p: int(p.stem))
        files += fs
        labels += [int(ld.name)] * len(fs)
    return EventFrameDataset(files, labels, [str(i) for i in range(10)], T, (34, 34), "number",
                             cache_dir=out / "frames_cache", transform=transform)
