// CUDA kernels of se_gate and of pw_project's fused epilogue, and their launch configuration. ATen-free: the
// launchers (se_project_kernel.cu) and the emulator tests (csrc/tests/cudasim/test_se_project_emu.cpp) launch
// through the functions below.
//
// se_gate: one block per sample; pooled and the hidden vector in (dynamic) shared memory; one warp per hidden unit for
// the reduce (lane-strided dot product + shuffle reduction), one thread per channel for the expand. fp32 throughout.
// pw_epilogue: after the GEMM (cuBLAS, in the launcher): BN (+ residual) into the output, or with a target the squared
// differences reduced per block and added to loss[n] with one atomicAdd per block.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda_launch.h"
#include "dna_fast/cuda_helpers.cuh"
#include "dna_fast/math.h"

namespace dna_fast {
namespace {  // every translation unit (nvcc, emulator) has its own kernels

__global__ void se_gate_kernel(const float* __restrict__ pooled, const float* __restrict__ wr,
                               const float* __restrict__ br, const float* __restrict__ we,
                               const float* __restrict__ be, float* __restrict__ gate, int C, int R) {
  DNA_EXTERN_SHARED(float, smem);
  float* p = smem;      // [C]
  float* h = smem + C;  // [R]
  const int64_t n = blockIdx.x;
  for (int c = threadIdx.x; c < C; c += blockDim.x) p[c] = pooled[n * C + c];
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  for (int r = warp; r < R; r += nwarps) {
    float acc = 0.f;
    for (int c = lane; c < C; c += 32) acc += wr[static_cast<int64_t>(r) * C + c] * p[c];
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) h[r] = swishf(acc + br[r]);
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = be[c];
    for (int r = 0; r < R; ++r) acc += we[static_cast<int64_t>(c) * R + r] * h[r];
    gate[n * C + c] = sigmoidf_(acc);
  }
}

// Dynamic shared memory of se_gate: the pooled vector [C] and the hidden one [R], fp32 (at most 48 KiB).
inline size_t se_gate_smem(int64_t C, int64_t R) { return static_cast<size_t>(C + R) * sizeof(float); }

// gate [N, C] = sigmoid(we @ swish(wr @ pooled + br) + be) per sample, all fp32 contiguous; N, C > 0.
inline void se_gate_launch(const float* pooled, const float* wr, const float* br, const float* we, const float* be,
                           float* gate, int64_t N, int64_t C, int64_t R, cudaStream_t stream) {
  DNA_LAUNCH(dim3(static_cast<unsigned>(N)), dim3(kThreads), se_gate_smem(C, R), stream, se_gate_kernel)(
      pooled, wr, br, we, be, gate, static_cast<int>(C), static_cast<int>(R));
}

// Elements [blockIdx.x * chunk, ...) of sample blockIdx.y; z/res/tgt/y contiguous in the output's layout.
template <typename scalar_t>
__global__ void pw_epilogue(const scalar_t* __restrict__ z, const float* __restrict__ scale,
                            const float* __restrict__ shift, const scalar_t* __restrict__ res,
                            const scalar_t* __restrict__ tgt, scalar_t* __restrict__ y, float* __restrict__ loss,
                            int64_t per, int64_t chunk, int64_t Co, int64_t HW, bool cl) {
  const int64_t n = blockIdx.y, base = n * per, begin = blockIdx.x * chunk;
  const int64_t end = begin + chunk < per ? begin + chunk : per;
  float acc = 0.f;
  for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
    const int64_t i = base + j, c = channel_of(i, Co, HW, cl);
    float v = static_cast<float>(z[i]) * scale[c] + shift[c];
    if (res != nullptr) v += static_cast<float>(res[i]);
    if (tgt != nullptr) {
      const float d = static_cast<float>(static_cast<scalar_t>(v)) - static_cast<float>(tgt[i]);
      acc += d * d;
    } else {
      y[i] = static_cast<scalar_t>(v);
    }
  }
  if (tgt != nullptr) {
    const float total = block_reduce_sum(acc);
    if (threadIdx.x == 0) atomicAdd(loss + n, total);
  }
}

constexpr int64_t kPwChunk = 8 * kThreads * 4;  // elements per block of pw_epilogue

// Grid of pw_epilogue: chunks of kPwChunk elements of one sample on x, the N samples on y (N <= 65535).
inline dim3 pw_epilogue_grid(int64_t N, int64_t per, int64_t chunk = kPwChunk) {
  return dim3(static_cast<unsigned>(ceil_div(per, chunk)), static_cast<unsigned>(N));
}

// z [N, Co, HW] (NCHW) or [N, HW, Co] (cl) contiguous, per = Co * HW > 0: y = z * scale + shift (+ res), or with tgt
// loss[n] += sum((cast(z * scale + shift (+ res)) - tgt)^2) (loss zeroed, y null). `chunk`: the tests pass a small
// one to get several blocks per sample on small shapes.
template <typename scalar_t>
void pw_epilogue_launch(const scalar_t* z, const float* scale, const float* shift, const scalar_t* res,
                        const scalar_t* tgt, scalar_t* y, float* loss, int64_t N, int64_t per, int64_t Co, int64_t HW,
                        bool cl, cudaStream_t stream, int64_t chunk = kPwChunk) {
  DNA_LAUNCH(pw_epilogue_grid(N, per, chunk), dim3(kThreads), 0, stream, pw_epilogue<scalar_t>)(
      z, scale, shift, res, tgt, y, loss, per, chunk, Co, HW, cl);
}

}  // namespace
}  // namespace dna_fast
