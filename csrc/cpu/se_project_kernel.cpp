// CPU kernels of se_gate and pw_project.
//
// se_gate: the two small GEMMs by BLAS (at::addmm, bias fused), swish / sigmoid applied in place by vectorized loops.
// Tried and slower at batch 16: per-sample axpy loops over transposed weights under at::parallel_for (the thread
// start-up and per-call overhead dominate at these sizes).
// pw_project: one batched GEMM (at::bmm, fp32) of the per-sample gated weights with x, then one fused epilogue pass:
// BN (+ residual) into the output, or, with a target, the per-sample sum of squared differences.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "dna_fast/checks.h"
#include "dna_fast/cpu_vec.h"
#include "dna_fast/math.h"
#include "dna_fast/project.h"

namespace dna_fast {
namespace {

DNA_CPU_CLONES void swish_inplace(float* __restrict__ v, int64_t n) {
  for (int64_t j = 0; j < n; ++j) v[j] = fast_swishf(v[j]);
}

DNA_CPU_CLONES void sigmoid_inplace(float* __restrict__ v, int64_t n) {
  for (int64_t j = 0; j < n; ++j) v[j] = fast_sigmoidf(v[j]);
}

at::Tensor se_gate_cpu(const at::Tensor& pooled, const at::Tensor& w_reduce, const at::Tensor& b_reduce,
                       const at::Tensor& w_expand, const at::Tensor& b_expand) {
  check_se_gate_args(pooled, w_reduce, b_reduce, w_expand, b_expand);
  const int64_t N = pooled.size(0), C = pooled.size(1);
  if (N == 0 || C == 0) return at::empty({N, C}, pooled.options());
  // the two tiny GEMMs by BLAS (bias fused by addmm), the activations in place, all in fp32
  const auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat); };
  at::Tensor h = at::addmm(f32(b_reduce), f32(pooled), f32(w_reduce).t()).contiguous();
  swish_inplace(h.mutable_data_ptr<float>(), h.numel());
  at::Tensor gate = at::addmm(f32(b_expand), h, f32(w_expand).t()).contiguous();
  sigmoid_inplace(gate.mutable_data_ptr<float>(), gate.numel());
  return gate.to(pooled.scalar_type());
}

at::Tensor pw_project_cpu(const at::Tensor& x_, const at::Tensor& gate, const at::Tensor& weight,
                          const at::Tensor& scale_, const at::Tensor& shift_, const std::optional<at::Tensor>& residual,
                          const std::optional<at::Tensor>& target) {
  check_pw_project_args(x_, gate, weight, scale_, shift_, residual, target);
  const bool cl = prefers_channels_last(x_);
  const at::Tensor x = contiguous_as(x_, cl);
  const int64_t N = x.size(0), Co = weight.size(0), HW = x.size(2) * x.size(3), per = Co * HW;
  const auto mf = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor y = target ? at::Tensor() : at::empty({N, Co, x.size(2), x.size(3)}, x.options().memory_format(mf));
  if (N * per == 0) return target ? at::zeros({N}, x.options().dtype(at::kFloat)) : y;
  const at::Tensor z = pw_gemm(x, gate, weight, cl, at::kFloat).contiguous();  // fp32, the output's layout
  const at::Tensor scale = float_contiguous(scale_), shift = float_contiguous(shift_);
  const float *zp = z.const_data_ptr<float>(), *sc = scale.const_data_ptr<float>(), *sh = shift.const_data_ptr<float>();
  const at::Tensor res = residual ? contiguous_as(residual->to(x.scalar_type()), cl) : at::Tensor();
  const at::Tensor tgt = target ? contiguous_as(target->to(x.scalar_type()), cl) : at::Tensor();
  // runs of contiguous elements: one (n, c) plane of HW in NCHW, one pixel's Co channels in channels_last; a run's
  // squared error goes to its own slot, so a sample's loss is reduced without atomics
  const int64_t runs_per = cl ? HW : Co, len = cl ? Co : HW;
  at::Tensor part = target ? at::empty({N, runs_per}, x.options().dtype(at::kDouble)) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pw_project_cpu", [&] {
    const scalar_t* rp = residual ? res.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* tp = target ? tgt.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = target ? nullptr : y.mutable_data_ptr<scalar_t>();
    double* pp = target ? part.mutable_data_ptr<double>() : nullptr;
    at::parallel_for(0, N * runs_per, std::max<int64_t>(1, 4096 / len), [&](int64_t b, int64_t e) {
      for (int64_t run = b; run < e; ++run) {
        const int64_t i0 = run * len, c0 = cl ? 0 : run % Co;
        float acc = 0.f;
        for (int64_t j = 0; j < len; ++j) {
          const int64_t i = i0 + j, c = cl ? j : c0;
          float v = zp[i] * sc[c] + sh[c];
          if (rp) v += static_cast<float>(rp[i]);
          if (tp) {
            // the loss of the output as the op would return it (rounded to x.dtype), like the reference
            const float d = static_cast<float>(static_cast<scalar_t>(v)) - static_cast<float>(tp[i]);
            acc += d * d;
          } else {
            yp[i] = static_cast<scalar_t>(v);
          }
        }
        if (pp) pp[run] = acc;
      }
    });
  });
  if (target) return part.sum(1).to(at::kFloat);
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(dna_fast, CPU, m) {
  m.impl("se_gate", &se_gate_cpu);
  m.impl("pw_project", &pw_project_cpu);
}

}  // namespace dna_fast
