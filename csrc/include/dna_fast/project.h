// Host-side pieces shared by the CPU and CUDA launchers of se_gate and pw_project: argument checks and the batched
// GEMM of pw_project with the SE gate folded into the weights (W_n = W * gate[n], [Co, C] per sample), so the
// gated input x * gate is never materialized.
#pragma once

#include <ATen/ATen.h>

#include "dna_fast/checks.h"

namespace dna_fast {

inline void check_se_gate_args(const at::Tensor& p, const at::Tensor& wr, const at::Tensor& br, const at::Tensor& we,
                               const at::Tensor& be) {
  constexpr const char* op = "se_gate";
  TORCH_CHECK(p.dim() == 2, op, ": pooled must be 2-D [N, C], got ", p.dim(), "-D");
  const int64_t C = p.size(1);
  TORCH_CHECK(wr.dim() == 2 && wr.size(1) == C, op, ": w_reduce must be [R, C] with C = ", C, ", got ", wr.sizes());
  const int64_t R = wr.size(0);
  TORCH_CHECK(br.dim() == 1 && br.size(0) == R, op, ": b_reduce must be [R] = [", R, "], got ", br.sizes());
  TORCH_CHECK(we.dim() == 2 && we.size(0) == C && we.size(1) == R, op, ": w_expand must be [C, R] = [", C, ", ", R,
              "], got ", we.sizes());
  TORCH_CHECK(be.dim() == 1 && be.size(0) == C, op, ": b_expand must be [C] = [", C, "], got ", be.sizes());
  TORCH_CHECK(at::isFloatingType(p.scalar_type()), op, ": expected floating-point pooled, got ", p.scalar_type());
  for (const at::Tensor* t : {&wr, &br, &we, &be})
    TORCH_CHECK(t->device() == p.device(), op, ": all tensors must be on ", p.device(), ", got one on ", t->device());
}

inline void check_pw_project_args(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& w,
                                  const at::Tensor& scale, const at::Tensor& shift,
                                  const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& target) {
  constexpr const char* op = "pw_project";
  TORCH_CHECK(x.dim() == 4, op, ": expected a 4-D input [N, C, H, W], got ", x.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": expected a floating-point input, got ", x.scalar_type());
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK(gate.dim() == 2 && gate.size(0) == N && gate.size(1) == C, op, ": gate must be [N, C] = [", N, ", ", C,
              "], got ", gate.sizes());
  TORCH_CHECK(w.dim() == 4 && w.size(1) == C && w.size(2) == 1 && w.size(3) == 1, op,
              ": weight must be [Co, C, 1, 1] with C = ", C, ", got ", w.sizes());
  const int64_t Co = w.size(0);
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == Co, op, ": scale must be [Co] = [", Co, "], got ", scale.sizes());
  TORCH_CHECK(shift.dim() == 1 && shift.size(0) == Co, op, ": shift must be [Co] = [", Co, "], got ", shift.sizes());
  const std::vector<int64_t> out{N, Co, x.size(2), x.size(3)};
  if (residual)
    TORCH_CHECK(residual->sizes() == at::IntArrayRef(out), op, ": residual must be ", at::IntArrayRef(out), ", got ",
                residual->sizes());
  if (target)
    TORCH_CHECK(target->sizes() == at::IntArrayRef(out), op, ": target must be ", at::IntArrayRef(out), ", got ",
                target->sizes());
  for (const at::Tensor* t : {&gate, &w, &scale, &shift})
    TORCH_CHECK(t->device() == x.device(), op, ": all tensors must be on ", x.device(), ", got one on ", t->device());
  if (residual) TORCH_CHECK(residual->device() == x.device(), op, ": residual is on ", residual->device());
  if (target) TORCH_CHECK(target->device() == x.device(), op, ": target is on ", target->device());
}

// z = conv1x1(x * gate, weight) in `dtype`, laid out like the output: [N, Co, HW] (NCHW) or [N, HW, Co]
// (channels_last), contiguous. x must already be contiguous in that layout.
inline at::Tensor pw_gemm(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& w, bool cl,
                          at::ScalarType dtype) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), Co = w.size(0);
  const at::Tensor wg = (w.reshape({1, Co, C}).to(at::kFloat) * gate.to(at::kFloat).unsqueeze(1)).to(dtype);
  const at::Tensor xd = x.to(dtype);
  if (cl) return at::bmm(xd.permute({0, 2, 3, 1}).reshape({N, HW, C}), wg.transpose(1, 2));  // [N, HW, Co]
  return at::bmm(wg, xd.reshape({N, C, HW}));                                                 // [N, Co, HW]
}

}  // namespace dna_fast
