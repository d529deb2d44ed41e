// CUDA kernels of se_gate and pw_project.
//
// se_gate: one block per sample; pooled and the hidden vector in shared memory; one warp per hidden unit for the
// reduce (lane-strided dot product + shuffle reduction), one thread per channel for the expand. fp32 throughout.
// pw_project: the GEMM of the per-sample gated weights with x by cuBLAS (at::bmm in x.dtype, fp32 accumulation),
// then one fused epilogue kernel: BN (+ residual) into the output, or with a target the squared differences reduced
// per block and added to loss[n] with one atomicAdd per block.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

#include "dna_fast/checks.h"
#include "dna_fast/cuda_helpers.cuh"
#include "dna_fast/math.h"
#include "dna_fast/project.h"

namespace dna_fast {
namespace {

__global__ void se_gate_kernel(const float* __restrict__ pooled, const float* __restrict__ wr,
                               const float* __restrict__ br, const float* __restrict__ we,
                               const float* __restrict__ be, float* __restrict__ gate, int C, int R) {
  extern __shared__ float smem[];
  float* p = smem;      // [C]
  float* h = smem + C;  // [R]
  const int64_t n = blockIdx.x;
  for (int c = threadIdx.x; c < C; c += blockDim.x) p[c] = pooled[n * C + c];
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  for (int r = warp; r < R; r += nwarps) {
    float acc = 0.f;
    for (int c = lane; c < C; c += 32) acc += wr[static_cast<int64_t>(r) * C + c] * p[c];
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) h[r] = swishf(acc + br[r]);
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = be[c];
    for (int r = 0; r < R; ++r) acc += we[static_cast<int64_t>(c) * R + r] * h[r];
    gate[n * C + c] = sigmoidf_(acc);
  }
}

at::Tensor se_gate_cuda(const at::Tensor& pooled, const at::Tensor& w_reduce, const at::Tensor& b_reduce,
                        const at::Tensor& w_expand, const at::Tensor& b_expand) {
  check_se_gate_args(pooled, w_reduce, b_reduce, w_expand, b_expand);
  const c10::cuda::CUDAGuard guard(pooled.device());
  const int64_t N = pooled.size(0), C = pooled.size(1), R = w_reduce.size(0);
  const at::Tensor p = pooled.to(at::kFloat).contiguous(), wr = w_reduce.to(at::kFloat).contiguous();
  const at::Tensor we = w_expand.to(at::kFloat).contiguous();
  const at::Tensor br = b_reduce.to(at::kFloat).contiguous(), be = b_expand.to(at::kFloat).contiguous();
  at::Tensor gate = at::empty({N, C}, p.options());
  if (N > 0 && C > 0) {
    const size_t smem = static_cast<size_t>(C + R) * sizeof(float);
    TORCH_CHECK(smem <= 48 * 1024, "se_gate: C + R = ", C + R, " floats exceed the 48 KiB of shared memory");
    se_gate_kernel<<<static_cast<unsigned int>(N), kThreads, smem, at::cuda::getCurrentCUDAStream()>>>(
        p.const_data_ptr<float>(), wr.const_data_ptr<float>(), br.const_data_ptr<float>(), we.const_data_ptr<float>(),
        be.const_data_ptr<float>(), gate.mutable_data_ptr<float>(), static_cast<int>(C), static_cast<int>(R));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return gate.to(pooled.scalar_type());
}

// Elements [blockIdx.x * chunk, ...) of sample blockIdx.y; z/res/tgt/y contiguous in the output's layout.
template <typename scalar_t>
__global__ void pw_epilogue(const scalar_t* __restrict__ z, const float* __restrict__ scale,
                            const float* __restrict__ shift, const scalar_t* __restrict__ res,
                            const scalar_t* __restrict__ tgt, scalar_t* __restrict__ y, float* __restrict__ loss,
                            int64_t per, int64_t chunk, int64_t Co, int64_t HW, bool cl) {
  const int64_t n = blockIdx.y, base = n * per, begin = blockIdx.x * chunk;
  const int64_t end = begin + chunk < per ? begin + chunk : per;
  float acc = 0.f;
  for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
    const int64_t i = base + j, c = channel_of(i, Co, HW, cl);
    float v = static_cast<float>(z[i]) * scale[c] + shift[c];
    if (res != nullptr) v += static_cast<float>(res[i]);
    if (tgt != nullptr) {
      const float d = static_cast<float>(static_cast<scalar_t>(v)) - static_cast<float>(tgt[i]);
      acc += d * d;
    } else {
      y[i] = static_cast<scalar_t>(v);
    }
  }
  if (tgt != nullptr) {
    const float total = block_reduce_sum(acc);
    if (threadIdx.x == 0) atomicAdd(loss + n, total);
  }
}

at::Tensor pw_project_cuda(const at::Tensor& x_, const at::Tensor& gate, const at::Tensor& weight,
                           const at::Tensor& scale_, const at::Tensor& shift_,
                           const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& target) {
  check_pw_project_args(x_, gate, weight, scale_, shift_, residual, target);
  const c10::cuda::CUDAGuard guard(x_.device());
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
    const int64_t chunk = 8 * kThreads * 4;  // elements per block
    const dim3 grid(static_cast<unsigned int>(ceil_div(per, chunk)), static_cast<unsigned int>(N));
    TORCH_CHECK(N <= 65535, "pw_project: batch ", N, " exceeds 65535 (grid.y)");
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pw_project_cuda", [&] {
      pw_epilogue<scalar_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          z.const_data_ptr<scalar_t>(), scale.const_data_ptr<float>(), shift.const_data_ptr<float>(),
          residual ? res.const_data_ptr<scalar_t>() : nullptr, target ? tgt.const_data_ptr<scalar_t>() : nullptr,
          target ? nullptr : y.mutable_data_ptr<scalar_t>(), target ? loss.mutable_data_ptr<float>() : nullptr, per,
          chunk, Co, HW, cl);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (target) return loss;
  return dbl ? y.to(at::kDouble) : y;
}

}  // namespace

TORCH_LIBRARY_IMPL(dna_fast, CUDA, m) {
  m.impl("se_gate", &se_gate_cuda);
  m.impl("pw_project", &pw_project_cuda);
}

}  // namespace dna_fast
