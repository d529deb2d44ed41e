// Launcher of dwconv_bn_act on CUDA: argument checks, layout, dtype dispatch; the kernels and their launch
// configuration are in dwconv_bn_act_kernels.cuh (ATen-free, also run by the CPU emulator in the tests). Compiled a
// second time against the emulator (csrc/cuda/emu/) for CPU tensors as dna_fast_emu::dwconv_bn_act.
#include <ATen/Dispatch.h>

#include <tuple>
#include <type_traits>

#include "aten_launch.h"
#include "dna_fast/checks.h"
#include "dwconv_bn_act_kernels.cuh"

namespace dna_fast {
namespace {

std::tuple<at::Tensor, at::Tensor> dwconv_bn_act_cuda(const at::Tensor& x_, const at::Tensor& weight,
                                                      const at::Tensor& scale_, const at::Tensor& shift_,
                                                      int64_t stride, bool with_sums) {
  check_dwconv_args(x_, weight, scale_, shift_, stride);
  DNA_CUDA_GUARD(x_.device());
  const bool cl = prefers_channels_last(x_);
  const int64_t k = weight.size(2);
  const int64_t N = x_.size(0), C = x_.size(1);
  const int64_t Ho = dw_out_size(x_.size(2), k, stride), Wo = dw_out_size(x_.size(3), k, stride);
  const auto f32 = x_.options().dtype(at::kFloat);
  at::Tensor sums = with_sums ? at::zeros({N, C}, f32) : at::empty({0}, f32);
  const bool dbl = x_.scalar_type() == at::kDouble;  // double runs through the fp32 kernel
  const at::Tensor x = contiguous_as(dbl ? x_.to(at::kFloat) : x_, cl);
  at::Tensor y = at::empty({N, C, Ho, Wo}, x.options().memory_format(cl ? at::MemoryFormat::ChannelsLast
                                                                         : at::MemoryFormat::Contiguous));
  if (y.numel() > 0) {
    const at::Tensor w = weight.to(at::kFloat).contiguous();
    const at::Tensor scale = float_contiguous(scale_), shift = float_contiguous(shift_);
    float* sp = with_sums ? sums.mutable_data_ptr<float>() : nullptr;
    const DwShape shape{N, C, x.size(2), x.size(3), Ho, Wo};
    TORCH_CHECK(!cl || N <= 65535, "dwconv_bn_act: channels_last batch ", N,
                " exceeds 65535 (grid.z); split the batch");
    TORCH_CHECK(cl || N * C <= 2147483647, "dwconv_bn_act: N * C = ", N * C, " planes exceed 2^31 - 1 (grid.x)");
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dwconv_bn_act_cuda", [&] {
      if constexpr (!std::is_same_v<scalar_t, double>) {
        const bool ok = dwconv_bn_act_launch<scalar_t>(cl, k, stride, shape, x.const_data_ptr<scalar_t>(),
                                                       w.const_data_ptr<float>(), scale.const_data_ptr<float>(),
                                                       shift.const_data_ptr<float>(), y.mutable_data_ptr<scalar_t>(),
                                                       sp, DNA_CUDA_STREAM);
        TORCH_INTERNAL_ASSERT(ok, "dwconv_bn_act: unsupported k / stride (checked earlier)");
      }
    });
    DNA_KERNEL_LAUNCH_CHECK();
  }
  if (dbl) y = y.to(at::kDouble);  // keeps the memory format
  return {y, sums};
}

}  // namespace

DNA_CUDA_LIBRARY_IMPL(m) { m.impl("dwconv_bn_act", &dwconv_bn_act_cuda); }

}  // namespace dna_fast
