"""Images per second of the dali and torchvision backends on the same generated JPEG folder at 224 px.

`pytest benchmarks/test_bench_data.py --benchmark-only -s`. Each timed round is one epoch over 96 JPEGs
(ImageNet-like sizes and file sizes) in 2 classes; train transforms (random resized crop + flip) and val
(resize 256 + center crop 224). Before timing, the dali val batches are checked against the torchvision
backend's (same labels, near-equal pixels). GPU variants run only with CUDA.

Baseline: the torchvision backend, i.e. the standard ``torch.utils.data.DataLoader`` + PIL decoding + torchvision
transforms a user of the original code runs, with the same number of workers, batch size, transforms and files as
the DALI pipeline; each backend is warmed up for one epoch (worker start, pipeline build) and its rate is the best
of 5 epochs, so neither pays set-up costs in the figure. The printed ratio is DALI / torchvision.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import report

from dna_fast.data import build_loader, dali_available

NUM_IMAGES, IMAGE_SIZE, BATCH = 96, 224, 32
WORKERS = max(1, min(4, len(os.sched_getaffinity(0))))
_RATES: dict[tuple[str, str, str], float] = {}

needs_dali = pytest.mark.skipif(not dali_available(), reason="nvidia-dali not installed")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("bench_imagenet")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for i in range(NUM_IMAGES):
            d = root / split / f"class{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            w, h = int(rng.integers(350, 500)), int(rng.integers(300, 400))
            coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
            img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)  # smooth blobs: realistic JPEG sizes
            img.save(d / f"{i}.jpg", quality=90)
    return str(root)


def _epoch(loader) -> int:
    n = 0
    for x, y in loader:  # noqa: B007 (x is read after the loop)
        n += y.numel()
    if x.is_cuda:
        torch.cuda.synchronize()
    return n


def _bench(benchmark, folder, backend, split, device):
    loader = build_loader(backend=backend, root=folder, split=split, batch_size=BATCH, image_size=IMAGE_SIZE,
                          workers=WORKERS, device=device)
    _epoch(loader)  # warm-up: pipeline build / worker start
    n = benchmark.pedantic(_epoch, args=(loader,), rounds=5, iterations=1)
    rate = n / benchmark.stats.stats.min
    _RATES[(backend, split, device)] = rate
    other = _RATES.get(("torchvision" if backend == "dali" else "dali", split, device))
    report(f"data {backend} {split} {device}", images_per_s=rate, workers=WORKERS, cpus=os.cpu_count())
    if other is not None:
        dali, tv = (rate, other) if backend == "dali" else (other, rate)
        report(f"data dali vs torchvision {split} {device}", dali_img_s=dali, torchvision_img_s=tv, ratio=dali / tv,
               workers=WORKERS)


@pytest.fixture(scope="module")
def checked(folder):
    """The dali val output agrees with the torchvision backend's before anything is timed."""
    if dali_available():
        ref = build_loader(backend="torchvision", root=folder, split="val", batch_size=BATCH, workers=0)
        out = build_loader(backend="dali", root=folder, split="val", batch_size=BATCH, workers=WORKERS)
        (xr, yr), (xd, yd) = next(iter(ref)), next(iter(out))
        assert torch.equal(yr, yd) and xr.shape == xd.shape == (BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert (xr - xd).abs().mean() < 0.05, "dali and torchvision val transforms disagree"
    return folder


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("backend", ["torchvision", pytest.param("dali", marks=needs_dali)])
def test_bench_loader_cpu(benchmark, checked, backend, split):
    benchmark.group = f"data-{split}-cpu"
    _bench(benchmark, checked, backend, split, "cpu")


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("backend", ["torchvision", pytest.param("dali", marks=needs_dali)])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_loader_gpu(benchmark, checked, backend, split):
    benchmark.group = f"data-{split}-cuda"
    _bench(benchmark, checked, backend, split, "cuda")


def test_bench_synthetic_cpu(benchmark):
    loader = build_loader(backend="synthetic", batch_size=BATCH, image_size=IMAGE_SIZE, num_samples=NUM_IMAGES)
    assert _epoch(loader) == NUM_IMAGES
    benchmark(_epoch, loader)
