"""Fused multi-step LIF / PLIF kernels against the plain-autograd reference (spikedriven.kernels)."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import spikedriven.kernels as K
from spikedriven.kernels import (
    ENV_VAR,
    available_backends,
    lif_multistep,
    lif_reference,
    plif_multistep,
    plif_reference,
    resolve_backend,
)

HAS_CPP = available_backends()["cpp"]
HAS_TRITON = available_backends()["triton"]
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="C++ LIF kernel did not build here")
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs a CUDA device and triton")

# every fused backend that can run here, with its device
FUSED = [pytest.param("cpp", "cpu", marks=needs_cpp), pytest.param("triton", "cuda", marks=needs_triton)]
ULP = {torch.float32: 0.0, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def _sg(z: float, alpha: float = 4.0) -> float:
    s = 1.0 / (1.0 + math.exp(-alpha * z))
    return alpha * s * (1.0 - s)


def _run(fn, x, grad, *args, **kw):
    """spikes and input gradient of fn(x, ...) with upstream gradient ``grad``."""
    xr = x.detach().clone().requires_grad_()
    s = fn(xr, *args, **kw)
    s.backward(grad)
    return s.detach(), xr.grad


def _assert_grad_close(g, g_ref, dtype):
    # fp32: within 1e-6 absolute. bf16/fp16: the kernels compute in fp32 exactly like the reference, so the only
    # possible difference is the final rounding of an fp32 value that differs by ~1 ulp: allow one ulp of dtype.
    torch.testing.assert_close(g.float(), g_ref.float(), atol=1e-6, rtol=ULP[dtype])


# ---------------------------------------------------------------------------------------------------------------
# hand-computed sequence
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,device", [("torch", "cpu"), *FUSED])
def test_hand_computed_sequence(name, device):
    # tau = 2, v_th = 1, x = [1, 1, 2, 0]:
    #   t=0: H = 0    + (1 - 0   )/2 = 0.5    < 1 -> S = 0, V = 0.5
    #   t=1: H = 0.5  + (1 - 0.5 )/2 = 0.75   < 1 -> S = 0, V = 0.75
    #   t=2: H = 0.75 + (2 - 0.75)/2 = 1.375 >= 1 -> S = 1, V = 0 (hard reset)
    #   t=3: H = 0    + (0 - 0   )/2 = 0      < 1 -> S = 0, V = 0
    # backward with gS = 1 everywhere (gV[t] = gH[t+1] * (1 - 1/tau), blocked where S[t] = 1):
    #   gH3 = sg(-1); gH2 = sg(0.375) + gH3 * 0.5 * (1 - 1) = sg(0.375)
    #   gH1 = sg(-0.25) + gH2 * 0.5;  gH0 = sg(-0.5) + gH1 * 0.5;  gX = gH / 2
    x = torch.tensor([1.0, 1.0, 2.0, 0.0], device=device).view(4, 1)
    s, gx = _run(lif_multistep, x, torch.ones_like(x), backend=name)
    assert s.view(-1).tolist() == [0.0, 0.0, 1.0, 0.0]
    gh3 = _sg(-1.0)
    gh2 = _sg(0.375)
    gh1 = _sg(-0.25) + gh2 * 0.5
    gh0 = _sg(-0.5) + gh1 * 0.5
    expected = torch.tensor([gh0, gh1, gh2, gh3]) / 2
    torch.testing.assert_close(gx.view(-1).cpu(), expected, atol=1e-6, rtol=1e-6)
    if name == "torch":
        _, v = lif_multistep(x, backend="torch", return_v=True)
        assert v.view(-1).tolist() == [0.5, 0.75, 0.0, 0.0]


def test_fires_at_exact_threshold():
    # H == v_th exactly must fire (>=): x = [1, 1.5] gives H = [0.5, 1.0]; x = [2] gives H = 1.0
    for backend in ["torch"] + (["cpp"] if HAS_CPP else []):
        assert lif_multistep(torch.tensor([[1.0], [1.5]]), backend=backend).view(-1).tolist() == [0.0, 1.0]
        assert lif_multistep(torch.tensor([[2.0]]), backend=backend).item() == 1.0
        assert lif_multistep(torch.tensor([[1.0]]), v_threshold=0.5, backend=backend).item() == 1.0


# ---------------------------------------------------------------------------------------------------------------
# fused vs reference
# ---------------------------------------------------------------------------------------------------------------
def _inputs(shape, dtype, device, ties: bool, seed=0):
    g = torch.Generator().manual_seed(seed)
    if ties:  # multiples of 1/4 in [-1, 3]: with tau 2 many H land exactly on 1.0 / 0.5
        x = torch.randint(-4, 13, shape, generator=g).float() / 4
    else:
        x = torch.randn(shape, generator=g) * 1.5 + 0.3
    grad = torch.randn(shape, generator=g)
    return x.to(device=device, dtype=dtype), grad.to(device=device, dtype=dtype)


@pytest.mark.parametrize("backend,device", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "shape,v_th,tau,ties",
    [
        ((4, 2, 8, 5, 7), 1.0, 2.0, False),  # N = 560, not a multiple of any block
        ((8, 3000), 0.5, 2.0, True),
        ((6, 1, 4099), 1.0, 3.0, False),  # tau not a power of two: true division must match
        ((1, 17), 1.0, 2.0, True),  # T = 1
        ((16, 257), 1.0, 1.5, True),
    ],
)
def test_lif_matches_reference(backend, device, dtype, shape, v_th, tau, ties):
    x, grad = _inputs(shape, dtype, device, ties)
    s_ref, g_ref = _run(lif_reference, x, grad, v_th, tau, 4.0)
    s, g = _run(lif_multistep, x, grad, v_threshold=v_th, tau=tau, backend=backend)
    assert s.dtype == dtype and g.dtype == dtype and s.shape == x.shape
    assert torch.equal(s, s_ref)
    _assert_grad_close(g, g_ref, dtype)
    if ties:  # the tie case really occurs in these inputs
        assert s.float().sum() > 0


@pytest.mark.parametrize("backend,device", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("w0", [0.0, -1.2, 0.7])
def test_plif_matches_reference(backend, device, dtype, w0):
    x, grad = _inputs((5, 3, 700), dtype, device, ties=(w0 == 0.0), seed=1)
    w_ref = torch.tensor(w0, device=device, requires_grad=True)
    w = torch.tensor(w0, device=device, requires_grad=True)
    s_ref, g_ref = _run(plif_reference, x, grad, w_ref, 1.0, 4.0)
    s, g = _run(plif_multistep, x, grad, w, 1.0, 4.0, backend=backend)
    assert torch.equal(s, s_ref)
    _assert_grad_close(g, g_ref, dtype)
    assert w.grad.shape == w_ref.grad.shape
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", FUSED)
def test_non_contiguous_input_and_no_grad(backend, device):
    base, grad = _inputs((7, 64, 40), torch.float32, device, ties=False, seed=2)
    x = base.transpose(1, 2)[:, ::2]  # [7, 20, 64], non-contiguous
    grad = grad.transpose(1, 2)[:, ::2]
    assert not x.is_contiguous()
    s_ref, g_ref = _run(lif_reference, x, grad, 1.0, 2.0, 4.0)
    s, g = _run(lif_multistep, x, grad, backend=backend)
    assert torch.equal(s, s_ref) and g.shape == x.shape
    _assert_grad_close(g, g_ref, torch.float32)
    with torch.no_grad():
        assert torch.equal(lif_multistep(x, backend=backend), s_ref)
    assert not lif_multistep(x.contiguous(), backend=backend).requires_grad
    # upstream gradient as an expanded (stride-0) tensor, as produced by .sum().backward()
    xr = x.clone().requires_grad_()
    lif_multistep(xr, backend=backend).sum().backward()
    xr2 = x.clone().requires_grad_()
    lif_reference(xr2).sum().backward()
    _assert_grad_close(xr.grad, xr2.grad, torch.float32)


@needs_cpp
def test_bf16_autocast_training_step():
    torch.manual_seed(3)
    lin = torch.nn.Linear(16, 32)
    x = torch.randn(4, 8, 16)
    grads = {}
    for backend in ("torch", "cpp"):
        lin.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = lin(x)  # bf16 under autocast
            assert y.dtype == torch.bfloat16
            s = lif_multistep(y * 3, backend=backend)
        assert s.dtype == torch.bfloat16
        (s.float() * torch.linspace(-1, 1, 32)).sum().backward()
        grads[backend] = (s, lin.weight.grad.clone())
    assert torch.equal(grads["torch"][0], grads["cpp"][0])
    torch.testing.assert_close(grads["cpp"][1], grads["torch"][1], atol=1e-5, rtol=1e-2)


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (2, 4, 0)])
def test_empty_inputs(shape):
    x = torch.zeros(shape, requires_grad=True)
    s = lif_multistep(x)
    assert s.shape == x.shape


# ---------------------------------------------------------------------------------------------------------------
# backend selection
# ---------------------------------------------------------------------------------------------------------------
def test_available_backends_and_auto():
    av = available_backends()
    assert set(av) == {"torch", "cpp", "triton"} and av["torch"] is True
    x = torch.randn(2, 3)
    assert resolve_backend(x) == ("cpp" if av["cpp"] else "torch")
    assert resolve_backend(x, "torch") == "torch"
    assert resolve_backend(x.double()) == "torch"  # no fast path for float64
    assert resolve_backend(x, return_v=True) == "torch"
    s, v = lif_multistep(x, return_v=True)
    assert v.shape == x.shape and v.dtype == torch.float32
    with pytest.raises(ValueError):
        resolve_backend(x, "cuda")
    with pytest.raises(ValueError):
        resolve_backend(x, "triton")  # CPU tensor
    if av["cpp"]:
        with pytest.raises(TypeError):
            lif_multistep(x.double(), backend="cpp")
        with pytest.raises(ValueError):
            lif_multistep(x, backend="cpp", return_v=True)


def test_backend_flag_dispatches(monkeypatch):
    calls = []
    monkeypatch.setattr(K, "lif_reference", lambda *a, **k: calls.append("torch") or lif_reference(*a, **k))
    if HAS_CPP:
        fused = K.autograd.lif
        monkeypatch.setattr(K.autograd, "lif", lambda ops, *a: calls.append(ops.__name__.rsplit(".", 1)[-1][1:])
                            or fused(ops, *a))
    x = torch.randn(3, 10)
    lif_multistep(x, backend="torch")
    lif_multistep(x)
    assert calls == ["torch", "cpp" if HAS_CPP else "torch"]


def test_env_var_override(monkeypatch):
    x = torch.randn(3, 10)
    monkeypatch.setenv(ENV_VAR, "torch")
    assert resolve_backend(x) == "torch"  # forces the reference for backend="auto"
    if HAS_CPP:
        assert resolve_backend(x, "cpp") == "cpp"  # an explicit argument wins
        monkeypatch.setenv(ENV_VAR, "cpp")
        assert resolve_backend(x) == "cpp"
    monkeypatch.setenv(ENV_VAR, "triton")
    with pytest.raises(ValueError):  # forced and impossible: raise, do not silently fall back
        lif_multistep(x)
    monkeypatch.setenv(ENV_VAR, "nonsense")
    with pytest.raises(ValueError):
        lif_multistep(x)
    monkeypatch.setenv(ENV_VAR, "AUTO")
    assert resolve_backend(x) == ("cpp" if HAS_CPP else "torch")


def test_build_failure_falls_back_with_one_warning(monkeypatch):
    def broken(verbose=False):
        raise RuntimeError("no compiler")

    ext = K._cpp.CppExtension("lif_cpu.cpp", "spikedriven_lif", "lif_fwd", "LIF kernel", "the torch reference")
    monkeypatch.setattr(ext, "_build", broken)
    monkeypatch.setattr(K._cpp, "LIF_EXT", ext)
    x = torch.randn(3, 4)
    with pytest.warns(RuntimeWarning, match="falling back"):
        assert resolve_backend(x) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only one warning
        assert resolve_backend(x) == "torch"
        assert available_backends()["cpp"] is False
        with pytest.raises(RuntimeError):
            lif_multistep(x, backend="cpp")


# ---------------------------------------------------------------------------------------------------------------
# against SpikingJelly 2.0 (the oracle the official code's neuron descends from)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("v_th", [1.0, 0.5])
def test_matches_spikingjelly_lifnode(v_th):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
    x, grad = _inputs((4, 2, 6, 50), torch.float32, "cpu", ties=False, seed=4)
    node = neuron.LIFNode(tau=2.0, v_threshold=v_th, detach_reset=True, step_mode="m")
    s_sj, g_sj = _run(node, x, grad)
    s, g = _run(lif_multistep, x, grad, v_threshold=v_th)
    assert torch.equal(s, s_sj)
    torch.testing.assert_close(g, g_sj, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Triton kernels on a CPU-only machine: run them through Triton's interpreter (TRITON_INTERPRET=1, numpy) in a
# subprocess. This checks the kernels' logic (indexing, masks, reverse loop, PLIF partial sums); the real GPU
# path is covered by the needs_triton tests above when a CUDA device is present.
# ---------------------------------------------------------------------------------------------------------------
_INTERPRET_SCRIPT = r"""
import os
os.environ["TRITON_INTERPRET"] = "1"
import torch
from spikedriven.kernels import _triton as KT, autograd, lif_reference, plif_reference
for dt in (torch.float32, torch.bfloat16):
    x = (torch.randint(-4, 13, (5, 2, 1300), generator=torch.Generator().manual_seed(0)).float() / 4).to(dt)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dt)
    tol = dict(atol=1e-6, rtol=0.0 if dt == torch.float32 else 2.0 ** -7)
    for tau in (2.0, 3.0):
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        s1, s2 = autograd.lif(KT, x1, 1.0, tau, 4.0), lif_reference(x2, 1.0, tau, 4.0)
        s1.backward(g); s2.backward(g)
        assert torch.equal(s1, s2), (dt, tau)
        torch.testing.assert_close(x1.grad.float(), x2.grad.float(), **tol)
    w1, w2 = torch.tensor(0.4, requires_grad=True), torch.tensor(0.4, requires_grad=True)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    s1, s2 = autograd.plif(KT, x1, w1, 1.0, 4.0), plif_reference(x2, w2, 1.0, 4.0)
    s1.backward(g); s2.backward(g)
    assert torch.equal(s1, s2)
    torch.testing.assert_close(x1.grad.float(), x2.grad.float(), **tol)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-5, atol=1e-5)
print("OK")
"""


def test_triton_kernels_in_interpreter():
    pytest.importorskip("triton")
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _INTERPRET_SCRIPT], capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and "TRITON_INTERPRET" in r.stderr and "not supported" in r.stderr:
        pytest.skip("this triton has no interpreter")
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
