"""E-SpikeFormer (V3) on the event-driven engine: logits vs the spike-driven form, integer activations vs the model
(differences only where the model's pre-activation sits at a rounding tie k + 0.5), counted additions vs the energy
report's SOPs and vs counts by hand, both backends bit-identical, the command line on a trained checkpoint. Small
models with random BatchNorm statistics so that every neuron sees a spread of integers."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spikedriven.engine import compare_with_model, compile_model, expected_sops, numba_available
from spikedriven.engine.executor_v3 import integer_csr
from spikedriven.engine.validate_v3 import model_integers
from spikedriven.models.sdt_v3 import ESpikeFormer, spike_driven_form

TINY = dict(img_size=16, in_channels=1, num_classes=5, embed_dim=(8, 16, 16, 16), num_heads=2,
            downsample_strides=(2, 1, 2, 1, 1))


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cpp_or_skip():
    from spikedriven.kernels._cpp import ENGINE_EXT

    if not ENGINE_EXT.load():
        pytest.skip("C++ engine kernels did not build here")


def model_and_input(seed=0, B=3, **kw):
    torch.manual_seed(seed)
    m = ESpikeFormer(**{**TINY, **kw})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                n = mod.num_features
                mod.weight.copy_(torch.rand(n, generator=g) * 3 + 1)
                mod.bias.copy_(torch.rand(n, generator=g) * 1.5 - 0.3)
                mod.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                mod.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
    return m.eval(), torch.randn(B, m.in_channels, m.img_size, m.img_size, generator=g)


def test_integer_csr_lists_each_channel_v_times():
    v = np.array([[0, 2, 1], [0, 0, 0], [4, 0, 3]], np.uint8)
    idx, cnt = integer_csr(v)
    assert cnt.tolist() == [3, 0, 7]
    assert idx[0, :3].tolist() == [1, 1, 2] and idx[2, :7].tolist() == [0, 0, 0, 0, 2, 2, 2]


def test_v3_matches_the_spike_form_and_the_integer_model():
    _cpp_or_skip()
    model, x = model_and_input(0)
    eng = compile_model(model, threads=1, backend="cpp")
    res = eng.run(x, record=True)
    with torch.no_grad():
        ref = spike_driven_form(model)(x).numpy()
    ints, _, _ = model_integers(model, x)
    assert set(ints) <= set(res.spikes)
    # every layer emits a spread of integers (a non-trivial model), the attention included
    for name in ("ConvBlock1_1.0.Conv.spike2", "block3.0.attn.q_spike", "block3.0.attn.attn_spike", "spike"):
        assert ints[name].max() >= 2 and (ints[name] > 0).mean() > 0.02, name
    ag = compare_with_model(model, eng, x)
    assert ag.same_prediction == ag.samples == 3
    assert ag.fraction > 0.999
    assert ag.origins_are_ties(1e-4), ag.summary()  # any difference starts at a rounding tie (k + 0.5)
    if ag.mismatched == 0:
        np.testing.assert_allclose(res.logits, ref, rtol=1e-4, atol=1e-4)
    c = res.count_table()
    assert c["downsample1_1.encode_conv"].kind == "mac"
    assert all(v.kind in ("sop", "bitop") for k, v in c.items() if k != "downsample1_1.encode_conv")


def test_counts_equal_the_energy_report():
    _cpp_or_skip()
    model, x = model_and_input(1)
    res = compile_model(model, threads=1, backend="cpp").run(x)
    exp = expected_sops(model, x)
    got = {c.name: c for c in res.counts if c.kind != "bitop"}
    assert set(got) == set(exp), set(got) ^ set(exp)
    for name, e in exp.items():
        assert got[name].nominal == pytest.approx(e, rel=1e-9, abs=1e-6), name


def test_performed_additions_by_hand():
    """acc = weight rows actually added, from the model's own integers: 1x1 layers v x Cout per input, 3x3 convs
    and the depthwise conv v per in-bounds tap, the attention Kᵀ V coincidences = sum of K_int^T V_int."""
    _cpp_or_skip()
    model, x = model_and_input(2, B=2)
    eng = compile_model(model, threads=1, backend="cpp")
    res = eng.run(x)
    c = res.count_table()
    ints, _, _ = model_integers(model, x)
    t = {k: torch.from_numpy(v.astype(np.float64)) for k, v in ints.items()}
    # 1x1 conv C -> 2C on spike1: every unit of every integer adds a row of 2C
    s = t["ConvBlock1_1.0.Conv.spike1"]
    assert c["ConvBlock1_1.0.Conv.pwconv1.0"].acc == s.sum() * 2 * s.shape[1]
    # 3x3 conv (stride 1): per output, the integers inside its unpadded window, x Cout
    s = t["ConvBlock1_1.0.spike1"]
    cout = model.ConvBlock1_1[0].conv1.out_channels
    ones = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    win = F.conv2d(s.sum(1, keepdim=True), ones, padding=1)
    assert c["ConvBlock1_1.0.conv1"].acc == win.sum() * cout
    # 3x3 stride 2 downsampling conv
    s = t["downsample2.encode_spike"]
    cout = model.downsample2.encode_conv.out_channels
    win = F.conv2d(s.sum(1, keepdim=True), ones, padding=1, stride=2)
    assert c["downsample2.encode_conv"].acc == win.sum() * cout
    # depthwise 7x7: one scalar per in-bounds tap
    s = t["ConvBlock1_1.0.Conv.spike2"]
    win = F.conv2d(s, torch.ones(s.shape[1], 1, 7, 7, dtype=torch.float64), padding=3, groups=s.shape[1])
    assert c["ConvBlock1_1.0.Conv.dwconv.0"].acc == win.sum()
    # attention: Kᵀ V coincidence counts and d_v additions per active q step
    a = model.block3[0].attn
    h = a.num_heads
    k, v, q = (a._heads(t[f"block3.0.attn.{n}_spike"]) for n in "kvq")
    assert c["block3.0.attn.matmul_qk"].acc == (k.transpose(-1, -2) @ v).sum()
    assert c["block3.0.attn.matmul_v"].acc == q.sum() * (4 * a.dim // h)
    # head: integers 0..D of the norm-1 neuron, each unit adds a row of K
    assert c["head"].acc == t["spike"].sum() * model.num_classes


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
def test_backends_bit_identical():
    _cpp_or_skip()
    model, x = model_and_input(3, B=2)
    a = compile_model(model, threads=1, backend="cpp").run(x, record=True)
    b = compile_model(model, threads=1, backend="numba").run(x, record=True)
    assert np.array_equal(a.logits, b.logits)
    assert all(np.array_equal(a.spikes[k], b.spikes[k]) for k in a.spikes)
    assert [(c.name, c.acc, c.nominal) for c in a.counts] == [(c.name, c.acc, c.nominal) for c in b.counts]


def test_refusals():
    model, _ = model_and_input(4, D=3)
    with pytest.raises(NotImplementedError, match="power of two"):
        compile_model(model)
    model, x = model_and_input(4)
    with pytest.raises(ValueError, match="spike-driven form"):
        compile_model(spike_driven_form(model))


def test_cli_infer_trained_v3_checkpoint(tmp_path, capsys):
    _cpp_or_skip()
    from spikedriven.cli import main
    from spikedriven.training.api import train

    res = train("digits_v3", print_fn=lambda *_: None, output=str(tmp_path), experiment="v3", epochs=1,
                warmup_epochs=0, max_train_samples=32, max_eval_samples=32, batch_size=16, val_batch_size=32,
                workers=0, threads=1, progress=False, tensorboard=False, plot=False, summary=False,
                save_safetensors=False)
    ck = Path(res["run_dir"]) / "last.pt"
    assert main(["infer", "--checkpoint", str(ck), "--engine", "events", "--data", "digits", "--limit", "8"]) == 0
    out = capsys.readouterr().out
    for layer in ("block3.0.attn.matmul_qk", "block3.0.attn.matmul_v", "ConvBlock1_1.0.Conv.dwconv.0",
                  "downsample2.encode_conv", "head"):
        assert layer in out
    assert "accuracy" in out


@pytest.mark.slow  # torch.compile of the inference form: some 30 s on 2 cores
def test_cli_infer_dense_compiled_gives_the_eager_predictions(tmp_path, capsys):
    from spikedriven.cli import main
    from spikedriven.training.api import train

    res = train("digits_v3", print_fn=lambda *_: None, output=str(tmp_path), experiment="v3c", epochs=1,
                warmup_epochs=0, max_train_samples=32, max_eval_samples=32, batch_size=16, val_batch_size=32,
                workers=0, threads=1, progress=False, tensorboard=False, plot=False, summary=False,
                save_safetensors=False)
    ck = str(Path(res["run_dir"]) / "last.pt")
    lines = {}
    for extra in ([], ["--compile"]):
        assert main(["infer", "--checkpoint", ck, "--engine", "dense", "--data", "digits", "--limit", "16",
                     "--batch", "8"] + extra) == 0
        lines[bool(extra)] = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("accuracy")]
    assert lines[True] == lines[False] and lines[True]
