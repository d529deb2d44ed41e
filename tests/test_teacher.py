"""Teacher: stage mapping vs a plain hooked forward, frozen eval BN, shape checks, weight loading, embedded teacher."""

import os
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from torch import nn

from dna_fast.space import SearchSpace
from dna_fast.teacher import Teacher, build_embedded_teacher, evaluate_teacher, train_teacher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")


def _reference_stage_outputs(model: nn.Module, names, x):
    """Plain reference: full forward with hooks on the named modules."""
    out, hooks = {}, []
    mods = dict(model.named_modules())
    for k, name in enumerate(names):
        hooks.append(mods[name].register_forward_hook(lambda m, i, o, k=k: out.__setitem__(k, o.detach().clone())))
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return [out[k] for k in range(len(names))]


def test_efficientnet_mapping_matches_hooked_forward():
    space = SearchSpace.load("dna_mini")
    t = Teacher("dna_mini_teacher", space, allow_random_teacher=True)
    assert t.stage_names == [f"blocks.{b.teacher_stage}" for b in space.blocks]
    x = torch.randn(3, 3, 32, 32)
    ref = _reference_stage_outputs(t.model, t.stage_names, x)
    got = t(x)
    assert len(got) == space.num_blocks
    for g, r, (_, shape) in zip(got, ref, space.block_io_shapes(32)):
        assert tuple(g.shape[1:]) == shape
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    # a prefix of the stages
    for g, r in zip(t(x, upto=2), ref[:2]):
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    pairs = t.block_pairs(x)
    assert pairs[0][0] is x
    for i in range(1, len(pairs)):
        torch.testing.assert_close(pairs[i][0], ref[i - 1], rtol=0, atol=0)
        torch.testing.assert_close(pairs[i][1], ref[i], rtol=0, atol=0)


def test_frozen_eval_bn_no_grad():
    t = Teacher("dna_mini_teacher", "dna_mini", allow_random_teacher=True)
    bn = t.model.blocks[1][0].bn1
    t.train()
    assert not t.model.training and not bn.training
    before = bn.running_mean.clone()
    x = torch.randn(4, 3, 32, 32) * 3 + 1
    feats = t(x)
    torch.testing.assert_close(bn.running_mean, before, rtol=0, atol=0)
    assert all(not p.requires_grad for p in t.parameters())
    assert all(not f.requires_grad for f in feats)
    # eval BN: a sample's feature does not depend on the rest of the batch
    torch.testing.assert_close(t(x[:1])[-1], feats[-1][:1], rtol=1e-5, atol=1e-5)
    tb = Teacher(t.model, "dna_mini", train_bn=True).train()
    assert tb.model.training


class _PlainCNN(nn.Module):
    """A non-EfficientNet CNN whose named layers match dna_mini's teacher stages; its head must not run."""

    def __init__(self, chs=(16, 24, 32, 48, 64), strides=(2, 1, 2, 2, 1)):
        super().__init__()
        layers, cin = [], 3
        for k, (c, s) in enumerate(zip(chs, strides)):
            layers.append((f"s{k}", nn.Sequential(nn.Conv2d(cin, c, 3, s, 1), nn.BatchNorm2d(c), nn.ReLU())))
            cin = c
        self.features = nn.Sequential(OrderedDict(layers))
        self.head = nn.Linear(cin, 10)
        self.head_calls = 0

    def forward(self, x):
        x = self.features(x)
        self.head_calls += 1
        return self.head(x.mean((2, 3)))


def test_named_stages_for_any_cnn_stop_early():
    m = _PlainCNN()
    names = ["features.s1", "features.s2", "features.s3", "features.s4"]
    t = Teacher(m, "dna_mini", stages=names)
    x = torch.randn(2, 3, 32, 32)
    calls = m.head_calls
    got = t(x, upto=2)
    assert m.head_calls == calls  # stopped after features.s2
    ref = _reference_stage_outputs(m, names, x)
    for g, r in zip(got, ref[:2]):
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    for g, r in zip(t(x), ref):
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no built-in stage mapping"):
        Teacher(m, "dna_mini")
    with pytest.raises(ValueError, match="no module 'features.nope'"):
        Teacher(m, "dna_mini", stages=["features.s1", "features.s2", "features.s3", "features.nope"])
    with pytest.raises(ValueError, match="3 modules for the 4 blocks"):
        Teacher(m, "dna_mini", stages=names[:3])


