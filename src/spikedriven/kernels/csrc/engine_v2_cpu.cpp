// Event-driven engine kernels for Spike-driven Transformer V2 (Meta-SpikeFormer), backend "cpp"; numba twins in
// spikedriven/engine/kernels_v2.py, with the same float32 operations in the same order (bit-identical outputs):
//   * sparse_conv2d: any k x k / stride / padding conv on a CSR spike map, weights in blocks of 64 columns (every
//     synaptic layer on spikes: 3x3 convs of stride 1 or 2, 1x1 convs and token linears as k = 1):
//     out = ((0 + w_1) + w_2 + ...) + bias (+ resid), taps (ky, kx) row-major, then active channels ascending.
//   (the encoding conv, 7x7 with stride s and pad 3 on the real image, is engine_cpu.cpp's dense_conv2d)
//   * sparse_dwconv: SepConv's depthwise k x k conv (stride 1) on binary input: for each output element, the
//     weights of its channel at the in-bounds taps whose input spiked, taps row-major, then + bias.
//   * dense_linear: SepConv's pwconv2 on the depthwise conv's real-valued output: ((0 + x_1 * w_1) + ...) + bias
//     (+ resid), input channels ascending; multiply-accumulates (the one non-additive layer after the encoding).
//   * qkv_lif_bits, kv_counts, q_rows_lif: the linear attention Q (K^T V) on token-packed bits and CSR rows;
//     integer counts (exact), then the attention neuron in float32 with its threshold divided by the scale.
#include "engine_common.h"

