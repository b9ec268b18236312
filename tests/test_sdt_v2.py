"""Spike-driven Transformer V2 (Meta-SpikeFormer) against an independent oracle and hand-made cases.

The oracle below re-states the official model (BICLab/Spike-Driven-Transformer-V2, classification/models.py) the
way the official code computes it - its own reshapes/flattens, the nn.Sequential layout, BNAndPad by F.pad and
slice assignment, Conv1d/BatchNorm1d on flattened tokens - with spikingjelly 2.0 ``LIFNode`` neurons (stateful,
reset with ``functional.reset_net``). It shares no code with ``spikedriven.models.sdt_v2``.
"""
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikedriven.models import sdt_v2
from spikedriven.models.sdt_v2 import (OFFICIAL_CONFIGS, OFFICIAL_PARAMS, OFFICIAL_PARAMS_KD, OFFICIAL_STATE_DICT_LEN,
                                       BNAndPad, MetaSpikeFormer, RepConv, SpikeLinearAttention,
                                       Spiking_vit_MetaFormer, fold_repconv)

sjn = pytest.importorskip("spikingjelly.activation_based.neuron", reason="spikingjelly 2.0 test oracle not installed")
sjf = pytest.importorskip("spikingjelly.activation_based.functional")

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: intra-op threading costs more than it gives (6x slower on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = (8, 16, 32, 40)  # d = 4 and 5 per head
SMALL = (8, 16, 16, 24)  # cheaper (float64 grouped convs are slow on CPU); d = 2 and 3


# ================================================================================================== oracle
def sj_lif(v_th=1.0):
    return sjn.LIFNode(tau=2.0, detach_reset=True, step_mode="m", v_threshold=v_th)


class OBNAndPad(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        y = F.pad(self.bn(x), [1, 1, 1, 1])
        bn = self.bn
        fill = (bn.bias.detach() - bn.running_mean * bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps))
        fill = fill.view(1, -1, 1, 1)
        y[:, :, 0:1, :] = fill
        y[:, :, -1:, :] = fill
        y[:, :, :, 0:1] = fill
        y[:, :, :, -1:] = fill
        return y


class ORepConv(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_in, 1, 1, 0, bias=False), OBNAndPad(c_in),
            nn.Sequential(nn.Conv2d(c_in, c_in, 3, 1, 0, groups=c_in, bias=False),
                          nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x):
        return self.body(x)


class OSepConv(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.lif1, self.lif2 = sj_lif(), sj_lif()
        self.pwconv1 = nn.Conv2d(dim, 2 * dim, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(2 * dim)
        self.dwconv = nn.Conv2d(2 * dim, 2 * dim, 7, padding=3, groups=2 * dim, bias=False)
        self.pwconv2 = nn.Conv2d(2 * dim, dim, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x):
        T, B, C, H, W = x.shape
        x = self.bn1(self.pwconv1(self.lif1(x).flatten(0, 1))).reshape(T, B, -1, H, W)
        x = self.dwconv(self.lif2(x).flatten(0, 1))
        return self.bn2(self.pwconv2(x)).reshape(T, B, -1, H, W)


class OConvBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.Conv = OSepConv(dim)
        self.lif1, self.lif2 = sj_lif(), sj_lif()
        self.conv1 = nn.Conv2d(dim, 4 * dim, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4 * dim)
        self.conv2 = nn.Conv2d(4 * dim, dim, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x):
        T, B, C, H, W = x.shape
        x = self.Conv(x) + x
        shortcut = x
        x = self.bn1(self.conv1(self.lif1(x).flatten(0, 1))).reshape(T, B, 4 * C, H, W)
        x = self.bn2(self.conv2(self.lif2(x).flatten(0, 1))).reshape(T, B, C, H, W)
        return shortcut + x


class OAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.head_lif = sj_lif()
        for n in ("q", "k", "v"):
            setattr(self, f"{n}_conv", nn.Sequential(ORepConv(dim, dim), nn.BatchNorm2d(dim)))
            setattr(self, f"{n}_lif", sj_lif())
        self.attn_lif = sj_lif(0.5)
        self.proj_conv = nn.Sequential(ORepConv(dim, dim), nn.BatchNorm2d(dim))

    def forward(self, x):
        T, B, C, H, W = x.shape
        N, h = H * W, self.heads
        x = self.head_lif(x)

        def split(t):  # official: flatten(3).transpose(-1,-2).reshape(T,B,N,h,C//h).permute(0,1,3,2,4)
            return t.flatten(3).transpose(-1, -2).reshape(T, B, N, h, C // h).permute(0, 1, 3, 2, 4).contiguous()

        q = split(self.q_lif(self.q_conv(x.flatten(0, 1)).reshape(T, B, C, H, W)))
        k = split(self.k_lif(self.k_conv(x.flatten(0, 1)).reshape(T, B, C, H, W)))
        v = split(self.v_lif(self.v_conv(x.flatten(0, 1)).reshape(T, B, C, H, W)))
        y = (q @ (k.transpose(-2, -1) @ v)) * 0.125
        y = self.attn_lif(y.transpose(3, 4).reshape(T, B, C, N).contiguous()).reshape(T, B, C, H, W)
        return self.proj_conv(y.flatten(0, 1)).reshape(T, B, C, H, W)


class OMLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1_conv, self.fc1_bn, self.fc1_lif = nn.Conv1d(dim, hidden, 1, 1), nn.BatchNorm1d(hidden), sj_lif()
        self.fc2_conv, self.fc2_bn, self.fc2_lif = nn.Conv1d(hidden, dim, 1, 1), nn.BatchNorm1d(dim), sj_lif()
        self.hidden = hidden

    def forward(self, x):
        T, B, C, H, W = x.shape
        x = self.fc1_bn(self.fc1_conv(self.fc1_lif(x.flatten(3)).flatten(0, 1))).reshape(T, B, self.hidden, H * W)
        return self.fc2_bn(self.fc2_conv(self.fc2_lif(x).flatten(0, 1))).reshape(T, B, C, H, W).contiguous()


class OBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.attn, self.mlp = OAttention(dim, heads), OMLP(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.mlp(x)


class ODown(nn.Module):
    def __init__(self, cin, cout, k, s, p, first=False):
        super().__init__()
        self.encode_conv = nn.Conv2d(cin, cout, k, s, p)
        self.encode_bn = nn.BatchNorm2d(cout)
        if not first:
            self.encode_lif = sj_lif()

    def forward(self, x):
        T, B = x.shape[:2]
        if hasattr(self, "encode_lif"):
            x = self.encode_lif(x)
        x = self.encode_conv(x.flatten(0, 1))
        return self.encode_bn(x).reshape(T, B, *x.shape[1:]).contiguous()


class OracleV2(nn.Module):
    def __init__(self, in_channels, num_classes, dims, heads=8, kd=False):
        super().__init__()
        d0, d1, d2, d3 = dims
        self.T = 1
        self.downsample1_1 = ODown(in_channels, d0 // 2, 7, 2, 3, first=True)
        self.ConvBlock1_1 = nn.ModuleList([OConvBlock(d0 // 2)])
        self.downsample1_2 = ODown(d0 // 2, d0, 3, 2, 1)
        self.ConvBlock1_2 = nn.ModuleList([OConvBlock(d0)])
        self.downsample2 = ODown(d0, d1, 3, 2, 1)
        self.ConvBlock2_1 = nn.ModuleList([OConvBlock(d1)])
        self.ConvBlock2_2 = nn.ModuleList([OConvBlock(d1)])
        self.downsample3 = ODown(d1, d2, 3, 2, 1)
        self.block3 = nn.ModuleList([OBlock(d2, heads) for _ in range(6)])
        self.downsample4 = ODown(d2, d3, 3, 1, 1)
        self.block4 = nn.ModuleList([OBlock(d3, heads) for _ in range(2)])
        self.lif = sj_lif()
        self.head = nn.Linear(d3, num_classes)
        self.kd = kd
        if kd:
            self.head_kd = nn.Linear(d3, num_classes)

    def forward(self, x):
        x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        for name in ("downsample1_1", "ConvBlock1_1", "downsample1_2", "ConvBlock1_2", "downsample2", "ConvBlock2_1",
                     "ConvBlock2_2", "downsample3", "block3", "downsample4", "block4"):
            layer = getattr(self, name)
            for blk in (layer if isinstance(layer, nn.ModuleList) else [layer]):
                x = blk(x)
        s = self.lif(x.flatten(3).mean(3))
        out = self.head(s).mean(0)
        if self.kd:
            out_kd = self.head_kd(s).mean(0)
            return (out, out_kd) if self.training else (out + out_kd) / 2
        return out


# ================================================================================================== helpers
@torch.no_grad()
def randomize_bn(model, seed=0):
    """Non-trivial BN affine parameters and running statistics (so eval mode and the fold are really tested)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.weight.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.copy_(torch.randn(c, generator=g) * 0.3)
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return model


@torch.no_grad()
def calibrate(model, x):
    """Running statistics := the statistics of batch ``x`` (one training-mode pass with momentum 1)."""
    was_training = model.training
    bns = [b for b in model.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]
    for b in bns:
        b.momentum = 1.0
    model.train()(x)
    for b in bns:
        b.momentum = 0.1
    model.train(was_training)
    return model


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def assert_rel_close(ours, ref, tol, what, scale=None):
    scale = max(ref.abs().max().item(), scale or 0.0, 1e-30)
    err = (ours - ref).abs().max().item()
    assert err <= tol * scale, f"{what}: max |diff| {err:.3g} vs max |ref| {scale:.3g}"


def grad_scale(name, grads):
    """Scale against which a parameter's gradient error is measured.

    Parameters that feed a training-mode BatchNorm only through a per-channel shift or scale have a gradient
    that is zero up to rounding (conv biases before a BN; the RepConv's last BN, followed by the branch BN, whose
    scale matters only through eps): their error is measured against the gradient of the conv weight before them.
    """
    m = re.search(r"^(.*)\.(encode_conv|fc[12]_conv)\.bias$", name)
    if m:
        return grads[f"{m[1]}.{m[2]}.weight"].abs().max().item()
    m = re.search(r"^(.*\.body\.2)\.2\.(weight|bias)$", name)
    if m:
        return grads[f"{m[1]}.1.weight"].abs().max().item()
    return None


def tiny(T=1, kd=False, **kw):
    kw = {**dict(img_size=32, in_channels=3, num_classes=5, embed_dim=SMALL, T=T, kd=kd), **kw}
    return MetaSpikeFormer(**kw)


# ================================================================================================== oracle tests
CASES = [  # dtype, dims, T, kd, img, batch, channels_last, lif_backend
    pytest.param(torch.float64, SMALL, 1, False, 32, 3, False, "torch", id="f64-T1-32px-nchw-ref"),
    pytest.param(torch.float64, SMALL, 2, True, 32, 2, True, "auto", id="f64-T2-kd-32px-nhwc"),
    pytest.param(torch.float32, TINY, 2, False, 64, 2, True, "auto", id="f32-T2-64px-fast"),
    pytest.param(torch.float32, TINY, 1, True, 32, 3, True, "auto", id="f32-T1-kd-32px-fast"),
]


@pytest.mark.parametrize("dtype, dims, T, kd, img, batch, channels_last, backend", CASES)
def test_matches_official_oracle(dtype, dims, T, kd, img, batch, channels_last, backend):
    from spikedriven import kernels

    torch.manual_seed(0)
    ours = tiny(T=T, kd=kd, embed_dim=dims, img_size=img, channels_last=channels_last, lif_backend=backend)
    randomize_bn(ours, seed=T)
    ref = OracleV2(3, 5, dims, kd=kd)
    ref.T = T
    ref.load_state_dict(ours.state_dict(), strict=True)
    ours.to(dtype), ref.to(dtype)
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    gtol = 1e-9 if dtype == torch.float64 else 1e-4  # float32 gradients: long sums of mixed-sign terms
    if dtype == torch.float32:  # the fast paths run: fused C++ LIF kernel (where it builds), NHWC storage
        assert kernels.resolve_backend(torch.zeros(2, 3), "auto") == ("cpp" if kernels.available_backends()["cpp"]
                                                                      else "torch")
    else:  # float64 always takes the reference loop
        assert kernels.resolve_backend(torch.zeros(2, 3, dtype=dtype), "auto") == "torch"

    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, img, img, generator=g, dtype=dtype) * 1.5
    y = torch.randint(0, 5, (batch,), generator=g)

    # --- training forward: logits, gradients of every parameter, BN running statistics after the update
    ours.train(), ref.train()
    out_o, out_r = as_tuple(ours(x)), as_tuple(ref(x))
    sjf.reset_net(ref)
    assert len(out_o) == len(out_r) == (2 if kd else 1)
    for a, b in zip(out_o, out_r):
        assert a.shape == (batch, 5)
        assert_rel_close(a, b, tol, "train logits")
    sum(F.cross_entropy(o, y) for o in out_o).backward()
    sum(F.cross_entropy(o, y) for o in out_r).backward()
    grads_r = {n: p.grad for n, p in ref.named_parameters()}
    for name, p in ours.named_parameters():
        assert p.grad is not None, name
        assert_rel_close(p.grad, grads_r[name], gtol, f"grad {name}", grad_scale(name, grads_r))
    assert sum(bool(p.grad.abs().sum() > 0) for p in ours.parameters()) > 0.8 * len(grads_r)
    sd_r = ref.state_dict()
    for name, t in ours.state_dict().items():
        if name.endswith("num_batches_tracked"):
            assert t.item() == sd_r[name].item() == 1, name
        else:
            assert_rel_close(t, sd_r[name], tol, f"state {name}")

    # --- eval forward, with running statistics set to the statistics of the eval batch (so that spikes reach
    # the head) and copied to the oracle (in float32 a spike flipped by rounding during a separate calibration
    # pass would make the two models' statistics differ)
    x2 = torch.randn(batch, 3, img, img, generator=g, dtype=dtype) * 1.5
    calibrate(ours, x2)
    ref.load_state_dict(ours.state_dict(), strict=True)
    ours.eval(), ref.eval()
    with torch.no_grad():
        a, b = ours(x2), ref(x2)
        sjf.reset_net(ref)
        assert ours.forward_features(x2).std(1).max() > 0  # the head's input depends on the sample
    assert isinstance(a, torch.Tensor) and a.dtype == dtype
    assert_rel_close(a, b, tol, "eval logits")
    assert a.abs().max() > 0


def test_state_dict_keys_equal_oracle_and_official_sizes():
    ours, ref = tiny(kd=True, embed_dim=TINY), OracleV2(3, 5, TINY, kd=True)
    so, sr = ours.state_dict(), ref.state_dict()
    assert list(so) == list(sr)
    assert all(so[k].shape == sr[k].shape for k in so)
    with torch.device("meta"):
        big_o = MetaSpikeFormer(**OFFICIAL_CONFIGS["sdt_v2_8_512"])
        big_r = OracleV2(3, 1000, OFFICIAL_CONFIGS["sdt_v2_8_512"]["embed_dim"])
    sd_o, sd_r = big_o.state_dict(), big_r.state_dict()
    assert len(sd_o) == OFFICIAL_STATE_DICT_LEN["sdt_v2_8_512"] == 825
    assert list(sd_o) == list(sd_r) and all(sd_o[k].shape == sd_r[k].shape for k in sd_o)
    assert "downsample1_1.encode_conv.bias" in sd_o and "block4.1.attn.proj_conv.0.body.1.bn.running_var" in sd_o
    assert "block3.0.mlp.fc1_conv.bias" in sd_o and sd_o["block3.0.mlp.fc1_conv.weight"].shape == (2048, 512, 1)


@pytest.mark.parametrize("name", sorted(OFFICIAL_CONFIGS))
def test_official_parameter_counts(name):
    with torch.device("meta"):
        for kd, table in ((False, OFFICIAL_PARAMS), (True, OFFICIAL_PARAMS_KD)):
            m = MetaSpikeFormer(kd=kd, **OFFICIAL_CONFIGS[name])
            assert sum(p.numel() for p in m.parameters()) == table[name], (name, kd)
            assert len(m.state_dict()) == 825 + 2 * kd


def test_official_names_and_init():
    assert Spiking_vit_MetaFormer is MetaSpikeFormer
    assert sdt_v2.MS_Attention_RepConv_qkv_id is SpikeLinearAttention
    torch.manual_seed(0)
    m = MetaSpikeFormer(img_size=32, num_classes=1000, embed_dim=(16, 32, 64, 640))
    assert abs(m.head.weight.std().item() - 0.02) < 0.002 and m.head.weight.abs().max() < 0.1
    assert m.head.bias.abs().sum() == 0
    bns = [b for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]
    assert all(b.weight.eq(1).all() and b.bias.eq(0).all() and b.eps == 1e-5 and b.momentum == 0.1 for b in bns)
    # convs keep PyTorch's default (kaiming-uniform a=sqrt(5)): bound 1/sqrt(fan_in)
    w = m.downsample1_1.encode_conv.weight
    assert w.abs().max() <= 1 / math.sqrt(3 * 49) and w.std() > 0.5 / math.sqrt(3 * 49 * 3)
    assert m.block3[0].attn.attn_lif.v_threshold == 0.5 and m.block3[0].attn.q_lif.v_threshold == 1.0
    assert m.T == 1 and m.downsample1_1.encode_lif is None


# ================================================================================================== hand-made checks
def test_bnandpad_border_value_hand_computed():
    layer = BNAndPad(1).double()
    bn = layer.bn
    with torch.no_grad():
        bn.weight.fill_(2.0), bn.bias.fill_(1.0), bn.running_mean.fill_(3.0), bn.running_var.fill_(4.0 - bn.eps)
    layer.eval()
    out = layer(torch.full((1, 1, 2, 2), 5.0, dtype=torch.float64))
    assert out.shape == (1, 1, 4, 4)
    border = torch.ones(4, 4, dtype=torch.bool)
    border[1:3, 1:3] = False
    assert torch.allclose(out[0, 0][border], torch.tensor(-2.0, dtype=torch.float64))  # 1 - 3*2/2
    assert torch.allclose(out[0, 0, 1:3, 1:3], torch.tensor(3.0, dtype=torch.float64))  # 1 + (5-3)*2/2

    # training: the border uses the running statistics *after* this forward's update; no gradient through it
    layer = BNAndPad(1).double().train()
    x = torch.tensor([1.0, 3.0], dtype=torch.float64).view(2, 1, 1, 1).requires_grad_()
    out = layer(x)
    border = torch.ones(3, 3, dtype=torch.bool)
    border[1, 1] = False
    rm, rv = 0.1 * 2.0, 0.9 * 1.0 + 0.1 * 2.0  # batch mean 2, unbiased var 2
    expect_border = -rm / math.sqrt(rv + 1e-5)
    assert out[:, 0][:, border].sub(expect_border).abs().max() < 1e-12
    assert out[:, 0, 1, 1].sub(torch.tensor([-1.0, 1.0], dtype=torch.float64) / math.sqrt(1 + 1e-5)).abs().max() < 1e-12
    out[:, 0][:, border].sum().backward()
    assert layer.bn.weight.grad.abs().sum() == 0 and layer.bn.bias.grad.abs().sum() == 0 and x.grad.abs().sum() == 0


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_repconv_fold_is_exact(dtype, tol):
    torch.manual_seed(0)
    rep, bn = RepConv(6, 5), nn.BatchNorm2d(5)
    randomize_bn(rep), randomize_bn(bn, seed=1)
    branch = nn.Sequential(rep, bn).to(dtype).eval()
    fused = rep.fused_conv(bn)
    assert fused.kernel_size == (3, 3) and fused.padding == (1, 1) and fused.bias is not None
    assert fused.weight.dtype == dtype
    for x in (torch.randint(0, 2, (3, 6, 7, 5)).to(dtype), torch.randn(3, 6, 4, 4, dtype=dtype)):
        with torch.no_grad():
            assert_rel_close(fused(x), branch(x), tol, "fused RepConv")
    # without the trailing BN
    with torch.no_grad():
        x = torch.randn(2, 6, 5, 5, dtype=dtype)
        assert_rel_close(rep.fused_conv()(x), rep(x), tol, "fused RepConv, no BN")
    # the fused conv saves its input as uint8 only where the RepConv's input is binary
    assert fused.compact and not RepConv(6, 5, binary_input=False).fused_conv().compact


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_folded_model_gives_same_logits(dtype, tol):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32, dtype=dtype)
    m = calibrate(randomize_bn(tiny(T=2, kd=True)).to(dtype), x).eval()
    folded = fold_repconv(m)
    assert not hasattr(m, "repconv_folded") and folded.repconv_folded and not folded.training
    attn = folded.block3[0].attn
    assert all(isinstance(getattr(attn, n), nn.Conv2d) for n in ("q_conv", "k_conv", "v_conv", "proj_conv"))
    assert not any(isinstance(mod, RepConv) for mod in folded.modules())
    assert "block3.0.attn.q_conv.weight" in folded.state_dict()
    with torch.no_grad():
        a, b = m(x), folded(x)
    assert a.abs().sum() > 0
    assert_rel_close(b, a, tol, "folded logits")
    assert m.fuse() is m and m.repconv_folded  # in place


def test_attention_is_q_ktv_times_one_eighth_through_attn_lif():
    attn = SpikeLinearAttention(4, num_heads=2)
    g = torch.Generator().manual_seed(0)
    T, B, h, N, d = 2, 1, 2, 5, 2
    q, k, v = (torch.randint(0, 2, (T, B, h, N, d), generator=g).float() for _ in range(3))
    y = attn.attention(q, k, v)
    # explicit sums: y[n, j] = 0.125 * sum_i q[n, i] * sum_m k[m, i] v[m, j]
    for t, hh, n, j in [(0, 0, 0, 0), (1, 1, 4, 1), (0, 1, 2, 1)]:
        s = sum(q[t, 0, hh, n, i] * sum(k[t, 0, hh, m, i] * v[t, 0, hh, m, j] for m in range(N)) for i in range(d))
        assert y[t, 0, hh, n, j] == 0.125 * s
    # hand case: 1 token, q = k = v = [1, 1]  -> K^T V = [[1,1],[1,1]], Q K^T V = [2, 2], * 1/8 = 0.25
    one = torch.ones(1, 1, 1, 1, 2)
    assert attn.attention(one, one, one).flatten().tolist() == [0.25, 0.25]
    # through attn_lif (V_th 0.5, tau 2): H = x/2 at t=0, so a value of 1.0 (8 coincidences) fires, 0.875 not
    spikes = attn.attn_lif(torch.tensor([[1.0, 0.875]]))
    assert spikes.tolist() == [[1.0, 0.0]]
    # head split: channel c = head * d + lane, and the inverse restores the grid
    x = torch.arange(4 * 6, dtype=torch.float32).view(1, 1, 4, 2, 3)
    heads = attn._heads(x)
    assert heads.shape == (1, 1, 2, 6, 2) and heads[0, 0, 1, 4, 0] == x[0, 0, 2].flatten()[4]
    assert torch.equal(attn._unheads(heads, 2, 3), x)


# ================================================================================================== model behaviour
def test_event_frames_and_static_input():
    torch.manual_seed(0)
    m = randomize_bn(tiny(T=3)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = m(x)
        b = m(x.unsqueeze(1).repeat(1, 3, 1, 1, 1))
        c = m(torch.randn(2, 3, 3, 32, 32))
    torch.testing.assert_close(a, b)
    assert c.shape == (2, 5)
    feats = m.forward_features(x)
    assert feats.shape == (3, 2, 24)
    torch.testing.assert_close(m.forward_head(feats), a)


def test_kd_train_tuple_eval_mean():
    torch.manual_seed(0)
    m = randomize_bn(tiny(kd=True))
    assert isinstance(m.get_classifier(), tuple) and m.head_kd.weight.shape == (5, 24)
    x = torch.randn(2, 3, 32, 32)
    out = m.train()(x)
    assert isinstance(out, tuple) and len(out) == 2 and out[0].shape == out[1].shape == (2, 5)
    m.eval()
    with torch.no_grad():
        feats = m.forward_features(x)
        s = m.lif(feats)
        expect = (m.head(s).mean(0) + m.head_kd(s).mean(0)) / 2
        torch.testing.assert_close(m(x), expect)
    m2 = tiny(kd=False)
    assert isinstance(m2.train()(x), torch.Tensor) and "head_kd.weight" not in m2.state_dict()


@pytest.fixture(scope="module")
def small():
    return tiny(T=2)


@pytest.mark.parametrize("x, exc, msg", [
    (torch.randn(2, 1, 32, 32), ValueError, "expected 3 input channels"),
    (torch.randn(2, 3, 30, 32), ValueError, "divisible by 16"),
    (torch.randn(3, 32, 32), ValueError, "rank 4 .* or rank 5"),
    (torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), TypeError, "floating-point"),
    (torch.full((1, 3, 32, 32), float("nan")), ValueError, "NaN/inf"),
    (torch.randn(2, 6, 3, 32, 32), ValueError, "must have T=2 frames"),
])
def test_bad_input_gives_specific_message(small, x, exc, msg):
    with pytest.raises(exc, match=msg):
        small(x)


@pytest.mark.parametrize("kwargs, msg", [
    (dict(embed_dim=(9, 16, 32, 40)), "must be even"),
    (dict(embed_dim=(8, 16, 36, 40)), "embed_dim\\[2\\] \\(36\\) must be divisible by num_heads"),
    (dict(embed_dim=(8, 16, 32)), "4 positive ints"),
    (dict(img_size=40), "divisible by the total stride 16"),
    (dict(downsample_strides=(2, 2, 2, 2)), "5 ints"),
    (dict(T=0), "T \\(time steps\\)"),
    (dict(num_heads=0), "num_heads"),
    (dict(drop_path_rate=1.0), "drop_path_rate"),
])
def test_bad_config_gives_specific_message(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        tiny(**kwargs)


def test_channels_last_is_an_execution_option_only():
    torch.manual_seed(0)
    a = randomize_bn(tiny(channels_last=False)).double()
    b = tiny(channels_last=True).double()
    b.load_state_dict(a.state_dict())
    assert list(a.state_dict()) == list(b.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    seen = {}
    hooks = [c.register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, inp[0]))
             for n, c in b.named_modules() if isinstance(c, (nn.Conv2d, nn.Conv1d)) and n != "downsample1_1.encode_conv"]
    out_b = b(x)
    for h in hooks:
        h.remove()
    nchw = [n for n, t in seen.items() if t.shape[-1] * t.shape[-2] > 1
            and not t.is_contiguous(memory_format=torch.channels_last)]
    assert not nchw, f"convs fed NCHW activations: {nchw}"
    out_a = a(x)
    torch.testing.assert_close(out_a, out_b, rtol=1e-10, atol=1e-12)
    out_a.square().sum().backward(), out_b.square().sum().backward()
    grads_a = {n: p.grad for n, p in a.named_parameters()}
    for n, q in b.named_parameters():
        assert_rel_close(q.grad, grads_a[n], 1e-9, n, grad_scale(n, grads_a))


def test_set_execution_switches():
    from spikedriven.layers import SpikeConv2d
    from spikedriven.models.sdt_v2 import TokenConv1d

    m = tiny()
    spike_convs = [n for n, c in m.named_modules() if isinstance(c, (SpikeConv2d, TokenConv1d))]
    # binary-input convs: 4 downsamples after a LIF, conv1/conv2/pwconv1 of 4 conv blocks, 4 RepConv 1x1 + fc1/fc2
    # of 8 transformer blocks
    assert len(spike_convs) == 4 + 4 * 3 + 8 * 6
    assert "block3.0.attn.proj_conv.0.body.0" in spike_convs and "ConvBlock1_1.0.Conv.pwconv2" not in spike_convs
    m.set_execution(lif_backend="torch", channels_last=False, compact_spikes=False)
    assert not m.channels_last and {x.backend for x in m.modules() if hasattr(x, "backend")} == {"torch"}
    assert not any(c.compact for c in m.modules() if isinstance(c, (SpikeConv2d, TokenConv1d)))
    with pytest.raises(ValueError, match="backend must be one of"):
        m.set_execution(lif_backend="cuda")


@pytest.mark.parametrize("amp", [False, True])
def test_compact_spikes_give_identical_gradients(amp):
    torch.manual_seed(0)
    a, b = tiny(compact_spikes=False), tiny(compact_spikes=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    for m in (a, b):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = m(x)
        out.float().square().sum().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p.grad, q.grad), n


@pytest.mark.parametrize("bias", [False, True])
def test_pointwise_conv_as_matmul_equals_conv(bias):
    from spikedriven.layers.ops import (POINTWISE_MM_MAX_ROWS, pointwise_as_matmul, pointwise_conv,
                                        pointwise_conv_backward)

    torch.manual_seed(0)
    x = torch.randn(6, 24, 3, 3, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(40, 24, 1, 1, dtype=torch.float64)
    b = torch.randn(40, dtype=torch.float64) if bias else None
    assert pointwise_as_matmul(x, w)
    assert not pointwise_as_matmul(x.contiguous(), w)  # NCHW: the rows are not a view
    assert not pointwise_as_matmul(torch.zeros(POINTWISE_MM_MAX_ROWS + 1, 24, 1, 1), w.float())
    assert not pointwise_as_matmul(x, torch.zeros(40, 24, 3, 3))
    y = pointwise_conv(x, w.flatten(1), b)
    want = F.conv2d(x, w, b)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(want)
    gx, gw, gb = pointwise_conv_backward(g, x, w.flatten(1), (True, True, bias))
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    br = b.clone().requires_grad_() if bias else None
    F.conv2d(xr, wr, br).backward(g)
    torch.testing.assert_close(gx, xr.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw.view_as(w), wr.grad, rtol=1e-12, atol=1e-12)
    assert (gb is None) == (not bias) and (not bias or torch.allclose(gb, br.grad, rtol=1e-12, atol=1e-12))


def test_pointwise_spike_convs_train_and_eval_paths_agree():
    # SpikeConv2d (1x1) and TokenConv1d run a matrix product on few NHWC positions, training and evaluation
    from spikedriven.layers import SpikeConv2d
    from spikedriven.models.sdt_v2 import TokenConv1d

    torch.manual_seed(1)
    x = (torch.rand(8, 16, 2, 2) > 0.6).double().contiguous(memory_format=torch.channels_last)
    for conv in (SpikeConv2d(16, 32, 1, 1, bias=True).double(), TokenConv1d(16, 32, 1, bias=True).double()):
        w4 = conv.weight if conv.weight.ndim == 4 else conv.weight.unsqueeze(-1)
        want = F.conv2d(x, w4, conv.bias)
        with torch.no_grad():
            torch.testing.assert_close(conv(x), want, rtol=1e-12, atol=1e-12)
        xr = x.clone().requires_grad_()
        y = conv(xr)
        torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
        g = torch.randn_like(y)
        y.backward(g)
        xo, wo = x.clone().requires_grad_(), w4.detach().clone().requires_grad_()
        F.conv2d(xo, wo, conv.bias.detach()).backward(g)
        torch.testing.assert_close(xr.grad, xo.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(conv.weight.grad.view_as(wo), wo.grad, rtol=1e-12, atol=1e-12)


def test_downsample_strides_for_small_images():
    official = tiny(img_size=32)
    small = MetaSpikeFormer(img_size=28, in_channels=1, num_classes=10, embed_dim=TINY,
                            downsample_strides=(1, 1, 2, 2, 1))
    ref = MetaSpikeFormer(img_size=32, in_channels=1, num_classes=10, embed_dim=TINY)
    assert {k: v.shape for k, v in small.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert official.downsample_strides == (2, 2, 2, 2, 1)
    grids = {}
    hooks = [small.get_submodule(n).register_forward_hook(lambda mod, i, o, n=n: grids.__setitem__(n, o.shape[-1]))
             for n in ("downsample1_1", "downsample2", "downsample3", "downsample4")]
    out = small(torch.randn(2, 1, 28, 28))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 10) and grids == {"downsample1_1": 28, "downsample2": 14, "downsample3": 7,
                                              "downsample4": 7}


def test_classifier_reset_and_drop_path():
    m = tiny(kd=True, drop_path_rate=0.2)
    assert [b.drop_path for b in (*m.block3, *m.block4)] == pytest.approx([0.2 * j / 7 for j in range(8)])
    m.reset_classifier(7)
    assert m.head.weight.shape == (7, 24) and m.head_kd.weight.shape == (7, 24) and m.num_classes == 7
    m.reset_classifier(0)
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 32, 32)).shape == (1, 24)
