"""Datasets -> transforms -> deterministic samplers -> loaders, Mixup/CutMix and DVS augmentation.

Determinism (for exact resume and rank-independent augmentation):
- the shuffling order of epoch ``e`` is ``randperm(n, seed + e)``, identical on every rank; rank ``r`` of ``w``
  takes positions ``r::w`` of the padded order (as ``DistributedSampler``);
- the random augmentation of sample ``i`` in epoch ``e`` is seeded from ``(seed, e, i)`` inside
  ``__getitem__`` (python ``random``, numpy and torch generators are forked and restored), so it does not
  depend on the number of workers, on which worker loads it, or on whether the epoch was resumed mid-way;
- resuming mid-epoch skips the consumed batches in the sampler, without loading them.
"""
from __future__ import annotations

import math
import random
import zlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["EpochSampler", "SeededDataset", "build_datasets", "build_loaders", "build_mixup", "batch_cutout",
           "SNNAugmentWide"]


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return zlib.crc32(f"{seed}/{epoch}/{index}".encode()) & 0x7FFFFFFF


class _ForkedRNG:
    """Seed python/numpy/torch global generators for one call and restore their states afterwards."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self.states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
        random.seed(self.seed)
        np.random.seed(self.seed)
        # the CPU generator only (what CPU transforms draw from): torch.manual_seed also seeds every
        # accelerator backend and costs ~150 us, more than the transform of a small image
        torch.default_generator.manual_seed(self.seed)

    def __exit__(self, *exc):
        random.setstate(self.states[0])
        np.random.set_state(self.states[1])
        torch.random.set_rng_state(self.states[2])


SUBSET_SEED = 20231120  # max_train_samples / max_eval_samples subsets
CACHE_BYTES = 1 << 30  # deterministic samples are kept after first use if the whole split fits in this


class SeededDataset(Dataset):
    """Applies ``transform`` to ``base[i]`` with the global RNGs seeded from ``(seed, epoch, i)``.

    A deterministic transform (evaluation, ``no_aug`` training) gives the same tensor every epoch, so when the
    whole split fits in ``cache_bytes`` and loading runs in the main process, each sample is kept after its first
    transform (Fashion-MNIST: 188 MB, the loader's 8 s per epoch drop to about 1 s).
    """

    def __init__(self, base, transform=None, seed: int = 0, random_transform: bool = True, limit: int | None = None,
                 cache_bytes: int = CACHE_BYTES):
        self.base, self.transform, self.seed, self.random = base, transform, int(seed), random_transform
        self.epoch = 0
        self.cache_bytes = int(cache_bytes)
        self._cache: list | None = None
        self._cache_checked = False
        # ``limit``: a fixed pseudo-random subset (same for every run and seed), in dataset order. Not the first N:
        # folder datasets (DVS, ImageFolder) are sorted by class, so the first N would hold only a few classes.
        self.indices = None
        if limit is not None and int(limit) < len(base):
            g = torch.Generator().manual_seed(SUBSET_SEED)
            self.indices = torch.randperm(len(base), generator=g)[: int(limit)].sort().values.tolist()
        self.n = len(base) if self.indices is None else len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self._cache is not None and self._cache[i] is not None:
            return self._cache[i]
        x, y = self.base[i if self.indices is None else self.indices[i]]
        if self.transform is not None:
            if self.random:
                with _ForkedRNG(_sample_seed(self.seed, self.epoch, i)):
                    x = self.transform(x)
            else:
                x = self.transform(x)
        item = (x, int(y))
        if not self.random and torch.utils.data.get_worker_info() is None:  # a worker's copy would be thrown away
            if not self._cache_checked:
                self._cache_checked = True
                if isinstance(x, torch.Tensor) and x.numel() * x.element_size() * self.n <= self.cache_bytes:
                    self._cache = [None] * self.n
            if self._cache is not None:
                self._cache[i] = item
        return item


class EpochSampler(Sampler[int]):
    """Per-epoch permutation from ``seed + epoch`` (the same on every rank), split ``rank::world``.

    Training pads the order (repeating its head) so that every rank gets the same number of samples, as
    ``DistributedSampler``; evaluation (``pad=False``) gives each sample to exactly one rank.
    ``skip`` drops the first ``skip`` indices of this rank's share (resume mid-epoch).
    """

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world: int = 1,
                 pad: bool = True):
        self.n, self.shuffle, self.seed, self.rank, self.world, self.pad = n, shuffle, int(seed), rank, world, pad
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip)

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.pad and self.world > 1:
            total = math.ceil(self.n / self.world) * self.world
            order += order[: total - self.n]
        return order[self.rank::self.world]

    def __iter__(self):
        return iter(self._indices()[self.skip:])

    def __len__(self):
        if self.pad and self.world > 1:
            share = math.ceil(self.n / self.world)
        else:
            share = len(range(self.rank, self.n, self.world))
        return max(share - self.skip, 0)

    def share(self) -> int:
        """Samples of this rank in a full epoch."""
        skip, self.skip = self.skip, 0
        try:
            return len(self)
        finally:
            self.skip = skip


# ------------------------------------------------------------------------------------------- transforms
class _ToMode:
    """PIL image -> mode ``L`` (1 channel) or ``RGB`` (3 channels)."""

    def __init__(self, channels: int):
        self.mode = "L" if channels == 1 else "RGB"

    def __call__(self, img):
        if hasattr(img, "mode") and img.mode != self.mode:
            return img.convert(self.mode)
        return img

    def __repr__(self):
        return f"ToMode({self.mode})"


class EventResize:
    """[T,C,H,W] event frames -> [T,C,size,size] (bilinear, as the official dvs_utils.Resize)."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, x):
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.shape[-1] == self.size and x.shape[-2] == self.size:
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)

    def __repr__(self):
        return f"EventResize({self.size})"