namespace {

using namespace sd_engine;

// k x k conv (any stride, zero padding) on a CSR spike map with rows (nb, y, x) of an H x W grid, with weights in
// column blocks: wb[nblk, Cin, k, k, 64] holds columns [64 jb, 64 jb + 64) of w[Cin, k, k, Cout] (the last block
// zero-padded, so that a block adds whole vectors of 8). 1x1 convs and per-token linears are k = 1. The arithmetic
// and the tiling: tiled_spike_conv (engine_common.h).
void sparse_conv2d(const at::Tensor& idx, const at::Tensor& cnt, int64_t NB, int64_t H, int64_t W, int64_t stride,
                   int64_t pad, const at::Tensor& wb, const at::Tensor& bias, const at::Tensor& resid, at::Tensor out,
                   at::Tensor acc, int64_t threads) {
  check(idx, at::kInt, 2, "idx");
  check(cnt, at::kInt, 1, "cnt");
  check(wb, at::kFloat, 5, "wb");
  check(bias, at::kFloat, 1, "bias");
  check(out, at::kFloat, 2, "out");
  check(acc, at::kLong, 1, "acc");
  const int64_t nblk = wb.size(0), cin = wb.size(1), k = wb.size(2), cout = bias.size(0);
  const int64_t istride = idx.size(1), P = NB * H * W;
  TORCH_CHECK(wb.size(3) == k && wb.size(4) == 64 && nblk == (cout + 63) / 64 && stride >= 1 && pad >= 0,
              "wb must be [ceil(Cout/64), Cin, k, k, 64], stride >= 1, pad >= 0");
  const int64_t Ho = out_size(H, k, stride, pad), Wo = out_size(W, k, stride, pad);
  TORCH_CHECK(Ho >= 1 && Wo >= 1, "empty output grid");
  TORCH_CHECK(cnt.size(0) == P && idx.size(0) == P, "idx/cnt must have NB*H*W rows");  // rows may repeat (V3)
  TORCH_CHECK(out.size(0) == NB * Ho * Wo && out.size(1) == cout && acc.size(0) == NB * Ho, "out/acc shape mismatch");
  const int32_t* ip = idx.data_ptr<int32_t>();
  const int32_t* cp = cnt.data_ptr<int32_t>();
  const float* wp = wb.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  const float* rp = optional_resid(resid, NB * Ho * Wo, cout, "[NB*Ho*Wo, Cout]");
  float* op = out.data_ptr<float>();
  int64_t* ap = acc.data_ptr<int64_t>();
  const int64_t kk = k * k;
  auto block = [&](int64_t jb) {  // whole vectors over the block's zero padding (never past its 64 columns)
    return WeightBlock{wp + jb * cin * kk * 64, kk * 64, 64, std::min<int64_t>(64, (cout - jb * 64 + 7) / 8 * 8)};
  };
  tiled_spike_conv(ip, cp, istride, NB, H, W, cin, k, stride, pad, cout, block, bp, rp, op, ap, threads);
}

// Depthwise k x k conv (stride 1, zero padding pad) on a CSR spike map with rows (nb, y, x); w[k, k, C]. Output
// element (o, c) = sum of w[ky, kx, c] over the in-bounds taps whose input pixel has channel c active (taps
// row-major), + bias[c]. acc[nb*H + y] = scalar additions performed for that output row.
void sparse_dwconv(const at::Tensor& idx, const at::Tensor& cnt, int64_t NB, int64_t H, int64_t W, int64_t pad,
                   const at::Tensor& w, const at::Tensor& bias, at::Tensor out, at::Tensor acc, int64_t threads) {
  check(idx, at::kInt, 2, "idx");
  check(cnt, at::kInt, 1, "cnt");
  check(w, at::kFloat, 3, "w");
  check(bias, at::kFloat, 1, "bias");
  check(out, at::kFloat, 2, "out");
  check(acc, at::kLong, 1, "acc");
  const int64_t k = w.size(0), C = w.size(2), istride = idx.size(1), P = NB * H * W;
  TORCH_CHECK(w.size(1) == k && out_size(H, k, 1, pad) == H && out_size(W, k, 1, pad) == W,
              "w must be [k, k, C] with 2*pad = k - 1 (same-size output)");
  TORCH_CHECK(cnt.size(0) == P && idx.size(0) == P, "idx/cnt must have NB*H*W rows");  // rows may repeat (V3)
  TORCH_CHECK(out.size(0) == P && out.size(1) == C && bias.size(0) == C && acc.size(0) == NB * H,
              "out/bias/acc shape mismatch");
  const int32_t* ip = idx.data_ptr<int32_t>();
  const int32_t* cp = cnt.data_ptr<int32_t>();
  const float* wp = w.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float* op = out.data_ptr<float>();
  int64_t* ap = acc.data_ptr<int64_t>();
  // One task = one output row, computed by scattering from the k input rows it reads: input pixel (iy, ix) with
  // channel c active adds w[ky, kx, c] to output (y, ix - kx + pad) for ky = iy - y + pad. Per output element the
  // additions come in input-pixel order, i.e. taps (ky, kx) row-major, as a gather would add them.
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_or_default(threads))
  for (int64_t ry = 0; ry < NB * H; ++ry) {
    const int64_t nb = ry / H, y = ry % H;
    int64_t added = 0;
    float* orow = op + ry * W * C;
    std::fill(orow, orow + W * C, 0.f);
    for (int64_t ky = 0; ky < k; ++ky) {
      const int64_t iy = y + ky - pad;
      if (iy < 0 || iy >= H) continue;
      for (int64_t ix = 0; ix < W; ++ix) {
        const int64_t i = (nb * H + iy) * W + ix;
        const int32_t n = cp[i];
        if (n == 0) continue;
        const int32_t* ir = ip + i * istride;
        const int64_t kx0 = std::max<int64_t>(0, ix + pad - (W - 1)), kx1 = std::min<int64_t>(k - 1, ix + pad);
        for (int64_t kx = kx1; kx >= kx0; --kx) {  // output x = ix - kx + pad ascending
          float* o = orow + (ix - kx + pad) * C;
          const float* wk = wp + (ky * k + kx) * C;
          for (int32_t q = 0; q < n; ++q) o[ir[q]] += wk[ir[q]];
        }
        added += n * (kx1 - kx0 + 1);
      }
    }
    for (int64_t x = 0; x < W; ++x)
      for (int64_t c = 0; c < C; ++c) orow[x * C + c] += bp[c];
    ap[ry] = added;
  }
}

