// The rating engine's CUDA kernels (csrc/cuda/rating_kernels.cuh) in the CUDA emulator, against plain fp64 loops:
// the gated GEMM with its squared-error and column-deviation epilogues, the fused expansion + depthwise conv (BN +
// swish + per-row sums, or the raw conv + per-row statistics) and the in-place swish with sums. fp32 / fp16 / bf16
// inputs, odd shapes (channels off the 32-wide chunks, images smaller than a tile), k 3 / 5 / 7, stride 1 / 2, and
// grids capped below the number of tiles (the kernels' grid-stride loop over tiles). Launched through the same launch
// functions and launch-configuration arithmetic as the ATen launchers (rating_kernels.cu).
#include "cudasim/cudasim.h"
// the emulator first: it defines CUDA's keywords for the kernel header
#include "rating_kernels.cuh"

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cudasim/check.h"
#include "dw_reference.h"

namespace rk = dna_fast::rating;

namespace {

std::mt19937 rng(1234);

std::vector<float> randn(size_t n, float scale = 1.f, float offset = 0.f) {
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (float& x : v) x = offset + scale * d(rng);
  return v;
}

template <typename T>
std::vector<T> cast(const std::vector<float>& v) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = static_cast<T>(v[i]);
  return out;
}

template <typename T>
std::vector<double> as_double(const std::vector<T>& v) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = static_cast<double>(static_cast<float>(v[i]));
  return out;
}

double swish(double z) { return z / (1.0 + std::exp(-z)); }

bool close(double got, double want, double rtol, double atol) {
  return std::isfinite(got) && std::fabs(got - want) <= atol + rtol * std::fabs(want);
}

template <typename T>
const char* dtype_name() {
  if constexpr (std::is_same_v<T, float>) return "fp32";
  if constexpr (std::is_same_v<T, __half>) return "fp16";
  return "bf16";
}

// Tolerance of a value computed in fp32 from inputs in T, stored in T (the stored rounding dominates for halves).
template <typename T>
double store_rtol() {
  if constexpr (std::is_same_v<T, float>) return 1e-5;
  if constexpr (std::is_same_v<T, __half>) return 2e-3;
  return 1.6e-2;
}

// ---- gated GEMM ---------------------------------------------------------------------------------------------------

template <typename T>
void gemm_case(cudasim_test::Checker& ck, int64_t R, int64_t K, int64_t N, int64_t groups, int64_t ldx_pad,
               unsigned max_grid_y) {
  const int64_t ldx = K + ldx_pad;  // a column slice of a wider matrix
  const std::vector<T> x = cast<T>(randn(R * ldx));
  const std::vector<float> w = randn(K * N, 0.2f), offset = randn(R * N), shift = randn(N, 0.5f);
  const int64_t G = groups > 0 ? groups : 1;
  std::vector<float> gate = randn(G * K, 0.3f, 0.6f);
  const std::vector<double> xd = as_double(x);
  // reference: the product in fp64 from the inputs as the kernel reads them
  std::vector<double> prod(R * N, 0.0);
  const int64_t per = R / G;
  for (int64_t r = 0; r < R; ++r)
    for (int64_t k = 0; k < K; ++k) {
      const double a = xd[r * ldx + k] * (groups > 0 ? gate[(r / per) * K + k] : 1.0);
      for (int64_t n = 0; n < N; ++n) prod[r * N + n] += a * w[k * N + n];
    }
  const rk::GemmShape s = rk::gemm_shape(R, K, N, ldx, groups);
  rk::GemmLaunch l = rk::gemm_launch(s);
  if (max_grid_y > 0 && l.grid.y > max_grid_y) l.grid.y = max_grid_y;
  const std::string name = std::string(dtype_name<T>()) + " R=" + std::to_string(R) + " K=" + std::to_string(K) +
                           " N=" + std::to_string(N) + " groups=" + std::to_string(groups) +
                           " grid.y=" + std::to_string(l.grid.y);
  const float* gp = groups > 0 ? gate.data() : nullptr;
  // squared and absolute error, per image
  {
    std::vector<float> part(l.row_tiles * l.grid.x * 2, std::nanf(""));
    rk::gated_gemm_launch<T, rk::GemmEpilogue::kSqErr>(l, x.data(), w.data(), gp, offset.data(), shift.data(), s,
                                                       part.data(), nullptr);
    for (int64_t g = 0; g < G; ++g) {
      double want_sq = 0.0, want_ab = 0.0, got_sq = 0.0, got_ab = 0.0;
      for (int64_t r = g * per; r < (g + 1) * per; ++r)
        for (int64_t n = 0; n < N; ++n) {
          const double v = prod[r * N + n] + offset[r * N + n] + shift[n];
          want_sq += v * v;
          want_ab += std::fabs(v);
        }
      for (int64_t t = g * s.tiles; t < (g + 1) * s.tiles; ++t)
        for (unsigned b = 0; b < l.grid.x; ++b) {
          got_sq += part[2 * (t * l.grid.x + b)];
          got_ab += part[2 * (t * l.grid.x + b) + 1];
        }
      ck.expect(close(got_sq, want_sq, 1e-5, 1e-6) && close(got_ab, want_ab, 1e-5, 1e-6),
                "sq_err " + name + " image " + std::to_string(g) + ": got " + std::to_string(got_sq) + " / " +
                    std::to_string(got_ab) + ", want " + std::to_string(want_sq) + " / " + std::to_string(want_ab));
    }
  }
  // column deviations around a given mean
  {
    const std::vector<float> mean = randn(N, 0.5f);
    std::vector<float> part(l.row_tiles * N, std::nanf(""));
    rk::gated_gemm_launch<T, rk::GemmEpilogue::kColDev>(l, x.data(), w.data(), gp, nullptr, mean.data(), s,
                                                        part.data(), nullptr);
    bool ok = true;
    std::string first;
    for (int64_t n = 0; n < N; ++n) {
      double want = 0.0, got = 0.0;
      for (int64_t r = 0; r < R; ++r) want += (prod[r * N + n] - mean[n]) * (prod[r * N + n] - mean[n]);
      for (int64_t t = 0; t < l.row_tiles; ++t) got += part[t * N + n];
      if (!close(got, want, 1e-5, 1e-6) && ok) {
        ok = false;
        first = "column " + std::to_string(n) + ": got " + std::to_string(got) + ", want " + std::to_string(want);
      }
    }
    ck.expect(ok, "col_dev " + name + " " + first);
  }
}

