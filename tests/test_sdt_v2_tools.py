"""V2 through the package's tools: official-format checkpoints, distillation, the verifier, the energy report and
the inference form."""
import argparse
import math
import os
import pickle

import pytest
import torch
import torch.nn.functional as F

from spikedriven.checkpoint import CheckpointError, load_checkpoint
from spikedriven.energy import energy_from_config
from spikedriven.inference import prepare_inference
from spikedriven.models.factory import build_model, spec_from_checkpoint
from spikedriven.models.sdt_v2 import MetaSpikeFormer
from spikedriven.probe import calibrate_bn
from spikedriven.verify import verify_spike_driven

TINY = dict(img_size=32, in_channels=3, num_classes=10, embed_dim=(8, 16, 32, 40), num_heads=2)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------- checkpoints
def _official_file(path, model, args):
    """What the official misc.save_model writes: model, optimizer, epoch, scaler, and the args Namespace."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 299,
                "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                           "_growth_tracker": 0}, "args": args}, path)


def test_official_v2_checkpoint_loads_with_the_namespace_allowlist(tmp_path):
    torch.manual_seed(0)
    m = MetaSpikeFormer(T=2, **TINY)
    args = argparse.Namespace(model="metaspikformer_8_384", time_steps=2, nb_classes=10, kd=False, input_size=32,
                              blr=6e-4, output_dir="/x")
    path = tmp_path / "checkpoint-299.pth"
    _official_file(path, m, args)
    sd_, meta = load_checkpoint(path)
    assert meta["args"]["model"] == "metaspikformer_8_384" and meta["epoch"] == 299
    spec = spec_from_checkpoint(meta, "checkpoint-299.pth")  # the model the official args describe
    assert spec.name == "sdt_v2_8_384" and spec.kwargs["T"] == 2 and spec.kwargs["num_classes"] == 10
    assert spec.kwargs["img_size"] == 32 and spec.kwargs["kd"] is False
    # strict load into the same architecture (our tiny dims here, to keep the test small)
    got, _ = build_model("sdt_v2_8_384", checkpoint=path, overrides=dict(TINY, T=2))
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), m.state_dict().values()))


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_official_format_with_a_malicious_args_object_is_refused(tmp_path):
    m = MetaSpikeFormer(**TINY)
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    _official_file(path, m, _RunsCode(marker))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()
    with open(tmp_path / "evil2.pth", "wb") as f:  # a plain pickle, not a torch zip file
        pickle.dump({"model": {}, "args": _RunsCode(marker)}, f)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil2.pth")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- distillation
def test_hard_and_soft_distillation_losses_by_hand():
    from spikedriven.training.losses import DistillationLoss

    torch.manual_seed(0)
    out, out_kd, t = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    y = torch.tensor([0, 1, 2, 3])
    ce = torch.nn.CrossEntropyLoss()
    hard = DistillationLoss(ce, "hard", alpha=0.3)((out, out_kd), y, t)
    want = 0.7 * F.cross_entropy(out, y) + 0.3 * F.cross_entropy(out_kd, t.argmax(1))
    torch.testing.assert_close(hard, want)
    tau = 2.0
    p_t, logp_s = torch.softmax(t / tau, 1), torch.log_softmax(out_kd / tau, 1)
    kl = (p_t * (torch.log(p_t) - logp_s)).sum() * tau * tau / out_kd.numel()
    torch.testing.assert_close(DistillationLoss(ce, "soft", 0.5, tau)((out, out_kd), y, t),
                               0.5 * F.cross_entropy(out, y) + 0.5 * kl)
    with pytest.raises(ValueError, match="kd=True"):
        DistillationLoss(ce)(out, y, t)


def test_distillation_trains_the_kd_head_from_a_frozen_timm_teacher(tmp_path):
    timm = pytest.importorskip("timm")
    from spikedriven.train import train

    teacher = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    res = train(dict(model="sdt_v2", dataset="digits", img_size=16, embed_dims=[8, 16, 16, 24],
                     downsample_strides=[1, 1, 2, 1, 1], num_heads=2, time_steps=1, kd=True,
                     distillation_type="hard", kd_teacher="test_resnet",
                     kd_teacher_checkpoint=str(tmp_path / "teacher.pth"), opt="adamw", lr=2e-3, batch_size=32,
                     epochs=1, warmup_epochs=0, max_train_samples=96, max_eval_samples=64, workers=0,
                     progress=False, tensorboard=False, plot=False, summary=False, threads=1,
                     output=str(tmp_path), experiment="kd"), print_fn=lambda *_: None)
    tr = res["trainer"]
    assert tr.teacher is not None and not tr.teacher.training
    assert not any(p.requires_grad for p in tr.teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in tr.teacher.state_dict().items())  # frozen
    assert tr.model.kd and tr.model.head_kd.weight.grad is not None
    assert 0 <= res["top1"] <= 100
    with pytest.raises(ValueError, match="kd-teacher"):
        train(dict(model="sdt_v2", dataset="digits", img_size=16, embed_dims=[8, 16, 16, 24],
                   downsample_strides=[1, 1, 2, 1, 1], num_heads=2, kd=True, distillation_type="hard",
                   epochs=1, workers=0, progress=False, output=str(tmp_path), experiment="kd2"))


# ---------------------------------------------------------------------------------------------- verifier
def _calibrated(**kw):
    torch.manual_seed(0)
    m = MetaSpikeFormer(**{**TINY, **kw})
    x = torch.randn(8, 3, 32, 32)
    calibrate_bn(m, [x])
    return m, x


def test_verify_v2_inference_form_is_spike_driven_and_names_what_is_not_mask_and_add():
    m, x = _calibrated(downsample_strides=(1, 1, 2, 1, 1))  # 16x16 tokens in stages 3-4: attn_lif fires
    rep = verify_spike_driven(m, x)
    assert rep.ok and rep.inference_form, rep.summary()
    ex = {c.name for c in rep.exemptions}
    assert "downsample1_1.encode_conv" in ex  # the encoding layer
    assert {f"ConvBlock{s}.0.Conv.pwconv2" for s in ("1_1", "1_2", "2_1", "2_2")} <= ex  # after the dw conv
    assert {f"block3.{i}.attn.matmul_q[arg1]" for i in range(6)} <= ex  # integer rows added
    assert not any("body" in c.name for c in rep.checks)  # RepConvs are folded: one conv each
    text = rep.summary()
    assert "not mask-and-add, by design" in text and "additions of integer rows" in text
    # the training form (RepConv unfolded) feeds real values to the depthwise convs: not spike-driven
    raw = verify_spike_driven(m, x, inference_form=False)
    assert not raw.ok and any(c.name.endswith("body.2.0") for c in raw.violations)


# ---------------------------------------------------------------------------------------------- energy
def _flops_by_hand(dims, size, strides, heads, mlp=4, K=10, cin=3):
    """Dense FLOPs of one step of the inference form (RepConv folded to one 3x3 conv), per sample."""
    d0, d1, d2, d3 = dims
    fl, side = {}, size
    def conv(name, k, ci, co, stride, groups=1):
        nonlocal side
        side = math.ceil(side / stride)
        fl[name] = k * k * (ci // groups) * co * side * side

    def convblock(name, c):
        n = side * side
        fl[f"{name}.Conv.pwconv1"] = c * 2 * c * n
        fl[f"{name}.Conv.dwconv"] = 49 * 2 * c * n
        fl[f"{name}.Conv.pwconv2"] = 2 * c * c * n
        fl[f"{name}.conv1"] = 9 * c * mlp * c * n
        fl[f"{name}.conv2"] = 9 * mlp * c * c * n

    def block(name, c):
        n, d = side * side, c // heads
        for p in ("q", "k", "v", "proj"):
            fl[f"{name}.attn.{p}_conv"] = 9 * c * c * n
        fl[f"{name}.attn.matmul_kv"] = heads * d * d * n  # K^T V: [d, N] x [N, d] per head
        fl[f"{name}.attn.matmul_q"] = heads * n * d * d  # Q (K^T V): [N, d] x [d, d] per head
        fl[f"{name}.mlp.fc1_conv"] = c * mlp * c * n
        fl[f"{name}.mlp.fc2_conv"] = mlp * c * c * n

    conv("downsample1_1.encode_conv", 7, cin, d0 // 2, strides[0])
    convblock("ConvBlock1_1.0", d0 // 2)
    conv("downsample1_2.encode_conv", 3, d0 // 2, d0, strides[1])
    convblock("ConvBlock1_2.0", d0)
    conv("downsample2.encode_conv", 3, d0, d1, strides[2])
    convblock("ConvBlock2_1.0", d1)
    convblock("ConvBlock2_2.0", d1)
    conv("downsample3.encode_conv", 3, d1, d2, strides[3])
    for i in range(6):
        block(f"block3.{i}", d2)
    conv("downsample4.encode_conv", 3, d2, d3, strides[4])
    for i in range(2):
        block(f"block4.{i}", d3)
    fl["head"] = d3 * K
    return fl


@pytest.mark.parametrize("T", [1, 4])
def test_energy_of_a_tiny_v2_by_hand(T):
    strides = (2, 2, 2, 2, 1)
    m = MetaSpikeFormer(T=T, **TINY, downsample_strides=strides)
    rate = 0.2
    rep = energy_from_config(m, rate)
    want = _flops_by_hand(TINY["embed_dim"], 32, strides, TINY["num_heads"])
    got = {l.name: l.flops for l in rep.layers}
    assert set(got) == set(want) and all(got[k] == want[k] for k in want), {k: (got[k], want[k]) for k in want
                                                                               if got.get(k) != want[k]}
    first = want["downsample1_1.encode_conv"]
    real = sum(v for k, v in want.items() if k.endswith("pwconv2"))  # declared real-valued inputs: MACs each step
    acs = sum(want.values()) - first - real
    e_pj = 4.6 * first + 4.6 * T * real + 0.9 * T * rate * acs
    assert math.isclose(rep.total_mj, e_pj / 1e9, rel_tol=1e-9)


def test_v2_zoo_energy_at_a_uniform_rate_is_finite_and_grows_with_T():
    a, b = (energy_from_config("sdt_v2_8_512", 0.15, T=t) for t in (1, 4))
    assert 0 < a.total_mj < b.total_mj and any("RepConv" in n for n in a.notes)


# ---------------------------------------------------------------------------------------------- inference form
def test_prepare_inference_folds_every_repconv_and_bn_exactly():
    torch.manual_seed(0)
    m = MetaSpikeFormer(T=2, **TINY).double()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    calibrate_bn(m, [x])
    f = prepare_inference(m)
    assert not any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in f.modules())
    assert not any(hasattr(mod, "fused_conv") for mod in f.modules())
    with torch.no_grad():
        torch.testing.assert_close(f(x), m.eval()(x), rtol=0, atol=1e-9)
