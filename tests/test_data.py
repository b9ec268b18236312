"""Dataset loaders on small files written here in the real on-disk formats, and malformed ones."""
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spikedriven.data import (DatasetError, create_dataset, image_to_events, integrate_frames, read_idx,
                              write_simulated_dataset)


def write_idx(path, arr, gz=True):
    head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = head + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz, sub", [(True, ""), (False, "FashionMNIST/raw")])
def test_fashion_mnist_idx(tmp_path, gz, sub):
    d = tmp_path / sub
    d.mkdir(parents=True, exist_ok=True)
    imgs = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 251
    ext = ".gz" if gz else ""
    for pre in ("train", "t10k"):
        write_idx(d / f"{pre}-images-idx3-ubyte{ext}", imgs, gz)
        write_idx(d / f"{pre}-labels-idx1-ubyte{ext}", np.array([4, 0, 9]), gz)
    ds = create_dataset("fashion-mnist", str(tmp_path), "test")
    assert len(ds) == 3 and [ds[i][1] for i in range(3)] == [4, 0, 9]
    assert np.array_equal(np.asarray(ds[1][0]), imgs[1].astype(np.uint8))


def test_idx_malformed(tmp_path):
    p = tmp_path / "bad-images-idx3-ubyte"
    p.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 5, 28, 28) + b"\x00" * 100)
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(p)
    p.write_bytes(b"PK\x03\x04hello")
    with pytest.raises(DatasetError, match="bad magic"):
        read_idx(p)
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        create_dataset("fashion-mnist", str(tmp_path / "empty"), "train")


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Debian dataset not installed")
def test_real_fashion_mnist_first_labels():
    tr, te = create_dataset("fashion-mnist", split="train"), create_dataset("fashion-mnist", split="test")
    assert len(tr) == 60000 and len(te) == 10000
    assert [tr[i][1] for i in range(5)] == [9, 0, 0, 3, 0] and [te[i][1] for i in range(5)] == [9, 2, 1, 1, 6]


def test_digits_embedded_split():
    tr, te = create_dataset("digits", split="train"), create_dataset("digits", split="test")
    assert len(tr) + len(te) == 1797 and abs(len(te) - 359) <= 5
    assert np.asarray(tr[0][0]).shape == (8, 8) and np.asarray(tr[0][0]).max() <= 255


def test_cifar10_and_100_pickles(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        pickle.dump({b"data": data, b"labels": [i % 10, (i + 1) % 10]}, open(d / f"data_batch_{i}", "wb"))
    test = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    pickle.dump({b"data": test, b"labels": [7, 8, 9]}, open(d / "test_batch", "wb"))
    ds = create_dataset("cifar10", str(tmp_path), "test")
    assert len(ds) == 3 and ds[2][1] == 9
    img = np.asarray(ds[0][0])
    assert img.shape == (32, 32, 3) and img[0, 0, 0] == test[0, 0] and img[0, 0, 1] == test[0, 1024]
    assert len(create_dataset("cifar10", str(tmp_path), "train")) == 10
    d100 = tmp_path / "cifar-100-python"
    d100.mkdir()
    pickle.dump({b"data": test, b"fine_labels": [55, 1, 99]}, open(d100 / "test", "wb"))
    assert create_dataset("torch/cifar100", str(tmp_path), "val")[0][1] == 55
    pickle.dump({b"data": test[:, :100], b"labels": [1, 2, 3]}, open(d / "test_batch", "wb"))
    with pytest.raises(DatasetError, match="expected data \\[N, 3072\\]"):
        create_dataset("cifar10", str(tmp_path), "test")


def test_image_folder(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "val" / cls).mkdir(parents=True)
        Image.new("RGB", (10, 12), (1, 2, 3)).save(tmp_path / "val" / cls / "a.png")
    ds = create_dataset("imagenet", str(tmp_path), "validation")
    assert len(ds) == 2 and ds.classes == ["cat", "dog"] and ds[1][1] == 1
    with pytest.raises(DatasetError, match="train/<class_name>"):
        create_dataset("imagenet", str(tmp_path), "train")


def test_split_by_number_hand_computed():
    # 10 events, T=3: frames take 3, 3 and 4 (remainder into the last), polarity -> channel
    ev = {"t": np.arange(10), "x": np.array([0, 1, 0, 1, 1, 1, 0, 0, 1, 1]), "y": np.zeros(10, int),
          "p": np.array([1, 0, 1, 1, 1, 0, 0, 0, 1, 1])}
    fr = integrate_frames(ev, 3, 1, 2)
    assert fr.shape == (3, 2, 1, 2) and fr.sum(axis=(1, 2, 3)).tolist() == [3, 3, 4]
    assert fr[0, 1, 0].tolist() == [2, 0] and fr[0, 0, 0].tolist() == [0, 1]
    assert fr[2, 1, 0].tolist() == [0, 2] and fr[2, 0, 0].tolist() == [2, 0]
    assert integrate_frames({k: v[:2] for k, v in ev.items()}, 3, 1, 2).sum(axis=(1, 2, 3)).tolist() == [0, 0, 2]
    with pytest.raises(ValueError, match="outside the 2x1 sensor"):
        integrate_frames({**ev, "x": ev["x"] + 1}, 3, 1, 2)


def _write_npz(path, n, seed, size=128):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, t=np.sort(rng.integers(0, 10**6, n)), x=rng.integers(0, size, n), y=rng.integers(0, size, n),
             p=rng.integers(0, 2, n))


