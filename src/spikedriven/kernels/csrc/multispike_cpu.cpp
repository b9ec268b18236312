// V3's integer neuron ("MultiSpike") for CPU: y = round(clamp(x, 0, D)) / norm, one pass forward, one backward.
//
// Registered as torch operators in the namespace `spikedriven_int` (kernels/_cpp.py compiles this file on first
// use; kernels/integer.py wraps the operators in an autograd Function).
//
// Forward: reads x (fp32 / bf16 / fp16, contiguous), writes y in x's dtype and, when a gradient is needed, a uint8
// mask "x lies in [0, D]" (x is not kept for backward: 1 byte per neuron instead of 4). The arithmetic is done in
// fp32 and rounds half to even (the default rounding mode), as torch.round; for bf16 / fp16 inputs
// the results v / norm are small integers over a power of two in every official configuration, so computing in
// fp32 and rounding back gives the bits the official per-dtype ops give.
// Backward: gx = mask ? g / norm : 0. NaN inputs pass the gradient, as the official mask (not below 0 and not above
// D) does.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>

namespace {

constexpr int64_t kGrain = 1 << 15;

// Element loads and stores in fp32. c10::BFloat16's own conversion checks for NaN with a branch, which keeps the
// loops below scalar (bf16 ran 3-4x slower than fp32); these bit-level versions are branch-free and vectorise:
// bf16 -> fp32 is a shift, fp32 -> bf16 rounds to nearest even as c10 does, NaN kept as a quiet NaN.
inline float load_f32(float v) { return v; }
inline float load_f32(c10::Half v) { return static_cast<float>(v); }
inline float load_f32(c10::BFloat16 v) {
  uint32_t u = static_cast<uint32_t>(v.x) << 16;
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
}

template <typename T>
inline T store_as(float f) { return static_cast<T>(f); }
template <>
inline c10::BFloat16 store_as<c10::BFloat16>(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof u);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint16_t bits = static_cast<uint16_t>((f != f) ? 0x7FC0u : rounded);
  return c10::BFloat16(bits, c10::BFloat16::from_bits());
}

template <typename T>
void fwd_kernel(const T* x, T* y, uint8_t* mask, int64_t n, float d_arg, float norm_arg) {
  at::parallel_for(0, n, kGrain, [=](int64_t b, int64_t e) {
    const float d = d_arg, norm = norm_arg;  // locals: stores through y cannot alias them (keeps the loop SIMD)
    if (mask != nullptr) {
#pragma omp simd
      for (int64_t i = b; i < e; ++i) {
        const float v = load_f32(x[i]);
        mask[i] = static_cast<uint8_t>(!(v < 0.0f) & !(v > d));
      }
    }
#pragma omp simd
    for (int64_t i = b; i < e; ++i) {
      const float v = load_f32(x[i]);
      const float c = v < 0.0f ? 0.0f : (v > d ? d : v);
      // 0 <= c <= D < 2^23: adding and removing 2^23 rounds to the nearest integer, ties to even (the default
      // rounding mode, as nearbyint), and vectorises (nearbyint is a libm call per element)
      y[i] = store_as<T>(((c + 8388608.0f) - 8388608.0f) / norm);
    }
  });
}

template <typename T>
void bwd_kernel(const T* g, const uint8_t* mask, T* gx, int64_t n, float norm_arg) {
  at::parallel_for(0, n, kGrain, [=](int64_t b, int64_t e) {
    const float norm = norm_arg;
#pragma omp simd
    for (int64_t i = b; i < e; ++i) {
      const float v = load_f32(g[i]) / norm;
      gx[i] = store_as<T>(mask[i] ? v : 0.0f);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> multispike_fwd(const at::Tensor& x_in, int64_t D, double norm, bool need_mask) {
  TORCH_CHECK(x_in.device().is_cpu(), "multispike_fwd: CPU tensors only");
  // elementwise: any dense layout (NCHW or channels_last) is processed in storage order and kept
  const at::Tensor x = x_in.is_non_overlapping_and_dense() ? x_in : x_in.contiguous();
  at::Tensor y = at::empty_like(x);
  at::Tensor mask = need_mask ? at::empty_like(x, x.options().dtype(at::kByte)) : at::empty({0}, x.options().dtype(at::kByte));
  uint8_t* m = need_mask ? mask.data_ptr<uint8_t>() : nullptr;
  const int64_t n = x.numel();
  const float d = static_cast<float>(D), nf = static_cast<float>(norm);
  switch (x.scalar_type()) {
    case at::kFloat: fwd_kernel(x.data_ptr<float>(), y.data_ptr<float>(), m, n, d, nf); break;
    case at::kBFloat16: fwd_kernel(x.data_ptr<c10::BFloat16>(), y.data_ptr<c10::BFloat16>(), m, n, d, nf); break;
    case at::kHalf: fwd_kernel(x.data_ptr<c10::Half>(), y.data_ptr<c10::Half>(), m, n, d, nf); break;
    default: TORCH_CHECK(false, "multispike_fwd: fp32, bf16 or fp16 input expected, got ", x.scalar_type());
  }
  return {y, mask};
}

at::Tensor multispike_bwd(const at::Tensor& g_in, const at::Tensor& mask, double norm) {
  const at::Tensor& g = g_in;
  TORCH_CHECK(mask.numel() == g.numel() && g.strides() == mask.strides(),
              "multispike_bwd: the gradient must have the mask's shape and strides");
  at::Tensor gx = at::empty_like(g);
  const int64_t n = g.numel();
  const float nf = static_cast<float>(norm);
  const uint8_t* m = mask.data_ptr<uint8_t>();
  switch (g.scalar_type()) {
    case at::kFloat: bwd_kernel(g.data_ptr<float>(), m, gx.data_ptr<float>(), n, nf); break;
    case at::kBFloat16: bwd_kernel(g.data_ptr<c10::BFloat16>(), m, gx.data_ptr<c10::BFloat16>(), n, nf); break;
    case at::kHalf: bwd_kernel(g.data_ptr<c10::Half>(), m, gx.data_ptr<c10::Half>(), n, nf); break;
    default: TORCH_CHECK(false, "multispike_bwd: fp32, bf16 or fp16 gradient expected, got ", g.scalar_type());
  }
  return gx;
}

}  // namespace

TORCH_LIBRARY(spikedriven_int, m) {
  m.def("multispike_fwd(Tensor x, int D, float norm, bool need_mask) -> (Tensor, Tensor)");
  m.def("multispike_bwd(Tensor grad, Tensor mask, float norm) -> Tensor");
}

TORCH_LIBRARY_IMPL(spikedriven_int, CPU, m) {
  m.impl("multispike_fwd", &multispike_fwd);
  m.impl("multispike_bwd", &multispike_bwd);
}
