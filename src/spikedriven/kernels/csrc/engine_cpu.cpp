// Event-driven engine kernels for the CPU (spikedriven.engine, backend "cpp"): every step the executor runs, so
// the cpp backend needs no numba.
//
// Same contracts and the same float32 arithmetic, in the same order, as the numba kernels in
// spikedriven/engine/kernels.py, so both backends give bit-identical outputs:
//   * LIF: H = V + (X - V) * k (or (X - V) / tau), S = [H >= v_th], V = S ? 0 : H, per row over t.
//   * sparse accumulation: out = ((0 + w_1) + w_2 + ... + w_n) + bias (+ resid), active inputs ascending
//     (3x3 conv: taps (ky, kx) row-major, then active channels ascending).
//   * dense encoding conv: out = ((0 + x_1 * w_1) + x_2 * w_2 + ...) + bias, taps row-major then input channels
//     (one rounding for the product, one for the sum: no FMA).
//   * token mean: float32 running sum over tokens, then / N; pools, bit operations and CSR are exact.
//
// Why not numba for these: numba keeps out[r, :] in memory and re-loads and re-stores it for every active input.
// Here a block of 64 output columns lives in eight 8-float registers while all active weight rows are added, then
// is stored once: one load and one add per 8 synaptic additions. Built with -ffp-contract=off (no FMA
// contraction) and without -ffast-math, so the compiler may vectorise across columns but never reorders a sum.
#include "engine_common.h"

namespace {

using namespace sd_engine;

// x[Tx, R, C] -> CSR spikes idx[T*R, C], cnt[T*R].
void lif_csr(const at::Tensor& x, int64_t T, double vth_d, double k_d, double tau_d, bool divide, at::Tensor idx,
             at::Tensor cnt, int64_t threads) {
  check(x, at::kFloat, 3, "x");
  check(idx, at::kInt, 2, "idx");
  check(cnt, at::kInt, 1, "cnt");
  const int64_t Tx = x.size(0), R = x.size(1), C = x.size(2);
  TORCH_CHECK(Tx == T || Tx == 1, "x must have T=", T, " or 1 time steps, got ", Tx);
  TORCH_CHECK(idx.size(0) == T * R && idx.size(1) == C && cnt.size(0) == T * R, "idx/cnt must be [T*R, C]/[T*R]");
  const Lif p{static_cast<float>(vth_d), static_cast<float>(k_d), static_cast<float>(tau_d), divide};
  int32_t* ip = idx.data_ptr<int32_t>();
  int32_t* cp = cnt.data_ptr<int32_t>();
  lif_blocks(x.data_ptr<float>(), Tx, T, R, C, p, threads, [&](int64_t t, int64_t r0, int64_t r1, const uint8_t* s) {
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* sr = s + (r - r0) * C;
      const int64_t o = t * R + r;
      cp[o] = compact_spikes(sr, C, ip + o * C);
    }
  });
}

// x[Tx, R, C] -> dense uint8 spikes s[T, R, C] (the stem stages followed by a max-pool).
void lif_dense(const at::Tensor& x, int64_t T, double vth_d, double k_d, double tau_d, bool divide, at::Tensor s,
               int64_t threads) {
  check(x, at::kFloat, 3, "x");
  check(s, at::kByte, 3, "s");
  const int64_t Tx = x.size(0), R = x.size(1), C = x.size(2);
  TORCH_CHECK(Tx == T || Tx == 1, "x must have T=", T, " or 1 time steps, got ", Tx);
  TORCH_CHECK(s.size(0) == T && s.size(1) == R && s.size(2) == C, "s must be [T, R, C]");
  const Lif p{static_cast<float>(vth_d), static_cast<float>(k_d), static_cast<float>(tau_d), divide};
  uint8_t* sp = s.data_ptr<uint8_t>();
  lif_blocks(x.data_ptr<float>(), Tx, T, R, C, p, threads, [&](int64_t t, int64_t r0, int64_t r1, const uint8_t* b) {
    std::memcpy(sp + (t * R + r0) * C, b, (r1 - r0) * C);
  });
}

