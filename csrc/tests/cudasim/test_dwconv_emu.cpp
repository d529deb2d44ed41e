// dwconv_bn_act's CUDA kernels (csrc/cuda/dwconv_bn_act_kernels.cuh) in the emulator against a plain C++ reference:
// both layouts, k 3 / 5 / 7, stride 1 / 2, fp32 / fp16 / bf16, with and without sums, odd and tiny shapes, and the
// loop over tiles / pixel chunks that keeps grid.y <= 65535 (run here with a small cap); the launch configuration of
// the shapes that used to need grid.y = 65536 passes the emulator's launch-limit check.
#include "cudasim/cudasim.h"

#include "dwconv_bn_act_kernels.cuh"

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cudasim/check.h"

namespace {

using cudasim_test::Checker;
using dna_fast::DwShape;

struct Case {
  DwShape s;
  int k, stride;
  bool cl, sums;
  unsigned max_grid_y;
};

std::string describe(const Case& c, const char* dtype) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "%s %s [%ld, %ld, %ld, %ld] k=%d s=%d sums=%d grid_y<=%u", dtype, c.cl ? "cl" : "nchw",
                static_cast<long>(c.s.N), static_cast<long>(c.s.C), static_cast<long>(c.s.H), static_cast<long>(c.s.W),
                c.k, c.stride, int(c.sums), c.max_grid_y);
  return buf;
}

double swish(double z) { return z / (1 + std::exp(-z)); }

template <typename T>
void run_case(Checker& t, const Case& c) {
  const auto& s = c.s;
  const int k = c.k;
  // logical [n, c, h, w] input, stored in the case's layout
  auto xi = [&](long n, long ch, long h, long w) { return ((n * s.C + ch) * s.H + h) * s.W + w; };
  auto at = [&](long n, long ch, long h, long w, long H, long W) {
    return c.cl ? ((n * H + h) * W + w) * s.C + ch : ((n * s.C + ch) * H + h) * W + w;
  };
  std::vector<T> x(static_cast<size_t>(s.N * s.C * s.H * s.W));
  for (long n = 0; n < s.N; ++n)
    for (long ch = 0; ch < s.C; ++ch)
      for (long h = 0; h < s.H; ++h)
        for (long w = 0; w < s.W; ++w)
          x[at(n, ch, h, w, s.H, s.W)] = cudasim_test::to<T>(cudasim_test::input_value(xi(n, ch, h, w)));
  std::vector<float> wt(static_cast<size_t>(s.C * k * k)), scale(s.C), shift(s.C);
  for (size_t i = 0; i < wt.size(); ++i) wt[i] = static_cast<float>(cudasim_test::input_value(long(i), 3) * 0.5);
  for (long ch = 0; ch < s.C; ++ch) {
    scale[ch] = static_cast<float>(0.75 + 0.125 * (ch % 5));
    shift[ch] = static_cast<float>(-0.25 + 0.0625 * (ch % 7));
  }
  const size_t ny = static_cast<size_t>(s.N * s.C * s.Ho * s.Wo);
  std::vector<T> y(ny, cudasim_test::to<T>(12345.0));  // a sentinel: an output the kernel misses stays visible
  std::vector<float> sums(c.sums ? static_cast<size_t>(s.N * s.C) : 0, 0.f);
  const bool ok = dna_fast::dwconv_bn_act_launch<T>(c.cl, k, c.stride, s, x.data(), wt.data(), scale.data(),
                                                    shift.data(), y.data(), c.sums ? sums.data() : nullptr, nullptr,
                                                    c.max_grid_y);
  bool good = ok;
  const int pad = k / 2;
  for (long n = 0; n < s.N && good; ++n)
    for (long ch = 0; ch < s.C && good; ++ch) {
      double total = 0, mag = 0;
      for (long oy = 0; oy < s.Ho && good; ++oy)
        for (long ox = 0; ox < s.Wo && good; ++ox) {
          double acc = 0;
          for (int ky = 0; ky < k; ++ky)
            for (int kx = 0; kx < k; ++kx) {
              const long iy = oy * c.stride - pad + ky, ix = ox * c.stride - pad + kx;
              if (iy < 0 || iy >= s.H || ix < 0 || ix >= s.W) continue;
              acc += double(wt[(ch * k + ky) * k + kx]) * cudasim_test::input_value(xi(n, ch, iy, ix));
            }
          const double ref = swish(acc * scale[ch] + shift[ch]);
          total += ref;
          mag += std::fabs(ref);
          const double got = cudasim_test::from(y[at(n, ch, oy, ox, s.Ho, s.Wo)]);
          if (!cudasim_test::close_to<T>(got, ref)) {
            std::fprintf(stderr, "  y[%ld, %ld, %ld, %ld] = %.8g, reference %.8g\n", n, ch, oy, ox, got, ref);
            good = false;
          }
        }
      if (good && c.sums && !(std::fabs(sums[n * s.C + ch] - total) <= 1e-5 * (1 + mag))) {
        std::fprintf(stderr, "  sums[%ld, %ld] = %.8g, reference %.8g\n", n, ch, double(sums[n * s.C + ch]), total);
        good = false;
      }
    }
  t.expect(good, describe(c, cudasim_test::DType<T>::name));
}

