// CPU kernel of dwconv_bn_act: depthwise conv (padding k / 2) + folded BN + swish (+ per-(n, c) spatial sums).
//
// Direct kernel (NCHW, wide planes, k = 3): at::parallel_for over (n, c) planes; each plane is copied once, as fp32,
// into a zero-padded thread-local buffer so the tap loops need no bounds checks, then each output row is computed
// with the taps unrolled (K, S are template constants) and the row loop vectorized by the compiler (function clones
// for AVX-512 / AVX2 / baseline, chosen at load time), BN + swish + sums applied while the row is in cache.
// channels_last fp32 with C % 8 == 0, k = 3: the register-tiled kernel of nhwc_avx2.h (7 outputs' accumulators in ymm
// registers, BN + swish + sums in its epilogue; an earlier direct channels_last kernel that kept one accumulator row
// in memory per pixel, 3 loads + 1 store per FMA, was slower than oneDNN); at k >= 5 the eager form (dwconv_route.h:
// oneDNN's conv with swish as its post-op, or the conv then an in-place silu).
// Other channels_last inputs: ATen's depthwise conv in fp32, then one fused epilogue pass. Other NCHW shapes: the
// eager form (dwconv_route.h says why). Tried and slower at the dna shapes: the direct NCHW kernel on 14x14 / 7x7
// planes (rows shorter than one AVX-512 vector run scalar).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "dna_fast/checks.h"
#include "dna_fast/cpu_vec.h"
#include "dna_fast/dwconv.h"
#include "dna_fast/math.h"
#include "dwconv_route.h"
#include "nhwc_avx2.h"

