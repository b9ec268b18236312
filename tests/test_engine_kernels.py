"""Each kernel of the event-driven engine equals its dense PyTorch counterpart (random binary inputs), on both
backends: the numba kernels (``engine/kernels.py``) and their C++ twins (``engine/cpp_kernels.py``, every kernel
the executor runs). The two backends must agree bit for bit (``test_backends_bit_identical_*``)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spikedriven.neuron import lif_multistep_reference

DENSITIES = [0.0, 0.01, 0.1, 0.5, 1.0]
NO_RES = np.zeros((0, 0), np.float32)


BACKENDS = ["numba", "cpp"]


def kernels(backend):
    """The kernel set of a backend (same functions, same arguments); skips where it is not available here."""
    if backend == "numba":
        pytest.importorskip("numba")
        from spikedriven.engine import kernels as K

        return K
    from spikedriven.kernels._cpp import ENGINE_EXT

    if not ENGINE_EXT.load():
        pytest.skip("C++ engine kernels did not build here")
    from spikedriven.engine.cpp_kernels import CppKernels

    return CppKernels(threads=2)


def run_sparse_linear(backend, *args):
    kernels(backend).sparse_linear(*args)


def run_sparse_conv3x3(backend, *args):
    kernels(backend).sparse_conv3x3(*args)


def run_lif_csr(backend, *args):
    kernels(backend).lif_csr(*args)


def binary(shape, p, seed):
    g = np.random.default_rng(seed)
    return (g.random(shape) < p).astype(np.uint8)


def to_csr(s2d):
    R, C = s2d.shape
    idx = np.zeros((R, C), np.int32)
    cnt = s2d.sum(1).astype(np.int32)
    for r in range(R):
        nz = np.flatnonzero(s2d[r])
        idx[r, :len(nz)] = nz
    return idx, cnt


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", DENSITIES)
@pytest.mark.parametrize("resid", [False, True])
@pytest.mark.parametrize("Cout", [40, 70])  # 5 blocks of 8; one block of 64 + a 6-column tail (C++)
def test_sparse_linear_matches_f_linear(backend, p, resid, Cout):
    R, Cin = 37, 48
    s = binary((R, Cin), p, 1)
    g = np.random.default_rng(2)
    w = g.standard_normal((Cout, Cin)).astype(np.float32)
    b = g.standard_normal(Cout).astype(np.float32)
    res = g.standard_normal((R, Cout)).astype(np.float32)
    idx, cnt = to_csr(s)
    out = np.empty((R, Cout), np.float32)
    run_sparse_linear(backend, idx, cnt, np.ascontiguousarray(w.T), b, res if resid else NO_RES, out)
    ref = F.linear(torch.from_numpy(s).float(), torch.from_numpy(w), torch.from_numpy(b))
    if resid:
        ref = ref + torch.from_numpy(res)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", DENSITIES)
@pytest.mark.parametrize("hw", [(8, 8), (5, 7)])
def test_sparse_conv3x3_matches_conv2d_and_counts(backend, p, hw):
    H, W = hw
    NB, Cin, Cout = 3, 12, 20
    s = binary((NB, H, W, Cin), p, 3)
    g = np.random.default_rng(4)
    w = g.standard_normal((Cout, Cin, 3, 3)).astype(np.float32)
    b = g.standard_normal(Cout).astype(np.float32)
    res = g.standard_normal((NB * H * W, Cout)).astype(np.float32)
    idx, cnt = to_csr(s.reshape(-1, Cin))
    out = np.empty((NB * H * W, Cout), np.float32)
    acc = np.empty(NB * H, np.int64)
    run_sparse_conv3x3(backend, idx, cnt, NB, H, W, np.ascontiguousarray(w.transpose(1, 2, 3, 0)), b, res, out,
                       acc)
    xs = torch.from_numpy(s).permute(0, 3, 1, 2).float()
    ref = F.conv2d(xs, torch.from_numpy(w), torch.from_numpy(b), padding=1).permute(0, 2, 3, 1).reshape(-1, Cout)
    np.testing.assert_allclose(out, ref.numpy() + res, rtol=1e-5, atol=1e-4)
    # additions performed = sum over outputs of active inputs inside its (unpadded) window, x Cout
    window = F.conv2d(xs.sum(1, keepdim=True), torch.ones(1, 1, 3, 3), padding=1)
    assert int(acc.sum()) == int(window.sum().item()) * Cout


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [0.1, 1.0])
def test_dense_conv3x3_matches_conv2d(backend, p):
    NB, H, W, Cin, Cout = 2, 6, 9, 3, 8
    g = np.random.default_rng(5)
    x = (g.standard_normal((NB, H, W, Cin)) * binary((NB, H, W, Cin), p, 6)).astype(np.float32)
    w = g.standard_normal((Cout, Cin, 3, 3)).astype(np.float32)
    b = g.standard_normal(Cout).astype(np.float32)
    out = np.empty((NB * H * W, Cout), np.float32)
    macs = np.empty(NB * H, np.int64)
    kernels(backend).dense_conv3x3(x.reshape(-1, Cin), NB, H, W, np.ascontiguousarray(w.transpose(1, 2, 3, 0)), b, out, macs)
    ref = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(w), torch.from_numpy(b), padding=1)
    np.testing.assert_allclose(out, ref.permute(0, 2, 3, 1).reshape(-1, Cout).numpy(), rtol=1e-5, atol=1e-4)
    inb = F.conv2d(torch.ones(1, 1, H, W), torch.ones(1, 1, 3, 3), padding=1).sum().item()
    assert int(macs.sum()) == NB * int(inb) * Cin * Cout  # dense: every in-bounds tap, zero or not


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", DENSITIES)
@pytest.mark.parametrize("hw", [(8, 8), (6, 10), (7, 5)])
def test_pools_match_max_pool2d(backend, p, hw):
    K = kernels(backend)
    H, W = hw
    NB, C = 2, 10
    s = binary((NB, H, W, C), p, 7)
    H2, W2 = (H - 1) // 2 + 1, (W - 1) // 2 + 1
    idx = np.empty((NB * H2 * W2, C), np.int32)
    cnt = np.empty(NB * H2 * W2, np.int32)
    K.or_pool_csr(s.reshape(-1, C), NB, H, W, idx, cnt)
    ref = F.max_pool2d(torch.from_numpy(s).permute(0, 3, 1, 2).float(), 3, 2, 1).permute(0, 2, 3, 1).reshape(-1, C)
    got = np.zeros((NB * H2 * W2, C), np.uint8)
    for r in range(len(cnt)):
        got[r, idx[r, :cnt[r]]] = 1
    np.testing.assert_array_equal(got, ref.numpy().astype(np.uint8))
    xr = np.random.default_rng(8).standard_normal((NB * H * W, C)).astype(np.float32)
    out = np.empty((NB * H2 * W2, C), np.float32)
    K.max_pool_dense(xr, NB, H, W, out)
    ref = F.max_pool2d(torch.from_numpy(xr.reshape(NB, H, W, C)).permute(0, 3, 1, 2), 3, 2, 1)
    np.testing.assert_array_equal(out, ref.permute(0, 2, 3, 1).reshape(-1, C).numpy())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("vth", [1.0, 0.5, 0.37])
@pytest.mark.parametrize("static", [False, True])
def test_lif_kernels_bit_exact(backend, vth, static):
    K = kernels(backend)
    T, R, C = 5, 33, 17
    g = np.random.default_rng(9)
    x = (g.standard_normal((1 if static else T, R, C)) * 1.5).astype(np.float32)
    ref = lif_multistep_reference(torch.from_numpy(x).expand(T, R, C), v_threshold=vth).numpy().astype(np.uint8)
    s = np.empty((T, R, C), np.uint8)
    K.lif_dense(x, T, np.float32(vth), np.float32(0.5), np.float32(2.0), False, s)
    np.testing.assert_array_equal(s, ref)
    idx = np.empty((T * R, C), np.int32)
    cnt = np.empty(T * R, np.int32)
    K.lif_csr(x, T, np.float32(vth), np.float32(0.5), np.float32(2.0), False, idx, cnt)
    got = np.zeros((T * R, C), np.uint8)
    for r in range(T * R):
        got[r, idx[r, :cnt[r]]] = 1
    np.testing.assert_array_equal(got.reshape(T, R, C), ref)
    # tau != 2 uses the division form, bit-identical to the reference
    ref3 = lif_multistep_reference(torch.from_numpy(x).expand(T, R, C), v_threshold=vth, tau=3.0).numpy()
    K.lif_dense(x, T, np.float32(vth), np.float32(1 / 3), np.float32(3.0), True, s)
    np.testing.assert_array_equal(s, ref3.astype(np.uint8))
    K.lif_csr(x, T, np.float32(vth), np.float32(1 / 3), np.float32(3.0), True, idx, cnt)
    got[:] = 0
    for r in range(T * R):
        got[r, idx[r, :cnt[r]]] = 1
    np.testing.assert_array_equal(got.reshape(T, R, C), ref3.astype(np.uint8))


@pytest.mark.parametrize("p", [0.05, 0.3, 1.0])
def test_cpp_and_numba_kernels_bit_identical(p):
    """Same float32 additions in the same order: the two backends agree exactly, not just closely."""
    g = np.random.default_rng(11)
    R, Cin, Cout = 29, 50, 137  # 2 blocks of 64 + one of 8 + a 1-column tail
    idx, cnt = to_csr(binary((R, Cin), p, 12))
    wt = g.standard_normal((Cin, Cout)).astype(np.float32)
    b = g.standard_normal(Cout).astype(np.float32)
    res = g.standard_normal((R, Cout)).astype(np.float32)
    outs = [np.empty((R, Cout), np.float32) for _ in BACKENDS]
    for be, out in zip(BACKENDS, outs):
        run_sparse_linear(be, idx, cnt, wt, b, res, out)
    np.testing.assert_array_equal(outs[0], outs[1])
    # C++: Cin 50 runs tap by tap over tiles (here 2 tiles of 5 rows of W = 6, the last of 2 rows), Cin 140 pixel by
    # pixel (a tap's 64 columns of 140 channels outgrow L1)
    for Cin, (NB, H, W) in ((50, (2, 7, 6)), (140, (2, 5, 6))):
        idx, cnt = to_csr(binary((NB * H * W, Cin), p, 13))
        w = g.standard_normal((Cin, 3, 3, Cout)).astype(np.float32)
        res = g.standard_normal((NB * H * W, Cout)).astype(np.float32)
        outs = [np.empty((NB * H * W, Cout), np.float32) for _ in BACKENDS]
        accs = [np.empty(NB * H, np.int64) for _ in BACKENDS]
        for be, out, acc in zip(BACKENDS, outs, accs):
            run_sparse_conv3x3(be, idx, cnt, NB, H, W, w, b, res, out, acc)
        np.testing.assert_array_equal(outs[0], outs[1])
        np.testing.assert_array_equal(accs[0], accs[1])


def csr_dense(idx, cnt, C):
    """CSR rows -> dense uint8 (entries of idx past cnt are scratch, backend-dependent, and ignored)."""
    out = np.zeros((len(cnt), C), np.uint8)
    for r in range(len(cnt)):
        out[r, idx[r, :cnt[r]]] = 1
    return out


def random_bits(T, B, D, N, p, seed):
    """Token-packed spikes [T, B, D, ceil(N/64)] with bits >= N zero, and the same spikes dense [T, B, D, N]."""
    s = binary((T, B, D, N), p, seed)
    NW = (N + 63) // 64
    padded = np.zeros((T, B, D, NW * 64), np.uint8)
    padded[..., :N] = s
    return np.packbits(padded, axis=-1, bitorder="little").view(np.uint64).copy(), s


F32 = np.float32
PLIF_K = F32(1 / (1 + np.exp(-0.3)))  # a decay that is not a power of two


def _case_lif(K, p):
    T, R, C = 4, 23, 45
    g = np.random.default_rng(20)
    x = (g.standard_normal((T, R, C)) * (3 * p + 0.2)).astype(F32)
    outs = []
    for xx in (x, x[:1].copy()):  # per-step input and a static input repeated at every step
        for k, tau, div in ((F32(0.5), F32(2), False), (PLIF_K, F32(1), False), (F32(1 / 3), F32(3), True)):
            idx, cnt = np.empty((T * R, C), np.int32), np.empty(T * R, np.int32)
            K.lif_csr(xx, T, F32(0.8), k, tau, div, idx, cnt)
            s = np.empty((T, R, C), np.uint8)
            K.lif_dense(xx, T, F32(0.8), k, tau, div, s)
            outs += [csr_dense(idx, cnt, C), cnt, s]
    return outs


def _case_dense_conv(K, p):
    g = np.random.default_rng(21)
    outs = []
    for NB, H, W, Cin, Cout in ((2, 6, 9, 3, 20), (1, 5, 4, 2, 70), (3, 4, 4, 1, 16)):
        x = (g.standard_normal((NB * H * W, Cin)) * binary((NB * H * W, Cin), p, 22) * 4).astype(F32)
        w = g.standard_normal((Cin, 3, 3, Cout)).astype(F32)
        b = g.standard_normal(Cout).astype(F32)
        out, macs = np.empty((NB * H * W, Cout), F32), np.empty(NB * H, np.int64)
        K.dense_conv3x3(x, NB, H, W, w, b, out, macs)
        outs += [out, macs]
    return outs


def _case_pools(K, p):
    g = np.random.default_rng(23)
    outs = []
    for NB, H, W, C in ((2, 8, 8, 10), (3, 7, 5, 33)):
        H2, W2 = (H - 1) // 2 + 1, (W - 1) // 2 + 1
        s = binary((NB * H * W, C), p, 24)
        idx, cnt = np.empty((NB * H2 * W2, C), np.int32), np.empty(NB * H2 * W2, np.int32)
        K.or_pool_csr(s, NB, H, W, idx, cnt)
        x = g.standard_normal((NB * H * W, C)).astype(F32)
        out = np.empty((NB * H2 * W2, C), F32)
        K.max_pool_dense(x, NB, H, W, out)
        outs += [csr_dense(idx, cnt, C), cnt, out]
    return outs


def _case_sdsa(K, p):
    T, B, N, D, d = 3, 2, 70, 24, 3  # N = 7 x 10 tokens: two words, the second partly used
    g = np.random.default_rng(25)
    pre = (g.standard_normal((T, B * N, 3 * D)) * (1 + 2 * p)).astype(F32)
    NW = (N + 63) // 64
    bits = [np.zeros((T, B, D, NW), np.uint64) for _ in range(4)]
    mask = np.empty((T, B, D), np.uint8)
    nargs = (F32(1), F32(.5), F32(2), F32(1), PLIF_K, F32(1), F32(1), F32(.5), F32(2), F32(.5), F32(.5), F32(2))
    K.qkv_lif_sdsa(pre, T, B, N, D, *nargs, False, *bits, mask)
    qb, kb, vb, yb = bits
    outs = [*bits, mask]
    ke, ve, kv, ym, y2 = (np.zeros_like(kb) for _ in range(5))
    K.erode_grid(kb, 7, 10, ke)
    K.erode_grid(vb, 7, 10, ve)
    K.erode_heads(np.bitwise_and(ke, ve), N, d, kv)
    m2 = np.empty((T, B, D), np.uint8)
    K.sdsa_mask(qb, kv, F32(.5), F32(.5), F32(2), False, ym, m2)
    K.erode_heads(ym, N, d, y2)
    idx, cnt = np.empty((T * B * N, D), np.int32), np.empty(T * B * N, np.int32)
    K.tokenbits_to_csr(y2, N, idx, cnt)
    return outs + [ke, ve, kv, ym, m2, y2, csr_dense(idx, cnt, D), cnt]


def _case_token_mean(K, p):
    T, B, N, D = 2, 3, 49, 70
    x = (np.random.default_rng(26).standard_normal((T * B * N, D)) * (1 + 10 * p)).astype(F32)
    out = np.empty((T * B, D), F32)
    K.token_mean(x, T, B, N, out)
    return [out]


@pytest.mark.parametrize("p", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("case", [_case_lif, _case_dense_conv, _case_pools, _case_sdsa, _case_token_mean],
                         ids=lambda f: f.__name__[6:])
def test_backends_bit_identical_every_kernel(case, p):
    """Every other kernel the executor runs: the C++ twin returns exactly the numba kernel's outputs."""
    a, b = case(kernels("numba"), p), case(kernels("cpp"), p)
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.dtype == v.dtype and u.shape == v.shape, i
        np.testing.assert_array_equal(u, v, err_msg=f"output {i}")
    assert any(np.any(u) for u in a)  # the case exercises something


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
def test_erode_kernels_match_max_pool(backend, p):
    """DVS Erode: erode_grid = 3x3/s1/p1 max-pool over the H x W token grid per channel; erode_heads = the same
    over (token, lane) inside each head of d lanes (channel = head * d + lane)."""
    K = kernels(backend)
    T, B, H, W, D, d = 2, 2, 7, 10, 12, 4
    N = H * W
    bits, s = random_bits(T, B, D, N, p, 27)
    mp = lambda a: F.max_pool2d(torch.from_numpy(a).float(), 3, 1, 1).numpy().astype(np.uint8)
    out = np.zeros_like(bits)
    K.erode_grid(bits, H, W, out)
    unpack = lambda bb: np.unpackbits(bb.view(np.uint8), axis=-1, bitorder="little")[..., :N]
    np.testing.assert_array_equal(unpack(out), mp(s.reshape(T * B * D, H, W)).reshape(T, B, D, N))
    out[:] = 0
    K.erode_heads(bits, N, d, out)
    heads = s.reshape(T, B, D // d, d, N).transpose(0, 1, 2, 4, 3).reshape(-1, N, d)  # [.., token, lane]
    ref = mp(heads).reshape(T, B, D // d, N, d).transpose(0, 1, 2, 4, 3).reshape(T, B, D, N)
    np.testing.assert_array_equal(unpack(out), ref)


def test_cpp_kernels_reject_bad_arguments():
    K = kernels("cpp")
    idx, cnt = to_csr(binary((4, 6), 0.5, 1))
    wt, b, out = np.zeros((6, 8), np.float32), np.zeros(8, np.float32), np.zeros((4, 8), np.float32)
    with pytest.raises(RuntimeError, match="wt must be Float"):
        K.sparse_linear(idx, cnt, wt.astype(np.float64), b, NO_RES, out)
    with pytest.raises(RuntimeError, match="out/bias shape mismatch"):
        K.sparse_linear(idx, cnt, wt, b, NO_RES, out[:, :5].copy())
    with pytest.raises(RuntimeError, match="out must be contiguous"):
        K.sparse_linear(idx, cnt, wt, b, NO_RES, np.zeros((8, 4), np.float32).T)  # a transposed view: not written
    with pytest.raises(TypeError, match="unsupported array dtype"):
        K.token_mean(np.zeros((4, 2), np.complex64), 1, 1, 4, np.zeros((1, 2), np.float32))


@pytest.mark.parametrize("p", DENSITIES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("D", [24, 100])  # C++: one partial block of 64 channels; a full one + a partial one
def test_sdsa_bitpacked_matches_masks(p, backend, D):
    """q/k/v LIF + SDSA on token-packed bits == Q * LIF_0.5(sum_tokens(K * V)) computed densely."""
    T, B, N = 3, 2, 70  # N = 70: two 64-bit words, the second partly used
    g = np.random.default_rng(10)
    # drive so that each neuron spikes with probability ~p at the first step (p=0: never, p=1: always)
    on = binary((T, B * N, 3 * D), p, 11).astype(np.float32)
    pre = (on * 2.5 + (1 - on) * g.uniform(-1, 1.9, on.shape)).astype(np.float32)
    pre[0] = on[0] * 2.5 + (1 - on[0]) * -1.0
    NW = (N + 63) // 64
    bits = [np.zeros((T, B, D, NW), np.uint64) for _ in range(4)]
    mask = np.empty((T, B, D), np.uint8)
    f = np.float32
    nargs = (f(1), f(.5), f(2), f(1), f(.5), f(2), f(1), f(.5), f(2), f(.5), f(.5), f(2))
    K = kernels(backend)
    K.qkv_lif_sdsa(pre, T, B, N, D, *nargs, False, *bits, mask)
    xt = torch.from_numpy(pre).reshape(T, B, N, 3 * D)
    q, k, v = (lif_multistep_reference(xt[..., i * D:(i + 1) * D]) for i in range(3))
    m = lif_multistep_reference((k * v).sum(2, keepdim=True), v_threshold=0.5)  # [T,B,1,D]
    y = (q * m).numpy().astype(np.uint8)  # [T,B,N,D]
    np.testing.assert_array_equal(mask, m[:, :, 0].numpy().astype(np.uint8))

    def unpack(bb):
        by = bb.view(np.uint8).reshape(T, B, D, NW * 8)
        return np.unpackbits(by, axis=-1, bitorder="little")[..., :N].transpose(0, 1, 3, 2)

    np.testing.assert_array_equal(unpack(bits[0]), q.numpy().astype(np.uint8))
    np.testing.assert_array_equal(unpack(bits[3]), y)
    idx = np.empty((T * B * N, D), np.int32)
    cnt = np.empty(T * B * N, np.int32)
    K.tokenbits_to_csr(bits[3], N, idx, cnt)
    got = np.zeros((T * B * N, D), np.uint8)
    for r in range(len(cnt)):
        got[r, idx[r, :cnt[r]]] = 1
    np.testing.assert_array_equal(got.reshape(T, B, N, D), y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_mean(backend):
    T, B, N, D = 2, 3, 49, 16
    x = np.random.default_rng(12).standard_normal((T * B * N, D)).astype(np.float32)
    out = np.empty((T * B, D), np.float32)
    kernels(backend).token_mean(x, T, B, N, out)
    np.testing.assert_allclose(out, x.reshape(T * B, N, D).mean(1), rtol=1e-5, atol=1e-6)


def test_popcount():
    K = kernels("numba")
    from numba import njit

    @njit
    def pc(a):
        return K.popcount64(a)

    for v in (0, 1, 2**63, 2**64 - 1, 0x0F0F):
        assert pc(np.uint64(v)) == bin(v).count("1")
