// CUDA kernel of dwconv_bn_act: depthwise conv (padding k / 2) + folded BN + swish (+ per-(n, c) spatial sums).
//
// One block computes a kTileH x kTileW tile of outputs of one (n, c) plane: the input window of the tile (zero
// padding included) is staged in shared memory as fp32, the k * k weights sit in registers, each thread computes
// one output with fp32 accumulation, and with sums the block reduces its outputs and adds them to sums[n, c] with one
// atomicAdd. Planes are on grid.x (N * C can exceed 65535), tiles on grid.y. channels_last inputs are run through
// the NCHW kernel (converted in and out; a native channels_last kernel is future work).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "dna_fast/checks.h"
#include "dna_fast/cuda_helpers.cuh"
#include "dna_fast/dwconv.h"
#include "dna_fast/math.h"

namespace dna_fast {
namespace {

constexpr int kTileW = 32, kTileH = 8, kTileThreads = kTileW * kTileH;  // one output per thread

template <typename scalar_t, int K, int S>
__global__ void __launch_bounds__(kTileThreads)
    dwconv_bn_act_nchw(const scalar_t* __restrict__ x, const float* __restrict__ w, const float* __restrict__ scale,
                       const float* __restrict__ shift, scalar_t* __restrict__ y, float* __restrict__ sums, int C,
                       int H, int W, int Ho, int Wo, int tiles_w) {
  constexpr int kInH = (kTileH - 1) * S + K, kInW = (kTileW - 1) * S + K;  // = dw_in_extent(tile, K, S)
  __shared__ float tile[kInH][kInW + 1];
  const int64_t plane = blockIdx.x;  // n * C + c
  const int c = static_cast<int>(plane % C);
  const int oy0 = (blockIdx.y / tiles_w) * kTileH, ox0 = (blockIdx.y % tiles_w) * kTileW;
  const int iy0 = static_cast<int>(dw_in_start(oy0, K, S)), ix0 = static_cast<int>(dw_in_start(ox0, K, S));
  const scalar_t* __restrict__ xp = x + plane * H * W;
  for (int i = threadIdx.x; i < kInH * kInW; i += kTileThreads) {
    const int r = i / kInW, q = i % kInW, iy = iy0 + r, ix = ix0 + q;
    tile[r][q] = (dw_inside(iy, H) && dw_inside(ix, W)) ? static_cast<float>(xp[static_cast<int64_t>(iy) * W + ix])
                                                        : 0.f;
  }
  float wk[K * K];
#pragma unroll
  for (int t = 0; t < K * K; ++t) wk[t] = w[c * K * K + t];
  __syncthreads();
  const int ly = threadIdx.x / kTileW, lx = threadIdx.x % kTileW, oy = oy0 + ly, ox = ox0 + lx;
  float v = 0.f;
  if (oy < Ho && ox < Wo) {
    float acc = 0.f;
#pragma unroll
    for (int ky = 0; ky < K; ++ky)
#pragma unroll
      for (int kx = 0; kx < K; ++kx) acc += wk[ky * K + kx] * tile[ly * S + ky][lx * S + kx];
    v = swishf(acc * scale[c] + shift[c]);
    y[plane * Ho * Wo + static_cast<int64_t>(oy) * Wo + ox] = static_cast<scalar_t>(v);
  }
  if (sums != nullptr) {
    const float total = block_reduce_sum(v);
    if (threadIdx.x == 0) atomicAdd(sums + plane, total);
  }
}

template <typename scalar_t, int K, int S>
void launch(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale, const at::Tensor& shift, at::Tensor& y,
            float* sums) {
  const int C = x.size(1), H = x.size(2), W = x.size(3), Ho = y.size(2), Wo = y.size(3);
  const int tiles_w = static_cast<int>(ceil_div(Wo, kTileW)), tiles_h = static_cast<int>(ceil_div(Ho, kTileH));
  const dim3 grid(static_cast<unsigned int>(x.size(0) * C), static_cast<unsigned int>(tiles_w * tiles_h));
  dwconv_bn_act_nchw<scalar_t, K, S><<<grid, kTileThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      x.const_data_ptr<scalar_t>(), w.const_data_ptr<float>(), scale.const_data_ptr<float>(),
      shift.const_data_ptr<float>(), y.mutable_data_ptr<scalar_t>(), sums, C, H, W, Ho, Wo, tiles_w);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Runtime (k, stride) -> template constants.
template <typename scalar_t>
void launch_for(int64_t k, int64_t s, const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                const at::Tensor& shift, at::Tensor& y, float* sums) {
  if (k == 3 && s == 1) return launch<scalar_t, 3, 1>(x, w, scale, shift, y, sums);
  if (k == 3 && s == 2) return launch<scalar_t, 3, 2>(x, w, scale, shift, y, sums);
  if (k == 5 && s == 1) return launch<scalar_t, 5, 1>(x, w, scale, shift, y, sums);
  if (k == 5 && s == 2) return launch<scalar_t, 5, 2>(x, w, scale, shift, y, sums);
  if (k == 7 && s == 1) return launch<scalar_t, 7, 1>(x, w, scale, shift, y, sums);
  if (k == 7 && s == 2) return launch<scalar_t, 7, 2>(x, w, scale, shift, y, sums);
  TORCH_INTERNAL_ASSERT(false, "dwconv_bn_act: unsupported k / stride (checked earlier)");
}

std::tuple<at::Tensor, at::Tensor> dwconv_bn_act_cuda(const at::Tensor& x_, const at::Tensor& weight,
                                                      const at::Tensor& scale_, const at::Tensor& shift_,
                                                      int64_t stride, bool with_sums) {
  check_dwconv_args(x_, weight, scale_, shift_, stride);
  const c10::cuda::CUDAGuard guard(x_.device());
  const bool cl = prefers_channels_last(x_);
  const int64_t k = weight.size(2);
  const int64_t N = x_.size(0), C = x_.size(1);
  const int64_t Ho = dw_out_size(x_.size(2), k, stride), Wo = dw_out_size(x_.size(3), k, stride);
  const auto f32 = x_.options().dtype(at::kFloat);
  at::Tensor sums = with_sums ? at::zeros({N, C}, f32) : at::empty({0}, f32);
  const bool dbl = x_.scalar_type() == at::kDouble;  // double runs through the fp32 kernel
  const at::Tensor x = (dbl ? x_.to(at::kFloat) : x_).contiguous();
  at::Tensor y = at::empty({N, C, Ho, Wo}, x.options());
  if (y.numel() > 0) {
    const at::Tensor w = weight.to(at::kFloat).contiguous();
    const at::Tensor scale = scale_.to(at::kFloat).contiguous(), shift = shift_.to(at::kFloat).contiguous();
    float* sp = with_sums ? sums.mutable_data_ptr<float>() : nullptr;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dwconv_bn_act_cuda", [&] {
      if constexpr (!std::is_same_v<scalar_t, double>) launch_for<scalar_t>(k, stride, x, w, scale, shift, y, sp);
    });
  }
  if (dbl) y = y.to(at::kDouble);
  if (cl) y = y.contiguous(at::MemoryFormat::ChannelsLast);
  return {y, sums};
}

}  // namespace

TORCH_LIBRARY_IMPL(dna_fast, CUDA, m) { m.impl("dwconv_bn_act", &dwconv_bn_act_cuda); }

}  // namespace dna_fast
