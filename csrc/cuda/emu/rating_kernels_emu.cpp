// The rating engine's CUDA launchers (csrc/cuda/rating_kernels.cu) compiled as host C++ against the CPU emulator: the
// same launchers, launch configuration and kernels, registered for CPU tensors under dna_fast_emu (schemas in
// ops_emu.cpp); rate_block(..., kernels="cuda-emulated") runs the engine's whole CUDA path on them.
#include "cudasim/cudasim.h"  // first: CUDA's keywords and built-ins as host C++

#include "../rating_kernels.cu"
