"""Hostile and careless input (issue 15): files written here by the tests themselves.

What is asserted, for every case: no code in a file ever runs; the user never sees a traceback (one line on
stderr and a non-zero exit); no finished or concurrent run loses its files; best.pt always holds the best model's
weights, also when the process is killed in the middle of any checkpoint write, and resuming then ends exactly
where an uninterrupted run ends. docs/reliability.md maps each promise to the test here that proves it.
"""
from __future__ import annotations

import gzip
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from spikedriven.checkpoint import (CheckpointError, atomic_save, load_checkpoint, load_into_model,
                                    save_safetensors)
from spikedriven.cli import main
from spikedriven.data import DatasetError, create_dataset
from spikedriven.data.events import EventFrameDataset, read_frames_npz, validate_events
from spikedriven.training.recipe import SCHEMA, resolve_recipe
from spikedriven.training.report import RunFolderError, RunLock, make_run_dir

pytestmark = pytest.mark.usefixtures("reference_lif")  # tests/conftest.py; subprocesses inherit the variable

SRC = Path(__file__).resolve().parent.parent / "src"


# ------------------------------------------------------------------------------------------- helpers
class Payload:
    """Pickled, it asks the loader to call os.mkdir(marker): the marker folder appears iff code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run ``spikedriven ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err, *needles) -> str:
    """Assert a refused command: non-zero exit, no traceback, exactly one error line (warnings aside)."""
    assert rc not in (0, None), err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("spikedriven: warning:")]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{err}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def tiny(out, name, *extra) -> list[str]:
    """`spikedriven train` on the digits recipe with a tiny model and data (about a second of training)."""
    return ["train", "--dim", "16", "--num-heads", "2", "--T", "2", "--max-train-samples", "64",
            "--max-eval-samples", "64", "-b", "16", "--epochs", "2", "--warmup-epochs", "0", "--threads", "1",
            "--no-progress", "--no-tensorboard", "--no-plot", "--no-summary", "--eval-metric", "loss",
            "--output", str(out), "--experiment", name, *map(str, extra)]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished tiny run (its folder), shared by the tests that need real checkpoints."""
    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPIKEDRIVEN_LIF_BACKEND", "torch")
        assert main(tiny(out, "done")) == 0
    return out / "done"


# ------------------------------------------------------------------------------------------- no code runs
def _evil_files(d: Path, marker: Path) -> dict[str, Path]:
    """A malicious pickle in every format the package reads."""
    d.mkdir(parents=True, exist_ok=True)
    pay = Payload(marker)
    files = {}
    files["checkpoint .pt (zip)"] = d / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": pay}, files["checkpoint .pt (zip)"])
    files["checkpoint .pth.tar (legacy)"] = d / "evil.pth.tar"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": pay}, files["checkpoint .pth.tar (legacy)"],
               _use_new_zipfile_serialization=False)
    files["plain pickle .pth"] = d / "evil.pth"
    files["plain pickle .pth"].write_bytes(pickle.dumps({"state_dict": pay}, protocol=2))
    cif = d / "cifar" / "cifar-10-batches-py"
    cif.mkdir(parents=True)
    (cif / "test_batch").write_bytes(pickle.dumps({b"data": pay, b"labels": [0]}, protocol=2))
    files["CIFAR batch pickle"] = cif / "test_batch"
    obj = np.array([pay, 1], dtype=object)
    sj = d / "gesture" / "events_np" / "test" / "0"
    sj.mkdir(parents=True)
    np.savez(sj / "a.npz", t=obj, x=np.zeros(2, np.int64), y=np.zeros(2, np.int64), p=np.zeros(2, np.int64))
    files["events .npz (spikingjelly)"] = sj / "a.npz"
    tonic = d / "tonic" / "DVSGesture" / "ibmGestureTest" / "user01_led"
    tonic.mkdir(parents=True)
    np.save(tonic / "0.npy", obj, allow_pickle=True)
    files["events .npy (tonic)"] = tonic / "0.npy"
    tet = d / "tet" / "test"
    tet.mkdir(parents=True)
    torch.save((pay, 0), tet / "0.pt")
    files["cifar10-dvs-tet sample .pt"] = tet / "0.pt"
    np.savez(d / "frames.npz", frames=obj)
    files["event frames .npz (infer)"] = d / "frames.npz"
    run = d / "run"
    run.mkdir()
    torch.save({"recipe": pay, "next_epoch": 1}, run / "last.pt")
    files["resume last.pt"] = run / "last.pt"
    (d / "evil.yml").write_text(f"lr: !!python/object/apply:os.mkdir ['{marker}']\n")
    files["YAML recipe"] = d / "evil.yml"
    return files


def test_no_malicious_file_runs_code_in_the_library(tmp_path):
    marker = tmp_path / "PWNED"
    f = _evil_files(tmp_path / "evil", marker)
    readers = {
        "checkpoint .pt (zip)": lambda: load_checkpoint(f["checkpoint .pt (zip)"]),
        "checkpoint .pth.tar (legacy)": lambda: load_checkpoint(f["checkpoint .pth.tar (legacy)"]),
        "plain pickle .pth": lambda: load_checkpoint(f["plain pickle .pth"]),
        "CIFAR batch pickle": lambda: create_dataset("cifar10", str(tmp_path / "evil" / "cifar"), "test"),
        "events .npz (spikingjelly)": lambda: create_dataset("gesture", str(tmp_path / "evil" / "gesture"), "test",
                                                             T=2, cache_dir=tmp_path / "c1")[0],
        "events .npy (tonic)": lambda: create_dataset("gesture", str(tmp_path / "evil" / "tonic"), "test", T=2,
                                                      cache_dir=tmp_path / "c2")[0],
        "cifar10-dvs-tet sample .pt": lambda: create_dataset("cifar10-dvs-tet", str(tmp_path / "evil" / "tet"),
                                                             "test", T=2)[0],
        "event frames .npz (infer)": lambda: read_frames_npz(f["event frames .npz (infer)"]),
        "resume last.pt": lambda: load_checkpoint(f["resume last.pt"]),
        "YAML recipe": lambda: resolve_recipe(f["YAML recipe"]),
    }
    assert readers.keys() == f.keys()
    for what, read in readers.items():
        with pytest.raises((CheckpointError, DatasetError, ValueError)) as e:
            read()
        assert not marker.exists(), f"{what}: code ran"
        assert "\n" not in str(e.value), f"{what}: {e.value}"
        assert "refused" in str(e.value) or "never run" in str(e.value), f"{what}: {e.value}"


def test_frame_cache_with_a_pickle_is_rebuilt_not_run(tmp_path):
    marker = tmp_path / "PWNED"
    ev = tmp_path / "a.npz"
    np.savez(ev, t=np.arange(20), x=np.arange(20) % 8, y=np.arange(20) % 8, p=np.arange(20) % 2)
    ds = EventFrameDataset([ev], [0], ["0"], 2, (8, 8), cache_dir=tmp_path / "cache")
    good = ds.frames(0)
    cached = ds._cache_file(0)
    assert cached.is_file()
    np.save(cached, np.array([Payload(marker)], dtype=object), allow_pickle=True)  # poisoned cache entry
    again = EventFrameDataset([ev], [0], ["0"], 2, (8, 8), cache_dir=tmp_path / "cache").frames(0)
    assert torch.equal(good, again) and not marker.exists()
    assert np.load(cached).dtype == np.float32  # rewritten with real frames


