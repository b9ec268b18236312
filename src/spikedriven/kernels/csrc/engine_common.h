// Shared helpers of the event-engine C++ kernels (engine_cpu.cpp: V1 and common kernels; engine_v2_cpu.cpp: the
// Meta-SpikeFormer kernels). Both translation units build one Python module (spikedriven_engine).
#pragma once
#include <ATen/ATen.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <omp.h>

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

namespace sd_engine {

typedef float v8 __attribute__((vector_size(32)));

// Output size of a k x k conv with this stride and zero padding.
inline int64_t out_size(int64_t n, int64_t k, int64_t stride, int64_t pad) { return (n + 2 * pad - k) / stride + 1; }

inline v8 load8(const float* p) {
  v8 r;
  std::memcpy(&r, p, sizeof(r));  // unaligned load
  return r;
}

inline void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof(v)); }

// One block of NV x 8 output columns starting at j0: accumulate every active weight row in registers, then add
// bias (and resid) and store. `rows(f)` calls f(row_ptr) for each active weight row, in summation order, or
// f(row_ptr, x) to add x * row (the dense encoding conv; the product is rounded, then added).
template <int NV, class Rows>
inline void column_block(float* out, const float* bias, const float* resid, int64_t j0, const Rows& rows) {
  v8 a[NV];
  for (int v = 0; v < NV; ++v) a[v] = v8{0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  rows([&](const float* w, auto... x) {
    for (int v = 0; v < NV; ++v) a[v] += (x * ... * load8(w + j0 + 8 * v));
  });
  for (int v = 0; v < NV; ++v) {
    v8 o = a[v] + load8(bias + j0 + 8 * v);
    if (resid) o += load8(resid + j0 + 8 * v);
    store8(out + j0 + 8 * v, o);
  }
}

// Columns [j0, cout) of an output row when fewer than 64 remain: the whole vectors of 8 in one pass over the active
// rows, then the < 8 trailing columns one at a time.
template <class Rows>
inline void accumulate_tail(float* out, const float* bias, const float* resid, int64_t cout, int64_t j0,
                            const Rows& rows) {
  switch ((cout - j0) / 8) {
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
  for (; j0 < cout; ++j0) {
    float a = 0.f;
    rows([&](const float* w, auto... x) { a += (x * ... * w[j0]); });
    float o = a + bias[j0];
    if (resid) o += resid[j0];
    out[j0] = o;
  }
}

// Column block jb of an output row: columns [64 jb, 64 jb + 64), or the last (narrower) block, with the same
// arithmetic as accumulate_row gives those columns. `rows(f)` must give rows whose column j0 = 64 jb is at offset j0.
template <class Rows>
inline void accumulate_block(float* out, const float* bias, const float* resid, int64_t cout, int64_t jb,
                             const Rows& rows) {
  const int64_t j0 = jb * 64;
  if (j0 + 64 <= cout)
    column_block<8>(out, bias, resid, j0, rows);
  else
    accumulate_tail(out, bias, resid, cout, j0, rows);
}

// A whole output row: 64-column blocks, then the tail.
template <class Rows>
inline void accumulate_row(float* out, const float* bias, const float* resid, int64_t cout, const Rows& rows) {
  int64_t j0 = 0;
  for (; j0 + 64 <= cout; j0 += 64) column_block<8>(out, bias, resid, j0, rows);
  accumulate_tail(out, bias, resid, cout, j0, rows);
}

inline void check(const at::Tensor& t, at::ScalarType dtype, int64_t dim, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// The optional residual of the accumulation kernels: an empty tensor means none, else [rows, cout] float32.
inline const float* optional_resid(const at::Tensor& resid, int64_t rows, int64_t cout, const char* shape) {
  if (resid.numel() == 0) return nullptr;
  check(resid, at::kFloat, 2, "resid");
  TORCH_CHECK(resid.size(0) == rows && resid.size(1) == cout, "resid must be ", shape);
  return resid.data_ptr<float>();
}

inline int threads_or_default(int64_t threads) { return threads > 0 ? static_cast<int>(threads) : omp_get_max_threads(); }

// ------------------------------------------------------------------------------- tap-major conv on spikes
// sum[0, ncols) += the weight rows w + c * cstride of the n active channels c = ir[0..n), in that order: whole
// vectors of 8 in registers, then the < 8 trailing columns one at a time.
template <int NV>
inline void add_rows(float* sum, const float* w, const int32_t* ir, int32_t n, int64_t cstride) {
  v8 a[NV];
  for (int v = 0; v < NV; ++v) a[v] = load8(sum + 8 * v);
  for (int32_t q = 0; q < n; ++q) {
    const float* r = w + static_cast<int64_t>(ir[q]) * cstride;
    for (int v = 0; v < NV; ++v) a[v] += load8(r + 8 * v);
  }
  for (int v = 0; v < NV; ++v) store8(sum + 8 * v, a[v]);
}

inline void add_rows_n(float* sum, const float* w, const int32_t* ir, int32_t n, int64_t cstride, int64_t ncols) {
  switch (ncols / 8) {
    case 8: add_rows<8>(sum, w, ir, n, cstride); break;
    case 7: add_rows<7>(sum, w, ir, n, cstride); break;
    case 6: add_rows<6>(sum, w, ir, n, cstride); break;
    case 5: add_rows<5>(sum, w, ir, n, cstride); break;
    case 4: add_rows<4>(sum, w, ir, n, cstride); break;
    case 3: add_rows<3>(sum, w, ir, n, cstride); break;
    case 2: add_rows<2>(sum, w, ir, n, cstride); break;
    case 1: add_rows<1>(sum, w, ir, n, cstride); break;
    default: break;
  }
  for (int64_t j = ncols / 8 * 8; j < ncols; ++j) {
    float a = sum[j];
    for (int32_t q = 0; q < n; ++q) a += w[static_cast<int64_t>(ir[q]) * cstride + j];
    sum[j] = a;
  }
}

// f(ky, kx, iy * W + ix) for the taps of output pixel (yo, xo) of a k x k conv whose input (iy, ix) lies inside the
// H x W grid (zero padding: the others add nothing), taps row-major.
template <class F>
inline void for_taps(int64_t yo, int64_t xo, int64_t k, int64_t stride, int64_t pad, int64_t H, int64_t W, const F& f) {
  for (int64_t ky = 0; ky < k; ++ky) {
    const int64_t iy = yo * stride + ky - pad;
    if (iy < 0 || iy >= H) continue;
    for (int64_t kx = 0; kx < k; ++kx) {
      const int64_t ix = xo * stride + kx - pad;
      if (ix >= 0 && ix < W) f(ky, kx, iy * W + ix);
    }
  }
}

// Where one 64-column block of a conv's weights lives: the row of channel c at tap t (row-major (ky, kx)) starts at
// base + c * cstride + t * tstride; ncols columns are added (the block's width, or 64 over zero padding).
struct WeightBlock {
  const float* base;
  int64_t cstride, tstride, ncols;
};

// A k x k conv (any stride, zero padding) on a CSR spike map with rows (nb, y, x) of an H x W grid: out[(nb, yo, xo),
// c] = sum over in-bounds taps (ky, kx) row-major, then active channels ascending, of the weight rows, + bias
// (+ resid). acc[nb*Ho + yo] = weight elements added for that output row (taps in the padding are not performed).
//
// Tap-major tiles: one task = one 64-column block (block(jb) gives its weights) of a tile of output rows of one
// sample (about kConvTile pixels). For each tap in row-major order, every pixel of the tile adds that tap's active
// weight rows to its partial sums, which stay in a small buffer (L1) between taps; so one tap's block (Cin x 64
// floats) is reused by the whole tile from L1, where a pixel-major loop fetched every active row from L2 anew
// (measured ~4x slower per added row on a Zen 4 once the block's Cin*k*k*64 floats outgrow L1). Each output element
// still sees taps row-major, then channels ascending: the same sums, bit for bit. A tap's block that does not fit in
// L1 (Cin > 128) gains nothing from this order (measured 8% slower at Cin 256), so there each pixel runs its taps in
// turn (pixel-major, the same additions).
constexpr int64_t kConvTile = 32;           // output pixels per tile: 32 x 64 floats = 8 KB of partial sums
constexpr int64_t kL1TapBlock = 32 * 1024;  // bytes of one tap's block (Cin x 64 floats) for the tap-major order

template <class Block>
inline void tiled_spike_conv(const int32_t* ip, const int32_t* cp, int64_t istride, int64_t NB, int64_t H,
                             int64_t W, int64_t cin, int64_t k, int64_t stride, int64_t pad, int64_t cout,
                             const Block& block, const float* bp, const float* rp, float* op, int64_t* ap,
                             int64_t threads) {
  const int64_t Ho = out_size(H, k, stride, pad), Wo = out_size(W, k, stride, pad), nblk = (cout + 63) / 64;
  const int64_t tile_rows = std::max<int64_t>(1, std::min<int64_t>(Ho, kConvTile / Wo));
  const int64_t tiles = (Ho + tile_rows - 1) / tile_rows, per_blk = NB * tiles;
  const bool tap_major = cin * 64 * static_cast<int64_t>(sizeof(float)) <= kL1TapBlock;
#pragma omp parallel num_threads(threads_or_default(threads))
  {
    std::vector<float> sums(tile_rows * Wo * 64);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < nblk * per_blk; ++task) {
      const int64_t jb = task / per_blk, nb = (task % per_blk) / tiles, y0 = (task % tiles) * tile_rows;
      const int64_t y1 = std::min(Ho, y0 + tile_rows), j0 = jb * 64, bw = std::min<int64_t>(64, cout - j0);
      const WeightBlock wb = block(jb);
      if (tap_major) {
        std::fill(sums.begin(), sums.begin() + (y1 - y0) * Wo * 64, 0.f);
        for (int64_t ky = 0; ky < k; ++ky)
          for (int64_t kx = 0; kx < k; ++kx) {
            const float* wt = wb.base + (ky * k + kx) * wb.tstride;
            for (int64_t yo = y0; yo < y1; ++yo) {
              const int64_t iy = yo * stride + ky - pad;
              if (iy < 0 || iy >= H) continue;
              for (int64_t xo = 0; xo < Wo; ++xo) {
                const int64_t ix = xo * stride + kx - pad, i = (nb * H + iy) * W + ix;
                if (ix < 0 || ix >= W || cp[i] == 0) continue;
                add_rows_n(sums.data() + ((yo - y0) * Wo + xo) * 64, wt, ip + i * istride, cp[i], wb.cstride,
                           wb.ncols);
              }
            }
          }
        for (int64_t yo = y0; yo < y1; ++yo)
          for (int64_t xo = 0; xo < Wo; ++xo) {
            const int64_t o = (nb * Ho + yo) * Wo + xo;
            const float* sm = sums.data() + ((yo - y0) * Wo + xo) * 64;
            float* orow = op + o * cout + j0;
            const float* rr = rp ? rp + o * cout + j0 : nullptr;
            for (int64_t j = 0; j < bw; ++j) orow[j] = rr ? (sm[j] + bp[j0 + j]) + rr[j] : sm[j] + bp[j0 + j];
          }
      } else {  // pixel-major: each output pixel's sums in registers over all its taps
        for (int64_t yo = y0; yo < y1; ++yo)
          for (int64_t xo = 0; xo < Wo; ++xo) {
            auto rows = [&](auto&& f) {
              for_taps(yo, xo, k, stride, pad, H, W, [&](int64_t ky, int64_t kx, int64_t pix) {
                const int64_t i = nb * H * W + pix;
                const int32_t* ir = ip + i * istride;
                // accumulate_block reads a row's block at offset j0: shift the block's start back by j0
                const float* wt = wb.base + (ky * k + kx) * wb.tstride - j0;
                for (int32_t q = 0; q < cp[i]; ++q) f(wt + static_cast<int64_t>(ir[q]) * wb.cstride);
              });
            };
            const int64_t o = (nb * Ho + yo) * Wo + xo;
            accumulate_block(op + o * cout, bp, rp ? rp + o * cout : nullptr, cout, jb, rows);
          }
      }
      if (jb == 0)
        for (int64_t yo = y0; yo < y1; ++yo) {
          int64_t added = 0;
          for (int64_t xo = 0; xo < Wo; ++xo)
            for_taps(yo, xo, k, stride, pad, H, W,
                     [&](int64_t, int64_t, int64_t pix) { added += cp[nb * H * W + pix]; });
          ap[nb * Ho + yo] = added * cout;
        }
    }
  }
}

// The active channels of a row of 0/1 spike bytes s[0..C), ascending, into out[0..n); returns n. Eight channels per
// 64-bit word: a silent word costs one test, a word with spikes one step per spike (the lowest set bit of a word of
// 0/1 bytes is the first spiking byte's bit 0).
inline int32_t compact_spikes(const uint8_t* s, int64_t C, int32_t* out) {
  int32_t n = 0;
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) {
    uint64_t w;
    std::memcpy(&w, s + c, 8);
    while (w) {
      out[n++] = static_cast<int32_t>(c + (__builtin_ctzll(w) >> 3));
      w &= w - 1;
    }
  }
  for (; c < C; ++c) {
    out[n] = static_cast<int32_t>(c);
    n += s[c];
  }
  return n;
}

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

// Runs a multi-step LIF over x[Tx, R, C] (Tx = T, or 1 for an input repeated at every step) in blocks of whole rows
// (about kLifBlock neurons, so that narrow rows still give long vector loops): step(t, r0, r1, s) gets the spikes
// s[(r - r0) * C + c] of rows r0..r1-1 at step t. The neurons are independent, so blocking changes no result.
constexpr int64_t kLifBlock = 1024;

template <class Step>
inline void lif_blocks(const float* xp, int64_t Tx, int64_t T, int64_t R, int64_t C, const Lif& p, int64_t threads,
                const Step& step) {
  const int64_t rows = std::max<int64_t>(1, kLifBlock / std::max<int64_t>(C, 1)), nblk = (R + rows - 1) / rows;
#pragma omp parallel num_threads(threads_or_default(threads))
  {
    std::vector<float> v(rows * C);
    std::vector<uint8_t> s(rows * C);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nblk; ++blk) {
      const int64_t r0 = blk * rows, r1 = std::min(R, r0 + rows), n = (r1 - r0) * C;
      std::fill(v.begin(), v.begin() + n, 0.f);
      for (int64_t t = 0; t < T; ++t) {
        lif_step(xp + ((Tx > 1 ? t : 0) * R + r0) * C, v.data(), s.data(), n, p);
        step(t, r0, r1, s.data());
      }
    }
  }
}

