// Event-driven engine kernels for the CPU (spikedriven.engine, backend "cpp").
//
// Same contracts and the same float32 arithmetic, in the same order, as the numba kernels in
// spikedriven/engine/kernels.py, so both backends give bit-identical outputs:
//   * LIF to CSR: H = V + (X - V) * k (or (X - V) / tau), S = [H >= v_th], V = S ? 0 : H, per row over t.
//   * sparse accumulation: out = ((0 + w_1) + w_2 + ... + w_n) + bias (+ resid), active inputs ascending
//     (3x3 conv: taps (ky, kx) row-major, then active channels ascending).
//
// Why not numba for these: numba keeps out[r, :] in memory and re-loads and re-stores it for every active input.
// Here a block of 64 output columns lives in eight 8-float registers while all active weight rows are added, then
// is stored once: one load and one add per 8 synaptic additions. Built with -ffp-contract=off (no FMA
// contraction) and without -ffast-math, so the compiler may vectorise across columns but never reorders a sum.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <omp.h>

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <vector>

namespace {

typedef float v8 __attribute__((vector_size(32)));

inline v8 load8(const float* p) {
  v8 r;
  std::memcpy(&r, p, sizeof(r));  // unaligned load
  return r;
}

inline void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof(v)); }

// One block of NV x 8 output columns starting at j0: accumulate every active weight row in registers, then add
// bias (and resid) and store. `rows(f)` calls f(row_ptr) for each active weight row, in summation order.
template <int NV, class Rows>
inline void column_block(float* out, const float* bias, const float* resid, int64_t j0, const Rows& rows) {
  v8 a[NV];
  for (int v = 0; v < NV; ++v) a[v] = v8{0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  rows([&](const float* w) {
    for (int v = 0; v < NV; ++v) a[v] += load8(w + j0 + 8 * v);
  });
  for (int v = 0; v < NV; ++v) {
    v8 o = a[v] + load8(bias + j0 + 8 * v);
    if (resid) o += load8(resid + j0 + 8 * v);
    store8(out + j0 + 8 * v, o);
  }
}

template <class Rows>
inline void accumulate_row(float* out, const float* bias, const float* resid, int64_t cout, const Rows& rows) {
  int64_t j0 = 0;
  for (; j0 + 64 <= cout; j0 += 64) column_block<8>(out, bias, resid, j0, rows);
  switch ((cout - j0) / 8) {  // the remaining whole vectors in one pass over the active rows
    case 7: column_block<7>(out, bias, resid, j0, rows); break;
    case 6: column_block<6>(out, bias, resid, j0, rows); break;
    case 5: column_block<5>(out, bias, resid, j0, rows); break;
    case 4: column_block<4>(out, bias, resid, j0, rows); break;
    case 3: column_block<3>(out, bias, resid, j0, rows); break;
    case 2: column_block<2>(out, bias, resid, j0, rows); break;
    case 1: column_block<1>(out, bias, resid, j0, rows); break;
    default: break;
  }
  j0 += (cout - j0) / 8 * 8;
  for (; j0 < cout; ++j0) {  // < 8 trailing columns
    float a = 0.f;
    rows([&](const float* w) { a += w[j0]; });
    float o = a + bias[j0];
    if (resid) o += resid[j0];
    out[j0] = o;
  }
}

void check(const at::Tensor& t, at::ScalarType dtype, int64_t dim, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// The optional residual of the accumulation kernels: an empty tensor means none, else [rows, cout] float32.
const float* optional_resid(const at::Tensor& resid, int64_t rows, int64_t cout, const char* shape) {
  if (resid.numel() == 0) return nullptr;
  check(resid, at::kFloat, 2, "resid");
  TORCH_CHECK(resid.size(0) == rows && resid.size(1) == cout, "resid must be ", shape);
  return resid.data_ptr<float>();
}

int threads_or_default(int64_t threads) { return threads > 0 ? static_cast<int>(threads) : omp_get_max_threads(); }

// ----------------------------------------------------------------------------------------------------- LIF
// One multi-step LIF update of n neurons: H = V + (X - V) * k (or / tau), S = [H >= v_th], V = S ? 0 : H.
struct Lif {
  float vth, k, tau;
  bool divide;
};

inline void lif_step(const float* x, float* v, uint8_t* s, int64_t n, const Lif& p) {
  if (p.divide) {
    for (int64_t c = 0; c < n; ++c) {
      const float h = v[c] + (x[c] - v[c]) / p.tau;
      const bool sp = h >= p.vth;
      v[c] = sp ? 0.f : h;
      s[c] = sp;
    }
  } else {
    for (int64_t c = 0; c < n; ++c) {
      const float h = v[c] + (x[c] - v[c]) * p.k;
      const bool sp = h >= p.vth;
      v[c] = sp ? 0.f : h;
      s[c] = sp;
    }
  }
}

// x[Tx, R, C] (Tx = T, or 1 for an input repeated at every step) -> CSR spikes idx[T*R, C], cnt[T*R].
void lif_csr(const at::Tensor& x, int64_t T, double vth_d, double k_d, double tau_d, bool divide, at::Tensor idx,
             at::Tensor cnt, int64_t threads) {
  check(x, at::kFloat, 3, "x");
  check(idx, at::kInt, 2, "idx");
  check(cnt, at::kInt, 1, "cnt");
  const int64_t Tx = x.size(0), R = x.size(1), C = x.size(2);
  TORCH_CHECK(Tx == T || Tx == 1, "x must have T=", T, " or 1 time steps, got ", Tx);
  TORCH_CHECK(idx.size(0) == T * R && idx.size(1) == C && cnt.size(0) == T * R, "idx/cnt must be [T*R, C]/[T*R]");
  const Lif p{static_cast<float>(vth_d), static_cast<float>(k_d), static_cast<float>(tau_d), divide};
  const float* xp = x.data_ptr<float>();
  int32_t* ip = idx.data_ptr<int32_t>();
  int32_t* cp = cnt.data_ptr<int32_t>();
#pragma omp parallel num_threads(threads_or_default(threads))
  {
    std::vector<float> v(C);
    std::vector<uint8_t> s(C);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
      std::fill(v.begin(), v.end(), 0.f);
      for (int64_t t = 0; t < T; ++t) {
        lif_step(xp + ((Tx > 1 ? t : 0) * R + r) * C, v.data(), s.data(), C, p);
        const int64_t o = t * R + r;
        int32_t* ir = ip + o * C;
        int32_t n = 0;
        for (int64_t c = 0; c < C; ++c) {  // branch-free compaction
          ir[n] = static_cast<int32_t>(c);
          n += s[c];
        }
        cp[o] = n;
      }
    }
  }
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
  TORCH_CHECK(idx.size(0) == R && istride <= cin, "idx must be [R, <= Cin]");
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
// acc[nb*H + y] = weight elements added for that output row (padding taps are not performed).
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
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_or_default(threads))
  for (int64_t ry = 0; ry < NB * H; ++ry) {
    const int64_t nb = ry / H, y = ry % H;
    int64_t added = 0;
    for (int64_t x = 0; x < W; ++x) {
      const int64_t o = ry * W + x;
      auto rows = [&](auto&& f) {
        for (int64_t ky = 0; ky < 3; ++ky) {
          const int64_t iy = y + ky - 1;
          if (iy < 0 || iy >= H) continue;
          for (int64_t kx = 0; kx < 3; ++kx) {
            const int64_t ix = x + kx - 1;
            if (ix < 0 || ix >= W) continue;
            const int64_t i = (nb * H + iy) * W + ix;
            const int32_t* ir = ip + i * istride;
            const int32_t n = cp[i];
            for (int32_t q = 0; q < n; ++q) f(wp + (static_cast<int64_t>(ir[q]) * 9 + ky * 3 + kx) * cout);
          }
        }
      };
      accumulate_row(op + o * cout, bp, rp ? rp + o * cout : nullptr, cout, rows);
      for (int64_t ky = 0; ky < 3; ++ky) {
        const int64_t iy = y + ky - 1;
        if (iy < 0 || iy >= H) continue;
        for (int64_t kx = 0; kx < 3; ++kx) {
          const int64_t ix = x + kx - 1;
          if (ix >= 0 && ix < W) added += cp[(nb * H + iy) * W + ix];
        }
      }
    }
    ap[ry] = added * cout;
  }
}

