// CUDA launchers of the rating engine's fused passes, the twins of the CPU kernels in csrc/cpu/nhwc_kernels.cpp
// with the same schemas and contracts (device code: rating_kernels.cuh):
//   linear_sq_err, linear_col_dev: the gated GEMM with its reducing epilogue (the product never stored);
//   expand_dwconv_bn_act, expand_dwconv_stats: expansion + BN + swish + depthwise conv (+ BN + swish + SE sums, or the
//     conv's per-row statistics), all sibling ops of one kernel size in one launch (their channels concatenated);
//   swish_rows_: in-place swish with per-group column sums.
// Inputs fp32 / fp16 / bf16 (fp64 runs in fp32), fp32 accumulation; the kernels write per-block partials that are
// added here with ATen (no atomics: the result does not depend on the order in which blocks run). Compiled a second
// time against the CPU emulator (aten_launch.h) for CPU tensors as dna_fast_emu::<op>: the engine's CUDA path runs
// end to end without a GPU (rate_block(..., kernels="cuda-emulated")).
#include <ATen/Dispatch.h>

#include <optional>
#include <tuple>
#include <type_traits>

#include "aten_launch.h"
#include "dna_fast/checks.h"
#include "rating_kernels.cuh"

namespace dna_fast {
namespace {

namespace rk = dna_fast::rating;

void check_float_input(const at::Tensor& x, const char* op) {
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble, op,
              ": expected fp32 / fp16 / bf16 input, got ", t);
}

// fp64 runs through the fp32 kernels (as the other CUDA ops do)
at::Tensor kernel_dtype(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? x.to(at::kFloat) : x; }

// linear_sq_err / linear_col_dev: checks.h's shared checks (the CPU twin's messages) and the fp16 / bf16 input check.
GatedShape gated_args(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& gate, const char* op) {
  check_float_input(x, op);
  return check_gated_linear(x, w, gate, op);
}

// (x * gate) @ w in fp64 with ATen: the degenerate shapes (no rows, K or N = 0)
at::Tensor product_double(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& gate, int64_t G) {
  at::Tensor xd = x.to(at::kDouble);
  if (gate.has_value()) xd = (xd.view({G, -1, x.size(1)}) * gate->to(at::kDouble).unsqueeze(1)).view(x.sizes());
  return at::mm(xd, w.to(at::kDouble));
}

template <rk::GemmEpilogue E>
at::Tensor gated_gemm(const at::Tensor& x_, const at::Tensor& w_, const std::optional<at::Tensor>& gate_,
                      const at::Tensor& offset, const at::Tensor& vec, int64_t G) {
  const at::Tensor x0 = kernel_dtype(x_);
  const at::Tensor x = x0.stride(1) == 1 ? x0 : x0.contiguous();  // a column slice keeps its row stride
  const at::Tensor w = float_contiguous(w_);
  const at::Tensor gate = gate_.has_value() ? float_contiguous(*gate_) : at::Tensor();
  const rk::GemmShape s = rk::gemm_shape(x.size(0), x.size(1), w.size(1), x.stride(0), G);
  const rk::GemmLaunch l = rk::gemm_launch(s);
  const int64_t slots = E == rk::GemmEpilogue::kSqErr ? 2 * static_cast<int64_t>(l.grid.x) : s.N;
  at::Tensor partial = at::empty({l.row_tiles, slots}, x.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rating_gated_gemm", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      rk::gated_gemm_launch<scalar_t, E>(l, x.const_data_ptr<scalar_t>(), w.const_data_ptr<float>(),
                                         gate.defined() ? gate.const_data_ptr<float>() : nullptr,
                                         offset.defined() ? offset.const_data_ptr<float>() : nullptr,
                                         vec.const_data_ptr<float>(), s, partial.mutable_data_ptr<float>(),
                                         DNA_CUDA_STREAM);
    }
  });
  DNA_KERNEL_LAUNCH_CHECK();
  return partial;
}