// ---- expansion + depthwise conv ----------------------------------------------------------------------------------

template <typename T, int K, int S>
void expand_dw_case(cudasim_test::Checker& ck, int64_t N, int64_t H, int64_t W, int64_t Cin, int64_t C, bool act,
                    unsigned max_grid_y) {
  const std::vector<T> x = cast<T>(randn(N * H * W * Cin));
  const std::vector<float> w1 = randn(Cin * C, 0.5f), b1 = randn(C, 0.3f), wdw = randn(C * K * K, 0.3f);
  const std::vector<float> scale = randn(C, 0.2f, 1.f), shift = randn(C, 0.2f);
  const rk::DwShape s = rk::dw_shape<K, S>(N, H, W, Cin, C);
  rk::DwLaunch l = rk::dw_launch(s);
  if (max_grid_y > 0 && l.grid.y > max_grid_y) l.grid.y = max_grid_y;
  const std::string name = std::string(dtype_name<T>()) + (act ? " act" : " stats") + " k=" + std::to_string(K) +
                           " s=" + std::to_string(S) + " N=" + std::to_string(N) + " H=" + std::to_string(H) +
                           " W=" + std::to_string(W) + " Cin=" + std::to_string(Cin) + " C=" + std::to_string(C) +
                           " grid.y=" + std::to_string(l.grid.y);
  // reference: expansion in fp64 (x as stored), zero padding, conv, BN + swish
  const std::vector<double> xd = as_double(x);
  std::vector<double> hid(N * H * W * C);
  for (int64_t p = 0; p < N * H * W; ++p)
    for (int64_t c = 0; c < C; ++c) {
      double a = b1[c];
      for (int64_t ci = 0; ci < Cin; ++ci) a += xd[p * Cin + ci] * w1[ci * C + c];
      hid[p * C + c] = swish(a);
    }
  const int64_t Ho = s.Ho, Wo = s.Wo;
  std::vector<double> ref(N * Ho * Wo * C);
  dna_fast_test::dw_conv_ref(
      N, C, H, W, K, S,
      [&](int64_t n, int64_t c, int64_t iy, int64_t ix) { return hid[((n * H + iy) * W + ix) * C + c]; },
      [&](int64_t c, int64_t ky, int64_t kx) { return wdw[c * K * K + ky * K + kx]; },
      [&](int64_t n, int64_t c, int64_t oy, int64_t ox, double a) {
        ref[((n * Ho + oy) * Wo + ox) * C + c] = act ? swish(a * scale[c] + shift[c]) : a;
      });
  std::vector<T> y(N * Ho * Wo * C, static_cast<T>(std::nanf("")));
  std::vector<float> row_sum(N * Ho * s.tiles_x * C, std::nanf("")), row_m2(act ? 0 : row_sum.size(), std::nanf(""));
  if (l.tiles > 0) {
    auto launch = act ? rk::expand_dw_launch<T, K, S, true> : rk::expand_dw_launch<T, K, S, false>;
    launch(l, x.data(), w1.data(), b1.data(), wdw.data(), act ? scale.data() : nullptr, act ? shift.data() : nullptr,
           s, y.data(), row_sum.data(), act ? nullptr : row_m2.data(), nullptr);
  }
  // the output, as stored in T
  bool ok = true;
  std::string first;
  const double rtol = store_rtol<T>();
  for (size_t i = 0; i < ref.size() && ok; ++i) {
    const double got = static_cast<float>(y[i]);
    if (!close(got, ref[i], rtol, 1e-4)) {
      ok = false;
      first = "y[" + std::to_string(i) + "] = " + std::to_string(got) + ", want " + std::to_string(ref[i]);
    }
  }
  // per (output row, column tile, channel): sum and M2 of the tile row's (unrounded) outputs
  for (int64_t r = 0; r < N * Ho && ok; ++r)
    for (int64_t t = 0; t < s.tiles_x && ok; ++t)
      for (int64_t c = 0; c < C && ok; ++c) {
        const int64_t x0 = t * rk::kDwTileW, x1 = std::min<int64_t>(Wo, x0 + rk::kDwTileW);
        double sum = 0.0;
        for (int64_t ox = x0; ox < x1; ++ox) sum += ref[(r * Wo + ox) * C + c];
        const double mean = sum / static_cast<double>(x1 - x0);
        double m2 = 0.0;
        for (int64_t ox = x0; ox < x1; ++ox) m2 += (ref[(r * Wo + ox) * C + c] - mean) * (ref[(r * Wo + ox) * C + c] - mean);
        const int64_t slot = (r * s.tiles_x + t) * C + c;
        if (!close(row_sum[slot], sum, 1e-4, 1e-4)) {
          ok = false;
          first = "row_sum[" + std::to_string(slot) + "] = " + std::to_string(row_sum[slot]) + ", want " +
                  std::to_string(sum);
        } else if (!act && !close(row_m2[slot], m2, 1e-3, 1e-4)) {
          ok = false;
          first = "row_m2[" + std::to_string(slot) + "] = " + std::to_string(row_m2[slot]) + ", want " +
                  std::to_string(m2);
        }
      }
  ck.expect(ok, "expand_dw " + name + ": " + first);
}

