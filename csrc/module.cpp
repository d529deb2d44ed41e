// The Python module dna_fast._C: importing it registers the operators; build_info() describes the build, including
// the CPU instruction sets the kernels were compiled for and the ones this CPU has; cpu_vector_calls() counts the
// calls of the vector kernels (nhwc_avx2.h, and nhwc_avx512.h's GEMMs where present) so tests can check that the
// vector path runs.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "cpu/dwconv_route.h"
#include "cpu/nhwc_avx2.h"
#if __has_include("cpu/nhwc_avx512.h")
#include "cpu/nhwc_avx512.h"  // defines DNA_FAST_AVX512_GEMM where its kernels are compiled
#endif

#ifndef DNA_FAST_CUDA_ARCH_LIST
#define DNA_FAST_CUDA_ARCH_LIST ""
#endif

namespace py = pybind11;

namespace {

// The vector ISA the whole extension was compiled for (setup.py's -mavx2 -mfma -mf16c, or nothing).
std::string isa_build() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2";
#else
  return "baseline";
#endif
}

// The best vector ISA of the CPU running now, as the kernels use them: "avx512" (F + BW + DQ + VL, what the
// target_clones "arch=skylake-avx512" clone needs), "avx2" (AVX2 + FMA), "baseline" (or not x86-64).
std::string isa_runtime() {
#if defined(__GNUC__) && defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return "avx512";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2";
#endif
  return "baseline";
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "dna_fast native operators (registered as torch.ops.dna_fast.*)";
  m.def("build_info", []() {
    py::dict d;
#ifdef WITH_CUDA
    d["cuda_ops"] = true;
#else
    d["cuda_ops"] = false;
#endif
    d["cuda_arch_list"] = std::string(DNA_FAST_CUDA_ARCH_LIST);
    d["cpu_isa_build"] = isa_build();
    d["cpu_isa_runtime"] = isa_runtime();
#ifdef DNA_FAST_NHWC_AVX2
    d["cpu_avx2_kernels"] = true;
#else
    d["cpu_avx2_kernels"] = false;
#endif
#ifdef DNA_FAST_AVX512_GEMM
    d["cpu_avx512_kernels"] = true;
#else
    d["cpu_avx512_kernels"] = false;
#endif
    return d;
  });
  m.def(
      "cpu_vector_calls",
      [](int bits) -> int64_t {
        int64_t avx2 = 0, avx512 = 0;
#ifdef DNA_FAST_NHWC_AVX2
        avx2 = dna_fast::nhwc::vector_calls.load(std::memory_order_relaxed);
#endif
#ifdef DNA_FAST_AVX512_GEMM
        avx512 = dna_fast::avx512::calls.load(std::memory_order_relaxed);
#endif
        return bits == 256 ? avx2 : bits == 512 ? avx512 : avx2 + avx512;
      },
      py::arg("bits") = 0,
      "Calls of the vector CPU kernels since load: bits=256 the AVX2 ones, 512 the AVX-512 ones, 0 (default) all; "
      "0 for kernels that were not compiled in.");
  m.def(
      "dwconv_route",
      [](int64_t k, int64_t stride, int64_t out_width, bool channels_last) {
        const bool onednn = dna_fast::onednn_conv_swish_available();
        if (!channels_last)
          return std::string(dna_fast::route_name(dna_fast::nchw_route(k, stride, out_width, onednn)));
#ifdef DNA_FAST_NHWC_AVX2
        return std::string(dna_fast::route_name(dna_fast::nhwc_route(k, onednn)));
#else
        return std::string(dna_fast::route_name(dna_fast::DwRoute::kConvEpilogue));
#endif
      },
      py::arg("k"), py::arg("stride"), py::arg("out_width"), py::arg("channels_last") = false,
      "Which implementation dwconv_bn_act runs on a CPU input of this kernel size, stride and output width: "
      "'direct' (the fused kernel), 'onednn_swish' (oneDNN's conv with the BN folded in and swish as its post-op) "
      "or 'eager' (the same conv, then an in-place swish; where this torch build lacks the oneDNN op); "
      "channels_last=True: for fp32 inputs with channels a multiple of 8 ('conv_epilogue' where the AVX2 kernel is "
      "not built in). DNA_FAST_DWCONV=direct|onednn_swish|eager forces one where it can run.");
  m.def("onednn_conv_swish_available", &dna_fast::onednn_conv_swish_available,
        "Whether this torch build has oneDNN's conv + swish post-op (mkldnn::_convolution_pointwise).");
}
