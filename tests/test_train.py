"""Training / evaluation: recipes, exact resume, Mixup / TET / EMA paths, eval CLI (tiny models on digits)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

from spikedriven.config import ConfigWarning
from spikedriven.models.factory import spec_from_recipe
from spikedriven.train import train
from spikedriven.training.recipe import CONFIG_DIR, list_configs, resolve_recipe


pytestmark = pytest.mark.usefixtures("reference_lif")  # tests/conftest.py


# a tiny SDT on 8x8 digits: 2x2 tokens, a few steps per epoch
TINY = dict(dataset="digits", dim=16, layer=1, num_heads=2, time_steps=2, img_size=8, pooling_stat="0011",
            batch_size=16, val_batch_size=64, max_train_samples=96, max_eval_samples=64, epochs=2,
            cooldown_epochs=0, warmup_epochs=1, warmup_lr=1e-4, opt="adamw", lr=3e-3, weight_decay=0.01,
            sched="cosine", workers=0, progress=False, tensorboard=False, plot=False, summary=False,
            save_safetensors=False, threads=1, scale=[0.7, 1.0], ratio=[0.9, 1.1], hflip=0.0, aa=None,
            smoothing=0.1, seed=3, amp=False)  # fp32 on every CPU (the default, auto, depends on the CPU)



def model_kwargs(r):
    """The constructor arguments of a recipe's model (through the one model factory)."""
    return spec_from_recipe(r).kwargs

def _train(tmp_path, name, **kw):
    cfg = {**TINY, **kw}
    return train(dict(cfg), output=str(tmp_path), experiment=name, print_fn=lambda *_: None)


def _weights(run_dir, key="state_dict"):
    ck = torch.load(Path(run_dir) / "last.pt", map_location="cpu", weights_only=True)
    return ck[key]


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


# ------------------------------------------------------------------------------------------- recipes
def test_official_yaml_semantics(tmp_path):
    p = tmp_path / "official.yml"
    p.write_text("dataset: torch/cifar10\nnum_classes: 10\nimg_size: 32\npooling_stat: '0011'\ntime_steps: 4\n"
                 "layer: 2\ndim: 256\nmlp-ratio: 2\nmodel-ema: true\nTET: true\ndrop_path: 0.2\naug_repeats: 3\n"
                 "opt: adamw\nlr: 3e-4\n")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = resolve_recipe(p)
    msgs = [str(x.message) for x in w if issubclass(x.category, ConfigWarning)]
    assert any("'mlp-ratio'" in m for m in msgs) and any("'model-ema'" in m for m in msgs)
    assert any("drop_path" in m for m in msgs) and any("aug_repeats" in m for m in msgs)
    assert r.dataset == "cifar10" and r.model_ema is False  # hyphenated key: no effect, as official
    kw = model_kwargs(r)
    assert kw["embed_dim"] == 256 and kw["depth"] == 2 and kw["mlp_ratio"] == 4 and kw["tet"] is True
    assert kw["drop_path_rate"] == 0.0 and kw["pooling_stat"] == "0011" and kw["in_channels"] == 3
    # official defaults for omitted keys
    assert r.sched == "step" and r.warmup_epochs == 3 and r.batch_size == 32


def test_cli_flags_are_real_booleans_and_override():
    import argparse

    from spikedriven.cli.train import add_recipe_arguments, recipe_overrides_from_args

    p = argparse.ArgumentParser()
    add_recipe_arguments(p)
    ov = recipe_overrides_from_args(p.parse_args(["--no-TET", "--warmup-epochs", "5", "-b", "8", "--scale", "0.5",
                                                  "1", "--set", "mixup_off_epoch=7", "--lr", "1e-3"]))
    assert ov == {"TET": False, "warmup_epochs": 5, "batch_size": 8, "scale": [0.5, 1.0], "mixup_off_epoch": 7,
                  "lr": 1e-3}
    assert recipe_overrides_from_args(p.parse_args(["--TET"]))["TET"] is True
    r = resolve_recipe("cifar10_2_512_tet", ov, warn=False)
    assert r.TET is False and model_kwargs(r)["tet"] is False and r.batch_size == 8
    with pytest.raises(KeyError):
        resolve_recipe(None, {"no_such_key": 1})