// ------------------------------------------------------------------------------------- synaptic layers
// 1x1 conv / linear: out[r] = sum_{c active in row r} wt[c, :] + bias (+ resid[r]).
void sparse_linear(const at::Tensor& idx, const at::Tensor& cnt, const at::Tensor& wt, const at::Tensor& bias,
                   const at::Tensor& resid, at::Tensor out, int64_t threads) {
  check(idx, at::kInt, 2, "idx");
  check(cnt, at::kInt, 1, "cnt");
  check(wt, at::kFloat, 2, "wt");
  check(bias, at::kFloat, 1, "bias");
  check(out, at::kFloat, 2, "out");
  const int64_t R = cnt.size(0), cin = wt.size(0), cout = wt.size(1), istride = idx.size(1);
  // a row may list a channel more than once (V3: an integer activation v adds its row v times), so idx can be wider
  // than Cin
  TORCH_CHECK(idx.size(0) == R, "idx must have R rows");
  TORCH_CHECK(out.size(0) == R && out.size(1) == cout && bias.size(0) == cout, "out/bias shape mismatch");
  const int32_t* ip = idx.data_ptr<int32_t>();
  const int32_t* cp = cnt.data_ptr<int32_t>();
  const float* wp = wt.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  const float* rp = optional_resid(resid, R, cout, "[R, Cout]");
  float* op = out.data_ptr<float>();
#pragma omp parallel for schedule(dynamic, 8) num_threads(threads_or_default(threads))
  for (int64_t r = 0; r < R; ++r) {
    const int32_t* ir = ip + r * istride;
    const int32_t n = cp[r];
    auto rows = [&](auto&& f) {
      for (int32_t q = 0; q < n; ++q) f(wp + static_cast<int64_t>(ir[q]) * cout);
    };
    accumulate_row(op + r * cout, bp, rp ? rp + r * cout : nullptr, cout, rows);
  }
}

// 3x3 / stride 1 / pad 1 conv on a CSR spike map with rows (nb, y, x) of an H x W grid; w[Cin, 3, 3, Cout].
// acc[nb*H + y] = weight elements added for that output row (padding taps are not performed). The arithmetic and
// the tiling: tiled_spike_conv (engine_common.h).
void sparse_conv3x3(const at::Tensor& idx, const at::Tensor& cnt, int64_t NB, int64_t H, int64_t W,
                    const at::Tensor& w, const at::Tensor& bias, const at::Tensor& resid, at::Tensor out,
                    at::Tensor acc, int64_t threads) {
  check(idx, at::kInt, 2, "idx");
  check(cnt, at::kInt, 1, "cnt");
  check(w, at::kFloat, 4, "w");
  check(bias, at::kFloat, 1, "bias");
  check(out, at::kFloat, 2, "out");
  check(acc, at::kLong, 1, "acc");
  const int64_t cout = w.size(3), istride = idx.size(1), P = NB * H * W;
  TORCH_CHECK(w.size(1) == 3 && w.size(2) == 3, "w must be [Cin, 3, 3, Cout]");
  TORCH_CHECK(cnt.size(0) == P && idx.size(0) == P && istride <= w.size(0), "idx/cnt must have NB*H*W rows");
  TORCH_CHECK(out.size(0) == P && out.size(1) == cout && bias.size(0) == cout && acc.size(0) == NB * H,
              "out/bias/acc shape mismatch");
  const int32_t* ip = idx.data_ptr<int32_t>();
  const int32_t* cp = cnt.data_ptr<int32_t>();
  const float* wp = w.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  const float* rp = optional_resid(resid, P, cout, "[NB*H*W, Cout]");
  float* op = out.data_ptr<float>();
  int64_t* ap = acc.data_ptr<int64_t>();
  // w[c, ky, kx, :] read in place: block jb's row of channel c at tap t is w + c*9*Cout + t*Cout + 64 jb
  auto block = [&](int64_t jb) {
    return WeightBlock{wp + jb * 64, 9 * cout, cout, std::min<int64_t>(64, cout - jb * 64)};
  };
  tiled_spike_conv(ip, cp, istride, NB, H, W, w.size(0), 3, 1, 1, cout, block, bp, rp, op, ap, threads);
}

