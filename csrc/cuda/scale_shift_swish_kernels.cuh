// CUDA kernels of scale_shift_swish (forward and backward) and their launch configuration: one thread per element,
// grid-stride, fp32 math. ATen-free: the launcher (scale_shift_swish_kernel.cu) and the emulator tests
// (csrc/tests/cudasim/test_elementwise_emu.cpp) launch through the functions below.
#pragma once

#include <cstdint>

#include "cuda_launch.h"
#include "dna_fast/cuda_helpers.cuh"
#include "dna_fast/math.h"

namespace dna_fast {
namespace {  // every translation unit (nvcc, emulator) has its own kernels

template <typename scalar_t>
__global__ void scale_shift_swish_fwd(const scalar_t* __restrict__ x, const float* __restrict__ scale,
                                      const float* __restrict__ shift, scalar_t* __restrict__ y, int64_t n,
                                      int64_t C, int64_t HW, bool cl) {
  DNA_GRID_STRIDE_LOOP(i, n) {
    const int64_t c = channel_of(i, C, HW, cl);
    y[i] = static_cast<scalar_t>(scale_shift_swish(static_cast<float>(x[i]), scale[c], shift[c]));
  }
}

template <typename scalar_t>
__global__ void scale_shift_swish_bwd(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                      const float* __restrict__ scale, const float* __restrict__ shift,
                                      scalar_t* __restrict__ gz, int64_t n, int64_t C, int64_t HW, bool cl) {
  DNA_GRID_STRIDE_LOOP(i, n) {
    const int64_t c = channel_of(i, C, HW, cl);
    gz[i] = static_cast<scalar_t>(
        scale_shift_swish_grad_z(static_cast<float>(g[i]), static_cast<float>(x[i]), scale[c], shift[c]));
  }
}

// Grid of the elementwise kernels: one thread per element, at most 65535 * 8 blocks (grid-stride beyond).
// max_blocks: the tests pass a small cap to run the grid-stride loop on small tensors.
inline dim3 elementwise_grid(int64_t n, unsigned max_blocks = 65535u * 8) {
  const unsigned g = grid_for(n);
  return dim3(g < max_blocks ? g : max_blocks);
}

// y = swish(x * scale[c] + shift[c]) over n elements of an [N, C, H, W] tensor (HW = H * W), NCHW- or
// channels_last-contiguous (`cl`); n > 0.
template <typename scalar_t>
void scale_shift_swish_launch(const scalar_t* x, const float* scale, const float* shift, scalar_t* y, int64_t n,
                              int64_t C, int64_t HW, bool cl, cudaStream_t stream,
                              unsigned max_blocks = 65535u * 8) {
  DNA_LAUNCH(elementwise_grid(n, max_blocks), dim3(kThreads), 0, stream, scale_shift_swish_fwd<scalar_t>)(
      x, scale, shift, y, n, C, HW, cl);
}

// gz = g * swish'(x * scale[c] + shift[c]), laid out as scale_shift_swish_launch's x.
template <typename scalar_t>
void scale_shift_swish_backward_launch(const scalar_t* g, const scalar_t* x, const float* scale, const float* shift,
                                       scalar_t* gz, int64_t n, int64_t C, int64_t HW, bool cl, cudaStream_t stream,
                                       unsigned max_blocks = 65535u * 8) {
  DNA_LAUNCH(elementwise_grid(n, max_blocks), dim3(kThreads), 0, stream, scale_shift_swish_bwd<scalar_t>)(
      g, x, scale, shift, gz, n, C, HW, cl);
}

}  // namespace
}  // namespace dna_fast