// Per gate group (one without a gate): (sum of e^2, sum of |e|) for e = (x * gate) @ w + offset + shift, fp64 [groups].
std::tuple<at::Tensor, at::Tensor> linear_sq_err_cuda(const at::Tensor& x, const at::Tensor& w,
                                                      const at::Tensor& offset_, const at::Tensor& shift_,
                                                      const std::optional<at::Tensor>& gate) {
  constexpr const char* op = "linear_sq_err";
  const GatedShape a = gated_args(x, w, gate, op);
  check_sq_err_terms(x, offset_, shift_, a, op);
  DNA_CUDA_GUARD(x.device());
  const int64_t G = a.G, gate_groups = gate.has_value() ? G : 0;
  if (a.R == 0 || a.K == 0 || a.N == 0) {
    const at::Tensor e = (product_double(x, w, gate, gate_groups) + offset_.to(at::kDouble) + shift_.to(at::kDouble))
                             .view({G, a.R / G, a.N});
    return {e.square().sum({1, 2}), e.abs().sum({1, 2})};
  }
  const at::Tensor partial = gated_gemm<rk::GemmEpilogue::kSqErr>(x, w, gate, float_contiguous(offset_),
                                                                  float_contiguous(shift_), gate_groups);
  // [row tiles, column tiles, 2], the row tiles of a group consecutive
  const at::Tensor per_group = partial.to(at::kDouble).view({G, -1, 2}).sum(1);
  return {per_group.select(1, 0).contiguous(), per_group.select(1, 1).contiguous()};
}

at::Tensor linear_col_dev_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& mean_,
                               const std::optional<at::Tensor>& gate) {
  constexpr const char* op = "linear_col_dev";
  const GatedShape a = gated_args(x, w, gate, op);
  check_col_dev_mean(x, mean_, a, op);
  DNA_CUDA_GUARD(x.device());
  const int64_t gate_groups = gate.has_value() ? a.G : 0;
  if (a.R == 0 || a.K == 0 || a.N == 0)
    return (product_double(x, w, gate, gate_groups) - mean_.to(at::kDouble)).square().sum(0);
  const at::Tensor partial =
      gated_gemm<rk::GemmEpilogue::kColDev>(x, w, gate, at::Tensor(), float_contiguous(mean_), gate_groups);
  return partial.to(at::kDouble).sum(0);
}

// ---- expand_dwconv ----------------------------------------------------------------------------------------------

template <typename scalar_t, int K, int S, bool kAct>
void launch_expand_dw(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& wdw,
                      const at::Tensor& scale, const at::Tensor& shift, const rk::DwShape& s, at::Tensor& y,
                      at::Tensor& row_sum, at::Tensor& row_m2) {
  const rk::DwLaunch l = rk::dw_launch(s);
  rk::expand_dw_launch<scalar_t, K, S, kAct>(
      l, x.const_data_ptr<scalar_t>(), w1.const_data_ptr<float>(), b1.const_data_ptr<float>(),
      wdw.const_data_ptr<float>(), kAct ? scale.const_data_ptr<float>() : nullptr,
      kAct ? shift.const_data_ptr<float>() : nullptr, s, y.mutable_data_ptr<scalar_t>(),
      row_sum.mutable_data_ptr<float>(), kAct ? nullptr : row_m2.mutable_data_ptr<float>(), DNA_CUDA_STREAM);
  DNA_KERNEL_LAUNCH_CHECK();
}

template <int K, int S>
rk::DwShape shape_for(const at::Tensor& x, int64_t C) {
  return rk::dw_shape<K, S>(x.size(0), x.size(2), x.size(3), x.size(1), C);
}

