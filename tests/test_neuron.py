"""LIF / PLIF neurons against hand-computed sequences and against spikingjelly 2.0 (independent oracle)."""
import math

import pytest
import torch

from spikedriven.neuron import (LIF, ATan, ParametricLIF, Sigmoid, Triangle, lif_multistep_reference, make_neuron,
                                spike_fn)


def manual_lif(xs, v_th=1.0, tau=2.0):
    """Scalar LIF written out from the equations, for one neuron."""
    v, out = 0.0, []
    for x in xs:
        h = v + (x - v) / tau
        s = 1.0 if h >= v_th else 0.0
        v = h * (1 - s)
        out.append(s)
    return out


def test_hand_computed_sequence():
    # x = 1,1,2,0,3 with tau 2:  H = .5 -> .75 -> 1.375 (fire, V=0) -> 0 -> 1.5 (fire)
    x = torch.tensor([1.0, 1.0, 2.0, 0.0, 3.0]).view(5, 1)
    s, v = lif_multistep_reference(x, return_v=True)
    assert s.flatten().tolist() == [0, 0, 1, 0, 1]
    assert v.flatten().tolist() == pytest.approx([0.5, 0.75, 0.0, 0.0, 0.0])


def test_fires_exactly_at_threshold():
    # H = x/2 at t=0: x = 2.0 gives H = 1.0 == V_th -> spike (>=, not >)
    s = lif_multistep_reference(torch.tensor([[2.0], [1.9999]]))
    assert s.flatten().tolist() == [1.0, 0.0]
    # threshold 0.5 (SDSA mask neuron): a token count of 1 fires immediately
    assert lif_multistep_reference(torch.tensor([[1.0]]), v_threshold=0.5).item() == 1.0


@pytest.mark.parametrize("v_th", [1.0, 0.5])
def test_random_sequences_match_manual(v_th):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 50, generator=g) * 2
    s = LIF(v_threshold=v_th, backend="torch")(x)
    for j in range(50):
        assert s[:, j].tolist() == manual_lif(x[:, j].tolist(), v_th)


def test_surrogate_gradient_single_step():
    # one step: S = H(x/2 - 1); dS/dx = sg'(x/2 - 1) / 2, sg' = 4 sig(4u)(1-sig(4u))
    x = torch.tensor([[1.5]], requires_grad=True)
    LIF(backend="torch")(x).sum().backward()
    u = 0.75 - 1.0
    sig = 1 / (1 + math.exp(-4 * u))
    assert x.grad.item() == pytest.approx(4 * sig * (1 - sig) / 2, rel=1e-6)


def test_reset_is_detached_two_steps():
    # t0: H0 = x0/2; t1: H1 = V0/2 + x1/2 with V0 = H0 (1 - S0). With detach_reset, dV0/dH0 = (1 - S0).
    x = torch.tensor([[0.8], [1.6]], requires_grad=True)
    s = LIF(backend="torch")(x)
    s[1].sum().backward()
    h0 = 0.4
    h1 = h0 / 2 + 0.8
    d = lambda u: 4 * (1 / (1 + math.exp(-4 * u))) * (1 - 1 / (1 + math.exp(-4 * u)))  # noqa: E731
    g_h1 = d(h1 - 1)
    assert x.grad[1].item() == pytest.approx(g_h1 / 2, rel=1e-6)
    assert x.grad[0].item() == pytest.approx(g_h1 * 0.5 * (1 - 0) * 0.5, rel=1e-6)  # S0 = 0


def test_output_dtype_and_state_is_per_call():
    x = torch.full((3, 4), 3.0)
    lif = LIF(backend="torch")
    a = lif(x)
    b = lif(x)  # no reset_net needed: identical result on a second call
    assert torch.equal(a, b) and a.dtype == x.dtype
    assert lif(x.bfloat16()).dtype == torch.bfloat16


def test_surrogates_are_swappable_objects():
    x = torch.linspace(-1, 1, 11, requires_grad=True)
    for sg, peak in [(Sigmoid(4.0), 1.0), (ATan(2.0), 1.0), (Triangle(1.0), 1.0)]:
        x.grad = None
        spike_fn(x, sg).sum().backward()
        assert x.grad[5].item() == pytest.approx(peak)  # derivative at 0
        assert (x.grad >= 0).all()
    assert Sigmoid(4.0) == Sigmoid(4.0) and Sigmoid(4.0) != Sigmoid(2.0)
    with pytest.raises(ValueError, match="alpha"):
        Sigmoid(0)
    # a non-default surrogate runs on the reference path even with backend "auto"
    lif = LIF(surrogate=ATan(), backend="auto")
    assert lif(torch.full((2, 3), 5.0)).sum().item() == 6.0  # H = 2.5 at both steps (reset to 0 between)


def test_bad_neuron_arguments():
    with pytest.raises(ValueError, match="tau must be > 1"):
        LIF(tau=1.0)
    with pytest.raises(ValueError, match="backend"):
        LIF(backend="cuda")
    with pytest.raises(ValueError, match="spike_mode"):
        make_neuron("if")


def test_plif_initial_tau_and_gradient():
    plif = ParametricLIF(init_tau=2.0, backend="torch")
    assert plif.w.item() == pytest.approx(0.0) and plif.tau == pytest.approx(2.0)
    x = torch.randn(5, 40, generator=torch.Generator().manual_seed(1)) * 2
    # with w = 0 the PLIF equals LIF(tau=2)
    assert torch.equal(plif(x), LIF(backend="torch")(x))
    plif(x).sum().backward()
    assert plif.w.grad is not None and plif.w.grad.abs().item() > 0


sj = pytest.importorskip("spikingjelly.activation_based.neuron", reason="spikingjelly 2.0 test oracle not installed")


@pytest.mark.parametrize("v_th", [1.0, 0.5])
@pytest.mark.parametrize("T", [1, 4, 10])
def test_matches_spikingjelly_lifnode(v_th, T):
    g = torch.Generator().manual_seed(T)
    x = (torch.randn(T, 8, 16, 5, 5, generator=g) * 1.5 + 0.7)
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    ref = sj.LIFNode(tau=2.0, detach_reset=True, step_mode="m", v_threshold=v_th)
    s_ref = ref(x1)
    s_our = LIF(v_threshold=v_th, backend="torch")(x2)
    assert torch.equal(s_ref, s_our)
    w = torch.randn_like(s_ref)
    (s_ref * w).sum().backward()
    (s_our * w).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=0, atol=1e-6)


def test_plif_matches_spikingjelly():
    x = torch.randn(6, 300, generator=torch.Generator().manual_seed(3)) * 2
    ref = sj.ParametricLIFNode(init_tau=3.0, detach_reset=True, step_mode="m")
    ours = ParametricLIF(init_tau=3.0, backend="torch")
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    s1, s2 = ref(x1), ours(x2)
    assert torch.equal(s1, s2)
    s1.sum().backward()
    s2.sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.w.grad, ref.w.grad, rtol=1e-5, atol=1e-6)
