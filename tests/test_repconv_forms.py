"""The two inference forms of V2's RepConv: the folded dense 3x3 (spike-driven; verify, energy and the engines use it)
and the 1x1 -> depthwise 3x3 -> 1x1 chain, chosen per input size by an exact MAC count in the dense evaluation path
(prepare_inference). Both equal the eval-mode RepConv to float64 rounding."""
import pytest
import torch
from torch import nn

from spikedriven import MetaSpikeFormer
from spikedriven.inference import fold_bn, has_unfolded_reparam, prepare_inference
from spikedriven.layers.repconv import RepConv, RepConvEval, repconv_macs
from spikedriven.models.sdt_v2 import fold_repconv
from spikedriven.probe import calibrate_bn

TINY = dict(img_size=16, in_channels=1, num_classes=5, embed_dim=(8, 16, 16, 24), num_heads=2,
            downsample_strides=(2, 1, 2, 1, 1))  # stages 3-4 see 4x4 tokens


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _random_bn(bn: nn.BatchNorm2d, g: torch.Generator) -> None:
    c = bn.num_features
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64))
        bn.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.2)


def _repconv(cin, cout, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    rep, after = RepConv(cin, cout).double(), nn.BatchNorm2d(cout).double()
    for bn in (rep.body[1].bn, rep.body[2][2], after):
        _random_bn(bn, g)
    return rep.eval(), after.eval()


def test_mac_counts_by_hand():
    # 64 -> 64 channels on 8x8: in-bounds 3x3 taps (3*8-2)^2 = 484 per channel pair
    dense, chain = repconv_macs(64, 64, 8, 8)
    assert dense == 64 * 64 * 484 == 1_982_464
    assert chain == 64 * 64 * 64 + 64 * 484 + 64 * 64 * 64 == 555_264
    # 1x1 map: the 3x3 has one tap inside; the chain still pays both 1x1 convs
    assert repconv_macs(64, 64, 1, 1) == (4096, 4096 + 64 + 4096)
    # 2x2, 1 -> 1 channel: taps 4*4 = 16; chain 4 + 16 + 4 = 24: folding pays
    assert repconv_macs(1, 1, 2, 2) == (16, 24)
    # 1x5 strip, 2 -> 8: taps 1*13; dense 208, chain 4*5 + 2*13 + 16*5 = 126
    assert repconv_macs(2, 8, 1, 5) == (208, 126)


def test_auto_picks_the_form_with_fewer_macs():
    rep, after = _repconv(64, 64)
    m = rep.eval_form(after)
    assert isinstance(m, RepConvEval) and m.mode == "auto"
    assert not m.uses_dense(8, 8)  # 1.98 M vs 0.56 M MACs: the chain
    assert m.uses_dense(1, 1)  # 4,096 vs 8,256: folding pays
    calls = []
    m.dense.register_forward_hook(lambda *a: calls.append("dense"))
    m.chain.register_forward_hook(lambda *a: calls.append("chain"))
    with torch.no_grad():
        m(torch.rand(2, 64, 8, 8, dtype=torch.float64))
        m(torch.rand(2, 64, 1, 1, dtype=torch.float64))
    assert calls == ["chain", "dense"]
    with pytest.raises(ValueError, match="mode must be one of"):
        RepConvEval(m.dense, m.chain, "fast")


@pytest.mark.parametrize("cin,cout,h,w", [(6, 6, 5, 7), (4, 10, 1, 1), (8, 3, 2, 3)])
@pytest.mark.parametrize("with_bn_after", [False, True])
def test_both_forms_equal_the_repconv_in_float64(cin, cout, h, w, with_bn_after):
    rep, after = _repconv(cin, cout, seed=cin + h)
    bn = after if with_bn_after else None
    x = (torch.rand(3, cin, h, w, dtype=torch.float64) < 0.4).double()  # binary spikes, as in V2
    with torch.no_grad():
        ref = rep(x) if bn is None else bn(rep(x))
        dense, chain = rep.fused_conv(bn), rep.chain_convs(bn)
        torch.testing.assert_close(dense(x), ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(chain(x), ref, rtol=0, atol=1e-12)
        for mode in ("auto", "dense", "chain"):
            torch.testing.assert_close(rep.eval_form(bn, mode)(x), ref, rtol=0, atol=1e-12)
    assert [type(c) for c in chain][1:] == [nn.Conv2d, nn.Conv2d] and chain[1].groups == cin
    assert chain[1].nonbinary_input and chain[2].nonbinary_input  # the chain is not spike-driven


def _model():
    torch.manual_seed(0)
    m = MetaSpikeFormer(**TINY, T=2).double()
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    calibrate_bn(m, [x])
    return m.eval(), x


def test_prepare_inference_runs_the_cheaper_form_with_equal_logits():
    m, x = _model()
    p = prepare_inference(m)
    evals = [mod for mod in p.modules() if isinstance(mod, RepConvEval)]
    assert len(evals) == 4 * 8 and all(e.mode == "auto" for e in evals)  # q, k, v, proj in 8 blocks
    assert not has_unfolded_reparam(fold_bn(p)) and has_unfolded_reparam(p)
    used = []
    for e in evals:
        e.chain.register_forward_hook(lambda *a: used.append("chain"))
        e.dense.register_forward_hook(lambda *a: used.append("dense"))
    with torch.no_grad():
        ref = m(x)
        torch.testing.assert_close(p(x), ref, rtol=0, atol=1e-9)
        # 4x4 tokens at 16 to 24 channels: the chain (e.g. 16->16: 16*16*100 = 25,600 vs 4,096+1,600+4,096)
        assert used == ["chain"] * 32
        dense = prepare_inference(m, repconv="dense")
        assert not any(isinstance(mod, RepConvEval) for mod in dense.modules())
        torch.testing.assert_close(dense(x), ref, rtol=0, atol=1e-9)
        torch.testing.assert_close(fold_repconv(m, form="chain")(x), ref, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="form must be one of"):
        prepare_inference(m, repconv="fastest")


@pytest.mark.filterwarnings("ignore:verify_spike_driven")
def test_spike_driven_consumers_use_the_folded_form():
    """verify, energy and the engine turn prepare_inference's form back into one dense 3x3 conv per RepConv."""
    from spikedriven.energy.profile import profile_model
    from spikedriven.verify import verify_spike_driven

    m, x = _model()
    m, x = m.float(), x.float()
    p = prepare_inference(m)
    f = fold_bn(p)
    q = f.block3[0].attn.q_conv
    assert isinstance(q, nn.Conv2d) and q.kernel_size == (3, 3) and q.groups == 1
    assert torch.equal(q.weight, p.block3[0].attn.q_conv.dense.weight)
    rep = verify_spike_driven(p, x, calibrate=False)
    names = [c.name for c in rep.checks]
    assert "block3.0.attn.q_conv" in names and not any(".chain." in n or ".dense" in n for n in names)
    assert rep.ok
    e_p, e_m = profile_model(p, [x]), profile_model(m, [x])
    assert [layer.name for layer in e_p.layers] == [layer.name for layer in e_m.layers]
    assert "block3.0.attn.q_conv" in [layer.name for layer in e_p.layers]
    assert e_p.total_sops == pytest.approx(e_m.total_sops) and e_p.total_macs == pytest.approx(e_m.total_macs)


def test_the_v2_engine_compiles_prepare_inference_form_as_the_folded_model():
    from spikedriven.engine import compile_model

    m, x = _model()
    m, x = m.float(), x.float()
    a = compile_model(m, threads=1).run(x)
    b = compile_model(prepare_inference(m), threads=1).run(x)
    assert (a.predictions == b.predictions).all()
    assert [c.acc for c in a.counts] == [c.acc for c in b.counts]