// Dense 1x1 conv / linear of a real map: out[r] = sum_c x[r, c] * wt[c, :] + bias (+ resid[r]), c ascending.
void dense_linear(const at::Tensor& x, const at::Tensor& wt, const at::Tensor& bias, const at::Tensor& resid,
                  at::Tensor out, int64_t threads) {
  check(x, at::kFloat, 2, "x");
  check(wt, at::kFloat, 2, "wt");
  check(bias, at::kFloat, 1, "bias");
  check(out, at::kFloat, 2, "out");
  const int64_t R = x.size(0), cin = wt.size(0), cout = wt.size(1);
  TORCH_CHECK(x.size(1) == cin, "x must be [R, Cin]");
  TORCH_CHECK(out.size(0) == R && out.size(1) == cout && bias.size(0) == cout, "out/bias shape mismatch");
  const float* xp = x.data_ptr<float>();
  const float* wp = wt.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  const float* rp = optional_resid(resid, R, cout, "[R, Cout]");
  float* op = out.data_ptr<float>();
#pragma omp parallel for schedule(static) num_threads(threads_or_default(threads))
  for (int64_t r = 0; r < R; ++r) {
    const float* xr = xp + r * cin;
    auto rows = [&](auto&& f) {
      for (int64_t c = 0; c < cin; ++c) f(wp + c * cout, xr[c]);
    };
    accumulate_row(op + r * cout, bp, rp ? rp + r * cout : nullptr, cout, rows);
  }
}

// ------------------------------------------------------------------------------------------- linear attention
// q/k/v neurons: pre[T, B*N, 3D] (q | k | v) -> token-packed spikes qbits/kbits/vbits[T, B, D, NW] (zeroed by the
// caller). The same tasks as V1's qkv_lif_sdsa without the SDSA mask.
void qkv_lif_bits_k(const at::Tensor& pre, int64_t T, int64_t B, int64_t N, int64_t D, double vq, double kq, double tq,
                    double vk, double kk, double tk, double vv, double kv, double tv, bool divide, at::Tensor qbits,
                    at::Tensor kbits, at::Tensor vbits, int64_t threads) {
  check(pre, at::kFloat, 3, "p");
  for (auto* t : {&qbits, &kbits, &vbits}) check(*t, at::kUInt64, 4, "bits");
  TORCH_CHECK(pre.size(0) == T && pre.size(1) == B * N && pre.size(2) == 3 * D, "p must be [T, B*N, 3D]");
  const int64_t NW = qbits.size(3);
  for (auto* t : {&qbits, &kbits, &vbits})
    TORCH_CHECK(NW * 64 >= N && t->size(0) == T && t->size(1) == B && t->size(2) == D && t->size(3) == NW,
                "bits must be [T, B, D, ceil(N/64)]");
  const Lif lq{float(vq), float(kq), float(tq), divide}, lk{float(vk), float(kk), float(tk), divide},
      lv{float(vv), float(kv), float(tv), divide};
  qkv_lif_bits(pre.data_ptr<float>(), T, B, N, D, NW, lq, lk, lv, qbits.data_ptr<uint64_t>(),
               kbits.data_ptr<uint64_t>(), vbits.data_ptr<uint64_t>(), threads, [](int64_t, int64_t, int64_t) {});
}

// K^T V per head as integer counts: kv[t, b, h, i, j] = sum_w popcount(K[t, b, h*d+i, w] & V[t, b, h*d+j, w]), the
// number of tokens where k lane i and v lane j both spiked. kv: int32 [T, B, h, d, d].
void kv_counts(const at::Tensor& kbits, const at::Tensor& vbits, at::Tensor kv, int64_t threads) {
  check(kbits, at::kUInt64, 4, "kbits");
  check(vbits, at::kUInt64, 4, "vbits");
  check(kv, at::kInt, 5, "kv");
  const int64_t T = kbits.size(0), B = kbits.size(1), D = kbits.size(2), NW = kbits.size(3);
  const int64_t h = kv.size(2), d = kv.size(3);
  TORCH_CHECK(vbits.sizes() == kbits.sizes(), "kbits/vbits shape mismatch");
  TORCH_CHECK(kv.size(0) == T && kv.size(1) == B && h * d == D && kv.size(4) == d, "kv must be [T, B, h, d, d]");
  const uint64_t* kb = kbits.data_ptr<uint64_t>();
  const uint64_t* vb = vbits.data_ptr<uint64_t>();
  int32_t* kp = kv.data_ptr<int32_t>();
#pragma omp parallel for schedule(static) num_threads(threads_or_default(threads))
  for (int64_t row = 0; row < T * B * D; ++row) {  // row = ((t*B + b)*h + head)*d + i = (t*B + b)*D + channel
    const int64_t tb = row / D, c = row % D, c0 = c - c % d;
    const uint64_t* ki = kb + (tb * D + c) * NW;
    int32_t* o = kp + row * d;
    for (int64_t j = 0; j < d; ++j) {
      const uint64_t* vj = vb + (tb * D + c0 + j) * NW;
      int32_t s = 0;
      for (int64_t w = 0; w < NW; ++w) s += __builtin_popcountll(ki[w] & vj[w]);
      o[j] = s;
    }
  }
}