def test_our_configs_match_the_registry():
    from spikedriven.model import list_models, model_info

    names = set(list_configs())
    for n in list_models():
        info = model_info(n)
        assert info.recipe in names, f"{n}: recipe {info.recipe} missing from {CONFIG_DIR}"
        r = resolve_recipe(info.recipe, warn=False)
        kw = model_kwargs(r)
        for k, v in info.kwargs.items():
            assert kw[k] == v, f"{info.recipe}: {k} = {kw[k]} but registry {n} has {v}"
    assert {"digits", "fashion_mnist"} <= names
    for n in names:  # every recipe resolves without warnings (they use effective, underscore keys)
        assert resolve_recipe(n, warn=False).warnings == [], n


def test_default_recipe_is_digits_main_job():
    from spikedriven.cli import build_parser

    args = build_parser().parse_args(["train"])
    assert args.config is None
    from spikedriven.training.api import DEFAULT_CONFIG, _recipe_for

    r = _recipe_for(args.config, {})
    assert DEFAULT_CONFIG == "digits" and r.dataset == "digits" and r.progress


# ------------------------------------------------------------------------------------------- exact resume
def test_resume_after_interrupt_is_bit_identical(tmp_path):
    """Uninterrupted run vs. stopped mid-epoch (step 5 of 2x6) + resumed: identical weights, EMA, metrics."""
    extra = dict(mixup=0.8, cutmix=1.0, mixup_prob=0.7, model_ema=True, model_ema_decay=0.9, clip_grad=1.0,
                 drop_path_rate=0.1)
    full = _train(tmp_path, "full", **extra)
    part = _train(tmp_path, "part", stop_after_steps=5, **extra)
    assert part["stopped"] and part["global_step"] == 5
    ck = torch.load(Path(part["run_dir"]) / "last.pt", map_location="cpu", weights_only=True)
    for k in ("state_dict", "optimizer", "scheduler", "state_dict_ema", "rng", "next_epoch", "next_batch",
              "global_step", "recipe", "model_kwargs"):
        assert k in ck, k
    assert (ck["next_epoch"], ck["next_batch"]) == (0, 5)
    resumed = train(None, resume=part["run_dir"], print_fn=lambda *_: None)
    assert resumed["global_step"] == full["global_step"] == 12
    _assert_same(_weights(full["run_dir"]), _weights(resumed["run_dir"]))
    _assert_same(_weights(full["run_dir"], "state_dict_ema"), _weights(resumed["run_dir"], "state_dict_ema"))
    assert full["top1"] == resumed["top1"] and full["train_loss"] == resumed["train_loss"]
    assert not list(Path(part["run_dir"]).glob(".*.tmp"))  # atomic writes leave no temp files


def test_resume_at_epoch_boundary(tmp_path):
    full = _train(tmp_path, "full")
    part = _train(tmp_path, "part", stop_after_steps=6)  # exactly one epoch (96 / 16)
    resumed = train(None, resume=Path(part["run_dir"]) / "last.pt", print_fn=lambda *_: None)
    _assert_same(_weights(full["run_dir"]), _weights(resumed["run_dir"]))


@pytest.mark.parametrize("limit", [0, -5])
def test_time_limit_must_be_positive(tmp_path, limit):
    with pytest.raises(ValueError, match="time_limit.* must be a positive number of minutes"):
        _train(tmp_path, "bad_limit", time_limit=limit)