// ------------------------------------------------------------------------------------------------- SDSA
// SDSA's channel mask for (sample b, channel c) from token-packed bits [T, B, D, NW]: count_t = sum_w
// popcount(K & V) -> mask LIF over t -> mk[t, b, c]; where it fires, Y = Q (elsewhere Y stays as the caller zeroed it).
inline void mask_channel(const uint64_t* qb, const uint64_t* kb, const uint64_t* vb, uint64_t* yb, uint8_t* mk,
                         int64_t T, int64_t B, int64_t D, int64_t NW, int64_t b, int64_t c, const Lif& m) {
  float v = 0.f;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t o = ((t * B + b) * D + c) * NW;
    uint64_t cnt = 0;
    for (int64_t w = 0; w < NW; ++w) cnt += __builtin_popcountll(kb[o + w] & vb[o + w]);
    const float x = static_cast<float>(cnt);
    const float h = m.divide ? v + (x - v) / m.tau : v + (x - v) * m.k;
    const bool on = h >= m.vth;
    mk[(t * B + b) * D + c] = on;
    v = on ? 0.f : h;
    if (on)
      for (int64_t w = 0; w < NW; ++w) yb[o + w] = qb[o + w];
  }
}

// q/k/v neurons + SDSA on token-packed spikes (numba twin: kernels.qkv_lif_sdsa). p[T, B*N, 3D] holds the
// pre-activations of q | k | v; spikes go to *bits[T, B, D, NW] (bit n%64 of word n//64 = token n, zeroed by the
// caller); per (t, b, c): count = sum_w popcount(K & V) -> mask LIF (over t) -> mask[t, b, c], Y = Q & mask.
// One task = one sample x 64 channels: the LIF updates run vectorised over the channels of one token.
void qkv_lif_sdsa(const at::Tensor& pre, int64_t T, int64_t B, int64_t N, int64_t D, double vq, double kq, double tq,
                  double vk, double kk, double tk, double vv, double kv, double tv, double vm, double km, double tm,
                  bool divide, at::Tensor qbits, at::Tensor kbits, at::Tensor vbits, at::Tensor ybits, at::Tensor mask,
                  int64_t threads) {
  check(pre, at::kFloat, 3, "p");
  for (auto* t : {&qbits, &kbits, &vbits, &ybits}) check(*t, at::kUInt64, 4, "bits");
  check(mask, at::kByte, 3, "mask");
  TORCH_CHECK(pre.size(0) == T && pre.size(1) == B * N && pre.size(2) == 3 * D, "p must be [T, B*N, 3D]");
  const int64_t NW = qbits.size(3);
  TORCH_CHECK(NW * 64 >= N && qbits.size(0) == T && qbits.size(1) == B && qbits.size(2) == D,
              "bits must be [T, B, D, ceil(N/64)]");
  const Lif lq{float(vq), float(kq), float(tq), divide}, lk{float(vk), float(kk), float(tk), divide},
      lv{float(vv), float(kv), float(tv), divide};
  const Lif lm{float(vm), float(km), float(tm), divide};
  const float* pp = pre.data_ptr<float>();
  uint64_t* qb = qbits.data_ptr<uint64_t>();
  uint64_t* kb = kbits.data_ptr<uint64_t>();
  uint64_t* vb = vbits.data_ptr<uint64_t>();
  uint64_t* yb = ybits.data_ptr<uint64_t>();
  uint8_t* mk = mask.data_ptr<uint8_t>();
  qkv_lif_bits(pp, T, B, N, D, NW, lq, lk, lv, qb, kb, vb, threads, [&](int64_t b, int64_t c0, int64_t nc) {
    for (int64_t c = c0; c < c0 + nc; ++c) mask_channel(qb, kb, vb, yb, mk, T, B, D, NW, b, c, lm);
  });
}

