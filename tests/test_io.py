import json
import os

import pytest
import torch

from dna_fast._io import (
    DamagedFileError,
    atomic_save,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    read_table,
)


def test_text_json_and_torch_round_trip(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "x\ny\n")
    assert (tmp_path / "a.txt").read_text() == "x\ny\n"
    obj = {"a": [1, 2.5, None], "b": "c"}
    atomic_write_json(tmp_path / "a.json", obj, indent=1)
    assert (tmp_path / "a.json").read_text() == json.dumps(obj, indent=1)
    sd = {"w": torch.randn(3, 4), "n": 7}
    atomic_save(sd, tmp_path / "sub" / "ck.pt")  # creates the folder
    back = torch.load(tmp_path / "sub" / "ck.pt")
    assert back["n"] == 7 and torch.equal(back["w"], sd["w"])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "a.txt", "ck.pt", "sub"]


def test_replaces_and_uses_umask_permissions(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    old = os.umask(0o022)
    try:
        atomic_write_text(p, "new")
    finally:
        os.umask(old)
    assert p.read_text() == "new"
    assert p.stat().st_mode & 0o777 == 0o644


def test_failure_keeps_target_and_removes_temp(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(p, boom)
    assert p.read_bytes() == b"old"
    assert [q.name for q in tmp_path.iterdir()] == ["f.bin"]


def test_csv_newline_passthrough(tmp_path):
    atomic_write(tmp_path / "l.csv", lambda f: f.write("a,b\r\n"), mode="w", newline="")
    assert (tmp_path / "l.csv").read_bytes() == b"a,b\r\n"
    with pytest.raises(ValueError):
        atomic_write(tmp_path / "x", lambda f: None, mode="a")


# ---------------------------------------------------------------------------------------------- damaged files
def _damage(path, how):
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:  # garbage: the right size, wrong bytes
        path.write_bytes(bytes((b * 7 + 3) % 256 for b in data))


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_damaged_checkpoint_is_one_clear_error(tmp_path, how):
    p = tmp_path / "ck.pt"
    atomic_save({"w": torch.randn(64, 64)}, p)
    _damage(p, how)
    before = p.read_bytes()
    with pytest.raises(DamagedFileError) as e:
        load_checkpoint(p, what="supernet checkpoint", fix="delete it")
    msg = str(e.value)
    assert msg.startswith(f"supernet checkpoint {str(p)!r} cannot be read") and msg.endswith(": delete it")
    assert "\n" not in msg
    assert p.read_bytes() == before  # the damaged file is evidence: left as it was
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_damaged_safetensors_and_parquet(tmp_path):
    import pandas as pd
    from safetensors.torch import save_file

    st = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(8, 8)}, str(st))
    assert torch.equal(load_checkpoint(st)["w"], torch.ones(8, 8))
    _damage(st, "truncated")
    with pytest.raises(DamagedFileError, match="w.safetensors"):
        load_checkpoint(st)
    pq = tmp_path / "block0.parquet"
    df = pd.DataFrame({"loss": [0.5, 0.25], "macs": [1, 2]}, index=pd.Index(["a", "b"], name="candidate"))
    df.to_parquet(pq)
    pd.testing.assert_frame_equal(read_table(pq), df)
    for how in ("truncated", "garbage"):
        df.to_parquet(pq)
        _damage(pq, how)
        with pytest.raises(DamagedFileError, match=r"rating table .*block0.parquet.* cannot be read"):
            read_table(pq, what="rating table")


def test_disk_full_keeps_previous_file_and_says_so(tmp_path, monkeypatch):
    import errno

    p = tmp_path / "last.pth"
    atomic_save({"epoch": 1}, p)
    before = p.read_bytes()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)  # what a full disk does to the write
    with pytest.raises(OSError, match="no space left on the device while writing .*last.pth") as e:
        atomic_save({"epoch": 2}, p)
    assert e.value.errno == errno.ENOSPC
    assert p.read_bytes() == before and [q.name for q in tmp_path.iterdir()] == ["last.pth"]