template <typename T>
void expand_dw_all(cudasim_test::Checker& ck) {
  struct Shape {
    int64_t N, H, W, Cin, C;
  };
  // odd shapes: an image smaller than a tile, rows off the tile width, channels off the 32-wide chunk and the 8-wide
  // input chunk, one channel
  const Shape shapes[] = {{1, 1, 1, 3, 5}, {2, 9, 13, 5, 33}, {1, 15, 16, 13, 40}, {1, 6, 11, 8, 1}};
  for (const Shape& sh : shapes)
    for (bool act : {true, false}) {
      expand_dw_case<T, 3, 1>(ck, sh.N, sh.H, sh.W, sh.Cin, sh.C, act, 0);
      expand_dw_case<T, 3, 2>(ck, sh.N, sh.H, sh.W, sh.Cin, sh.C, act, 0);
      expand_dw_case<T, 5, 1>(ck, sh.N, sh.H, sh.W, sh.Cin, sh.C, act, 0);
      expand_dw_case<T, 5, 2>(ck, sh.N, sh.H, sh.W, sh.Cin, sh.C, act, 0);
      expand_dw_case<T, 7, 1>(ck, sh.N, sh.H, sh.W, sh.Cin, sh.C, act, 0);
      expand_dw_case<T, 7, 2>(ck, sh.N, sh.H, sh.W, sh.Cin, sh.C, act, 0);
    }
  // more tiles than blocks on grid.y: every tile still runs exactly once
  expand_dw_case<T, 3, 1>(ck, 2, 17, 19, 6, 9, true, 3);
  expand_dw_case<T, 7, 2>(ck, 2, 17, 19, 6, 9, false, 2);
}

// ---- swish rows ---------------------------------------------------------------------------------------------------

