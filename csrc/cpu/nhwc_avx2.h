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

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "nhwc_avx512.h"

namespace dna_fast::nhwc {

#define DNA_NHWC_INLINE inline __attribute__((always_inline))

// Calls of the kernels below (dw_forward, expand_dw_forward, swish_rows, gemm_rows) since the library was loaded:
// dna_fast._C.cpu_vector_calls() reads it, so a test can tell that the AVX2 path, not the ATen fallback, ran.
inline std::atomic<int64_t> vector_calls{0};
DNA_NHWC_INLINE void count_call() { vector_calls.fetch_add(1, std::memory_order_relaxed); }

// swish(z) = z / (1 + 2^(-z log2 e)) on 8 lanes, with few multiplies (the FMA pipes bound it): 2^t = 2^n 2^f with
// n = round(t), f = t - n in [-0.5, 0.5] exact, 2^f by a degree-5 minimax polynomial (2.3e-7 relative in fp32), 2^n
// through the exponent bits; the reciprocal by rcp + one Newton step (~1e-7 relative). t is clamped to [-125, 115]
// so every intermediate stays a normal float: below z = -79 the result is z * 2^-115 (|.| < 1e-32) instead of
// z * exp(z). NaN stays NaN through the final product.
DNA_NHWC_INLINE __m256 swish8(__m256 z) {
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

// What a row pass does with the conv outputs of 8 channels.
struct RowEpilogue {
  bool act;         // y = swish(z * scale + shift) (else y = z)
  const float* sc;  // [C] (act only)
  const float* sh;  // [C] (act only)
};

// T consecutive outputs (columns ox0 .. ox0 + T - 1 of one output row) for the 8 channels at offset c: rows[ky] points
// at the input row the tap row ky reads ([W, C] fp32, channel 0) or is null (zero padding); w at tap 0, channel c of
// the [K * K, C] tap-major weights; y at the output row, channel c. The epilogue (act with vs / vb) is applied and the
// stored outputs are added to psum. kCheck: some input columns of the tile fall in the zero padding (skipped).
// Everything indexes with constants after unrolling, so the accumulators live in registers.
template <int K, int S, int T, bool kCheck>
inline void dw_tile(const float* const* rows, int64_t c, int64_t W, int64_t C, const float* __restrict__ w,
                    int64_t ox0, float* __restrict__ y, bool act, __m256 vs, __m256 vb, __m256& psum) {
  __m256 acc[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  constexpr int J = (T - 1) * S + K;  // input columns the tile reads
  const int64_t ix0 = ox0 * S - K / 2;
#pragma GCC unroll 7
  for (int ky = 0; ky < K; ++ky) {
    if (rows[ky] == nullptr) continue;
    const float* row = rows[ky] + c;
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

// One output row y [Wo, C] from the K input rows it reads (rows[ky] as in dw_tile), all channels; tiles outer,
// channels inner (a tile's input streams contiguously along the channels). pool (optional): += the row's outputs
// per channel ([C]). stats_mean / stats_m2 (optional): the row's per-channel mean and sum of squared deviations of y
// (a second pass over the row while it is in cache).
template <int K, int S>
void dw_row(const float* const* rows, int64_t W, int64_t C, const float* __restrict__ w, int64_t Wo,
            float* __restrict__ y, const RowEpilogue& epi, float* __restrict__ pool, float* __restrict__ stats_mean,
            float* __restrict__ stats_m2) {
  float* sums = stats_mean ? stats_mean : pool;  // stats: the row sums go to stats_mean first
  if (stats_mean) std::fill(stats_mean, stats_mean + C, 0.f);
  auto run = [&](auto tile, int64_t ox) {
    for (int64_t c = 0; c < C; c += 8) {
      const __m256 vs = epi.act ? _mm256_loadu_ps(epi.sc + c) : _mm256_setzero_ps();
      const __m256 vb = epi.act ? _mm256_loadu_ps(epi.sh + c) : _mm256_setzero_ps();
      __m256 psum = _mm256_setzero_ps();
      tile(c, vs, vb, psum, ox);
      if (sums) _mm256_storeu_ps(sums + c, _mm256_add_ps(_mm256_loadu_ps(sums + c), psum));
    }
  };
  int64_t ox = 0;
  for (; ox + kTile <= Wo; ox += kTile) {
    if (ox * S - K / 2 < 0 || (ox + kTile - 1) * S - K / 2 + K > W)
      run([&](int64_t c, __m256 vs, __m256 vb, __m256& ps, int64_t o) {
        dw_tile<K, S, kTile, true>(rows, c, W, C, w + c, o, y + c, epi.act, vs, vb, ps);
      }, ox);
    else
      run([&](int64_t c, __m256 vs, __m256 vb, __m256& ps, int64_t o) {
        dw_tile<K, S, kTile, false>(rows, c, W, C, w + c, o, y + c, epi.act, vs, vb, ps);
      }, ox);
  }
  for (; ox < Wo; ++ox)
    run([&](int64_t c, __m256 vs, __m256 vb, __m256& ps, int64_t o) {
      dw_tile<K, S, 1, true>(rows, c, W, C, w + c, o, y + c, epi.act, vs, vb, ps);
    }, ox);
  if (!stats_mean) return;
  const __m256 inv = _mm256_set1_ps(1.f / static_cast<float>(Wo));
  for (int64_t c = 0; c < C; c += 8)
    _mm256_storeu_ps(stats_mean + c, _mm256_mul_ps(_mm256_loadu_ps(stats_mean + c), inv));
  std::fill(stats_m2, stats_m2 + C, 0.f);
  for (int64_t o = 0; o < Wo; ++o) {
    const float* yo = y + o * C;
    for (int64_t c = 0; c < C; c += 8) {
      const __m256 dv = _mm256_sub_ps(_mm256_loadu_ps(yo + c), _mm256_loadu_ps(stats_mean + c));
      _mm256_storeu_ps(stats_m2 + c, _mm256_fmadd_ps(dv, dv, _mm256_loadu_ps(stats_m2 + c)));
    }
  }
}

using RowFn = void (*)(const float* const*, int64_t, int64_t, const float*, int64_t, float*, const RowEpilogue&,
                       float*, float*, float*);

inline RowFn dw_row_fn(int64_t k, int64_t s) {
#define DNA_NHWC_CASE(K_, S_) \
  if (k == K_ && s == S_) return &dw_row<K_, S_>;
  DNA_NHWC_CASE(3, 1) DNA_NHWC_CASE(3, 2) DNA_NHWC_CASE(5, 1) DNA_NHWC_CASE(5, 2) DNA_NHWC_CASE(7, 1)
  DNA_NHWC_CASE(7, 2)
#undef DNA_NHWC_CASE
  return nullptr;
}

// A depthwise weight [C, 1, k, k] as the kernels read it: fp32, tap-major [k * k, C] (one tap's C weights contiguous).
inline at::Tensor tap_major(const at::Tensor& w) {
  return w.to(at::kFloat).reshape({w.size(0), w.size(2) * w.size(3)}).t().contiguous();
}

// Per-output-row outputs of a conv pass (each [N * Ho, C] at row r = n * Ho + oy, all optional): row_pool = the
// row's sums of y, stats_mean / stats_m2 as in dw_row.
struct RowOutputs {
  float* pool;
  float* mean;
  float* m2;
  float* at(float* p, int64_t r, int64_t C) const { return p ? p + r * C : nullptr; }
};

// The whole conv: x [N, H, W, C], wt [K * K, C] tap-major, y [N, Ho, Wo, C]; rows of outputs in parallel. Returns
// false (nothing written) for an unsupported k / stride.
inline bool dw_forward(const float* x, int64_t N, int64_t H, int64_t W, int64_t C, const float* wt, int64_t k,
                       int64_t s, int64_t Ho, int64_t Wo, float* y, const RowEpilogue& epi, const RowOutputs& out) {
  const RowFn row = dw_row_fn(k, s);
  if (row == nullptr) return false;
  count_call();
  at::parallel_for(0, N * Ho, 1, [&](int64_t b, int64_t e) {
    const float* rows[7];
    for (int64_t r = b; r < e; ++r) {
      const int64_t n = r / Ho, oy = r % Ho;
      for (int64_t ky = 0; ky < k; ++ky) {
        const int64_t iy = oy * s - k / 2 + ky;
        rows[ky] = iy < 0 || iy >= H ? nullptr : x + (n * H + iy) * W * C;
      }
      row(rows, W, C, wt, Wo, y + r * Wo * C, epi, out.at(out.pool, r, C), out.at(out.mean, r, C),
          out.at(out.m2, r, C));
    }
  });
  return true;
}

// In place over `n` contiguous rows of C channels: v = swish(v * scale + shift) (null scale: 1, null shift: 0); pool
// (optional, [C], L1 resident): += the results per channel. C % 8 == 0.
inline void swish_rows(float* __restrict__ v, int64_t n, int64_t C, const float* __restrict__ sc,
                       const float* __restrict__ sh, float* __restrict__ pool) {
  count_call();
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

// Register-blocked fp32 GEMM tiles for the small matmuls of an MBConv (K = a block width or a hidden width, N a
// multiple of 8): RB rows x CB ymm columns of accumulators, the K loop broadcasting x and loading CB vectors of w,
// then `epi(r, c, acc)` on every accumulator (column offset 8 c) instead of a store of the product.
template <int RB, int CB, typename Epi>
DNA_NHWC_INLINE void gemm_tile(const float* __restrict__ x, int64_t ldx, const float* __restrict__ w, int64_t ldw, int64_t K,
                      Epi&& epi) {
  __m256 acc[RB][CB];
#pragma GCC unroll 4
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 3
    for (int c = 0; c < CB; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m256 b[CB];
#pragma GCC unroll 3
    for (int c = 0; c < CB; ++c) b[c] = _mm256_loadu_ps(w + k * ldw + 8 * c);
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) {
      const __m256 a = _mm256_broadcast_ss(x + r * ldx + k);
#pragma GCC unroll 3
      for (int c = 0; c < CB; ++c) acc[r][c] = _mm256_fmadd_ps(a, b[c], acc[r][c]);
    }
  }
#pragma GCC unroll 3
  for (int c = 0; c < CB; ++c)
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) epi(r, c, acc[r][c]);
}

// Epilogue of gemm_swish_rows: y = swish(acc + bias) (a struct, not a lambda: GCC then keeps the tile's
// accumulators in registers).
struct SwishStore {
  float* y;
  int64_t ldy;
  const float* bias;
  DNA_NHWC_INLINE void operator()(int i, int j, __m256 acc) const {
    _mm256_storeu_ps(y + i * ldy + 8 * j, swish8(_mm256_add_ps(acc, _mm256_loadu_ps(bias + 8 * j))));
  }
};

// Rows [r0, r1) x all N columns of x @ w in tiles: blocks of kRowBlock rows outer (their x stays in L2), 24-column
// panels of w, 4-row tiles (1-row tiles for the rest), 8-column tiles past the last multiple of 24. tile_epi(r, c)
// returns the epilogue of the tile at row r, column c.
constexpr int64_t kRowBlock = 64;

template <typename MakeEpi>
inline void gemm_rows(const float* x, int64_t ldx, const float* w, int64_t N, int64_t K, int64_t r0, int64_t r1,
                      MakeEpi&& tile_epi) {
  count_call();
  for (int64_t rb = r0; rb < r1; rb += kRowBlock) {
    const int64_t re = std::min(r1, rb + kRowBlock);
    int64_t c = 0;
    for (; c + 24 <= N; c += 24) {
      int64_t r = rb;
      for (; r + 4 <= re; r += 4) gemm_tile<4, 3>(x + r * ldx, ldx, w + c, N, K, tile_epi(r, c));
      for (; r < re; ++r) gemm_tile<1, 3>(x + r * ldx, ldx, w + c, N, K, tile_epi(r, c));
    }
    for (; c < N; c += 8) {
      int64_t r = rb;
      for (; r + 4 <= re; r += 4) gemm_tile<4, 1>(x + r * ldx, ldx, w + c, N, K, tile_epi(r, c));
      for (; r < re; ++r) gemm_tile<1, 1>(x + r * ldx, ldx, w + c, N, K, tile_epi(r, c));
    }
  }
}

// y[r, :] = swish(x[r, :] @ w + bias) for rows [r0, r1) (y row stride N).
// On AVX-512 CPUs the 16-lane version of nhwc_avx512.h runs instead (here and in the two below).
inline void gemm_swish_rows(const float* x, int64_t ldx, const float* w, int64_t N, int64_t K, const float* bias,
                            float* y, int64_t r0, int64_t r1) {
#ifdef DNA_FAST_AVX512_GEMM
  if (avx512::enabled()) return avx512::gemm_swish_rows(x, ldx, w, N, K, bias, y, r0, r1);
#endif
  gemm_rows(x, ldx, w, N, K, r0, r1, [&](int64_t r, int64_t c) {
    return SwishStore{y + r * N + c, N, bias + c};
  });
}

// Epilogue of gemm_err_rows: with e = acc + offset + shift, sq += e^2 and ab += |e| in fp32 lanes (the absolute
// value clears the sign bit: one and-not next to the FMA).
struct ErrAcc {
  const float* off;
  int64_t ldo;
  const float* shift;
  __m256* sq;
  __m256* ab;
  DNA_NHWC_INLINE void operator()(int i, int j, __m256 acc) const {
    const __m256 e = _mm256_add_ps(_mm256_add_ps(acc, _mm256_loadu_ps(off + i * ldo + 8 * j)),
                                   _mm256_loadu_ps(shift + 8 * j));
    *sq = _mm256_fmadd_ps(e, e, *sq);
    *ab = _mm256_add_ps(*ab, _mm256_andnot_ps(_mm256_set1_ps(-0.f), e));
  }
};

// Sums of squared and of absolute errors.
struct ErrSums {
  double sq = 0.0;
  double ab = 0.0;
};

// Over rows [r0, r1): the sums of ||x[r, :] @ w + offset[r, :] + shift||^2 and of |x[r, :] @ w + offset[r, :] +
// shift|_1 (offset row stride N); the product is never stored. fp32 lanes per block of kRowBlock rows, the blocks
// added in double.
inline ErrSums gemm_err_rows(const float* x, int64_t ldx, const float* w, int64_t N, int64_t K, const float* off,
                             const float* shift, int64_t r0, int64_t r1) {
  ErrSums total;
#ifdef DNA_FAST_AVX512_GEMM
  if (avx512::enabled()) {
    avx512::gemm_err_rows(x, ldx, w, N, K, off, shift, r0, r1, &total.sq, &total.ab);
    return total;
  }
#endif
  for (int64_t rb = r0; rb < r1; rb += kRowBlock) {
    __m256 sq = _mm256_setzero_ps(), ab = _mm256_setzero_ps();
    gemm_rows(x, ldx, w, N, K, rb, std::min(r1, rb + kRowBlock), [&](int64_t r, int64_t c) {
      return ErrAcc{off + r * N + c, N, shift + c, &sq, &ab};
    });
    alignas(32) float lanes[8], alanes[8];
    _mm256_store_ps(lanes, sq);
    _mm256_store_ps(alanes, ab);
    for (int l = 0; l < 8; ++l) {
      total.sq += lanes[l];
      total.ab += alanes[l];
    }
  }
  return total;
}

// Epilogue of gemm_col_dev_rows: dev[col] += (acc - mean[col])^2 in fp32 lanes (dev: one row block's accumulators).
struct ColDevAcc {
  const float* mean;
  float* dev;
  DNA_NHWC_INLINE void operator()(int, int j, __m256 acc) const {
    const __m256 e = _mm256_sub_ps(acc, _mm256_loadu_ps(mean + 8 * j));
    _mm256_storeu_ps(dev + 8 * j, _mm256_fmadd_ps(e, e, _mm256_loadu_ps(dev + 8 * j)));
  }
};

// out[col] += sum over rows [r0, r1) of (x[r, :] @ w - mean)[col]^2 in double (per block of kRowBlock rows in fp32):
// the column statistics of a product that is never stored. dev: scratch of N floats.
inline void gemm_col_dev_rows(const float* x, int64_t ldx, const float* w, int64_t N, int64_t K, const float* mean,
                              int64_t r0, int64_t r1, float* dev, double* out) {
#ifdef DNA_FAST_AVX512_GEMM
  if (avx512::enabled()) return avx512::gemm_col_dev_rows(x, ldx, w, N, K, mean, r0, r1, dev, out);
#endif
  for (int64_t rb = r0; rb < r1; rb += kRowBlock) {
    std::fill(dev, dev + N, 0.f);
    gemm_rows(x, ldx, w, N, K, rb, std::min(r1, rb + kRowBlock), [&](int64_t, int64_t c) {
      return ColDevAcc{mean + c, dev + c};
    });
    for (int64_t j = 0; j < N; ++j) out[j] += dev[j];
  }
}

// The MBConv expansion fused into the depthwise conv: per image, the input rows the conv reads are expanded
// (swish(x @ w1 + b1), gemm_swish_rows) into a ring of K rows right before their first use, so the expanded
// activation never leaves L2 (a ring of 7 rows of 28 x 360 channels is 282 KB). x [N, H, W, Cin], w1 [Cin, C],
// b1 [C], wt [K * K, C], y [N, Ho, Wo, C]; images in parallel, each thread with its own ring. Returns false for an
// unsupported k / stride.
inline bool expand_dw_forward(const float* x, int64_t N, int64_t H, int64_t W, int64_t Cin, const float* w1,
                              const float* b1, int64_t C, const float* wt, int64_t k, int64_t s, int64_t Ho,
                              int64_t Wo, float* y, const RowEpilogue& epi, const RowOutputs& out) {
  const RowFn row = dw_row_fn(k, s);
  if (row == nullptr) return false;
  count_call();
  at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
    std::vector<float> ring(static_cast<size_t>(k * W * C));
    int64_t tag[7];
    const float* rows[7];
    for (int64_t n = b; n < e; ++n) {
      std::fill(tag, tag + 7, int64_t{-1});
      for (int64_t oy = 0; oy < Ho; ++oy) {
        for (int64_t ky = 0; ky < k; ++ky) {
          const int64_t iy = oy * s - k / 2 + ky;
          if (iy < 0 || iy >= H) {
            rows[ky] = nullptr;
            continue;
          }
          const int64_t slot = iy % k;
          float* dst = ring.data() + slot * W * C;
          if (tag[slot] != iy) {
            gemm_swish_rows(x + (n * H + iy) * W * Cin, Cin, w1, C, Cin, b1, dst, 0, W);
            tag[slot] = iy;
          }
          rows[ky] = dst;
        }
        const int64_t r = n * Ho + oy;
        row(rows, W, C, wt, Wo, y + r * Wo * C, epi, out.at(out.pool, r, C), out.at(out.mean, r, C),
            out.at(out.m2, r, C));
      }
    }
  });
  return true;
}

}  // namespace dna_fast::nhwc

#endif  // __AVX2__ && __FMA__