def test_gesture_spikingjelly_layout_and_cache(tmp_path):
    for lab in (0, 3, 10):
        _write_npz(tmp_path / "events_np" / "test" / str(lab) / "u01.npz", 1000 + lab, lab)
    ds = create_dataset("gesture", str(tmp_path), "test", T=4)
    x, y = ds[1]
    assert x.shape == (4, 2, 128, 128) and y == 3 and x.sum() == 1003 and x.dtype == torch.float32
    assert len(list(ds.cache.glob("*.npy"))) == 1
    ds8 = create_dataset("gesture", str(tmp_path), "test", T=8)
    assert ds8.cache != ds.cache and ds8[1][0].shape[0] == 8  # parameters key the cache
    assert torch.equal(create_dataset("gesture", str(tmp_path), "test", T=4)[1][0], x)  # served from cache


def test_gesture_tonic_layout_and_malformed(tmp_path):
    d = tmp_path / "DVSGesture" / "ibmGestureTrain" / "user01_fluorescent"
    d.mkdir(parents=True)
    a = np.array([[1, 2, 1, 5], [3, 4, 0, 6], [5, 6, 1, 7]])
    np.save(d / "7.npy", a)
    x, y = create_dataset("gesture", str(tmp_path), "train", T=3)[0]
    assert y == 7 and x[0, 1, 2, 1] == 1 and x[1, 0, 4, 3] == 1 and x[2, 1, 6, 5] == 1
    np.save(d / "7.npy", a[:, :3])
    with pytest.raises(DatasetError, match="expected an \\(N, 4\\) array"):
        create_dataset("gesture", str(tmp_path), "train", T=3, cache_dir=tmp_path / "c2")[0]
    bad = tmp_path / "b" / "events_np" / "train" / "1" / "x.npz"
    bad.parent.mkdir(parents=True)
    np.savez(bad, t=np.arange(3), x=np.arange(3))
    with pytest.raises(DatasetError, match="no \\['y', 'p'\\]"):
        create_dataset("gesture", str(tmp_path / "b"), "train", T=2)[0]
    with pytest.raises(DatasetError, match="events_np"):
        create_dataset("gesture", str(tmp_path / "nothing"), "train", T=2)


def test_cifar10_dvs_split_and_resize(tmp_path):
    from spikedriven.data.events import CIFAR10_CLASSES

    for c in CIFAR10_CLASSES:
        for i in range(11):
            _write_npz(tmp_path / "events_np" / c / f"{c}_{i}.npz", 50, i)
    tr = create_dataset("cifar10-dvs", str(tmp_path), "train", T=5)
    te = create_dataset("cifar10-dvs", str(tmp_path), "test", T=5)
    assert len(tr) == 10 * 10 and len(te) == 10 * 1  # ceil(0.9 * 11) = 10 per class for training
    assert te.files[0].name == "airplane_9.npz"  # sorted order: ..., _10 < _2: last in order goes to test
    x, _ = te[0]
    # bilinear 128 -> 64 averages each 2x2 block, so the total event mass is divided by 4
    assert x.shape == (5, 2, 64, 64) and abs(x.sum().item() - 50 / 4) < 1e-4


