// Direct channels_last (NHWC) fp32 kernels vectorized over 8 channels with AVX2 + FMA intrinsics: a swish of 8
// lanes, and a depthwise conv register-tiled over 7 output columns with fused epilogues. Compiled only when the build
// enables AVX2 and FMA (setup.py does on CPUs that have them); the callers fall back to oneDNN + ATen otherwise.
//
// Why this shape: in channels_last a pixel's channels are contiguous, so one ymm holds 8 channels of one pixel and
// the depthwise conv is a sum of per-tap FMAs with no shuffles. A tile keeps 7 outputs' accumulators and the K taps
// of one kernel row in registers (<= 15 of 16 ymm) and loads each input pixel of the row once for every output of
// the tile it touches. 7 divides every EfficientNet resolution (112, 56, 28, 14, 7), so rows need no remainder.
#pragma once

#if defined(__AVX2__) && defined(__FMA__)
#define DNA_FAST_NHWC_AVX2 1

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace dna_fast::nhwc {

// swish(z) = z / (1 + 2^(-z log2 e)) on 8 lanes, with few multiplies (the FMA pipes bound it): 2^t = 2^n 2^f with
// n = round(t), f = t - n in [-0.5, 0.5] exact, 2^f by a degree-5 minimax polynomial (2.3e-7 relative in fp32), 2^n
// through the exponent bits; the reciprocal by rcp + one Newton step (~1e-7 relative). t is clamped to [-125, 115]
// so every intermediate stays a normal float: below z = -79 the result is z * 2^-115 (|.| < 1e-32) instead of
// z * exp(z). NaN stays NaN through the final product.
inline __m256 swish8(__m256 z) {
  __m256 t = _mm256_mul_ps(z, _mm256_set1_ps(-1.44269504088896341f));
  t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-125.f)), _mm256_set1_ps(115.f));
  const __m256 fn = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(t, fn);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(1.32765e-3f), f, _mm256_set1_ps(9.67554e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550713e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402212e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314694e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0000001f));
  const __m256i e2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fn), _mm256_set1_epi32(127)), 23);
  const __m256 d = _mm256_fmadd_ps(p, _mm256_castsi256_ps(e2), _mm256_set1_ps(1.f));  // 1 + exp(-z)
  __m256 rc = _mm256_rcp_ps(d);
  rc = _mm256_mul_ps(rc, _mm256_fnmadd_ps(d, rc, _mm256_set1_ps(2.f)));
  return _mm256_mul_ps(z, rc);
}

// Output columns per register tile.
constexpr int kTile = 7;
// Channels per block of a row pass (a multiple of 8).
constexpr int64_t kChannelBlock = 360;

// What a row pass does with the conv outputs of 8 channels.
struct RowEpilogue {
  bool act;         // y = swish(z * scale + shift) (else y = z)
  const float* sc;  // [C] (act only)
  const float* sh;  // [C] (act only)
};