// Dense k x k conv, any stride and padding, of a real map x[NB*H*W, Cin] (the encoding layer); w[Cin, k, k, Cout].
// macs[nb*Ho + yo] = multiply-accumulates performed for that output row (every in-bounds tap, zero or not).
void dense_conv2d(const at::Tensor& x, int64_t NB, int64_t H, int64_t W, int64_t stride, int64_t pad,
                  const at::Tensor& w, const at::Tensor& bias, at::Tensor out, at::Tensor macs, int64_t threads) {
  check(x, at::kFloat, 2, "x");
  check(w, at::kFloat, 4, "w");
  check(bias, at::kFloat, 1, "bias");
  check(out, at::kFloat, 2, "out");
  check(macs, at::kLong, 1, "macs");
  const int64_t cin = w.size(0), k = w.size(1), cout = w.size(3);
  TORCH_CHECK(w.size(2) == k && stride >= 1 && pad >= 0, "w must be [Cin, k, k, Cout], stride >= 1, pad >= 0");
  const int64_t Ho = out_size(H, k, stride, pad), Wo = out_size(W, k, stride, pad);
  TORCH_CHECK(Ho >= 1 && Wo >= 1, "empty output grid");
  TORCH_CHECK(x.size(0) == NB * H * W && x.size(1) == cin, "x must be [NB*H*W, Cin]");
  TORCH_CHECK(out.size(0) == NB * Ho * Wo && out.size(1) == cout && bias.size(0) == cout && macs.size(0) == NB * Ho,
              "out/bias/macs shape mismatch");
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float* op = out.data_ptr<float>();
  int64_t* mp = macs.data_ptr<int64_t>();
#pragma omp parallel for schedule(static) num_threads(threads_or_default(threads))
  for (int64_t ry = 0; ry < NB * Ho; ++ry) {
    const int64_t nb = ry / Ho, yo = ry % Ho;
    int64_t taps = 0;
    for (int64_t xo = 0; xo < Wo; ++xo) {
      auto rows = [&](auto&& f) {
        for_taps(yo, xo, k, stride, pad, H, W, [&](int64_t ky, int64_t kx, int64_t pix) {
          const float* xi = xp + (nb * H * W + pix) * cin;
          for (int64_t c = 0; c < cin; ++c) f(wp + ((c * k + ky) * k + kx) * cout, xi[c]);
        });
      };
      accumulate_row(op + (ry * Wo + xo) * cout, bp, nullptr, cout, rows);
      for_taps(yo, xo, k, stride, pad, H, W, [&](int64_t, int64_t, int64_t) { ++taps; });
    }
    mp[ry] = taps * cin * cout;
  }
}

// Dense 3x3 conv, stride 1, pad 1 (V1's encoding layer): dense_conv2d.
void dense_conv3x3(const at::Tensor& x, int64_t NB, int64_t H, int64_t W, const at::Tensor& w,
                   const at::Tensor& bias, at::Tensor out, at::Tensor macs, int64_t threads) {
  dense_conv2d(x, NB, H, W, 1, 1, w, bias, out, macs, threads);
}

// ------------------------------------------------------------------------------------------------- pools
// MaxPool(3, stride 2, pad 1) over rows (nb, y, x) of an H x W grid: pooled row (nb, y2, x2) reads the in-bounds
// input rows (nb, 2*y2 + dy - 1, 2*x2 + dx - 1), dy, dx in 0..2. pool_rows(...) lists them (at most 9) into `in`.
inline int pool_rows(int64_t nb, int64_t y2, int64_t x2, int64_t H, int64_t W, int64_t* in) {
  int m = 0;
  for (int64_t iy = std::max<int64_t>(2 * y2 - 1, 0); iy < std::min(2 * y2 + 2, H); ++iy)
    for (int64_t ix = std::max<int64_t>(2 * x2 - 1, 0); ix < std::min(2 * x2 + 2, W); ++ix)
      in[m++] = (nb * H + iy) * W + ix;
  return m;
}

