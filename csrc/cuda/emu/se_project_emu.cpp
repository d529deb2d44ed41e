// se_project's CUDA launcher (csrc/cuda/se_project_kernel.cu) compiled as host C++ against the CPU
// emulator: the same launcher, launch configuration and kernels, registered for CPU tensors under dna_fast_emu
// (see ops_emu.cpp).
#include "cudasim/cudasim.h"  // first: CUDA's keywords and built-ins as host C++

#include "../se_project_kernel.cu"
