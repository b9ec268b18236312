"""Spike-driven Transformer V3 (E-SpikeFormer): the integer neuron, the model against an independent functional
transcription of the official ``Spiking_vit_MetaFormer_Spike_SepConv`` (eval and train mode, gradients, BN running
statistics), the official parameter counts and keys, and the spike-driven form (integers as binary virtual steps).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import spikedriven as sd
from spikedriven.kernels import integer_to_spikes, multispike, multispike_reference, quantise_int
from spikedriven.models.sdt_v3 import OFFICIAL_PARAMS, ESpikeFormer, spike_driven_form
from spikedriven.neuron import IntegerNeuron, neurons, set_backend


# --------------------------------------------------------------------------------------------------
# The neuron
# --------------------------------------------------------------------------------------------------
def test_quantiser_values_by_hand():
    x = torch.tensor([-1.0, -0.0, 0.2, 0.5, 1.5, 2.5, 2.51, 3.49, 4.0, 4.5, 9.0])
    # round half to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2; clamp to [0, 4]
    want = torch.tensor([0, 0, 0, 0, 2, 2, 3, 3, 4, 4, 4], dtype=torch.float32)
    for backend in ("torch", "auto", "cpp"):
        assert torch.equal(multispike(x, 4, 4.0, backend), want / 4), backend
        assert torch.equal(multispike(x, 4, 1.0, backend), want), backend
    assert torch.equal(multispike(x, 1, 1.0), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1.0]))
    assert torch.equal(multispike(x, 8, 8.0), torch.tensor([0, 0, 0, 0, 2, 2, 3, 3, 4, 4, 8.0]) / 8)


@pytest.mark.parametrize("backend", ["torch", "auto", "cpp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_quantiser_gradient_passes_inside_range(backend, dtype):
    if backend == "cpp" and dtype == torch.float64:
        pytest.skip("the C++ kernel takes fp32/bf16/fp16")
    x = torch.tensor([-0.5, 0.0, 1.3, 4.0, 4.25, 7.0], dtype=dtype, requires_grad=True)
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=dtype)
    multispike(x, 4, 4.0, backend).backward(g)
    # dL/dx = g / norm where 0 <= x <= 4 (ends included), 0 outside
    assert torch.equal(x.grad, torch.tensor([0.0, 0.5, 0.75, 1.0, 0.0, 0.0], dtype=dtype))


def test_fused_kernel_equals_official_formulation_on_random_layouts():
    torch.manual_seed(0)
    x = (torch.randn(4, 24, 7, 7) * 3).contiguous(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = multispike(a, 4, 4.0, "cpp"), multispike_reference(b, 4, 4.0)
    assert ya.is_contiguous(memory_format=torch.channels_last)  # layout kept
    g = torch.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(ya, yb) and torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_kernel_half_precision_bits_equal_official_ops(dtype):
    # the kernel converts bf16 with its own branch-free bit code; norm 3 makes g / norm and v / norm round
    torch.manual_seed(1)
    x = (torch.randn(3, 40, 5, 5) * 4).to(dtype)
    x.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 2.5])
    g = (torch.randn(3, 40, 5, 5) * 7).to(dtype)
    for norm in (4.0, 3.0):
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = multispike(a, 4, norm, "cpp"), multispike_reference(b, 4, norm)
        ya.backward(g)
        yb.backward(g)
        assert ya.dtype == dtype and torch.equal(ya.isnan(), yb.isnan())
        assert torch.equal(ya.nan_to_num(-1.0), yb.nan_to_num(-1.0)), norm
        assert torch.equal(a.grad, b.grad), norm


def test_integer_to_spikes_first_v_steps_fire():
    v = torch.tensor([[0.0, 1.0], [3.0, 4.0]])
    s = integer_to_spikes(v, 4).view(4, 2, 2)
    assert torch.equal(s.sum(0), v)
    assert torch.equal(s[:, 1, 0], torch.tensor([1.0, 1.0, 1.0, 0.0]))  # v = 3: steps 0, 1, 2
    assert torch.equal(s[:, 0, 0], torch.zeros(4))
    assert ((s == 0) | (s == 1)).all()
    assert torch.equal(quantise_int(torch.tensor([2.5, 3.5, -2.0, 7.0]), 4), torch.tensor([2.0, 4.0, 0.0, 4.0]))


def test_neuron_is_registered_and_switchable():
    m = sd.create_model("sdt_v3_digits_t")
    ns = [n for _, n in neurons(m)]
    assert ns and all(isinstance(n, IntegerNeuron) for n in ns)
    assert m.spike.norm == 1.0 and m.spike.D == 4 and ns[0].norm == 4.0
    set_backend(m, "torch")
    assert {n.backend for n in ns} == {"torch"}
    with pytest.raises(ValueError, match="D .* int >= 1"):
        IntegerNeuron(0)
    with pytest.raises(ValueError, match="norm"):
        IntegerNeuron(4, norm=0)


# --------------------------------------------------------------------------------------------------
# An independent transcription of the official model (functional, from the state_dict)
# --------------------------------------------------------------------------------------------------
def _quant(x, D=4):
    """Official Quant: round(clamp(x, 0, D)); gradient passed where 0 <= x <= D (masked clone)."""

    class Q(torch.autograd.Function):
        @staticmethod
        def forward(ctx, i):
            ctx.save_for_backward(i)
            return torch.round(torch.clamp(i, 0, D))

        @staticmethod
        def backward(ctx, g):
            (i,) = ctx.saved_tensors
            g = g.clone()
            g[(i < 0) | (i > D)] = 0
            return g

    return Q.apply(x)


class _Official:
    """The official forward, layer by layer, on parameters ``p`` and BN buffers ``buf`` (dicts by official key)."""

    def __init__(self, p, buf, training, dims, heads, strides):
        self.p, self.buf, self.training, self.dims, self.heads, self.s = p, buf, training, dims, heads, strides

    def ms(self, x, norm=4.0):
        return _quant(x) / norm

    def bn(self, x, k):
        return F.batch_norm(x, self.buf[k + ".running_mean"], self.buf[k + ".running_var"], self.p[k + ".weight"],
                            self.p[k + ".bias"], self.training, 0.1, 1e-5)

    def conv(self, x, k, stride=1, padding=0, groups=1):
        return F.conv2d(x, self.p[k + ".weight"], self.p.get(k + ".bias"), stride, padding, 1, groups)

    def sepconv(self, x, k, ks, pad):
        c = self.p[k + ".dwconv.0.weight"].shape[0]
        x = self.bn(self.conv(self.ms(x), k + ".pwconv1.0"), k + ".pwconv1.1")
        x = self.bn(self.conv(self.ms(x), k + ".dwconv.0", 1, pad, c), k + ".dwconv.1")
        return self.bn(self.conv(self.ms(x), k + ".pwconv2.0"), k + ".pwconv2.1")

    def convblock(self, x, k):
        x = self.sepconv(x, k + ".Conv", 7, 3) + x
        y = self.bn(self.conv(self.ms(x), k + ".conv1", 1, 1), k + ".bn1")
        return x + self.bn(self.conv(self.ms(y), k + ".conv2", 1, 1), k + ".bn2")

    def down(self, x, k, stride, pad, first=False):
        if not first:
            x = self.ms(x)
        return self.bn(self.conv(x, k + ".encode_conv", stride, pad), k + ".encode_bn")

    def attn(self, x, k):
        B, C, H, W = x.shape
        N, h = H * W, self.heads
        x = self.ms(x)

        def split(t):
            c = t.shape[1]
            return t.flatten(2).transpose(-1, -2).reshape(B, N, h, c // h).permute(0, 2, 1, 3)

        q = split(self.ms(self.bn(self.conv(x, k + ".q_conv.0"), k + ".q_conv.1")))
        kk = split(self.ms(self.bn(self.conv(x, k + ".k_conv.0"), k + ".k_conv.1")))
        v = split(self.ms(self.bn(self.conv(x, k + ".v_conv.0"), k + ".v_conv.1")))
        y = (q @ kk.transpose(-2, -1)) @ v * ((C // h) ** -0.5 * 2)
        y = self.ms(y.transpose(2, 3).reshape(B, -1, N)).reshape(B, -1, H, W)
        return self.bn(self.conv(y, k + ".proj_conv.0"), k + ".proj_conv.1")

    def mlp(self, x, k):
        B, C, H, W = x.shape
        x = x.flatten(2)
        x = F.conv1d(self.ms(x), self.p[k + ".fc1_conv.weight"], self.p[k + ".fc1_conv.bias"])
        x = self.bn(x, k + ".fc1_bn")
        x = F.conv1d(self.ms(x), self.p[k + ".fc2_conv.weight"], self.p[k + ".fc2_conv.bias"])
        return self.bn(x, k + ".fc2_bn").reshape(B, C, H, W)

    def block(self, x, k):
        x = x + self.sepconv(x, k + ".conv", 3, 1)
        x = x + self.attn(x, k + ".attn")
        return x + self.mlp(x, k + ".mlp")

    def __call__(self, x):
        s = self.s
        x = self.down(x, "downsample1_1", s[0], 3, first=True)
        x = self.convblock(x, "ConvBlock1_1.0")
        x = self.convblock(self.down(x, "downsample1_2", s[1], 1), "ConvBlock1_2.0")
        x = self.down(x, "downsample2", s[2], 1)
        x = self.convblock(self.convblock(x, "ConvBlock2_1.0"), "ConvBlock2_2.0")
        x = self.down(x, "downsample3", s[3], 1)
        for j in range(6):
            x = self.block(x, f"block3.{j}")
        x = self.down(x, "downsample4", s[4], 1)
        for j in range(2):
            x = self.block(x, f"block4.{j}")
        x = self.ms(x.flatten(2).mean(2), norm=1.0)
        return F.linear(x, self.p["head.weight"], self.p["head.bias"])


def _randomised(model: ESpikeFormer, seed: int = 0) -> ESpikeFormer:
    """Random BN affine/statistics so that every neuron sees a spread of integers (not a trivial model)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.7 - 0.2)
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
    return model