// Max-pool of a binary map s[NB*H*W, C] (uint8) = OR over the window, emitted as CSR rows of the pooled map.
// The OR runs on 8 channels per 64-bit word.
void or_pool_csr(const at::Tensor& s, int64_t NB, int64_t H, int64_t W, at::Tensor idx, at::Tensor cnt,
                 int64_t threads) {
  check(s, at::kByte, 2, "s");
  check(idx, at::kInt, 2, "idx");
  check(cnt, at::kInt, 1, "cnt");
  const int64_t C = s.size(1), H2 = (H - 1) / 2 + 1, W2 = (W - 1) / 2 + 1, P2 = NB * H2 * W2;
  TORCH_CHECK(s.size(0) == NB * H * W, "s must have NB*H*W rows");
  TORCH_CHECK(idx.size(0) == P2 && idx.size(1) == C && cnt.size(0) == P2, "idx/cnt must be [NB*H2*W2, C]/[NB*H2*W2]");
  const uint8_t* sp = s.data_ptr<uint8_t>();
  int32_t* ip = idx.data_ptr<int32_t>();
  int32_t* cp = cnt.data_ptr<int32_t>();
  const int64_t CW = (C + 7) / 8;
#pragma omp parallel num_threads(threads_or_default(threads))
  {
    std::vector<uint64_t> acc(CW);
    uint8_t* a = reinterpret_cast<uint8_t*>(acc.data());
    int64_t in[9];
#pragma omp for schedule(static)
    for (int64_t ry = 0; ry < NB * H2; ++ry) {
      for (int64_t x2 = 0; x2 < W2; ++x2) {
        const int m = pool_rows(ry / H2, ry % H2, x2, H, W, in);
        std::fill(acc.begin(), acc.end(), uint64_t(0));
        for (int k = 0; k < m; ++k) {
          const uint8_t* si = sp + in[k] * C;
          int64_t c = 0;
          for (; c + 8 <= C; c += 8) {
            uint64_t w;
            std::memcpy(&w, si + c, 8);
            acc[c / 8] |= w;
          }
          for (; c < C; ++c) a[c] |= si[c];
        }
        const int64_t o = ry * W2 + x2;
        int32_t* ir = ip + o * C;
        int32_t n = 0;
        for (int64_t c = 0; c < C; ++c) {  // branch-free compaction
          ir[n] = static_cast<int32_t>(c);
          n += a[c] != 0;
        }
        cp[o] = n;
      }
    }
  }
}

// Max-pool of a real map x[NB*H*W, C] -> out[NB*H2*W2, C] (stem stage 3, on BN output, not on spikes).
void max_pool_dense(const at::Tensor& x, int64_t NB, int64_t H, int64_t W, at::Tensor out, int64_t threads) {
  check(x, at::kFloat, 2, "x");
  check(out, at::kFloat, 2, "out");
  const int64_t C = x.size(1), H2 = (H - 1) / 2 + 1, W2 = (W - 1) / 2 + 1;
  TORCH_CHECK(x.size(0) == NB * H * W, "x must have NB*H*W rows");
  TORCH_CHECK(out.size(0) == NB * H2 * W2 && out.size(1) == C, "out must be [NB*H2*W2, C]");
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
#pragma omp parallel for schedule(static) num_threads(threads_or_default(threads))
  for (int64_t ry = 0; ry < NB * H2; ++ry) {
    int64_t in[9];
    for (int64_t x2 = 0; x2 < W2; ++x2) {
      const int m = pool_rows(ry / H2, ry % H2, x2, H, W, in);
      float* oo = op + (ry * W2 + x2) * C;
      std::fill(oo, oo + C, -std::numeric_limits<float>::infinity());
      for (int k = 0; k < m; ++k) {
        const float* xi = xp + in[k] * C;
        for (int64_t c = 0; c < C; ++c) oo[c] = xi[c] > oo[c] ? xi[c] : oo[c];
      }
    }
  }
}

// ------------------------------------------------------------------------------------------ token-packed bits
void check_bits(const at::Tensor& t, const char* name) { check(t, at::kUInt64, 4, name); }

