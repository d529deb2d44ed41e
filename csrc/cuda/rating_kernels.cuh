// Device code of the rating engine's fused CUDA passes (the twins of csrc/cpu/nhwc_kernels.cpp), free of ATen so the
// same source runs on a GPU (launched by rating_kernels.cu) and on the CPU under the CUDA emulator (csrc/tests).
//
//   gated_gemm_kernel: (x * gate) @ w over [rows, K] x [K, N] tiles with fp32 accumulation and one of two epilogues,
//     the product never stored:
//       kSqErr:  the sums over the tile of e^2 and |e| for e = acc + offset + shift (the last layer's projection + BN +
//                residual - target, reduced to its squared and absolute error): one partial pair per block, each
//                block inside one image (gate group), so the launcher adds them per image;
//       kColDev: per column, sum over the tile's rows of (acc - mean)^2 (the projection's BN variance under
//                calibration): one partial row of the tile's columns per block.
//   expand_dw_kernel: the 1x1 expansion swish(x @ w1 + b1) of a tile's input window (zero padding outside the
//     image) made in shared memory, then the depthwise conv over it and either BN + swish (kAct) or the raw conv
//     (stats); the output stored in x's dtype and, per (output row, column tile, channel), the sum of the tile row's
//     outputs and (stats) their sum of squared deviations from its own mean. All sibling ops of one kernel size run in
//     one launch: their expansion channels are concatenated and a block takes kDwChannels of them.
//   swish_rows_kernel: in place swish(x * scale + shift) over [rows, C] with per-(row tile, column) sums.
//
// Every reduction ends in a per-block partial written to its own slot (no atomics): the launcher adds the partials
// with ATen, so results do not depend on the order blocks run in. Blocks loop over their row tiles (grid.y is capped
// at 65535), so no tensor size overflows a grid dimension.
#pragma once

#include <cstdint>

#include "cuda_launch.h"
#include "dna_fast/dwconv.h"
#include "dna_fast/math.h"

