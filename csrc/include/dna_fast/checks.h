// Argument checks shared by the CPU and CUDA launchers (user errors -> TORCH_CHECK with a clear message).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace dna_fast {

inline void check_per_channel(const at::Tensor& x, const at::Tensor& v, const char* op, const char* name) {
  TORCH_CHECK(x.dim() == 4, op, ": expected a 4-D input [N, C, H, W], got ", x.dim(), "-D");
  TORCH_CHECK(v.dim() == 1 && v.size(0) == x.size(1), op, ": ", name, " must have shape [C] = [", x.size(1),
              "], got ", v.sizes());
  TORCH_CHECK(v.device() == x.device(), op, ": ", name, " is on ", v.device(), " but the input is on ", x.device());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": expected a floating-point input, got ", x.scalar_type());
}

// The folded-BN pair of every fused op: scale and shift, both [C] on the input's device.
inline void check_scale_shift(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, const char* op) {
  check_per_channel(x, scale, op, "scale");
  check_per_channel(x, shift, op, "shift");
}

// A parameter as the contiguous fp32 tensor the kernels read (they accumulate in fp32 whatever the input dtype).
inline at::Tensor float_contiguous(const at::Tensor& v) { return v.to(at::kFloat).contiguous(); }

// The memory layout a kernel runs in: channels_last when the input is (or prefers) it, else NCHW.
inline bool prefers_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && x.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

inline at::Tensor contiguous_as(const at::Tensor& x, bool channels_last) {
  return x.contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

}  // namespace dna_fast

namespace dna_fast {

// A depthwise conv's weight [C, 1, k, k] (k in {3, 5, 7}) and stride (1 or 2) for C channels on `device`; `name` is
// the weight's argument name in the messages.
inline void check_dw_weight(const at::Tensor& w, int64_t C, int64_t stride, const at::Device& device, const char* op,
                            const char* name) {
  TORCH_CHECK(w.dim() == 4 && w.size(0) == C && w.size(1) == 1 && w.size(2) == w.size(3), op, ": ", name,
              " must have shape [C, 1, k, k] with C = ", C, ", got ", w.sizes());
  TORCH_CHECK(w.size(2) == 3 || w.size(2) == 5 || w.size(2) == 7, op, ": unsupported kernel size ", w.size(2),
              " (supported: 3, 5, 7)");
  TORCH_CHECK(stride == 1 || stride == 2, op, ": unsupported stride ", stride, " (supported: 1, 2)");
  TORCH_CHECK(w.device() == device, op, ": ", name, " is on ", w.device(), " but the input is on ", device);
  TORCH_CHECK(at::isFloatingType(w.scalar_type()), op, ": ", name, " must be floating point, got ", w.scalar_type());
}

// dwconv_bn_act: x [N, C, H, W], weight [C, 1, k, k] with k in {3, 5, 7}, stride in {1, 2}, scale/shift [C].
inline void check_dwconv_args(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                              const at::Tensor& shift, int64_t stride) {
  constexpr const char* op = "dwconv_bn_act";
  check_scale_shift(x, scale, shift, op);
  check_dw_weight(w, x.size(1), stride, x.device(), op, "weight");
}

// ---- the rating engine's row kernels (csrc/cpu/nhwc_kernels.cpp and their CUDA twins in csrc/cuda/rating_kernels.cu
// share these checks and messages) ----------------------------------------------------------------------------------

// x [rows, K] @ weight [K, N] with an optional gate [groups, K] scaling x's columns per group of rows / groups
// consecutive rows: the shared arguments of linear_sq_err and linear_col_dev.
struct GatedShape {
  int64_t R, K, N;
  int64_t G;    // gate groups (1 without a gate)
  int64_t per;  // rows per group
};

inline GatedShape check_gated_linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& gate,
                                     const char* op) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(0), op,
              ": expected x [rows, K] and weight [K, N], got ", x.sizes(), " and ", w.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": expected a floating-point input, got ", x.scalar_type());
  TORCH_CHECK(w.device() == x.device(), op, ": weight is on ", w.device(), " but x is on ", x.device());
  const int64_t R = x.size(0), K = x.size(1), N = w.size(1);
  const int64_t G = gate.has_value() ? gate->size(0) : 1;
  if (gate.has_value()) {
    TORCH_CHECK(gate->dim() == 2 && gate->size(1) == K && G > 0 && R % G == 0, op,
                ": gate must have shape [groups, K] with K = ", K, " and groups dividing the ", R, " rows, got ",
                gate->sizes());
    TORCH_CHECK(gate->device() == x.device(), op, ": gate is on ", gate->device(), " but x is on ", x.device());
  }
  return {R, K, N, G, R / G};
}

