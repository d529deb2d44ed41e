// The CPU kernels of csrc/cpu (including the AVX2 / AVX-512 intrinsics of nhwc_avx2.h, when the build enables them)
// run on small shapes through the dispatcher (torch.ops.dna_fast.*) and checked against plain loops in fp64. Built by
// CMakeLists.txt against libtorch with the ops library; under SANITIZE=ON both are compiled with ASan + UBSan, so an
// out-of-bounds access of an intrinsic load / store or a remainder loop fails here. Shapes cover channel counts that
// are and are not multiples of 8 (the vector path and its fallback), widths that are not multiples of the 7-column
// register tile, k 3 / 5 / 7, stride 1 / 2. Prints how many cases passed.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <string>
#include <vector>

#include "../dw_reference.h"

// Calls of the vector kernels (nhwc_avx2.h) in the ops library; absent (null) when it was built without AVX2.
namespace dna_fast::nhwc {
extern __attribute__((weak)) std::atomic<int64_t> vector_calls;
}

namespace {

int cases = 0, failures = 0;

void expect(bool ok, const std::string& what) {
  ++cases;
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "test_cpu_kernels: FAILED: %s\n", what.c_str());
  }
}

// Calls dna_fast::<name> through the dispatcher (boxed: the test does not depend on the C++ signature).
std::vector<c10::IValue> call(const char* name, std::vector<c10::IValue> args) {
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow((std::string("dna_fast::") + name).c_str(), "");
  torch::jit::Stack stack(args.begin(), args.end());
  op.callBoxed(&stack);
  return std::vector<c10::IValue>(stack.begin(), stack.end());
}

// max |a - b| <= atol + rtol * |b| elementwise (b: the fp64 reference).
bool close(const at::Tensor& got, const at::Tensor& ref, double rtol, double atol, const std::string& what) {
  const at::Tensor g = got.to(at::kDouble).contiguous(), r = ref.to(at::kDouble).contiguous();
  if (g.sizes() != r.sizes()) {
    std::fprintf(stderr, "  %s: shape mismatch\n", what.c_str());
    return false;
  }
  const double* gp = g.data_ptr<double>();
  const double* rp = r.data_ptr<double>();
  for (int64_t i = 0; i < g.numel(); ++i)
    if (!(std::fabs(gp[i] - rp[i]) <= atol + rtol * std::fabs(rp[i]))) {
      std::fprintf(stderr, "  %s: element %ld = %.9g, reference %.9g\n", what.c_str(), static_cast<long>(i), gp[i],
                   rp[i]);
      return false;
    }
  return true;
}

double swish(double z) { return z / (1 + std::exp(-z)); }

// Plain depthwise conv (padding k / 2) of x [N, C, H, W] (any layout) with w [C, 1, k, k], in fp64: [N, C, Ho, Wo].
at::Tensor dw_conv_ref(const at::Tensor& x_, const at::Tensor& w_, int64_t stride) {
  const at::Tensor x = x_.to(at::kDouble).contiguous(), w = w_.to(at::kDouble).contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), k = w.size(2), p = k / 2;
  const int64_t Ho = (H + 2 * p - k) / stride + 1, Wo = (W + 2 * p - k) / stride + 1;
  at::Tensor y = at::zeros({N, C, Ho, Wo}, x.options());
  const double* xp = x.data_ptr<double>();
  const double* wp = w.data_ptr<double>();
  double* yp = y.data_ptr<double>();
  dna_fast_test::dw_conv_ref(
      N, C, H, W, k, stride,
      [&](int64_t n, int64_t c, int64_t iy, int64_t ix) { return xp[((n * C + c) * H + iy) * W + ix]; },
      [&](int64_t c, int64_t ky, int64_t kx) { return wp[(c * k + ky) * k + kx]; },
      [&](int64_t n, int64_t c, int64_t oy, int64_t ox, double v) { yp[((n * C + c) * Ho + oy) * Wo + ox] = v; });
  return y;
}

// swish(z * scale[c] + shift[c]) of z [N, C, H, W] fp64.
at::Tensor bn_swish_ref(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& shift) {
  at::Tensor y = z.clone();
  const int64_t N = z.size(0), C = z.size(1), HW = z.size(2) * z.size(3);
  double* p = y.data_ptr<double>();
  const at::Tensor sc = scale.to(at::kDouble).contiguous(), sh = shift.to(at::kDouble).contiguous();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < HW; ++i) {
        double& v = p[(n * C + c) * HW + i];
        v = swish(v * sc.data_ptr<double>()[c] + sh.data_ptr<double>()[c]);
      }
  return y;
}

