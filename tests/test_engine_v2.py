"""Meta-SpikeFormer (V2) on the event-driven engine vs the PyTorch model: predictions, spikes (and where they differ,
that the difference starts at a float threshold tie), logits, counted additions == the energy report's SOPs, both
backends bit-identical, the command line. Small models with BatchNorm statistics calibrated on random input, so
that every neuron layer fires (the attention too)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spikedriven import MetaSpikeFormer
from spikedriven.engine import compare_with_model, compile_model, expected_sops, scale_thresholds
from spikedriven.engine.validate import model_spikes
from spikedriven.probe import calibrate_bn

pytestmark = pytest.mark.usefixtures("reference_lif")  # tests/conftest.py


@pytest.fixture(autouse=True)
def one_thread():
    """One thread for torch and the engine: these models are small, and on a loaded 2-core machine OpenMP threads that
    wait for a descheduled peer at every barrier make a run 20-50x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

SMALL = dict(img_size=32, in_channels=1, num_classes=10, embed_dim=(16, 32, 64, 80), num_heads=2,
             downsample_strides=(2, 1, 2, 1, 1))
TINY = dict(img_size=16, in_channels=1, num_classes=5, embed_dim=(8, 16, 16, 24), num_heads=2,
            downsample_strides=(2, 1, 2, 1, 1))


def _cpp_or_skip():
    from spikedriven.kernels._cpp import ENGINE_EXT

    if not ENGINE_EXT.load():
        pytest.skip("C++ engine kernels did not build here")


def calibrated(cfg, T=1, x=None, seed=0, B=4, **kw):
    torch.manual_seed(seed)
    m = MetaSpikeFormer(**{**cfg, **kw}, T=T)
    if x is None:
        x = torch.randn(B, m.in_channels, m.img_size, m.img_size)
    calibrate_bn(m, [x])
    return m.eval(), x


def attention_fires(res) -> bool:
    c = res.count_table()
    return all(c[n].active_inputs > 0 for n in c if n.endswith(("matmul_q", "proj_conv")))


@pytest.mark.parametrize("T", [1, 2])
def test_small_v2_matches_the_model(T):
    model, x = calibrated(SMALL, T)
    eng = compile_model(model, threads=1)
    ag = compare_with_model(model, eng, x)
    assert ag.same_prediction == ag.samples, ag.summary()
    assert ag.fraction >= 0.9999 and ag.origins_are_ties(), ag.summary()
    res = eng.run(x)
    with torch.no_grad():
        ref = model(x).numpy()
    if ag.mismatched == 0:  # same spikes: logits differ only by float summation order
        np.testing.assert_allclose(res.logits, ref, rtol=1e-4, atol=1e-4)
    assert attention_fires(res)
    rates = [c.rate for c in res.counts if c.kind == "sop"]
    assert 0.01 < np.mean(rates) < 0.5
    # every neuron layer of the model is compared, in the model's layouts
    rec, _ = model_spikes(model, x)
    assert set(eng.run(x, record=True).spikes) == set(rec)


@pytest.mark.parametrize("kw", [
    dict(downsample_strides=(2, 2, 2, 2, 1), img_size=32),  # the official strides: 2x2 tokens in stages 3-4
    dict(downsample_strides=(1, 2, 1, 1, 1), img_size=24, num_heads=4),  # 12x12 = 144 tokens (3 words), 4 lanes
    dict(kd=True),  # logits = (head + head_kd) / 2
    dict(num_classes=0),  # features: the mean head spikes
])
def test_v2_variants_match_the_model(kw):
    model, x = calibrated(TINY, 2, seed=1, **kw)
    eng = compile_model(model, threads=1)
    ag = compare_with_model(model, eng, x)
    assert ag.same_prediction == ag.samples and ag.fraction >= 0.9999 and ag.origins_are_ties(), ag.summary()
    res = eng.run(x)
    with torch.no_grad():
        ref = model(x).numpy()
    assert res.logits.shape == ref.shape
    if ag.mismatched == 0:
        np.testing.assert_allclose(res.logits, ref, rtol=1e-4, atol=1e-4)


def test_event_frames_match_the_model():
    """[B, T, C, H, W] event counts: the encoding conv runs at every step (MACs x T)."""
    x = torch.poisson(torch.full((3, 2, 2, 16, 16), 0.5))
    model, x = calibrated({**TINY, "in_channels": 2}, 2, x=x, seed=2)
    eng = compile_model(model, threads=1)
    ag = compare_with_model(model, eng, x)
    assert ag.same_prediction == ag.samples and ag.fraction >= 0.9999 and ag.origins_are_ties(), ag.summary()
    enc = eng.run(x).count_table()["downsample1_1.encode_conv"]
    assert enc.kind == "mac" and enc.nominal == expected_sops(model, x)["downsample1_1.encode_conv"]


