// Launchers of scale_shift_swish (forward, backward) on CUDA; the kernels and their launch configuration are in
// scale_shift_swish_kernels.cuh (ATen-free, also run by the CPU emulator in the tests). Compiled a second time against
// the emulator (csrc/cuda/emu/) for CPU tensors as dna_fast_emu::scale_shift_swish(_backward).
#include <ATen/Dispatch.h>

#include "aten_launch.h"
#include "dna_fast/checks.h"
#include "scale_shift_swish_kernels.cuh"

namespace dna_fast {
namespace {

at::Tensor scale_shift_swish_cuda(const at::Tensor& x_, const at::Tensor& scale_, const at::Tensor& shift_) {
  check_scale_shift(x_, scale_, shift_, "scale_shift_swish");
  DNA_CUDA_GUARD(x_.device());
  const bool cl = prefers_channels_last(x_);
  const at::Tensor x = contiguous_as(x_, cl);
  const at::Tensor scale = float_contiguous(scale_), shift = float_contiguous(shift_);
  at::Tensor y = at::empty_like(x);
  const int64_t n = x.numel();
  if (n == 0) return y;
  const int64_t C = x.size(1), HW = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scale_shift_swish_cuda", [&] {
    scale_shift_swish_launch<scalar_t>(x.const_data_ptr<scalar_t>(), scale.const_data_ptr<float>(),
                                       shift.const_data_ptr<float>(), y.mutable_data_ptr<scalar_t>(), n, C, HW, cl,
                                       DNA_CUDA_STREAM);
  });
  DNA_KERNEL_LAUNCH_CHECK();
  return y;
}

at::Tensor scale_shift_swish_backward_cuda(const at::Tensor& g_, const at::Tensor& x_, const at::Tensor& scale_,
                                           const at::Tensor& shift_) {
  check_scale_shift(x_, scale_, shift_, "scale_shift_swish_backward");
  TORCH_CHECK(g_.sizes() == x_.sizes(), "scale_shift_swish_backward: grad ", g_.sizes(), " != input ", x_.sizes());
  DNA_CUDA_GUARD(x_.device());
  const bool cl = prefers_channels_last(x_);
  const at::Tensor x = contiguous_as(x_, cl), g = contiguous_as(g_.to(x_.scalar_type()), cl);
  const at::Tensor scale = float_contiguous(scale_), shift = float_contiguous(shift_);
  at::Tensor gz = at::empty_like(x);
  const int64_t n = x.numel();
  if (n == 0) return gz;
  const int64_t C = x.size(1), HW = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scale_shift_swish_backward_cuda", [&] {
    scale_shift_swish_backward_launch<scalar_t>(g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                                scale.const_data_ptr<float>(), shift.const_data_ptr<float>(),
                                                gz.mutable_data_ptr<scalar_t>(), n, C, HW, cl, DNA_CUDA_STREAM);
  });
  DNA_KERNEL_LAUNCH_CHECK();
  return gz;
}

}  // namespace

DNA_CUDA_LIBRARY_IMPL(m) {
  m.impl("scale_shift_swish", &scale_shift_swish_cuda);
  m.impl("scale_shift_swish_backward", &scale_shift_swish_backward_cuda);
}

}  // namespace dna_fast
