"""Exhaustive rating: the distillation loss of every candidate of every block.

DNA (Li et al., "Blockwisely Supervised Neural Architecture Search with Knowledge Distillation", CVPR 2020,
arXiv:1911.13053) rates each candidate path of a block by its MSE to the teacher's stage feature on held-out
data, optionally after recalibrating the BatchNorm statistics of that path (the original's ``reset_bn_eval``).

* ``rate_block_naive``: the plain reference, one candidate at a time (its own BN recalibration and full forward).
* ``rate_block``: the fast engine (``dna_fast._rating_engine``): a depth-first walk of the trie of choices, each
  unique prefix (activation and recalibrated statistics) computed once, sibling ops evaluated together, the last
  layer reduced straight to the loss. Equal to the reference in fp32.
* ``rate``: every block of a supernet from a teacher and a loader, one ``ratings/block{i}.parquet`` per block
  (written atomically as each block finishes; a re-run skips finished blocks), candidates split among torchrun
  ranks.

Every table carries three scores per candidate (``METRICS``; the search sums one, ``rate.metric``, so switching
needs no re-rating):

* ``loss`` = total squared error over all given batches / total number of target elements (the per-element mean of
  ``torch.nn.functional.mse_loss``; with equal batches it is the mean of the per-batch MSEs);
* ``rel_loss`` = ``loss`` / population variance of all target elements;
* ``rel_l1`` = the authors' score (``cl_loss`` of their ``_potential``): per batch ``mean |s - t| / (std(t) + 1e-9)``
  with ``std`` the unbiased standard deviation of that batch's target elements, averaged over the batches weighted
  by their number of images (their ``AverageMeter``; a plain mean for equal batches).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._batchnorm import recalibrate_bn
from ._io import atomic_write, read_table
from .cost import candidate_costs
from .space import Candidate, SearchSpace

__all__ = ["rate_block", "rate_block_naive", "rate", "rating_table", "load_ratings", "rel_l1_from_sums", "METRICS"]

# the per-candidate scores of every rating table (see the module docstring)
METRICS = ("loss", "rel_loss", "rel_l1")
_STD_EPS = 1e-9  # the authors' epsilon in mean |s - t| / (std(t) + eps)

LatencySpec = Any  # callable(candidate) -> ms, {candidate string: ms}, Series, sequence, or table[cell][layer][op]


# ---------------------------------------------------------------------------------------------------------------
# shared helpers: data, BN recalibration, the output table


def _device_dtype(supernet: nn.Module, device: Any, dtype: Any) -> tuple[torch.device, torch.dtype]:
    if device is None:
        p = next(supernet.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    return torch.device(device), (dtype or torch.float32)


def _materialize(batches: Iterable, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for j, b in enumerate(batches):
        if not isinstance(b, (tuple, list)) or len(b) != 2:
            raise ValueError(f"batch {j}: expected a (block input, teacher target) pair, got {type(b).__name__}")
        x, t = b
        out.append((x.to(device, torch.float32), t.to(device, torch.float32)))
    if not out:
        raise ValueError("rate_block needs at least one (input, target) batch")
    return out


def _materialize_calib(calib: Iterable | None, device: torch.device) -> list[torch.Tensor] | None:
    if calib is None:
        return None
    out = []
    for x in calib:
        if isinstance(x, (tuple, list)):  # tolerate (input, target) pairs
            x = x[0]
        out.append(x.to(device, torch.float32))
    if not out:
        raise ValueError("calib is empty: pass at least one batch of block inputs, or calib=None")
    return out


def _image_size(space: SearchSpace, i: int, x: torch.Tensor) -> tuple[int, int]:
    """The image size at which the block's input has the spatial size of ``x`` (for the cost columns)."""
    h, w = x.shape[-2:]
    if i == 0:
        return int(h), int(w)
    r = space.teacher.stage_reductions[space.blocks[i - 1].teacher_stage]
    return int(h) * r, int(w) * r