def test_counts_equal_the_energy_report():
    """Every layer's nominal count == T x rate x FLOPs (x B) from hooks on the model (expected_sops) == the energy
    report's operations (profile_model, per sample): 3x3 convs of stride 1 and 2, the depthwise conv, pwconv2 (MACs
    at every step), the token MLPs, the attention products K^T V and Q (K^T V), the encoding conv (MACs, once)."""
    from spikedriven.energy import profile_model

    model, x = calibrated(SMALL, 2, seed=3)
    res = compile_model(model, threads=1).run(x)
    exp = expected_sops(model, x)
    rep = {r.name: r for r in profile_model(model, [x]).layers}
    B = x.shape[0]
    layers = [c for c in res.counts if c.kind != "bitop"]
    assert {c.name for c in layers} == set(exp) == set(rep)
    for c in layers:
        assert c.nominal == pytest.approx(exp[c.name], rel=1e-9), c.name
        assert c.nominal / B == pytest.approx(rep[c.name].sops, rel=1e-6), c.name
        assert (c.kind == "mac") == (rep[c.name].op == "MAC"), c.name
    macs = {c.name for c in layers if c.kind == "mac"}
    assert macs == {"downsample1_1.encode_conv"} | {f"{p}.0.Conv.pwconv2" for p in ("ConvBlock1_1", "ConvBlock1_2",
                                                                                     "ConvBlock2_1", "ConvBlock2_2")}


def test_performed_additions_by_hand():
    """Tiny model: every layer's performed additions (acc), recomputed from the PyTorch model's own spikes."""
    model, x = calibrated(TINY, 2, seed=4, downsample_strides=(2, 2, 1, 1, 1), B=2)
    rec, _ = model_spikes(model, x)
    res = compile_model(model, threads=1).run(x)
    got = res.count_table()

    def window(s, k, stride, pad):  # s [T,B,C,H,W]: per output, active inputs inside its unpadded window
        a = torch.from_numpy(s).float().flatten(0, 1).sum(1, keepdim=True)
        return int(F.conv2d(a, torch.ones(1, 1, k, k), stride=stride, padding=pad).sum().item())

    hand = {}
    for p, st in (("downsample1_2", 2), ("downsample2", 1), ("downsample3", 1), ("downsample4", 1)):
        hand[f"{p}.encode_conv"] = window(rec[f"{p}.encode_lif"], 3, st, 1) * getattr(model, p).encode_conv.out_channels
    for p in ("ConvBlock1_1.0", "ConvBlock1_2.0", "ConvBlock2_1.0", "ConvBlock2_2.0"):
        blk = model.get_submodule(p)
        s1, s2 = rec[f"{p}.Conv.lif1"], rec[f"{p}.Conv.lif2"]
        hand[f"{p}.Conv.pwconv1"] = int(s1.sum()) * blk.Conv.pwconv1.out_channels
        ones = torch.ones(s2.shape[2], 1, 7, 7)  # depthwise: one addition per active same-channel input in the window
        hand[f"{p}.Conv.dwconv"] = int(F.conv2d(torch.from_numpy(s2).float().flatten(0, 1), ones, padding=3,
                                                groups=s2.shape[2]).sum().item())
        T, B, C2, H, W = s2.shape
        hand[f"{p}.Conv.pwconv2"] = T * B * H * W * C2 * blk.Conv.pwconv2.out_channels  # dense MACs
        hand[f"{p}.conv1"] = window(rec[f"{p}.lif1"], 3, 1, 1) * blk.conv1.out_channels
        hand[f"{p}.conv2"] = window(rec[f"{p}.lif2"], 3, 1, 1) * blk.conv2.out_channels
    for p in ("block3.0", "block3.5", "block4.1"):
        a = model.get_submodule(p).attn
        C, h = a.dim, a.num_heads
        d = C // h
        for n in "qkv":
            hand[f"{p}.attn.{n}_conv"] = window(rec[f"{p}.attn.head_lif"], 3, 1, 1) * C
        k, v, q = (torch.from_numpy(rec[f"{p}.attn.{n}_lif"]).float() for n in "kvq")
        heads = lambda s: a._heads(s)  # [T,B,h,N,d]
        hand[f"{p}.attn.matmul_kv"] = int((heads(k).transpose(-2, -1) @ heads(v)).sum().item())  # coincidences
        hand[f"{p}.attn.matmul_q"] = int(q.sum().item()) * d  # one integer row of d per active q bit
        hand[f"{p}.attn.proj_conv"] = window(rec[f"{p}.attn.attn_lif"], 3, 1, 1) * C
        hand[f"{p}.mlp.fc1_conv"] = int(rec[f"{p}.mlp.fc1_lif"].sum()) * 4 * C
        hand[f"{p}.mlp.fc2_conv"] = int(rec[f"{p}.mlp.fc2_lif"].sum()) * C
    hand["head"] = int(rec["lif"].sum()) * 5
    B = x.shape[0]  # encoding: 7x7 stride 2 pad 3 on 16x16 -> 8x8, every in-bounds tap, once for a static image
    inb = int(F.conv2d(torch.ones(1, 1, 16, 16), torch.ones(1, 1, 7, 7), stride=2, padding=3).sum().item())
    hand["downsample1_1.encode_conv"] = B * inb * 1 * 4
    for name, acc in hand.items():
        assert got[name].acc == acc, name
    assert sum(hand.values()) > 0 and sum(got[n].acc for n in got if n.endswith("matmul_q")) > 0