// T consecutive outputs (columns ox0 .. ox0 + T - 1 of output row oy) for the 8 channels at `x` / `w` / `y`: x points
// at image n, channel c0 ([H, W, C] fp32); w at tap 0, channel c0 of the [K * K, C] tap-major weights; y at output
// row oy, channel c0. The epilogue (act with vs / vb) is applied and the stored outputs are added to psum. kCheck:
// some input columns of the tile fall in the zero padding (skipped). Everything indexes with constants after
// unrolling, so the accumulators live in registers.
template <int K, int S, int T, bool kCheck>
inline void dw_tile(const float* __restrict__ x, int64_t H, int64_t W, int64_t C, const float* __restrict__ w,
                    int64_t oy, int64_t ox0, float* __restrict__ y, bool act, __m256 vs, __m256 vb, __m256& psum) {
  __m256 acc[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  constexpr int J = (T - 1) * S + K;  // input columns the tile reads
  const int64_t ix0 = ox0 * S - K / 2;
#pragma GCC unroll 7
  for (int ky = 0; ky < K; ++ky) {
    const int64_t iy = oy * S - K / 2 + ky;
    if (iy < 0 || iy >= H) continue;
    const float* row = x + iy * W * C;
    __m256 wk[K];
#pragma GCC unroll 7
    for (int kx = 0; kx < K; ++kx) wk[kx] = _mm256_loadu_ps(w + (ky * K + kx) * C);
#pragma GCC unroll 32
    for (int j = 0; j < J; ++j) {
      const int64_t ix = ix0 + j;
      if (kCheck && (ix < 0 || ix >= W)) continue;
      const __m256 xv = _mm256_loadu_ps(row + ix * C);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const int kx = j - t * S;
        if (kx >= 0 && kx < K) acc[t] = _mm256_fmadd_ps(xv, wk[kx], acc[t]);
      }
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    __m256 v = acc[t];
    if (act) v = swish8(_mm256_fmadd_ps(v, vs, vb));
    _mm256_storeu_ps(y + (ox0 + t) * C, v);
    psum = _mm256_add_ps(psum, v);
  }
}

// Output row oy of image n for all channels: y[oy, :, :] from x[n]. Tiles outer, channels inner: a tile's input
// (K rows x its columns x all C) streams contiguously along the channels. pool (optional): += the row's outputs per
// channel ([C]). stats_mean / stats_m2 (optional): the row's per-channel mean and sum of squared deviations of y (a
// second pass over the row while it is in cache).
template <int K, int S>
void dw_row(const float* __restrict__ x, int64_t H, int64_t W, int64_t C, const float* __restrict__ w, int64_t oy,
            int64_t Wo, float* __restrict__ y, const RowEpilogue& epi, float* __restrict__ pool,
            float* __restrict__ stats_mean, float* __restrict__ stats_m2) {
  float* sums = stats_mean ? stats_mean : pool;  // stats: the row sums go to stats_mean first
  if (stats_mean) std::fill(stats_mean, stats_mean + C, 0.f);
  auto run = [&](auto tile, int64_t ox, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c += 8) {
      const __m256 vs = epi.act ? _mm256_loadu_ps(epi.sc + c) : _mm256_setzero_ps();
      const __m256 vb = epi.act ? _mm256_loadu_ps(epi.sh + c) : _mm256_setzero_ps();
      __m256 psum = _mm256_setzero_ps();
      tile(x + c, w + c, y + c, vs, vb, psum, ox);
      if (sums) _mm256_storeu_ps(sums + c, _mm256_add_ps(_mm256_loadu_ps(sums + c), psum));
    }
  };
  // channel blocks of kChannelBlock: the block's K input rows stay in L1 from one tile to the next
  for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
  const int64_t c1 = std::min(C, c0 + kChannelBlock);
  int64_t ox = 0;
  for (; ox + kTile <= Wo; ox += kTile) {
    const bool edge = ox * S - K / 2 < 0 || (ox + kTile - 1) * S - K / 2 + K > W;
    if (edge)
      run([&](const float* xc, const float* wc, float* yc, __m256 vs, __m256 vb, __m256& ps, int64_t o) {
        dw_tile<K, S, kTile, true>(xc, H, W, C, wc, oy, o, yc, epi.act, vs, vb, ps);
      }, ox, c0, c1);
    else
      run([&](const float* xc, const float* wc, float* yc, __m256 vs, __m256 vb, __m256& ps, int64_t o) {
        dw_tile<K, S, kTile, false>(xc, H, W, C, wc, oy, o, yc, epi.act, vs, vb, ps);
      }, ox, c0, c1);
  }
  for (; ox < Wo; ++ox)
    run([&](const float* xc, const float* wc, float* yc, __m256 vs, __m256 vb, __m256& ps, int64_t o) {
      dw_tile<K, S, 1, true>(xc, H, W, C, wc, oy, o, yc, epi.act, vs, vb, ps);
    }, ox, c0, c1);
  }
  if (!stats_mean) return;
  const __m256 inv = _mm256_set1_ps(1.f / static_cast<float>(Wo));
  for (int64_t c = 0; c < C; c += 8) _mm256_storeu_ps(stats_mean + c, _mm256_mul_ps(_mm256_loadu_ps(stats_mean + c), inv));
  std::fill(stats_m2, stats_m2 + C, 0.f);
  for (int64_t o = 0; o < Wo; ++o) {
    const float* yo = y + o * C;
    for (int64_t c = 0; c < C; c += 8) {
      const __m256 dv = _mm256_sub_ps(_mm256_loadu_ps(yo + c), _mm256_loadu_ps(stats_mean + c));
      _mm256_storeu_ps(stats_m2 + c, _mm256_fmadd_ps(dv, dv, _mm256_loadu_ps(stats_m2 + c)));
    }
  }
}

using RowFn = void (*)(const float*, int64_t, int64_t, int64_t, const float*, int64_t, int64_t, float*,
                       const RowEpilogue&, float*, float*, float*);

inline RowFn dw_row_fn(int64_t k, int64_t s) {
#define DNA_NHWC_CASE(K_, S_) \
  if (k == K_ && s == S_) return &dw_row<K_, S_>;
  DNA_NHWC_CASE(3, 1) DNA_NHWC_CASE(3, 2) DNA_NHWC_CASE(5, 1) DNA_NHWC_CASE(5, 2) DNA_NHWC_CASE(7, 1)
  DNA_NHWC_CASE(7, 2)
#undef DNA_NHWC_CASE
  return nullptr;
}

// The whole conv: x [N, H, W, C], wt [K * K, C] tap-major, y [N, Ho, Wo, C]; rows of outputs in parallel. Per output
// row r = n * Ho + oy (each [N * Ho, C], optional): row_pool = the row's sums of y, stats_mean / stats_m2 as in
// dw_row. Returns false (nothing written) for an unsupported k / stride.
inline bool dw_forward(const float* x, int64_t N, int64_t H, int64_t W, int64_t C, const float* wt, int64_t k,
                       int64_t s, int64_t Ho, int64_t Wo, float* y, const RowEpilogue& epi, float* row_pool,
                       float* stats_mean, float* stats_m2) {
  const RowFn row = dw_row_fn(k, s);
  if (row == nullptr) return false;
  at::parallel_for(0, N * Ho, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t n = r / Ho, oy = r % Ho;
      row(x + n * H * W * C, H, W, C, wt, oy, Wo, y + r * Wo * C, epi, row_pool ? row_pool + r * C : nullptr,
          stats_mean ? stats_mean + r * C : nullptr, stats_m2 ? stats_m2 + r * C : nullptr);
    }
  });
  return true;
}

