// Index math of the depthwise convolution used by dwconv_bn_act (padding k / 2, stride 1 or 2), shared by the CPU
// and CUDA kernels and by the C++ unit tests (csrc/tests). Header-only, host and device, no libtorch.
#pragma once

#include <cstdint>

#include "dna_fast/math.h"

namespace dna_fast {

// Kernel sizes and strides the fused kernels are specialized for.
DNA_HD bool dw_kernel_supported(int64_t k) { return k == 3 || k == 5 || k == 7; }
DNA_HD bool dw_stride_supported(int64_t s) { return s == 1 || s == 2; }

// timm's default "same-ish" padding of an odd kernel.
DNA_HD int64_t dw_pad(int64_t k) { return k / 2; }

// Output size along one axis: floor((in + 2 * pad - k) / stride) + 1, 0 for an empty input.
DNA_HD int64_t dw_out_size(int64_t in, int64_t k, int64_t stride) {
  if (in <= 0) return 0;
  return (in + 2 * dw_pad(k) - k) / stride + 1;
}

// Input coordinate of the first tap of output `o` (may be negative: the window starts in the padding).
DNA_HD int64_t dw_in_start(int64_t o, int64_t k, int64_t stride) { return o * stride - dw_pad(k); }

// Input extent a tile of `tile_out` consecutive outputs reads along one axis (padding included).
DNA_HD int64_t dw_in_extent(int64_t tile_out, int64_t k, int64_t stride) {
  return tile_out <= 0 ? 0 : (tile_out - 1) * stride + k;
}

// Taps [lo, hi) of the window starting at input coordinate `start` that fall inside [0, in).
struct TapRange {
  int64_t lo;
  int64_t hi;
};

DNA_HD TapRange dw_taps(int64_t start, int64_t k, int64_t in) {
  const int64_t lo = start < 0 ? -start : 0;
  int64_t hi = start + k > in ? in - start : k;
  if (hi < lo) hi = lo;
  return {lo, hi};
}

// Whether input coordinate i of an axis of size n is inside the tensor (else it is zero padding).
DNA_HD bool dw_inside(int64_t i, int64_t n) { return i >= 0 && i < n; }

}  // namespace dna_fast