namespace dna_fast {
namespace {

// One output row of a plane: out[ox] = swish(sum_taps w * in_padded * scale + shift).
template <int K, int S>
DNA_ALWAYS_INLINE void dw_row(const float* __restrict__ in, int64_t Wp, const float* __restrict__ w,
                              float* __restrict__ out, int64_t Wo, float scale, float shift) {
  for (int64_t ox = 0; ox < Wo; ++ox) {
    float acc = 0.f;
#pragma GCC unroll 7
    for (int ky = 0; ky < K; ++ky) {
#pragma GCC unroll 7
      for (int kx = 0; kx < K; ++kx) acc += w[ky * K + kx] * in[ky * Wp + ox * S + kx];
    }
    out[ox] = fast_swishf(acc * scale + shift);
  }
}

// Sum of n floats with 16 independent partial sums (vectorizable without reassociation flags).
DNA_ALWAYS_INLINE float row_sum(const float* __restrict__ v, int64_t n) {
  float part[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) part[j] += v[i + j];
  float s = 0.f;
  for (; i < n; ++i) s += v[i];
  for (int j = 0; j < 16; ++j) s += part[j];
  return s;
}

template <int K, int S>
DNA_ALWAYS_INLINE float dw_plane_impl(const float* in, int64_t Wp, const float* w, float* out, int64_t Ho,
                                      int64_t Wo, float scale, float shift, bool with_sums) {
  float sum = 0.f;
  for (int64_t oy = 0; oy < Ho; ++oy) {
    float* o = out + oy * Wo;
    dw_row<K, S>(in + oy * S * Wp, Wp, w, o, Wo, scale, shift);
    if (with_sums) sum += row_sum(o, Wo);
  }
  return sum;
}

// Computes one plane from the padded fp32 input into fp32 `out`; returns the sum of the outputs (0 if !with_sums).
DNA_CPU_CLONES float dw_plane(int k, int s, const float* in, int64_t Wp, const float* w, float* out, int64_t Ho,
                              int64_t Wo, float scale, float shift, bool with_sums) {
#define DNA_DW_CASE(K_, S_) \
  if (k == K_ && s == S_) return dw_plane_impl<K_, S_>(in, Wp, w, out, Ho, Wo, scale, shift, with_sums);
  DNA_DW_CASE(3, 1) DNA_DW_CASE(3, 2)
#undef DNA_DW_CASE
  TORCH_INTERNAL_ASSERT(false, "dw_plane: unsupported k/stride");
  return 0.f;
}

// Epilogue of the conv path on one contiguous run of n fp32 conv outputs: y = swish(z * scale + shift), scale/shift
// either one value for the run (NCHW plane) or one per element (channels_last row of C). Returns the run's sum when
// `part` is null; with `part` (channels_last) adds each y to part[j] instead.
template <bool kPerElem>
DNA_ALWAYS_INLINE void epilogue_run(const float* __restrict__ z, float* __restrict__ y, int64_t n,
                                    const float* __restrict__ sc, const float* __restrict__ sh) {
  for (int64_t j = 0; j < n; ++j) y[j] = fast_swishf(z[j] * sc[kPerElem ? j : 0] + sh[kPerElem ? j : 0]);
}

DNA_CPU_CLONES void epilogue_plane(const float* z, float* y, int64_t n, float sc, float sh) {
  epilogue_run<false>(z, y, n, &sc, &sh);
}

DNA_CPU_CLONES void epilogue_row(const float* z, float* y, int64_t n, const float* sc, const float* sh) {
  epilogue_run<true>(z, y, n, sc, sh);
}

DNA_CPU_CLONES void add_row(float* __restrict__ acc, const float* __restrict__ v, int64_t n) {
  for (int64_t j = 0; j < n; ++j) acc[j] += v[j];
}

template <typename scalar_t>
void store_row(const float* src, scalar_t* dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    std::copy(src, src + n, dst);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
  }
}

template <typename scalar_t>
void run_nchw(const at::Tensor& x, const float* w, const float* sc, const float* sh, int64_t k, int64_t s,
              at::Tensor& y, float* sums) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = y.size(2), Wo = y.size(3), pad = dw_pad(k);
  const int64_t Hp = dw_in_extent(Ho, k, s), Wp = dw_in_extent(Wo, k, s);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, N * C, 1, [&](int64_t b, int64_t e) {
    std::vector<float> in(Hp * Wp), out(std::is_same_v<scalar_t, float> ? 0 : Ho * Wo);
    for (int64_t p = b; p < e; ++p) {
      const int64_t c = p % C;
      const scalar_t* src = xp + p * H * W;
      // zero-padded fp32 copy of the rows/columns the outputs read
      for (int64_t r = 0; r < Hp; ++r) {
        float* dst = in.data() + r * Wp;
        const int64_t iy = r - pad;
        if (!dw_inside(iy, H)) {
          std::fill(dst, dst + Wp, 0.f);
          continue;
        }
        const int64_t ncopy = std::min(W, Wp - pad);
        std::fill(dst, dst + pad, 0.f);
        for (int64_t i = 0; i < ncopy; ++i) dst[pad + i] = static_cast<float>(src[iy * W + i]);
        std::fill(dst + pad + ncopy, dst + Wp, 0.f);
      }
      float* o = std::is_same_v<scalar_t, float> ? reinterpret_cast<float*>(yp + p * Ho * Wo) : out.data();
      const float sum = dw_plane(static_cast<int>(k), static_cast<int>(s), in.data(), Wp, w + c * k * k, o, Ho, Wo,
                                 sc[c], sh[c], sums != nullptr);
      if (sums) sums[p] = sum;
      if constexpr (!std::is_same_v<scalar_t, float>) store_row(o, yp + p * Ho * Wo, Ho * Wo);
    }
  });
}

// Any layout: the depthwise conv by ATen (oneDNN) in fp32, then one fused pass for BN + swish (+ sums) instead of
// eager's three (mul, add, silu). Used where the direct kernel does not pay (small planes, k = 7, channels_last).
template <typename scalar_t>
void run_conv_epilogue(const at::Tensor& x, const at::Tensor& w, const float* sc, const float* sh, int64_t k,
                       int64_t s, bool cl, at::Tensor& y, float* sums) {
  const int64_t N = y.size(0), C = y.size(1), HWo = y.size(2) * y.size(3);
  const at::Tensor z = contiguous_as(
      at::conv2d(x.to(at::kFloat), w, {}, {s, s}, {dw_pad(k), dw_pad(k)}, {1, 1}, C), cl);
  const float* zp = z.const_data_ptr<float>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  constexpr bool kF32 = std::is_same_v<scalar_t, float>;
  if (!cl) {
    at::parallel_for(0, N * C, 1, [&](int64_t b, int64_t e) {
      std::vector<float> buf(kF32 ? 0 : HWo);
      for (int64_t p = b; p < e; ++p) {
        float* o = kF32 ? reinterpret_cast<float*>(yp + p * HWo) : buf.data();
        epilogue_plane(zp + p * HWo, o, HWo, sc[p % C], sh[p % C]);
        if (sums) sums[p] = row_sum(o, HWo);
        if constexpr (!kF32) store_row(o, yp + p * HWo, HWo);
      }
    });
    return;
  }
  // channels_last: rows of C; sums per sample, so parallel over samples' row chunks with per-chunk partials
  const int64_t chunk = std::max<int64_t>(1, (HWo + 7) / 8);
  const int64_t nchunks = (HWo + chunk - 1) / chunk;
  at::Tensor part = sums ? at::zeros({N, nchunks, C}, z.options()) : at::Tensor();
  float* pp = sums ? part.mutable_data_ptr<float>() : nullptr;
  at::parallel_for(0, N * nchunks, 1, [&](int64_t b, int64_t e) {
    std::vector<float> buf(C);
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / nchunks, r0 = (t % nchunks) * chunk, r1 = std::min(HWo, r0 + chunk);
      for (int64_t r = n * HWo + r0; r < n * HWo + r1; ++r) {
        float* o = kF32 ? reinterpret_cast<float*>(yp + r * C) : buf.data();
        epilogue_row(zp + r * C, o, C, sc, sh);
        if (pp) add_row(pp + t * C, o, C);
        if constexpr (!kF32) store_row(o, yp + r * C, C);
      }
    }
  });
  if (sums) {
    const at::Tensor total = part.sum(1);
    std::copy(total.const_data_ptr<float>(), total.const_data_ptr<float>() + N * C, sums);
  }
}

