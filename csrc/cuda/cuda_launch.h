// The few spellings a kernel of csrc/cuda needs so that the same source compiles with nvcc and, as host C++, under
// the CPU emulator (csrc/tests/cudasim/cudasim.h, included before this header; it defines DNA_CUDASIM). ATen-free:
// the kernel headers (`*_kernels.cuh`) include it.
//
//   DNA_LAUNCH(grid, block, smem, stream, kernel<T, K>)(args...)  kernel<<<grid, block, smem, stream>>>(args...)
//   DNA_SHARED(float, tile, [8][33]);                            __shared__ float tile[8][33];
//   DNA_EXTERN_SHARED(float, smem);                              extern __shared__ float smem[];
//
// Under the emulator the launch runs synchronously on the calling thread (the stream is ignored) and throws
// cudasim::Error on an invalid configuration or a failed check; shared memory is filled with NaN bytes before every
// block. DNA_SHARED rather than `__shared__`: GCC drops the attribute that lets the emulator find a `__shared__`
// static inside a function template.
#pragma once

#ifdef DNA_CUDASIM
#define DNA_LAUNCH(grid, block, smem, stream, ...) ::cudasim::launch(__VA_ARGS__, grid, block, smem, #__VA_ARGS__)
#define DNA_SHARED(T, name, dims) CUDASIM_SHARED(T, name, dims)
#define DNA_EXTERN_SHARED(T, name) CUDASIM_EXTERN_SHARED(T, name)
#else
#define DNA_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define DNA_SHARED(T, name, dims) __shared__ T name dims
#define DNA_EXTERN_SHARED(T, name) extern __shared__ T name[]
#endif
