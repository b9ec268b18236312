"""Official-format checkpoints load strictly, safely, and round-trip (pth.tar and safetensors)."""
import argparse
import os
import pickle

import pytest
import torch

from spikedriven import create_model
from spikedriven.checkpoint import (CheckpointError, atomic_save, load_checkpoint, load_into_model,
                                    save_safetensors)


def official_state_dict(D, L, Cin, K, h=8, seed=0):
    """Build an official-format state_dict from the spec §3 key pattern alone (independent of our model)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def conv(name, shape, bias=False):
        sd[f"{name}.weight"] = torch.randn(*shape, generator=g) * 0.02
        if bias:
            sd[f"{name}.bias"] = torch.randn(shape[0], generator=g) * 0.01

    def bn(name, c):
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_var"] = 1 + torch.rand(c, generator=g)
        sd[f"{name}.num_batches_tracked"] = torch.tensor(1234, dtype=torch.int64)

    chans = [Cin, D // 8, D // 4, D // 2, D]
    for i, s in enumerate(["", "1", "2", "3"]):
        conv(f"patch_embed.proj_conv{s}", (chans[i + 1], chans[i], 3, 3))
        bn(f"patch_embed.proj_bn{s}", chans[i + 1])
    conv("patch_embed.rpe_conv", (D, D, 3, 3))
    bn("patch_embed.rpe_bn", D)
    for i in range(L):
        p = f"block.{i}"
        for n in "qkv":
            conv(f"{p}.attn.{n}_conv", (D, D, 1, 1))
            bn(f"{p}.attn.{n}_bn", D)
        sd[f"{p}.attn.talking_heads.weight"] = torch.randn(h, h, 1, generator=g)
        conv(f"{p}.attn.proj_conv", (D, D, 1, 1), bias=True)
        bn(f"{p}.attn.proj_bn", D)
        conv(f"{p}.mlp.fc1_conv", (4 * D, D, 1, 1), bias=True)
        bn(f"{p}.mlp.fc1_bn", 4 * D)
        conv(f"{p}.mlp.fc2_conv", (D, 4 * D, 1, 1), bias=True)
        bn(f"{p}.mlp.fc2_bn", D)
    sd["head.weight"] = torch.randn(K, D, generator=g) * 0.02
    sd["head.bias"] = torch.zeros(K)
    return sd


def test_key_set_and_shapes_equal_official():
    for name, (D, L, Cin, K) in {"sdt_cifar10_2_512": (512, 2, 3, 10), "sdt_gesture_2_256_t16": (256, 2, 2, 11),
                                 "sdt_8_384": (384, 8, 3, 1000)}.items():
        ours = create_model(name).state_dict()
        off = official_state_dict(D, L, Cin, K)
        assert list(ours) == list(off)  # same keys, same order
        assert all(ours[k].shape == off[k].shape and ours[k].dtype == off[k].dtype for k in off)
        assert len(off) == 30 + 40 * L + 2


def write_official_pth_tar(path, sd, ema=None, prefix=""):
    """Mimic timm CheckpointSaver as used by the official train.py (args is an argparse.Namespace)."""
    ckpt = {"epoch": 299, "arch": "sdt", "state_dict": {prefix + k: v for k, v in sd.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0, 1]}]}, "version": 2,
            "args": argparse.Namespace(model="sdt", dim=512, layer=2, time_steps=4, TET=False, lr=3e-4,
                                       scale=[1.0, 1.0], dataset="torch/cifar10"),
            "amp_scaler": {"scale": 65536.0, "growth_factor": 2.0}, "metric": 95.6}
    if ema is not None:
        ckpt["state_dict_ema"] = ema
    torch.save(ckpt, path)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_official_pth_tar_loads_strictly(tmp_path, prefix):
    sd = official_state_dict(256, 2, 3, 10, seed=1)
    path = tmp_path / "model_best.pth.tar"
    write_official_pth_tar(path, sd, prefix=prefix)
    model = create_model("sdt_cifar10_2_256")
    info = load_into_model(model, path)
    assert info["missing"] == [] and info["unexpected"] == []
    assert info["meta"]["epoch"] == 299 and info["meta"]["args"]["dim"] == 512
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_ema_weights_selected(tmp_path):
    sd, ema = official_state_dict(256, 2, 3, 10, seed=1), official_state_dict(256, 2, 3, 10, seed=2)
    path = tmp_path / "last.pth.tar"
    write_official_pth_tar(path, sd, ema=ema)
    m = create_model("sdt_cifar10_2_256")
    load_into_model(m, path, use_ema=True)
    assert torch.equal(m.head.weight, ema["head.weight"])
    write_official_pth_tar(path, sd)
    with pytest.raises(CheckpointError, match="no 'state_dict_ema'"):
        load_into_model(m, path, use_ema=True)


def test_mismatch_is_reported_with_keys_and_hint(tmp_path):
    sd = official_state_dict(256, 2, 3, 100)
    path = tmp_path / "c100.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        load_into_model(create_model("sdt_cifar10_2_256"), path)
    msg = str(e.value)
    assert "shape mismatch" in msg and "head.weight: checkpoint (100, 256) vs model (10, 256)" in msg
    assert "num_classes=100" in msg and "\n" not in msg
    del sd["block.1.attn.talking_heads.weight"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="1 missing keys .*talking_heads.*; 1 unexpected keys .*extra.weight"
                                              ".*--partial"):
        load_into_model(create_model("sdt_cifar100_2_256"), path)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/spikedriven_pwned",))


def test_pickled_code_is_never_executed(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "payload": Evil()}, f)
    if os.path.exists("/tmp/spikedriven_pwned"):
        os.unlink("/tmp/spikedriven_pwned")
    with pytest.raises(CheckpointError, match="could not load .* safely"):
        load_checkpoint(path)
    assert not os.path.exists("/tmp/spikedriven_pwned")


def test_safetensors_round_trip(tmp_path):
    m = create_model("sdt_cifar10_2_256", embed_dim=64)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "w.safetensors"
    save_safetensors(m, path, metadata={"epoch": 3})
    m2 = create_model("sdt_cifar10_2_256", embed_dim=64)
    info = load_into_model(m2, path)
    assert info["meta"]["_safetensors_metadata"]["epoch"] == "3"
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    x = torch.randn(2, 3, 32, 32)
    m.eval(), m2.eval()
    torch.testing.assert_close(m(x), m2(x), rtol=0, atol=0)


def test_convert_cli_round_trip(tmp_path):
    from spikedriven.cli import main

    sd = official_state_dict(256, 2, 3, 10, seed=3)
    src, dst = tmp_path / "model_best.pth.tar", tmp_path / "model.safetensors"
    write_official_pth_tar(src, sd, prefix="module.")
    assert main(["convert", str(src), str(dst)]) == 0
    loaded, _ = load_checkpoint(dst)
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)  # safetensors sorts keys


def test_atomic_save_never_leaves_partial_file(tmp_path):
    path = tmp_path / "ck.pt"
    atomic_save({"a": torch.ones(3)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(Exception):
        atomic_save({"a": Boom()}, path)
    assert torch.load(path, weights_only=True)["a"].sum() == 3  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp files left


def test_missing_file_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pth.tar")