std::string name(const char* op, const at::Tensor& x, int64_t k, int64_t s, bool cl) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s [%ld, %ld, %ld, %ld] k=%ld s=%ld %s", op, static_cast<long>(x.size(0)),
                static_cast<long>(x.size(1)), static_cast<long>(x.size(2)), static_cast<long>(x.size(3)),
                static_cast<long>(k), static_cast<long>(s), cl ? "cl" : "nchw");
  return buf;
}

void test_dwconv() {
  const std::vector<std::vector<int64_t>> shapes = {{1, 8, 7, 7}, {2, 16, 9, 15}, {1, 5, 6, 11}, {1, 24, 3, 22}};
  // each shape on its default route, then with the direct kernels forced where they exist (NCHW k = 3, channels_last)
  for (const char* route : {"", "direct"})
    for (const auto& sh : shapes)
      for (int64_t k : {3, 5, 7})
        for (int64_t s : {1, 2})
          for (bool cl : {false, true}) {
            if (*route) {
              setenv("DNA_FAST_DWCONV", route, 1);
            } else {
              unsetenv("DNA_FAST_DWCONV");
            }
            at::Tensor x = at::randn(sh);
            if (cl) x = x.contiguous(at::MemoryFormat::ChannelsLast);
            const int64_t C = sh[1];
            const at::Tensor w = at::randn({C, 1, k, k}) * 0.3, scale = at::randn({C}), shift = at::randn({C});
            const auto out = call("dwconv_bn_act", {x, w, scale, shift, s, true});
            const at::Tensor ref = bn_swish_ref(dw_conv_ref(x, w, s), scale, shift);
            const std::string what = name("dwconv_bn_act", x, k, s, cl) + (*route ? " forced " : "") + route;
            expect(close(out[0].toTensor(), ref, 1e-5, 1e-5, what) &&
                       close(out[1].toTensor(), ref.sum({2, 3}), 1e-5, 1e-4, what + " sums"),
                   what);
            if (!cl) continue;
            // dwconv_stats: the conv (channels_last) and per output row (n, y) the mean and M2 over x, per channel
            const auto st = call("dwconv_stats", {x, w, s});
            const at::Tensor conv = dw_conv_ref(x, w, s);  // [N, C, Ho, Wo]
            const int64_t N = conv.size(0), Ho = conv.size(2);
            const at::Tensor rows = conv.permute({0, 2, 3, 1}).reshape({N * Ho, conv.size(3), C});  // [rows, Wo, C]
            const at::Tensor mean = rows.mean(1), m2 = (rows - mean.unsqueeze(1)).square().sum(1);
            const std::string w2 = name("dwconv_stats", x, k, s, cl);
            expect(close(st[0].toTensor(), conv, 1e-5, 1e-5, w2) && close(st[1].toTensor(), mean, 1e-5, 1e-5, w2) &&
                       close(st[2].toTensor(), m2, 1e-4, 1e-4, w2 + " m2"),
                   w2);
          }
  unsetenv("DNA_FAST_DWCONV");
}

void test_rows() {
  for (int64_t C : {8, 13, 32, 40})
    for (int64_t R : {6, 21}) {
      // swish_rows_: in place, column sums per group of rows
      const at::Tensor x = at::randn({R, C}), scale = at::randn({C}), shift = at::randn({C});
      at::Tensor y = x.clone();
      const auto sums = call("swish_rows_", {y, scale, shift, int64_t(3)});
      const at::Tensor xd = x.to(at::kDouble), ref = at::silu(xd * scale.to(at::kDouble) + shift.to(at::kDouble));
      const std::string what = "swish_rows_ [" + std::to_string(R) + ", " + std::to_string(C) + "]";
      expect(close(y, ref, 1e-5, 1e-6, what) &&
                 close(sums[0].toTensor(), ref.view({3, R / 3, C}).sum(1), 1e-5, 1e-5, what + " sums"),
             what);
      // linear_swish: swish(x @ w + b), x [R, K], w [K, N]
      const int64_t K = C, Nn = C + 8;
      const at::Tensor w = at::randn({K, Nn}) * 0.3, b = at::randn({Nn});
      const auto ls = call("linear_swish", {x, w, b});
      const at::Tensor lref = at::silu(at::matmul(xd, w.to(at::kDouble)) + b.to(at::kDouble));
      expect(close(ls[0].toTensor(), lref, 1e-5, 1e-5, "linear_swish"),
             "linear_swish [" + std::to_string(R) + ", " + std::to_string(K) + "] x [" + std::to_string(K) + ", " +
                 std::to_string(Nn) + "]");
      // linear_col_dev: per column sum over rows of ((x * gate) @ w - mean)^2, gate per group of rows
      const at::Tensor gate = at::rand({3, K}), mean = at::randn({Nn});
      const auto cd = call("linear_col_dev", {x, w, mean, gate});
      const at::Tensor xg = (xd.view({3, R / 3, K}) * gate.to(at::kDouble).unsqueeze(1)).view({R, K});
      const at::Tensor cref = (at::matmul(xg, w.to(at::kDouble)) - mean.to(at::kDouble)).square().sum(0);
      expect(close(cd[0].toTensor(), cref, 1e-4, 1e-4, "linear_col_dev"), "linear_col_dev K=" + std::to_string(K));
    }
}