namespace dna_fast {
namespace rating {

constexpr unsigned int kMaxGridY = 65535;

inline unsigned int capped_grid_y(int64_t tiles) {
  return static_cast<unsigned int>(tiles < 1 ? 1 : (tiles < kMaxGridY ? tiles : kMaxGridY));
}

// ------------------------------------------------------------------------------------------------------------------
// gated GEMM with a reducing epilogue
// ------------------------------------------------------------------------------------------------------------------

// Block tile 64 rows x 64 columns, K in steps of 16; 16 x 16 threads, each a 4 x 4 micro-tile of rows ty + 16 i and
// columns tx + 16 j (a warp reads two rows of the x tile, broadcast, and 16 consecutive columns of the w tile).
// NOTE plain SIMT fp32 FMAs, no tensor cores: cuBLASLt's epilogues (bias, ReLU/GELU, aux output) cannot reduce the
// product to a squared error without storing it, and CUTLASS's epilogue visitor trees would bring a large template
// dependency that the CPU emulator cannot run (tensor core MMA has no emulated form). See docs/gpu_rating.md.
constexpr int kGemmBM = 64, kGemmBN = 64, kGemmBK = 16, kGemmThreads = 256;

enum class GemmEpilogue { kSqErr, kColDev };

struct GemmShape {
  int64_t R;      // rows of x
  int64_t K;      // columns of x = rows of w
  int64_t N;      // columns of w
  int64_t ldx;    // row stride of x (its column stride is 1)
  int64_t per;    // rows per gate group (R when there is no gate)
  int64_t tiles;  // row tiles per group
  int64_t groups;
};

inline GemmShape gemm_shape(int64_t R, int64_t K, int64_t N, int64_t ldx, int64_t groups) {
  const int64_t per = groups > 0 ? R / groups : R;
  const int64_t g = groups > 0 ? groups : 1;
  return {R, K, N, ldx, per, ceil_div(per, kGemmBM), g};
}

// Launch configuration shared by the launcher and the emulator tests; the partial buffer holds, per row tile,
// kSqErr: [column tiles, 2] (sum of e^2, sum of |e|); kColDev: [N].
struct GemmLaunch {
  dim3 grid;
  dim3 block;
  int64_t row_tiles;  // groups * tiles (the kernel loops over them with a grid.y stride)
};

inline GemmLaunch gemm_launch(const GemmShape& s) {
  const int64_t row_tiles = s.groups * s.tiles;
  return {dim3(static_cast<unsigned int>(ceil_div(s.N, kGemmBN)), capped_grid_y(row_tiles), 1), dim3(kGemmThreads),
          row_tiles};
}

template <typename scalar_t, GemmEpilogue E>
__global__ void __launch_bounds__(kGemmThreads)
    gated_gemm_kernel(const scalar_t* __restrict__ x, const float* __restrict__ w, const float* __restrict__ gate,
                      const float* __restrict__ offset, const float* __restrict__ vec, GemmShape s,
                      int64_t row_tiles, float* __restrict__ partial) {
  // x tile transposed, gate applied (+1: the transposing stores of 16 consecutive k would otherwise hit one bank)
  DNA_SHARED(float, xs, [kGemmBK][kGemmBM + 1]);
  DNA_SHARED(float, ws, [kGemmBK][kGemmBN]);
  DNA_SHARED(float, red, [16 * kGemmBN]);  // kSqErr: two values per thread; kColDev: [16 thread rows][64 columns]
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kGemmBN;
  for (int64_t bt = blockIdx.y; bt < row_tiles; bt += gridDim.y) {
    const int64_t g = bt / s.tiles;
    const int64_t r0 = g * s.per + (bt % s.tiles) * kGemmBM;
    const int64_t r_end = (r0 + kGemmBM < (g + 1) * s.per) ? r0 + kGemmBM : (g + 1) * s.per;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
    for (int64_t k0 = 0; k0 < s.K; k0 += kGemmBK) {
      // x tile: 64 rows x 16 columns, consecutive threads along the columns of a row (16 x 4 B per row segment)
      for (int e = tid; e < kGemmBM * kGemmBK; e += kGemmThreads) {
        const int m = e / kGemmBK, kk = e % kGemmBK;
        const int64_t r = r0 + m, k = k0 + kk;
        float v = 0.f;
        if (r < r_end && k < s.K) {
          v = static_cast<float>(x[r * s.ldx + k]);
          if (gate != nullptr) v *= gate[g * s.K + k];
        }
        xs[kk][m] = v;
      }
      for (int e = tid; e < kGemmBK * kGemmBN; e += kGemmThreads) {
        const int kk = e / kGemmBN, nn = e % kGemmBN;
        const int64_t k = k0 + kk, n = n0 + nn;
        ws[kk][nn] = (k < s.K && n < s.N) ? w[k * s.N + n] : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kGemmBK; ++kk) {
        float a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = xs[kk][ty + 16 * i];
#pragma unroll
        for (int j = 0; j < 4; ++j) b[j] = ws[kk][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
      }
      __syncthreads();
    }
    if constexpr (E == GemmEpilogue::kSqErr) {
      // vec = shift [N]; offset [R, N]: the sums of e^2 and |e| for e = acc + offset + shift
      float sq = 0.f, ab = 0.f;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t r = r0 + ty + 16 * i;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t n = n0 + tx + 16 * j;
          if (r < r_end && n < s.N) {
            const float v = acc[i][j] + offset[r * s.N + n] + vec[n];
            sq += v * v;
            ab += v < 0.f ? -v : v;
          }
        }
      }
      red[tid] = sq;
      red[kGemmThreads + tid] = ab;
      __syncthreads();
      for (int half = kGemmThreads / 2; half > 0; half /= 2) {
        if (tid < half) {
          red[tid] += red[tid + half];
          red[kGemmThreads + tid] += red[kGemmThreads + tid + half];
        }
        __syncthreads();
      }
      if (tid == 0) {
        partial[2 * (bt * gridDim.x + blockIdx.x)] = red[0];
        partial[2 * (bt * gridDim.x + blockIdx.x) + 1] = red[kGemmThreads];
      }
      __syncthreads();  // red is rewritten by the next row tile
    } else {
      // vec = mean [N]; per column of the tile, sum over its rows of (acc - mean)^2
      float dev[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t n = n0 + tx + 16 * j;
        const float mu = n < s.N ? vec[n] : 0.f;
        float d2 = 0.f;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int64_t r = r0 + ty + 16 * i;
          if (r < r_end) {
            const float d = acc[i][j] - mu;
            d2 += d * d;
          }
        }
        dev[j] = d2;
      }
      // red as [16 thread rows][64 columns]: column tx + 16 j of thread row ty
#pragma unroll
      for (int j = 0; j < 4; ++j) red[ty * kGemmBN + tx + 16 * j] = dev[j];
      __syncthreads();
      if (tid < kGemmBN) {
        float total = 0.f;
        for (int t = 0; t < 16; ++t) total += red[t * kGemmBN + tid];
        const int64_t n = n0 + tid;
        if (n < s.N) partial[bt * s.N + n] = total;
      }
      __syncthreads();
    }
  }
}