def test_time_limit_stops_mid_epoch_evaluates_and_resumes_exactly(tmp_path):
    """A hard time budget: stop inside the epoch, evaluate, save; resuming without the limit ends where an
    uninterrupted run ends."""
    full = _train(tmp_path, "full")
    part = _train(tmp_path, "part", time_limit=1e-9)  # over budget after the first step
    assert part["global_step"] == 1 and part["epochs_run"] == 0
    row = part["history"][-1]
    assert row["epoch"] == 0 and row["step"] == 1 and "top1" in row  # evaluated although mid-epoch
    ck = torch.load(Path(part["run_dir"]) / "last.pt", map_location="cpu", weights_only=True)
    assert (ck["next_epoch"], ck["next_batch"]) == (0, 1)
    assert (Path(part["run_dir"]) / "best.pt").exists()
    resumed = train(None, resume=part["run_dir"], time_limit=None, print_fn=lambda *_: None)
    assert resumed["global_step"] == full["global_step"] == 12
    _assert_same(_weights(full["run_dir"]), _weights(resumed["run_dir"]))


# ------------------------------------------------------------------------------------------- paths
def test_mixup_changes_inputs_and_targets():
    from timm.loss import SoftTargetCrossEntropy

    from spikedriven.training.data import apply_mixup, build_mixup
    from spikedriven.training.losses import build_train_criterion

    r = resolve_recipe(None, {**TINY, "mixup": 0.8, "cutmix": 1.0}, warn=False)
    mix = build_mixup(r, 10)
    assert mix is not None and isinstance(build_train_criterion(r, True), SoftTargetCrossEntropy)
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8)
    xm, ym = apply_mixup(mix, x.clone(), y, seed=1)
    assert ym.shape == (8, 10) and not torch.equal(xm, x)
    assert torch.allclose(ym.sum(1), torch.ones(8))
    assert (ym.max(1).values < 0.95).all()  # soft targets (mixed and smoothed)
    xm2, ym2 = apply_mixup(mix, x.clone(), y, seed=1)  # seeded: reproducible
    assert torch.equal(xm, xm2) and torch.equal(ym, ym2)
    # event batches [B,T,C,H,W] are mixed too
    xe, _ = apply_mixup(mix, torch.rand(8, 3, 2, 8, 8), y, seed=2)
    assert xe.shape == (8, 3, 2, 8, 8)
    assert build_mixup(resolve_recipe(None, TINY, warn=False), 10) is None


def test_tet_loss_formula_and_training(tmp_path):
    from spikedriven.training.losses import TETLoss

    out, y = torch.randn(3, 4, 5), torch.tensor([0, 1, 2, 3])
    ce = torch.nn.CrossEntropyLoss()
    lam = 0.25
    want = (1 - lam) * sum(ce(out[t], y) for t in range(3)) / 3 + lam * ((out - 1.0) ** 2).mean()
    assert torch.allclose(TETLoss(ce, 1.0, lam)(out, y), want)
    with pytest.raises(ValueError):
        TETLoss(ce)(out.mean(0), y)
    res = _train(tmp_path, "tet", TET=True, TET_lamb=0.001, epochs=1, max_train_samples=48)
    trainer = res["trainer"]
    assert trainer.model.tet and type(trainer.criterion).__name__ == "TETLoss"
    x = torch.randn(2, 1, 8, 8)
    assert trainer.model.eval()(x).shape == (2, 2, 10)  # per-step logits [T,B,K]
    assert 0 <= res["top1"] <= 100


def test_ema_tracks_but_differs_from_weights(tmp_path):
    res = _train(tmp_path, "ema", model_ema=True, model_ema_decay=0.8, epochs=1)
    tr = res["trainer"]
    m, e = tr.model.state_dict(), tr.ema.module.state_dict()
    init = type(tr.model)(**tr.model_kwargs).state_dict()
    key = "head.weight"
    assert not torch.equal(m[key], e[key]) and not torch.equal(e[key], init[key])
    assert "ema_top1" in res
    ck = torch.load(Path(res["run_dir"]) / "best.pt", map_location="cpu", weights_only=True)
    assert "state_dict_ema" in ck


