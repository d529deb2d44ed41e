import json
import os

import pytest
import torch

from dna_fast._io import atomic_save, atomic_write, atomic_write_json, atomic_write_text


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
