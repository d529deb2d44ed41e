// dna_fast._C_emu: the CUDA launchers of csrc/cuda compiled against the CPU emulator (csrc/tests/cudasim/cudasim.h)
// and registered for CPU tensors as torch.ops.dna_fast_emu.<op>, so tests run the whole CUDA path (launcher, launch
// configuration, kernels) without a GPU. A separate module from dna_fast._C: its kernels are host code, and nothing
// here is used outside the tests. Each schema is the one of dna_fast::<op> (csrc/ops.cpp);
// tests/test_emulated_ops.py checks that they stay equal. A new CUDA op: add its schema here and an <op>_emu.cpp.
#include <pybind11/pybind11.h>
#include <torch/library.h>

TORCH_LIBRARY(dna_fast_emu, m) {
  m.def("scale_shift_swish(Tensor x, Tensor scale, Tensor shift) -> Tensor");
  m.def("scale_shift_swish_backward(Tensor grad, Tensor x, Tensor scale, Tensor shift) -> Tensor");
  m.def("dwconv_bn_act(Tensor x, Tensor weight, Tensor scale, Tensor shift, int stride, bool with_sums) "
        "-> (Tensor, Tensor)");
  m.def("se_gate(Tensor pooled, Tensor w_reduce, Tensor b_reduce, Tensor w_expand, Tensor b_expand) -> Tensor");
  m.def("pw_project(Tensor x, Tensor gate, Tensor weight, Tensor scale, Tensor shift, Tensor? residual, "
        "Tensor? target) -> Tensor");
  // the rating engine's fused passes (rating_kernels_emu.cpp)
  m.def("swish_rows_(Tensor(a!) x, Tensor? scale, Tensor? shift, int groups) -> Tensor");
  m.def("linear_sq_err(Tensor x, Tensor weight, Tensor offset, Tensor shift, Tensor? gate=None) -> (Tensor, Tensor)");
  m.def("linear_col_dev(Tensor x, Tensor weight, Tensor mean, Tensor? gate=None) -> Tensor");
  m.def("expand_dwconv_bn_act(Tensor x, Tensor w1, Tensor b1, Tensor w_dw, Tensor scale, Tensor shift, int stride) "
        "-> (Tensor, Tensor)");
  m.def("expand_dwconv_stats(Tensor x, Tensor w1, Tensor b1, Tensor w_dw, int stride) -> (Tensor, Tensor, Tensor)");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "dna_fast's CUDA ops run by the CPU emulator on CPU tensors (torch.ops.dna_fast_emu.*), for tests";
}
