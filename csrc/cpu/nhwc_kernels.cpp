// CPU kernels of the rating engine's channels_last passes (dna_fast._rating_engine):
//   dwconv_stats: plain depthwise conv + the per-output-row mean and M2 of its output (train-mode BN statistics of
//     the conv output without another pass over it);
//   swish_rows_: in-place swish(x * scale + shift) over a [rows, C] matrix (+ per-group column sums: the SE squeeze);
//   linear_swish: swish(x @ w + bias), the 1x1 expansion with its folded BN and activation in one register-blocked pass;
//   linear_sq_err: per group of rows (per image), the sums of e^2 and of |e| for e = (x * gate) @ w + offset + shift:
//     the last layer's SE gate, projection and loss (squared and absolute error) in one pass, the product never
//     stored;
//   linear_col_dev: per column, sum of ((x * gate) @ w - mean)^2: the train-mode BN statistics of the last layer's
//     projection during calibration (its mean follows from the SE sums and the gate), the product never stored.
// fp32 with C % 8 == 0 runs the AVX2 kernels of nhwc_avx2.h; anything else runs the same math with ATen ops.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "dna_fast/checks.h"
#include "dna_fast/dwconv.h"
#include "nhwc_avx2.h"

namespace dna_fast {
namespace {

bool vectorizable(const at::Tensor& x, int64_t C) {
#ifdef DNA_FAST_NHWC_AVX2
  return x.scalar_type() == at::kFloat && C % 8 == 0;
#else
  (void)x;
  (void)C;
  return false;
#endif
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dwconv_stats_cpu(const at::Tensor& x_, const at::Tensor& weight,
                                                                int64_t stride) {
  constexpr const char* op = "dwconv_stats";
  TORCH_CHECK(x_.dim() == 4, op, ": expected a 4-D input [N, C, H, W], got ", x_.dim(), "-D");
  TORCH_CHECK(x_.scalar_type() == at::kFloat, op, ": expected fp32, got ", x_.scalar_type());
  const int64_t N = x_.size(0), C = x_.size(1);
  check_dw_weight(weight, C, stride, x_.device(), op, "weight");
  const int64_t k = weight.size(2);
  const int64_t Ho = dw_out_size(x_.size(2), k, stride), Wo = dw_out_size(x_.size(3), k, stride);
  const at::Tensor x = x_.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor w = weight.to(at::kFloat).contiguous();
  if (!vectorizable(x, C) || x.numel() == 0 || Ho * Wo == 0) {
    const at::Tensor y =
        at::conv2d(x, w, {}, {stride, stride}, {dw_pad(k), dw_pad(k)}, {1, 1}, C).contiguous(
            at::MemoryFormat::ChannelsLast);
    const at::Tensor rows = y.permute({0, 2, 3, 1}).reshape({N * Ho, Wo, C});
    const at::Tensor mean = rows.mean(1);
    const at::Tensor m2 = (rows - mean.unsqueeze(1)).square().sum(1);
    return {y, mean, m2};
  }
  at::Tensor y = at::empty({N, C, Ho, Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor mean = at::empty({N * Ho, C}, x.options()), m2 = at::empty({N * Ho, C}, x.options());
#ifdef DNA_FAST_NHWC_AVX2
  const at::Tensor wt = nhwc::tap_major(w);
  const nhwc::RowEpilogue epi{false, nullptr, nullptr};
  const nhwc::RowOutputs out{nullptr, mean.mutable_data_ptr<float>(), m2.mutable_data_ptr<float>()};
  TORCH_INTERNAL_ASSERT(nhwc::dw_forward(x.const_data_ptr<float>(), N, x.size(2), x.size(3), C,
                                         wt.const_data_ptr<float>(), k, stride, Ho, Wo, y.mutable_data_ptr<float>(),
                                         epi, out));
#endif
  return {y, mean, m2};
}

at::Tensor swish_rows_cpu(at::Tensor& x, const std::optional<at::Tensor>& scale_,
                          const std::optional<at::Tensor>& shift_, int64_t groups) {
  constexpr const char* op = "swish_rows_";
  check_swish_rows_args(x, groups, op);
  TORCH_CHECK(x.scalar_type() == at::kFloat, op, ": expected fp32, got ", x.scalar_type());
  const int64_t R = x.size(0), C = x.size(1);
  const at::Tensor scale = checked_row_vector(x, scale_, op, "scale");
  const at::Tensor shift = checked_row_vector(x, shift_, op, "shift");
  at::Tensor sums = at::zeros({groups, C}, x.options());
  if (R == 0 || C == 0) return sums;
  if (!vectorizable(x, C)) {
    if (scale.defined()) x.mul_(scale);
    if (shift.defined()) x.add_(shift);
    at::silu_(x);
    if (groups > 0) sums.copy_(x.view({groups, R / groups, C}).sum(1));
    return sums;
  }
#ifdef DNA_FAST_NHWC_AVX2
  const float* sc = scale.defined() ? scale.const_data_ptr<float>() : nullptr;
  const float* sh = shift.defined() ? shift.const_data_ptr<float>() : nullptr;
  float* xp = x.mutable_data_ptr<float>();
  float* sp = sums.mutable_data_ptr<float>();
  const int64_t per = groups > 0 ? R / groups : R;
  // parallel over groups (each owns its sums row); without sums over row blocks
  if (groups > 0) {
    at::parallel_for(0, groups, 1, [&](int64_t b, int64_t e) {
      for (int64_t g = b; g < e; ++g) nhwc::swish_rows(xp + g * per * C, per, C, sc, sh, sp + g * C);
    });
  } else {
    at::parallel_for(0, R, std::max<int64_t>(1, 16384 / C), [&](int64_t b, int64_t e) {
      nhwc::swish_rows(xp + b * C, e - b, C, sc, sh, nullptr);
    });
  }
#endif
  return sums;
}

at::Tensor linear_swish_cpu(const at::Tensor& x_, const at::Tensor& w_, const at::Tensor& bias_) {
  constexpr const char* op = "linear_swish";
  TORCH_CHECK(x_.dim() == 2 && w_.dim() == 2 && x_.size(1) == w_.size(0), op,
              ": expected x [rows, K] and weight [K, N], got ", x_.sizes(), " and ", w_.sizes());
  const int64_t R = x_.size(0), K = x_.size(1), N = w_.size(1);
  TORCH_CHECK(bias_.dim() == 1 && bias_.size(0) == N, op, ": bias must have shape [N] = [", N, "], got ",
              bias_.sizes());
  TORCH_CHECK(x_.device() == w_.device() && x_.device() == bias_.device(), op, ": tensors on different devices");
  TORCH_CHECK(at::isFloatingType(x_.scalar_type()), op, ": expected a floating-point input, got ", x_.scalar_type());
  if (!vectorizable(x_, N) || R == 0 || K == 0)
    return at::silu(at::addmm(bias_.to(x_.scalar_type()), x_, w_.to(x_.scalar_type())));
  const at::Tensor x = x_.stride(1) == 1 ? x_ : x_.contiguous();
  const at::Tensor w = w_.to(at::kFloat).contiguous(), bias = float_contiguous(bias_);
  at::Tensor y = at::empty({R, N}, x.options());
#ifdef DNA_FAST_NHWC_AVX2
  const float* xp = x.const_data_ptr<float>();
  const int64_t ldx = x.stride(0);
  at::parallel_for(0, (R + 3) / 4, 16, [&](int64_t b, int64_t e) {
    nhwc::gemm_swish_rows(xp, ldx, w.const_data_ptr<float>(), N, K, bias.const_data_ptr<float>(),
                          y.mutable_data_ptr<float>(), 4 * b, std::min(R, 4 * e));
  });
#endif
  return y;
}

// expand_dwconv_bn_act / expand_dwconv_stats: the 1x1 expansion (+ bias + swish) fused into the depthwise conv.
// x [N, Cin, H, W] (any layout; read as channels_last), w1 [Cin, C], b1 [C], w_dw [C, 1, k, k]. With scale/shift:
// (swish(conv * scale + shift) channels_last, sums [N, C], empty); without: (conv channels_last, row means, row M2).
std::tuple<at::Tensor, at::Tensor, at::Tensor> expand_dwconv_impl(const at::Tensor& x_, const at::Tensor& w1_,
                                                                  const at::Tensor& b1_, const at::Tensor& wdw_,
                                                                  const at::Tensor* scale_, const at::Tensor* shift_,
                                                                  int64_t stride, const char* op) {
  const int64_t C = check_expand_dwconv_args(x_, w1_, b1_, wdw_, scale_, shift_, stride, op);
  TORCH_CHECK(x_.scalar_type() == at::kFloat, op, ": expected fp32, got ", x_.scalar_type());
  const int64_t N = x_.size(0), Cin = x_.size(1), H = x_.size(2), W = x_.size(3);
  const int64_t k = wdw_.size(2);
  const bool act = scale_ != nullptr;
  const int64_t Ho = dw_out_size(H, k, stride), Wo = dw_out_size(W, k, stride);
  const at::Tensor x = x_.contiguous(at::MemoryFormat::ChannelsLast);
  if (!vectorizable(x, C) || x.numel() == 0 || Ho * Wo == 0) {  // the same math with the separate ops
    const at::Tensor h = linear_swish_cpu(x.permute({0, 2, 3, 1}).reshape({N * H * W, Cin}), w1_, b1_)
                             .view({N, H, W, C}).permute({0, 3, 1, 2});
    if (act) {
      static const auto dwconv_bn_act =
          c10::Dispatcher::singleton()
              .findSchemaOrThrow("dna_fast::dwconv_bn_act", "")
              .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                        const at::Tensor&, int64_t, bool)>();
      auto [y, sums] = dwconv_bn_act.call(h.contiguous(at::MemoryFormat::ChannelsLast), wdw_, *scale_, *shift_,
                                          stride, true);
      return {y, sums, at::empty({0, C}, x.options())};
    }
    return dwconv_stats_cpu(h, wdw_, stride);
  }
  at::Tensor y = at::empty({N, C, Ho, Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor a = at::zeros({N * Ho, C}, x.options()), b = at::empty({act ? 0 : N * Ho, C}, x.options());
#ifdef DNA_FAST_NHWC_AVX2
  const at::Tensor w1 = w1_.to(at::kFloat).contiguous(), b1 = float_contiguous(b1_);
  const at::Tensor wt = nhwc::tap_major(wdw_);
  const at::Tensor scale = act ? float_contiguous(*scale_) : at::Tensor(), shift = act ? float_contiguous(*shift_) : at::Tensor();
  const nhwc::RowEpilogue epi{act, act ? scale.const_data_ptr<float>() : nullptr,
                              act ? shift.const_data_ptr<float>() : nullptr};
  const nhwc::RowOutputs out{act ? a.mutable_data_ptr<float>() : nullptr, act ? nullptr : a.mutable_data_ptr<float>(),
                             act ? nullptr : b.mutable_data_ptr<float>()};
  TORCH_INTERNAL_ASSERT(nhwc::expand_dw_forward(x.const_data_ptr<float>(), N, H, W, Cin, w1.const_data_ptr<float>(),
                                                b1.const_data_ptr<float>(), C, wt.const_data_ptr<float>(), k, stride,
                                                Ho, Wo, y.mutable_data_ptr<float>(), epi, out));
#endif
  if (act) return {y, a.view({N, Ho, C}).sum(1), b};
  return {y, a, b};
}

std::tuple<at::Tensor, at::Tensor> expand_dwconv_bn_act_cpu(const at::Tensor& x, const at::Tensor& w1,
                                                            const at::Tensor& b1, const at::Tensor& w_dw,
                                                            const at::Tensor& scale, const at::Tensor& shift,
                                                            int64_t stride) {
  auto [y, sums, unused] = expand_dwconv_impl(x, w1, b1, w_dw, &scale, &shift, stride, "expand_dwconv_bn_act");
  return {y, sums};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> expand_dwconv_stats_cpu(const at::Tensor& x, const at::Tensor& w1,
                                                                       const at::Tensor& b1, const at::Tensor& w_dw,
                                                                       int64_t stride) {
  return expand_dwconv_impl(x, w1, b1, w_dw, nullptr, nullptr, stride, "expand_dwconv_stats");
}

// The shared arguments of linear_sq_err and linear_col_dev (checks.h's GatedShape) and their plain paths.
struct GatedLinear {
  const at::Tensor& x;
  const at::Tensor& w;
  const std::optional<at::Tensor>& gate;
  int64_t R, K, N, G, per;

  GatedLinear(const at::Tensor& x_, const at::Tensor& w_, const std::optional<at::Tensor>& gate_, const char* op)
      : x(x_), w(w_), gate(gate_) {
    const GatedShape s = check_gated_linear(x, w, gate, op);
    R = s.R, K = s.K, N = s.N, G = s.G, per = s.per;
  }
  GatedShape shape() const { return {R, K, N, G, per}; }
  // whether the AVX2 GEMM runs (else the fp64 product below)
  bool fast() const { return vectorizable(x, N) && R > 0 && K > 0; }
  // (x * gate) @ w in fp64: the plain path
  at::Tensor product_double() const {
    at::Tensor xd = x.to(at::kDouble);
    if (gate.has_value()) xd = (xd.view({G, per, K}) * gate->to(at::kDouble).unsqueeze(1)).view({R, K});
    return at::mm(xd, w.to(at::kDouble));
  }
  // x with unit column stride (a column slice of a wider matrix is kept as it is)
  at::Tensor rows() const { return x.stride(1) == 1 ? x : x.contiguous(); }
  // one fp32 weight matrix per group with the gate folded in: [G, K, N]
  at::Tensor group_weights() const {
    const at::Tensor wf = w.to(at::kFloat).contiguous();
    return gate.has_value() ? (gate->to(at::kFloat).unsqueeze(2) * wf.unsqueeze(0)).contiguous() : wf.unsqueeze(0);
  }
};

std::tuple<at::Tensor, at::Tensor> linear_sq_err_cpu(const at::Tensor& x_, const at::Tensor& w_,
                                                     const at::Tensor& offset_, const at::Tensor& shift_,
                                                     const std::optional<at::Tensor>& gate_) {
  constexpr const char* op = "linear_sq_err";
  const GatedLinear lin(x_, w_, gate_, op);
  const int64_t K = lin.K, N = lin.N, G = lin.G, per = lin.per;
  check_sq_err_terms(x_, offset_, shift_, lin.shape(), op);
  if (!lin.fast()) {
    const at::Tensor e = (lin.product_double() + offset_.to(at::kDouble) + shift_.to(at::kDouble)).view({G, per, N});
    return {e.square().sum({1, 2}), e.abs().sum({1, 2})};
  }
  const at::Tensor x = lin.rows(), wg = lin.group_weights();
  const at::Tensor off = offset_.to(at::kFloat).contiguous(), shift = float_contiguous(shift_);
  at::Tensor sq = at::zeros({G}, x.options().dtype(at::kDouble)), ab = at::zeros({G}, sq.options());
#ifdef DNA_FAST_NHWC_AVX2
  // one partial pair per block of rows (parallel over blocks), added per group at the end
  const int64_t per_group = (per + nhwc::kRowBlock - 1) / nhwc::kRowBlock, blocks = G * per_group;
  std::vector<nhwc::ErrSums> part(blocks);
  at::parallel_for(0, blocks, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t g = i / per_group, r0 = g * per + (i % per_group) * nhwc::kRowBlock;
      part[i] = nhwc::gemm_err_rows(x.const_data_ptr<float>(), x.stride(0), wg.const_data_ptr<float>() + g * K * N,
                                    N, K, off.const_data_ptr<float>(), shift.const_data_ptr<float>(), r0,
                                    std::min((g + 1) * per, r0 + nhwc::kRowBlock));
    }
  });
  double* sq_p = sq.mutable_data_ptr<double>();
  double* ab_p = ab.mutable_data_ptr<double>();
  for (int64_t i = 0; i < blocks; ++i) {
    sq_p[i / per_group] += part[i].sq;
    ab_p[i / per_group] += part[i].ab;
  }
#endif
  return {sq, ab};
}

at::Tensor linear_col_dev_cpu(const at::Tensor& x_, const at::Tensor& w_, const at::Tensor& mean_,
                              const std::optional<at::Tensor>& gate_) {
  constexpr const char* op = "linear_col_dev";
  const GatedLinear lin(x_, w_, gate_, op);
  const int64_t K = lin.K, N = lin.N, per = lin.per;
  check_col_dev_mean(x_, mean_, lin.shape(), op);
  if (!lin.fast()) return (lin.product_double() - mean_.to(at::kDouble)).square().sum(0);
  const at::Tensor x = lin.rows(), wg = lin.group_weights(), mean = float_contiguous(mean_);
  // one partial row of N per group (parallel over groups), added at the end
  at::Tensor part = at::zeros({lin.G, N}, x.options().dtype(at::kDouble));
#ifdef DNA_FAST_NHWC_AVX2
  at::parallel_for(0, lin.G, 1, [&](int64_t b, int64_t e) {
    std::vector<float> dev(N);
    for (int64_t g = b; g < e; ++g)
      nhwc::gemm_col_dev_rows(x.const_data_ptr<float>(), x.stride(0), wg.const_data_ptr<float>() + g * K * N, N, K,
                              mean.const_data_ptr<float>(), g * per, (g + 1) * per, dev.data(),
                              part.mutable_data_ptr<double>() + g * N);
  });
#endif
  return part.sum(0);
}

}  // namespace

TORCH_LIBRARY_IMPL(dna_fast, CPU, m) {
  m.impl("linear_swish", &linear_swish_cpu);
  m.impl("linear_sq_err", &linear_sq_err_cpu);
  m.impl("linear_col_dev", &linear_col_dev_cpu);
  m.impl("expand_dwconv_bn_act", &expand_dwconv_bn_act_cpu);
  m.impl("expand_dwconv_stats", &expand_dwconv_stats_cpu);
  m.impl("dwconv_stats", &dwconv_stats_cpu);
  m.impl("swish_rows_", &swish_rows_cpu);
}

}  // namespace dna_fast
