// ATen side of a CUDA launcher (csrc/cuda/*.cu), spelled so that the same launcher also compiles as host C++ against
// the CPU emulator (csrc/tests/cudasim/cudasim.h, which defines DNA_CUDASIM). There it runs on CPU tensors and
// registers under the operator namespace dna_fast_emu (schemas in csrc/cuda/emu/ops_emu.cpp), so Python tests drive
// the whole CUDA path (launcher, launch configuration, kernel) without a GPU: torch.ops.dna_fast_emu.<op>.
//
//   DNA_CUDA_GUARD(device);            the device guard of the input (nothing under the emulator)
//   DNA_CUDA_STREAM                    the current stream (null under the emulator)
//   DNA_KERNEL_LAUNCH_CHECK();         C10_CUDA_KERNEL_LAUNCH_CHECK (the emulator throws at the launch itself)
//   DNA_CUDA_LIBRARY_IMPL(m) { ... }   TORCH_LIBRARY_IMPL(dna_fast, CUDA, m) / (dna_fast_emu, CPU, m)
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#ifdef DNA_CUDASIM
#define DNA_CUDA_GUARD(device) (void)(device)
#define DNA_CUDA_STREAM static_cast<cudaStream_t>(nullptr)
#define DNA_KERNEL_LAUNCH_CHECK() (void)0
#define DNA_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(dna_fast_emu, CPU, m)
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#define DNA_CUDA_GUARD(device) const c10::cuda::CUDAGuard dna_device_guard_(device)
#define DNA_CUDA_STREAM static_cast<cudaStream_t>(at::cuda::getCurrentCUDAStream())
#define DNA_KERNEL_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#define DNA_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(dna_fast, CUDA, m)
#endif
