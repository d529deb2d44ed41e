// Launchers of se_gate and pw_project on CUDA. pw_project: the GEMM of the per-sample gated weights with x by
// cuBLAS (at::bmm in x.dtype, fp32 accumulation), then the fused epilogue kernel. The kernels and their launch
// configuration are in se_project_kernels.cuh (ATen-free, also run by the CPU emulator in the tests). Compiled a
// second time against the emulator (csrc/cuda/emu/) for CPU tensors as dna_fast_emu::se_gate / pw_project (the GEMM
// then runs on the CPU through at::bmm).
#include <ATen/Dispatch.h>

#include <optional>

#include "aten_launch.h"
#include "dna_fast/checks.h"
#include "dna_fast/project.h"
#include "se_project_kernels.cuh"

namespace dna_fast {
namespace {

at::Tensor se_gate_cuda(const at::Tensor& pooled, const at::Tensor& w_reduce, const at::Tensor& b_reduce,
                        const at::Tensor& w_expand, const at::Tensor& b_expand) {
  check_se_gate_args(pooled, w_reduce, b_reduce, w_expand, b_expand);
  DNA_CUDA_GUARD(pooled.device());
  const int64_t N = pooled.size(0), C = pooled.size(1), R = w_reduce.size(0);
  const at::Tensor p = pooled.to(at::kFloat).contiguous(), wr = w_reduce.to(at::kFloat).contiguous();
  const at::Tensor we = w_expand.to(at::kFloat).contiguous();
  const at::Tensor br = b_reduce.to(at::kFloat).contiguous(), be = b_expand.to(at::kFloat).contiguous();
  at::Tensor gate = at::empty({N, C}, p.options());
  if (N > 0 && C > 0) {
    TORCH_CHECK(se_gate_smem(C, R) <= 48 * 1024, "se_gate: C + R = ", C + R,
                " floats exceed the 48 KiB of shared memory");
    TORCH_CHECK(N <= 2147483647, "se_gate: batch ", N, " exceeds 2^31 - 1 (grid.x)");
    se_gate_launch(p.const_data_ptr<float>(), wr.const_data_ptr<float>(), br.const_data_ptr<float>(),
                   we.const_data_ptr<float>(), be.const_data_ptr<float>(), gate.mutable_data_ptr<float>(), N, C, R,
                   DNA_CUDA_STREAM);
    DNA_KERNEL_LAUNCH_CHECK();
  }
  return gate.to(pooled.scalar_type());
}

at::Tensor pw_project_cuda(const at::Tensor& x_, const at::Tensor& gate, const at::Tensor& weight,
                           const at::Tensor& scale_, const at::Tensor& shift_,
                           const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& target) {
  check_pw_project_args(x_, gate, weight, scale_, shift_, residual, target);
  DNA_CUDA_GUARD(x_.device());
  const bool cl = prefers_channels_last(x_);
  // double runs in fp32 (the op computes in fp32); the half types run the GEMM in their own type (fp32 accumulate)
  const bool dbl = x_.scalar_type() == at::kDouble;
  const at::Tensor x = contiguous_as(dbl ? x_.to(at::kFloat) : x_, cl);
  const int64_t N = x.size(0), Co = weight.size(0), HW = x.size(2) * x.size(3), per = Co * HW;
  const auto mf = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor loss = at::zeros({target ? N : 0}, x.options().dtype(at::kFloat));
  at::Tensor y = target ? at::Tensor() : at::empty({N, Co, x.size(2), x.size(3)}, x.options().memory_format(mf));
  if (N * per > 0) {
    const at::Tensor z = pw_gemm(x, gate, weight, cl, x.scalar_type()).contiguous();
    const at::Tensor scale = float_contiguous(scale_), shift = float_contiguous(shift_);
    const at::Tensor res = residual ? contiguous_as(residual->to(x.scalar_type()), cl) : at::Tensor();
    const at::Tensor tgt = target ? contiguous_as(target->to(x.scalar_type()), cl) : at::Tensor();
    TORCH_CHECK(N <= 65535, "pw_project: batch ", N, " exceeds 65535 (grid.y); split the batch");
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pw_project_cuda", [&] {
      pw_epilogue_launch<scalar_t>(
          z.const_data_ptr<scalar_t>(), scale.const_data_ptr<float>(), shift.const_data_ptr<float>(),
          residual ? res.const_data_ptr<scalar_t>() : nullptr, target ? tgt.const_data_ptr<scalar_t>() : nullptr,
          target ? nullptr : y.mutable_data_ptr<scalar_t>(), target ? loss.mutable_data_ptr<float>() : nullptr, N, per,
          Co, HW, cl, DNA_CUDA_STREAM);
    });
    DNA_KERNEL_LAUNCH_CHECK();
  }
  if (target) return loss;
  return dbl ? y.to(at::kDouble) : y;
}

}  // namespace

DNA_CUDA_LIBRARY_IMPL(m) {
  m.impl("se_gate", &se_gate_cuda);
  m.impl("pw_project", &pw_project_cuda);
}

}  // namespace dna_fast