def test_mismatch_names_both_sides():
    # channels: stage 2 gives 40 instead of 32
    with pytest.raises(ValueError, match=r"gives 40 channels at stride 4.*block 1 .*expects 32 channels at stride 4"):
        Teacher(_PlainCNN(chs=(16, 24, 40, 48, 64)), "dna_mini",
                stages=["features.s1", "features.s2", "features.s3", "features.s4"])
    # stride: stage 3 keeps stride 4 instead of 8
    with pytest.raises(ValueError, match=r"block 2 .*expects 48 channels at stride 8"):
        Teacher(_PlainCNN(strides=(2, 1, 2, 1, 1)), "dna_mini",
                stages=["features.s1", "features.s2", "features.s3", "features.s4"])
    # a timm EfficientNet whose stages differ from the space's teacher spec (B0-like widths vs dna_mini)
    spec = SearchSpace.load("dna_mini").to_dict()
    spec["teacher"] = dict(spec["teacher"], model="x", stages=[
        {"chs": c, "reduction": r} for c, r in zip((16, 24, 40, 48, 64), (2, 2, 4, 8, 8))])
    other = build_embedded_teacher(SearchSpace.from_dict(spec, "other"))
    with pytest.raises(ValueError, match=r"'blocks.2' gives 40 channels.*dna_mini block 1"):
        Teacher(other, "dna_mini")


def test_weights_required_and_loaded(tmp_path):
    with pytest.raises(ValueError, match="allow_random_teacher=True"):
        Teacher("dna_mini_teacher", "dna_mini")
    with pytest.raises(ValueError, match="unknown teacher model"):
        Teacher("no_such_model_xyz", "dna_mini", allow_random_teacher=True)
    src = build_embedded_teacher("dna_mini")
    sd = src.state_dict()
    x = torch.randn(2, 3, 32, 32)
    ref = Teacher(src, "dna_mini")(x)
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "t.pth")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "t.safetensors"))
    for f in ("t.pth", "t.safetensors"):
        t = Teacher("dna_mini_teacher", "dna_mini", checkpoint=tmp_path / f)
        for a, b in zip(t(x), ref):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Teacher("dna_mini_teacher", "dna_mini", checkpoint=tmp_path / "missing.pt")
    bad = dict(sd)
    bad["conv_stem.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit the teacher model"):
        Teacher("dna_mini_teacher", "dna_mini", checkpoint=tmp_path / "bad.pt")
    # damaged files: one clear error naming the file, the file left as it was
    from dna_fast._io import DamagedFileError

    for f in ("t.pth", "t.safetensors"):
        p = tmp_path / f
        p.write_bytes(p.read_bytes()[:200])
        with pytest.raises(DamagedFileError, match=rf"teacher checkpoint .*{f}' cannot be read"):
            Teacher("dna_mini_teacher", "dna_mini", checkpoint=p)
        assert p.stat().st_size == 200