// Token-packed spikes bits[T, B, D, NW] -> CSR rows (t, b, n) of active channels (idx[T*B*N, >= D]).
void tokenbits_to_csr(const at::Tensor& bits, int64_t N, at::Tensor idx, at::Tensor cnt, int64_t threads) {
  check_bits(bits, "bits");
  check(idx, at::kInt, 2, "idx");
  check(cnt, at::kInt, 1, "cnt");
  const int64_t TB = bits.size(0) * bits.size(1), D = bits.size(2), NW = bits.size(3), istride = idx.size(1);
  TORCH_CHECK(NW * 64 >= N, "bits must have ceil(N/64) words");
  TORCH_CHECK(idx.size(0) == TB * N && istride >= D && cnt.size(0) == TB * N, "idx/cnt must be [T*B*N, D]/[T*B*N]");
  const uint64_t* bp = bits.data_ptr<uint64_t>();
  int32_t* ip = idx.data_ptr<int32_t>();
  int32_t* cp = cnt.data_ptr<int32_t>();
#pragma omp parallel for schedule(static) num_threads(threads_or_default(threads))
  for (int64_t r = 0; r < TB * N; ++r) {
    const int64_t tb = r / N, n = r % N;
    const uint64_t* w = bp + tb * D * NW + (n >> 6);
    const int sh = static_cast<int>(n & 63);
    int32_t* ir = ip + r * istride;
    int32_t m = 0;
    for (int64_t c = 0; c < D; ++c) {
      ir[m] = static_cast<int32_t>(c);
      m += static_cast<int32_t>((w[c * NW] >> sh) & 1u);
    }
    cp[r] = m;
  }
}

inline uint64_t bit_at(const uint64_t* row, int64_t n) { return (row[n >> 6] >> (n & 63)) & 1u; }

// DVS-mode Erode of k and v in the [T,B,C,H,W] layout: per channel, OR over the 3x3 neighbourhood in the H x W
// token grid. bits -> out (zeroed by the caller), both [T, B, D, NW].
void erode_grid(const at::Tensor& bits, int64_t H, int64_t W, at::Tensor out, int64_t threads) {
  check_bits(bits, "bits");
  check_bits(out, "out");
  TORCH_CHECK(out.sizes() == bits.sizes() && bits.size(3) * 64 >= H * W, "bits/out must be [T, B, D, ceil(H*W/64)]");
  const int64_t NW = bits.size(3), rows = bits.size(0) * bits.size(1) * bits.size(2);
  const uint64_t* bp = bits.data_ptr<uint64_t>();
  uint64_t* op = out.data_ptr<uint64_t>();
#pragma omp parallel for schedule(static) num_threads(threads_or_default(threads))
  for (int64_t r = 0; r < rows; ++r) {
    const uint64_t* b = bp + r * NW;
    uint64_t* o = op + r * NW;
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < W; ++x) {
        uint64_t on = 0;
        for (int64_t iy = std::max<int64_t>(y - 1, 0); iy < std::min(y + 2, H); ++iy)
          for (int64_t ix = std::max<int64_t>(x - 1, 0); ix < std::min(x + 2, W); ++ix) on |= bit_at(b, iy * W + ix);
        const int64_t n = y * W + x;
        o[n >> 6] |= on << (n & 63);
      }
  }
}

// DVS-mode Erode in the head layout [T,B,h,N,d]: OR over the 3x3 neighbourhood in (token n, lane j) inside each
// head (lane j of head h = channel h*d + j; tokens in flattened order). bits -> out (zeroed), [T, B, D, NW].
void erode_heads(const at::Tensor& bits, int64_t N, int64_t d, at::Tensor out, int64_t threads) {
  check_bits(bits, "bits");
  check_bits(out, "out");
  const int64_t D = bits.size(2), NW = bits.size(3), rows = bits.size(0) * bits.size(1) * D;
  TORCH_CHECK(out.sizes() == bits.sizes() && NW * 64 >= N, "bits/out must be [T, B, D, ceil(N/64)]");
  TORCH_CHECK(d > 0 && D % d == 0, "the head width d must divide D");
  const uint64_t* bp = bits.data_ptr<uint64_t>();
  uint64_t* op = out.data_ptr<uint64_t>();
#pragma omp parallel for schedule(static) num_threads(threads_or_default(threads))
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t j = (r % D) % d;
    const int64_t r0 = r - j + std::max<int64_t>(j - 1, 0), r1 = r - j + std::min(j + 2, d);
    uint64_t* o = op + r * NW;
    for (int64_t n = 0; n < N; ++n) {
      uint64_t on = 0;
      for (int64_t rr = r0; rr < r1; ++rr)
        for (int64_t nn = std::max<int64_t>(n - 1, 0); nn < std::min(n + 2, N); ++nn) on |= bit_at(bp + rr * NW, nn);
      o[n >> 6] |= on << (n & 63);
    }
  }
}

