// Argument checks shared by the CPU and CUDA launchers (user errors -> TORCH_CHECK with a clear message).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

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

}  // namespace dna_fast
