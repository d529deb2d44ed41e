// Which implementation dwconv_bn_act runs on a CPU input: NCHW (nchw_route) and channels_last fp32 with C % 8 == 0
// where nhwc_avx2.h's kernel is built in (nhwc_route; other channels_last inputs: oneDNN + a fused epilogue). Inline
// and ATen-free so module.cpp can report the route to the tests (dna_fast._C.dwconv_route).
//
// Measured (benchmarks/test_bench_kernels.py, batch 16, fused vs the eager sequence: conv with BN folded into its
// weight and bias, then an in-place silu; 3 quiet runs, 2-core Xeon, 2026-12-02): the direct kernel won only on wide
// planes at stride 1 with k = 3 (16x40x56x56: 1.51x); it lost at stride 2 (16x144x56x56 k3 s2: 0.85x), and oneDNN's
// conv + the fused BN / swish / sums pass lost everywhere else (0.87-0.99x: its output goes through memory once more
// than eager's in-place silu). Those shapes run the eager form itself.
//
// channels_last (same benchmark, same machine): the register-tiled kernel won at k = 3 (1.14-1.20x at every shape) and
// lost or tied at k = 5 / 7 (0.88x at 16x40x56x56 k7, 0.95x at k5, 0.98-1.04x elsewhere): k >= 5 runs the eager form.
//
// DNA_FAST_DWCONV=direct|eager (read at each call) forces one route on every input the route can take (the direct
// NCHW kernel exists for k = 3 only; the channels_last one for every k), for tests and A/B runs.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace dna_fast {

enum class DwRoute { kDirect, kEager, kConvEpilogue };

inline DwRoute nchw_route(int64_t k, int64_t stride, int64_t Wo) {
  if (const char* force = std::getenv("DNA_FAST_DWCONV")) {
    if (std::strcmp(force, "direct") == 0 && k == 3) return DwRoute::kDirect;
    if (std::strcmp(force, "eager") == 0) return DwRoute::kEager;
  }
  return (k == 3 && stride == 1 && Wo >= 24) ? DwRoute::kDirect : DwRoute::kEager;
}

inline DwRoute nhwc_route(int64_t k) {
  if (const char* force = std::getenv("DNA_FAST_DWCONV")) {
    if (std::strcmp(force, "direct") == 0) return DwRoute::kDirect;
    if (std::strcmp(force, "eager") == 0) return DwRoute::kEager;
  }
  return k == 3 ? DwRoute::kDirect : DwRoute::kEager;
}

inline const char* route_name(DwRoute r) {
  return r == DwRoute::kDirect ? "direct" : r == DwRoute::kEager ? "eager" : "conv_epilogue";
}

}  // namespace dna_fast
