// Unit tests of the header-only math shared by the CPU and CUDA kernels (csrc/include/dna_fast): depthwise conv
// output sizes, window starts, tap ranges, channel_of, the vectorizable expf/swish. Plain C++ (no libtorch), so it
// runs under ASan/UBSan; exits non-zero on the first failed check.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>

#include "dna_fast/cpu_vec.h"
#include "dna_fast/dwconv.h"
#include "dna_fast/math.h"

namespace {

int failures = 0;

#define CHECK(cond)                                                 \
  do {                                                              \
    if (!(cond)) {                                                  \
      if (failures < 10) std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                   \
    }                                                               \
  } while (0)

// Brute force: the outputs of a padded strided window along one axis.
int64_t brute_out_size(int64_t in, int64_t k, int64_t s) {
  const int64_t pad = k / 2;
  int64_t n = 0;
  for (int64_t o = 0;; ++o) {
    if (o * s - pad + k > in + pad) break;  // window must end inside the padded input
    ++n;
  }
  return in <= 0 ? 0 : n;
}

void test_out_size() {
  for (int64_t k : {3, 5, 7})
    for (int64_t s : {1, 2})
      for (int64_t in = 0; in <= 64; ++in) CHECK(dna_fast::dw_out_size(in, k, s) == brute_out_size(in, k, s));
  // timm / PyTorch: "same" size for stride 1, ceil(in / 2) for stride 2 with odd kernels
  CHECK(dna_fast::dw_out_size(56, 3, 1) == 56);
  CHECK(dna_fast::dw_out_size(56, 7, 2) == 28);
  CHECK(dna_fast::dw_out_size(7, 5, 2) == 4);
  CHECK(dna_fast::dw_out_size(1, 7, 2) == 1);
}

void test_taps() {
  for (int64_t k : {3, 5, 7})
    for (int64_t s : {1, 2})
      for (int64_t in = 1; in <= 20; ++in) {
        const int64_t out = dna_fast::dw_out_size(in, k, s);
        for (int64_t o = 0; o < out; ++o) {
          const int64_t start = dna_fast::dw_in_start(o, k, s);
          const dna_fast::TapRange t = dna_fast::dw_taps(start, k, in);
          CHECK(0 <= t.lo && t.lo <= t.hi && t.hi <= k);
          for (int64_t j = 0; j < k; ++j) {
            const bool inside = dna_fast::dw_inside(start + j, in);
            CHECK(inside == (j >= t.lo && j < t.hi));
          }
          CHECK(t.hi > t.lo);  // every output sees at least its centre tap
        }
        // a tile of all outputs reads exactly the padded extent it needs
        CHECK(dna_fast::dw_in_extent(out, k, s) <= in + 2 * dna_fast::dw_pad(k));
        CHECK(dna_fast::dw_in_start(out - 1, k, s) + k <= in + dna_fast::dw_pad(k));
      }
  CHECK(dna_fast::dw_in_extent(0, 3, 1) == 0);
  CHECK(dna_fast::dw_in_extent(8, 7, 2) == 21);
  CHECK(dna_fast::dw_kernel_supported(5) && !dna_fast::dw_kernel_supported(4) && !dna_fast::dw_kernel_supported(9));
  CHECK(dna_fast::dw_stride_supported(2) && !dna_fast::dw_stride_supported(3));
}

void test_channel_of() {
  const int64_t N = 2, C = 5, H = 3, W = 4, HW = H * W;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t p = 0; p < HW; ++p) {
        CHECK(dna_fast::channel_of((n * C + c) * HW + p, C, HW, false) == c);
        CHECK(dna_fast::channel_of((n * HW + p) * C + c, C, HW, true) == c);
      }
  CHECK(dna_fast::ceil_div(7, 2) == 4 && dna_fast::ceil_div(8, 2) == 4 && dna_fast::ceil_div(0, 3) == 0);
}

void test_fast_exp_and_swish() {
  for (float t = -dna_fast::kExpArgMax; t <= 0.f; t += 0.003f) {
    const double want = std::exp(static_cast<double>(t));
    const float got = dna_fast::fast_exp_nonpos(t);
    CHECK(std::isfinite(got) && got > 0.f);
    CHECK(std::fabs(got - want) <= 3e-7 * want);
  }
  CHECK(dna_fast::fast_exp_nonpos(0.f) == 1.f);
  for (float x = -200.f; x <= 200.f; x += 0.01f) {
    const double z = x, sig = 1.0 / (1.0 + std::exp(-z)), sw = z * sig;
    // below -87.3 the sigmoid saturates at exp(-87.3) ~ 1.2e-38
    CHECK(std::fabs(dna_fast::fast_sigmoidf(x) - sig) <= 1e-6 * sig + 2e-38);
    CHECK(std::fabs(dna_fast::fast_swishf(x) - sw) <= 1e-6 * std::fabs(sw) + 1e-34);
    CHECK(std::fabs(dna_fast::swishf(x) - sw) <= 1e-5 * std::fabs(sw) + 1e-30);
  }
  CHECK(dna_fast::fast_swishf(0.f) == 0.f && dna_fast::fast_sigmoidf(0.f) == 0.5f);
  CHECK(dna_fast::fast_sigmoidf(1e30f) == 1.f && dna_fast::fast_swishf(1e30f) == 1e30f);
  CHECK(dna_fast::fast_sigmoidf(-1e30f) >= 0.f && dna_fast::fast_sigmoidf(-1e30f) < 1e-37f);
  CHECK(std::isnan(dna_fast::fast_swishf(std::nanf(""))));
  CHECK(std::fabs(dna_fast::swish_grad(0.f) - 0.5f) < 1e-7f);
}

}  // namespace

int main() {
  test_out_size();
  test_taps();
  test_channel_of();
  test_fast_exp_and_swish();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return EXIT_FAILURE;
  }
  std::puts("test_index_math: all checks passed");
  return EXIT_SUCCESS;
}