def _latency_values(space: SearchSpace, i: int, cands: Sequence[Candidate], latency: LatencySpec) -> np.ndarray:
    if callable(latency):
        return np.array([float(latency(c)) for c in cands])
    if hasattr(latency, "reindex"):  # pandas Series / DataFrame indexed by candidate string
        s = latency["latency_ms"] if hasattr(latency, "columns") else latency
        vals = s.reindex([str(c) for c in cands]).to_numpy(dtype=np.float64)
        if np.isnan(vals).any():
            raise ValueError(f"block {i}: the latency table lacks some candidates")
        return vals
    if isinstance(latency, Mapping):
        try:
            return np.array([float(latency[str(c)]) for c in cands])
        except KeyError as e:
            raise ValueError(f"block {i}: the latency table has no entry for candidate {e.args[0]}") from None
    arr = latency
    if len(arr) == len(cands) and not isinstance(arr[0], (list, tuple, np.ndarray)):
        return np.asarray(arr, dtype=np.float64)
    # per-op table: latency[cell][layer][op] in ms, additive over layers
    return np.array([sum(float(arr[c.cell][layer][k]) for layer, k in enumerate(c.ops)) for c in cands])


def rating_table(space: SearchSpace, i: int, sse: np.ndarray, count: int, target_var: float,
                 image_size: tuple[int, int], latency: LatencySpec = None, *, rel_l1: np.ndarray | None = None):
    """The rating DataFrame of block ``i`` from per-candidate sums of squared errors (``candidates(i)`` order).

    Columns ``loss``, ``rel_loss``, ``rel_l1`` (``rel_l1``: the given per-candidate values, see
    ``rel_l1_from_sums``; NaN when not given), ``params``, ``macs`` (child network at ``image_size``), ``latency_ms``
    when a latency table is given, and ``in_width`` / ``out_width`` when this block or the one before it has cells
    of several widths (then each candidate appears once per possible input width, with that width's costs).
    """
    import pandas as pd

    cands = space.candidates(i)
    b = space.blocks[i]
    loss = np.asarray(sse, dtype=np.float64) / count
    index = pd.Index([str(c) for c in cands], name="candidate")
    in_opts = b.child_in_chs_options
    widths = len(in_opts) > 1 or len(b.widths) > 1
    lat = None if latency is None else _latency_values(space, i, cands, latency)
    l1 = np.full(len(cands), np.nan) if rel_l1 is None else np.asarray(rel_l1, dtype=np.float64)
    if l1.shape != (len(cands),):
        raise ValueError(f"block {i}: rel_l1 has shape {l1.shape}, expected ({len(cands)},) (one per candidate)")
    frames = []
    for cin in in_opts:
        costs = candidate_costs(space, i, image_size, child_in_chs=cin)
        cols: dict[str, Any] = {"loss": loss, "rel_loss": loss / target_var if target_var > 0 else loss * np.nan,
                                "rel_l1": l1, "params": costs["params"], "macs": costs["macs"]}
        if lat is not None:
            cols["latency_ms"] = lat
        if widths:
            cols["in_width"] = np.full(len(cands), cin, dtype=np.int64)
            cols["out_width"] = np.array([b.cells[c.cell].width for c in cands], dtype=np.int64)
        frames.append(pd.DataFrame(cols, index=index))
    if len(frames) == 1:
        return frames[0]
    # candidate-major, input width inner: rows keep the candidates(i) order
    df = pd.concat(frames, keys=range(len(frames)), names=["_w", "candidate"])
    n = len(cands)
    order = np.arange(len(frames) * n).reshape(len(frames), n).T.reshape(-1)
    df = df.iloc[order]
    df.index = df.index.droplevel(0)
    return df


def rel_l1_from_sums(abs_sums: np.ndarray, targets: Sequence[torch.Tensor]) -> np.ndarray:
    """The authors' score per candidate from sums of absolute errors per batch.

    Args:
        abs_sums: ``[batches, candidates]`` sums of ``|student - teacher|`` over each batch's target elements.
        targets: the teacher's target of each batch.

    Returns:
        ``[candidates]``: per batch ``abs_sum / numel / (std + 1e-9)`` (unbiased std of the batch's target
        elements), averaged over the batches weighted by their number of images.
    """
    abs_sums = np.asarray(abs_sums, dtype=np.float64)
    if abs_sums.ndim != 2 or abs_sums.shape[0] != len(targets):
        raise ValueError(f"abs_sums has shape {abs_sums.shape}, expected [{len(targets)} batches, candidates]")
    total = np.zeros(abs_sums.shape[1])
    images = 0
    for a, t in zip(abs_sums, targets):
        std = float(t.double().std()) if t.numel() > 1 else 0.0
        total += t.shape[0] * (a / t.numel() / (std + _STD_EPS))
        images += t.shape[0]
    return total / images


