// Unit tests of csrc/include/dna_fast/math.h (run by ctest, under ASan + UBSan with SANITIZE=ON).
#include <cmath>
#include <cstdio>
#include <vector>

#include "dna_fast/math.h"

static int failures = 0;
#define EXPECT(cond)                                                  \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::fprintf(stderr, "%s:%d: EXPECT(%s)\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                     \
    }                                                                 \
  } while (0)

static bool close(double a, double b, double tol = 1e-6) { return std::fabs(a - b) <= tol * (1 + std::fabs(b)); }

int main() {
  using namespace dna_fast;
  // swish and its gradient against closed forms / finite differences
  for (double z = -12; z <= 12; z += 0.37) {
    const double s = 1 / (1 + std::exp(-z));
    EXPECT(close(swishf(float(z)), z * s, 1e-5));
    const double h = 1e-3;
    const double fd = (swishf(float(z + h)) - swishf(float(z - h))) / (2 * h);
    EXPECT(close(swish_grad(float(z)), fd, 2e-3));
  }
  EXPECT(close(scale_shift_swish(2.f, 0.5f, -1.f), 0.0));
  EXPECT(close(scale_shift_swish_grad_z(3.f, 1.f, 0.f, 0.f), 3 * 0.5));
  // channel_of agrees with explicit NCHW / NHWC index decompositions
  const int64_t N = 2, C = 3, H = 4, W = 5, HW = H * W;
  std::vector<int> seen_nchw(C), seen_nhwc(C);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) {
          const int64_t i_nchw = ((n * C + c) * H + h) * W + w;
          const int64_t i_nhwc = ((n * H + h) * W + w) * C + c;
          EXPECT(channel_of(i_nchw, C, HW, false) == c);
          EXPECT(channel_of(i_nhwc, C, HW, true) == c);
          ++seen_nchw[c];
          ++seen_nhwc[c];
        }
  for (int c = 0; c < C; ++c) EXPECT(seen_nchw[c] == N * HW && seen_nhwc[c] == N * HW);
  EXPECT(ceil_div(7, 2) == 4 && ceil_div(8, 2) == 4 && ceil_div(0, 3) == 0);
  if (failures) std::fprintf(stderr, "%d failure(s)\n", failures);
  else std::printf("test_math: all passed\n");
  return failures ? 1 : 0;
}
