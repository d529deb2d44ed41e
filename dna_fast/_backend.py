"""What this installation of dna_fast can run: native ops, CUDA kernels, DALI, a GPU."""

from __future__ import annotations

import importlib.util
from typing import Any


def load_extension():
    """The compiled extension ``dna_fast._C`` or None when it was not built (reference ops are used)."""
    try:
        from . import _C  # noqa: F401  (registers torch.ops.dna_fast.*)
    except ImportError:
        return None
    return _C


def backend_info() -> dict[str, Any]:
    """A dict describing the build and the machine.

    Keys: ``version``, ``torch``, ``cpu_ops`` (native CPU kernels loaded), ``cpu_isa_build`` (the vector
    instruction set the CPU kernels were compiled for: ``"avx2"`` or ``"baseline"``, ``None`` without the
    extension), ``cpu_isa_runtime`` (the best one this CPU has: ``"avx512"``, ``"avx2"`` or ``"baseline"``),
    ``cpu_vector_kernels`` (the AVX2 kernels of the rating engine and channels_last depthwise conv are compiled in and
    run here; else their ATen fallbacks run; ``dna_fast._C.cpu_vector_calls()`` counts their calls), ``cuda_ops``
    (CUDA kernels compiled into the extension),
    ``cuda_arch_list`` (what they were compiled for), ``dali`` (nvidia-dali importable), ``gpu`` (a usable CUDA
    device now), ``gpu_name``, ``torch_cuda`` (the CUDA version torch was built with).
    """
    import torch

    from ._version import __version__

    ext = load_extension()
    info = ext.build_info() if ext is not None else {}
    gpu = torch.cuda.is_available()
    return {
        "version": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpu_ops": ext is not None,
        "cpu_isa_build": info.get("cpu_isa_build"),
        "cpu_isa_runtime": info.get("cpu_isa_runtime"),
        "cpu_vector_kernels": bool(info.get("cpu_avx2_kernels", False))
        and info.get("cpu_isa_runtime") in ("avx2", "avx512"),
        "cuda_ops": bool(info.get("cuda_ops", False)),
        "cuda_arch_list": info.get("cuda_arch_list", ""),
        "dali": importlib.util.find_spec("nvidia.dali") is not None,
        "gpu": gpu,
        "gpu_name": torch.cuda.get_device_name(0) if gpu else None,
    }