class SNNAugmentWide:
    """One random op per sample among Identity, ShearX(±0.3), TranslateX/Y(±5 px), Rotate(±30°), nearest
    interpolation, 31 magnitude bins (official ``--dvs-trival-aug``, re-implemented on tensors)."""

    OPS = ("identity", "shear_x", "translate_x", "translate_y", "rotate")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        op = self.OPS[int(torch.randint(len(self.OPS), ()))]
        mag = float(torch.randint(31, ())) / 30.0 * (1 if torch.rand(()) < 0.5 else -1)
        nearest = InterpolationMode.NEAREST
        if op == "identity":
            return x
        if op == "shear_x":
            return TF.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(math.atan(0.3 * mag)), 0.0],
                             interpolation=nearest, center=[0, 0])
        if op == "translate_x":
            return TF.affine(x, angle=0.0, translate=[int(round(5 * mag)), 0], scale=1.0, shear=[0.0, 0.0],
                             interpolation=nearest)
        if op == "translate_y":
            return TF.affine(x, angle=0.0, translate=[0, int(round(5 * mag))], scale=1.0, shear=[0.0, 0.0],
                             interpolation=nearest)
        return TF.rotate(x, 30.0 * mag, interpolation=nearest)


class _Compose:
    def __init__(self, ts):
        self.ts = [t for t in ts if t is not None]

    def __call__(self, x):
        for t in self.ts:
            x = t(x)
        return x

    def __repr__(self):
        return "Compose(" + ", ".join(map(repr, self.ts)) + ")"


def build_transforms(r, is_event: bool):
    """(train_transform, eval_transform, train_is_random) for recipe ``r``."""
    size = int(r["img_size"])
    if is_event:
        train = _Compose([EventResize(size), SNNAugmentWide() if r.get("dvs_trival_aug") else None])
        return train, EventResize(size), bool(r.get("dvs_trival_aug"))
    from timm.data import create_transform

    c = int(r["in_channels"])
    mean = tuple(r["mean"] or ((0.5,) * c))
    std = tuple(r["std"] or ((0.5,) * c))
    mode = _ToMode(c)
    if r.get("no_aug"):
        train = create_transform((c, size, size), is_training=False, interpolation=r.get("interpolation") or
                                 "bilinear", mean=mean, std=std, crop_pct=1.0)
    else:
        train = create_transform(
            (c, size, size), is_training=True, scale=tuple(r["scale"]), ratio=tuple(r["ratio"]), hflip=r["hflip"],
            vflip=r["vflip"], color_jitter=r["color_jitter"], auto_augment=r.get("aa") or None,
            interpolation=r.get("train_interpolation") or "random", mean=mean, std=std, re_prob=r["reprob"],
            re_mode=r["remode"], re_count=r["recount"])
    crop_pct = r.get("crop_pct")
    if crop_pct is None:
        crop_pct = 1.0 if size <= 64 else 0.875
    evalt = create_transform((c, size, size), is_training=False, interpolation=r.get("interpolation") or "bilinear",
                             mean=mean, std=std, crop_pct=crop_pct)
    return _Compose([mode, train]), _Compose([mode, evalt]), not r.get("no_aug")


