// AVX-512 versions of the rating engine's small fp32 GEMMs (nhwc_avx2.h's gemm_swish_rows, gemm_err_rows,
// gemm_col_dev_rows): the same math on 16 lanes, chosen at run time on CPUs with AVX-512 F/BW/DQ/VL (the extension
// itself stays compiled for AVX2, so the same build runs on AVX2-only machines). Self-contained (no ATen) so the
// kernels can be compiled and checked alone.
//
// Why: the last layer's projection (+ loss) and the fused expansion are ~80 % of the rating's FLOPs on block 1 of
// dna; with 32 zmm registers a tile holds 8 rows x 48 columns of accumulators (24 zmm) and issues 24 FMAs of 16
// lanes per 3 weight loads and 8 broadcasts, against 12 FMAs of 8 lanes per 3 loads and 4 broadcasts on AVX2.
// Columns come in panels of 48, then 16, then a masked panel of 8 (every width here is a multiple of 8).
// Tuning notes: 4-row tiles were ~10 % slower than 8-row ones at K = 40..240 (fewer FMAs per broadcast); the
// remainder rows use 4- and 1-row tiles. Tried and not kept: the depthwise row kernel (dw_tile / dw_row) on 16
// channels + a masked 8: 0.98x / 1.13x / 1.03x on dwconv_bn_act channels_last 16x240x28x28 k3 / k5 / k7 (CPU time,
// 1 thread, 2026-12-01): the conv is bound by its loads, not its FMA width, so it stays AVX2.
//
// DNA_FAST_CPU_ISA=avx2 in the environment (read at each call) turns these kernels off, for A/B runs and tests.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DNA_FAST_AVX512_GEMM 1

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

namespace dna_fast::avx512 {

// Calls of the kernels below since the library was loaded (dna_fast._C.cpu_vector_calls(512)).
inline std::atomic<int64_t> calls{0};

// Whether this CPU runs the AVX-512 kernels (and DNA_FAST_CPU_ISA does not ask for AVX2).
inline bool enabled() {
  static const bool cpu = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  }();
  if (!cpu) return false;
  const char* isa = std::getenv("DNA_FAST_CPU_ISA");
  return isa == nullptr || std::strcmp(isa, "avx2") != 0;
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")

#define DNA_AVX512_INLINE inline __attribute__((always_inline))

// swish on 16 lanes: nhwc_avx2.h's swish8 (same polynomial, clamp and Newton step; rcp14 as the seed).
DNA_AVX512_INLINE __m512 swish16(__m512 z) {
  // NOTE the zero-masking forms with a full mask: the plain _mm512_max_ps & co. pass _mm512_undefined_ps() as their
  // merge source, which GCC 12's -Wmaybe-uninitialized reports at every inlined call.
  constexpr __mmask16 all = 0xFFFF;
  __m512 t = _mm512_mul_ps(z, _mm512_set1_ps(-1.44269504088896341f));
  t = _mm512_maskz_min_ps(all, _mm512_maskz_max_ps(all, t, _mm512_set1_ps(-125.f)), _mm512_set1_ps(115.f));
  const __m512 fn = _mm512_maskz_roundscale_ps(all, t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, fn);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.32765e-3f), f, _mm512_set1_ps(9.67554e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550713e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402212e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314694e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0000001f));
  const __m512i e2 = _mm512_maskz_slli_epi32(
      all, _mm512_add_epi32(_mm512_maskz_cvtps_epi32(all, fn), _mm512_set1_epi32(127)), 23);
  const __m512 d = _mm512_fmadd_ps(p, _mm512_castsi512_ps(e2), _mm512_set1_ps(1.f));
  __m512 rc = _mm512_maskz_rcp14_ps(all, d);
  rc = _mm512_mul_ps(rc, _mm512_fnmadd_ps(d, rc, _mm512_set1_ps(2.f)));
  return _mm512_mul_ps(z, rc);
}

