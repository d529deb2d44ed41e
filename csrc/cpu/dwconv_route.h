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
// The eager form's swish as oneDNN's post-op (route "onednn_swish", 2026-12-03): oneDNN's depthwise conv with the BN
// folded into its weight and bias and swish applied as the conv writes its output (mkldnn::_convolution_pointwise,
// the op Inductor's CPU conv fusions call), one pass over the output instead of conv + in-place silu's two. Measured
// on the 2-core AMD EPYC (AVX2), 2 threads, quiet, 20:30 UTC: a paired, order-alternating A/B against the eager
// sequence (40 rounds per shape) gave medians 1.00-1.10x at the twelve shapes the eager form took (0.99x at
// channels_last 16x40x56x56 k7; an A/A control of eager against itself read 0.975-1.004x); the benchmark table
// 0.97-1.12x (the two NCHW k = 7 rows at 0.97-0.99x, where the conv's arithmetic dominates). It replaces the eager
// form wherever this torch build has the op and oneDNN (onednn_conv_swish_available); the eager sequence is the
// fallback.
//
// Tried and not kept (2026-12-04): the direct NCHW kernel as one flat run per plane over zero-padded phase planes
// (stride 2 as four unit-stride planes, 32 outputs' accumulators in registers), so that 14-wide rows and stride 2
// fill whole vectors, and k = 5 / 7 instantiated. Paired A/B on a quiet machine (tools/ab_routes.py, 40 rounds,
// 2 threads, EPYC AVX2, 15:31 UTC, load 0.91) against the eager sequence: 0.90x at 16x40x56x56 k3 s1 (the row kernel
// here: 1.30x), 0.98x at 16x480x14x14 k3, 1.03x [0.98, 1.06] at 16x144x56x56 k3 s2; at k7 0.57-0.89x against oneDNN
// (timed under load). Earlier A/Bs that day, at a 1-minute load of 2-3 just after pausing the study's workers, read
// 1.09-1.20x for k = 3 and put the two kernels level at 56x56: the quiet one decides.
//
// The op as shipped against the benchmark's eager baseline (BN folded once, outside the call), paired
// (tools/ab_routes.py --routes auto,baseline, 60 rounds, 2 threads, EPYC AVX2, 2026-12-04 18:04 UTC, quiet): every
// benchmark shape 0.99-2.27x, the NCHW k = 7 ones at 0.99x [0.98, 1.02] and [0.97, 1.01], as an A/A control reads
// (0.98-0.99x); onednn_swish 1.03-1.10x the eager sequence at eight small NCHW shapes (4x4-28x28 planes), so no
// size threshold.
//
// DNA_FAST_DWCONV=direct|onednn_swish|eager (read at each call) forces one route on every input the route can take
// (the direct NCHW kernel exists for k = 3 only, the channels_last one for every k, onednn_swish where available),
// for tests and A/B runs.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace dna_fast {

enum class DwRoute { kDirect, kEager, kOnednnSwish, kConvEpilogue };

// Whether mkldnn::_convolution_pointwise (oneDNN conv + swish post-op) exists in this torch build with oneDNN
// enabled; defined in dwconv_bn_act_kernel.cpp (the one place that calls the op).
bool onednn_conv_swish_available();

// Where the direct kernels do not pay: oneDNN's conv + swish post-op where available, else the eager sequence.
inline DwRoute eager_form(bool onednn) { return onednn ? DwRoute::kOnednnSwish : DwRoute::kEager; }

// The route DNA_FAST_DWCONV forces (where it can run), or kConvEpilogue for none (the callers then choose by shape).
inline DwRoute forced_route(bool direct_exists, bool onednn) {
  if (const char* force = std::getenv("DNA_FAST_DWCONV")) {
    if (std::strcmp(force, "direct") == 0 && direct_exists) return DwRoute::kDirect;
    if (std::strcmp(force, "eager") == 0) return DwRoute::kEager;
    if (std::strcmp(force, "onednn_swish") == 0 && onednn) return DwRoute::kOnednnSwish;
  }
  return DwRoute::kConvEpilogue;
}

inline DwRoute nchw_route(int64_t k, int64_t stride, int64_t Wo, bool onednn) {
  const DwRoute forced = forced_route(k == 3, onednn);
  if (forced != DwRoute::kConvEpilogue) return forced;
  return (k == 3 && stride == 1 && Wo >= 24) ? DwRoute::kDirect : eager_form(onednn);
}

inline DwRoute nhwc_route(int64_t k, bool onednn) {
  const DwRoute forced = forced_route(true, onednn);
  if (forced != DwRoute::kConvEpilogue) return forced;
  return k == 3 ? DwRoute::kDirect : eager_form(onednn);
}

inline const char* route_name(DwRoute r) {
  return r == DwRoute::kDirect ? "direct" : r == DwRoute::kEager ? "eager"
         : r == DwRoute::kOnednnSwish ? "onednn_swish" : "conv_epilogue";
}

}  // namespace dna_fast
