// Helpers shared by the CUDA kernels.
#pragma once

#include <cstdint>

namespace dna_fast {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n elements, capped so huge tensors do not launch needless blocks.
inline unsigned int grid_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned int>(blocks < 65535 * 8 ? blocks : 65535 * 8);
}

#define DNA_GRID_STRIDE_LOOP(i, n) \
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)blockDim.x * gridDim.x)

}  // namespace dna_fast