// Q (K^T V) as row additions, then the attention neuron. For every row (t, b, n) of the CSR map of q (active
// channels c = head*d + i), X[head*d + j] = sum over active i of kv[t, b, head, i, j] (integer additions); then per
// (b, n, channel) over t: H = V + (X - V) * k (or / tau), spike if H >= vth (the model's threshold divided by its
// power-of-two scale: exact), V = spike ? 0 : H. Spikes -> CSR yidx/ycnt (rows (t, b, n)).
void q_rows_lif(const at::Tensor& qidx, const at::Tensor& qcnt, const at::Tensor& kv, int64_t N, double vth_d,
                double k_d, double tau_d, bool divide, at::Tensor yidx, at::Tensor ycnt, int64_t threads) {
  check(qidx, at::kInt, 2, "qidx");
  check(qcnt, at::kInt, 1, "qcnt");
  check(kv, at::kInt, 5, "kv");
  check(yidx, at::kInt, 2, "yidx");
  check(ycnt, at::kInt, 1, "ycnt");
  const int64_t T = kv.size(0), B = kv.size(1), h = kv.size(2), d = kv.size(3), D = h * d;
  const int64_t qs = qidx.size(1), ys = yidx.size(1);
  TORCH_CHECK(kv.size(4) == d, "kv must be [T, B, h, d, d]");
  TORCH_CHECK(qcnt.size(0) == T * B * N && qidx.size(0) == T * B * N && qs <= D, "qidx/qcnt must be [T*B*N, D]");
  TORCH_CHECK(ycnt.size(0) == T * B * N && yidx.size(0) == T * B * N && ys >= D, "yidx/ycnt must be [T*B*N, D]");
  const Lif p{float(vth_d), float(k_d), float(tau_d), divide};
  const int32_t* qi = qidx.data_ptr<int32_t>();
  const int32_t* qc = qcnt.data_ptr<int32_t>();
  const int32_t* kp = kv.data_ptr<int32_t>();
  int32_t* yi = yidx.data_ptr<int32_t>();
  int32_t* yc = ycnt.data_ptr<int32_t>();
#pragma omp parallel num_threads(threads_or_default(threads))
  {
    std::vector<int32_t> X(D);
    std::vector<float> xf(D), v(D);
    std::vector<uint8_t> s(D);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < B * N; ++r) {
      const int64_t b = r / N;
      std::fill(v.begin(), v.end(), 0.f);
      for (int64_t t = 0; t < T; ++t) {
        const int64_t o = t * B * N + r;
        std::fill(X.begin(), X.end(), 0);
        const int32_t* ir = qi + o * qs;
        for (int32_t q = 0; q < qc[o]; ++q) {
          const int64_t c = ir[q], head = c / d;
          const int32_t* row = kp + (((t * B + b) * h + head) * d + (c - head * d)) * d;
          int32_t* xh = X.data() + head * d;
          for (int64_t j = 0; j < d; ++j) xh[j] += row[j];
        }
        for (int64_t c = 0; c < D; ++c) xf[c] = static_cast<float>(X[c]);
        lif_step(xf.data(), v.data(), s.data(), D, p);
        yc[o] = compact_spikes(s.data(), D, yi + o * ys);
      }
    }
  }
}

}  // namespace

void register_engine_v2(pybind11::module_& m) {
  bind(m, "sparse_conv2d", &sparse_conv2d);
  bind(m, "sparse_dwconv", &sparse_dwconv);
  bind(m, "dense_linear", &dense_linear);
  bind(m, "qkv_lif_bits", &qkv_lif_bits_k);
  bind(m, "kv_counts", &kv_counts);
  bind(m, "q_rows_lif", &q_rows_lif);
}