template <typename T>
void swish_rows_case(cudasim_test::Checker& ck, int64_t R, int64_t C, int64_t groups, bool with_scale,
                     unsigned max_grid_y) {
  const std::vector<float> x0 = randn(R * C, 3.f), scale = randn(C, 0.5f, 1.f), shift = randn(C, 0.5f);
  std::vector<T> x = cast<T>(x0);
  const std::vector<double> xd = as_double(x);
  const rk::RowsShape s = rk::rows_shape(R, C, groups);
  rk::RowsLaunch l = rk::rows_launch(s);
  if (max_grid_y > 0 && l.grid.y > max_grid_y) l.grid.y = max_grid_y;
  std::vector<float> part(groups > 0 ? l.row_tiles * C : 0, std::nanf(""));
  rk::swish_rows_launch<T>(l, x.data(), with_scale ? scale.data() : nullptr, shift.data(), s,
                           groups > 0 ? part.data() : nullptr, nullptr);
  const std::string name = std::string(dtype_name<T>()) + " R=" + std::to_string(R) + " C=" + std::to_string(C) +
                           " groups=" + std::to_string(groups) + " grid.y=" + std::to_string(l.grid.y);
  bool ok = true;
  std::string first;
  const int64_t G = groups > 0 ? groups : 1, per = R / G;
  for (int64_t g = 0; g < G && ok; ++g)
    for (int64_t c = 0; c < C && ok; ++c) {
      double sum = 0.0;
      for (int64_t r = g * per; r < (g + 1) * per; ++r) {
        const double v = swish(xd[r * C + c] * (with_scale ? scale[c] : 1.0) + shift[c]);
        sum += v;
        const double got = static_cast<float>(x[r * C + c]);
        if (!close(got, v, store_rtol<T>(), 1e-5)) {
          ok = false;
          first = "x[" + std::to_string(r) + ", " + std::to_string(c) + "] = " + std::to_string(got) + ", want " +
                  std::to_string(v);
        }
      }
      if (groups > 0 && ok) {
        double got = 0.0;
        for (int64_t t = g * s.tiles; t < (g + 1) * s.tiles; ++t) got += part[t * C + c];
        if (!close(got, sum, 1e-5, 1e-4)) {
          ok = false;
          first = "sum[" + std::to_string(g) + ", " + std::to_string(c) + "] = " + std::to_string(got) + ", want " +
                  std::to_string(sum);
        }
      }
    }
  ck.expect(ok, "swish_rows " + name + ": " + first);
}

template <typename T>
void all_dtypes(cudasim_test::Checker& ck) {
  // gated GEMM: rows off the 64-row tile, K off the 16-wide step, N off the 64-column tile, images of odd size
  gemm_case<T>(ck, 1, 1, 1, 0, 0, 0);
  gemm_case<T>(ck, 37, 19, 5, 0, 0, 0);
  gemm_case<T>(ck, 130, 40, 70, 2, 7, 0);
  gemm_case<T>(ck, 3 * 45, 33, 24, 3, 0, 0);
  gemm_case<T>(ck, 7 * 70, 24, 48, 7, 3, 2);  // 14 row tiles on 2 blocks of grid.y
  expand_dw_all<T>(ck);
  swish_rows_case<T>(ck, 1, 1, 1, true, 0);
  swish_rows_case<T>(ck, 13, 5, 0, false, 0);
  swish_rows_case<T>(ck, 3 * 70, 40, 3, true, 0);
  swish_rows_case<T>(ck, 4 * 100, 33, 4, true, 3);
}

}  // namespace

// --quick: the fp32 cases only (the random-order run of CMakeLists.txt)
int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  cudasim_test::Checker ck("rating kernels (emulated)");
  try {
    // the launch-configuration arithmetic: grid.y is capped, the kernels loop over the rest
    ck.expect(rk::capped_grid_y(70000) == 65535 && rk::capped_grid_y(0) == 1 && rk::capped_grid_y(12) == 12,
              "capped_grid_y");
    const rk::GemmLaunch big = rk::gemm_launch(rk::gemm_shape(int64_t(1) << 23, 64, 80, 64, 256));
    ck.expect(big.grid.y == 65535 && big.row_tiles == 256 * ((int64_t(1) << 15) / 64) && big.grid.x == 2,
              "gemm_launch of 2^23 rows in 256 images");
    const rk::DwLaunch dbig = rk::dw_launch(rk::dw_shape<3, 1>(1, 2048, 2048, 16, 96));
    ck.expect(dbig.grid.y == 65535 && dbig.tiles == 256 * 256 && dbig.grid.x == 3, "dw_launch of a 2048^2 image");
    all_dtypes<float>(ck);
    if (!quick) {
      all_dtypes<__half>(ck);
      all_dtypes<__nv_bfloat16>(ck);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    ck.expect(false, "no emulator error");
  }
  return ck.finish();
}
