"""Tests for dna_fast.data: folder scanning, sharding, the dali (CPU backend) / torchvision / embedded / synthetic
loaders, normalization, exactly-once val across ranks and errors naming bad paths.

The folder tree is made here: every image is one solid color that encodes its id, so each output image can be
traced back to its file (and so to its class folder) after decoding, cropping and normalization.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from dna_fast.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    build_loader,
    dali_available,
    scan_folder,
    shard_indices,
)
from dna_fast.data import embedded as emb

PIL = pytest.importorskip("PIL.Image")

CLASSES = ["b_yak", "a_ant", "c_cat"]  # created in this order; labels follow the sorted names
SIZES = [(37, 23), (50, 61), (29, 29), (80, 45), (33, 70), (19, 17)]  # odd sizes and aspect ratios
PER_CLASS = {"train": 4, "val": 5}
STEP, BASE = 40, 20
BACKENDS = [
    "torchvision",
    pytest.param("dali", marks=pytest.mark.skipif(not dali_available(), reason="nvidia-dali not installed")),
]
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _color(i: int) -> tuple[int, int, int]:
    return BASE + STEP * (i % 6), BASE + STEP * (i // 6 % 6), BASE + STEP * (i // 36)


def _decode_ids(images: torch.Tensor) -> list[int]:
    """Image ids from the center pixels of normalized images (inverse of :func:`_color`)."""
    h, w = images.shape[-2:]
    rgb = ((images.float().cpu() * STD + MEAN) * 255)[:, :, h // 2, w // 2]
    lv = ((rgb - BASE) / STEP).round().long()
    return (lv[:, 0] + 6 * lv[:, 1] + 36 * lv[:, 2]).tolist()


def _make_tree(root, corrupt: str | None = None) -> dict[str, dict[int, int]]:
    """Writes root/{train,val}/<class>/*.jpg; returns split -> {image id: label}. ``corrupt``: one bad val file."""
    ids: dict[str, dict[int, int]] = {}
    i = 0
    for split, n in PER_CLASS.items():
        ids[split] = {}
        for name in CLASSES:
            folder = os.path.join(root, split, name)
            os.makedirs(folder)
            for j in range(n):
                w, h = SIZES[i % len(SIZES)]
                PIL.new("RGB", (w, h), _color(i)).save(os.path.join(folder, f"img{j}.jpg"), quality=95)
                ids[split][i] = sorted(CLASSES).index(name)
                i += 1
    if corrupt:
        with open(os.path.join(root, "val", corrupt), "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return ids


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    return str(root), _make_tree(root)


@pytest.fixture(scope="module")
def bad_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("corrupt")
    return str(root), _make_tree(root, corrupt="a_ant/zz_broken.jpg")


def _loader(backend, root, split, **kw):
    kw.setdefault("workers", 1)
    return build_loader(backend=backend, root=root, split=split, batch_size=kw.pop("batch_size", 4),
                        image_size=kw.pop("image_size", 16), **kw)


def _run(loader) -> tuple[list[int], list[int], int]:
    """(image ids, labels, batches) of one epoch, checking each batch's shape and types."""
    ids, labels, batches = [], [], 0
    for x, y in loader:
        assert x.dim() == 4 and x.shape[1:] == (3, loader.image_size, loader.image_size)
        assert x.dtype == loader.dtype and y.dtype == torch.int64 and x.shape[0] == y.shape[0] <= loader.batch_size
        assert x.is_contiguous()
        ids += _decode_ids(x)
        labels += y.tolist()
        batches += 1
    return ids, labels, batches


def test_scan_folder_sorted_class_labels(tree):
    root, ids = tree
    images = scan_folder(root, "val")
    assert images.classes == sorted(CLASSES)
    assert len(images) == len(ids["val"])
    for path, label in zip(images.files, images.labels):
        assert os.path.basename(os.path.dirname(path)) == sorted(CLASSES)[label]


@pytest.mark.parametrize("n,world", [(15, 1), (15, 2), (16, 3), (7, 4), (100, 8)])
def test_shard_indices_partition(n, world):
    val = [shard_indices(n, rank=r, world_size=world, shuffle=False, seed=0, epoch=0) for r in range(world)]
    assert sorted(np.concatenate(val).tolist()) == list(range(n))  # every sample once, none padded
    train = [shard_indices(n, rank=r, world_size=world, shuffle=True, seed=3, epoch=1) for r in range(world)]
    flat = np.concatenate(train).tolist()
    assert len(set(flat)) == len(flat) == n - n % world and {len(t) for t in train} == {n // world}
    again = shard_indices(n, rank=0, world_size=world, shuffle=True, seed=3, epoch=1)
    assert np.array_equal(train[0], again)


@pytest.mark.parametrize("backend", BACKENDS)
def test_val_each_image_once_labels_and_normalization(backend, tree):
    root, ids = tree
    loader = _loader(backend, root, "val")
    assert loader.num_classes == 3 and loader.classes == sorted(CLASSES)
    got, labels, batches = _run(loader)
    assert batches == len(loader) == -(-len(ids["val"]) // 4)
    assert sorted(got) == sorted(ids["val"])  # each val image exactly once
    assert labels == [ids["val"][i] for i in got]  # labels from the folder names
    # normalization: a solid color c decodes to (c / 255 - mean) / std everywhere (JPEG error < 4 levels)
    x, _ = next(iter(loader))
    want = (torch.tensor([_color(i) for i in _decode_ids(x)], dtype=torch.float32).view(-1, 3, 1, 1) / 255 - MEAN)
    assert torch.allclose(x, (want / STD).expand_as(x), atol=4 / 255 / 0.224)
    got2, _, _ = _run(loader)  # a second epoch (DALI reuses the val pipeline) is the same
    assert got2 == got


@pytest.mark.parametrize("backend", BACKENDS)
def test_val_two_ranks_cover_without_overlap(backend, tree):
    root, ids = tree
    seen = [_run(_loader(backend, root, "val", rank=r, world_size=2, batch_size=3)) for r in range(2)]
    assert not set(seen[0][0]) & set(seen[1][0])
    assert sorted(seen[0][0] + seen[1][0]) == sorted(ids["val"])
    for got, labels, _ in seen:
        assert labels == [ids["val"][i] for i in got]


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_shards_shuffle_and_reproducibility(backend, tree):
    root, ids = tree
    n = len(ids["train"])
    loaders = [_loader(backend, root, "train", rank=r, world_size=2, batch_size=2, seed=5) for r in range(2)]
    epochs = [[_run(ld) for _ in range(2)] for ld in loaders]  # two epochs per rank
    for ep in range(2):
        a, b = epochs[0][ep][0], epochs[1][ep][0]
        assert len(a) == len(b) == (n // 2) // 2 * 2  # drop_last: whole batches only, equal on both ranks
        assert not set(a) & set(b) and set(a) | set(b) <= set(ids["train"])
        for got, labels, batches in (epochs[0][ep], epochs[1][ep]):
            assert labels == [ids["train"][i] for i in got] and batches == len(loaders[0])
    assert epochs[0][0][0] != epochs[0][1][0]  # reshuffled per epoch
    loaders[0].set_epoch(1)
    assert _run(loaders[0])[0] == epochs[0][1][0]  # same seed and epoch: same order
    assert loaders[0].epoch == 2


@pytest.mark.parametrize("backend,dtype", [("torchvision", torch.bfloat16),
                                           pytest.param("dali", torch.float16, marks=BACKENDS[1].marks)])
def test_half_dtype(backend, dtype, tree):
    x, y = next(iter(_loader(backend, tree[0], "val", dtype=dtype)))
    assert x.dtype == dtype and y.dtype == torch.int64


@pytest.mark.skipif(not dali_available(), reason="nvidia-dali not installed")
def test_dali_matches_torchvision_on_smooth_image(tmp_path):
    """Reference check: DALI's val transform against the torchvision backend's on a smooth (lossless) image."""
    for name in ("a", "b"):
        os.makedirs(tmp_path / "val" / name)
        yy, xx = np.mgrid[0:71, 0:93]
        arr = np.stack([xx * 255 // 92, yy * 255 // 70, (xx + yy) * 255 // 162], -1).astype(np.uint8)
        PIL.fromarray(arr if name == "a" else arr[::-1].copy()).save(tmp_path / "val" / name / "g.png")
    ref, _ = next(iter(_loader("torchvision", str(tmp_path), "val", image_size=32)))
    out, _ = next(iter(_loader("dali", str(tmp_path), "val", image_size=32)))
    assert (out - ref).abs().mean() < 0.03 and (out - ref).abs().max() < 0.25


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_image_error_names_path_or_is_skipped(backend, bad_tree):
    root, ids = bad_tree
    with pytest.raises(DataError, match="zz_broken.jpg"):
        _run(_loader(backend, root, "val", batch_size=2))
    loader = _loader(backend, root, "val", batch_size=2, skip_corrupt=True)
    with pytest.warns(RuntimeWarning, match="skipped 1 corrupt"):
        got, labels, _ = _run(loader)
    assert sorted(got) == sorted(ids["val"]) and labels == [ids["val"][i] for i in got]
    assert [os.path.basename(p) for p in loader.skipped] == ["zz_broken.jpg"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once: no second warning
        assert sorted(_run(loader)[0]) == sorted(ids["val"])


def test_validate_finds_corrupt_up_front(bad_tree):
    root, ids = bad_tree
    with pytest.raises(DataError, match="zz_broken.jpg"):
        _loader("torchvision", root, "val", validate=True)
    with pytest.warns(RuntimeWarning, match="skipped 1 corrupt"):
        loader = _loader("torchvision", root, "val", validate=True, skip_corrupt=True)
    assert loader.dataset_size == len(ids["val"])


def test_bad_roots_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        build_loader(backend="torchvision", root=missing, split="val", batch_size=2)
    with pytest.raises(FileNotFoundError, match="val"):  # root exists, split folder does not
        build_loader(backend="torchvision", root=tmp_path, split="val", batch_size=2)
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        build_loader(backend="torchvision", root=tmp_path, split="val", batch_size=2)
    (tmp_path / "val" / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class.*contains no images"):
        build_loader(backend="torchvision", root=tmp_path, split="val", batch_size=2)
    with pytest.raises(ValueError, match="data.root"):
        build_loader(backend="torchvision", split="val", batch_size=2)
    with pytest.raises(ValueError, match="unknown data backend"):
        build_loader(backend="nope", split="val", batch_size=2)


def test_file_list(tree, tmp_path):
    root, ids = tree
    images = scan_folder(root, "val")
    lst = tmp_path / "val.txt"
    lst.write_text("".join(f"{os.path.relpath(f, root)} {int(y)}\n" for f, y in zip(images.files, images.labels)))
    got, labels, _ = _run(build_loader(backend="torchvision", root=root, file_list=lst, split="val", batch_size=4,
                                       image_size=16, workers=0))
    assert sorted(got) == sorted(ids["val"]) and labels == [ids["val"][i] for i in got]


def test_embedded_split_is_fixed():
    train, val = emb.split_indices("train"), emb.split_indices("val")
    assert (len(train), len(val)) == (emb.TRAIN_SIZE, emb.VAL_SIZE) == (1437, 360)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(1797))
    expected_val = np.sort(np.random.RandomState(0).permutation(1797)[:360])
    assert np.array_equal(val, expected_val)
    for split, n in (("train", 1437), ("val", 360)):
        a = build_loader(backend="embedded", split=split, batch_size=64, seed=0)
        b = build_loader(backend="embedded", split=split, batch_size=64, seed=7)
        assert a.dataset_size == n and torch.equal(a.labels, b.labels)  # the split ignores the seed
        assert set(a.labels.tolist()) == set(range(10))


def test_embedded_batches_values_and_shards():
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().images).float() / 16
    loader = build_loader(backend="embedded", split="val", batch_size=50, image_size=8)  # 8: no resize
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    assert len(loader) == len(xs) == 8 and x.shape == (360, 3, 8, 8) and y.dtype == torch.int64
    ref = raw[emb.split_indices("val")].unsqueeze(1).expand(-1, 3, -1, -1)
    assert torch.allclose(x * STD + MEAN, ref, atol=1e-6)  # ImageNet normalization of the raw digits
    x32, _ = next(iter(build_loader(backend="embedded", split="val", batch_size=4)))
    assert x32.shape == (4, 3, 32, 32)
    # train: two ranks, disjoint, reshuffled per epoch, reproducible
    ranks = [build_loader(backend="embedded", split="train", batch_size=32, rank=r, world_size=2, seed=1)
             for r in range(2)]
    firsts = [torch.cat([yb for _, yb in ld]) for ld in ranks]
    assert len(firsts[0]) == len(firsts[1]) == 718 // 32 * 32
    i0, i1 = (set(ld.local_indices(0).tolist()) for ld in ranks)
    assert not i0 & i1
    ranks[0].set_epoch(0)
    assert torch.equal(torch.cat([yb for _, yb in ranks[0]]), firsts[0])
    assert not np.array_equal(ranks[0].local_indices(0), ranks[0].local_indices(1))


def test_synthetic():
    loader = build_loader(backend="synthetic", batch_size=8, image_size=24, num_samples=20, num_classes=5,
                          dtype=torch.bfloat16, rank=1, world_size=2)
    batches = list(loader)
    assert len(loader) == len(batches) == 2 and [b[0].shape[0] for b in batches] == [8, 2]
    assert all(x.dtype == torch.bfloat16 and x.shape[1:] == (3, 24, 24) for x, _ in batches)
    assert all(y.dtype == torch.int64 and 0 <= y.min() and y.max() < 5 for _, y in batches)


def test_train_augmentation_is_a_random_resized_crop_and_flip(tmp_path):
    """On a gradient image (red = column, green = row) each train sample shows its crop box and flip: the box's area
    is 8-100 % of the image with aspect ratio 3/4-4/3 (torchvision's RandomResizedCrop), about half the samples are
    mirrored, and the boxes differ between samples and epochs. Solid-colour images would hide all of this."""
    W, H, s = 96, 72, 24
    yy, xx = np.mgrid[0:H, 0:W]
    arr = np.stack([xx * 255 / (W - 1), yy * 255 / (H - 1), np.full_like(xx, 128.0)], -1).round().astype(np.uint8)
    for name in ("a", "b"):
        for j in range(4):
            os.makedirs(tmp_path / "train" / name, exist_ok=True)
            PIL.fromarray(arr).save(tmp_path / "train" / name / f"g{j}.png")  # lossless
    loader = _loader("torchvision", str(tmp_path), "train", batch_size=4, image_size=s, seed=3)
    boxes, flips, firsts = [], [], []
    for epoch in range(3):
        loader.set_epoch(epoch)
        for x, _ in loader:
            rgb = (x.float() * STD + MEAN) * 255  # [B, 3, s, s]
            for img in rgb:
                cx = img[0].mean(0) * (W - 1) / 255  # source column of each output column (mean over rows)
                cy = img[1].mean(1) * (H - 1) / 255
                # interior slope (edges are clamped by the resampling filter): box size = s * source px per output px
                wb = s * abs(float(cx[-4] - cx[3])) / (s - 7)
                hb = s * float(cy[-4] - cy[3]) / (s - 7)
                boxes.append((wb, hb))
                flips.append(bool(cx[-4] < cx[3]))
                assert hb > 0, "rows are never flipped"
            firsts.append(x[0].clone())
    area = np.array([w * h / (W * H) for w, h in boxes])
    aspect = np.array([w / h for w, h in boxes])
    assert len(boxes) == 24
    assert (area >= 0.08 * 0.85).all() and (area <= 1.05).all(), area
    assert (aspect >= 0.75 * 0.9).all() and (aspect <= 4 / 3 * 1.1).all(), aspect
    assert area.std() > 0.1 and area.min() < 0.5  # random scales, not one fixed crop
    assert 4 <= sum(flips) <= 20  # p = 0.5 of a flip (24 samples: outside [4, 20] has probability ~1e-3)
    assert not torch.equal(firsts[0], firsts[2]) and not torch.equal(firsts[0], firsts[4])  # new crops per epoch
    # val: no augmentation, the centre crop of the resized image (the same every time, never mirrored)
    for name in ("a", "b"):
        os.makedirs(tmp_path / "val" / name)
        PIL.fromarray(arr).save(tmp_path / "val" / name / "g.png")
    a, _ = next(iter(_loader("torchvision", str(tmp_path), "val", batch_size=2, image_size=s)))
    cx = ((a.float() * STD + MEAN) * 255)[0, 0].mean(0)
    assert torch.equal(a[0], a[1]) and cx[-4] > cx[3]
    assert abs(float(cx[-4] + cx[3]) / 2 - 127.5) < 3  # centred
