// The Python module dna_fast._C: importing it registers the operators; build_info() describes the build.
#include <pybind11/pybind11.h>

#ifndef DNA_FAST_CUDA_ARCH_LIST
#define DNA_FAST_CUDA_ARCH_LIST ""
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "dna_fast native operators (registered as torch.ops.dna_fast.*)";
  m.def("build_info", []() {
    py::dict d;
#ifdef WITH_CUDA
    d["cuda_ops"] = true;
#else
    d["cuda_ops"] = false;
#endif
    d["cuda_arch_list"] = std::string(DNA_FAST_CUDA_ARCH_LIST);
    return d;
  });
}
