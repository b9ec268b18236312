"""The Meta-SpikeFormer (V2) kernels of the event-driven engine, on both backends (numba ``engine/kernels_v2.py``, C++
``kernels/csrc/engine_v2_cpu.cpp``): each equals its dense PyTorch counterpart on random inputs, counts what it
performs, and the two backends agree bit for bit (``test_v2_backends_bit_identical``)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spikedriven.engine.compiler_v2 import block_weights
from spikedriven.neuron import lif_multistep_reference

F32 = np.float32
DENSITIES = [0.0, 0.05, 0.3, 1.0]
BACKENDS = ["numba", "cpp"]


def binary(shape, p, seed):
    return (np.random.default_rng(seed).random(shape) < p).astype(np.uint8)


def to_csr(s2d):
    R, C = s2d.shape
    idx = np.zeros((R, C), np.int32)
    for r in range(R):
        nz = np.flatnonzero(s2d[r])
        idx[r, :len(nz)] = nz
    return idx, s2d.sum(1).astype(np.int32)


def csr_dense(idx, cnt, C):
    """CSR rows -> dense uint8 (entries of idx past cnt are scratch and ignored)."""
    out = np.zeros((len(cnt), C), np.uint8)
    for r in range(len(cnt)):
        out[r, idx[r, :cnt[r]]] = 1
    return out


def kernels(backend):
    if backend == "numba":
        pytest.importorskip("numba")
        from spikedriven.engine import kernels_v2 as K

        return K
    from spikedriven.kernels._cpp import ENGINE_EXT

    if not ENGINE_EXT.load():
        pytest.skip("C++ engine kernels did not build here")
    from spikedriven.engine.cpp_kernels import CppKernels

    return CppKernels(threads=2)


def nchw(s, NB, H, W):
    return torch.from_numpy(s.reshape(NB, H, W, -1)).permute(0, 3, 1, 2).float()


def rows(t):  # [NB, C, H, W] -> [NB*H*W, C]
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]).numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", DENSITIES)
@pytest.mark.parametrize("k,stride,pad,hw,Cout", [(3, 2, 1, (8, 8), 20), (3, 2, 1, (7, 5), 70), (3, 1, 1, (6, 7), 137),
                                                  (5, 2, 2, (9, 6), 64), (1, 1, 0, (4, 5), 200),
                                                  (3, 1, 1, (13, 9), 70)])  # C++: tiles of 3 output rows, last 1
def test_sparse_conv2d_matches_conv2d_and_counts(backend, p, k, stride, pad, hw, Cout):
    """Any k / stride / padding (the downsampling convs, the 3x3 convs, 1x1 convs and token linears as k = 1), weights
    in column blocks of 64 (Cout 20: one partial block; 70: a full one + 6 columns; 137: two + a 1-column tail)."""
    H, W = hw
    NB, Cin = 3, 10
    s = binary((NB * H * W, Cin), p, 31)
    g = np.random.default_rng(32)
    w = g.standard_normal((Cout, Cin, k, k)).astype(F32)
    b = g.standard_normal(Cout).astype(F32)
    Ho, Wo = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
    res = g.standard_normal((NB * Ho * Wo, Cout)).astype(F32)
    idx, cnt = to_csr(s)
    out, acc = np.empty((NB * Ho * Wo, Cout), F32), np.empty(NB * Ho, np.int64)
    wb = block_weights(np.ascontiguousarray(w.transpose(1, 2, 3, 0)))
    kernels(backend).sparse_conv2d(idx, cnt, NB, H, W, stride, pad, wb, b, res, out, acc)
    xs = nchw(s, NB, H, W)
    ref = F.conv2d(xs, torch.from_numpy(w), torch.from_numpy(b), stride=stride, padding=pad)
    np.testing.assert_allclose(out, rows(ref) + res, rtol=1e-5, atol=1e-4)
    # additions performed = sum over outputs of the active inputs inside its (unpadded) window, x Cout
    window = F.conv2d(xs.sum(1, keepdim=True), torch.ones(1, 1, k, k), stride=stride, padding=pad)
    assert int(acc.sum()) == int(window.sum().item()) * Cout


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride,hw", [(2, (10, 12)), (1, (5, 7)), (2, (7, 9))])
def test_dense_conv2d_matches_conv2d(backend, stride, hw):
    H, W = hw
    NB, Cin, Cout, k, pad = 2, 3, 12, 7, 3
    g = np.random.default_rng(33)
    x = g.standard_normal((NB * H * W, Cin)).astype(F32)
    w = g.standard_normal((Cout, Cin, k, k)).astype(F32)
    b = g.standard_normal(Cout).astype(F32)
    Ho, Wo = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
    out, macs = np.empty((NB * Ho * Wo, Cout), F32), np.empty(NB * Ho, np.int64)
    kernels(backend).dense_conv2d(x, NB, H, W, stride, pad, np.ascontiguousarray(w.transpose(1, 2, 3, 0)), b, out,
                                  macs)
    ref = F.conv2d(nchw(x, NB, H, W), torch.from_numpy(w), torch.from_numpy(b), stride=stride, padding=pad)
    np.testing.assert_allclose(out, rows(ref), rtol=1e-5, atol=1e-4)
    inb = F.conv2d(torch.ones(1, 1, H, W), torch.ones(1, 1, k, k), stride=stride, padding=pad).sum().item()
    assert int(macs.sum()) == NB * int(inb) * Cin * Cout  # dense: every in-bounds tap, zero or not


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", DENSITIES)
@pytest.mark.parametrize("hw", [(8, 8), (5, 9)])
def test_sparse_dwconv_matches_depthwise_conv2d_and_counts(backend, p, hw):
    H, W = hw
    NB, C, k = 2, 12, 7
    s = binary((NB * H * W, C), p, 34)
    g = np.random.default_rng(35)
    w = g.standard_normal((C, 1, k, k)).astype(F32)
    b = g.standard_normal(C).astype(F32)
    idx, cnt = to_csr(s)
    out, acc = np.empty((NB * H * W, C), F32), np.empty(NB * H, np.int64)
    kernels(backend).sparse_dwconv(idx, cnt, NB, H, W, 3, np.ascontiguousarray(w[:, 0].transpose(1, 2, 0)), b, out,
                                   acc)
    xs = nchw(s, NB, H, W)
    ref = F.conv2d(xs, torch.from_numpy(w), torch.from_numpy(b), padding=3, groups=C)
    np.testing.assert_allclose(out, rows(ref), rtol=1e-5, atol=1e-4)
    window = F.conv2d(xs, torch.ones(C, 1, k, k), padding=3, groups=C)  # active same-channel inputs per output
    assert int(acc.sum()) == int(window.sum().item())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("resid", [False, True])
@pytest.mark.parametrize("Cout", [8, 70])
def test_dense_linear_matches_linear(backend, resid, Cout):
    R, Cin = 37, 24
    g = np.random.default_rng(36)
    x = (g.standard_normal((R, Cin)) * binary((R, Cin), 0.5, 37)).astype(F32)  # many exact zeros, as after dwconv
    w = g.standard_normal((Cout, Cin)).astype(F32)
    b = g.standard_normal(Cout).astype(F32)
    res = g.standard_normal((R, Cout)).astype(F32)
    out = np.empty((R, Cout), F32)
    kernels(backend).dense_linear(x, np.ascontiguousarray(w.T), b, res if resid else np.zeros((0, 0), F32), out)
    ref = F.linear(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)).numpy() + (res if resid else 0)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)


def _attention_case(p, T=3, B=2, N=70, D=24, heads=3, seed=40):
    """q/k/v pre-activations driven so that each neuron spikes with probability ~p."""
    g = np.random.default_rng(seed)
    on = binary((T, B * N, 3 * D), p, seed + 1).astype(F32)
    pre = (on * 2.5 + (1 - on) * g.uniform(-1, 1.9, on.shape)).astype(F32)
    return pre, T, B, N, D, heads


def _unpack(bits, N):  # [T, B, D, NW] -> [T, B, N, D]
    return np.unpackbits(bits.view(np.uint8), axis=-1, bitorder="little")[..., :N].transpose(0, 1, 3, 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", DENSITIES)
def test_linear_attention_kernels_match_the_model(backend, p):
    """qkv_lif_bits -> kv_counts -> q_rows_lif == attn_lif(Q (K^T V) * 0.125) (V_th 0.5) computed densely, exactly:
    the counts are integers and the threshold 0.5 / 0.125 = 4 on the unscaled X is the same neuron."""
    K = kernels(backend)
    pre, T, B, N, D, h = _attention_case(p)
    d = D // h
    NW = (N + 63) // 64
    qb, kb, vb = (np.zeros((T, B, D, NW), np.uint64) for _ in range(3))
    one, half, two = F32(1), F32(0.5), F32(2)
    K.qkv_lif_bits(pre, T, B, N, D, one, half, two, one, half, two, one, half, two, False, qb, kb, vb)
    xt = torch.from_numpy(pre).reshape(T, B, N, 3 * D)
    q, k, v = (lif_multistep_reference(xt[..., i * D:(i + 1) * D]) for i in range(3))  # [T, B, N, D]
    for bits, ref in ((qb, q), (kb, k), (vb, v)):
        np.testing.assert_array_equal(_unpack(bits, N), ref.numpy().astype(np.uint8))
    kv = np.empty((T, B, h, d, d), np.int32)
    K.kv_counts(kb, vb, kv)
    heads = lambda s: s.reshape(T, B, N, h, d).transpose(2, 3)  # [T, B, h, N, d]
    kv_ref = heads(k).transpose(-2, -1) @ heads(v)
    np.testing.assert_array_equal(kv, kv_ref.numpy().astype(np.int32))
    qidx, qcnt = np.empty((T * B * N, D), np.int32), np.empty(T * B * N, np.int32)
    K.tokenbits_to_csr(qb, N, qidx, qcnt)
    yidx, ycnt = np.empty((T * B * N, D), np.int32), np.empty(T * B * N, np.int32)
    K.q_rows_lif(qidx, qcnt, kv, N, F32(4), half, two, False, yidx, ycnt)
    x = (heads(q) @ kv_ref) * 0.125  # the model's attention input, [T, B, h, N, d]
    y = lif_multistep_reference(x, v_threshold=0.5).transpose(2, 3).reshape(T, B, N, D)
    np.testing.assert_array_equal(csr_dense(yidx, ycnt, D).reshape(T, B, N, D), y.numpy().astype(np.uint8))


# ------------------------------------------------------------------------------------------ bit-identical
def _case_convs(K, p):
    g = np.random.default_rng(50)
    outs = []
    for NB, H, W, Cin, Cout, k, stride, pad in ((2, 8, 8, 12, 70, 3, 2, 1), (3, 7, 5, 5, 16, 3, 2, 1),
                                                (1, 6, 6, 9, 137, 3, 1, 1), (2, 3, 4, 20, 240, 1, 1, 0),
                                                (2, 20, 9, 6, 70, 3, 1, 1),  # C++: 7 tiles of 3 rows, the last 2
                                                (2, 5, 6, 130, 70, 3, 1, 1)):  # C++: pixel-major (Cin > 128)
        s = binary((NB * H * W, Cin), p, 51)
        idx, cnt = to_csr(s)
        w = g.standard_normal((Cin, k, k, Cout)).astype(F32)
        b = g.standard_normal(Cout).astype(F32)
        Ho, Wo = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
        out, acc = np.empty((NB * Ho * Wo, Cout), F32), np.empty(NB * Ho, np.int64)
        res = g.standard_normal((NB * Ho * Wo, Cout)).astype(F32) if stride == 1 else np.zeros((0, 0), F32)
        K.sparse_conv2d(idx, cnt, NB, H, W, stride, pad, block_weights(w), b, res, out, acc)
        x = (g.standard_normal((NB * H * W, 3)) * 3).astype(F32)
        we = g.standard_normal((3, 7, 7, Cout)).astype(F32)
        Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
        oute, macs = np.empty((NB * Ho * Wo, Cout), F32), np.empty(NB * Ho, np.int64)
        K.dense_conv2d(x, NB, H, W, stride, 3, we, b, oute, macs)
        outs += [out, acc, oute, macs]
    return outs


def _case_sepconv(K, p):
    g = np.random.default_rng(52)
    NB, H, W, C, Cout = 3, 7, 9, 40, 20
    s = binary((NB * H * W, C), p, 53)
    idx, cnt = to_csr(s)
    w = g.standard_normal((7, 7, C)).astype(F32)
    b = np.zeros(C, F32)
    u, acc = np.empty((NB * H * W, C), F32), np.empty(NB * H, np.int64)
    K.sparse_dwconv(idx, cnt, NB, H, W, 3, w, b, u, acc)
    wt = g.standard_normal((C, Cout)).astype(F32)
    bias = g.standard_normal(Cout).astype(F32)
    res = g.standard_normal((NB * H * W, Cout)).astype(F32)
    out = np.empty((NB * H * W, Cout), F32)
    K.dense_linear(u, wt, bias, res, out)
    return [u, acc, out]


def _case_attention(K, p):
    pre, T, B, N, D, h = _attention_case(p, T=2, B=3, N=100, D=40, heads=2, seed=54)
    d = D // h
    NW = (N + 63) // 64
    qb, kb, vb = (np.zeros((T, B, D, NW), np.uint64) for _ in range(3))
    plif_k = F32(1 / (1 + np.exp(-0.3)))
    K.qkv_lif_bits(pre, T, B, N, D, F32(1), F32(.5), F32(2), F32(.8), plif_k, F32(1), F32(1.2), F32(1 / 3), F32(3),
                   False, qb, kb, vb)
    kv = np.empty((T, B, h, d, d), np.int32)
    K.kv_counts(kb, vb, kv)
    qidx, qcnt = np.empty((T * B * N, D), np.int32), np.empty(T * B * N, np.int32)
    K.tokenbits_to_csr(qb, N, qidx, qcnt)
    outs = [qb, kb, vb, kv]
    for k, tau, div in ((F32(.5), F32(2), False), (F32(1 / 3), F32(3), True)):
        yidx, ycnt = np.empty((T * B * N, D), np.int32), np.empty(T * B * N, np.int32)
        K.q_rows_lif(qidx, qcnt, kv, N, F32(4), k, tau, div, yidx, ycnt)
        outs += [csr_dense(yidx, ycnt, D), ycnt]
    return outs


def _case_lif_one_step(K, p):
    """lif_csr at T = 1 (the V2 models' usual T), three decay modes; C = 45 is not a multiple of 8."""
    R, C = 37, 45
    x = (np.random.default_rng(56).standard_normal((1, R, C)) * (1 + 3 * p)).astype(F32)
    x[0, 0, :4] = [2.0, -0.0, 0.0, 1.9999999]  # exactly at the threshold (x * 0.5 == 1), signed zeros, just below
    outs = []
    for k, tau, div in ((F32(0.5), F32(2), False), (F32(1 / 3), F32(3), True), (F32(1 / (1 + np.exp(-0.3))), F32(1),
                                                                                  False)):
        idx, cnt = np.empty((R, C), np.int32), np.empty(R, np.int32)
        K.lif_csr(x, 1, F32(1), k, tau, div, idx, cnt)
        outs += [csr_dense(idx, cnt, C), cnt]
    return outs


@pytest.mark.parametrize("backend", BACKENDS)
def test_lif_one_step_matches_the_reference(backend):
    x = (np.random.default_rng(57).standard_normal((1, 29, 45)) * 2).astype(F32)
    x[0, 0, :3] = [2.0, 1.9999999, -0.0]
    idx, cnt = np.empty((29, 45), np.int32), np.empty(29, np.int32)
    kernels(backend).lif_csr(x, 1, F32(1), F32(0.5), F32(2), False, idx, cnt)
    ref = lif_multistep_reference(torch.from_numpy(x)).numpy()[0].astype(np.uint8)
    np.testing.assert_array_equal(csr_dense(idx, cnt, 45), ref)
    assert ref[0, 0] == 1 and ref[0, 1] == 0  # a tie fires


@pytest.mark.parametrize("p", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("case", [_case_convs, _case_sepconv, _case_attention, _case_lif_one_step],
                         ids=lambda f: f.__name__[6:])
def test_v2_backends_bit_identical(case, p):
    """Every V2 kernel: the C++ twin returns exactly the numba kernel's outputs (same float32 operations and order)."""
    a, b = case(kernels("numba"), p), case(kernels("cpp"), p)
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.dtype == v.dtype and u.shape == v.shape, i
        np.testing.assert_array_equal(u, v, err_msg=f"output {i}")
    assert any(np.any(u) for u in a)


def test_v2_cpp_kernels_reject_bad_arguments():
    K = kernels("cpp")
    idx, cnt = to_csr(binary((16, 4), 0.5, 1))
    wb, b, none = np.zeros((1, 4, 3, 3, 64), F32), np.zeros(8, F32), np.zeros((0, 0), F32)
    with pytest.raises(RuntimeError, match="out/acc shape mismatch"):  # 4x4 stride 2 gives 2x2, not 4x4
        K.sparse_conv2d(idx, cnt, 1, 4, 4, 2, 1, wb, b, none, np.zeros((16, 8), F32), np.zeros(4, np.int64))
    with pytest.raises(RuntimeError, match=r"wb must be \[ceil\(Cout/64\)"):  # 2 blocks for 8 columns
        K.sparse_conv2d(idx, cnt, 1, 4, 4, 1, 1, np.zeros((2, 4, 3, 3, 64), F32), b, none, np.zeros((16, 8), F32),
                        np.zeros(4, np.int64))
    with pytest.raises(RuntimeError, match="same-size output"):
        K.sparse_dwconv(idx, cnt, 1, 4, 4, 1, np.zeros((7, 7, 4), F32), np.zeros(4, F32), np.zeros((16, 4), F32),
                        np.zeros(4, np.int64))
    bits = np.zeros((1, 1, 6, 1), np.uint64)
    with pytest.raises(RuntimeError, match="kv must be"):
        K.kv_counts(bits, bits, np.zeros((1, 1, 4, 2, 2), np.int32))  # 4 heads x 2 lanes != 6 channels