// ------------------------------------------------------------------------------------------------- SDSA
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
  const float vthm = float(vm), km_ = float(km), taum = float(tm);
  const float* pp = pre.data_ptr<float>();
  uint64_t* qb = qbits.data_ptr<uint64_t>();
  uint64_t* kb = kbits.data_ptr<uint64_t>();
  uint64_t* vb = vbits.data_ptr<uint64_t>();
  uint64_t* yb = ybits.data_ptr<uint64_t>();
  uint8_t* mk = mask.data_ptr<uint8_t>();
  constexpr int64_t kChunk = 64;
  const int64_t nch = (D + kChunk - 1) / kChunk;
#pragma omp parallel num_threads(threads_or_default(threads))
  {
    float st[3][kChunk];
    uint8_t sp[3][kChunk];
#pragma omp for schedule(static)
    for (int64_t task = 0; task < B * nch; ++task) {
      const int64_t b = task / nch, c0 = (task % nch) * kChunk, nc = std::min(kChunk, D - c0);
      for (int64_t n = 0; n < N; ++n) {
        const int64_t wd = n >> 6;
        const int sh = static_cast<int>(n & 63);
        for (auto& row : st) std::fill(row, row + nc, 0.f);
        for (int64_t t = 0; t < T; ++t) {
          const float* x = pp + (t * B * N + b * N + n) * 3 * D + c0;
          lif_step(x, st[0], sp[0], nc, lq);
          lif_step(x + D, st[1], sp[1], nc, lk);
          lif_step(x + 2 * D, st[2], sp[2], nc, lv);
          const int64_t base = ((t * B + b) * D + c0) * NW + wd;
          for (int64_t j = 0; j < nc; ++j) {
            qb[base + j * NW] |= uint64_t(sp[0][j]) << sh;
            kb[base + j * NW] |= uint64_t(sp[1][j]) << sh;
            vb[base + j * NW] |= uint64_t(sp[2][j]) << sh;
          }
        }
      }
      for (int64_t c = c0; c < c0 + nc; ++c) {
        float v = 0.f;
        for (int64_t t = 0; t < T; ++t) {
          const int64_t o = ((t * B + b) * D + c) * NW;
          uint64_t cnt = 0;
          for (int64_t w = 0; w < NW; ++w) cnt += __builtin_popcountll(kb[o + w] & vb[o + w]);
          const float x = static_cast<float>(cnt);
          const float h = divide ? v + (x - v) / taum : v + (x - v) * km_;
          const bool on = h >= vthm;
          mk[(t * B + b) * D + c] = on;
          v = on ? 0.f : h;
          if (on)
            for (int64_t w = 0; w < NW; ++w) yb[o + w] = qb[o + w];
        }
      }
    }
  }
}

}  // namespace

