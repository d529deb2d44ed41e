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

// The memory layout a kernel runs in: channels_last when the input is (or prefers) it, else NCHW.
inline bool prefers_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && x.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

inline at::Tensor contiguous_as(const at::Tensor& x, bool channels_last) {
  return x.contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

}  // namespace dna_fast
