// The fp64 depthwise-conv reference of the C++ tests (csrc/tests/cpu/test_cpu_kernels.cpp, the CUDA emulator's
// csrc/tests/cudasim/test_rating_emu.cpp): zero padding k / 2, any layout through accessors. Plain loops, no ATen.
#pragma once

#include <cstdint>

namespace dna_fast_test {

// For every (n, c, oy, ox) of the [N, C, Ho, Wo] output: out(n, c, oy, ox, sum over the taps inside the image of
// w(c, ky, kx) * in(n, c, iy, ix)) with iy = oy * stride - k / 2 + ky (ix likewise); `in` and `w` return values
// convertible to double.
template <typename In, typename Wt, typename Out>
void dw_conv_ref(int64_t N, int64_t C, int64_t H, int64_t W, int64_t k, int64_t stride, In&& in, Wt&& w, Out&& out) {
  const int64_t p = k / 2, Ho = (H + 2 * p - k) / stride + 1, Wo = (W + 2 * p - k) / stride + 1;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t oy = 0; oy < Ho; ++oy)
        for (int64_t ox = 0; ox < Wo; ++ox) {
          double acc = 0.0;
          for (int64_t ky = 0; ky < k; ++ky)
            for (int64_t kx = 0; kx < k; ++kx) {
              const int64_t iy = oy * stride - p + ky, ix = ox * stride - p + kx;
              if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                acc += static_cast<double>(w(c, ky, kx)) * static_cast<double>(in(n, c, iy, ix));
            }
          out(n, c, oy, ox, acc);
        }
}

}  // namespace dna_fast_test