// Runtime (k, stride, act) -> template constants; returns the shape the kernel ran with.
template <typename scalar_t, bool kAct>
rk::DwShape expand_dw_for(int64_t k, int64_t stride, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                          const at::Tensor& wdw, const at::Tensor& scale, const at::Tensor& shift, at::Tensor& y,
                          at::Tensor& row_sum, at::Tensor& row_m2) {
  const int64_t C = w1.size(1);
#define DNA_RATING_DW_CASE(KK, SS)                                                                     \
  if (k == KK && stride == SS) {                                                                      \
    const rk::DwShape s = shape_for<KK, SS>(x, C);                                                    \
    launch_expand_dw<scalar_t, KK, SS, kAct>(x, w1, b1, wdw, scale, shift, s, y, row_sum, row_m2);    \
    return s;                                                                                         \
  }
  DNA_RATING_DW_CASE(3, 1)
  DNA_RATING_DW_CASE(3, 2)
  DNA_RATING_DW_CASE(5, 1)
  DNA_RATING_DW_CASE(5, 2)
  DNA_RATING_DW_CASE(7, 1)
  DNA_RATING_DW_CASE(7, 2)
#undef DNA_RATING_DW_CASE
  TORCH_INTERNAL_ASSERT(false, "expand_dwconv: unsupported k / stride (checked earlier)");
}

// The partial sums buffers [N, Ho, tiles_x, C] the kernel fills (sizes from the same shape arithmetic it uses).
rk::DwShape dw_shape_rt(int64_t k, int64_t stride, const at::Tensor& x, int64_t C) {
  if (k == 3) return stride == 1 ? shape_for<3, 1>(x, C) : shape_for<3, 2>(x, C);
  if (k == 5) return stride == 1 ? shape_for<5, 1>(x, C) : shape_for<5, 2>(x, C);
  return stride == 1 ? shape_for<7, 1>(x, C) : shape_for<7, 2>(x, C);
}

// x [N, Cin, H, W] any layout, w1 [Cin, C], b1 [C], w_dw [C, 1, k, k]; with scale/shift (act): (y, sums [N, C]);
// without: (y, row means [N * Ho, C], row M2 [N * Ho, C]); y channels_last in x's dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor> expand_dwconv_impl(const at::Tensor& x_, const at::Tensor& w1_,
                                                                  const at::Tensor& b1_, const at::Tensor& wdw_,
                                                                  const at::Tensor* scale_, const at::Tensor* shift_,
                                                                  int64_t stride, const char* op) {
  const int64_t C = check_expand_dwconv_args(x_, w1_, b1_, wdw_, scale_, shift_, stride, op);
  check_float_input(x_, op);
  const bool act = scale_ != nullptr;
  DNA_CUDA_GUARD(x_.device());
  const int64_t k = wdw_.size(2);
  const at::Tensor x = kernel_dtype(x_).contiguous(at::MemoryFormat::ChannelsLast);
  const rk::DwShape s = dw_shape_rt(k, stride, x, C);
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor y = at::empty({s.N, C, s.Ho, s.Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) {
    if (act) return {y, at::zeros({s.N, C}, f32), at::empty({0, C}, f32)};
    return {y, at::zeros({s.N * s.Ho, C}, f32), at::zeros({s.N * s.Ho, C}, f32)};
  }
  at::Tensor row_sum = at::empty({s.N * s.Ho, s.tiles_x, C}, f32);
  at::Tensor row_m2 = act ? at::Tensor() : at::empty({s.N * s.Ho, s.tiles_x, C}, f32);
  const at::Tensor w1 = float_contiguous(w1_), b1 = float_contiguous(b1_);
  const at::Tensor wdw = float_contiguous(wdw_).view({C, k * k});
  const at::Tensor scale = act ? float_contiguous(*scale_) : at::Tensor();
  const at::Tensor shift = act ? float_contiguous(*shift_) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rating_expand_dwconv", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      if (act)
        expand_dw_for<scalar_t, true>(k, stride, x, w1, b1, wdw, scale, shift, y, row_sum, row_m2);
      else
        expand_dw_for<scalar_t, false>(k, stride, x, w1, b1, wdw, scale, shift, y, row_sum, row_m2);
    }
  });
  if (x_.scalar_type() == at::kDouble) y = y.to(at::kDouble);
  if (act) return {y, row_sum.view({s.N, s.Ho * s.tiles_x, C}).sum(1), at::empty({0, C}, f32)};
  // merge the column tiles of each output row (Chan et al.): tile t holds cnt_t = min(8, Wo - 8 t) outputs
  const at::Tensor cnt = (at::arange(s.tiles_x, f32) * -static_cast<double>(rk::kDwTileW) + static_cast<double>(s.Wo))
                             .clamp_max(rk::kDwTileW)
                             .view({1, s.tiles_x, 1});
  const at::Tensor mean = row_sum.sum(1) / static_cast<double>(s.Wo);
  const at::Tensor m2 = row_m2.sum(1) + (cnt * (row_sum / cnt - mean.unsqueeze(1)).square()).sum(1);
  return {y, mean, m2};
}