// linear_sq_err's offset [R, N] and shift [N].
inline void check_sq_err_terms(const at::Tensor& x, const at::Tensor& offset, const at::Tensor& shift,
                               const GatedShape& s, const char* op) {
  TORCH_CHECK(offset.dim() == 2 && offset.size(0) == s.R && offset.size(1) == s.N, op, ": offset must have shape [",
              s.R, ", ", s.N, "], got ", offset.sizes());
  TORCH_CHECK(shift.dim() == 1 && shift.size(0) == s.N, op, ": shift must have shape [N] = [", s.N, "], got ",
              shift.sizes());
  TORCH_CHECK(offset.device() == x.device() && shift.device() == x.device(), op, ": offset and shift must be on ",
              x.device());
}

// linear_col_dev's mean [N].
inline void check_col_dev_mean(const at::Tensor& x, const at::Tensor& mean, const GatedShape& s, const char* op) {
  TORCH_CHECK(mean.dim() == 1 && mean.size(0) == s.N, op, ": mean must have shape [N] = [", s.N, "], got ",
              mean.sizes());
  TORCH_CHECK(mean.device() == x.device(), op, ": mean is on ", mean.device(), " but x is on ", x.device());
}

// expand_dwconv_bn_act / expand_dwconv_stats: x [N, Cin, H, W], w1 [Cin, C], b1 [C], w_dw [C, 1, k, k], and with
// scale / shift (non-null) [C] each. Returns C.
inline int64_t check_expand_dwconv_args(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                                        const at::Tensor& w_dw, const at::Tensor* scale, const at::Tensor* shift,
                                        int64_t stride, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": expected a 4-D input [N, Cin, H, W], got ", x.dim(), "-D");
  const int64_t Cin = x.size(1);
  TORCH_CHECK(w1.dim() == 2 && w1.size(0) == Cin, op, ": w1 must have shape [Cin, C] with Cin = ", Cin, ", got ",
              w1.sizes());
  const int64_t C = w1.size(1);
  TORCH_CHECK(b1.dim() == 1 && b1.size(0) == C, op, ": b1 must have shape [C] = [", C, "], got ", b1.sizes());
  TORCH_CHECK(w1.device() == x.device() && b1.device() == x.device(), op, ": w1 and b1 must be on ", x.device());
  check_dw_weight(w_dw, C, stride, x.device(), op, "w_dw");
  if (scale != nullptr) {
    TORCH_CHECK(scale->dim() == 1 && scale->size(0) == C && shift->dim() == 1 && shift->size(0) == C, op,
                ": scale and shift must have shape [C] = [", C, "]");
    TORCH_CHECK(scale->device() == x.device() && shift->device() == x.device(), op, ": scale and shift must be on ",
                x.device());
  }
  return C;
}

// swish_rows_: x a contiguous [rows, C] matrix, groups 0 (no sums) or dividing the rows.
inline void check_swish_rows_args(const at::Tensor& x, int64_t groups, const char* op) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), op, ": expected a contiguous 2-D [rows, C] tensor, got ", x.sizes(),
              x.is_contiguous() ? "" : " (not contiguous)");
  TORCH_CHECK(groups >= 0 && (groups == 0 || x.size(0) % groups == 0), op, ": groups = ", groups,
              " must be 0 (no sums) or divide the ", x.size(0), " rows");
}

// swish_rows_'s optional scale / shift: [C] on x's device, returned as contiguous fp32 (undefined when absent).
inline at::Tensor checked_row_vector(const at::Tensor& x, const std::optional<at::Tensor>& v, const char* op,
                                     const char* name) {
  if (!v.has_value()) return at::Tensor();
  const int64_t C = x.size(1);
  TORCH_CHECK(v->dim() == 1 && v->size(0) == C, op, ": ", name, " must have shape [C] = [", C, "], got ", v->sizes());
  TORCH_CHECK(v->device() == x.device(), op, ": ", name, " is on ", v->device(), " but x is on ", x.device());
  return float_contiguous(*v);
}

}  // namespace dna_fast