def build_datasets(r, splits=("train", "test")) -> dict[str, SeededDataset]:
    """``{"train": ..., "test": ...}`` wrapped datasets for recipe ``r`` (only the splits asked for)."""
    from ..data.factory import create_dataset
    from ..data.info import DATASET_INFO
    from ..data.info import is_event as _is_event

    name = r.dataset_name
    if name not in DATASET_INFO:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASET_INFO))}")
    is_event = _is_event(name)
    train_t, eval_t, random_train = build_transforms(r, is_event)
    out = {}
    root = r.get("data_dir") or None
    kw: dict[str, Any] = {"T": int(r["time_steps"])} if is_event else {}
    if DATASET_INFO[name].get("folder"):
        kw["classes"] = r.get("class_names")  # labels index the classes the recipe (a trained model) has
    for split in splits:
        base = create_dataset(name, root=root, split=split, **kw)
        if split == "train":
            out[split] = SeededDataset(base, train_t, seed=r["seed"], random_transform=random_train,
                                       limit=r.get("max_train_samples"))
        else:
            out[split] = SeededDataset(base, eval_t, seed=r["seed"], random_transform=False,
                                       limit=r.get("max_eval_samples"))
    return out


def _worker_init(_):
    # augmentation is seeded per sample; this only keeps numpy distinct per worker for anything else
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def build_loaders(r, datasets: dict, rank: int = 0, world: int = 1, pin_memory: bool = False) -> dict:
    """DataLoaders with :class:`EpochSampler` (training: shuffled, padded, ``drop_last``)."""
    loaders = {}
    workers = int(r.get("workers") or 0)
    for split, ds in datasets.items():
        train = split == "train"
        sampler = EpochSampler(len(ds), shuffle=train, seed=r["seed"], rank=rank, world=world, pad=train)
        bs = int(r["batch_size"] if train else r["val_batch_size"])
        if train and sampler.share() < bs:
            raise ValueError(f"batch_size {bs} is larger than this rank's share of the training set "
                             f"({sampler.share()} samples); lower batch_size")
        g = torch.Generator().manual_seed(int(r["seed"]) * 1000 + rank)
        loaders[split] = DataLoader(ds, batch_size=bs, sampler=sampler, num_workers=workers, drop_last=train,
                                    pin_memory=pin_memory, worker_init_fn=_worker_init if workers else None,
                                    generator=g, persistent_workers=False)
    return loaders


def build_mixup(r, num_classes: int):
    """timm ``Mixup`` (label smoothing folded into the targets) or None when mixup/cutmix are off."""
    active = r["mixup"] > 0 or r["cutmix"] > 0 or r.get("cutmix_minmax") is not None
    if not active or r.get("no_aug"):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=r["mixup"], cutmix_alpha=r["cutmix"], cutmix_minmax=r.get("cutmix_minmax"),
                 prob=r["mixup_prob"], switch_prob=r["mixup_switch_prob"], mode=r["mixup_mode"],
                 label_smoothing=r["smoothing"], num_classes=num_classes)


def apply_mixup(mixup, x: torch.Tensor, y: torch.Tensor, seed: int):
    """Mixup/CutMix on a static [B,C,H,W] or event [B,T,C,H,W] batch, with numpy seeded from ``seed``."""
    with _ForkedRNG(seed):
        if x.ndim == 5:
            b, t, c, h, w = x.shape
            xm, ym = mixup(x.reshape(b, t * c, h, w).clone(), y)
            return xm.reshape(b, t, c, h, w), ym
        return mixup(x, y)


def batch_cutout(x: torch.Tensor, generator: torch.Generator, length: int = 16) -> torch.Tensor:
    """Official ``--dvs-aug``: one square hole (side ``length``) at a random centre, the same for the batch."""
    h, w = x.shape[-2:]
    cy = int(torch.randint(h, (), generator=generator))
    cx = int(torch.randint(w, (), generator=generator))
    y1, y2 = max(cy - length // 2, 0), min(cy + length // 2, h)
    x1, x2 = max(cx - length // 2, 0), min(cx + length // 2, w)
    x = x.clone()
    x[..., y1:y2, x1:x2] = 0
    return x