// ------------------------------------------------------------------------------------- q/k/v to token bits
// The q, k and v neurons of an attention block: p[T, B*N, 3D] holds their pre-activations (q | k | v); spikes go
// to qb/kb/vb[T, B, D, NW] (bit n%64 of word n//64 = token n; zeroed by the caller). One task = one sample x 64
// channels (the LIF updates run vectorised over the channels of one token); done(b, c0, nc) runs after the task's
// bits are complete (V1: the SDSA mask of those channels).
template <class Done>
inline void qkv_lif_bits(const float* pp, int64_t T, int64_t B, int64_t N, int64_t D, int64_t NW, const Lif& lq,
                         const Lif& lk, const Lif& lv, uint64_t* qb, uint64_t* kb, uint64_t* vb, int64_t threads,
                         const Done& done) {
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
      done(b, c0, nc);
    }
  }
}

// ------------------------------------------------------------------------------------------ Python module
// The kernels as functions of a Python module that take numpy arrays (spikedriven.engine.cpp_kernels calls them).
// Not torch.ops: there every call would pay ~5 us of dispatch plus ~1.4 us of torch.from_numpy per array, as long as
// a small kernel at batch 1; here each array becomes a tensor view (no copy) that the kernel checks as usual.
// The GIL is released while a kernel runs (as the numba kernels do, nogil=True).
namespace py = pybind11;

