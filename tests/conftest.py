import pytest
import torch

import dna_fast

HAS_GPU_OPS = torch.cuda.is_available() and dna_fast.backend_info()["cuda_ops"]

# Devices every op test runs on; CUDA entries skip without a GPU (and without compiled CUDA kernels).
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU_OPS, reason="needs a CUDA GPU")]),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: deterministic, and on a shared 2-core machine OpenMP barriers under load cost
    far more than a second thread gives (measured 20-100x slower single ops)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
