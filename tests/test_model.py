"""Model structure, SDSA semantics, parameter counts, registry and input validation."""
import re

import pytest
import torch

import spikedriven as sd
from spikedriven.layers import MS_SSA_Conv, erode
from spikedriven.model import SpikeDrivenTransformer, create_model, list_models, model_info

# Spec §4 table (official model instantiated): name -> parameters incl. the unused talking_heads.
SPEC_PARAMS = {
    "sdt_cifar10_2_256": 2_567_082, "sdt_cifar10_2_512": 10_233_546, "sdt_cifar10_2_512_tet": 10_233_546,
    "sdt_cifar100_2_256": 2_590_212, "sdt_cifar100_2_512": 10_279_716, "sdt_cifar10dvs_2_256_t10": 2_566_794,
    "sdt_gesture_2_256_t10": 2_567_051, "sdt_gesture_2_256_t16": 2_567_051, "sdt_8_384": 16_816_536,
    "sdt_6_512": 23_373_736, "sdt_8_512": 29_689_896, "sdt_10_512": 36_006_056, "sdt_8_768": 66_339_144,
}


def closed_form_params(D, L, Cin, K):
    # spec §4: 14.90625 D^2 + 1.125 Cin D + 5.75 D + L (12 D^2 + 24 D + 64) + K (D + 1)
    return int(14.90625 * D * D + 1.125 * Cin * D + 5.75 * D + L * (12 * D * D + 24 * D + 64) + K * (D + 1))


@pytest.mark.parametrize("name", sorted(SPEC_PARAMS))
def test_parameter_counts_equal_spec(name):
    m = create_model(name)
    n = sum(p.numel() for p in m.parameters())
    assert n == SPEC_PARAMS[name]
    k = model_info(name).kwargs
    assert n == closed_form_params(k["embed_dim"], k["depth"], k["in_channels"], k["num_classes"])
    assert n - 64 * k["depth"] == n - sum(b.attn.talking_heads.weight.numel() for b in m.block)


@pytest.mark.parametrize("name", ["sdt_digits_1_64", "sdt_fmnist_1_128", "sdt_sim_fmnist_dvs_2_128_t10"])
def test_our_small_models_match_closed_form(name):
    m, k = create_model(name), model_info(name).kwargs
    n = sum(p.numel() for p in m.parameters())
    assert n == model_info(name).params == closed_form_params(k["embed_dim"], k["depth"], k["in_channels"],
                                                              k["num_classes"])


def test_every_official_config_is_registered():
    assert set(SPEC_PARAMS) <= set(list_models())
    assert model_info("sdt_10_512").official_config == "imagenet/10_384_300E_t4.yml"
    with pytest.raises(KeyError, match="did you mean"):
        model_info("sdt_cifar10_2_265")


def test_plif_adds_one_scalar_per_neuron():
    m = SpikeDrivenTransformer(img_size=32, num_classes=10, embed_dim=64, depth=2, pooling_stat="0011",
                               spike_mode="plif")
    ws = [k for k in m.state_dict() if re.search(r"_lif\d?\.w$", k)]
    assert len(ws) == 5 + 8 * 2 + 1  # spec §1: 5 in SPS (incl. rpe_lif), 8 per block (incl. attn_lif), 1 head


def test_forward_shapes_static_event_and_tet():
    m = create_model("sdt_cifar10_2_256", embed_dim=64)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    m = create_model("sdt_cifar10dvs_2_256_t10", embed_dim=64)
    out = m(torch.rand(3, 10, 2, 64, 64))
    assert out.shape == (10, 3, 10)  # tet=True: per-step logits [T, B, K]
    assert isinstance(out, torch.Tensor)


def test_static_input_repeated_over_time():
    m = create_model("sdt_cifar10_2_256", embed_dim=64).eval()
    x = torch.randn(2, 3, 32, 32)
    x5 = x.unsqueeze(1).repeat(1, 4, 1, 1, 1)  # explicit [B, T, C, H, W]
    torch.testing.assert_close(m(x), m(x5))