DwShape shape(long N, long C, long H, long W, int k, int stride) {
  return DwShape{N, C, H, W, dna_fast::dw_out_size(H, k, stride), dna_fast::dw_out_size(W, k, stride)};
}

template <typename T>
void run_all(Checker& t) {
  // tiny, odd, C > 32 (two channel blocks), W > 32 and H > 8 (several NCHW tiles), several pixel chunks (cl)
  const long shapes[][4] = {{1, 1, 1, 1}, {2, 3, 5, 7}, {1, 33, 9, 11}, {1, 2, 17, 70}, {2, 5, 13, 37}};
  for (const auto& sh : shapes)
    for (int k : {3, 5, 7})
      for (int stride : {1, 2})
        for (bool cl : {false, true})
          for (bool sums : {false, true}) {
            // the odd shapes also run with grid.y capped at 2: blocks loop over tiles / chunks, as beyond 65535
            const unsigned cap = (sh[2] * sh[3] > 100 && sums) ? 2u : dna_fast::kMaxGridY;
            run_case<T>(t, Case{shape(sh[0], sh[1], sh[2], sh[3], k, stride), k, stride, cl, sums, cap});
          }
}

void test_launch_limits(Checker& t) {
  // channels_last [1, 32, 2048, 2048] stride 1: 65536 chunks of 64 pixels; NCHW 4096 x 4096: 65536 tiles
  const DwShape cl_big = shape(1, 32, 2048, 2048, 3, 1), nchw_big = shape(1, 1, 4096, 4096, 3, 1);
  const dna_fast::DwLaunch a = dna_fast::dwconv_cl_config(cl_big), b = dna_fast::dwconv_nchw_config(nchw_big);
  bool ok = true;
  try {
    cudasim::check_launch(a.grid, a.block, 0, "dwconv_bn_act_cl");
    cudasim::check_launch(b.grid, b.block, 0, "dwconv_bn_act_nchw");
  } catch (const cudasim::Error& e) {
    std::fprintf(stderr, "  %s\n", e.what());
    ok = false;
  }
  t.expect(ok && a.grid.y == 65535 && b.grid.y == 65535 && b.tiles == 65536,
           "grid.y of cl [1, 32, 2048, 2048] and NCHW 4096 x 4096 within 65535 (blocks loop over the rest)");
  t.expect_error([&] { cudasim::check_launch(dim3(a.grid.x, 65536, a.grid.z), a.block, 0, "dwconv"); },
                 "grid.y = 65536 exceeds 65535", "the uncapped grid of that shape is refused by the emulator");
  // one capped tile loop must still cover the last tile: a shape just past the cap, small enough to run
  run_case<float>(t, Case{shape(1, 1, 16, 64, 3, 1), 3, 1, false, true, 3});  // 4 tiles, 3 blocks
  run_case<float>(t, Case{shape(1, 2, 3, 65, 3, 2), 3, 2, true, true, 1});    // 2 chunks, 1 block
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";  // fp32 cases only
  Checker t("test_dwconv_emu");
  run_all<float>(t);
#if CUDASIM_TEST_HALF_TYPES
  if (!quick) {
    run_all<__half>(t);
    run_all<__nv_bfloat16>(t);
  }
#else
  std::printf("test_dwconv_emu: fp16 / bf16 cases skipped (CUDA's cuda_fp16.h not found)\n");
#endif
  test_launch_limits(t);
  return t.finish();
}