template <typename scalar_t, GemmEpilogue E>
void gated_gemm_launch(const GemmLaunch& l, const scalar_t* x, const float* w, const float* gate, const float* offset,
                       const float* vec, const GemmShape& s, float* partial, cudaStream_t stream) {
  DNA_LAUNCH(l.grid, l.block, 0, stream, gated_gemm_kernel<scalar_t, E>)(x, w, gate, offset, vec, s, l.row_tiles,
                                                                        partial);
}

// ------------------------------------------------------------------------------------------------------------------
// expansion + depthwise conv (+ BN + swish) with per-row partial sums
// ------------------------------------------------------------------------------------------------------------------

// A block: kDwChannels expansion channels x kDwLanes threads (lane = output column of the tile), an output tile of
// DwTile<S>::kH rows x kDwTileW columns. Stride 2 takes half the rows so the input window (which the expansion fills
// in shared memory) stays under 48 KB: k = 7 reads (4 - 1) * 2 + 7 = 13 x 21 input pixels = 34.9 KB of fp32.
constexpr int kDwChannels = 32, kDwLanes = 8, kDwTileW = 8, kDwThreads = kDwChannels * kDwLanes, kDwCin = 8;

template <int K, int S>
struct DwTile {
  static constexpr int kH = S == 1 ? 8 : 4;                  // output rows
  static constexpr int kInH = (kH - 1) * S + K;              // = dw_in_extent(kH, K, S)
  static constexpr int kInW = (kDwTileW - 1) * S + K;        // = dw_in_extent(kDwTileW, K, S)
  static constexpr int kInPx = kInH * kInW;
  static constexpr int kPerLane = (kInPx + kDwLanes - 1) / kDwLanes;  // window pixels each thread expands
  // shared floats: the expansion stage (x chunk [kInPx][kDwCin] + w1 chunk [kDwCin][kDwChannels]) and then the
  // expanded window [kInPx][kDwChannels] share one region; the output tile [kH][kDwTileW][kDwChannels] follows
  static constexpr int kStage = kInPx * kDwCin + kDwCin * kDwChannels;
  static constexpr int kWindow = kInPx * kDwChannels;
  static constexpr int kRegion = kStage > kWindow ? kStage : kWindow;
  static constexpr int kShared = kRegion + kH * kDwTileW * kDwChannels;
  static_assert(kShared * 4 <= 48 * 1024, "expand_dw tile exceeds 48 KB of static shared memory");
};

struct DwShape {
  int64_t N, H, W, Cin, C, Ho, Wo;
  int64_t tiles_x;  // column tiles per output row band
  int64_t tiles_y;  // row bands per image
};