// RB rows x CB zmm columns of x @ w (w row stride ldw), then epi(r, c, acc, mask) per accumulator; `mask` selects
// the valid lanes of the last column (all 16 but in a masked 8-column panel, where CB == 1).
template <int RB, int CB, typename Epi>
DNA_AVX512_INLINE void tile(const float* __restrict__ x, int64_t ldx, const float* __restrict__ w, int64_t ldw,
                            int64_t K, __mmask16 mask, Epi&& epi) {
  __m512 acc[RB][CB];
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 3
    for (int c = 0; c < CB; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 b[CB];
#pragma GCC unroll 3
    for (int c = 0; c < CB; ++c)
      b[c] = c == CB - 1 ? _mm512_maskz_loadu_ps(mask, w + k * ldw + 16 * c) : _mm512_loadu_ps(w + k * ldw + 16 * c);
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      const __m512 a = _mm512_set1_ps(x[r * ldx + k]);
#pragma GCC unroll 3
      for (int c = 0; c < CB; ++c) acc[r][c] = _mm512_fmadd_ps(a, b[c], acc[r][c]);
    }
  }
#pragma GCC unroll 3
  for (int c = 0; c < CB; ++c)
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) epi(r, c, acc[r][c], c == CB - 1 ? mask : __mmask16(0xFFFF));
}

// Rows [r0, r1) x all N columns (N % 8 == 0) of x @ w: row blocks of 64 outer (their x stays in L2), then column
// panels of 48 / 16 / masked 8, 8-row tiles (4- and 1-row tiles for the rest). make_epi(r, c) returns the epilogue
// of the tile at row r, column c.
template <typename MakeEpi>
inline void gemm_rows(const float* x, int64_t ldx, const float* w, int64_t N, int64_t K, int64_t r0, int64_t r1,
                      MakeEpi&& make_epi) {
  calls.fetch_add(1, std::memory_order_relaxed);
  constexpr int64_t kRowBlock = 64;
  for (int64_t rb = r0; rb < r1; rb += kRowBlock) {
    const int64_t re = std::min(r1, rb + kRowBlock);
    auto panel = [&](auto cb, int64_t c, __mmask16 mask) {
      constexpr int CB = decltype(cb)::value;
      int64_t r = rb;
      for (; r + 8 <= re; r += 8) tile<8, CB>(x + r * ldx, ldx, w + c, N, K, mask, make_epi(r, c));
      for (; r + 4 <= re; r += 4) tile<4, CB>(x + r * ldx, ldx, w + c, N, K, mask, make_epi(r, c));
      for (; r < re; ++r) tile<1, CB>(x + r * ldx, ldx, w + c, N, K, mask, make_epi(r, c));
    };
    int64_t c = 0;
    for (; c + 48 <= N; c += 48) panel(std::integral_constant<int, 3>{}, c, 0xFFFF);
    for (; c + 16 <= N; c += 16) panel(std::integral_constant<int, 1>{}, c, 0xFFFF);
    if (c < N) panel(std::integral_constant<int, 1>{}, c, 0x00FF);
  }
}

// y = swish(acc + bias) (masked store on the last panel).
struct SwishStore {
  float* y;
  int64_t ldy;
  const float* bias;
  DNA_AVX512_INLINE void operator()(int i, int j, __m512 acc, __mmask16 m) const {
    const __m512 b = _mm512_maskz_loadu_ps(m, bias + 16 * j);
    _mm512_mask_storeu_ps(y + i * ldy + 16 * j, m, swish16(_mm512_add_ps(acc, b)));
  }
};

// y[r, :] = swish(x[r, :] @ w + bias) for rows [r0, r1) (y row stride N).
inline void gemm_swish_rows(const float* x, int64_t ldx, const float* w, int64_t N, int64_t K, const float* bias,
                            float* y, int64_t r0, int64_t r1) {
  gemm_rows(x, ldx, w, N, K, r0, r1, [&](int64_t r, int64_t c) { return SwishStore{y + r * N + c, N, bias + c}; });
}

