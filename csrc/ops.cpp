// Schemas of the dna_fast operators. Implementations register per dispatch key in cpu/ and cuda/.
#include <torch/library.h>

TORCH_LIBRARY(dna_fast, m) {
  // swish(x * scale + shift) per channel of an NCHW / channels_last tensor (folded BN + activation).
  m.def("scale_shift_swish(Tensor x, Tensor scale, Tensor shift) -> Tensor");
  // Gradient w.r.t. z = x * scale + shift: grad * swish'(z). Reductions for scale/shift happen in Python.
  m.def("scale_shift_swish_backward(Tensor grad, Tensor x, Tensor scale, Tensor shift) -> Tensor");
}