void test_expand_dwconv() {
  for (int64_t Cin : {8, 12})
    for (int64_t C : {16, 20})
      for (int64_t k : {3, 5})
        for (int64_t s : {1, 2}) {
          const at::Tensor x = at::randn({2, Cin, 9, 10}).contiguous(at::MemoryFormat::ChannelsLast);
          const at::Tensor w1 = at::randn({Cin, C}) * 0.3, b1 = at::randn({C});
          const at::Tensor wd = at::randn({C, 1, k, k}) * 0.3, scale = at::randn({C}), shift = at::randn({C});
          const auto out = call("expand_dwconv_bn_act", {x, w1, b1, wd, scale, shift, s});
          // the expansion as [N, C, H, W] in fp64, then the plain conv + BN + swish
          const at::Tensor hid = at::silu(at::matmul(x.to(at::kDouble).permute({0, 2, 3, 1}), w1.to(at::kDouble)) +
                                          b1.to(at::kDouble))
                                     .permute({0, 3, 1, 2});
          const at::Tensor ref = bn_swish_ref(dw_conv_ref(hid, wd, s), scale, shift);
          const std::string what = name("expand_dwconv_bn_act", x, k, s, true) + " C=" + std::to_string(C);
          expect(close(out[0].toTensor(), ref, 1e-4, 1e-5, what) &&
                     close(out[1].toTensor(), ref.sum({2, 3}), 1e-4, 1e-3, what + " sums"),
                 what);
        }
}

void test_elementwise() {
  for (bool cl : {false, true}) {
    at::Tensor x = at::randn({2, 13, 5, 7});
    if (cl) x = x.contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor scale = at::randn({13}), shift = at::randn({13}), g = at::randn({2, 13, 5, 7});
    const at::Tensor z = x.to(at::kDouble) * scale.to(at::kDouble).view({13, 1, 1}) +
                         shift.to(at::kDouble).view({13, 1, 1});
    const at::Tensor sg = at::sigmoid(z);
    const auto y = call("scale_shift_swish", {x, scale, shift});
    const auto gz = call("scale_shift_swish_backward", {g, x, scale, shift});
    expect(close(y[0].toTensor(), z * sg, 1e-5, 1e-6, "scale_shift_swish") &&
               close(gz[0].toTensor(), g.to(at::kDouble) * sg * (1 + z * (1 - sg)), 1e-5, 1e-6,
                     "scale_shift_swish_backward"),
           std::string("scale_shift_swish forward / backward ") + (cl ? "cl" : "nchw"));
  }
}

}  // namespace

int main() {
  at::manual_seed(0);
  at::set_num_threads(2);
  test_dwconv();
  test_rows();
  test_expand_dwconv();
  test_elementwise();
  if (&dna_fast::nhwc::vector_calls != nullptr) {
    const int64_t calls = dna_fast::nhwc::vector_calls.load();
    expect(calls > 0, "the AVX2 kernels of nhwc_avx2.h ran");
    std::printf("test_cpu_kernels: ops library built with AVX2 + FMA; %ld calls of its vector kernels\n",
                static_cast<long>(calls));
  } else {
    std::printf("test_cpu_kernels: ops library built without AVX2 (the ATen fallbacks ran)\n");
  }
  std::printf("test_cpu_kernels: %d of %d cases passed\n", cases - failures, cases);
  return failures ? 1 : 0;
}