std::tuple<at::Tensor, at::Tensor> expand_dwconv_bn_act_cuda(const at::Tensor& x, const at::Tensor& w1,
                                                             const at::Tensor& b1, const at::Tensor& w_dw,
                                                             const at::Tensor& scale, const at::Tensor& shift,
                                                             int64_t stride) {
  auto [y, sums, unused] = expand_dwconv_impl(x, w1, b1, w_dw, &scale, &shift, stride, "expand_dwconv_bn_act");
  return {y, sums};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> expand_dwconv_stats_cuda(const at::Tensor& x, const at::Tensor& w1,
                                                                        const at::Tensor& b1, const at::Tensor& w_dw,
                                                                        int64_t stride) {
  return expand_dwconv_impl(x, w1, b1, w_dw, nullptr, nullptr, stride, "expand_dwconv_stats");
}

// ---- swish_rows_ --------------------------------------------------------------------------------------------------

at::Tensor swish_rows_cuda(at::Tensor& x, const std::optional<at::Tensor>& scale_,
                           const std::optional<at::Tensor>& shift_, int64_t groups) {
  constexpr const char* op = "swish_rows_";
  check_swish_rows_args(x, groups, op);
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, op, ": expected fp32 / fp16 / bf16, got ", t);
  const int64_t R = x.size(0), C = x.size(1);
  const at::Tensor scale = checked_row_vector(x, scale_, op, "scale");
  const at::Tensor shift = checked_row_vector(x, shift_, op, "shift");
  DNA_CUDA_GUARD(x.device());
  const auto f32 = x.options().dtype(at::kFloat);
  if (R == 0 || C == 0) return at::zeros({groups, C}, f32);
  const rk::RowsShape s = rk::rows_shape(R, C, groups);
  const rk::RowsLaunch l = rk::rows_launch(s);
  at::Tensor part = groups > 0 ? at::empty({l.row_tiles, C}, f32) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t, "rating_swish_rows", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      rk::swish_rows_launch<scalar_t>(l, x.mutable_data_ptr<scalar_t>(),
                                      scale.defined() ? scale.const_data_ptr<float>() : nullptr,
                                      shift.defined() ? shift.const_data_ptr<float>() : nullptr, s,
                                      groups > 0 ? part.mutable_data_ptr<float>() : nullptr, DNA_CUDA_STREAM);
    }
  });
  DNA_KERNEL_LAUNCH_CHECK();
  if (groups == 0) return at::zeros({0, C}, f32);
  return part.view({groups, s.tiles, C}).sum(1);
}

}  // namespace

DNA_CUDA_LIBRARY_IMPL(m) {
  m.impl("linear_sq_err", &linear_sq_err_cuda);
  m.impl("linear_col_dev", &linear_col_dev_cuda);
  m.impl("expand_dwconv_bn_act", &expand_dwconv_bn_act_cuda);
  m.impl("expand_dwconv_stats", &expand_dwconv_stats_cuda);
  m.impl("swish_rows_", &swish_rows_cuda);
}

}  // namespace dna_fast