def test_no_malicious_file_runs_code_through_the_commands(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    f = _evil_files(tmp_path / "evil", marker)
    runs = [
        ("eval", "--checkpoint", f["checkpoint .pt (zip)"]),
        ("convert", f["plain pickle .pth"], tmp_path / "x.safetensors"),
        ("train", "--resume", f["resume last.pt"].parent),
        ("train", "--init-from", f["checkpoint .pth.tar (legacy)"], "--output", tmp_path / "o"),
        ("train", "-c", f["YAML recipe"]),
        ("infer", "--model", "sdt_digits_1_64", "--engine", "dense", "--data", f["event frames .npz (infer)"]),
    ]
    for args in runs:
        rc, _, err = cli(capsys, *args)
        one_line_error(rc, err)
        assert not marker.exists(), f"{args}: code ran"


# ------------------------------------------------------------------------------------------- damaged files
def _damaged_checkpoints(d: Path, good: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    raw = good.read_bytes()
    st = d / "good.safetensors"
    save_safetensors(load_checkpoint(good)[0], st)
    sraw = st.read_bytes()
    files = {"zero.pt": b"", "random.pt": os.urandom(4096), "truncated.pt": raw[: len(raw) // 2],
             "text.pt": b"hello\n", "zero.safetensors": b"", "random.safetensors": os.urandom(4096),
             "truncated.safetensors": sraw[: len(sraw) // 2], "header.safetensors": struct.pack("<Q", 2**40) + b"{}"}
    out = {}
    for name, data in files.items():
        (d / name).write_bytes(data)
        out[name] = d / name
    (d / "dir.safetensors").mkdir()
    out["dir.safetensors"] = d / "dir.safetensors"
    torch.save([1, 2, 3], d / "list.pt")
    out["list.pt"] = d / "list.pt"
    torch.save({"state_dict": {"w": "not a tensor"}}, d / "strings.pt")
    out["strings.pt"] = d / "strings.pt"
    return out


def test_damaged_checkpoints_are_one_line_errors(tmp_path, capsys, finished_run):
    files = _damaged_checkpoints(tmp_path / "bad", finished_run / "last.pt")
    for name, path in files.items():
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
        assert "\n" not in str(e.value) and "Original error" not in str(e.value), name
        for args in (("eval", "--checkpoint", path), ("convert", path, tmp_path / "c.safetensors"),
                     ("train", "--resume", path)):
            rc, _, err = cli(capsys, *args)
            one_line_error(rc, err, path.name)
    assert not (tmp_path / "c.safetensors").exists()


# ------------------------------------------------------------------------------------------- wrong weights
@pytest.mark.parametrize("case", ["int32", "int8", "bool", "float num_batches_tracked", "NaN", "inf"])
def test_wrong_kind_or_nonfinite_weights_are_refused(tmp_path, capsys, case):
    from spikedriven import create_model

    model = create_model("sdt_digits_1_64")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    w = "head.weight"
    if case in ("int32", "int8", "bool"):
        sd = {k: (v.to(getattr(torch, case)) if v.is_floating_point() else v) for k, v in sd.items()}
    elif case == "float num_batches_tracked":
        sd = {k: (v.float() if k.endswith("num_batches_tracked") else v) for k, v in sd.items()}
    else:
        sd[w][0, 0] = float("nan") if case == "NaN" else float("inf")
    path = tmp_path / "w.safetensors"
    save_safetensors(sd, path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="wrong kind|NaN/inf"):
        load_into_model(model, path)
    assert same_weights(before, model.state_dict())  # nothing was loaded
    rc, _, err = cli(capsys, "eval", "--model", "sdt_digits_1_64", "--checkpoint", path)
    one_line_error(rc, err, "refusing to load")


def test_missing_keys_need_an_explicit_partial_load(tmp_path, capsys, finished_run):
    sd = load(finished_run / "best.pt")["state_dict"]
    del sd["head.weight"]
    foreign = tmp_path / "foreign.pth.tar"
    torch.save({"state_dict": sd, "epoch": 0}, foreign)
    out = tmp_path / "runs"
    rc, _, err = cli(capsys, *tiny(out, "resumed", "--resume", foreign))
    one_line_error(rc, err, "missing keys", "head.weight", "--partial")
    rc, _, err = cli(capsys, *tiny(out, "strict", "--init-from", foreign))
    one_line_error(rc, err, "missing keys", "head.weight")
    rc, stdout, err = cli(capsys, *tiny(out, "partial", "--init-from", foreign, "--partial", "--epochs", "1"))
    assert rc == 0, err
    assert "NOT loaded" in stdout and "head.weight" in stdout


# ------------------------------------------------------------------------------------------- bad values
BAD_VALUES = [
    (["--clip-grad", "-1"], "clip_grad"), (["--max-train-samples", "-5"], "max_train_samples"),
    (["--max-train-samples", "0"], "max_train_samples"), (["--checkpoint-every", "-1"], "checkpoint_every"),
    (["--eval-metric", "bogus"], "eval_metric"), (["--epochs", "0"], "epochs"), (["--epochs", "-1"], "epochs"),
    (["--smoothing", "2"], "smoothing"), (["--lr", "inf"], "lr"), (["--lr", "nan"], "lr"), (["--lr", "0"], "lr"),
    (["--set", "lr=[1,"], "lr=[1,"), (["--set", "lr=[1, 2]"], "lr"), (["--batch-size", "0"], "batch_size"),
    (["--workers", "-2"], "workers"), (["--hflip", "1.5"], "hflip"), (["--scale", "0.9", "0.1"], "scale"),
    (["--opt", "sgdd"], "opt"), (["--sched", "cosinus"], "sched"), (["--model", "no_such_model"], "model"),
    (["--attn-mode", "magic"], "attn_mode"), (["--pooling-stat", "0012"], "pooling_stat"),
    (["--dataset", "mnist"], "dataset"), (["--layer", "2.5"], "layer"), (["--set", "layer=2.5"], "layer"),
    (["--set", "TET=maybe"], "TET"), (["--experiment", "../elsewhere"], "experiment"),
    (["--time-limit", "0"], "time_limit"), (["--mean", "0.1", "0.2"], "mean"), (["--std", "0"], "std"),
    (["--device", "gpu"], "device"), (["--aa", "magic"], "aa"), (["--set", "no_such_key=1"], "no_such_key"),
    (["--epochs", "abc"], "--epochs"),
]


@pytest.mark.parametrize("args, key", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_recipe_values_are_refused_where_they_enter(tmp_path, capsys, args, key):
    rc, _, err = cli(capsys, "train", "--output", tmp_path, *args)
    one_line_error(rc, err, key)
    assert not list(tmp_path.iterdir())  # refused before any run folder was made


def test_every_recipe_key_has_a_type_and_allowed_values():
    free = {"data_dir", "initial_checkpoint", "resume", "kd_teacher_checkpoint"}  # paths, checked when opened
    for key, (default, typ, help_, allowed) in SCHEMA.items():
        assert typ.replace("opt_", "") in ("int", "float", "str", "bool", "floats", "ints", "strs"), key
        if typ.replace("opt_", "") != "bool" and key not in free:
            assert allowed is not None, f"{key} has no range or choices"
        assert help_, key
        if default is not None and allowed is not None:  # the defaults satisfy their own rules
            assert allowed.ok(default), key


@pytest.mark.parametrize("args, needle", [(["--max-samples", "-3"], "max_eval_samples"),
                                          (["--max-samples", "0"], "max_eval_samples"),
                                          (["--batch-size", "0"], "val_batch_size")])
def test_eval_values_are_checked(capsys, finished_run, args, needle):
    rc, _, err = cli(capsys, "eval", "--checkpoint", finished_run / "best.pt", "--no-progress", *args)
    one_line_error(rc, err, needle)


def test_other_commands_check_their_values(tmp_path, capsys):
    rc, _, err = cli(capsys, "verify", "--model", "sdt_digits_1_64", "--batch", "0")
    one_line_error(rc, err, "--batch")
    rc, _, err = cli(capsys, "viz", "raster", "--model", "sdt_digits_1_64", "--index", "99999",
                     "--out", tmp_path / "r.png")
    one_line_error(rc, err, "--index 99999")
    text = tmp_path / "hostname"
    text.write_text("not an image\n")
    rc, _, err = cli(capsys, "viz", "rates", "--model", "sdt_digits_1_64", "--image", text,
                     "--out", tmp_path / "r.png")
    one_line_error(rc, err, "hostname")
    assert not (tmp_path / "r.png").exists()


# ------------------------------------------------------------------------------------------- data formats
def _write_idx(path, arr):
    head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


@pytest.mark.parametrize("images, labels, needle", [
    (np.zeros((3, 10, 10)), np.array([1, 2, 3]), "28, 28"),
    (np.zeros((0, 28, 28)), np.zeros(0), "no image"),
    (np.zeros((3, 28, 28)), np.array([1, 2]), "3 images but 2 labels"),
])
def test_fashion_mnist_files_must_match_the_format(tmp_path, images, labels, needle):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DatasetError, match=needle):
        create_dataset("fashion-mnist", str(tmp_path), "test")


GOOD_EVENTS = {"t": np.arange(6), "x": np.arange(6), "y": np.arange(6), "p": np.arange(6) % 2}


@pytest.mark.parametrize("change, needle", [
    ({"t": np.array([0.0, np.nan, 2, 3, 4, 5])}, "NaN"),
    ({"x": np.array([0.5, 1, 2, 3, 4, 5])}, "non-integer"),
    ({"p": np.arange(5) % 2}, "differ in length"),
    ({"p": np.full(6, 5)}, "polarity"),
    ({"x": np.arange(6) + 100}, "outside"),
    ({"t": np.array(["a"] * 6)}, "numbers"),
])
def test_events_must_match_the_format(change, needle):
    with pytest.raises(DatasetError, match=needle):
        validate_events({**GOOD_EVENTS, **change}, 8, 8, "sample")
    assert validate_events(GOOD_EVENTS, 8, 8)["x"].dtype == np.int64


def test_event_files_damaged_or_inconsistent(tmp_path):
    root = tmp_path / "g" / "events_np" / "test" / "0"
    root.mkdir(parents=True)
    np.savez(root / "a.npz", t=np.arange(10), x=np.arange(10), y=np.arange(10), p=np.arange(4) % 2)
    ds = create_dataset("gesture", str(tmp_path / "g"), "test", T=2, cache_dir=tmp_path / "c")
    with pytest.raises(DatasetError, match="differ in length"):
        ds[0]
    raw = (root / "a.npz").read_bytes()
    (root / "a.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="truncated|cannot read"):
        ds[0]
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(DatasetError, match="empty"):
        read_frames_npz(tmp_path / "empty.npz")
    np.savez(tmp_path / "f.npz", frames=np.zeros((4, 2, 2, 8, 8)), labels=np.array([3]))
    with pytest.raises(DatasetError, match="one per sample"):
        read_frames_npz(tmp_path / "f.npz")


def test_errors_in_dataloader_workers_keep_their_one_line_message(tmp_path):
    from torch.utils.data import DataLoader

    from spikedriven.cli import one_line

    root = tmp_path / "g" / "events_np" / "test" / "0"
    root.mkdir(parents=True)
    np.savez(root / "a.npz", t=np.arange(10), x=np.arange(10), y=np.arange(10), p=np.full(10, 7))
    ds = create_dataset("gesture", str(tmp_path / "g"), "test", T=2, cache_dir=tmp_path / "c")
    with pytest.raises(DatasetError) as e:
        next(iter(DataLoader(ds, batch_size=1, num_workers=1)))
    msg = str(e.value)
    assert "\n" not in msg and "worker" not in msg and "polarity" in msg and "a.npz" in msg
    wrapped = RuntimeError("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           "call last):\n  File \"x.py\", line 1, in f\n    g()\nspikedriven.data.static."
                           "DatasetError: /d/a.npz: polarity values must be 0/1\n")
    assert one_line(wrapped) == "/d/a.npz: polarity values must be 0/1"


def test_labels_beyond_the_model_classes_are_a_message(tmp_path, capsys):
    rc, _, err = cli(capsys, *tiny(tmp_path, "labels", "--num-classes", "5"))
    one_line_error(rc, err, "outside 0..4", "num_classes")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_model_accepts_every_floating_input_dtype(dtype):
    from spikedriven import create_model

    model = create_model("sdt_digits_1_64").eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        ref, out = model(x), model(x.to(dtype))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    if dtype == torch.float64:
        torch.testing.assert_close(out, ref)
    with pytest.raises(TypeError, match="floating-point input"):
        model(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))


# ------------------------------------------------------------------------------------------- the CLI itself
def test_the_cli_never_shows_a_traceback(monkeypatch, capsys):
    from spikedriven.cli import models as models_cmd

    for exc, code, needle in ((FloatingPointError("loss is nan at epoch 3"), 2, "loss is nan"),
                              (AssertionError("internal"), 1, "SPIKEDRIVEN_TRACEBACK=1"),
                              (KeyboardInterrupt(), 130, "interrupted")):
        def boom(args, exc=exc):
            raise exc

        monkeypatch.setattr(models_cmd, "run", boom)  # the parser is built on each call: it picks this up
        rc, _, err = cli(capsys, "models")
        assert rc == code
        one_line_error(rc, err, needle)
    monkeypatch.setenv("SPIKEDRIVEN_TRACEBACK", "1")
    with pytest.raises(KeyboardInterrupt):
        main(["models"])


def test_train_help_shows_the_values_that_apply_and_no_double_negatives(capsys):
    rc, out, _ = cli(capsys, "train", "--help")
    assert rc == 0
    flat = " ".join(out.split())
    assert "--no-no-" not in flat and "--no-aug" in flat and "--no-resume-opt" in flat
    assert "else 0.01; without -c: 0.002 (digits recipe)" in flat  # lr
    assert "else sgd; without -c: adamw (digits recipe)" in flat  # opt
    assert "else 200; without -c: 14 (digits recipe)" in flat  # epochs
    assert "without -c: set by its model sdt_digits_1_64" in flat  # layer


# ------------------------------------------------------------------------------------------- run folders
def test_default_run_folder_names_never_collide(tmp_path, monkeypatch):
    from spikedriven.training import report

    monkeypatch.setattr(report.time, "strftime", lambda fmt: "20240101-000000")  # everyone starts "at once"
    got, barrier = [], threading.Barrier(8)

    def start():
        barrier.wait()
        got.append(make_run_dir(str(tmp_path), "", "digits"))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 8 and all(p.is_dir() for p in got)


def test_run_lock_is_exclusive_and_stale_locks_are_taken_over(tmp_path):
    with RunLock(tmp_path) as held:
        with pytest.raises(RunFolderError, match="in use by another run .*pid"):
            RunLock(tmp_path).acquire()
        assert held.fd is not None
    assert not (tmp_path / ".spikedriven.lock").exists()  # released on exit
    (tmp_path / ".spikedriven.lock").write_text("pid 999999 on a-dead-host, started long ago\n")  # a killed run
    lock = RunLock(tmp_path).acquire()
    assert lock.stale and "999999" in lock.stale
    lock.release()


DRIVER = r'''
import os, signal, sys, time
from pathlib import Path
mode, a, b = sys.argv[1:4]
if mode == "kill":  # SIGKILL this process half-way through the b-th write of the file named a
    import spikedriven.checkpoint as ck
    real, seen = ck.atomic_write_bytes, {}
    def patched(path, write_fn):
        name = Path(path).name
        seen[name] = seen.get(name, 0) + 1
        if name != a or seen[name] != int(b):
            return real(path, write_fn)
        def half_then_die(tmp):
            write_fn(tmp)
            os.truncate(tmp, os.path.getsize(tmp) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, half_then_die)
    ck.atomic_write_bytes = patched
elif mode == "hold":  # once the run folder is claimed, say so in file b and wait for file a
    from spikedriven.training import loop
    real_epoch = loop.Trainer._run_epoch
    def held(self, stop):
        Path(b).write_text("claimed")
        while not os.path.exists(a):
            time.sleep(0.05)
        return real_epoch(self, stop)
    loop.Trainer._run_epoch = held
from spikedriven.cli import main
sys.exit(main(sys.argv[4:]))
'''


def _driver(tmp_path, *args) -> subprocess.Popen:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300):
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"driver ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        assert time.time() - t0 < timeout, "driver did not start"
        time.sleep(0.1)


def _digest(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_concurrent_and_finished_runs_keep_their_folders(tmp_path, capsys):
    """Run A holds its folder (a separate process); B with the same --experiment is refused while A runs and
    after A finished; A's files are exactly what A wrote."""
    out, go, claimed = tmp_path / "runs", tmp_path / "go", tmp_path / "claimed"
    a = _driver(tmp_path, "hold", go, claimed, *tiny(out, "shared"))
    try:
        _wait_for(claimed, a)
        rc, _, err = cli(capsys, *tiny(out, "shared", "--seed", "2"))
        one_line_error(rc, err, "in use by another run", "another --experiment")
        go.write_text("go")
        assert a.wait(timeout=300) == 0, a.stderr.read()[-2000:]
    finally:
        if a.poll() is None:
            a.kill()
    folder = out / "shared"
    before = _digest(folder)
    assert {"last.pt", "best.pt", "metrics.csv", "config.yaml"} <= before.keys()
    rc, _, err = cli(capsys, *tiny(out, "shared", "--seed", "2"))
    one_line_error(rc, err, "already holds a run", f"--resume {folder}", "another --experiment")
    assert _digest(folder) == before
    assert not (folder / ".spikedriven.lock").exists()


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_save({"a": torch.ones(1)}, tmp_path / "a.pt")
        save_safetensors({"a": torch.ones(1)}, tmp_path / "a.safetensors")
        (tmp_path / "plain.txt").write_text("x")
        os.umask(0o077)
        atomic_save({"a": torch.ones(1)}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    mode = lambda p: (tmp_path / p).stat().st_mode & 0o777  # noqa: E731
    assert mode("a.pt") == mode("a.safetensors") == mode("plain.txt") == 0o644
    assert mode("b.pt") == 0o600  # the umask is respected, not replaced


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, capsys, finished_run):
    """A write that fails part-way (here a file-size limit, as a full disk does) says so in one line and leaves
    the previous last.pt intact and resumable."""
    import resource
    import shutil

    folder = tmp_path / "done"
    shutil.copytree(finished_run, folder)
    before = (folder / "last.pt").read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        rc, _, err = cli(capsys, "train", "--resume", folder, "--epochs", "4", "--no-progress")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    line = one_line_error(rc, err, "could not write", "is unchanged")
    assert "disk may be full" in line or "disk is full" in line or "size limit" in line
    assert "enforce fail" not in line
    assert (folder / "last.pt").read_bytes() == before
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------- kill -9 mid-write
@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted run the killed ones must end as (3 epochs, checkpoint every 3 steps)."""
    out = tmp_path_factory.mktemp("ref")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPIKEDRIVEN_LIF_BACKEND", "torch")
        assert main(tiny(out, "ref", "--epochs", "3", "--checkpoint-every", "3")) == 0
    folder = out / "ref"
    hist = load(folder / "last.pt")["history"]
    losses = [h["eval_loss"] for h in hist]
    assert all(a > b for a, b in zip(losses, losses[1:])), f"the reference run must improve every epoch: {losses}"
    return folder


# every checkpoint write of the reference run: (file, n-th write of that file). 4 steps per epoch and
# checkpoint_every=3: last.pt at steps 3, 4 (epoch end), 6, 8 (end), 9, 12 (end); best.pt and best.safetensors at
# each epoch end (the eval loss improves every epoch), each before that epoch's last.pt
WRITES = ([("last.pt", i) for i in range(1, 7)] + [("best.pt", i) for i in (1, 2, 3)]
          + [("best.safetensors", i) for i in (1, 2, 3)])
FAST = {("best.pt", 3), ("last.pt", 6)}  # the final best.pt and last.pt writes (the reported loss)


@pytest.mark.parametrize("name, nth", [pytest.param(n, i, marks=() if (n, i) in FAST else pytest.mark.slow)
                                       for n, i in WRITES], ids=[f"{n}#{i}" for n, i in WRITES])
def test_kill_during_a_checkpoint_write(tmp_path, capsys, reference_run, name, nth):
    out = tmp_path / "runs"
    args = tiny(out, "ref", "--epochs", "3", "--checkpoint-every", "3")
    proc = _driver(tmp_path, "kill", name, nth, *args)
    proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, f"the write {name}#{nth} never happened"
    folder = out / "ref"
    assert [p for p in folder.iterdir() if p.name.startswith(".spikedriven-") and p.name.endswith(".tmp")], \
        "the kill left no temporary file"
    last = load(folder / "last.pt") if (folder / "last.pt").exists() else None
    if last is not None and last["best_epoch"] >= 0:  # last.pt never claims a best that best.pt does not hold
        best = load(folder / "best.pt")
        assert best["best_epoch"] >= last["best_epoch"]
    (folder / ".notes.20241201.tmp").write_bytes(b"mine")  # a user's file: only the tool's own temps are removed
    rc, stdout, err = cli(capsys, "train", "--resume", folder, "--no-progress")
    assert rc == 0, err
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == [".notes.20241201.tmp"], \
        "stale temp files left, or a user's file deleted"
    ref_last, new_last = load(reference_run / "last.pt"), load(folder / "last.pt")
    ref_best, new_best = load(reference_run / "best.pt"), load(folder / "best.pt")
    assert same_weights(ref_last["state_dict"], new_last["state_dict"])  # resume ends as uninterrupted
    assert same_weights(ref_best["state_dict"], new_best["state_dict"])  # best.pt holds the best weights
    assert (new_best["best_epoch"], new_best["metric"]) == (ref_best["best_epoch"], ref_best["metric"])
    assert new_last["best_epoch"] == new_best["best_epoch"] == len(ref_last["history"]) - 1
    assert f"at epoch {new_best['best_epoch'] + 1}]" in stdout
    sa, sb = load_checkpoint(reference_run / "best.safetensors")[0], load_checkpoint(folder / "best.safetensors")[0]
    assert same_weights(sa, sb)
    ref_rows = (reference_run / "metrics.csv").read_text().splitlines()
    new_rows = (folder / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[:6] for r in new_rows] == [r.split(",")[:6] for r in ref_rows]  # epoch..top5


# ------------------------------------------------------------------------------------------- lost work (issue 23)
def _tree(folder: Path) -> dict:
    """Every file under ``folder`` (relative name -> bytes): what must not change."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _untitled(out, *extra) -> list[str]:
    """:func:`tiny` without --experiment: the run folder is the default, new one under ``out``."""
    args = tiny(out, "x", *extra)
    i = args.index("--experiment")
    return args[:i] + args[i + 2:]


def _new_run_folders(out: Path, before: set) -> list[Path]:
    return [p for p in out.iterdir() if p.is_dir() and p.name not in before]


def test_resume_from_a_checkpoint_that_is_not_last_pt_never_writes_in_its_folder(tmp_path, capsys, finished_run):
    """--resume runs/U/best.safetensors (and best.pt) continue in a new run folder: U keeps its best.pt, last.pt
    and its whole metrics history."""
    import shutil

    out = tmp_path / "runs"
    u = out / "U"
    shutil.copytree(finished_run, u)
    before = _tree(u)
    assert len((u / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs
    for name in ("best.safetensors", "best.pt"):
        existing = {p.name for p in out.iterdir()}
        rc, stdout, err = cli(capsys, *_untitled(out, "--resume", u / name, "--epochs", "3"))
        assert rc == 0, err
        assert _tree(u) == before, f"--resume U/{name} changed U"
        new = _new_run_folders(out, existing)
        assert len(new) == 1 and (new[0] / "last.pt").is_file(), (name, stdout)
        assert "new run folder" in stdout
    existing = {p.name for p in out.iterdir()}
    rc, _, err = cli(capsys, *_untitled(out, "--init-from", u / "best.pt", "--epochs", "1"))
    assert rc == 0, err
    assert _tree(u) == before and len(_new_run_folders(out, existing)) == 1


def test_run_folders_of_earlier_versions_are_still_run_folders(tmp_path, finished_run):
    """A run folder without the marker (written before it existed) is recognised by the trainer's config.yaml
    header; a folder whose config.yaml is a user's is not."""
    import shutil

    from spikedriven.training.report import MARKER, RunFolderError, is_run_folder, resume_source

    old = tmp_path / "old"
    shutil.copytree(finished_run, old)
    (old / MARKER).unlink()
    assert is_run_folder(old) and resume_source(old) == (old / "last.pt", old)
    (old / "config.yaml").write_text("lr: 0.1\n")
    assert not is_run_folder(old)
    with pytest.raises(RunFolderError, match="not a run folder"):
        resume_source(old)
    assert resume_source(old / "last.pt") == (old / "last.pt", None)  # a checkpoint file: a new run folder


def test_resume_from_a_file_in_a_users_folder_makes_no_run_folder_there(tmp_path, capsys, finished_run):
    """--resume some/dir/file.pth.tar: some/dir (a user's folder with its config.yaml, or another run's folder)
    is left exactly as it was; the run goes to a new folder under --output."""
    import shutil

    user = tmp_path / "some" / "dir"
    user.mkdir(parents=True)
    (user / "config.yaml").write_text("my: settings\n")
    sd = load(finished_run / "best.pt")["state_dict"]
    torch.save({"state_dict": sd, "epoch": 0}, user / "file.pth.tar")
    other = tmp_path / "runs" / "other"
    shutil.copytree(finished_run, other)
    shutil.copy(user / "file.pth.tar", other / "file.pth.tar")
    user_before = _tree(user)
    for folder in (user, other):
        before = _tree(folder)
        out = tmp_path / f"out-{folder.name}"
        rc, _, err = cli(capsys, *_untitled(out, "--resume", folder / "file.pth.tar"))
        assert rc == 0, err
        assert _tree(folder) == before and sorted(p.name for p in user.iterdir()) == ["config.yaml", "file.pth.tar"]
        (new,) = _new_run_folders(out, set())
        assert {"last.pt", "best.pt", "metrics.csv", "config.yaml"} <= {p.name for p in new.iterdir()}
    rc, _, err = cli(capsys, "train", "--resume", user)  # a folder that is not a run folder
    one_line_error(rc, err, "not a run folder", "config.yaml")
    assert _tree(user) == user_before


def test_a_folder_with_a_users_files_is_not_a_run_folder(tmp_path, capsys):
    """--experiment proj on a folder holding a user's config.yaml and .notes.20241201.tmp: refused, nothing
    overwritten or deleted; with --overwrite the run uses it, replacing only the names a run writes."""
    out = tmp_path / "runs"
    proj = out / "proj"
    proj.mkdir(parents=True)
    (proj / "config.yaml").write_text("mine: true\n")
    (proj / ".notes.20241201.tmp").write_text("my notes\n")
    before = _tree(proj)
    rc, _, err = cli(capsys, *tiny(out, "proj"))
    one_line_error(rc, err, "not a run folder", "did not make", "config.yaml", ".notes.20241201.tmp", "--overwrite")
    assert _tree(proj) == before and sorted(p.name for p in proj.iterdir()) == sorted(before)
    rc, _, err = cli(capsys, *tiny(out, "proj", "--epochs", "1", "--overwrite"))
    assert rc == 0, err
    assert (proj / ".notes.20241201.tmp").read_text() == "my notes\n"  # never deleted
    assert (proj / "last.pt").is_file() and "mine: true" not in (proj / "config.yaml").read_text()


def test_overwrite_starts_a_finished_run_over(tmp_path, capsys, finished_run):
    import shutil

    out = tmp_path / "runs"
    shutil.copytree(finished_run, out / "done")
    (out / "done" / "notes.txt").write_text("keep me\n")
    rc, _, err = cli(capsys, *tiny(out, "done", "--epochs", "1"))
    one_line_error(rc, err, "already holds a run", "--overwrite")
    rc, _, err = cli(capsys, *tiny(out, "done", "--epochs", "1", "--overwrite"))
    assert rc == 0, err
    assert len((out / "done" / "metrics.csv").read_text().splitlines()) == 2  # the new run's one epoch
    assert load(out / "done" / "last.pt")["next_epoch"] == 1
    assert (out / "done" / "notes.txt").read_text() == "keep me\n"


def test_an_output_never_replaces_an_input_or_a_fifo(tmp_path, capsys, finished_run):
    """convert cv/last.pt cv/last.pt, energy --csv/--json/--plot or viz --out naming the checkpoint read: refused
    (also with --overwrite, also through a link), the checkpoint unchanged; an output on a FIFO or a directory is
    refused, never replaced."""
    import shutil

    cv = tmp_path / "cv"
    shutil.copytree(finished_run, cv)
    last, best = cv / "last.pt", cv / "best.pt"
    before = _tree(cv)
    (tmp_path / "link.pt").symlink_to(last)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = [("convert", last, last), ("convert", last, last, "--overwrite"), ("convert", last, tmp_path / "link.pt"),
             ("energy", "--checkpoint", best, "--uniform-rate", "0.2", "--csv", best),
             ("energy", "--checkpoint", best, "--uniform-rate", "0.2", "--json", best, "--overwrite"),
             ("energy", "--checkpoint", best, "--uniform-rate", "0.2", "--plot", best),
             ("viz", "rates", "--checkpoint", best, "--data", "random", "--out", best, "--overwrite")]
    for args in cases:
        rc, _, err = cli(capsys, *args)
        one_line_error(rc, err, "is also an input of this command")
    for target, needle in ((fifo, "FIFO"), (tmp_path, "directory")):
        rc, _, err = cli(capsys, "convert", last, target, "--overwrite")
        one_line_error(rc, err, needle)
    assert _tree(cv) == before
    assert fifo.is_fifo() and (tmp_path / "link.pt").is_symlink()
    from spikedriven.outputs import OutputError, check_output

    with pytest.raises(OutputError, match="a device"):
        check_output("/dev/null", overwrite=True)


def test_outputs_need_overwrite_and_are_written_atomically(tmp_path, capsys):
    """energy --csv/--json: an existing file is replaced only with --overwrite; two outputs on one file are
    refused; a write that fails part-way (a file-size limit, as a full disk) leaves the previous files whole."""
    import resource

    energy = ("energy", "--model", "sdt_digits_1_64", "--uniform-rate", "0.2")
    csv_, js = tmp_path / "r.csv", tmp_path / "r.json"
    csv_.write_text("old csv\n")
    js.write_text("{}\n")
    rc, _, err = cli(capsys, *energy, "--csv", csv_)
    one_line_error(rc, err, "already exists", "--overwrite")
    rc, _, err = cli(capsys, *energy, "--csv", tmp_path / "a", "--json", tmp_path / "a")
    one_line_error(rc, err, "--json and --csv name the same file")
    assert not (tmp_path / "a").exists()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200, hard))
    try:
        rc, _, err = cli(capsys, *energy, "--json", js, "--csv", csv_, "--overwrite")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    one_line_error(rc, err, "could not write", "is unchanged")
    assert csv_.read_text() == "old csv\n" and js.read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.json"]  # no temporary file left
    rc, _, err = cli(capsys, *energy, "--json", js, "--csv", csv_, "--overwrite")
    assert rc == 0, err
    assert csv_.read_text().startswith("name,kind,op") and js.read_text().lstrip().startswith("{\n")


def test_stale_temp_cleanup_removes_only_the_tools_own_names(tmp_path):
    from spikedriven.outputs import atomic_write_text, remove_stale_temp_files, temp_path

    ours = temp_path(tmp_path / "last.pt")
    ours.write_bytes(b"half")
    users = [".notes.20241201.tmp", ".last.pt.k3j_9x2a.tmp", ".spikedriven-x.tmp", "metrics.csv.tmp", "a.tmp"]
    for n in users:
        (tmp_path / n).write_text("mine")
    assert ours.name.startswith(".spikedriven-last.pt.")
    assert remove_stale_temp_files(tmp_path) == [ours.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(users)
    atomic_write_text(tmp_path / "out.txt", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(users + ["out.txt"])


def test_simulated_events_never_replace_a_folder_of_recordings(tmp_path):
    from spikedriven.data import write_simulated_dataset

    mine = tmp_path / "events_np" / "train" / "0"
    mine.mkdir(parents=True)
    (mine / "0.npz").write_bytes(b"a real recording")
    img = np.zeros((2, 28, 28), np.uint8)
    with pytest.raises(FileExistsError, match="not a simulated dataset written by spikedriven"):
        write_simulated_dataset(img, np.array([1, 2]), tmp_path, "train")
    assert (mine / "0.npz").read_bytes() == b"a real recording"
    assert sorted(p.name for p in (tmp_path / "events_np").iterdir()) == ["train"]  # no staging folder left

# =========================================================================================== issue 23 (second sweep)
# Exhaustion, silently wrong results and wrong messages: tiny crafted files, no real large allocation.
def _laughs_yaml(levels: int = 9) -> str:
    """A few hundred bytes of YAML that stand for 10**levels strings once its aliases are expanded."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines + ["dim: 64"]) + "\n"


def test_yaml_billion_laughs_is_refused_quickly(tmp_path, capsys):
    from spikedriven.config import load_yaml

    f = tmp_path / "laughs.yml"
    f.write_text(_laughs_yaml())
    assert f.stat().st_size < 600
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="billion laughs"):
        load_yaml(f)
    rc, _, err = cli(capsys, "train", "-c", f, "--output", tmp_path / "runs")
    line = one_line_error(rc, err, "laughs.yml", "shared references")
    assert len(line) < 400 and time.perf_counter() - t0 < 20
    assert not (tmp_path / "runs").exists()
    # the same through --set: a value with aliases nested 7 levels (10**7 values)
    value = "[" + ", ".join(["&b0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [f"&b{i} [{', '.join([f'*b{i - 1}'] * 10)}]"
                                                                    for i in range(1, 7)]) + "]"
    rc, _, err = cli(capsys, "train", "--set", f"scale={value}", "--output", tmp_path / "runs")
    one_line_error(rc, err, "--set", "shared references")


def test_checkpoint_metadata_with_shared_references_is_refused(tmp_path, capsys):
    import argparse

    from spikedriven.checkpoint import read_checkpoint_file

    tree = ["x"] * 10
    for _ in range(30):  # 10**31 values in a 2 KB pickle: every level is one list referenced ten times
        tree = [tree] * 10
    f = tmp_path / "shared.pth.tar"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "args": argparse.Namespace(x=tree), "recipe": {"a": tree}}, f)
    assert f.stat().st_size < 10_000
    with pytest.raises(CheckpointError, match="shared references"):
        read_checkpoint_file(f)
    rc, _, err = cli(capsys, "convert", f, tmp_path / "o.safetensors")
    one_line_error(rc, err, "shared.pth.tar", "refused")
    assert not (tmp_path / "o.safetensors").exists()
    deep = []
    for _ in range(200):
        deep = [deep]
    torch.save({"state_dict": {"w": torch.zeros(2)}, "args": {"d": deep}}, f)
    with pytest.raises(CheckpointError, match="nested more than"):
        read_checkpoint_file(f)


def _run_with_deadline(fn, unblock: Path | None = None, timeout: float = 60.0):
    """``fn()`` in a thread; fails the test (after opening the FIFO for writing, to free the thread) if it has not
    returned within ``timeout`` seconds."""
    box = {}

    def target():
        try:
            box["rc"] = fn()
        except Exception as e:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        if unblock is not None:
            os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))
        th.join(10)
        pytest.fail("the command blocked on a FIFO")
    if "error" in box:
        raise box["error"]
    return box.get("rc")


def test_fifos_and_pipes_are_refused_without_blocking(tmp_path, capsys):
    fifo_pt, fifo_npz, fifo_yml, fifo_png = (tmp_path / n for n in ("w.pt", "x.npz", "c.yml", "i.png"))
    for f in (fifo_pt, fifo_npz, fifo_yml, fifo_png):
        os.mkfifo(f)
    cases = [(fifo_pt, ["forward", "--model", "sdt_digits_1_64", "--checkpoint", fifo_pt]),
             (fifo_npz, ["infer", "--model", "sdt_digits_1_64", "--data", fifo_npz]),
             (fifo_png, ["viz", "rates", "--model", "sdt_digits_1_64", "--image", fifo_png, "--out", tmp_path / "o.png"])]
    for fifo, args in cases:
        rc = _run_with_deadline(lambda a=args: main([str(x) for x in a]), fifo)
        out, err = capsys.readouterr()
        one_line_error(rc, err, str(fifo), "pipe or FIFO", "not a regular file")
    from spikedriven.config import load_yaml

    with pytest.raises(ValueError, match="not a regular file"):
        _run_with_deadline(lambda: load_yaml(fifo_yml), fifo_yml)
    # a process substitution <(...) is a pipe behind /dev/fd/N: named as such, not "empty (0 bytes)"
    r, w = os.pipe()
    try:
        rc, _, err = cli(capsys, "convert", f"/dev/fd/{r}", tmp_path / "o.safetensors")
        line = one_line_error(rc, err, "pipe", "not a regular file")
        assert "empty" not in line
    finally:
        os.close(r), os.close(w)


def _npy_bytes(shape, dtype="<f4", data: bytes = b"") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def test_array_files_are_checked_from_their_headers(tmp_path, capsys, monkeypatch):
    import zipfile

    from spikedriven.bounds import check_numpy_file

    # a deflated .npz that expands to 64x what the budget allows (the budget made small to keep the test tiny)
    monkeypatch.setenv("SPIKEDRIVEN_MAX_ARRAY_BYTES", str(2**20))
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, frames=np.zeros((64, 1, 1, 64, 64), np.float32))
    assert bomb.stat().st_size < 20_000
    rc, _, err = cli(capsys, "infer", "--model", "sdt_digits_1_64", "--data", bomb)
    one_line_error(rc, err, "bomb.npz", "expands to", "SPIKEDRIVEN_MAX_ARRAY_BYTES")
    monkeypatch.delenv("SPIKEDRIVEN_MAX_ARRAY_BYTES")
    # an .npy header claiming 10**12 float32 values, with 16 bytes of data: refused before numpy allocates
    huge = tmp_path / "huge.npz"
    with zipfile.ZipFile(huge, "w") as z:
        z.writestr("frames.npy", _npy_bytes((10**6, 1, 1, 10**3, 10**3), data=b"\0" * 16))
    rc, _, err = cli(capsys, "infer", "--model", "sdt_digits_1_64", "--data", huge)
    one_line_error(rc, err, "huge.npz", "header claims", "(1000000, 1, 1, 1000, 1000)")
    npy = tmp_path / "events.npy"
    npy.write_bytes(_npy_bytes((10**12, 4), "<i8", b"\0" * 64))
    with pytest.raises(ValueError, match="header claims"):
        check_numpy_file(npy)
    from spikedriven.data.events import read_tonic_npy

    with pytest.raises(DatasetError, match="header claims"):
        read_tonic_npy(npy)
    ok = tmp_path / "ok.npy"
    np.save(ok, np.arange(12).reshape(3, 4))
    check_numpy_file(ok)  # an honest file passes


def _png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height 8-bit grey pixels (its data is a few bytes)."""
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [9000, 100_000])  # above our budget; above PIL's own bomb limit too
def test_image_decompression_bombs_are_one_line(tmp_path, capsys, side):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png(side, side))
    rc, _, err = cli(capsys, "viz", "rates", "--model", "sdt_digits_1_64", "--image", bomb, "--out", tmp_path / "o.png")
    one_line_error(rc, err, "bomb.png", "decompression bomb")
    assert not (tmp_path / "o.png").exists()


def test_model_sizes_are_checked_against_memory_before_allocating(tmp_path, capsys):
    import tracemalloc

    tracemalloc.start()
    rc, _, err = cli(capsys, "forward", "--img-size", "20000")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    one_line_error(rc, err, "--img-size 20000", "GiB of memory", "refused before allocating")
    assert peak < 2**30
    rc, _, err = cli(capsys, "train", "--dim", "4000000", "--output", tmp_path / "runs", "--experiment", "big")
    one_line_error(rc, err, "embed_dim=4000000", "refused before allocating")
    assert not (tmp_path / "runs" / "big").exists()


# ------------------------------------------------------------------------------------------- one weight check
def _digits_state():
    from spikedriven import create_model

    model = create_model("sdt_digits_1_64")
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def test_float8_weights_are_checked_not_crashed(tmp_path):
    from spikedriven.checkpoint import check_state_values

    model, sd = _digits_state()
    w = "head.weight"
    e8 = dict(sd)
    e8[w] = sd[w].abs().clamp_min(1e-3).to(torch.float8_e8m0fnu)
    e8[w].view(torch.uint8)[0, 0] = 255  # the E8M0 NaN encoding, which isfinite() does not see
    with pytest.raises(CheckpointError, match="NaN/inf"):
        check_state_values(model, e8)
    e4 = dict(sd)
    e4[w] = sd[w].to(torch.float8_e4m3fn)  # finite float8: checked and accepted (isfinite alone would crash)
    check_state_values(model, e4)
    e4[w] = e4[w].clone()
    e4[w].view(torch.uint8)[0, 0] = 0x7F  # e4m3fn NaN
    with pytest.raises(CheckpointError, match="NaN/inf"):
        check_state_values(model, e4)


def test_batchnorm_variances_must_not_be_negative(tmp_path, capsys):
    model, sd = _digits_state()
    var = next(k for k in sd if k.endswith("running_var"))
    sd[var][0] = -1.0
    path = tmp_path / "negvar.safetensors"
    save_safetensors(sd, path)
    rc, _, err = cli(capsys, "eval", "--model", "sdt_digits_1_64", "--checkpoint", path)
    one_line_error(rc, err, "negative BatchNorm variances", var)
    sd[var][0] = 0.0  # a channel that never varied: running_var decays to exactly 0, which eps keeps finite
    save_safetensors(sd, path)
    load_into_model(model, path)
    assert float(model.state_dict()[var][0]) == 0.0


def test_two_keys_for_one_weight_are_refused(tmp_path, capsys):
    _, sd = _digits_state()
    sd["module.head.weight"] = torch.zeros_like(sd["head.weight"])
    path = tmp_path / "dup.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match="'head.weight' and 'module.head.weight'"):
        load_checkpoint(path)
    rc, _, err = cli(capsys, "eval", "--model", "sdt_digits_1_64", "--checkpoint", path)
    one_line_error(rc, err, "module.head.weight", "refusing to pick one")
    rc, _, err = cli(capsys, "convert", path, tmp_path / "dup.safetensors")
    one_line_error(rc, err, "module.head.weight")
    assert not (tmp_path / "dup.safetensors").exists()


def test_sparse_weights_are_a_short_message(tmp_path, capsys):
    _, sd = _digits_state()
    sd["head.weight"] = sd["head.weight"].to_sparse()
    path = tmp_path / "sparse.pth"
    torch.save({"state_dict": sd}, path)
    rc, _, err = cli(capsys, "eval", "--model", "sdt_digits_1_64", "--checkpoint", path)
    line = one_line_error(rc, err, "head.weight", "sparse", "dense")
    assert len(line) < 400


def test_distillation_teacher_gets_the_weight_checks(tmp_path):
    import timm

    from spikedriven.training.losses import build_teacher
    from spikedriven.training.recipe import resolve_recipe

    teacher = timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=3)
    good = {k: v.clone() for k, v in teacher.state_dict().items()}
    r = resolve_recipe("digits", {"kd_teacher": "test_resnet", "distillation_type": "hard", "in_channels": 3},
                       warn=False)
    bad_cases = {"int8": ({k: (v.to(torch.int8) if v.is_floating_point() else v) for k, v in good.items()},
                          "wrong kind"),
                 "NaN": ({**good, "fc.weight": torch.full_like(good["fc.weight"], float("nan"))}, "NaN/inf")}
    for name, (sd, needle) in bad_cases.items():
        f = tmp_path / f"teacher_{name}.safetensors"
        save_safetensors(sd, f)
        r["kd_teacher_checkpoint"] = str(f)
        with pytest.raises(CheckpointError, match=needle) as e:
            build_teacher(r, 10, "cpu")
        assert "distillation teacher" in str(e.value)
    f = tmp_path / "teacher.safetensors"
    save_safetensors(good, f)
    r["kd_teacher_checkpoint"] = str(f)
    t = build_teacher(r, 10, "cpu")
    assert same_weights(t.state_dict(), good) and not t.training


# ------------------------------------------------------------------------------------------- numbers where they enter
NUMBERS = [
    (["energy", "--theory", "--rate", "-1"], "--rate"), (["energy", "--theory", "--rate", "2"], "--rate"),
    (["energy", "--theory", "--rate", "nan"], "--rate"), (["energy", "--theory", "--N", "-5", "--D", "8"], "--N"),
    (["energy", "--theory", "--e-mac", "-1"], "--e-mac"), (["energy", "--theory", "--e-ac", "nan"], "--e-ac"),
    (["energy", "--uniform-rate", "0.1", "--sdsa-rate", "5"], "--sdsa-rate"),
    (["energy", "--theory", "--rate-kv", "1.5"], "--rate-kv"), (["energy", "--T", "0"], "--T"),
    (["energy", "--img-size", "0"], "--img-size"), (["energy", "--batch-size", "0"], "--batch-size"),
    (["energy", "--batches", "0"], "--batches"), (["forward", "--batch", "0"], "--batch"),
    (["forward", "--img-size", "0"], "--img-size"), (["viz", "attention", "--block", "-1", "--out", "x.png"], "--block"),
    (["viz", "raster", "--n-neurons", "0", "--out", "x.png"], "--n-neurons"),
    (["viz", "raster", "--index", "-1", "--out", "x.png"], "--index"),
    (["infer", "--show", "-3"], "--show"), (["infer", "--threads", "0"], "--threads"),
    (["infer", "--batch", "0"], "--batch"), (["infer", "--limit", "-1"], "--limit"),
]


@pytest.mark.parametrize("args, option", NUMBERS, ids=[" ".join(a) for a, _ in NUMBERS])
def test_command_numbers_are_checked_where_they_enter(capsys, args, option):
    rc, out, err = cli(capsys, *args)
    line = one_line_error(rc, err, option)
    assert "division by zero" not in line and out == ""


def test_energy_theory_library_checks_its_numbers():
    from spikedriven.energy.theory import analyze_87x, attention_costs

    for kw, needle in [({"rate_q": -1}, "rate_q"), ({"e_ac": float("nan")}, "e_ac"), ({"N": 0}, "N = 0"),
                       ({"rate_kv": 2.0}, "rate_kv")]:
        with pytest.raises(ValueError, match=needle):
            attention_costs(**{"N": 4, "D": 8, **kw})
    with pytest.raises(ValueError, match="e_mac"):
        analyze_87x(e_mac=-4.6)


def test_viz_block_beyond_the_model_is_refused(tmp_path, capsys):
    rc, _, err = cli(capsys, "viz", "attention", "--model", "sdt_digits_1_64", "--block", "5", "--data", "random",
                     "--out", tmp_path / "a.png")
    one_line_error(rc, err, "--block 5", "0..0")
    assert not (tmp_path / "a.png").exists()


def test_official_args_are_typed_strictly():
    from spikedriven.config.official import model_kwargs_from_official
    from spikedriven.models.factory import spec_from_checkpoint

    v2 = {"model": "metaspikformer_8_384", "nb_classes": 10}
    with pytest.raises(ValueError, match="time_steps = 2.7"):
        spec_from_checkpoint({"args": {**v2, "time_steps": 2.7}})
    assert spec_from_checkpoint({"args": {**v2, "kd": "False"}}).kwargs["kd"] is False
    assert spec_from_checkpoint({"args": {**v2, "kd": True, "time_steps": 4.0}}).kwargs["T"] == 4
    with pytest.raises(ValueError, match="kd = 'maybe'"):
        spec_from_checkpoint({"args": {**v2, "kd": "maybe"}})
    with pytest.raises(ValueError, match="time_steps = 2.7"):
        model_kwargs_from_official({"dim": 64, "time_steps": 2.7})
    with pytest.raises(ValueError, match="layer = True"):
        model_kwargs_from_official({"dim": 64, "layer": True})


def test_infer_labels_outside_the_classes_are_refused(tmp_path, capsys):
    f = tmp_path / "frames.npz"
    np.savez(f, frames=np.zeros((2, 4, 1, 8, 8), np.float32), labels=np.array([-1, 3]))
    rc, _, err = cli(capsys, "infer", "--model", "sdt_digits_1_64", "--engine", "dense", "--data", f)
    one_line_error(rc, err, "label -1", "0..9")


def test_start_epoch_beyond_the_schedule_is_refused(tmp_path, capsys):
    rc, _, err = cli(capsys, *tiny(tmp_path, "late", "--start-epoch", "1000"))
    one_line_error(rc, err, "--start-epoch 1000", "0..1")
    assert not (tmp_path / "late").exists()


def test_hand_edits_to_config_yaml_are_reported_on_resume(tmp_path, capsys):
    import yaml

    assert main(tiny(tmp_path, "edit", "--epochs", "1")) == 0
    run = tmp_path / "edit"
    text = (run / "config.yaml").read_text()
    lr = yaml.safe_load(text)["lr"]
    (run / "config.yaml").write_text(text.replace(f"lr: {lr}\n", "lr: 0.5\n"))
    capsys.readouterr()
    rc, out, err = cli(capsys, "train", "--resume", run, "--epochs", "2", "--no-progress")
    assert rc == 0, err
    warn = [ln for ln in err.splitlines() if "was edited" in ln]
    assert len(warn) == 1 and "lr: 0.5 in the file" in warn[0] and "--set KEY=VALUE" in warn[0], err
    assert yaml.safe_load((run / "config.yaml").read_text())["lr"] == lr  # what the run really used


# ------------------------------------------------------------------------------------------- images and events
def test_images_are_scaled_by_their_bit_depth(tmp_path):
    from PIL import Image

    from spikedriven import create_model
    from spikedriven.data.images import open_rgb
    from spikedriven.training.inputs import image_inputs, recipe_for_model

    levels = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)  # 0..252
    Image.fromarray(levels).save(tmp_path / "8.png")
    Image.fromarray(levels.astype(np.uint16) * 257).save(tmp_path / "16.png")  # 16-bit: same intensities
    Image.fromarray(levels.astype(np.float32) / 255).save(tmp_path / "f.tif")  # float in [0, 1]
    Image.fromarray(np.round(levels.astype(np.float64) * (2**31 - 1) / 255).astype(np.int32)).save(tmp_path / "32.tif")
    want = np.asarray(open_rgb(tmp_path / "8.png"))
    assert np.array_equal(want[..., 0], levels)
    for name in ("16.png", "f.tif", "32.tif"):
        got = np.asarray(open_rgb(tmp_path / name))
        assert got.shape == (8, 8, 3) and np.array_equal(got, want), name
    model = create_model("sdt_digits_1_64")
    r = recipe_for_model(model)[0]
    x8 = image_inputs(r, [tmp_path / "8.png"])[0]
    x16 = image_inputs(r, [tmp_path / "16.png"])[0]
    assert torch.equal(x8, x16)
    Image.fromarray(np.full((4, 4), 300.0, np.float32)).save(tmp_path / "bad.tif")
    with pytest.raises(DatasetError, match="bad.tif.*values 300..300"):
        open_rgb(tmp_path / "bad.tif")


def test_a_truncated_image_in_a_folder_names_its_file(tmp_path):
    from PIL import Image

    d = tmp_path / "val" / "cat"
    d.mkdir(parents=True)
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(d / "good.jpg")
    full = (d / "good.jpg").read_bytes()
    (d / "broken.jpg").write_bytes(full[: len(full) // 2])
    ds = create_dataset("imagenet", str(tmp_path), "test")
    i = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("broken.jpg"))
    with pytest.raises(DatasetError, match="broken.jpg.*(truncated|damaged)"):
        ds[i]


def test_event_frames_cache_is_keyed_by_the_file_content(tmp_path):
    ev = tmp_path / "a.npz"
    np.savez(ev, t=np.arange(20), x=np.arange(20) % 8, y=np.arange(20) % 8, p=np.arange(20) % 2)
    first = EventFrameDataset([ev], [0], ["0"], 2, (8, 8), cache_dir=tmp_path / "cache").frames(0)
    assert float(first.sum()) == 20
    np.savez(ev, t=np.arange(50), x=np.arange(50) % 4, y=np.arange(50) % 4, p=np.zeros(50, int))  # replaced
    again = EventFrameDataset([ev], [0], ["0"], 2, (8, 8), cache_dir=tmp_path / "cache").frames(0)
    assert float(again.sum()) == 50 and float(again[:, 1].sum()) == 0  # the new events, not the cached frames
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1  # the stale entry was replaced
