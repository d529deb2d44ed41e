import pytest
import torch
from torch import nn

import dna_fast
from dna_fast.supernet import Supernet

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


def perturb_bn(model: nn.Module, seed: int = 0) -> None:
    """Make the stored BN statistics and affine parameters matter (fresh BNs are the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)


@pytest.fixture(scope="module")
def mini():
    """A dna_mini supernet in eval mode whose BN statistics matter (a module may define its own ``mini``)."""
    torch.manual_seed(0)
    sn = Supernet("dna_mini").eval()
    perturb_bn(sn)
    return sn