// Whether the direct channels_last kernel (nhwc_avx2.h) runs: fp32, C a multiple of 8, built with AVX2 + FMA.
inline bool use_nhwc(const at::Tensor& x, bool cl) {
#ifdef DNA_FAST_NHWC_AVX2
  return cl && x.scalar_type() == at::kFloat && x.size(1) % 8 == 0;
#else
  (void)x;
  (void)cl;
  return false;
#endif
}

#ifdef DNA_FAST_NHWC_AVX2
// channels_last fp32: the register-tiled direct kernel with BN + swish (+ sums) in its epilogue, one pass.
void run_nhwc(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale, const at::Tensor& shift, int64_t k,
              int64_t s, at::Tensor& y, float* sums) {
  const int64_t N = x.size(0), C = x.size(1), Ho = y.size(2), Wo = y.size(3);
  const at::Tensor wt = nhwc::tap_major(w);
  at::Tensor rows = sums ? at::zeros({N, Ho, C}, x.options()) : at::Tensor();
  const nhwc::RowEpilogue epi{true, scale.const_data_ptr<float>(), shift.const_data_ptr<float>()};
  const nhwc::RowOutputs out{sums ? rows.mutable_data_ptr<float>() : nullptr, nullptr, nullptr};
  TORCH_INTERNAL_ASSERT(nhwc::dw_forward(x.const_data_ptr<float>(), N, x.size(2), x.size(3), C,
                                         wt.const_data_ptr<float>(), k, s, Ho, Wo, y.mutable_data_ptr<float>(), epi,
                                         out));
  if (sums) {
    const at::Tensor total = rows.sum(1);
    std::copy(total.const_data_ptr<float>(), total.const_data_ptr<float>() + N * C, sums);
  }
}
#endif

using ConvPointwise = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                  at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t, c10::string_view,
                                  c10::List<std::optional<c10::Scalar>>, std::optional<c10::string_view>);

// mkldnn::_convolution_pointwise where this torch build registers it (with oneDNN enabled), else nullopt.
const std::optional<c10::TypedOperatorHandle<ConvPointwise>>& conv_pointwise_op() {
  static const std::optional<c10::TypedOperatorHandle<ConvPointwise>> op =
      []() -> std::optional<c10::TypedOperatorHandle<ConvPointwise>> {
    if (!at::hasMKLDNN()) return std::nullopt;
    const auto h = c10::Dispatcher::singleton().findSchema({"mkldnn::_convolution_pointwise", ""});
    if (!h) return std::nullopt;
    return h->typed<ConvPointwise>();
  }();
  return op;
}

// The eager form (dwconv_route.h): oneDNN's conv with the BN folded into its weight and bias, the swish either as
// oneDNN's post-op (onednn: one pass over the output) or an in-place silu after it. fp32 in, fp32 out.
at::Tensor eager_conv_swish(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                            const at::Tensor& shift, int64_t k, int64_t s, bool onednn) {
  const at::Tensor wf = w * scale.view({-1, 1, 1, 1});
  const int64_t p = dw_pad(k);
  if (onednn) {
    return conv_pointwise_op()->call(x, wf, shift, {p, p}, {s, s}, {1, 1}, x.size(1), "swish",
                                     c10::List<std::optional<c10::Scalar>>(), std::nullopt);
  }
  at::Tensor z = at::conv2d(x, wf, shift, {s, s}, {p, p}, {1, 1}, x.size(1));
  at::silu_(z);
  return z;
}

