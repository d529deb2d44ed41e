// scale_shift_swish's CUDA launcher (csrc/cuda/scale_shift_swish_kernel.cu) compiled as host C++ against the CPU
// emulator: the same launcher, launch configuration and kernels, registered for CPU tensors under dna_fast_emu
// (see ops_emu.cpp).
#include "cudasim/cudasim.h"  // first: CUDA's keywords and built-ins as host C++

#include "../scale_shift_swish_kernel.cu"