def _target_stats(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[int, float]:
    count = sum(t.numel() for _, t in pairs)
    s = sum(t.double().sum() for _, t in pairs)
    mean = s / count
    ss = sum(((t.double() - mean) ** 2).sum() for _, t in pairs)
    return count, float(ss / count)


def _check_shapes(space: SearchSpace, i: int, pairs, calib) -> None:
    b = space.blocks[i]
    for j, (x, t) in enumerate(pairs):
        if x.dim() != 4 or x.shape[1] != b.in_chs:
            raise ValueError(f"block {i}: batch {j} input has shape {tuple(x.shape)}, expected [N, {b.in_chs}, H, W] "
                             "(the previous teacher stage's feature; the image for block 0)")
        if t.dim() != 4 or t.shape[1] != b.out_chs or t.shape[0] != x.shape[0]:
            raise ValueError(f"block {i}: batch {j} target has shape {tuple(t.shape)}, expected "
                             f"[{x.shape[0]}, {b.out_chs}, H', W'] (teacher stage {b.teacher_stage})")
    for j, x in enumerate(calib or []):
        if x.dim() != 4 or x.shape[1] != b.in_chs:
            raise ValueError(f"block {i}: calib batch {j} has shape {tuple(x.shape)}, expected [N, {b.in_chs}, H, W]")


# ---------------------------------------------------------------------------------------------------------------
# reference


@torch.no_grad()
def _prepare(supernet, i, batches, calib, device, dtype):
    """Inputs of one block's rating on its device, checked: (device, dtype, pairs, calib inputs, target element
    count, target variance)."""
    device, dtype = _device_dtype(supernet, device, dtype)
    pairs = _materialize(batches, device)
    calib_x = _materialize_calib(calib, device)
    _check_shapes(supernet.space, i, pairs, calib_x)
    count, tvar = _target_stats(pairs)
    return device, dtype, pairs, calib_x, count, tvar


def rate_block_naive(supernet: nn.Module, i: int, batches: Iterable, *, calib: Iterable | None = None,
                     dtype: torch.dtype | None = None, device: Any = None, chunk_size: int | None = None,
                     latency: LatencySpec = None, progress: bool = False, image_size: Any = None,
                     candidates: Sequence[int] | None = None):
    """Reference rating of every candidate of block ``i``, one candidate at a time (see ``rate_block``).

    For each candidate: its path (the stem first for block 0), with ``calib`` its BNs reset and recalibrated in
    place (``recalibrate_bn``; their stored statistics are put back afterwards), then its full forward on every
    batch in eval mode, all under ``torch.inference_mode()`` (the original rates under ``torch.no_grad()``: no
    autograd graph is recorded and no activation is kept for a backward pass). ``dtype`` other than fp32 runs under
    ``torch.autocast``. ``chunk_size`` is accepted for symmetry and ignored; ``candidates`` as in ``rate_block``.
    """
    space = supernet.space
    device, dtype, pairs, calib_x, count, tvar = _prepare(supernet, i, batches, calib, device, dtype)
    block = supernet.blocks[i]
    cands = space.candidates(i)
    sse = np.zeros(len(cands))
    sae = np.zeros((len(pairs), len(cands)))  # absolute errors per batch
    wanted = None if candidates is None else {int(j) for j in candidates}
    it = cands
    if progress:
        from tqdm import tqdm

        it = tqdm(cands, desc=f"block {i} (naive)", unit="cand")
    for j, cand in enumerate(it):
        if candidates is not None and j not in wanted:
            sse[j] = np.nan
            sae[:, j] = np.nan
            continue
        stem = block.stem_for(cand.cell)
        mods = ([stem] if stem is not None else []) + supernet.path_modules(i, cand)
        path = nn.Sequential(*mods).to(device).eval()
        # recalibration resets the path's BNs in place, as the original's reset_bn_eval does, and their stored state
        # is put back afterwards (a deep copy of the path per candidate cost ~15 % of its forward on dna block 1)
        saved = None if calib_x is None else [(bn, copy.deepcopy(bn.state_dict()), bn.momentum)
                                              for bn in path.modules() if isinstance(bn, nn.BatchNorm2d)]
        try:
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                if calib_x is not None:
                    recalibrate_bn(path, calib_x)
                total = 0.0
                for b, (x, t) in enumerate(pairs):
                    y = path(x).float()
                    total += float(torch.nn.functional.mse_loss(y, t, reduction="sum"))
                    sae[b, j] = float(torch.nn.functional.l1_loss(y, t, reduction="sum"))
        finally:
            for bn, state, momentum in saved or []:
                bn.load_state_dict(state)
                bn.momentum = momentum
        sse[j] = total
    size = image_size or _image_size(space, i, pairs[0][0])
    l1 = rel_l1_from_sums(sae, [t for _, t in pairs])
    return rating_table(space, i, sse, count, tvar, size, latency, rel_l1=l1)


# ---------------------------------------------------------------------------------------------------------------
# fast engine


@torch.no_grad()
def rate_block(supernet: nn.Module, i: int, batches: Iterable, *, calib: Iterable | None = None,
               dtype: torch.dtype | None = None, device: Any = None, chunk_size: int | None = None,
               latency: LatencySpec = None, progress: bool = False, image_size: Any = None,
               candidates: Sequence[int] | None = None, kernels: str = "auto"):
    """Rate every candidate of block ``i`` of ``supernet`` by its error to the teacher's feature (MSE, MSE / var and
    the authors' normalised L1: see the module docstring).

    Args:
        supernet: a ``dna_fast.Supernet``.
        i: block index.
        batches: iterable of (block input, teacher target) pairs: the previous teacher stage's feature (the image for
            block 0, which runs the student stem first) and the block's teacher stage feature.
        calib: optional iterable of block inputs; each candidate's BNs are recalibrated on them first (the original's
            ``reset_bn_eval``: batch statistics of the data flowing through that path, cumulative average). None:
            the stored running statistics.
        dtype: compute dtype (fp32 default; bf16 / fp16 accumulate the loss in fp32).
        device: where to compute (default: the supernet's device).
        chunk_size: images per step of the engine (default: chosen so a node's hidden tensor stays cache sized on
            CPU, the whole batch on GPU). Calibration batches are always processed whole (their statistics are
            per batch).
        latency: optional latency table: callable(candidate) -> ms, {candidate string: ms}, a Series, a sequence in
            candidate order, or a per-op table ``latency[cell][layer][op]`` (additive over layers).
        progress: show a tqdm bar (candidates/s).
        image_size: image size for the cost columns (default: inferred from the input's spatial size).
        candidates: optional positions (in ``space.candidates(i)``) to rate; the others get NaN losses (used to
            split the work among ranks).
        kernels: which implementation runs the engine's fused passes: ``"auto"`` (CPU fp32: the CPU kernels; CUDA:
            per layer shape the CUDA kernels or plain PyTorch, whichever ran faster when timed once; printed with
            ``progress``), ``"fused"`` (the device's fused kernels, untimed), ``"torch"`` (plain PyTorch) or
            ``"cuda-emulated"`` (CPU tensors through the CUDA kernels under the CPU emulator; slow, for tests). See
            docs/gpu_rating.md.

    Returns:
        pandas DataFrame indexed by the canonical candidate strings in ``space.candidates(i)`` order with columns
        ``loss``, ``rel_loss``, ``rel_l1``, ``params``, ``macs`` (+ ``latency_ms``, ``in_width`` / ``out_width``; see
        ``rating_table``).
    """
    from ._rating_engine import rate_block_sse

    space = supernet.space
    device, dtype, pairs, calib_x, count, tvar = _prepare(supernet, i, batches, calib, device, dtype)
    sse, sae = rate_block_sse(supernet, i, pairs, calib_x, dtype=dtype, device=device, chunk_size=chunk_size,
                              progress=progress, candidates=candidates, kernels=kernels)
    size = image_size or _image_size(space, i, pairs[0][0])
    l1 = rel_l1_from_sums(sae, [t for _, t in pairs])
    return rating_table(space, i, sse, count, tvar, size, latency, rel_l1=l1)


# ---------------------------------------------------------------------------------------------------------------
# all blocks of a run


def _images(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, Mapping):
        for key in ("images", "image", "data", "input"):
            if key in batch:
                return batch[key]
    raise ValueError(f"the loader yields {type(batch).__name__}: expected images, (images, labels) or a mapping with "
                     "'images'")


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _write_parquet_atomic(df, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, df.to_parquet)


def load_ratings(run_dir: str | Path, num_blocks: int | None = None) -> list:
    """Read ``run_dir/ratings/block{i}.parquet`` for every block (all files found when ``num_blocks`` is None)."""
    d = Path(run_dir) / "ratings"
    if num_blocks is None:
        num_blocks = 0
        while (d / f"block{num_blocks}.parquet").is_file():
            num_blocks += 1
    out = []
    for i in range(num_blocks):
        p = d / f"block{i}.parquet"
        if not p.is_file():
            raise FileNotFoundError(f"{p} does not exist: run the rate stage (dna_fast.rate) first")
        out.append(read_table(p, what="rating table", fix="delete it and run the rate stage again"))
    return out


@torch.no_grad()
def _collect(teacher: Any, loader: Iterable, blocks: Sequence[int], num_batches: int, calib_batches: int,
             device: torch.device, *, calib_loader: Iterable | None = None, recalibrate_teacher: bool = False
             ) -> tuple[dict[int, list], dict[int, list]]:
    """The calibration inputs and the rated (input, target) pairs of every requested block (kept on the CPU).

    Calibration images: the first ``calib_batches`` batches of ``calib_loader`` when given, else of ``loader``
    (then the rated batches follow them). With ``recalibrate_teacher`` a copy of the teacher first has its BN
    recalibrated on them (``Teacher.recalibrate_bn``, the authors' rating): the calibration inputs are that forward's
    features and the rated pairs are computed with the recalibrated statistics. One teacher forward per batch.
    """
    pairs: dict[int, list] = {i: [] for i in blocks}
    it = iter(loader)
    src = iter(calib_loader) if calib_loader is not None else it
    images = []
    for _ in range(calib_batches):  # NOTE next() per batch: a for loop would read (and drop) one batch too many
        batch = next(src, None)
        if batch is None:
            break
        images.append(_images(batch).to(device))
    if len(images) < calib_batches:
        raise ValueError(f"the calibration loader gave {len(images)} batches: calib_batches={calib_batches} wanted")
    if recalibrate_teacher:
        if not hasattr(teacher, "recalibrate_bn"):
            raise TypeError(f"recalibrate_teacher needs a dna_fast.Teacher (with recalibrate_bn), got "
                            f"{type(teacher).__name__}")
        if not images:
            raise ValueError("recalibrate_teacher needs calib_batches >= 1 (the teacher's BN is recalibrated on them)")
        teacher = copy.deepcopy(teacher)  # the caller's teacher keeps its statistics
        calib_pairs = teacher.recalibrate_bn(images)
    else:
        calib_pairs = [teacher.block_pairs(x) for x in images]
    calib = {i: [bp[i][0].detach().float().cpu() for bp in calib_pairs] for i in blocks}
    del images, calib_pairs
    seen = 0
    for batch in it:
        if seen >= num_batches:
            break
        bp = teacher.block_pairs(_images(batch).to(device))
        for i in blocks:
            x, t = bp[i]
            pairs[i].append((x.detach().float().cpu(), t.detach().float().cpu()))
        seen += 1
    if seen < 1:
        where = "after its calibration batches" if calib_loader is None else ""
        raise ValueError(f"the loader gave no batch to rate {where}: rating needs at least one rated batch (lower "
                         "calib_batches or use more data)")
    return pairs, calib


def rate(supernet: nn.Module, teacher: Any, loader: Iterable, run_dir: str | Path, *, num_batches: int = 20,
         calib_batches: int = 0, dtype: torch.dtype | None = None, device: Any = None,
         blocks: Sequence[int] | None = None, progress: bool = True, chunk_size: int | None = None,
         latency: Any = None, calib_loader: Iterable | None = None, recalibrate_teacher: bool = False) -> list:
    """Rate every candidate of every block and write ``run_dir/ratings/block{i}.parquet`` as each block finishes.

    A block whose file exists is read back, not re-rated (resume). One teacher forward per batch feeds all blocks:
    the loader's first ``calib_batches`` batches recalibrate BN per candidate (0: stored statistics), the next
    ``num_batches`` are rated. Under torchrun (``torch.distributed`` initialized) every rank rates its share of
    each block's candidates on rank 0's batches and rank 0 gathers and writes the tables.

    Args:
        supernet: the distilled ``Supernet``.
        teacher: object with ``block_pairs(images) -> [(block input, teacher target), ...]`` (``dna_fast.Teacher``).
        loader: held-out data, yielding images or (images, labels).
        run_dir: the run directory.
        num_batches: rated batches.
        calib_batches: BN recalibration batches (0: off).
        dtype: compute dtype of the engine (default fp32; bf16 on GPU is much faster).
        device: compute device (default: the supernet's).
        blocks: which blocks (default all).
        progress: show progress (candidates/s).
        chunk_size: see ``rate_block``.
        latency: optional ``dna_fast.cost.latency_table`` result (its ``block(i)`` per-op form gives each table a
            ``latency_ms`` column; blocks whose input width has several options are left without it, see
            ``dna_fast._latency.add_latency``), or a list with one ``rate_block`` latency argument per block.
        calib_loader: where the calibration batches come from instead of ``loader`` (``rate.calib_source=train``:
            the authors' augmented training batch); every batch of ``loader`` is then rated.
        recalibrate_teacher: recalibrate (a copy of) the teacher's BN on the calibration images first
            (``teacher.bn=train``, as the authors rate; see ``Teacher.recalibrate_bn``).

    Returns:
        The rating table of every requested block (``rate_block``'s format), on every rank.
    """
    import torch.distributed as dist

    space = supernet.space
    device, dtype = _device_dtype(supernet, device, dtype)
    rank, world = _dist()
    blocks = list(range(space.num_blocks)) if blocks is None else [int(b) for b in blocks]
    out_dir = Path(run_dir) / "ratings"
    paths = {i: out_dir / f"block{i}.parquet" for i in blocks}
    todo = [i for i in blocks if not paths[i].is_file()]
    if world > 1:  # every rank must agree on what is left
        obj = [todo]
        dist.broadcast_object_list(obj, src=0)
        todo = obj[0]
    pairs: dict[int, list] = {}
    calib: dict[int, list] = {}
    if todo:
        if rank == 0:
            pairs, calib = _collect(teacher, loader, todo, num_batches, calib_batches, device,
                                    calib_loader=calib_loader, recalibrate_teacher=recalibrate_teacher)
        if world > 1:  # the same batches on every rank
            obj = [(pairs, calib)]
            dist.broadcast_object_list(obj, src=0)
            pairs, calib = obj[0]
    supernet.eval()
    show = progress and rank == 0
    tables = {}
    for i in blocks:
        if i not in todo:
            tables[i] = read_table(paths[i], what="rating table", fix="delete it and run the rate stage again")
            if show:
                print(f"[rate] block {i}: {paths[i]} exists, skipped", flush=True)
            continue
        n = space.num_candidates(i)
        mine = np.array_split(np.arange(n), world)[rank] if world > 1 else None
        t0 = time.perf_counter()
        lat = None
        if latency is not None:
            if hasattr(latency, "block"):
                try:
                    lat = latency.block(i)
                except ValueError:
                    lat = None
            else:
                lat = latency[i]
        df = rate_block(supernet, i, pairs[i], calib=calib[i] or None, dtype=dtype, device=device,
                        chunk_size=chunk_size, progress=show, candidates=mine, latency=lat)
        if world > 1:
            parts = [None] * world
            dist.all_gather_object(parts, df[["loss", "rel_l1"]].to_numpy())
            merged = np.full((len(df), 2), np.nan)
            for arr in parts:
                ok = ~np.isnan(arr)
                merged[ok] = arr[ok]
            _, tvar = _target_stats(pairs[i])
            df["loss"], df["rel_l1"] = merged[:, 0], merged[:, 1]
            df["rel_loss"] = merged[:, 0] / tvar if tvar > 0 else merged[:, 0] * np.nan
        dt = time.perf_counter() - t0
        if rank == 0:
            _write_parquet_atomic(df, paths[i])
        if world > 1:
            dist.barrier()
        if show:
            print(f"[rate] block {i}: {n} candidates in {dt:.1f} s ({n / max(dt, 1e-9):.1f} candidates/s) -> "
                  f"{paths[i]}", flush=True)
        tables[i] = df
    return [tables[i] for i in blocks]
