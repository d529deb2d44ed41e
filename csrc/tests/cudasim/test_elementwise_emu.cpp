// scale_shift_swish's CUDA kernels (csrc/cuda/scale_shift_swish_kernels.cuh), forward and backward, in the emulator
// against a plain C++ reference: NCHW and channels_last, fp32 / fp16 / bf16 / fp64, odd sizes, and the grid-stride
// loop (the grid capped at a few blocks, as it is at 65535 * 8 blocks on a GPU).
#include "cudasim/cudasim.h"

#include "scale_shift_swish_kernels.cuh"

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cudasim/check.h"

namespace {

using cudasim_test::Checker;

double sigmoid(double z) { return 1 / (1 + std::exp(-z)); }

template <typename T>
bool close(double got, double ref) {
  return cudasim_test::close_to<T>(got, ref);
}

template <typename T>
void run_case(Checker& t, long N, long C, long H, long W, bool cl, unsigned max_blocks) {
  const long n = N * C * H * W, HW = H * W;
  std::vector<T> x(n), g(n), y(n, T(7.f)), gz(n, T(7.f));
  std::vector<float> scale(C), shift(C);
  for (long i = 0; i < n; ++i) {
    x[i] = cudasim_test::to<T>(cudasim_test::input_value(i) * 3);
    g[i] = cudasim_test::to<T>(cudasim_test::input_value(i, 5));
  }
  for (long c = 0; c < C; ++c) {
    scale[c] = static_cast<float>(0.5 + 0.25 * (c % 3));
    shift[c] = static_cast<float>(0.125 * (c % 4) - 0.25);
  }
  dna_fast::scale_shift_swish_launch<T>(x.data(), scale.data(), shift.data(), y.data(), n, C, HW, cl, nullptr,
                                        max_blocks);
  dna_fast::scale_shift_swish_backward_launch<T>(g.data(), x.data(), scale.data(), shift.data(), gz.data(), n, C, HW,
                                                 cl, nullptr, max_blocks);
  bool good = true;
  for (long i = 0; i < n && good; ++i) {
    const long c = cl ? i % C : (i / HW) % C;  // the layout's channel, spelled out
    const double z = static_cast<double>(static_cast<float>(x[i])) * scale[c] + shift[c], s = sigmoid(z);
    const double ry = z * s, rg = static_cast<double>(static_cast<float>(g[i])) * s * (1 + z * (1 - s));
    const double got_y = static_cast<float>(y[i]), got_g = static_cast<float>(gz[i]);
    if (!close<T>(got_y, ry) || !close<T>(got_g, rg)) {
      std::fprintf(stderr, "  element %ld: y %.8g (reference %.8g), grad %.8g (reference %.8g)\n", i, got_y, ry, got_g,
                   rg);
      good = false;
    }
  }
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s %s [%ld, %ld, %ld, %ld] blocks<=%u", cudasim_test::DType<T>::name,
                cl ? "cl" : "nchw", N, C, H,
                W, max_blocks);
  t.expect(good, buf);
}

template <typename T>
void run_all(Checker& t) {
  const long shapes[][4] = {{1, 1, 1, 1}, {2, 3, 5, 7}, {3, 17, 4, 9}, {1, 40, 33, 1}};
  for (const auto& s : shapes)
    for (bool cl : {false, true})
      for (unsigned cap : {65535u * 8, 3u}) run_case<T>(t, s[0], s[1], s[2], s[3], cl, cap);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";  // fp32 cases only
  Checker t("test_elementwise_emu");
  run_all<float>(t);
  run_all<double>(t);
#if CUDASIM_TEST_HALF_TYPES
  if (!quick) {
    run_all<__half>(t);
    run_all<__nv_bfloat16>(t);
  }
#else
  std::printf("test_elementwise_emu: fp16 / bf16 cases skipped (CUDA's cuda_fp16.h not found)\n");
#endif
  // the grid: one thread per element up to 65535 * 8 blocks of 256
  const dim3 g1 = dna_fast::elementwise_grid(1000), g2 = dna_fast::elementwise_grid(int64_t(1) << 40);
  t.expect(g1.x == 4 && g2.x == 65535u * 8, "elementwise_grid: ceil(n / 256) blocks, capped at 65535 * 8");
  return t.finish();
}
