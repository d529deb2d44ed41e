// CUDA kernel of dwconv_bn_act: depthwise conv (padding k / 2) + folded BN + swish (+ per-(n, c) spatial sums).
//
// One block computes a kTileH x kTileW tile of outputs of one (n, c) plane: the input window of the tile (zero
// padding included) is staged in shared memory as fp32, the k * k weights sit in registers, each thread computes
// one output with fp32 accumulation, and with sums the block reduces its outputs and adds them to sums[n, c] with one
// atomicAdd. Planes are on grid.x (N * C can exceed 65535), tiles on grid.y.
//
// channels_last: no shared memory; a block is 32 channels x 8 pixel lanes, consecutive threads take consecutive
// channels of one pixel (coalesced loads and stores), each thread walks kClPixels / 8 output pixels of its channel
// reading the k * k taps straight from global memory (neighbouring pixels' reuse comes from L1 / L2), and the
// per-channel sums are reduced over the 8 lanes in shared memory, then added with one atomicAdd per channel.
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

constexpr int kClChannels = 32, kClLanes = 8, kClPixels = 64;  // block: 32 channels x 8 lanes, 64 pixels

template <typename scalar_t, int K, int S>
__global__ void __launch_bounds__(kClChannels * kClLanes)
    dwconv_bn_act_cl(const scalar_t* __restrict__ x, const float* __restrict__ w, const float* __restrict__ scale,
                     const float* __restrict__ shift, scalar_t* __restrict__ y, float* __restrict__ sums, int C, int H,
                     int W, int Ho, int Wo) {
  __shared__ float part[kClLanes][kClChannels];
  const int tx = threadIdx.x % kClChannels, ty = threadIdx.x / kClChannels;
  const int c = blockIdx.x * kClChannels + tx;
  const int64_t n = blockIdx.z;
  const int p0 = blockIdx.y * kClPixels, p1 = min(p0 + kClPixels, Ho * Wo);
  float local = 0.f;
  if (c < C) {
    const float sc = scale[c], sh = shift[c];
    const scalar_t* __restrict__ xn = x + n * H * W * C;
    for (int p = p0 + ty; p < p1; p += kClLanes) {
      const int oy = p / Wo, ox = p % Wo;
      const int iy0 = static_cast<int>(dw_in_start(oy, K, S)), ix0 = static_cast<int>(dw_in_start(ox, K, S));
      float acc = 0.f;
#pragma unroll
      for (int ky = 0; ky < K; ++ky) {
        const int iy = iy0 + ky;
        if (!dw_inside(iy, H)) continue;
#pragma unroll
        for (int kx = 0; kx < K; ++kx) {
          const int ix = ix0 + kx;
          if (!dw_inside(ix, W)) continue;
          acc += w[c * K * K + ky * K + kx] * static_cast<float>(xn[(static_cast<int64_t>(iy) * W + ix) * C + c]);
        }
      }
      const float v = swishf(acc * sc + sh);
      y[((n * Ho + oy) * Wo + ox) * C + c] = static_cast<scalar_t>(v);
      local += v;
    }
  }
  if (sums == nullptr) return;  // uniform over the block
  part[ty][tx] = local;
  __syncthreads();
  if (ty == 0 && c < C) {
    float total = 0.f;
#pragma unroll
    for (int l = 0; l < kClLanes; ++l) total += part[l][tx];
    atomicAdd(sums + n * C + c, total);
  }
}

template <typename scalar_t, int K, int S>
void launch_cl(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale, const at::Tensor& shift,
               at::Tensor& y, float* sums) {
  const int C = x.size(1), H = x.size(2), W = x.size(3), Ho = y.size(2), Wo = y.size(3);
  TORCH_CHECK(x.size(0) <= 65535, "dwconv_bn_act: channels_last batch ", x.size(0), " exceeds 65535 (grid.z)");
  const dim3 grid(static_cast<unsigned int>(ceil_div(C, kClChannels)),
                  static_cast<unsigned int>(ceil_div(static_cast<int64_t>(Ho) * Wo, kClPixels)),
                  static_cast<unsigned int>(x.size(0)));
  dwconv_bn_act_cl<scalar_t, K, S><<<grid, kClChannels * kClLanes, 0, at::cuda::getCurrentCUDAStream()>>>(
      x.const_data_ptr<scalar_t>(), w.const_data_ptr<float>(), scale.const_data_ptr<float>(),
      shift.const_data_ptr<float>(), y.mutable_data_ptr<scalar_t>(), sums, C, H, W, Ho, Wo);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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

// Runtime (layout, k, stride) -> template constants.
template <typename scalar_t, int K, int S>
void launch_layout(bool cl, const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                   const at::Tensor& shift, at::Tensor& y, float* sums) {
  if (cl)
    launch_cl<scalar_t, K, S>(x, w, scale, shift, y, sums);
  else
    launch<scalar_t, K, S>(x, w, scale, shift, y, sums);
}

template <typename scalar_t>
void launch_for(bool cl, int64_t k, int64_t s, const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                const at::Tensor& shift, at::Tensor& y, float* sums) {
  if (k == 3 && s == 1) return launch_layout<scalar_t, 3, 1>(cl, x, w, scale, shift, y, sums);
  if (k == 3 && s == 2) return launch_layout<scalar_t, 3, 2>(cl, x, w, scale, shift, y, sums);
  if (k == 5 && s == 1) return launch_layout<scalar_t, 5, 1>(cl, x, w, scale, shift, y, sums);
  if (k == 5 && s == 2) return launch_layout<scalar_t, 5, 2>(cl, x, w, scale, shift, y, sums);
  if (k == 7 && s == 1) return launch_layout<scalar_t, 7, 1>(cl, x, w, scale, shift, y, sums);
  if (k == 7 && s == 2) return launch_layout<scalar_t, 7, 2>(cl, x, w, scale, shift, y, sums);
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
  const at::Tensor x = contiguous_as(dbl ? x_.to(at::kFloat) : x_, cl);
  at::Tensor y = at::empty({N, C, Ho, Wo}, x.options().memory_format(cl ? at::MemoryFormat::ChannelsLast
                                                                         : at::MemoryFormat::Contiguous));
  if (y.numel() > 0) {
    const at::Tensor w = weight.to(at::kFloat).contiguous();
    const at::Tensor scale = float_contiguous(scale_), shift = float_contiguous(shift_);
    float* sp = with_sums ? sums.mutable_data_ptr<float>() : nullptr;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dwconv_bn_act_cuda", [&] {
      if constexpr (!std::is_same_v<scalar_t, double>) launch_for<scalar_t>(cl, k, stride, x, w, scale, shift, y, sp);
    });
  }
  if (dbl) y = y.to(at::kDouble);  // keeps the memory format
  return {y, sums};
}

}  // namespace

TORCH_LIBRARY_IMPL(dna_fast, CUDA, m) { m.impl("dwconv_bn_act", &dwconv_bn_act_cuda); }

}  // namespace dna_fast