// sq += e^2, ab += |e| for e = acc + offset + shift (masked-out lanes load zeros: e = 0 there).
struct ErrAcc {
  const float* off;
  int64_t ldo;
  const float* shift;
  __m512* sq;
  __m512* ab;
  DNA_AVX512_INLINE void operator()(int i, int j, __m512 acc, __mmask16 m) const {
    const __m512 e = _mm512_add_ps(_mm512_add_ps(acc, _mm512_maskz_loadu_ps(m, off + i * ldo + 16 * j)),
                                   _mm512_maskz_loadu_ps(m, shift + 16 * j));
    *sq = _mm512_fmadd_ps(e, e, *sq);
    // |e| by clearing the sign bit (_mm512_abs_ps's and-with-undefined form also trips -Wmaybe-uninitialized)
    const __m512i mag = _mm512_and_epi32(_mm512_castps_si512(e), _mm512_set1_epi32(0x7fffffff));
    *ab = _mm512_add_ps(*ab, _mm512_castsi512_ps(mag));
  }
};

// Over rows [r0, r1): the sums of ||x[r, :] @ w + offset[r, :] + shift||^2 and of its L1 norm (offset row stride
// N), the product never stored; fp32 lanes per block of 64 rows, the blocks added in double.
inline void gemm_err_rows(const float* x, int64_t ldx, const float* w, int64_t N, int64_t K, const float* off,
                          const float* shift, int64_t r0, int64_t r1, double* sq_out, double* ab_out) {
  double sq_total = 0.0, ab_total = 0.0;
  for (int64_t rb = r0; rb < r1; rb += 64) {
    __m512 sq = _mm512_setzero_ps(), ab = _mm512_setzero_ps();
    gemm_rows(x, ldx, w, N, K, rb, std::min(r1, rb + 64), [&](int64_t r, int64_t c) {
      return ErrAcc{off + r * N + c, N, shift + c, &sq, &ab};
    });
    alignas(64) float lanes[16], alanes[16];
    _mm512_store_ps(lanes, sq);
    _mm512_store_ps(alanes, ab);
    for (int l = 0; l < 16; ++l) {
      sq_total += lanes[l];
      ab_total += alanes[l];
    }
  }
  *sq_out = sq_total;
  *ab_out = ab_total;
}

// dev[col] += (acc - mean[col])^2 (masked on the last panel).
struct ColDevAcc {
  const float* mean;
  float* dev;
  DNA_AVX512_INLINE void operator()(int, int j, __m512 acc, __mmask16 m) const {
    const __m512 e = _mm512_sub_ps(acc, _mm512_maskz_loadu_ps(m, mean + 16 * j));
    _mm512_mask_storeu_ps(dev + 16 * j, m, _mm512_fmadd_ps(e, e, _mm512_maskz_loadu_ps(m, dev + 16 * j)));
  }
};

// out[col] += sum over rows [r0, r1) of (x[r, :] @ w - mean)[col]^2 in double (per block of 64 rows in fp32).
// dev: scratch of N floats.
inline void gemm_col_dev_rows(const float* x, int64_t ldx, const float* w, int64_t N, int64_t K, const float* mean,
                              int64_t r0, int64_t r1, float* dev, double* out) {
  for (int64_t rb = r0; rb < r1; rb += 64) {
    std::fill(dev, dev + N, 0.f);
    gemm_rows(x, ldx, w, N, K, rb, std::min(r1, rb + 64), [&](int64_t, int64_t c) {
      return ColDevAcc{mean + c, dev + c};
    });
    for (int64_t j = 0; j < N; ++j) out[j] += dev[j];
  }
}

#undef DNA_AVX512_INLINE
#pragma GCC pop_options

}  // namespace dna_fast::avx512

#endif
