// Fused multi-step LIF / PLIF for CPU (forward and backward, one pass over T each).
//
// Registered as torch operators in the namespace `spikedriven_lif` (see kernels/_cpp.py, which compiles this
// file on first use with torch.utils.cpp_extension.load and wraps the operators in autograd Functions).
//
// Layout: x is a contiguous [T, N] tensor (time first, N = number of neurons) of dtype fp32, bf16 or fp16.
// The neuron state is always fp32. Spikes are returned in x's dtype.
//
// Dynamics (decay_input=True, v_reset=0, hard reset, detach_reset=True):
//     H[t] = V[t-1] + (X[t] - V[t-1]) / tau        (PLIF: + (X[t] - V[t-1]) * k, k = sigmoid(w))
//     S[t] = H[t] >= v_th
//     V[t] = H[t] * (1 - S[t])
// Backward (surrogate sg(z) = alpha * sig(alpha z) * (1 - sig(alpha z)), z = H - v_th):
//     gH[t] = gS[t] * sg(H[t] - v_th) + gV[t] * (1 - S[t]),  gV[t] = gH[t+1] - gH[t+1] / tau,  gV[T-1] = 0
//     gX[t] = gH[t] / tau                                    (PLIF: gH[t] * k, and dL/dk = sum gH[t] (X[t] - V[t-1]))
//
// Memory plan: the forward saves nothing but the (contiguous) input X, which the autograd graph holds anyway
// or which costs at most the same bytes as an fp32 H. The backward recomputes H (and for PLIF X - V[t-1]) for a
// block of neurons over all T into a small cache-resident scratch buffer, then runs the reverse-time recurrence on
// it. The recomputation executes the very same floating point operations as the forward, so spikes and H are
// bit-identical to the forward's: no H tensor, no spike tensor (not even bits) is stored between the passes.
// Traffic per element: forward reads X and writes S; backward reads X and gS and writes gX.
//
// Floating point: compiled with -ffp-contract=off so that no multiply-add is fused; every expression evaluates in
// the same order and with the same roundings as the plain-autograd reference (torch CPU ops), which makes the
// forward bit-exact against it. The only deviation is the sigmoid in the surrogate: exp is a vectorisable
// Cephes-style polynomial (about 1 ulp), so gradients agree to ~1e-7, not bitwise.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace {

// ------------------------------------------------------------------------------------------------------------
// element conversion (branch-free so that the compiler vectorises the loops that use them)
// ------------------------------------------------------------------------------------------------------------
inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const c10::BFloat16* p, int64_t i) {
  return bits_to_float(static_cast<uint32_t>(p[i].x) << 16);
}
inline float load(const c10::Half* p, int64_t i) { return static_cast<float>(p[i]); }

inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(c10::BFloat16* p, int64_t i, float v) {
  // round to nearest even, NaN stays a (quiet) NaN: the same rule as c10::BFloat16(float)
  const uint32_t u = float_to_bits(v);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint16_t r = (v != v) ? static_cast<uint16_t>(0x7FC0u) : static_cast<uint16_t>(rounded);
  p[i].x = r;
}
inline void store(c10::Half* p, int64_t i, float v) { p[i] = c10::Half(v); }

// exp(x) for the surrogate's sigmoid: Cody-Waite range reduction + degree-6 polynomial (Cephes expf
// coefficients), written without branches or calls so that it vectorises. Relative error about 1 ulp on the
// clamped range; outside it the sigmoid is saturated (its derivative ~1e-38) anyway.
inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  // n = round-to-nearest(x / ln 2) by the 1.5 * 2^23 trick (|x / ln 2| < 2^22): vectorises without a libm call
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t e = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  return p * bits_to_float(e);
}

// surrogate derivative, evaluated as the reference does: alpha * s * (1 - s), s = sigmoid(alpha * z)
inline float sigmoid_grad(float z, float alpha) {
  const float s = 1.0f / (1.0f + fast_exp(-(alpha * z)));
  return alpha * s * (1.0f - s);
}