def test_tet_folder(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        for i in range(2):
            torch.save((torch.rand(2, 48, 48, 10), i + 3), tmp_path / split / f"{i}.pt")
    x, y = create_dataset("cifar10-dvs-tet", str(tmp_path), "test", T=10)[1]
    assert x.shape == (10, 2, 64, 64) and y == 4


def test_simulator_polarities_determinism_and_event_path(tmp_path):
    img = np.zeros((28, 28), np.uint8)
    img[8:20, 10:18] = 255
    ev1, ev2 = image_to_events(img, rng=np.random.default_rng(0)), image_to_events(img, rng=np.random.default_rng(0))
    assert all(np.array_equal(ev1[k], ev2[k]) for k in ev1)
    assert set(np.unique(ev1["p"])) == {0, 1} and np.all(np.diff(ev1["t"]) >= 0) and len(ev1["t"]) > 100
    write_simulated_dataset(np.stack([img, img[::-1]]), np.array([2, 5]), tmp_path, "train")
    assert (tmp_path / "SIMULATED_EVENTS.txt").is_file()
    ds = create_dataset("sim-fashion-mnist-dvs", str(tmp_path), "train", T=10)
    x, y = ds[0]
    assert x.shape == (10, 2, 34, 34) and y == 2 and x[:, 0].sum() > 0 and x[:, 1].sum() > 0


def test_interrupted_simulation_leaves_no_partial_split(tmp_path, monkeypatch):
    import spikedriven.data.simulate as sim

    img = np.zeros((28, 28), np.uint8)
    img[8:20, 10:18] = 255
    calls = {"n": 0}
    real = sim.image_to_events

    def dies_on_second(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(sim, "image_to_events", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        write_simulated_dataset(np.stack([img, img]), np.array([1, 3]), tmp_path, "train")
    assert not (tmp_path / "events_np" / "train").exists()  # only the hidden staging folder
    monkeypatch.setattr(sim, "image_to_events", real)
    write_simulated_dataset(np.stack([img, img]), np.array([1, 3]), tmp_path, "train")
    files = sorted(p.relative_to(tmp_path / "events_np").as_posix() for p in tmp_path.rglob("*.npz"))
    assert files == ["train/1/0.npz", "train/3/1.npz"]


def test_no_download_and_unknown():
    with pytest.raises(RuntimeError, match="never downloads"):
        create_dataset("cifar10", download=True)
    with pytest.raises(KeyError, match="unknown dataset"):
        create_dataset("mnist")
    with pytest.raises(ValueError, match="pass T"):
        create_dataset("gesture", "/nonexistent")


class _RunsCode:
    """A pickle payload that runs a shell command when unpickled (what a hostile dataset file would hold)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_cifar_pickle_that_runs_code_is_refused(tmp_path, protocol):
    from spikedriven.data.static import UnsafePickleError

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    marker = tmp_path / "pwned"
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _RunsCode(marker)}
    with open(d / "test_batch", "wb") as f:
        pickle.dump(batch, f, protocol=protocol)
    with pytest.raises(UnsafePickleError, match="posix.system|os.system|nt.system"):
        create_dataset("cifar10", str(tmp_path), "test")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_real_format_every_protocol(tmp_path, protocol):
    # protocol 2 writes bytes through _codecs.encode and arrays through numpy's _reconstruct (the release's form)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [3, 4], b"data": data,
             b"filenames": [b"a.png", b"b.png"]}
    with open(d / "test_batch", "wb") as f:
        pickle.dump(batch, f, protocol=protocol)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}, f, protocol=protocol)
    ds = create_dataset("cifar10", str(tmp_path), "test")
    assert [ds[i][1] for i in range(2)] == [3, 4] and ds.classes[3] == "c3"
    assert np.asarray(ds[1][0])[0, 0, 0] == data[1, 0]


@pytest.mark.parametrize("bad, msg", [
    ({b"data": np.zeros((1, 3072), np.float32), b"labels": [0]}, "uint8"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, "0..9"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [-1]}, "0..9"),
    ([1, 2, 3], "is a dict"),
])
def test_cifar_malformed_batches(tmp_path, bad, msg):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    with open(d / "test_batch", "wb") as f:
        pickle.dump(bad, f)
    with pytest.raises(DatasetError, match=msg):
        create_dataset("cifar10", str(tmp_path), "test")
    (d / "test_batch").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(DatasetError, match="cannot read CIFAR batch"):
        create_dataset("cifar10", str(tmp_path), "test")


def test_polarity_minus_one_is_the_off_channel():
    """Recordings code polarity as 0/1 or as -1/+1: OFF events (0 or -1) count in channel 0, ON (1) in channel 1."""
    import numpy as np

    from spikedriven.data.events import count_frames

    x, y = np.array([0, 1, 1, 2]), np.array([0, 0, 1, 1])
    for off in (0, -1):
        p = np.array([1, off, off, 1])
        f = count_frames(x, y, p, [0, 4], 2, 3)
        assert f.shape == (1, 2, 2, 3)
        assert f[0, 0].sum() == 2 and f[0, 1].sum() == 2
        assert f[0, 0, 0, 1] == 1 and f[0, 0, 1, 1] == 1 and f[0, 1, 0, 0] == 1 and f[0, 1, 1, 2] == 1