// fp16 / bf16 NCHW inputs on an eager route: the eager form in fp32, rounded into y.
template <typename scalar_t>
void run_eager_form(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale, const at::Tensor& shift,
                    int64_t k, int64_t s, bool onednn, at::Tensor& y, at::Tensor& sums, bool with_sums) {
  const at::Tensor z = eager_conv_swish(x.to(at::kFloat), w, scale, shift, k, s, onednn);
  if (with_sums) sums.copy_(z.sum({2, 3}));
  y.copy_(z);
}

std::tuple<at::Tensor, at::Tensor> dwconv_bn_act_cpu(const at::Tensor& x_, const at::Tensor& weight,
                                                     const at::Tensor& scale_, const at::Tensor& shift_,
                                                     int64_t stride, bool with_sums) {
  check_dwconv_args(x_, weight, scale_, shift_, stride);
  const bool cl = prefers_channels_last(x_);
  const at::Tensor x = contiguous_as(x_, cl);
  const int64_t N = x.size(0), C = x.size(1), k = weight.size(2);
  const int64_t Ho = dw_out_size(x.size(2), k, stride), Wo = dw_out_size(x.size(3), k, stride);
  const auto y_options = x.options().memory_format(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor sums = with_sums ? at::zeros({N, C}, f32) : at::empty({0}, f32);
  if (N * C * Ho * Wo == 0) return {at::empty({N, C, Ho, Wo}, y_options), sums};
  const at::Tensor w = weight.to(at::kFloat).contiguous();
  const at::Tensor scale = float_contiguous(scale_), shift = float_contiguous(shift_);
  // double runs through the fp32 kernel (the op computes in fp32)
  if (x.scalar_type() == at::kDouble) {
    auto [y32, s32] = dwconv_bn_act_cpu(x.to(at::kFloat), weight, scale, shift, stride, with_sums);
    return {y32.to(at::kDouble), with_sums ? s32 : sums};
  }
  // fp32 channels_last with C % 8 == 0 where nhwc_avx2.h is built in: its kernel at k = 3, the eager form elsewhere;
  // fp32 NCHW: the eager form where nchw_route says so. The eager form's conv output is the result (no copy).
  const bool onednn = onednn_conv_swish_available();
  const DwRoute route = use_nhwc(x, cl) ? nhwc_route(k, onednn)
                        : cl            ? DwRoute::kConvEpilogue
                                        : nchw_route(k, stride, Wo, onednn);
  const bool eager = route == DwRoute::kEager || route == DwRoute::kOnednnSwish;
  if (x.scalar_type() == at::kFloat && eager) {
    at::Tensor y = eager_conv_swish(x, w, scale, shift, k, stride, route == DwRoute::kOnednnSwish);
    if (with_sums) sums.copy_(y.sum({2, 3}));
    return {y, sums};
  }
  at::Tensor y = at::empty({N, C, Ho, Wo}, y_options);
  float* sp = with_sums ? sums.mutable_data_ptr<float>() : nullptr;
#ifdef DNA_FAST_NHWC_AVX2
  if (use_nhwc(x, cl) && route == DwRoute::kDirect) {
    run_nhwc(x, w, scale, shift, k, stride, y, sp);
    return {y, sums};
  }
#endif
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dwconv_bn_act_cpu", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      if (route == DwRoute::kDirect)
        run_nchw<scalar_t>(x, w.const_data_ptr<float>(), scale.const_data_ptr<float>(),
                           shift.const_data_ptr<float>(), k, stride, y, sp);
      else if (eager)
        run_eager_form<scalar_t>(x, w, scale, shift, k, stride, route == DwRoute::kOnednnSwish, y, sums, with_sums);
      else
        run_conv_epilogue<scalar_t>(x, w, scale.const_data_ptr<float>(), shift.const_data_ptr<float>(), k, stride, cl,
                                    y, sp);
    }
  });
  return {y, sums};
}

}  // namespace

bool onednn_conv_swish_available() { return conv_pointwise_op().has_value(); }

TORCH_LIBRARY_IMPL(dna_fast, CPU, m) { m.impl("dwconv_bn_act", &dwconv_bn_act_cpu); }

}  // namespace dna_fast