// decay policies: how (X - V) is scaled into the charge, and how gH is scaled back into gX
struct LifDecay {  // divide by tau (true division, exactly like `(x - v) / tau` on CPU tensors)
  float tau;
  float operator()(float d) const { return d / tau; }
};
struct PlifDecay {  // multiply by k = sigmoid(w)
  float k;
  float operator()(float d) const { return d * k; }
};

// neurons per block: the backward keeps T * block floats (x2 for PLIF) of scratch; aim at ~32 KiB (L1/L2)
inline int64_t block_size(int64_t T) {
  int64_t b = 8192 / std::max<int64_t>(T, 1);
  b = std::max<int64_t>(16, std::min<int64_t>(512, b));
  return (b / 16) * 16;
}
// blocks per parallel task: enough work (~64K elements) per task to amortise the thread hand-off
inline int64_t grain_blocks(int64_t T, int64_t B) {
  return std::max<int64_t>(1, 65536 / std::max<int64_t>(T * B, 1));
}

// ------------------------------------------------------------------------------------------------------------
// forward
// ------------------------------------------------------------------------------------------------------------
template <typename scalar_t, typename Decay>
void forward_block(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, int64_t T, int64_t N, int64_t n0,
                   int64_t len, float v_th, Decay decay, float* __restrict__ v) {
  for (int64_t i = 0; i < len; ++i) v[i] = 0.0f;
  for (int64_t t = 0; t < T; ++t) {
    const scalar_t* __restrict__ xt = x + t * N + n0;
    scalar_t* __restrict__ ot = out + t * N + n0;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      const float vp = v[i];
      const float h = vp + decay(load(xt, i) - vp);
      const float s = h >= v_th ? 1.0f : 0.0f;
      store(ot, i, s);
      v[i] = h * (1.0f - s);
    }
  }
}

template <typename scalar_t, typename Decay>
void forward_impl(const at::Tensor& x, at::Tensor& out, float v_th, Decay decay) {
  const int64_t T = x.size(0), N = x.size(1);
  const int64_t B = block_size(T);
  const int64_t nblocks = (N + B - 1) / B;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, nblocks, grain_blocks(T, B), [&](int64_t b0, int64_t b1) {
    std::vector<float> v(B);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * B;
      forward_block(xp, op, T, N, n0, std::min(B, N - n0), v_th, decay, v.data());
    }
  });
}

// ------------------------------------------------------------------------------------------------------------
// backward: recompute H (and X - V[t-1]) for a block, then the reverse-time recurrence
// ------------------------------------------------------------------------------------------------------------
template <bool kNeedDk, typename scalar_t, typename Decay>
double backward_block(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gs, scalar_t* __restrict__ gx,
                      int64_t T, int64_t N, int64_t n0, int64_t len, float v_th, float alpha, Decay decay,
                      float* __restrict__ hbuf, float* __restrict__ dbuf, float* __restrict__ carry,
                      double* __restrict__ dk_acc) {
  // 1) forward recomputation (identical operations to forward_block)
  for (int64_t i = 0; i < len; ++i) carry[i] = 0.0f;  // carry = V[t-1]
  for (int64_t t = 0; t < T; ++t) {
    const scalar_t* __restrict__ xt = x + t * N + n0;
    float* __restrict__ ht = hbuf + t * len;
    float* __restrict__ dt = dbuf + t * len;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      const float vp = carry[i];
      const float d = load(xt, i) - vp;
      const float h = vp + decay(d);
      if (kNeedDk) dt[i] = d;
      ht[i] = h;
      carry[i] = h * (1.0f - (h >= v_th ? 1.0f : 0.0f));
    }
  }
  // 2) reverse time; carry = gV[t] = gH[t+1] - gH[t+1] * decay
  for (int64_t i = 0; i < len; ++i) carry[i] = 0.0f;
  if (kNeedDk) {
    for (int64_t i = 0; i < len; ++i) dk_acc[i] = 0.0;
  }
  for (int64_t t = T - 1; t >= 0; --t) {
    const scalar_t* __restrict__ gst = gs + t * N + n0;
    scalar_t* __restrict__ gxt = gx + t * N + n0;
    const float* __restrict__ ht = hbuf + t * len;
    const float* __restrict__ dt = dbuf + t * len;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      const float h = ht[i];
      const float s = h >= v_th ? 1.0f : 0.0f;
      const float gh = load(gst, i) * sigmoid_grad(h - v_th, alpha) + carry[i] * (1.0f - s);
      const float g = decay(gh);
      store(gxt, i, g);
      carry[i] = gh - g;
      if (kNeedDk) dk_acc[i] += static_cast<double>(gh) * static_cast<double>(dt[i]);
    }
  }
  double total = 0.0;
  if (kNeedDk) {
    for (int64_t i = 0; i < len; ++i) total += dk_acc[i];
  }
  return total;
}

