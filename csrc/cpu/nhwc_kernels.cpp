// CPU kernels of the rating engine's channels_last passes (dna_fast._rating_engine):
//   dwconv_stats: plain depthwise conv + the per-output-row mean and M2 of its output (train-mode BN statistics of
//     the conv output without another pass over it);
//   swish_rows_: in-place swish(x * scale + shift) over a [rows, C] matrix (+ per-group column sums: the SE squeeze);
//   linear_swish: swish(x @ w + bias), the 1x1 expansion with its folded BN and activation in one register-blocked pass;
//   sq_err_sum: sum of (y + offset + shift)^2, the last layer's squared error without materializing the residual.
// fp32 with C % 8 == 0 runs the AVX2 kernels of nhwc_avx2.h; anything else runs the same math with ATen ops.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

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
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1 && weight.size(2) == weight.size(3),
              op, ": weight must have shape [C, 1, k, k] with C = ", C, ", got ", weight.sizes());
  const int64_t k = weight.size(2);
  TORCH_CHECK(dw_kernel_supported(k), op, ": unsupported kernel size ", k, " (supported: 3, 5, 7)");
  TORCH_CHECK(dw_stride_supported(stride), op, ": unsupported stride ", stride, " (supported: 1, 2)");
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
  const at::Tensor wt = w.view({C, k * k}).t().contiguous();
  const nhwc::RowEpilogue epi{false, nullptr, nullptr};
  TORCH_INTERNAL_ASSERT(nhwc::dw_forward(x.const_data_ptr<float>(), N, x.size(2), x.size(3), C,
                                         wt.const_data_ptr<float>(), k, stride, Ho, Wo, y.mutable_data_ptr<float>(),
                                         epi, nullptr, mean.mutable_data_ptr<float>(), m2.mutable_data_ptr<float>()));
#endif
  return {y, mean, m2};
}

at::Tensor swish_rows_cpu(at::Tensor& x, const std::optional<at::Tensor>& scale_,
                          const std::optional<at::Tensor>& shift_, int64_t groups) {
  constexpr const char* op = "swish_rows_";
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), op, ": expected a contiguous 2-D [rows, C] tensor, got ",
              x.sizes(), x.is_contiguous() ? "" : " (not contiguous)");
  TORCH_CHECK(x.scalar_type() == at::kFloat, op, ": expected fp32, got ", x.scalar_type());
  const int64_t R = x.size(0), C = x.size(1);
  auto vec = [&](const std::optional<at::Tensor>& v, const char* name) {
    if (!v.has_value()) return at::Tensor();
    TORCH_CHECK(v->dim() == 1 && v->size(0) == C, op, ": ", name, " must have shape [C] = [", C, "], got ",
                v->sizes());
    TORCH_CHECK(v->device() == x.device(), op, ": ", name, " is on ", v->device(), " but x is on ", x.device());
    return float_contiguous(*v);
  };
  const at::Tensor scale = vec(scale_, "scale"), shift = vec(shift_, "shift");
  TORCH_CHECK(groups >= 0 && (groups == 0 ? true : R % groups == 0), op, ": groups = ", groups,
              " must be 0 (no sums) or divide the ", R, " rows");
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
                          y.mutable_data_ptr<float>(), N, 4 * b, std::min(R, 4 * e));
  });
#endif
  return y;
}

at::Tensor sq_err_sum_cpu(const at::Tensor& y_, const at::Tensor& offset_, const at::Tensor& shift_) {
  constexpr const char* op = "sq_err_sum";
  TORCH_CHECK(y_.dim() == 2, op, ": expected a 2-D [rows, C] tensor, got ", y_.sizes());
  TORCH_CHECK(offset_.sizes() == y_.sizes(), op, ": offset has shape ", offset_.sizes(), " but y has ", y_.sizes());
  const int64_t R = y_.size(0), C = y_.size(1);
  TORCH_CHECK(shift_.dim() == 1 && shift_.size(0) == C, op, ": shift must have shape [C] = [", C, "], got ",
              shift_.sizes());
  const at::Tensor y = y_.to(at::kFloat).contiguous(), off = offset_.to(at::kFloat).contiguous();
  const at::Tensor shift = float_contiguous(shift_);
  if (!vectorizable(y, C) || R == 0)
    return (y.to(at::kDouble) + off.to(at::kDouble) + shift.to(at::kDouble)).square().sum();
  double total = 0.0;
#ifdef DNA_FAST_NHWC_AVX2
  total = nhwc::sq_err_rows(y.const_data_ptr<float>(), off.const_data_ptr<float>(), shift.const_data_ptr<float>(), R,
                            C);
#endif
  return at::scalar_tensor(total, y.options().dtype(at::kDouble));
}

}  // namespace

TORCH_LIBRARY_IMPL(dna_fast, CPU, m) {
  m.impl("sq_err_sum", &sq_err_sum_cpu);
  m.impl("linear_swish", &linear_swish_cpu);
  m.impl("dwconv_stats", &dwconv_stats_cpu);
  m.impl("swish_rows_", &swish_rows_cpu);
}

}  // namespace dna_fast
