"""Sample batches for a model: random inputs, the embedded digits, or a dataset's test split.

Used wherever a model is run on "some data" outside training: energy reports, pictures, checks. Static images
are normalised with the dataset's mean/std (what our recipes train with); event frames keep their counts.
"""
from __future__ import annotations

import torch

from .info import dataset_normalisation

__all__ = ["random_batches", "to_model_input", "digits_batches", "dataset_batches", "sample_batches"]


def random_batches(model, n_batches: int, batch_size: int, img_size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    cin, T = model.in_channels, model.T
    for _ in range(n_batches):
        if cin == 2:
            yield torch.poisson(torch.full((batch_size, T, cin, img_size, img_size), 0.3), generator=g)
        else:
            yield (torch.rand(batch_size, cin, img_size, img_size, generator=g) - 0.5) / 0.5


def to_model_input(x: torch.Tensor, model, img_size: int, mean=0.5, std=0.5) -> torch.Tensor:
    """[B,C,H,W] float in [0,1] -> model channels and size, normalised with the dataset's mean/std (the
    training recipe's eval transform; 0.5/0.5 where the dataset defines none)."""
    import torch.nn.functional as F

    if x.ndim == 3:
        x = x.unsqueeze(1)
    cin = model.in_channels
    if x.shape[1] != cin:
        x = x.mean(1, keepdim=True).expand(-1, cin, -1, -1) if cin != 1 else x.mean(1, keepdim=True)
    if x.shape[-2:] != (img_size, img_size):
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    m = torch.as_tensor(mean, dtype=x.dtype).reshape(-1, 1, 1)
    sd = torch.as_tensor(std, dtype=x.dtype).reshape(-1, 1, 1)
    return ((x - m) / sd).contiguous()


def digits_batches(model, n_batches: int, batch_size: int, img_size: int):
    from sklearn.datasets import load_digits

    if model.in_channels == 2:
        raise ValueError("--data digits gives static images; this model expects event frames (use --data random)")
    d = load_digits()
    imgs = torch.tensor(d.images, dtype=torch.float32) / 16.0
    mean, std = dataset_normalisation("digits")
    for i in range(n_batches):
        chunk = imgs[i * batch_size:(i + 1) * batch_size]
        if len(chunk) == 0:
            return
        yield to_model_input(chunk, model, img_size, mean, std)


def dataset_batches(model, name: str, root: str, n_batches: int, batch_size: int, img_size: int):
    """Glue to ``spikedriven.data.create_dataset`` (static: PIL/uint8 images; events: [T,C,H,W] frames)."""
    import numpy as np

    from .factory import create_dataset

    ds = create_dataset(name, root, split="test", T=model.T)
    mean, std = dataset_normalisation(name)
    items = []
    for i in range(min(len(ds), n_batches * batch_size)):
        x = ds[i][0] if isinstance(ds[i], (tuple, list)) else ds[i]
        if not isinstance(x, torch.Tensor):
            arr = np.asarray(x)
            x = torch.from_numpy(arr.copy())
            if x.ndim == 3 and x.shape[-1] in (1, 3):  # HWC
                x = x.permute(2, 0, 1)
        x = x.float()
        if x.ndim == 4:  # event frames [T, C, H, W]: keep counts, resize only
            if x.shape[-1] != img_size:
                x = torch.nn.functional.interpolate(x, size=(img_size, img_size), mode="nearest")
            items.append(x)
        else:
            if x.max() > 1.0:
                x = x / 255.0
            items.append(to_model_input(x.unsqueeze(0), model, img_size, mean, std)[0])
        if len(items) == batch_size:
            yield torch.stack(items)
            items = []
    if items:
        yield torch.stack(items)


def sample_batches(model, data: str = "random", root: str | None = None, n_batches: int = 2, batch_size: int = 4,
                   img_size: int | None = None, seed: int = 0):
    """Batches of ``data`` ("random", "digits" or a dataset name read from ``root``) ready for ``model``."""
    img_size = img_size or model.img_size
    if data == "random":
        return random_batches(model, n_batches, batch_size, img_size, seed)
    if data == "digits":
        return digits_batches(model, n_batches, batch_size, img_size)
    # no root: the dataset's default location (e.g. the Debian package's Fashion-MNIST); a missing dataset
    # raises spikedriven.data's error with the expected layout
    return dataset_batches(model, data, root, n_batches, batch_size, img_size)