def test_run_folder_and_eval_cli(tmp_path, capsys):
    from spikedriven.cli import main

    res = _train(tmp_path, "run", plot=True, tensorboard=True, save_safetensors=True, summary=True)
    d = Path(res["run_dir"])
    for f in ("config.yaml", "metrics.csv", "last.pt", "best.pt", "best.safetensors", "curve.png", "train.log"):
        assert (d / f).exists(), f
    assert list((d / "tb").iterdir())
    rows = (d / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,step,train_loss,eval_loss,top1,top5") and len(rows) == 3
    assert "firing rates" in res["summary"]
    # the resolved config reproduces the recipe without warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        r2 = resolve_recipe(d / "config.yaml")
    assert model_kwargs(r2) == res["trainer"].model_kwargs
    # eval of our checkpoint (no --model needed) reproduces the final test metrics
    assert main(["eval", "--checkpoint", str(d / "last.pt"), "--no-progress", "--max-samples", "64"]) == 0
    out = capsys.readouterr().out
    assert f"top-1 {res['top1']:.2f}%" in out
    # eval by registry-free config + safetensors weights
    assert main(["eval", "-c", str(d / "config.yaml"), "--checkpoint", str(d / "best.safetensors"),
                 "--no-progress", "--max-samples", "64"]) == 0


def test_event_path_trains(tmp_path):
    """sim-fashion-mnist-dvs through the DVS path (event frames [B,T,2,H,W], Cutout aug), on a tiny simulated
    set written by the test (no Fashion-MNIST needed, nothing written outside tmp_path)."""
    import numpy as np

    from spikedriven.data.simulate import write_simulated_dataset

    rng = np.random.default_rng(0)
    root = tmp_path / "sim"
    for split, n in (("train", 32), ("test", 16)):
        imgs = (rng.random((n, 28, 28)) > 0.6).astype(np.uint8) * 255
        write_simulated_dataset(imgs, np.arange(n) % 10, root, split, seed=n)
    res = _train(tmp_path, "dvs", dataset="sim-fashion-mnist-dvs", data_dir=str(root), in_channels=None,
                 img_size=32, time_steps=2, dvs_aug=True, epochs=1, batch_size=16)
    assert res["trainer"].is_event and len(res["trainer"].loaders["train"].dataset) == 32
    assert res["trainer"].is_event and 0 <= res["top1"] <= 100


@pytest.mark.slow
def test_digits_main_job_reaches_95(tmp_path):
    res = train(None, output=str(tmp_path), progress=False, print_fn=lambda *_: None)
    assert res["top1"] >= 95.0


# ------------------------------------------------------------------------------------------- DDP (gloo, CPU)
DDP_SCRIPT = """
import os, sys, torch
os.environ.setdefault("SPIKEDRIVEN_LIF_BACKEND", "torch")
from spikedriven.train import train
from spikedriven.training.loop import unwrap
cfg = dict(dataset="digits", dim=16, layer=1, num_heads=2, time_steps=2, img_size=8, pooling_stat="0011",
           batch_size=16, val_batch_size=64, max_train_samples=96, max_eval_samples=64, epochs=2, cooldown_epochs=0,
           warmup_epochs=1, opt="adamw", lr=3e-3, sched="cosine", workers=0, progress=False, summary=False,
           tensorboard=False, plot=False, mixup=0.5, model_ema=True, model_ema_decay=0.9, seed=3)
res = train(cfg, output=sys.argv[1], experiment="ddp", print_fn=print)
tr = res["trainer"]
assert tr.env.world == 2 and tr.env.backend == "gloo" and tr.loaders["train"].sampler.world == 2
torch.save({"w": {k: v.detach().cpu() for k, v in unwrap(tr.model).state_dict().items()},
            "ema": tr.ema.module.state_dict(), "top1": res["top1"], "steps": res["global_step"]},
           os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.pt"))
"""


def test_two_process_gloo_ranks_identical(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(script), str(tmp_path)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # 96 samples / 2 ranks / batch 16 = 3 steps per epoch on each rank
    assert r0["steps"] == r1["steps"] == 6
    # parameters are all-reduced every step -> identical; BN running statistics are per-rank (each rank
    # normalises its own batches between DDP's buffer broadcasts from rank 0)
    differ = [k for k in r0["w"] if not torch.equal(r0["w"][k], r1["w"][k])]
    assert all("running_" in k for k in differ), differ
    for k, v in r0["ema"].items():
        if "running_" not in k:
            assert torch.equal(v, r1["ema"][k]), k
    assert r0["top1"] == r1["top1"]  # metrics reduced across ranks
    # rank 0 alone wrote the run folder
    assert (tmp_path / "ddp" / "last.pt").exists() and "epoch 2/2" in out.stdout
    assert out.stdout.count("epoch 2/2") == 1


def test_sample_limits_take_a_spread_subset_not_the_first_n():
    """Folder datasets are sorted by class: max_train_samples must not keep only the first classes."""
    from spikedriven.training.data import SeededDataset

    base = [(torch.tensor(float(i)), i // 100) for i in range(1000)]  # 10 classes, sorted like a DVS folder
    a, b = SeededDataset(base, limit=150), SeededDataset(base, limit=150, seed=7)
    assert len(a) == 150 and [a[i] for i in range(150)] == [b[i] for i in range(150)]  # fixed subset
    labels = [a[i][1] for i in range(150)]
    assert set(labels) == set(range(10)) and max(labels.count(c) for c in range(10)) < 30
    idx = [int(a[i][0]) for i in range(150)]
    assert idx == sorted(set(idx))  # distinct, in dataset order
    assert len(SeededDataset(base, limit=5000)) == 1000 and SeededDataset(base)[3][1] == 0


def test_seeded_augmentation_is_per_sample_and_leaves_global_rngs_alone():
    """A random transform draws from python, numpy and torch; each sample's draw depends only on (seed, epoch,
    index), and the global generators continue as if the dataset had not been read."""
    import random as pyrandom

    import numpy as np

    from spikedriven.training.data import SeededDataset

    def draw(x):
        return (x, pyrandom.random(), float(np.random.rand()), float(torch.rand(())))

    ds = SeededDataset([(0, 0)] * 4, draw, seed=3)
    pyrandom.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = (pyrandom.random(), float(np.random.rand()), float(torch.rand(())))
    pyrandom.seed(1), np.random.seed(1), torch.manual_seed(1)
    first = [ds[i][0] for i in range(4)]
    assert (pyrandom.random(), float(np.random.rand()), float(torch.rand(()))) == expected
    assert len({d[1:] for d in first}) == 4  # different samples, different draws
    assert [ds[i][0] for i in (2, 0)] == [first[2], first[0]]  # order of access does not matter
    ds.set_epoch(1)
    assert all(ds[i][0][1:] != first[i][1:] for i in range(4))  # a new epoch, new draws


def test_deterministic_samples_are_cached_random_ones_never():
    from spikedriven.training.data import SeededDataset

    reads = []

    class Base:
        def __len__(self):
            return 6

        def __getitem__(self, i):
            reads.append(i)
            return torch.full((2, 3), float(i)), i % 2

    def noisy(x):
        return x + torch.rand(())

    det = SeededDataset(Base(), lambda x: x * 2, random_transform=False)
    first = [det[i] for i in range(6)]
    assert reads == list(range(6))
    assert [det[i] for i in (5, 0, 3)] == [first[5], first[0], first[3]] and reads == list(range(6))
    assert torch.equal(first[4][0], torch.full((2, 3), 8.0)) and first[4][1] == 0
    small = SeededDataset(Base(), lambda x: x, random_transform=False, cache_bytes=6 * 24 - 1)  # does not fit
    reads.clear()
    [small[i] for i in range(6)], [small[i] for i in range(6)]
    assert reads == list(range(6)) * 2
    rnd = SeededDataset(Base(), noisy, seed=1)
    reads.clear()
    a = [rnd[i][0] for i in range(6)]
    rnd.set_epoch(1)
    b = [rnd[i][0] for i in range(6)]
    assert reads == list(range(6)) * 2 and all(not torch.equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_warns_only_where_it_is_emulated(tmp_path, monkeypatch, native):
    import spikedriven.training.loop as loop

    monkeypatch.setattr(loop, "_cpu_has_native_bf16", lambda: native)
    res = _train(tmp_path, f"bf16_{native}", amp=True, epochs=1, max_train_samples=16, max_eval_samples=16)
    tr = res["trainer"]
    assert tr.amp_dtype == torch.bfloat16
    assert any("no native bf16" in w for w in tr.warnings) is (not native)


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_is_bf16_only_on_native_bf16_cpus_and_is_kept_by_the_run(tmp_path, monkeypatch, native):
    import yaml

    import spikedriven.training.loop as loop

    monkeypatch.setattr(loop, "_cpu_has_native_bf16", lambda: native)
    res = _train(tmp_path, f"auto_{native}", amp=None, epochs=1, max_train_samples=16, max_eval_samples=16)
    tr = res["trainer"]
    assert tr.amp_dtype == (torch.bfloat16 if native else None) and tr.amp_auto
    assert not any("bf16" in w for w in tr.warnings)
    saved = yaml.safe_load((Path(res["run_dir"]) / "config.yaml").read_text())
    assert saved["amp"] is native  # resolved: a resume on another CPU keeps the precision


def test_native_bf16_reads_the_cpu_flags(monkeypatch, tmp_path):
    import builtins

    import spikedriven.training.loop as loop

    real_open = builtins.open
    for flags, want in (("fpu avx2 avx512f avx512bw", False), ("fpu avx512f avx512_bf16", True),
                        ("fpu amx_bf16 amx_tile", True), ("fpu avx2", False)):
        f = tmp_path / "cpuinfo"
        f.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(builtins, "open", lambda p, *a, _f=f, **k: real_open(_f if p == "/proc/cpuinfo" else p,
                                                                               *a, **k))
        assert loop._cpu_has_native_bf16() is want, flags
    monkeypatch.setattr(builtins, "open", real_open)


def test_v2_recipe_trains_and_resumes_exactly(tmp_path):
    """A small Meta-SpikeFormer through the same trainer: stop mid-epoch, resume, identical weights and metrics."""
    from spikedriven.models.factory import build_model

    v2 = {k: v for k, v in TINY.items() if k not in ("dim", "layer", "num_heads", "time_steps", "img_size",
                                                        "pooling_stat")}
    v2.update(model="sdt_v2_digits_8_64", embed_dims=[8, 8, 16, 16], max_train_samples=48, drop_path_rate=0.1)
    run = lambda name, **kw: train(dict(v2, **kw), output=str(tmp_path), experiment=name,  # noqa: E731
                                   print_fn=lambda *_: None)
    full = run("full")
    part = run("part", stop_after_steps=4)
    assert part["stopped"] and part["global_step"] == 4
    resumed = train(None, resume=part["run_dir"], print_fn=lambda *_: None)
    assert resumed["global_step"] == full["global_step"] == 6
    _assert_same(_weights(full["run_dir"]), _weights(resumed["run_dir"]))
    assert full["top1"] == resumed["top1"] and full["train_loss"] == resumed["train_loss"]
    model, meta = build_model(checkpoint=str(Path(full["run_dir"]) / "last.pt"))
    assert model.family == "sdt_v2" and model.embed_dim == (8, 8, 16, 16) and model.downsample_strides == (1, 1, 2, 1, 1)


def test_curve_places_an_epoch_cut_by_the_time_limit_where_it_stopped(tmp_path):
    """A run cut 207 batches into its 4th epoch (of 937 steps) is drawn at 3.22 epochs, not as a whole 4th."""
    from spikedriven.training.report import curve_points, plot_curve

    rows = [dict(epoch="0", step="937", top1="74.5", ema_top1=""), dict(epoch="3", step="3018", top1="85.7",
                                                                       ema_top1="")]
    x, y = curve_points(rows, "top1", steps_per_epoch=937)
    assert x == [1.0, 3018 / 937] and y == [74.5, 85.7]
    assert curve_points(rows, "top1") == ([1, 4], [74.5, 85.7])  # without the epoch length: epoch numbers
    assert curve_points(rows, "ema_top1", 937) == ([], [])
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,step,train_loss,eval_loss,top1,top5\n0,937,1.4,0.8,74.5,98.9\n3,3018,0.8,0.5,85.7,99.7\n")
    assert plot_curve(csv, tmp_path / "curve.png", "t", steps_per_epoch=937)
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
