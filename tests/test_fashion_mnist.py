"""Fashion-MNIST backend: IDX reading against files written here, where the files are found, the fixed splits,
the image transform against a plain reference, errors that say how to get the data, the embedded run's fallback.

No test needs the Debian package: the data is a few small IDX files made in each test, and the package's folder
is pointed at an empty folder.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from dna_fast.data import IMAGENET_MEAN, IMAGENET_STD, DataError, build_loader
from dna_fast.data import fashion_mnist as fm

N_TRAIN, N_TEST = 120, 30


@pytest.fixture(autouse=True)
def _no_debian(tmp_path, monkeypatch):
    """The Debian package's folder is an empty folder: only the files the test writes are found."""
    empty = tmp_path / "no_debian"
    empty.mkdir()
    monkeypatch.setattr(fm, "DEBIAN_DIR", str(empty))


def _write_set(folder, gz: bool = True, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Writes the four IDX files; every image's pixel (0, 0) holds its index (mod 256) so it can be traced."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for part, n in (("train", N_TRAIN), ("test", N_TEST)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[:, 0, 0] = np.arange(n) % 256
        y = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(y)
        img, lab = fm.FILES[part]
        fm.write_idx(folder / (img + (".gz" if gz else "")), x)
        fm.write_idx(folder / (lab + (".gz" if gz else "")), y)
        out[part] = (x, y.astype(np.int64))
    return out


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, dtype, gz):
    a = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5) if dtype != np.uint8 else \
        np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    p = tmp_path / ("a.idx" + (".gz" if gz else ""))
    fm.write_idx(p, a)
    b = fm.read_idx(p)
    assert b.shape == a.shape and np.array_equal(b, a)
    raw = gzip.open(p).read() if gz else p.read_bytes()
    assert raw[:2] == b"\x00\x00" and raw[3] == 3 and int.from_bytes(raw[4:8], "big") == 2  # big-endian header


def test_idx_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad-idx1-ubyte"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="bad-idx1-ubyte.*not an IDX file"):
        fm.read_idx(bad)
    good = tmp_path / "short-idx1-ubyte"
    fm.write_idx(good, np.arange(100, dtype=np.uint8))
    good.write_bytes(good.read_bytes()[:50])
    with pytest.raises(DataError, match="short-idx1-ubyte.*truncated"):
        fm.read_idx(good)