def _small(dtype=torch.float64, **kw):
    kw = dict(img_size=32, in_channels=3, num_classes=5, embed_dim=(8, 16, 16, 24), num_heads=2) | kw
    return _randomised(ESpikeFormer(**kw)).to(dtype)


def _oracle(model, training):
    p = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    buf = {k: v.detach().clone() for k, v in model.named_buffers()}
    return _Official(p, buf, training, model.embed_dim, model.num_heads, model.downsample_strides), p, buf


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_eval_matches_official_transcription(dtype):
    model = _small(dtype).eval()
    x = torch.randn(3, 3, 32, 32, dtype=dtype) * 2
    off, _, _ = _oracle(model, False)
    with torch.no_grad():
        ours, ref = model(x), off(x)
    assert ours.shape == (3, 5)
    assert ref.abs().max() > 0.05  # the model is not silent
    assert torch.allclose(ours, ref, atol=1e-12 if dtype == torch.float64 else 1e-5, rtol=0)


def test_train_mode_outputs_gradients_and_bn_statistics_match_official():
    model = _small(torch.float64).train()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64) * 2
    off, p, buf = _oracle(model, True)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, ref = model(xa), off(xb)
    assert torch.allclose(ours, ref, atol=1e-12, rtol=0)
    w = torch.randn_like(ref)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-12, rtol=0)
    assert xa.grad.abs().max() > 0
    for name, prm in model.named_parameters():
        assert torch.allclose(prm.grad, p[name].grad, atol=1e-10, rtol=0), name
    for name, b in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            assert int(b) == 1, name
            continue
        assert torch.allclose(b.to(buf[name].dtype), buf[name], atol=1e-12, rtol=0), name


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_official_parameter_counts(name):
    m = sd.create_model(name)
    assert sum(p.numel() for p in m.parameters()) == OFFICIAL_PARAMS[name]
    assert len(m.state_dict()) == 605  # every official key: parameters and BN buffers