@pytest.mark.parametrize("T", [1, 2])
def test_backends_bit_identical_whole_model(T):
    pytest.importorskip("numba")
    _cpp_or_skip()
    model, x = calibrated(TINY, T, seed=5, kd=True)
    a = compile_model(model, threads=1, backend="cpp").run(x, record=True)
    b = compile_model(model, threads=1, backend="numba").run(x, record=True)
    np.testing.assert_array_equal(a.logits, b.logits)
    assert a.spikes.keys() == b.spikes.keys()
    for k in a.spikes:
        np.testing.assert_array_equal(a.spikes[k], b.spikes[k], err_msg=k)
    assert a.counts == b.counts


def test_threshold_scaling_and_the_attention_threshold():
    """scale_thresholds: rates follow, the engine still matches; the attention neuron acts on the integer
    Q (K^T V) with threshold 0.5 / 0.125 = 4 (exact)."""
    model, x = calibrated(TINY, 1, seed=6)
    lo = scale_thresholds(model, 0.7)
    ag = compare_with_model(lo, compile_model(lo, threads=1), x)
    assert ag.same_prediction == ag.samples and ag.fraction >= 0.9999 and ag.origins_are_ties(), ag.summary()
    act = lambda m: sum(c.active_inputs for c in compile_model(m, threads=1).run(x).counts if c.kind == "sop")
    assert act(lo) > act(model)
    blk = compile_model(model, threads=1).plan.stages[-1]
    assert blk.scale == 0.125 and float(blk.attn_lif.vth) == 4.0
    bad = MetaSpikeFormer(**TINY, T=1)
    for blk in bad.block4:
        blk.attn.scale = 0.1
    with pytest.raises(NotImplementedError, match="not a power of two"):
        compile_model(bad, threads=1)


def test_flip_origins_are_located():
    """A threshold changed by a little in the engine only: every flip starts in that layer, within that change of
    the threshold; a large change is reported as no tie."""
    model, x = calibrated(SMALL, 2, seed=7)
    eng = compile_model(model, threads=1)
    n = eng.plan.stages[-1].fc1_lif  # block4.1.mlp.fc1_lif
    vth = float(n.vth)
    for eps, tie in ((1e-3, True), (0.2, False)):
        n.vth = np.float32(vth * (1 + eps))
        ag = compare_with_model(model, eng, x)
        assert ag.origins > 0 and set(ag.origin_layers) == {"block4.1.mlp.fc1_lif"}, ag.summary()
        assert ag.max_origin_margin <= eps * vth + 1e-6
        assert ag.origins_are_ties(tol=2e-3) == tie


def test_compile_leaves_the_model_alone_and_refuses_other_models():
    model, x = calibrated(TINY, 1, seed=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compile_model(model, threads=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(NotImplementedError, match="families"):
        compile_model(torch.nn.Linear(2, 2))


def test_cli_infer_v2_checkpoint(tmp_path, capsys):
    from spikedriven.cli import main

    model, x = calibrated(TINY, 1, seed=9)
    kw = dict(TINY, T=1)
    ck = tmp_path / "v2.pth"
    torch.save({"state_dict": model.state_dict(), "model_kwargs": kw, "family": "sdt_v2"}, ck)
    assert main(["infer", "--checkpoint", str(ck), "--engine", "events", "--data", "random", "--limit", "4"]) == 0
    out = capsys.readouterr().out
    for layer in ("block3.0.attn.matmul_kv", "block3.0.attn.matmul_q", "ConvBlock1_1.0.Conv.dwconv",
                  "ConvBlock1_1.0.Conv.pwconv2", "downsample2.encode_conv"):
        assert layer in out
    assert main(["infer", "--checkpoint", str(ck), "--engine", "dense", "--data", "random", "--limit", "4"]) == 0