inline at::Tensor view(const py::array& a) {
  const py::dtype dt = a.dtype();
  const char kind = dt.kind();
  const auto size = dt.itemsize();
  at::ScalarType st;
  if (kind == 'f') st = size == 4 ? at::kFloat : size == 8 ? at::kDouble : at::kHalf;
  else if (kind == 'i') st = size == 1 ? at::kChar : size == 2 ? at::kShort : size == 4 ? at::kInt : at::kLong;
  else if (kind == 'u' && (size == 1 || size == 8)) st = size == 1 ? at::kByte : at::kUInt64;
  else if (kind == 'b') st = at::kBool;
  else throw py::type_error("spikedriven_engine: unsupported array dtype " + std::string(py::str(dt)));
  std::vector<int64_t> sizes(a.ndim()), strides(a.ndim());
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    sizes[d] = a.shape(d);
    strides[d] = a.strides(d) / static_cast<py::ssize_t>(size);
  }
  return at::from_blob(const_cast<void*>(a.data()), sizes, strides, at::TensorOptions().dtype(st));
}

// A kernel parameter as Python passes it: tensors as numpy arrays, everything else as is.
template <class T>
struct PyArg {
  using type = T;
  static T from(T v) { return v; }
};
template <>
struct PyArg<at::Tensor> {
  using type = const py::array&;
  static at::Tensor from(const py::array& a) { return view(a); }
};
template <>
struct PyArg<const at::Tensor&> : PyArg<at::Tensor> {};

// m.name(...) = kernel(...) on numpy arrays: views are made with the GIL held, the kernel runs without it, and its
// argument errors (c10::Error) become Python RuntimeErrors.
template <class... Args>
void bind(py::module_& m, const char* name, void (*kernel)(Args...)) {
  m.def(name, [kernel](typename PyArg<Args>::type... py_args) {
    std::tuple<std::decay_t<decltype(PyArg<Args>::from(py_args))>...> args{PyArg<Args>::from(py_args)...};
    try {
      py::gil_scoped_release nogil;
      std::apply(kernel, args);
    } catch (const c10::Error& e) {
      throw std::runtime_error(e.what_without_backtrace());
    }
  });
}

}  // namespace sd_engine

// Registers the Meta-SpikeFormer (V2) kernels of engine_v2_cpu.cpp in the module.
void register_engine_v2(pybind11::module_& m);