// In place over `n` contiguous rows of C channels: v = swish(v * scale + shift) (null scale: 1, null shift: 0); pool
// (optional, [C], L1 resident): += the results per channel. C % 8 == 0.
inline void swish_rows(float* __restrict__ v, int64_t n, int64_t C, const float* __restrict__ sc,
                       const float* __restrict__ sh, float* __restrict__ pool) {
  for (int64_t r = 0; r < n; ++r, v += C) {
    for (int64_t c = 0; c < C; c += 8) {
      __m256 z = _mm256_loadu_ps(v + c);
      if (sc)
        z = _mm256_fmadd_ps(z, _mm256_loadu_ps(sc + c), _mm256_loadu_ps(sh + c));
      else if (sh)
        z = _mm256_add_ps(z, _mm256_loadu_ps(sh + c));
      const __m256 out = swish8(z);
      _mm256_storeu_ps(v + c, out);
      if (pool) _mm256_storeu_ps(pool + c, _mm256_add_ps(_mm256_loadu_ps(pool + c), out));
    }
  }
}

// swish(x @ w + bias) for x [R, K] (row stride ldx), w [K, N] row-major, bias [N]; writes y [R, N] (row stride ldy).
// A register-blocked GEMM for the small K of an MBConv expansion (the block width, 16 .. 320): 4 rows x 24 columns
// of accumulators (12 ymm) per tile, the K loop broadcasting x and loading 3 vectors of w per step, then bias and
// swish on the accumulators before the single store. Column blocks outer (a 24-column panel of w stays in L1),
// rows inner. N % 8 == 0; columns past the last multiple of 24 take 8-wide tiles, rows past the last multiple of 4
// one-row tiles.
template <int RB, int CB>  // rows, ymm columns per tile
inline void gemm_swish_tile(const float* __restrict__ x, int64_t ldx, const float* __restrict__ w, int64_t N,
                            int64_t K, const float* __restrict__ bias, float* __restrict__ y, int64_t ldy) {
  __m256 acc[RB][CB];
#pragma GCC unroll 4
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 3
    for (int c = 0; c < CB; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m256 b[CB];
#pragma GCC unroll 3
    for (int c = 0; c < CB; ++c) b[c] = _mm256_loadu_ps(w + k * N + 8 * c);
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) {
      const __m256 a = _mm256_broadcast_ss(x + r * ldx + k);
#pragma GCC unroll 3
      for (int c = 0; c < CB; ++c) acc[r][c] = _mm256_fmadd_ps(a, b[c], acc[r][c]);
    }
  }
#pragma GCC unroll 3
  for (int c = 0; c < CB; ++c) {
    const __m256 vb = _mm256_loadu_ps(bias + 8 * c);
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) _mm256_storeu_ps(y + r * ldy + 8 * c, swish8(_mm256_add_ps(acc[r][c], vb)));
  }
}

// Rows [r0, r1) of the whole product (all columns).
inline void gemm_swish_rows(const float* x, int64_t ldx, const float* w, int64_t N, int64_t K, const float* bias,
                            float* y, int64_t ldy, int64_t r0, int64_t r1) {
  int64_t c = 0;
  for (; c + 24 <= N; c += 24) {
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) gemm_swish_tile<4, 3>(x + r * ldx, ldx, w + c, N, K, bias + c, y + r * ldy + c, ldy);
    for (; r < r1; ++r) gemm_swish_tile<1, 3>(x + r * ldx, ldx, w + c, N, K, bias + c, y + r * ldy + c, ldy);
  }
  for (; c < N; c += 8) {
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) gemm_swish_tile<4, 1>(x + r * ldx, ldx, w + c, N, K, bias + c, y + r * ldy + c, ldy);
    for (; r < r1; ++r) gemm_swish_tile<1, 1>(x + r * ldx, ldx, w + c, N, K, bias + c, y + r * ldy + c, ldy);
  }
}

// Sum over `n` rows of C channels of (y + offset + shift)^2 (y, offset [n, C] contiguous, shift [C]); fp32 lanes per
// row, the rows added in double. C % 8 == 0.
inline double sq_err_rows(const float* __restrict__ y, const float* __restrict__ off, const float* __restrict__ sh,
                          int64_t n, int64_t C) {
  double total = 0.0;
  for (int64_t r = 0; r < n; ++r, y += C, off += C) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t c = 0; c < C; c += 8) {
      const __m256 e = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(y + c), _mm256_loadu_ps(off + c)),
                                     _mm256_loadu_ps(sh + c));
      acc = _mm256_fmadd_ps(e, e, acc);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, acc);
    double row = 0.0;
    for (float l : lanes) row += l;
    total += row;
  }
  return total;
}

}  // namespace dna_fast::nhwc

#endif  // __AVX2__ && __FMA__
