// Math shared by the CPU and CUDA kernels of dna_fast. Header-only, host and device.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DNA_HD __host__ __device__ __forceinline__
#else
#define DNA_HD inline
#endif

namespace dna_fast {

DNA_HD float sigmoidf_(float z) {
#if defined(__CUDA_ARCH__)
  return 1.f / (1.f + __expf(-z));
#else
  return 1.f / (1.f + std::exp(-z));
#endif
}

// swish(z) = z * sigmoid(z) (a.k.a. SiLU).
DNA_HD float swishf(float z) { return z * sigmoidf_(z); }

// d swish / dz = s * (1 + z * (1 - s)), s = sigmoid(z).
DNA_HD float swish_grad(float z) {
  const float s = sigmoidf_(z);
  return s * (1.f + z * (1.f - s));
}

// Folded BatchNorm + swish: swish(x * scale + shift).
DNA_HD float scale_shift_swish(float x, float scale, float shift) { return swishf(x * scale + shift); }

// Gradient w.r.t. the pre-activation z = x * scale + shift, given the output gradient g.
DNA_HD float scale_shift_swish_grad_z(float g, float x, float scale, float shift) {
  return g * swish_grad(x * scale + shift);
}

// Channel of flat element `i` of a 4-D tensor, NCHW-contiguous or channels_last-contiguous.
DNA_HD int64_t channel_of(int64_t i, int64_t C, int64_t HW, bool channels_last) {
  return channels_last ? i % C : (i / HW) % C;
}

DNA_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace dna_fast