// returns sum over all elements of gH * (X - V[t-1]) when kNeedDk (the gradient wrt PLIF's k), else 0
template <bool kNeedDk, typename scalar_t, typename Decay>
double backward_impl(const at::Tensor& x, const at::Tensor& gs, at::Tensor& gx, float v_th, float alpha,
                     Decay decay) {
  const int64_t T = x.size(0), N = x.size(1);
  const int64_t B = block_size(T);
  const int64_t nblocks = (N + B - 1) / B;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* gsp = gs.const_data_ptr<scalar_t>();
  scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
  // one partial sum per block, summed in block order afterwards: deterministic for any thread count
  std::vector<double> partial(kNeedDk ? nblocks : 0, 0.0);
  at::parallel_for(0, nblocks, grain_blocks(T, B), [&](int64_t b0, int64_t b1) {
    std::vector<float> hbuf(T * B), dbuf(kNeedDk ? T * B : 0), carry(B);
    std::vector<double> acc(kNeedDk ? B : 0);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * B;
      const double p = backward_block<kNeedDk>(xp, gsp, gxp, T, N, n0, std::min(B, N - n0), v_th, alpha, decay,
                                               hbuf.data(), dbuf.data(), carry.data(), acc.data());
      if (kNeedDk) partial[b] = p;
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

// Fresh multi-megabyte outputs come from mmap and their first touch page-faults every 4 KiB, which on the
// project machine costs more than the kernel itself (~9 ms for 32 MiB vs ~2 ms of compute). Asking for
// transparent huge pages on the (not yet touched) 2 MiB-aligned interior of such a buffer cuts the faults 512x.
// Only a hint: without THP support (or with THP "never") it does nothing. SPIKEDRIVEN_LIF_NO_HUGEPAGE=1 turns
// it off. Measured: a big win for training (forward output kept for the backward, backward output), but in a
// forward-only loop that frees and re-maps the output every call the huge-page faults (kernel compaction with
// THP defrag=madvise) made it slower, so the forward asks for it only when a backward will follow.
at::Tensor empty_output(const at::Tensor& like, bool hint) {
  at::Tensor out = at::empty_like(like);
  if (!hint) return out;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool enabled = [] {
    const char* e = std::getenv("SPIKEDRIVEN_LIF_NO_HUGEPAGE");
    return !(e && e[0] && e[0] != '0');
  }();
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const size_t bytes = static_cast<size_t>(out.nbytes());
  if (enabled && bytes >= 4 * kHuge) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(out.data_ptr());
    const uintptr_t b = (p + kHuge - 1) & ~(kHuge - 1);
    const uintptr_t e = (p + bytes) & ~(kHuge - 1);
    if (e > b) madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE);
  }
#endif
  return out;
}

void check_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(x.dim() == 2, name, " must be 2-D [T, N], got ", x.dim(), "-D");
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf, name,
              " must be float32, bfloat16 or float16, got ", st);
}