def test_stem_token_grids():
    for name, grid in [("sdt_cifar10_2_256", 8), ("sdt_gesture_2_256_t10", 16), ("sdt_cifar10dvs_2_256_t10", 16),
                       ("sdt_8_384", 14)]:
        m = create_model(name, embed_dim=64, depth=0)
        x = m.to_time_major(torch.rand(1, m.in_channels, m.img_size, m.img_size))
        assert m.patch_embed(x).shape[-2:] == (grid, grid)


# ---------------------------------------------------------------------------------------------- SDSA
def lif_counts(counts, v_th=0.5):
    """Manual multi-step LIF over axis 0 on a tensor of counts (tau 2, hard reset)."""
    v = torch.zeros_like(counts[0])
    out = []
    for t in range(counts.shape[0]):
        h = v + (counts[t] - v) / 2
        s = (h >= v_th).float()
        v = h * (1 - s)
        out.append(s)
    return torch.stack(out)


def _binary(*shape, p=0.3, seed=0):
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < p).float()


def test_sdsa_equals_formula_on_hand_made_binary_tensors():
    att = MS_SSA_Conv(dim=16, num_heads=4)
    T, B, h, N, d = 3, 2, 4, 5, 4
    q, k, v = _binary(T, B, h, N, d, seed=1), _binary(T, B, h, N, d, seed=2), _binary(T, B, h, N, d, seed=3)
    y = att.attention(q, k, v)
    # Q ⊙ SN_0.5( sum_tokens (K ⊙ V) ), explicit loops for the sum
    counts = torch.zeros(T, B, h, 1, d)
    for n in range(N):
        counts[..., 0, :] += k[..., n, :] * v[..., n, :]
    expected = q * lif_counts(counts)
    assert torch.equal(y, expected)
    assert set(y.unique().tolist()) <= {0.0, 1.0}


def test_sdsa_mask_is_or_over_tokens_at_first_step():
    # a tiny fully hand-made case: 1 step, 1 head, 3 tokens, 2 channels
    att = MS_SSA_Conv(dim=2, num_heads=1)
    k = torch.tensor([[1, 0], [1, 0], [0, 0]], dtype=torch.float).view(1, 1, 1, 3, 2)
    v = torch.tensor([[1, 1], [0, 1], [1, 1]], dtype=torch.float).view(1, 1, 1, 3, 2)
    q = torch.tensor([[1, 1], [0, 1], [1, 0]], dtype=torch.float).view(1, 1, 1, 3, 2)
    # K⊙V column sums = [1, 0] -> mask [1, 0] -> Q ⊙ mask keeps channel 0 only
    y = att.attention(q, k, v)
    assert y.view(3, 2).tolist() == [[1, 0], [0, 0], [1, 0]]


def test_sdsa_v1_equals_formula():
    att = MS_SSA_Conv(dim=16, num_heads=4, attn_mode="sdsa_v1")
    T, B, h, N, d = 2, 2, 4, 6, 4
    q, k, v = _binary(T, B, h, N, d, seed=4), _binary(T, B, h, N, d, seed=5), _binary(T, B, h, N, d, seed=6)
    expected = lif_counts((q * k).sum(-2, keepdim=True)) * v
    assert torch.equal(att.attention(q, k, v), expected)


def test_sdsa_head_count_does_not_change_result():
    # SDSA is per channel: heads only reshape (spec §2.2, paper-facts "no effect")
    x = torch.randn(2, 2, 32, 4, 4) * 3
    a1, a8 = MS_SSA_Conv(32, 1), MS_SSA_Conv(32, 8)
    a8.load_state_dict({k: v for k, v in a1.state_dict().items() if "talking_heads" not in k}, strict=False)
    with torch.no_grad():  # train-mode BN (batch statistics) so that the neurons actually fire
        y1, y8 = a1(x), a8(x)
    torch.testing.assert_close(y1, y8)
    assert a1.q_lif(torch.zeros(1)).numel() and (y1 - x).abs().sum() > 0