template <int K, int S>
DwShape dw_shape(int64_t N, int64_t H, int64_t W, int64_t Cin, int64_t C) {
  const int64_t Ho = dw_out_size(H, K, S), Wo = dw_out_size(W, K, S);
  return {N, H, W, Cin, C, Ho, Wo, ceil_div(Wo, kDwTileW), ceil_div(Ho, DwTile<K, S>::kH)};
}

struct DwLaunch {
  dim3 grid;
  dim3 block;
  int64_t tiles;  // N * tiles_y * tiles_x (the kernel loops over them with a grid.y stride)
};

inline DwLaunch dw_launch(const DwShape& s) {
  const int64_t tiles = s.N * s.tiles_y * s.tiles_x;
  return {dim3(static_cast<unsigned int>(ceil_div(s.C, kDwChannels)), capped_grid_y(tiles), 1), dim3(kDwThreads),
          tiles};
}

// x [N, H, W, Cin] (channels_last), w1 [Cin, C] fp32, b1 [C], w_dw [C, K * K] fp32, scale/shift [C] (kAct);
// y [N, Ho, Wo, C] in x's dtype; row_sum (and, without kAct, row_m2) [N, Ho, tiles_x, C] fp32: per output row and
// column tile, the sum of the tile row's outputs (after the activation with kAct) and their sum of squared
// deviations from the tile row's mean.
template <typename scalar_t, int K, int S, bool kAct>
__global__ void __launch_bounds__(kDwThreads)
    expand_dw_kernel(const scalar_t* __restrict__ x, const float* __restrict__ w1, const float* __restrict__ b1,
                     const float* __restrict__ wdw, const float* __restrict__ scale, const float* __restrict__ shift,
                     DwShape s, int64_t tiles, scalar_t* __restrict__ y, float* __restrict__ row_sum,
                     float* __restrict__ row_m2) {
  using T = DwTile<K, S>;
  DNA_SHARED(float, smem, [T::kShared]);
  float* const xs = smem;                              // [kInPx][kDwCin]
  float* const w1s = smem + T::kInPx * kDwCin;         // [kDwCin][kDwChannels]
  float* const hid = smem;                             // [kInPx][kDwChannels] (after the expansion)
  float* const outs = smem + T::kRegion;               // [kH][kDwTileW][kDwChannels]
  const int tid = threadIdx.x, c = tid % kDwChannels, lane = tid / kDwChannels;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kDwChannels, cg = c0 + c;
  const bool c_ok = cg < s.C;
  float wk[K * K];
#pragma unroll
  for (int t = 0; t < K * K; ++t) wk[t] = c_ok ? wdw[cg * K * K + t] : 0.f;
  const float bias = c_ok ? b1[cg] : 0.f;
  const float sc = (kAct && c_ok) ? scale[cg] : 0.f, sh = (kAct && c_ok) ? shift[cg] : 0.f;
  for (int64_t t = blockIdx.y; t < tiles; t += gridDim.y) {
    const int64_t n = t / (s.tiles_y * s.tiles_x), band = (t / s.tiles_x) % s.tiles_y, tx = t % s.tiles_x;
    const int64_t oy0 = band * T::kH, ox0 = tx * kDwTileW;
    const int64_t iy0 = dw_in_start(oy0, K, S), ix0 = dw_in_start(ox0, K, S);
    const scalar_t* __restrict__ xn = x + n * s.H * s.W * s.Cin;
    // 1. expansion of the window: thread (lane, c) owns pixels lane + kDwLanes * e of channel c, in registers
    float acc[T::kPerLane];
#pragma unroll
    for (int e = 0; e < T::kPerLane; ++e) acc[e] = 0.f;
    for (int64_t ci0 = 0; ci0 < s.Cin; ci0 += kDwCin) {
      for (int e = tid; e < T::kInPx * kDwCin; e += kDwThreads) {
        const int p = e / kDwCin, j = e % kDwCin;
        const int64_t iy = iy0 + p / T::kInW, ix = ix0 + p % T::kInW, ci = ci0 + j;
        xs[e] = (dw_inside(iy, s.H) && dw_inside(ix, s.W) && ci < s.Cin)
                    ? static_cast<float>(xn[(iy * s.W + ix) * s.Cin + ci])
                    : 0.f;
      }
      {
        const int j = tid / kDwChannels;  // kDwThreads == kDwCin * kDwChannels
        const int64_t ci = ci0 + j;
        w1s[tid] = (ci < s.Cin && c_ok) ? w1[ci * s.C + cg] : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int e = 0; e < T::kPerLane; ++e) {
        const int p = lane + kDwLanes * e;
        if (p < T::kInPx) {
          float a = acc[e];
#pragma unroll
          for (int j = 0; j < kDwCin; ++j) a += xs[p * kDwCin + j] * w1s[j * kDwChannels + c];
          acc[e] = a;
        }
      }
      __syncthreads();  // the next chunk (or the window below) overwrites xs / w1s
    }
#pragma unroll
    for (int e = 0; e < T::kPerLane; ++e) {
      const int p = lane + kDwLanes * e;
      if (p < T::kInPx) {
        const int64_t iy = iy0 + p / T::kInW, ix = ix0 + p % T::kInW;
        // the conv's zero padding is in the expanded space: swish(b1) would be wrong there
        hid[p * kDwChannels + c] = (dw_inside(iy, s.H) && dw_inside(ix, s.W)) ? swishf(acc[e] + bias) : 0.f;
      }
    }
    __syncthreads();
    // 2. depthwise conv: thread (lane, c) computes output column lane of every row of the tile
    const int64_t ox = ox0 + lane;
    for (int ly = 0; ly < T::kH; ++ly) {
      const int64_t oy = oy0 + ly;
      float a = 0.f;
#pragma unroll
      for (int ky = 0; ky < K; ++ky)
#pragma unroll
        for (int kx = 0; kx < K; ++kx)
          a += wk[ky * K + kx] * hid[((ly * S + ky) * T::kInW + lane * S + kx) * kDwChannels + c];
      const float v = kAct ? swishf(a * sc + sh) : a;
      const bool ok = c_ok && oy < s.Ho && ox < s.Wo;
      if (ok) y[((n * s.Ho + oy) * s.Wo + ox) * s.C + cg] = static_cast<scalar_t>(v);
      outs[(ly * kDwTileW + lane) * kDwChannels + c] = ok ? v : 0.f;
    }
    __syncthreads();
    // 3. per (tile row, channel): the sum of the row's outputs and their squared deviations from its mean
    for (int e = tid; e < T::kH * kDwChannels; e += kDwThreads) {
      const int ly = e / kDwChannels, cc = e % kDwChannels;
      const int64_t oy = oy0 + ly, ch = c0 + cc;
      if (oy >= s.Ho || ch >= s.C) continue;
      const int64_t rem = s.Wo - ox0;
      const int cols = static_cast<int>(rem < kDwTileW ? rem : kDwTileW);
      float sum = 0.f;
      for (int l = 0; l < cols; ++l) sum += outs[(ly * kDwTileW + l) * kDwChannels + cc];
      const int64_t slot = ((n * s.Ho + oy) * s.tiles_x + tx) * s.C + ch;
      row_sum[slot] = sum;
      if (!kAct) {
        const float mean = sum / static_cast<float>(cols);
        float m2 = 0.f;
        for (int l = 0; l < cols; ++l) {
          const float d = outs[(ly * kDwTileW + l) * kDwChannels + cc] - mean;
          m2 += d * d;
        }
        row_m2[slot] = m2;
      }
    }
    __syncthreads();  // smem is refilled by the next tile
  }
}