TORCH_LIBRARY(spikedriven_engine, m) {
  m.def("lif_csr(Tensor x, int T, float vth, float k, float tau, bool divide, Tensor(a!) idx, Tensor(b!) cnt, "
        "int threads) -> ()");
  m.def("sparse_linear(Tensor idx, Tensor cnt, Tensor wt, Tensor bias, Tensor resid, Tensor(a!) out, "
        "int threads) -> ()");
  m.def("sparse_conv3x3(Tensor idx, Tensor cnt, int NB, int H, int W, Tensor w, Tensor bias, Tensor resid, "
        "Tensor(a!) out, Tensor(b!) acc, int threads) -> ()");
  m.def("qkv_lif_sdsa(Tensor p, int T, int B, int N, int D, float vq, float kq, float tq, float vk, float kk, "
        "float tk, float vv, float kv, float tv, float vm, float km, float tm, bool divide, Tensor(a!) qbits, "
        "Tensor(b!) kbits, Tensor(c!) vbits, Tensor(d!) ybits, Tensor(e!) mask, int threads) -> ()");
}

TORCH_LIBRARY_IMPL(spikedriven_engine, CPU, m) {
  m.impl("lif_csr", &lif_csr);
  m.impl("sparse_linear", &sparse_linear);
  m.impl("sparse_conv3x3", &sparse_conv3x3);
  m.impl("qkv_lif_sdsa", &qkv_lif_sdsa);
}
