// CUDA kernels of dwconv_bn_act and their launch configuration: depthwise conv (padding k / 2) + folded BN + swish
// (+ per-(n, c) spatial sums). ATen-free: the launcher (dwconv_bn_act_kernel.cu) and the emulator tests
// (csrc/tests/cudasim/test_dwconv_emu.cpp) both launch through dwconv_bn_act_launch below.
//
// NCHW: one block computes a kTileH x kTileW tile of outputs of one (n, c) plane: the input window of the tile (zero
// padding included) is staged in shared memory as fp32, the k * k weights sit in registers, each thread computes
// one output with fp32 accumulation, and with sums the block reduces its outputs and adds them to sums[n, c] with one
// atomicAdd. Planes are on grid.x (N * C can exceed 65535), tiles on grid.y; a plane with more than 65535 tiles
// (4096 x 4096 outputs) is covered by blocks that loop over tiles with stride gridDim.y.
//
// channels_last: no shared memory for the input; a block is 32 channels x 8 pixel lanes, consecutive threads take
// consecutive channels of one pixel (coalesced loads and stores), each thread walks kClPixels / 8 output pixels of
// its channel per chunk, reading the k * k taps straight from global memory (neighbouring pixels' reuse comes from
// L1 / L2), and the per-channel sums are reduced over the 8 lanes in shared memory, then added with one atomicAdd per
// channel. Chunks of kClPixels pixels are on grid.y, looped over with stride gridDim.y beyond 65535 chunks
// (Ho * Wo > 4,194,240), the batch on grid.z.
#pragma once

#include <cstdint>

#include "cuda_launch.h"
#include "dna_fast/cuda_helpers.cuh"
#include "dna_fast/dwconv.h"
#include "dna_fast/math.h"