template <typename scalar_t, int K, int S, bool kAct>
void expand_dw_launch(const DwLaunch& l, const scalar_t* x, const float* w1, const float* b1, const float* wdw,
                      const float* scale, const float* shift, const DwShape& s, scalar_t* y, float* row_sum,
                      float* row_m2, cudaStream_t stream) {
  DNA_LAUNCH(l.grid, l.block, 0, stream, expand_dw_kernel<scalar_t, K, S, kAct>)(x, w1, b1, wdw, scale, shift, s,
                                                                                l.tiles, y, row_sum, row_m2);
}

// ------------------------------------------------------------------------------------------------------------------
// in-place swish over rows with per-(row tile, column) sums
// ------------------------------------------------------------------------------------------------------------------

// A block: 32 columns x 8 row lanes over a tile of kRowsTile rows inside one group.
constexpr int kRowsCols = 32, kRowsLanes = 8, kRowsTile = 64, kRowsThreads = kRowsCols * kRowsLanes;

struct RowsShape {
  int64_t R, C, per, tiles, groups;  // per: rows per group; tiles: row tiles per group
};

inline RowsShape rows_shape(int64_t R, int64_t C, int64_t groups) {
  const int64_t g = groups > 0 ? groups : 1, per = R / g;
  return {R, C, per, ceil_div(per, kRowsTile), g};
}

