// CPU kernels of scale_shift_swish: parallel over (n, c) planes in NCHW, over rows in channels_last.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "dna_fast/checks.h"
#include "dna_fast/math.h"

namespace dna_fast {
namespace {

// Calls f(i, c) for each element index i with channel c, chunked for at::parallel_for.
template <typename F>
void for_each_channel_elem(int64_t N, int64_t C, int64_t HW, bool cl, F f) {
  if (cl) {  // channels_last: rows of C contiguous channels
    at::parallel_for(0, N * HW, 64, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        for (int64_t c = 0; c < C; ++c) f(r * C + c, c);
    });
  } else {  // NCHW: planes of HW contiguous pixels of one channel
    at::parallel_for(0, N * C, 1, [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) {
        const int64_t c = p % C;
        for (int64_t j = p * HW, end = j + HW; j < end; ++j) f(j, c);
      }
    });
  }
}

using Vec = at::vec::Vectorized<float>;

// y = swish(x * scale + shift) on a run of `len` contiguous elements; scale/shift either scalars broadcast over
// the run (NCHW plane) or arrays indexed like x (a channels_last row). fp32 math, vectorized with at::vec.
template <typename scalar_t, bool kRow>
void sss_run(const scalar_t* x, scalar_t* y, int64_t len, const float* sc, const float* sh) {
  int64_t j = 0;
  const Vec one(1.f);
  if constexpr (std::is_same_v<scalar_t, float>) {
    // NOTE exp_u20 (<= 20 ulp, what ATen's own SiLU uses) and a partial last vector: a scalar std::exp tail cost
    // ~20 % on 14x14 planes (196 = 24 x 8 + 4).
    const Vec vs0(sc[0]), vb0(sh[0]);
    for (; j < len; j += Vec::size()) {
      const int64_t n = std::min<int64_t>(Vec::size(), len - j);
      const Vec vs = kRow ? Vec::loadu(sc + j, n) : vs0, vb = kRow ? Vec::loadu(sh + j, n) : vb0;
      const Vec z = at::vec::fmadd(Vec::loadu(x + j, n), vs, vb);
      (z / (one + z.neg().exp_u20())).store(y + j, n);
    }
  }
  for (; j < len; ++j) {
    const int64_t c = kRow ? j : 0;
    y[j] = static_cast<scalar_t>(scale_shift_swish(static_cast<float>(x[j]), sc[c], sh[c]));
  }
}

at::Tensor scale_shift_swish_cpu(const at::Tensor& x_, const at::Tensor& scale_, const at::Tensor& shift_) {
  check_scale_shift(x_, scale_, shift_, "scale_shift_swish");
  const bool cl = prefers_channels_last(x_);
  const at::Tensor x = contiguous_as(x_, cl);
  const at::Tensor scale = float_contiguous(scale_), shift = float_contiguous(shift_);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const float* sc = scale.data_ptr<float>();
  const float* sh = shift.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scale_shift_swish_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    if (cl) {  // rows of C channels
      at::parallel_for(0, N * HW, std::max<int64_t>(1, 4096 / C), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) sss_run<scalar_t, true>(xp + r * C, yp + r * C, C, sc, sh);
      });
    } else {  // planes of HW pixels of one channel
      at::parallel_for(0, N * C, std::max<int64_t>(1, 4096 / HW), [&](int64_t b, int64_t e) {
        for (int64_t p = b; p < e; ++p) {
          const int64_t c = p % C;
          sss_run<scalar_t, false>(xp + p * HW, yp + p * HW, HW, sc + c, sh + c);
        }
      });
    }
  });
  return y;
}

at::Tensor scale_shift_swish_backward_cpu(const at::Tensor& g_, const at::Tensor& x_, const at::Tensor& scale_,
                                          const at::Tensor& shift_) {
  check_scale_shift(x_, scale_, shift_, "scale_shift_swish_backward");
  TORCH_CHECK(g_.sizes() == x_.sizes(), "scale_shift_swish_backward: grad ", g_.sizes(), " != input ", x_.sizes());
  const bool cl = prefers_channels_last(x_);
  const at::Tensor x = contiguous_as(x_, cl), g = contiguous_as(g_.to(x_.scalar_type()), cl);
  const at::Tensor scale = float_contiguous(scale_), shift = float_contiguous(shift_);
  at::Tensor gz = at::empty_like(x);
  if (x.numel() == 0) return gz;
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const float* sc = scale.data_ptr<float>();
  const float* sh = shift.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scale_shift_swish_backward_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* op = gz.data_ptr<scalar_t>();
    for_each_channel_elem(N, C, HW, cl, [&](int64_t i, int64_t c) {
      op[i] = static_cast<scalar_t>(
          scale_shift_swish_grad_z(static_cast<float>(gp[i]), static_cast<float>(xp[i]), sc[c], sh[c]));
    });
  });
  return gz;
}

}  // namespace

TORCH_LIBRARY_IMPL(dna_fast, CPU, m) {
  m.impl("scale_shift_swish", &scale_shift_swish_cpu);
  m.impl("scale_shift_swish_backward", &scale_shift_swish_backward_cpu);
}

}  // namespace dna_fast