def test_official_keys_and_strict_load():
    m = sd.create_model("sdt_v3_t", img_size=64, num_classes=10)
    keys = set(m.state_dict())
    for k in ("downsample1_1.encode_conv.bias", "ConvBlock1_1.0.Conv.pwconv1.0.weight",
              "ConvBlock1_1.0.Conv.dwconv.1.running_var", "block3.5.attn.v_conv.0.weight",
              "block4.1.attn.proj_conv.1.bias", "block4.1.mlp.fc2_conv.bias", "head.weight",
              "downsample4.encode_bn.num_batches_tracked"):
        assert k in keys, k
    assert m.state_dict()["block3.0.attn.v_conv.0.weight"].shape == (384, 96, 1, 1)  # lamda_ratio 4
    assert m.state_dict()["block3.0.attn.proj_conv.0.weight"].shape == (96, 384, 1, 1)
    other = sd.create_model("sdt_v3_t", img_size=64, num_classes=10)
    other.load_state_dict(m.state_dict(), strict=True)


def test_model_input_checks():
    m = sd.create_model("sdt_v3_digits_t")
    with pytest.raises(ValueError, match="one time step"):
        m(torch.randn(2, 4, 1, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        m(torch.randn(2, 1, 15, 15))
    with pytest.raises(ValueError, match="embed_dim"):
        ESpikeFormer(embed_dim=(8, 16, 16))
    with pytest.raises(ValueError, match="D "):
        ESpikeFormer(D=0)


# --------------------------------------------------------------------------------------------------
# Spike-driven form
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("D", [1, 4, 8])
def test_spike_form_gives_the_integer_model_logits(D):
    model = _small(torch.float64, D=D).eval()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64) * 2
    form = spike_driven_form(model)
    with torch.no_grad():
        want, got = model(x), form(x)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
    # every neuron of the form emits binary spikes, D per real step, summing to the integer model's integers
    outs = {}

    def rec(name):
        def hook(mod, args, out):
            outs[name] = out
        return hook

    hs = [m.register_forward_hook(rec(n)) for n, m in neurons(form)]
    with torch.no_grad():
        form(x)
    for h in hs:
        h.remove()
    assert all(((o == 0) | (o == 1)).all() for o in outs.values())
    assert outs["block3.0.attn.q_spike"].shape[0] == D * 3


def test_spike_form_float32_within_rounding():
    model = _small(torch.float32).eval()
    x = torch.randn(8, 3, 32, 32) * 2
    with torch.no_grad():
        want, got = model(x), spike_driven_form(model)(x)
    assert (got - want).abs().max() < 1e-3
    assert torch.equal(got.argmax(1), want.argmax(1))


def test_verify_proves_the_spike_form_and_names_the_first_conv():
    model = _small(torch.float32)
    rep = sd.verify_spike_driven(model, batch=2)
    assert rep.ok, rep.summary()
    assert len(rep.silent) <= 3  # a random input may leave a deep layer silent: said as a warning, not a pass
    first = [c for c in rep.checks if c.exempt and c.kind == "conv"]
    assert [c.name for c in first] == ["downsample1_1.encode_conv"]
    assert "virtual steps" in rep.summary().splitlines()[0]
    # the integer form itself is not binary: the verifier says so when asked to check it as is
    raw = sd.verify_spike_driven(model, batch=2, inference_form=False)
    assert not raw.ok


def test_energy_by_hand_on_a_tiny_v3():
    """Energy of the spike form: first conv MACs, every other layer E_AC x FLOPs x mean integer."""
    from spikedriven.energy import profile_model

    model = _small(torch.float32, img_size=16, embed_dim=(4, 8, 8, 8), num_heads=2, num_classes=3).eval()
    x = torch.randn(2, 3, 16, 16) * 2
    rep = profile_model(model, [x])
    by = {r.name: r for r in rep.layers}
    # the head: Linear 8 -> 3 fed by integers 0..4 (norm 1); mean integer measured on the integer model
    feats = model.forward_features(x)
    mean_int = float(quantise_int(feats, 4).mean())
    head = by["head.synapse"]
    assert head.flops == 8 * 3
    assert math.isclose(head.rate, mean_int, rel_tol=1e-9)
    assert math.isclose(head.energy_mj, 0.9 * 24 * mean_int / 1e9, rel_tol=1e-9)
    first = by["downsample1_1.encode_conv"]
    assert first.op == "MAC" and first.flops == 7 * 7 * 3 * 2 * 8 * 8  # k*k*Cin*Cout*Hout*Wout (16 px, stride 2)
    assert math.isclose(first.energy_mj, 4.6 * first.flops / 1e9, rel_tol=1e-9)
    # a 1x1 conv inside: FLOPs of one real step, rate = mean integer of its input
    q = by["block3.0.attn.q_conv.0.synapse"]
    assert q.flops == 8 * 8 * 1  # Cin * Cout * tokens (16 px / strides 2, 2, 2, 2, 1: one token)
    assert q.op == "AC" and math.isclose(q.energy_mj, 0.9 * q.flops * q.rate / 1e9, rel_tol=1e-9)
    total = sum(r.energy_mj for r in rep.layers)
    assert math.isclose(rep.total_mj, total, rel_tol=1e-9)


def test_timm_and_registry_metadata():
    timm = pytest.importorskip("timm")
    m = timm.create_model("sdt_v3_digits_t", num_classes=4)
    assert m.get_classifier().out_features == 4
    assert m.pretrained_cfg["first_conv"] == "downsample1_1.encode_conv"
    assert "sdt_v3_m" in sd.list_models("sdt_v3*")


# --------------------------------------------------------------------------------------------------
# Official checkpoints (misc.save_model: model, optimizer, epoch, scaler, args Namespace)
# --------------------------------------------------------------------------------------------------
def _official_file(path, model, args):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 199,
                "scaler": {"scale": 65536.0}, "args": args}, path)