struct RowsLaunch {
  dim3 grid;
  dim3 block;
  int64_t row_tiles;
};

inline RowsLaunch rows_launch(const RowsShape& s) {
  const int64_t row_tiles = s.groups * s.tiles;
  return {dim3(static_cast<unsigned int>(ceil_div(s.C, kRowsCols)), capped_grid_y(row_tiles), 1),
          dim3(kRowsThreads), row_tiles};
}

// x [R, C] contiguous, in place; scale / shift [C] or null; part [row tiles, C] (or null: no sums).
template <typename scalar_t>
__global__ void __launch_bounds__(kRowsThreads)
    swish_rows_kernel(scalar_t* __restrict__ x, const float* __restrict__ scale, const float* __restrict__ shift,
                      RowsShape s, int64_t row_tiles, float* __restrict__ part) {
  DNA_SHARED(float, red, [kRowsLanes][kRowsCols]);
  const int tid = threadIdx.x, cc = tid % kRowsCols, lane = tid / kRowsCols;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kRowsCols + cc;
  const bool ok = col < s.C;
  const float sc = (ok && scale != nullptr) ? scale[col] : 1.f, sh = (ok && shift != nullptr) ? shift[col] : 0.f;
  for (int64_t bt = blockIdx.y; bt < row_tiles; bt += gridDim.y) {
    const int64_t g = bt / s.tiles, r0 = g * s.per + (bt % s.tiles) * kRowsTile;
    const int64_t r_end = (r0 + kRowsTile < (g + 1) * s.per) ? r0 + kRowsTile : (g + 1) * s.per;
    float sum = 0.f;
    if (ok) {
      for (int64_t r = r0 + lane; r < r_end; r += kRowsLanes) {
        const float v = swishf(static_cast<float>(x[r * s.C + col]) * sc + sh);
        x[r * s.C + col] = static_cast<scalar_t>(v);
        sum += v;
      }
    }
    if (part == nullptr) continue;  // uniform over the block
    red[lane][cc] = sum;
    __syncthreads();
    if (lane == 0 && ok) {
      float total = 0.f;
      for (int l = 0; l < kRowsLanes; ++l) total += red[l][cc];
      part[bt * s.C + col] = total;
    }
    __syncthreads();
  }
}

template <typename scalar_t>
void swish_rows_launch(const RowsLaunch& l, scalar_t* x, const float* scale, const float* shift, const RowsShape& s,
                       float* part, cudaStream_t stream) {
  DNA_LAUNCH(l.grid, l.block, 0, stream, swish_rows_kernel<scalar_t>)(x, scale, shift, s, l.row_tiles, part);
}

}  // namespace rating
}  // namespace dna_fast