def test_erode_is_3x3_max_over_last_two_axes():
    x = torch.zeros(1, 1, 1, 5, 5)
    x[..., 2, 2] = 1
    y = erode(x)
    assert y[0, 0, 0, 1:4, 1:4].eq(1).all() and y.sum() == 9


def test_dvs_mode_changes_attention():
    torch.manual_seed(0)
    a, b = MS_SSA_Conv(16, 4, dvs_mode=False), MS_SSA_Conv(16, 4, dvs_mode=True)
    q, k, v = (_binary(2, 1, 4, 9, 4, p=0.2, seed=s) for s in (7, 8, 9))
    assert not torch.equal(a.attention(q, k, v), b.attention(q, k, v))


# ---------------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def small():
    return create_model("sdt_cifar10_2_256", embed_dim=64)


@pytest.mark.parametrize("x, exc, msg", [
    (torch.randn(2, 1, 32, 32), ValueError, "expected 3 input channels"),
    (torch.randn(2, 3, 30, 32), ValueError, "divisible by 4"),
    (torch.randn(3, 32, 32), ValueError, "rank 4 .* or rank 5"),
    (torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), TypeError, "floating-point"),
    (torch.full((1, 3, 32, 32), float("nan")), ValueError, "NaN/inf"),
    (torch.randn(2, 6, 3, 32, 32), ValueError, "must have T=4 frames"),
])
def test_bad_input_gives_specific_message(small, x, exc, msg):
    with pytest.raises(exc, match=msg):
        small(x)


@pytest.mark.parametrize("kwargs, msg", [
    (dict(embed_dim=100), "divisible by 8"),
    (dict(embed_dim=72, num_heads=16), "divisible by num_heads"),
    (dict(pooling_stat="011"), "4 characters"),
    (dict(img_size=30), "divisible by 4"),
    (dict(attn_mode="linear"), "attn_mode"),
    (dict(shortcut="res"), "shortcut"),
    (dict(T=0), "T \\(time steps\\)"),
])
def test_bad_config_gives_specific_message(kwargs, msg):
    base = dict(img_size=32, num_classes=10, embed_dim=64, depth=1, pooling_stat="0011")
    with pytest.raises(ValueError, match=msg):
        SpikeDrivenTransformer(**{**base, **kwargs})


def test_unknown_override_rejected():
    with pytest.raises(TypeError, match="unknown model argument"):
        create_model("sdt_cifar10_2_256", dim=64)


def test_public_api_five_lines():
    model = sd.create_model("sdt_cifar10_2_256", embed_dim=64)
    logits = model(torch.randn(1, 3, 32, 32))
    report = sd.verify_spike_driven(model)
    assert logits.shape == (1, 10) and report.ok


def test_backward_reaches_all_trainable_parameters_but_talking_heads():
    m = create_model("sdt_cifar10_2_256", embed_dim=64)
    m(torch.randn(4, 3, 32, 32)).sum().backward()
    no_grad = {n for n, p in m.named_parameters() if p.grad is None}
    assert no_grad == {f"block.{i}.attn.talking_heads.weight" for i in range(2)}