namespace dna_fast {
namespace {  // every translation unit (nvcc, emulator) has its own kernels

constexpr int kTileW = 32, kTileH = 8, kTileThreads = kTileW * kTileH;  // one output per thread
constexpr int kClChannels = 32, kClLanes = 8, kClPixels = 64;           // block: 32 channels x 8 lanes, 64 pixels
constexpr unsigned kMaxGridY = 65535;

template <typename scalar_t, int K, int S>
__global__ void __launch_bounds__(kTileThreads)
    dwconv_bn_act_nchw(const scalar_t* __restrict__ x, const float* __restrict__ w, const float* __restrict__ scale,
                       const float* __restrict__ shift, scalar_t* __restrict__ y, float* __restrict__ sums, int C,
                       int H, int W, int Ho, int Wo, int tiles_w, int tiles) {
  constexpr int kInH = (kTileH - 1) * S + K, kInW = (kTileW - 1) * S + K;  // = dw_in_extent(tile, K, S)
  DNA_SHARED(float, tile, [kInH][kInW + 1]);
  const int64_t plane = blockIdx.x;  // n * C + c
  const int c = static_cast<int>(plane % C);
  const scalar_t* __restrict__ xp = x + plane * H * W;
  float wk[K * K];
#pragma unroll
  for (int t = 0; t < K * K; ++t) wk[t] = w[c * K * K + t];
  const int ly = threadIdx.x / kTileW, lx = threadIdx.x % kTileW;
  float total = 0.f;
  for (int t = blockIdx.y; t < tiles; t += gridDim.y) {
    if (t != static_cast<int>(blockIdx.y)) __syncthreads();  // the previous tile's reads are done (uniform)
    const int oy0 = (t / tiles_w) * kTileH, ox0 = (t % tiles_w) * kTileW;
    const int iy0 = static_cast<int>(dw_in_start(oy0, K, S)), ix0 = static_cast<int>(dw_in_start(ox0, K, S));
    for (int i = threadIdx.x; i < kInH * kInW; i += kTileThreads) {
      const int r = i / kInW, q = i % kInW, iy = iy0 + r, ix = ix0 + q;
      tile[r][q] = (dw_inside(iy, H) && dw_inside(ix, W)) ? static_cast<float>(xp[static_cast<int64_t>(iy) * W + ix])
                                                          : 0.f;
    }
    __syncthreads();
    const int oy = oy0 + ly, ox = ox0 + lx;
    if (oy < Ho && ox < Wo) {
      float acc = 0.f;
#pragma unroll
      for (int ky = 0; ky < K; ++ky)
#pragma unroll
        for (int kx = 0; kx < K; ++kx) acc += wk[ky * K + kx] * tile[ly * S + ky][lx * S + kx];
      const float v = swishf(acc * scale[c] + shift[c]);
      y[plane * Ho * Wo + static_cast<int64_t>(oy) * Wo + ox] = static_cast<scalar_t>(v);
      total += v;
    }
  }
  if (sums != nullptr) {
    const float s = block_reduce_sum(total);
    if (threadIdx.x == 0) atomicAdd(sums + plane, s);
  }
}

template <typename scalar_t, int K, int S>
__global__ void __launch_bounds__(kClChannels * kClLanes)
    dwconv_bn_act_cl(const scalar_t* __restrict__ x, const float* __restrict__ w, const float* __restrict__ scale,
                     const float* __restrict__ shift, scalar_t* __restrict__ y, float* __restrict__ sums, int C, int H,
                     int W, int Ho, int Wo) {
  DNA_SHARED(float, part, [kClLanes][kClChannels]);
  const int tx = threadIdx.x % kClChannels, ty = threadIdx.x / kClChannels;
  const int c = blockIdx.x * kClChannels + tx;
  const int64_t n = blockIdx.z, pixels = static_cast<int64_t>(Ho) * Wo;
  const int64_t chunks = ceil_div(pixels, kClPixels);
  float local = 0.f;
  if (c < C) {
    const float sc = scale[c], sh = shift[c];
    const scalar_t* __restrict__ xn = x + n * H * W * C;
    for (int64_t chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
      const int64_t p0 = chunk * kClPixels, p1 = p0 + kClPixels < pixels ? p0 + kClPixels : pixels;
      for (int64_t p = p0 + ty; p < p1; p += kClLanes) {
        const int oy = static_cast<int>(p / Wo), ox = static_cast<int>(p % Wo);
        const int iy0 = static_cast<int>(dw_in_start(oy, K, S)), ix0 = static_cast<int>(dw_in_start(ox, K, S));
        float acc = 0.f;
#pragma unroll
        for (int ky = 0; ky < K; ++ky) {
          const int iy = iy0 + ky;
          if (!dw_inside(iy, H)) continue;
#pragma unroll
          for (int kx = 0; kx < K; ++kx) {
            const int ix = ix0 + kx;
            if (!dw_inside(ix, W)) continue;
            acc += w[c * K * K + ky * K + kx] * static_cast<float>(xn[(static_cast<int64_t>(iy) * W + ix) * C + c]);
          }
        }
        const float v = swishf(acc * sc + sh);
        y[((n * Ho + oy) * Wo + ox) * C + c] = static_cast<scalar_t>(v);
        local += v;
      }
    }
  }
  if (sums == nullptr) return;  // uniform over the block
  part[ty][tx] = local;
  __syncthreads();
  if (ty == 0 && c < C) {
    float total = 0.f;
#pragma unroll
    for (int l = 0; l < kClLanes; ++l) total += part[l][tx];
    atomicAdd(sums + n * C + c, total);
  }
}

// The shape of one dwconv_bn_act call: input [N, C, H, W], output [N, C, Ho, Wo].
struct DwShape {
  int64_t N, C, H, W, Ho, Wo;
};

// Launch configuration of either layout; NCHW also passes the tiles per row and the tile count to the kernel.
struct DwLaunch {
  dim3 grid, block;
  int tiles_w = 0, tiles = 0;
};

// max_grid_y: 65535 on a GPU; the tests pass a small value to run the loop over tiles / chunks on small shapes.
inline DwLaunch dwconv_nchw_config(const DwShape& s, unsigned max_grid_y = kMaxGridY) {
  DwLaunch l;
  l.tiles_w = static_cast<int>(ceil_div(s.Wo, kTileW));
  l.tiles = l.tiles_w * static_cast<int>(ceil_div(s.Ho, kTileH));
  const unsigned gy = static_cast<unsigned>(l.tiles) < max_grid_y ? static_cast<unsigned>(l.tiles) : max_grid_y;
  l.grid = dim3(static_cast<unsigned>(s.N * s.C), gy);
  l.block = dim3(kTileThreads);
  return l;
}

inline DwLaunch dwconv_cl_config(const DwShape& s, unsigned max_grid_y = kMaxGridY) {
  DwLaunch l;
  const int64_t chunks = ceil_div(s.Ho * s.Wo, kClPixels);
  const unsigned gy = chunks < static_cast<int64_t>(max_grid_y) ? static_cast<unsigned>(chunks) : max_grid_y;
  l.grid = dim3(static_cast<unsigned>(ceil_div(s.C, kClChannels)), gy, static_cast<unsigned>(s.N));
  l.block = dim3(kClChannels * kClLanes);
  return l;
}

template <typename scalar_t, int K, int S>
void dwconv_launch_ks(bool cl, const DwShape& s, const scalar_t* x, const float* w, const float* scale,
                      const float* shift, scalar_t* y, float* sums, cudaStream_t stream, unsigned max_grid_y) {
  const int C = static_cast<int>(s.C), H = static_cast<int>(s.H), W = static_cast<int>(s.W);
  const int Ho = static_cast<int>(s.Ho), Wo = static_cast<int>(s.Wo);
  if (cl) {
    const DwLaunch l = dwconv_cl_config(s, max_grid_y);
    DNA_LAUNCH(l.grid, l.block, 0, stream, dwconv_bn_act_cl<scalar_t, K, S>)(x, w, scale, shift, y, sums, C, H, W,
                                                                            Ho, Wo);
  } else {
    const DwLaunch l = dwconv_nchw_config(s, max_grid_y);
    DNA_LAUNCH(l.grid, l.block, 0, stream, dwconv_bn_act_nchw<scalar_t, K, S>)(x, w, scale, shift, y, sums, C, H, W,
                                                                              Ho, Wo, l.tiles_w, l.tiles);
  }
}

// Runs dwconv_bn_act on device pointers: x [N, C, H, W] (NCHW- or channels_last-contiguous, `cl`), w [C, k, k] fp32,
// scale / shift [C] fp32, y like x with [Ho, Wo], sums [N, C] fp32 zeroed (or null). Returns false for a k / stride
// without a kernel (3 / 5 / 7, 1 / 2). An empty output launches nothing.
template <typename scalar_t>
bool dwconv_bn_act_launch(bool cl, int64_t k, int64_t stride, const DwShape& s, const scalar_t* x, const float* w,
                          const float* scale, const float* shift, scalar_t* y, float* sums, cudaStream_t stream,
                          unsigned max_grid_y = kMaxGridY) {
  if (s.N * s.C * s.Ho * s.Wo == 0) return dw_kernel_supported(k) && dw_stride_supported(stride);
#define DNA_DW_CASE(KK, SS)                                                                         \
  if (k == KK && stride == SS) {                                                                    \
    dwconv_launch_ks<scalar_t, KK, SS>(cl, s, x, w, scale, shift, y, sums, stream, max_grid_y);     \
    return true;                                                                                    \
  }
  DNA_DW_CASE(3, 1)
  DNA_DW_CASE(3, 2)
  DNA_DW_CASE(5, 1)
  DNA_DW_CASE(5, 2)
  DNA_DW_CASE(7, 1)
  DNA_DW_CASE(7, 2)
#undef DNA_DW_CASE
  return false;
}

}  // namespace
}  // namespace dna_fast