template <typename Decay>
at::Tensor forward_dispatch(const at::Tensor& x, double v_th, Decay decay, bool hugepages) {
  check_input(x, "x");
  at::Tensor out = empty_output(x, hugepages);
  if (x.numel() == 0) return out;
  const float vth = static_cast<float>(v_th);
  switch (x.scalar_type()) {
    case at::kFloat: forward_impl<float>(x, out, vth, decay); break;
    case at::kBFloat16: forward_impl<c10::BFloat16>(x, out, vth, decay); break;
    default: forward_impl<c10::Half>(x, out, vth, decay); break;
  }
  return out;
}

template <bool kNeedDk, typename Decay>
std::tuple<at::Tensor, double> backward_dispatch(const at::Tensor& x, const at::Tensor& gs, double v_th,
                                                 double alpha, Decay decay) {
  check_input(x, "x");
  check_input(gs, "grad_spikes");
  TORCH_CHECK(gs.sizes() == x.sizes() && gs.scalar_type() == x.scalar_type(),
              "grad_spikes must match x in shape and dtype");
  at::Tensor gx = empty_output(x, true);
  if (x.numel() == 0) return {gx, 0.0};
  const float vth = static_cast<float>(v_th), a = static_cast<float>(alpha);
  double dk = 0.0;
  switch (x.scalar_type()) {
    case at::kFloat: dk = backward_impl<kNeedDk, float>(x, gs, gx, vth, a, decay); break;
    case at::kBFloat16: dk = backward_impl<kNeedDk, c10::BFloat16>(x, gs, gx, vth, a, decay); break;
    default: dk = backward_impl<kNeedDk, c10::Half>(x, gs, gx, vth, a, decay); break;
  }
  return {gx, dk};
}

// ------------------------------------------------------------------------------------------------------------
// operators
// ------------------------------------------------------------------------------------------------------------
at::Tensor lif_fwd(const at::Tensor& x, double v_th, double tau, bool hugepages) {
  return forward_dispatch(x, v_th, LifDecay{static_cast<float>(tau)}, hugepages);
}

at::Tensor lif_bwd(const at::Tensor& x, const at::Tensor& gs, double v_th, double tau, double alpha) {
  return std::get<0>(backward_dispatch<false>(x, gs, v_th, alpha, LifDecay{static_cast<float>(tau)}));
}

at::Tensor plif_fwd(const at::Tensor& x, double v_th, double k, bool hugepages) {
  return forward_dispatch(x, v_th, PlifDecay{static_cast<float>(k)}, hugepages);
}

// returns (grad_x, dL/dk as a float64 scalar tensor)
std::tuple<at::Tensor, at::Tensor> plif_bwd(const at::Tensor& x, const at::Tensor& gs, double v_th, double k,
                                            double alpha) {
  auto [gx, dk] = backward_dispatch<true>(x, gs, v_th, alpha, PlifDecay{static_cast<float>(k)});
  at::Tensor dk_t = at::empty({}, x.options().dtype(at::kDouble));
  dk_t.mutable_data_ptr<double>()[0] = dk;
  return {gx, dk_t};
}

}  // namespace

TORCH_LIBRARY(spikedriven_lif, m) {
  m.def("lif_fwd(Tensor x, float v_th, float tau, bool hugepages=False) -> Tensor");
  m.def("lif_bwd(Tensor x, Tensor grad_spikes, float v_th, float tau, float alpha) -> Tensor");
  m.def("plif_fwd(Tensor x, float v_th, float k, bool hugepages=False) -> Tensor");
  m.def("plif_bwd(Tensor x, Tensor grad_spikes, float v_th, float k, float alpha) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(spikedriven_lif, CPU, m) {
  m.impl("lif_fwd", &lif_fwd);
  m.impl("lif_bwd", &lif_bwd);
  m.impl("plif_fwd", &plif_fwd);
  m.impl("plif_bwd", &plif_bwd);
}