@pytest.mark.slow
def test_pretrained_offline_clear_error():
    code = ("from dna_fast.teacher import Teacher\n"
            "try:\n    Teacher('dna_mini_teacher', 'dna_mini', pretrained=True)\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300).stdout
    assert "checkpoint=PATH" in out, out


class _Batches:
    """A few fixed digits batches, with an optional interruption in one epoch (to test resuming)."""

    def __init__(self, n=3, bs=32, fail_epoch=None):
        from dna_fast.data import build_loader

        ld = build_loader(backend="embedded", split="val", batch_size=bs)
        self.batches = [b for _, b in zip(range(n), ld)]
        self.fail_epoch, self.epoch = fail_epoch, 0

    def __len__(self):
        return len(self.batches)

    def set_epoch(self, e):
        self.epoch = e

    def __iter__(self):
        if self.epoch == self.fail_epoch:
            raise KeyboardInterrupt
        return iter(self.batches)


def test_train_teacher_resumes_and_skips(tmp_path):
    val = _Batches(2, 32)

    def run(out, fail_epoch=None):
        torch.manual_seed(0)
        m = build_embedded_teacher("dna_mini")
        acc = train_teacher(m, _Batches(fail_epoch=fail_epoch), val, epochs=2, lr=5e-3, device="cpu", out_path=out)
        return m, acc

    ref, acc = run(tmp_path / "a.pt")
    assert (tmp_path / "a.pt").exists() and not (tmp_path / "a.pt.partial").exists()
    assert acc == evaluate_teacher(ref, val)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b.pt", fail_epoch=1)
    assert (tmp_path / "b.pt.partial").exists() and not (tmp_path / "b.pt").exists()
    resumed, acc_b = run(tmp_path / "b.pt")
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    # an existing checkpoint is loaded, not trained again
    torch.manual_seed(1)
    m = build_embedded_teacher("dna_mini")
    assert train_teacher(m, _Batches(fail_epoch=0), val, epochs=2, lr=5e-3, device="cpu",
                         out_path=tmp_path / "a.pt") == acc
    # and the checkpoint loads into a Teacher by name
    t = Teacher("dna_mini_teacher", "dna_mini", checkpoint=tmp_path / "a.pt")
    x = val.batches[0][0]
    torch.testing.assert_close(t(x)[-1], Teacher(ref, "dna_mini")(x)[-1], rtol=0, atol=0)


def test_train_teacher_damaged_partial_and_nan_loss(tmp_path):
    from dna_fast._io import DamagedFileError

    val = _Batches(1, 32)
    out = tmp_path / "t.pt"
    partial = tmp_path / "t.pt.partial"
    partial.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    m = build_embedded_teacher("dna_mini")
    with pytest.raises(DamagedFileError, match=r"partial teacher checkpoint .*t.pt.partial.*delete it"):
        train_teacher(m, _Batches(n=1), val, epochs=1, lr=5e-3, device="cpu", out_path=out)
    assert partial.read_bytes() == b"PK\x03\x04 not a whole checkpoint" and not out.exists()
    partial.unlink()
    # one good epoch, then a NaN batch in the second: stops at that step, the first epoch's partial checkpoint kept
    nan = _Batches(n=2)
    nan.batches[1] = (torch.full_like(nan.batches[1][0], float("nan")), nan.batches[1][1])
    good = _Batches(n=2)

    class _Switch(_Batches):
        def __init__(self):
            self.fail_epoch, self.epoch = None, 0

        def __len__(self):
            return 2

        def __iter__(self):
            return iter((good if self.epoch == 0 else nan).batches)

    torch.manual_seed(0)
    m = build_embedded_teacher("dna_mini")
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 1 step 1: .*t.pt.partial holds"):
        train_teacher(m, _Switch(), val, epochs=2, lr=5e-3, device="cpu", out_path=out)
    assert not out.exists()
    st = torch.load(partial, weights_only=True)
    assert st["epoch"] == 1 and all(torch.isfinite(v).all() for v in st["model"].values() if v.is_floating_point())
    for k, v in m.state_dict().items():  # the weights were not stepped with the NaN gradient either
        if v.is_floating_point() and "running" not in k:
            assert torch.isfinite(v).all(), k


@pytest.mark.slow
def test_embedded_teacher_learns_digits(tmp_path):
    from dna_fast.data import build_loader

    torch.manual_seed(0)
    m = build_embedded_teacher("dna_mini")
    tr = build_loader(backend="embedded", split="train", batch_size=64, seed=0)
    va = build_loader(backend="embedded", split="val", batch_size=180)
    acc = train_teacher(m, tr, va, epochs=10, lr=1e-2, device="cpu", out_path=tmp_path / "teacher.pt")
    assert acc > 0.9
