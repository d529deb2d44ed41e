// CUDA kernels of scale_shift_swish: one thread per element, grid-stride, fp32 math.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "dna_fast/checks.h"
#include "dna_fast/cuda_helpers.cuh"
#include "dna_fast/math.h"

namespace dna_fast {
namespace {

template <typename scalar_t>
__global__ void scale_shift_swish_fwd(const scalar_t* __restrict__ x, const float* __restrict__ scale,
                                      const float* __restrict__ shift, scalar_t* __restrict__ y, int64_t n,
                                      int64_t C, int64_t HW, bool cl) {
  DNA_GRID_STRIDE_LOOP(i, n) {
    const int64_t c = channel_of(i, C, HW, cl);
    y[i] = static_cast<scalar_t>(scale_shift_swish(static_cast<float>(x[i]), scale[c], shift[c]));
  }
}

template <typename scalar_t>
__global__ void scale_shift_swish_bwd(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                      const float* __restrict__ scale, const float* __restrict__ shift,
                                      scalar_t* __restrict__ gz, int64_t n, int64_t C, int64_t HW, bool cl) {
  DNA_GRID_STRIDE_LOOP(i, n) {
    const int64_t c = channel_of(i, C, HW, cl);
    gz[i] = static_cast<scalar_t>(
        scale_shift_swish_grad_z(static_cast<float>(g[i]), static_cast<float>(x[i]), scale[c], shift[c]));
  }
}

at::Tensor scale_shift_swish_cuda(const at::Tensor& x_, const at::Tensor& scale_, const at::Tensor& shift_) {
  check_scale_shift(x_, scale_, shift_, "scale_shift_swish");
  const c10::cuda::CUDAGuard guard(x_.device());
  const bool cl = prefers_channels_last(x_);
  const at::Tensor x = contiguous_as(x_, cl);
  const at::Tensor scale = float_contiguous(scale_), shift = float_contiguous(shift_);
  at::Tensor y = at::empty_like(x);
  const int64_t n = x.numel();
  if (n == 0) return y;
  const int64_t C = x.size(1), HW = x.size(2) * x.size(3);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scale_shift_swish_cuda", [&] {
    scale_shift_swish_fwd<scalar_t><<<grid_for(n), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), scale.data_ptr<float>(), shift.data_ptr<float>(), y.data_ptr<scalar_t>(), n, C,
        HW, cl);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

at::Tensor scale_shift_swish_backward_cuda(const at::Tensor& g_, const at::Tensor& x_, const at::Tensor& scale_,
                                           const at::Tensor& shift_) {
  check_scale_shift(x_, scale_, shift_, "scale_shift_swish_backward");
  TORCH_CHECK(g_.sizes() == x_.sizes(), "scale_shift_swish_backward: grad ", g_.sizes(), " != input ", x_.sizes());
  const c10::cuda::CUDAGuard guard(x_.device());
  const bool cl = prefers_channels_last(x_);
  const at::Tensor x = contiguous_as(x_, cl), g = contiguous_as(g_.to(x_.scalar_type()), cl);
  const at::Tensor scale = float_contiguous(scale_), shift = float_contiguous(shift_);
  at::Tensor gz = at::empty_like(x);
  const int64_t n = x.numel();
  if (n == 0) return gz;
  const int64_t C = x.size(1), HW = x.size(2) * x.size(3);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scale_shift_swish_backward_cuda", [&] {
    scale_shift_swish_bwd<scalar_t><<<grid_for(n), kThreads, 0, stream>>>(
        g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), scale.data_ptr<float>(), shift.data_ptr<float>(),
        gz.data_ptr<scalar_t>(), n, C, HW, cl);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gz;
}

}  // namespace

TORCH_LIBRARY_IMPL(dna_fast, CUDA, m) {
  m.impl("scale_shift_swish", &scale_shift_swish_cuda);
  m.impl("scale_shift_swish_backward", &scale_shift_swish_backward_cuda);
}

}  // namespace dna_fast