def test_files_found_in_root_torchvision_layout_and_debian_dir(tmp_path, monkeypatch):
    _write_set(tmp_path / "plain", gz=False)
    assert fm.find_fashion_mnist(tmp_path / "plain") == tmp_path / "plain"
    _write_set(tmp_path / "tv" / "FashionMNIST" / "raw")
    assert fm.find_fashion_mnist(tmp_path / "tv") == tmp_path / "tv" / "FashionMNIST" / "raw"
    _write_set(tmp_path / "deb")
    monkeypatch.setattr(fm, "DEBIAN_DIR", str(tmp_path / "deb"))
    assert fm.find_fashion_mnist(None) == tmp_path / "deb"
    assert fm.find_fashion_mnist(tmp_path / "plain") == tmp_path / "plain"  # data.root first


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist.*FashionMNIST"):
        build_loader(backend="fashion_mnist", root=tmp_path / "nothing", split="train", batch_size=8)
    (tmp_path / "half").mkdir()
    fm.write_idx(tmp_path / "half" / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(FileNotFoundError, match="half"):
        fm.find_fashion_mnist(tmp_path / "half")


def test_splits_fixed_disjoint_and_complete(tmp_path):
    data = _write_set(tmp_path / "d")
    tr = fm.split_indices("train", N_TRAIN)
    va = fm.split_indices("val", N_TRAIN)
    assert len(va) == N_TRAIN // 6 and len(tr) == N_TRAIN - len(va)
    assert sorted(set(tr) | set(va)) == list(range(N_TRAIN)) and not set(tr) & set(va)
    assert len(fm.split_indices("val", 60000)) == fm.VAL_SIZE  # the real data: 5000 val, 55000 train
    for split, idx in (("train", tr), ("val", va)):
        x, y = fm.load_split(split, tmp_path / "d")
        ref = np.sort(idx)
        assert np.array_equal(x, data["train"][0][ref]) and np.array_equal(y, data["train"][1][ref])
    x, y = fm.load_split("test", tmp_path / "d")
    assert np.array_equal(x, data["test"][0]) and np.array_equal(y, data["test"][1])
    # max_images: the first N of the fixed order, independent of the loader seed
    x5, _ = fm.load_split("train", tmp_path / "d", max_images=5)
    assert np.array_equal(x5, data["train"][0][np.sort(tr[:5])])
    a = build_loader(backend="fashion_mnist", root=tmp_path / "d", split="train", batch_size=4, max_images=12, seed=0)
    b = build_loader(backend="fashion_mnist", root=tmp_path / "d", split="train", batch_size=4, max_images=12, seed=9)
    assert torch.equal(a.labels, b.labels) and a.dataset_size == 12


def _reference(x_uint8: np.ndarray, size: int) -> torch.Tensor:
    """Plain transform: [0, 1], zero-pad 28 -> 32 (2 px each side), bilinear resize, 3 channels, ImageNet norm."""
    x = torch.from_numpy(x_uint8.astype(np.float32) / 255.0)
    x = torch.nn.functional.pad(x, (2, 2, 2, 2)).unsqueeze(1)
    if size != 32:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.repeat(1, 3, 1, 1)
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("size", [32, 24])
def test_val_and_test_batches_match_reference(tmp_path, size):
    data = _write_set(tmp_path / "d")
    for split in ("val", "test"):
        ld = build_loader(backend="fashion_mnist", root=tmp_path / "d", split=split, batch_size=7, image_size=size)
        xs, ys = zip(*list(ld))
        x, y = torch.cat(xs), torch.cat(ys)
        ref_x, ref_y = fm.load_split(split, tmp_path / "d")
        assert x.shape == (len(ref_y), 3, size, size) and x.dtype == torch.float32
        torch.testing.assert_close(x, _reference(ref_x, size), atol=1e-5, rtol=1e-5)
        assert torch.equal(y, torch.from_numpy(ref_y)) and ld.num_classes == 10
    assert len(data["test"][1]) == N_TEST


def test_train_shuffles_per_epoch_and_shards(tmp_path):
    _write_set(tmp_path / "d")
    ld = build_loader(backend="fashion_mnist", root=tmp_path / "d", split="train", batch_size=10, seed=3)
    ids = []
    for _ in range(2):
        ids.append(torch.cat([x for x, _ in ld]))
    assert ids[0].shape[0] == len(ld) * 10 and not torch.equal(ids[0], ids[1])
    ranks = [build_loader(backend="fashion_mnist", root=tmp_path / "d", split="val", batch_size=6, rank=r,
                          world_size=2) for r in range(2)]
    n = sum(sum(len(y) for _, y in r) for r in ranks)
    assert n == N_TRAIN // 6  # val: every image once across the ranks


def test_embedded_run_falls_back_to_digits_with_a_message(tmp_path):
    from dna_fast.config import load_config
    from dna_fast.train import _data_fallback

    cfg = load_config(None, ["data.backend=fashion_mnist", "data.fallback=embedded", f"data.root={tmp_path}/none"])
    msgs: list[str] = []
    _data_fallback(cfg, run_dir_given=False, log=msgs.append)
    assert cfg.data.backend == "embedded" and cfg.data.root is None and cfg.run_dir.endswith("-digits")
    assert "apt-get install dataset-fashion-mnist" in msgs[0] and "data.backend=embedded" in msgs[0]
    _write_set(tmp_path / "d")
    cfg = load_config(None, ["data.backend=fashion_mnist", "data.fallback=embedded", f"data.root={tmp_path}/d"])
    _data_fallback(cfg, run_dir_given=False, log=msgs.append)
    assert cfg.data.backend == "fashion_mnist" and len(msgs) == 1