// SDSA's mask from an already combined (in DVS mode eroded) K&V: per (b, c), count_t = popcount(kv[t, b, c]) ->
// mask LIF over t -> mask; Y = Q & mask -> ybits (zeroed by the caller).
void sdsa_mask(const at::Tensor& qbits, const at::Tensor& kvbits, double vth, double k, double tau, bool divide,
               at::Tensor ybits, at::Tensor mask, int64_t threads) {
  check_bits(qbits, "qbits");
  check_bits(kvbits, "kvbits");
  check_bits(ybits, "ybits");
  check(mask, at::kByte, 3, "mask");
  const int64_t T = qbits.size(0), B = qbits.size(1), D = qbits.size(2), NW = qbits.size(3);
  TORCH_CHECK(kvbits.sizes() == qbits.sizes() && ybits.sizes() == qbits.sizes(), "bits must have the same shape");
  TORCH_CHECK(mask.size(0) == T && mask.size(1) == B && mask.size(2) == D, "mask must be [T, B, D]");
  const Lif m{float(vth), float(k), float(tau), divide};
  const uint64_t* qb = qbits.data_ptr<uint64_t>();
  const uint64_t* kv = kvbits.data_ptr<uint64_t>();
  uint64_t* yb = ybits.data_ptr<uint64_t>();
  uint8_t* mk = mask.data_ptr<uint8_t>();
#pragma omp parallel for schedule(static) num_threads(threads_or_default(threads))
  for (int64_t bc = 0; bc < B * D; ++bc) mask_channel(qb, kv, kv, yb, mk, T, B, D, NW, bc / D, bc % D, m);  // kv&kv
}

// ------------------------------------------------------------------------------------------------- head
// x[T*B*N, D] -> mean over the N tokens out[T*B, D] (float32 running sum in token order, then / N).
void token_mean(const at::Tensor& x, int64_t T, int64_t B, int64_t N, at::Tensor out, int64_t threads) {
  check(x, at::kFloat, 2, "x");
  check(out, at::kFloat, 2, "out");
  const int64_t D = x.size(1);
  TORCH_CHECK(x.size(0) == T * B * N && out.size(0) == T * B && out.size(1) == D, "x/out must be [T*B*N, D]/[T*B, D]");
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float fn = static_cast<float>(N);
#pragma omp parallel for schedule(static) num_threads(threads_or_default(threads))
  for (int64_t tb = 0; tb < T * B; ++tb) {
    float* o = op + tb * D;
    std::fill(o, o + D, 0.f);
    for (int64_t n = 0; n < N; ++n) {
      const float* xi = xp + (tb * N + n) * D;
      for (int64_t j = 0; j < D; ++j) o[j] += xi[j];
    }
    for (int64_t j = 0; j < D; ++j) o[j] = o[j] / fn;
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------ Python module
// The kernels as functions of a Python module that take numpy arrays (spikedriven.engine.cpp_kernels calls them);
// see bind() in engine_common.h.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  bind(m, "lif_csr", &lif_csr);
  bind(m, "lif_dense", &lif_dense);
  bind(m, "dense_conv3x3", &dense_conv3x3);
  bind(m, "dense_conv2d", &dense_conv2d);
  bind(m, "sparse_linear", &sparse_linear);
  bind(m, "sparse_conv3x3", &sparse_conv3x3);
  bind(m, "or_pool_csr", &or_pool_csr);
  bind(m, "max_pool_dense", &max_pool_dense);
  bind(m, "qkv_lif_sdsa", &qkv_lif_sdsa);
  bind(m, "tokenbits_to_csr", &tokenbits_to_csr);
  bind(m, "erode_grid", &erode_grid);
  bind(m, "erode_heads", &erode_heads);
  bind(m, "sdsa_mask", &sdsa_mask);
  bind(m, "token_mean", &token_mean);
  register_engine_v2(m);
}