def test_official_v3_checkpoint_loads_with_the_namespace_allowlist(tmp_path):
    import argparse

    from spikedriven.checkpoint import load_checkpoint
    from spikedriven.models.factory import build_model, spec_from_checkpoint

    torch.manual_seed(0)
    tiny = dict(embed_dim=(8, 16, 16, 24), num_heads=2, num_classes=1000)
    m = _randomised(ESpikeFormer(img_size=32, **tiny))
    args = argparse.Namespace(model="Efficient_Spiking_Transformer_s", input_size=32, nb_classes=1000, blr=6e-4,
                              eval=True, output_dir="/x")
    path = tmp_path / "checkpoint-199.pth"
    _official_file(path, m, args)
    _, meta = load_checkpoint(path)
    spec = spec_from_checkpoint(meta, path.name)
    assert spec.family == "sdt_v3" and spec.name == "sdt_v3_s" and spec.kwargs["img_size"] == 32
    got, _ = build_model("sdt_v3_s", checkpoint=path, overrides=dict(tiny, img_size=32))  # strict
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), m.state_dict().values()))


def test_official_v3_format_with_a_malicious_args_object_is_refused(tmp_path):
    import os

    from spikedriven.checkpoint import CheckpointError, load_checkpoint

    marker = tmp_path / "pwned"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    _official_file(path, _small(torch.float32), RunsCode())
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()