@pytest.mark.parametrize("in_channels", [3, 1])
def test_channels_last_is_an_execution_option_only(in_channels):
    torch.manual_seed(0)
    kw = dict(embed_dim=64, in_channels=in_channels, lif_backend="auto")  # "torch" would not keep NHWC gradients
    a = create_model("sdt_cifar10_2_256", channels_last=False, **kw).double()
    b = create_model("sdt_cifar10_2_256", channels_last=True, **kw).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, in_channels, 32, 32, dtype=torch.float64)
    from spikedriven.model import calibrate_bn

    calibrate_bn(a, [x]), calibrate_bn(b, [x])
    a.eval(), b.eval()
    # Every conv after the image conv must see NHWC storage. A 1-channel NHWC image is also NCHW-contiguous,
    # so the first conv's output format is ambiguous unless the stem fixes it (it used to silently go NCHW).
    seen = {}
    hooks = [c.register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, inp[0]))
             for n, c in b.named_modules() if isinstance(c, torch.nn.Conv2d)]
    out_b = b(x)
    for h in hooks:
        h.remove()
    later = {n: t for n, t in seen.items() if n != "patch_embed.proj_conv"}
    assert len(later) == 4 + 4 * 2 + 2 * 2  # 3 stem convs + rpe, q/k/v/proj and fc1/fc2 of 2 blocks
    nchw = [n for n, t in later.items() if not t.is_contiguous(memory_format=torch.channels_last)]
    assert not nchw, f"convs fed NCHW activations: {nchw}"
    torch.testing.assert_close(a(x), out_b, rtol=1e-9, atol=1e-9)
    assert out_b.abs().sum() > 0
    # gradients: the same values, and NHWC all the way back (every BN receives an NHWC gradient)
    layouts = {}
    hooks = [bn.register_full_backward_hook(
        lambda mod, gin, gout, n=n: layouts.__setitem__(n, gout[0].is_contiguous(memory_format=torch.channels_last)))
        for n, bn in b.named_modules() if isinstance(bn, torch.nn.BatchNorm2d)]
    xg = x.clone().requires_grad_()
    (ga,) = torch.autograd.grad(a(xg).square().sum(), xg)
    (gb,) = torch.autograd.grad(b(xg).square().sum(), xg)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-12)
    assert ga.abs().sum() > 0 and len(layouts) == 5 + 2 * 6
    assert all(layouts.values()), [n for n, ok in layouts.items() if not ok]


def test_token_mean_gradient_is_exact_and_nhwc():
    from spikedriven.layers import _nhwc, token_mean

    x = _nhwc(torch.randn(2, 3, 5, 4, 6)).requires_grad_()
    g = torch.randn(2, 3, 5)
    (ours,) = torch.autograd.grad(token_mean(x, nhwc_grad=True), x, g)
    (ref,) = torch.autograd.grad(x.flatten(3).mean(3), x, g)
    assert torch.equal(ours, ref)
    assert ours.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    assert not ref.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)  # why token_mean exists
    torch.testing.assert_close(ours[1, 2, 3], g[1, 2, 3].expand(4, 6) / 24, rtol=0, atol=0)


@pytest.mark.parametrize("amp", [False, True])
def test_compact_spike_convs_give_identical_gradients(amp):
    torch.manual_seed(0)
    a = create_model("sdt_cifar10_2_256", embed_dim=64, compact_spikes=False)
    b = create_model("sdt_cifar10_2_256", embed_dim=64, compact_spikes=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 3, 32, 32)
    for m in (a, b):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = m(x)
        out.float().square().sum().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        if p.grad is None:
            assert q.grad is None
            continue
        assert torch.equal(p.grad, q.grad), n


def test_fast_paths_switch_off():
    from spikedriven.layers import SpikeConv2d

    m = create_model("sdt_cifar10_2_256", embed_dim=64, shortcut="sew")
    assert not m.block[0].attn.q_conv.compact and m.block[0].mlp.fc2_conv.compact  # SEW sums are not binary
    m.set_execution(lif_backend="torch", channels_last=True, compact_spikes=False)
    assert m.channels_last and all(not c.compact for c in m.modules() if isinstance(c, SpikeConv2d))
    assert {x.backend for x in m.modules() if hasattr(x, "backend")} == {"torch"}
    m.set_execution(compact_spikes=True)
    assert not m.block[0].attn.q_conv.compact  # never enabled where inputs may be non-binary
