// se_gate's and pw_project's epilogue CUDA kernels (csrc/cuda/se_project_kernels.cuh) in the emulator against plain
// C++ references: se_gate over channel / hidden counts around the block's 256 threads and 8 warps (dynamic shared
// memory, warp shuffles); pw_epilogue in both layouts, fp32 / fp16 / bf16 / fp64, with residual, with target (the
// per-sample loss over several blocks, one atomicAdd each), and the 48 KiB dynamic shared memory limit.
#include "cudasim/cudasim.h"

#include "se_project_kernels.cuh"

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cudasim/check.h"

namespace {

using cudasim_test::Checker;

double sigmoid(double z) { return 1 / (1 + std::exp(-z)); }

void se_gate_case(Checker& t, long N, long C, long R) {
  std::vector<float> p(N * C), wr(R * C), br(R), we(C * R), be(C), gate(N * C, -1.f);
  for (long i = 0; i < N * C; ++i) p[i] = float(cudasim_test::input_value(i));
  for (long i = 0; i < R * C; ++i) {
    wr[i] = float(cudasim_test::input_value(i, 1) * 0.25);
    we[i] = float(cudasim_test::input_value(i, 2) * 0.25);
  }
  for (long r = 0; r < R; ++r) br[r] = float(0.03125 * (r % 5));
  for (long c = 0; c < C; ++c) be[c] = float(-0.0625 * (c % 3));
  dna_fast::se_gate_launch(p.data(), wr.data(), br.data(), we.data(), be.data(), gate.data(), N, C, R, nullptr);
  bool good = true;
  for (long n = 0; n < N && good; ++n) {
    std::vector<double> h(R);
    for (long r = 0; r < R; ++r) {
      double a = br[r];
      for (long c = 0; c < C; ++c) a += double(wr[r * C + c]) * p[n * C + c];
      h[r] = a * sigmoid(a);
    }
    for (long c = 0; c < C && good; ++c) {
      double a = be[c];
      for (long r = 0; r < R; ++r) a += double(we[c * R + r]) * h[r];
      const double ref = sigmoid(a);
      if (!(std::fabs(gate[n * C + c] - ref) <= 1e-5 * (1 + std::fabs(ref)))) {  // NaN fails
        std::fprintf(stderr, "  gate[%ld, %ld] = %.8g, reference %.8g\n", n, c, double(gate[n * C + c]), ref);
        good = false;
      }
    }
  }
  t.expect(good, "se_gate N=" + std::to_string(N) + " C=" + std::to_string(C) + " R=" + std::to_string(R));
}

template <typename T>
void pw_case(Checker& t, long N, long Co, long HW, bool cl, bool with_res, bool with_tgt, long chunk) {
  const long per = Co * HW, n_el = N * per;
  std::vector<T> z(n_el), res(with_res ? n_el : 0), tgt(with_tgt ? n_el : 0), y(with_tgt ? 0 : n_el, T(9.f));
  for (long i = 0; i < n_el; ++i) {
    z[i] = cudasim_test::to<T>(cudasim_test::input_value(i) * 2);
    if (with_res) res[i] = cudasim_test::to<T>(cudasim_test::input_value(i, 7));
    if (with_tgt) tgt[i] = cudasim_test::to<T>(cudasim_test::input_value(i, 9));
  }
  std::vector<float> scale(Co), shift(Co), loss(with_tgt ? N : 0, 0.f);
  for (long c = 0; c < Co; ++c) {
    scale[c] = float(0.5 + 0.125 * (c % 4));
    shift[c] = float(0.25 - 0.0625 * (c % 6));
  }
  dna_fast::pw_epilogue_launch<T>(z.data(), scale.data(), shift.data(), with_res ? res.data() : nullptr,
                                  with_tgt ? tgt.data() : nullptr, with_tgt ? nullptr : y.data(),
                                  with_tgt ? loss.data() : nullptr, N, per, Co, HW, cl, nullptr, chunk);
  bool good = true;
  for (long n = 0; n < N && good; ++n) {
    double sq = 0, mag = 0;
    for (long j = 0; j < per && good; ++j) {
      const long i = n * per + j, c = cl ? j % Co : j / HW;  // the layout's channel, spelled out
      // the kernel's fp32 value, rounded to T once (the reference mirrors that one rounding)
      float v = static_cast<float>(z[i]) * scale[c] + shift[c];
      if (with_res) v += static_cast<float>(res[i]);
      const double exact = double(static_cast<float>(z[i])) * scale[c] + shift[c] +
                           (with_res ? double(static_cast<float>(res[i])) : 0.0);
      if (with_tgt) {
        const double d = cudasim_test::from(static_cast<T>(v)) - cudasim_test::from(tgt[i]);
        sq += d * d;
        mag += d * d;
      } else {
        const double got = cudasim_test::from(y[i]);
        if (!cudasim_test::close_to<T>(got, exact, 1e-6)) {
          std::fprintf(stderr, "  y[%ld] = %.8g, reference %.8g\n", i, got, exact);
          good = false;
        }
      }
    }
    if (with_tgt && !(std::fabs(loss[n] - sq) <= 1e-5 * (1 + mag))) {
      std::fprintf(stderr, "  loss[%ld] = %.8g, reference %.8g\n", n, double(loss[n]), sq);
      good = false;
    }
  }
  char buf[200];
  std::snprintf(buf, sizeof buf, "pw_epilogue %s %s N=%ld Co=%ld HW=%ld res=%d tgt=%d chunk=%ld",
                cudasim_test::DType<T>::name,
                cl ? "cl" : "nchw", N, Co, HW, int(with_res), int(with_tgt), chunk);
  t.expect(good, buf);
}

template <typename T>
void pw_all(Checker& t) {
  for (bool cl : {false, true})
    for (bool res : {false, true})
      for (bool tgt : {false, true}) {
        pw_case<T>(t, 2, 3, 5, cl, res, tgt, dna_fast::kPwChunk);
        pw_case<T>(t, 3, 7, 37, cl, res, tgt, 64);  // several blocks per sample, a partial last one
        pw_case<T>(t, 1, 1, 1, cl, res, tgt, dna_fast::kPwChunk);
      }
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";  // fp32 cases only
  Checker t("test_se_project_emu");
  for (long C : {1L, 5L, 32L, 33L, 300L})
    for (long R : {1L, 2L, 9L, 40L}) se_gate_case(t, 2, C, R);
  se_gate_case(t, 1, 11200, 1000);  // 48 KiB of dynamic shared memory exactly
  t.expect(dna_fast::se_gate_smem(11200, 1089) > 48 * 1024, "C + R = 12289 floats need more than 48 KiB");
  std::vector<float> one(1);
  t.expect_error([&] {
    cudasim::launch(dna_fast::se_gate_kernel, dim3(1), dim3(256), dna_fast::se_gate_smem(11200, 1089))(
        one.data(), one.data(), one.data(), one.data(), one.data(), one.data(), 11200, 1089);
  }, "exceed 48 KiB", "se_gate with more than 48 KiB of shared memory is refused (the launcher checks it first)");
  pw_all<float>(t);
  pw_all<double>(t);
#if CUDASIM_TEST_HALF_TYPES
  if (!quick) {
    pw_all<__half>(t);
    pw_all<__nv_bfloat16>(t);
  }
#else
  std::printf("test_se_project_emu: fp16 / bf16 cases skipped (CUDA's cuda_fp16.h not found)\n");
#endif
  return t.finish();
}
