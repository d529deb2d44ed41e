"""Trie engine of ``dna_fast.rating.rate_block``: every candidate of a block, each unique prefix computed once.

The candidates of one cell form a trie (layer 0 at the root, the last layer at the leaves). A depth-first walk
keeps one activation per level: a node's input is computed once and feeds all its children. The K sibling ops of a
node run together, grouped by depthwise kernel size. On CPU in fp32 the fused row kernels of ``dna_fast.ops`` do
the work (``expand_dwconv``: each group's expansion made row by row in front of its depthwise conv; ``linear_sq_err``:
the last layer's SE gate, projection and loss in one GEMM, its output never stored); elsewhere plain PyTorch does
(the expansions as one matmul per group with BN folded in, the depthwise convs as one grouped conv, the SE as one
block-diagonal matmul pair, the last projection fused with its residual into one addmm). See ``_Walker``.

Activations are channels_last (a [N*H*W, C] matrix for the 1x1 convs, the same memory as NHWC for the depthwise
conv). Cells have their own weights, so each cell is its own trie.

BN recalibration (``calib``): a node's recalibrated statistics depend only on its prefix. For each calibration
batch, a walk in train mode (every BN normalizes with that batch's statistics) adds the batch mean and unbiased
variance of every BN of every node; their average is what ``momentum=None`` running statistics hold after the same
batches. The evaluation walk then folds each node's statistics into its weights. On the native path no activation
is read again for statistics: the expansion's follow from its input's mean and covariance (it is linear), the
depthwise conv's from its own pass, the last projection's from the SE sums (mean) and one fused GEMM (variance).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _rating_kernels as _rk
from . import ops as _ops
from ._batchnorm import recalibrate_bn

__all__ = ["rate_block_sse"]

# The fused native passes on CPU in fp32 (see _Walker); False runs plain PyTorch everywhere (tests compare both).
_NATIVE = True

@dataclass
class _Group:
    """Sibling ops of one layer with the same depthwise kernel size (their channels concatenated in op order)."""

    ops: list[int]  # op indices
    mids: list[int]
    offs: list[int]  # channel offset of each op inside the group
    kernel: int
    stride: int
    pad: int
    w_pw: Tensor  # [cin, mid_g] (transposed 1x1 expansion)
    g1: Tensor
    b1: Tensor
    eps1: Tensor
    w_dw: Tensor  # [mid_g, 1, k, k]
    g2: Tensor
    b2: Tensor
    eps2: Tensor
    wr: Tensor  # [mid_g, rd_g] block-diagonal SE reduce (transposed)
    br: Tensor
    we: Tensor  # [rd_g, mid_g] block-diagonal SE expand (transposed)
    be: Tensor
    w_pwl: list[Tensor] = field(default_factory=list)  # per op [mid_k, out]
    g3: list[Tensor] = field(default_factory=list)
    b3: list[Tensor] = field(default_factory=list)
    eps3: list[float] = field(default_factory=list)
    # stored running statistics (used without calib)
    rm1: Tensor | None = None
    rv1: Tensor | None = None
    rm2: Tensor | None = None
    rv2: Tensor | None = None
    rm3: list[Tensor] = field(default_factory=list)
    rv3: list[Tensor] = field(default_factory=list)
    has_se: bool = True


@dataclass
class _Layer:
    groups: list[_Group]
    has_skip: bool
    order: Tensor  # op index of each sibling in walk order (group-major)


def _bn(bn: nn.Module) -> tuple[Tensor, Tensor, float, Tensor, Tensor]:
    return bn.weight.float(), bn.bias.float(), float(bn.eps), bn.running_mean.float(), bn.running_var.float()


def _check_op(op: nn.Module) -> None:
    ok = (getattr(op, "conv_s2d", None) is None and isinstance(op.bn1.act, nn.SiLU) and isinstance(op.bn2.act, nn.SiLU)
          and isinstance(op.bn3.act, nn.Identity) and (isinstance(op.aa, nn.Identity)))
    if not ok:
        raise NotImplementedError("the rating engine supports MBConv ops with swish activations (the DNA spaces); "
                                  "use rate_block_naive for other ops")


def _build_layer(ops: Sequence[nn.Module], device: torch.device) -> _Layer:
    by_k: dict[int, list[int]] = {}
    for k, op in enumerate(ops):
        _check_op(op)
        by_k.setdefault(op.conv_dw.kernel_size[0], []).append(k)
    groups = []
    for kernel, idx in sorted(by_k.items()):
        mods = [ops[k] for k in idx]
        mids = [m.conv_pw.out_channels for m in mods]
        offs = list(np.cumsum([0] + mids[:-1]))
        mid_g = sum(mids)
        has_se = all(not isinstance(m.se, nn.Identity) for m in mods)
        if not has_se and any(not isinstance(m.se, nn.Identity) for m in mods):
            raise NotImplementedError("ops of one kernel size must all have SE or none")
        bn1 = [_bn(m.bn1) for m in mods]
        bn2 = [_bn(m.bn2) for m in mods]
        cat = lambda j, bns: torch.cat([b[j] for b in bns]).to(device)  # noqa: E731

        def eps_vec(bns, mids_):
            return torch.cat([torch.full((c,), b[2]) for b, c in zip(bns, mids_)]).to(device)

        if has_se:
            rds = [m.se.conv_reduce.out_channels for m in mods]
            wr = torch.zeros(mid_g, sum(rds))
            we = torch.zeros(sum(rds), mid_g)
            ro = 0
            for m, o, c, r in zip(mods, offs, mids, rds):
                wr[o:o + c, ro:ro + r] = m.se.conv_reduce.weight.float().view(r, c).t()
                we[ro:ro + r, o:o + c] = m.se.conv_expand.weight.float().view(c, r).t()
                ro += r
            br = torch.cat([m.se.conv_reduce.bias.float() for m in mods])
            be = torch.cat([m.se.conv_expand.bias.float() for m in mods])
            if not all(isinstance(m.se.act1, nn.SiLU) for m in mods):
                raise NotImplementedError("the rating engine expects swish inside SE")
        else:
            wr = br = we = be = torch.zeros(0)
        g = _Group(
            ops=idx, mids=mids, offs=[int(o) for o in offs], kernel=kernel, stride=mods[0].conv_dw.stride[0],
            pad=mods[0].conv_dw.padding[0],
            w_pw=torch.cat([m.conv_pw.weight.float().flatten(1) for m in mods]).t().contiguous().to(device),
            g1=cat(0, bn1), b1=cat(1, bn1), eps1=eps_vec(bn1, mids),
            w_dw=torch.cat([m.conv_dw.weight.float() for m in mods]).to(device),
            g2=cat(0, bn2), b2=cat(1, bn2), eps2=eps_vec(bn2, mids),
            wr=wr.to(device), br=br.to(device), we=we.to(device), be=be.to(device),
            rm1=cat(3, bn1), rv1=cat(4, bn1), rm2=cat(3, bn2), rv2=cat(4, bn2), has_se=has_se,
        )
        for m in mods:
            w3, b3, e3, m3, v3 = _bn(m.bn3)
            g.w_pwl.append(m.conv_pwl.weight.float().flatten(1).t().contiguous().to(device))
            g.g3.append(w3.to(device))
            g.b3.append(b3.to(device))
            g.eps3.append(e3)
            g.rm3.append(m3.to(device))
            g.rv3.append(v3.to(device))
        groups.append(g)
    skips = {bool(op.has_skip) for op in ops}
    if len(skips) != 1:
        raise NotImplementedError("sibling ops disagree on the residual")
    order = torch.tensor([k for g in groups for k in g.ops], device=device)
    return _Layer(groups, skips.pop(), order)


# ---------------------------------------------------------------------------------------------------------------
# node statistics: per group (mean1, var1, mean2, var2) and per op (mean3, var3)


def _running_stats(layer: _Layer) -> list[tuple]:
    return [(g.rm1, g.rv1, g.rm2, g.rv2, list(g.rm3), list(g.rv3)) for g in layer.groups]


class _StatsAcc:
    """Sum of per-batch (mean, unbiased var) of every BN of one node's siblings."""

    def __init__(self) -> None:
        self.n = 0
        self.data: list[list[Tensor]] | None = None

    def add(self, flat: list[Tensor]) -> None:
        if self.data is None:
            self.data = [t.clone() for t in flat]
        else:
            for a, t in zip(self.data, flat):
                a.add_(t)
        self.n += 1

    def mean(self, layer: _Layer) -> list[tuple]:
        d = [t / self.n for t in self.data]
        out, j = [], 0
        for g in layer.groups:
            m1, v1, m2, v2 = d[j:j + 4]
            j += 4
            k = len(g.ops)
            m3, v3 = d[j:j + k], d[j + k:j + 2 * k]
            j += 2 * k
            out.append((m1, v1, m2, v2, m3, v3))
        return out


# ---------------------------------------------------------------------------------------------------------------
# sibling evaluation


def _bn_train_(h: Tensor, gamma: Tensor, beta: Tensor, eps: Tensor | float, normalize: bool = True
               ) -> tuple[Tensor, Tensor]:
    """Train-mode BN over the rows of a [rows, C] matrix: normalizes ``h`` in place with its batch statistics.

    Returns the fp32 batch mean and unbiased variance (what ``momentum=None`` running statistics average).
    # NOTE two passes (sum, then centered squares) instead of ``torch.var_mean(h, 0)``, whose strided column
    # reduction measured 3x slower here; centering in place also gives the normalization for free.
    """
    rows = h.shape[0]
    hf = h if h.dtype == torch.float32 else h.float()
    mean = hf.sum(0).div_(rows)
    hf.sub_(mean)
    var = hf.square().sum(0).div_(rows)
    if normalize:
        hf.mul_(gamma * torch.rsqrt(var + eps)).add_(beta)
        if hf is not h:
            h.copy_(hf)
    return mean, var * (rows / max(rows - 1, 1))


def _fold(gamma: Tensor, beta: Tensor, eps: Tensor | float, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """Eval-mode BN as y = x * scale + shift."""
    scale = gamma * torch.rsqrt(var + eps)
    return scale, beta - mean * scale


def _input_moments(x2: Tensor) -> tuple[Tensor, Tensor]:
    """fp64 column mean and biased covariance of a [rows, C] matrix (C small: a node's input)."""
    xd = x2.double()
    mean = xd.mean(0)
    xc = xd - mean
    return mean, (xc.t() @ xc) / xd.shape[0]


class _Walker:
    """Depth-first walk of one cell's trie, in eval mode (fold stats) or calibration mode (batch stats).

    Two implementations of a node's sibling ops: ``native`` (CPU fp32 with the extension) runs the fused passes of
    ``dna_fast.ops`` (``expand_dwconv``: expansion + BN + swish into the depthwise conv with BN + swish + SE sums in
    its epilogue; ``linear_sq_err`` / ``linear_col_dev``: the last layer's gated projection reduced to its loss or
    its BN statistics; under calibration the expansion's BN statistics come from the input's moments and the
    depthwise conv's from its own pass); otherwise plain PyTorch (BN folded into the matmuls, mkldnn / cuDNN
    depthwise conv, silu in place).
    """

    def __init__(self, layers: list[_Layer], dtype: torch.dtype, n_ops: int, native: bool,
                 fused: object | None = None) -> None:
        self.layers = layers
        self.dtype = dtype
        self.n_ops = n_ops
        self.low = dtype != torch.float32
        self.native = native
        # the fused passes: dna_fast.ops (CPU kernels) or _rating_kernels.FusedOps (CUDA / emulated CUDA kernels)
        self.fops = _ops if fused is None else fused
        # (level, calibration) pairs that run plain PyTorch although the fused passes exist (timed slower there)
        self.plain: set[tuple[int, bool]] = set()
        # per group: (the stats last folded, the folded parameters). One entry per group, not per node: the stored
        # statistics are one object per layer (always a hit), recalibrated ones differ per node (folded again; a
        # cache per node grew with the number of candidates: ~200 MB on block 1 of dna)
        self._folded: dict[int, tuple] = {}

    def _fold_group(self, g: _Group, st: tuple) -> tuple:
        key = id(g)
        hit = self._folded.get(key)
        if hit is not None and hit[0] is st:
            return hit[1]
        m1, v1, m2, v2, m3, v3 = st
        dt = self.dtype
        s1, t1 = _fold(g.g1, g.b1, g.eps1, m1, v1)
        s2, t2 = _fold(g.g2, g.b2, g.eps2, m2, v2)
        proj, proj32 = [], []
        for j in range(len(g.ops)):
            s3, t3 = _fold(g.g3[j], g.b3[j], g.eps3[j], m3[j], v3[j])
            w3 = g.w_pwl[j] * s3
            proj.append((w3.to(dt), t3))
            proj32.append((w3, t3))
        # built in fp32 and cast once: [0] [4] [6] in the compute dtype (the GEMM / conv operands of plain PyTorch),
        # [7] [8] in fp32 (the fused kernels take fp32 weights whatever the activations' dtype)
        w1 = g.w_pw * s1
        out = (w1.to(dt), t1, s2, t2, (g.w_dw * s2.view(-1, 1, 1, 1)).to(dt), t2.to(dt), proj, w1, proj32)
        self._folded[key] = (st, out)
        return out

    # one group's hidden activation: 1x1 expand + BN + swish, depthwise + BN + swish, SE gate
    def _hidden(self, g: _Group, x2: Tensor, n: int, h: int, w: int, folded: tuple | None, calib: list | None,
                moments: tuple[Tensor, Tensor] | None, keep_gate: bool = False, native: bool | None = None
                ) -> tuple[Tensor, int, int, Tensor | None, Tensor | None]:
        dt = self.dtype
        native = self.native if native is None else native
        mid = g.w_pw.shape[1]
        rows = x2.shape[0]
        pooled = None
        if native:
            x4 = x2.view(n, h, w, -1).permute(0, 3, 1, 2)  # the rows as a channels_last image batch
            if calib is None:
                w1, t1, s2, t2 = folded[7], folded[1], folded[2], folded[3]
                d, sums = self.fops.expand_dwconv(x4, w1, t1, g.w_dw, s2, t2, g.stride)
                ho, wo = d.shape[2], d.shape[3]
                pooled = sums.div_(ho * wo)
                d2 = d.permute(0, 2, 3, 1).view(n * ho * wo, mid)
            else:
                # the expansion is linear: its batch statistics follow from the input's mean and covariance, so
                # its BN folds into the weights before the matmul as in eval mode
                wd = g.w_pw.double()
                mean1 = moments[0] @ wd
                var1 = ((moments[1] @ wd) * wd).sum(0)
                s1, t1 = _fold(g.g1, g.b1, g.eps1, mean1.float(), var1.float())
                calib += [mean1.float(), (var1 * (rows / max(rows - 1, 1))).float()]
                d, rmean, rm2 = self.fops.expand_dwconv(x4, g.w_pw * s1, t1, g.w_dw, stride=g.stride)
                ho, wo = d.shape[2], d.shape[3]
                mean2, var2 = _ops.merge_row_stats(rmean, rm2, wo)
                rows2 = n * ho * wo
                s2, t2 = _fold(g.g2, g.b2, g.eps2, mean2.float(), var2.float())
                calib += [mean2.float(), (var2 * (rows2 / max(rows2 - 1, 1))).float()]
                d2 = d.permute(0, 2, 3, 1).view(rows2, mid)
                pooled = self.fops.swish_rows_(d2, s2, t2, n).div_(ho * wo)
        elif self.low:
            # plain PyTorch in bf16 / fp16: the GEMM and conv operands in the low dtype (fp32 accumulation), their
            # outputs and everything between them (BN, swish, SE, gate) in fp32; the hidden tensor is rounded once,
            # as the conv's operand. Autocast rounds after every op instead (conv, BN, swish, SE, gate product).
            hid = _mm(x2, folded[0] if calib is None else g.w_pw.to(dt))
            if calib is None:
                hid.add_(folded[1])
            else:
                calib += list(_bn_train_(hid, g.g1, g.b1, g.eps1))
            F.silu(hid, inplace=True)
            h4 = hid.to(dt).view(n, h, w, mid).permute(0, 3, 1, 2)
            del hid
            d = _dwconv(h4, folded[4] if calib is None else g.w_dw.to(dt), g.stride, g.pad)
            ho, wo = d.shape[2], d.shape[3]
            d2 = d.permute(0, 2, 3, 1).float().contiguous().view(n * ho * wo, mid)
            del d
            if calib is None:
                d2.add_(folded[3])
            else:
                calib += list(_bn_train_(d2, g.g2, g.b2, g.eps2))
            F.silu(d2, inplace=True)
        else:
            if calib is None:
                w1, t1, w2, b2 = folded[0], folded[1], folded[4], folded[5]
                hid = F.silu(torch.addmm(t1.to(dt), x2, w1), inplace=True)
                h4 = hid.view(n, h, w, mid).permute(0, 3, 1, 2)
                d = F.silu(F.conv2d(h4, w2, b2, g.stride, g.pad, 1, mid), inplace=True)
            else:
                hid = torch.mm(x2, g.w_pw.to(dt))
                calib += list(_bn_train_(hid, g.g1, g.b1, g.eps1))
                F.silu(hid, inplace=True)
                h4 = hid.view(n, h, w, mid).permute(0, 3, 1, 2)
                d = F.conv2d(h4, g.w_dw.to(dt), None, g.stride, g.pad, 1, mid)
            del hid
            ho, wo = d.shape[2], d.shape[3]
            d = d.permute(0, 2, 3, 1)
            if not d.is_contiguous():
                d = d.contiguous()
            d2 = d.view(n * ho * wo, mid)
            if calib is not None:
                calib += list(_bn_train_(d2, g.g2, g.b2, g.eps2))
                F.silu(d2, inplace=True)
        if g.has_se:
            d3 = d2.view(n, ho * wo, mid)
            if pooled is None:
                pooled = d3.mean(1, dtype=torch.float32) if self.low else d3.mean(1)
            r = F.silu(torch.addmm(g.br, pooled, g.wr))
            gate = torch.sigmoid(torch.addmm(g.be, r, g.we))
            if keep_gate:  # the caller folds it into the projection (linear_sq_err / linear_col_dev)
                return d2, ho, wo, gate, pooled
            d3.mul_(gate.unsqueeze(1))  # in fp32, one rounding where d3 is low precision
        return d2, ho, wo, None, pooled

    def siblings(self, level: int, x2: Tensor, n: int, h: int, w: int, st: list[tuple] | None,
                 calib: list | None = None, target: Tensor | None = None):
        """Yield (op index, child activation [n*ho*wo, out] or error sums, ho, wo) for every op of a layer.

        With ``target`` (last layer; it holds skip - teacher) the output is reduced to its sums of squared and of
        absolute errors (an fp64 ``[2]`` tensor). With ``calib`` (a list) BNs use batch statistics and their (mean,
        unbiased var) are appended.
        """
        layer = self.layers[level]
        dt = self.dtype
        native = self.native and (level, calib is not None) not in self.plain
        moments = _input_moments(x2) if calib is not None and native else None
        # the residual stream (x2, the children) is fp32 in every precision; the fused kernels read the node's input
        # in the compute dtype (their output, the hidden tensor, is stored in it)
        xk = x2.to(dt) if native and x2.dtype != dt else x2
        for gi, g in enumerate(layer.groups):
            folded = self._fold_group(g, st[gi]) if calib is None else None
            fold_gate = native and target is not None
            d2, ho, wo, gate, pooled = self._hidden(g, xk, n, h, w, folded, calib, moments, fold_gate, native)
            if self.low and not native:
                d2 = d2.to(dt)  # the projections' operand (the hidden rows stay fp32 until here)
            if fold_gate and calib is not None:  # column means of the gated hidden rows, from the SE sums
                colmean = (pooled if gate is None else pooled * gate).double().mean(0)
            k3 = []
            children = []  # the group's child activations, made before any is walked so d2 can go first
            for j, k in enumerate(g.ops):
                o, m = g.offs[j], g.mids[j]
                sl = d2[:, o:o + m]
                if calib is None:
                    w3, t3 = folded[6][j]
                    if target is not None and native:
                        gk = None if gate is None else gate[:, o:o + m].contiguous()
                        sq, ab = self.fops.linear_sq_err(sl, folded[8][j][0], target, t3, gk)
                        yield k, torch.stack((sq.sum(), ab.sum())), ho, wo
                        continue
                    if target is not None:
                        r = _mm(sl, w3).add_(target + t3) if self.low else torch.addmm(target + t3, sl, w3)
                        yield k, _err_sums(r), ho, wo
                        continue
                    y = _mm(sl, w3).add_(t3) if self.low else torch.addmm(t3, sl, w3)
                elif fold_gate:  # the last layer's calibration needs only its statistics, never its output
                    wj = g.w_pwl[j]
                    mean3 = colmean[o:o + m] @ wj.double()
                    gk = None if gate is None else gate[:, o:o + m].contiguous()
                    dev = self.fops.linear_col_dev(sl, wj, mean3.float(), gk)
                    k3.append((mean3.float(), (dev / max(sl.shape[0] - 1, 1)).float()))
                    continue
                else:
                    y = _mm(sl, g.w_pwl[j].to(dt))
                    k3.append(_bn_train_(y, g.g3[j], g.b3[j], g.eps3[j], normalize=target is None))
                    if target is not None:
                        continue
                if layer.has_skip:
                    y.add_(x2)
                children.append((k, y))
            # NOTE the hidden tensor (all siblings' channels) is freed before the children are walked: held, it made
            # the peak memory grow by one hidden tensor per trie level (9 MB per level on block 1 of dna, batch 8)
            del d2, sl
            while children:
                k, y = children.pop(0)
                yield k, y, ho, wo
                del y
            if calib is not None:
                calib += [m for m, _ in k3] + [v for _, v in k3]
                if target is not None:
                    yield None, None, ho, wo


def _emulate_low(x: Tensor) -> bool:
    """Whether a bf16 / fp16 GEMM or conv on ``x``'s device runs as fp32 on the rounded operands: on a CPU without
    bf16 dot products, where oneDNN's bf16 GEMM ran 30x slower than fp32 (the numbers: the same operands, fp32
    accumulation, the output not rounded)."""
    return x.device.type == "cpu" and not _rk.cpu_bf16_supported()


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` in ``b``'s dtype with fp32 accumulation, the product returned in fp32 (bf16 / fp16: ``a`` is cast to
    ``b``'s dtype; on CUDA the GEMM writes fp32, on a CPU with bf16 dot products its low-precision output is
    widened, elsewhere on the CPU it runs in fp32 on the rounded operands)."""
    if b.dtype == torch.float32:
        return torch.mm(a if a.dtype == torch.float32 else a.float(), b)
    a = a if a.dtype == b.dtype else a.to(b.dtype)
    if a.is_cuda:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError):  # a torch without mm's out_dtype (or not for this dtype)
            return torch.mm(a, b).float()
    if _emulate_low(a):
        return torch.mm(a.float(), b.float())
    return torch.mm(a, b).float()


def _dwconv(h4: Tensor, w: Tensor, stride: int, pad: int) -> Tensor:
    """The depthwise conv of the plain low-precision path in ``w``'s dtype (fp32 accumulation), or in fp32 on the
    rounded operands where ``_emulate_low``."""
    if _emulate_low(h4):
        h4, w = h4.float(), w.float()
    return F.conv2d(h4, w, None, stride, pad, 1, w.shape[0])


def _err_sums(r: Tensor) -> Tensor:
    """(sum of squares, sum of absolute values) of a residual ``r`` = student - teacher, as fp64 ``[2]``."""
    v = r.view(-1)
    return torch.stack((torch.dot(v, v).double(), v.abs().sum(dtype=torch.float64)))


def _to_rows(x: Tensor, dtype: torch.dtype) -> tuple[Tensor, int, int, int]:
    """[N, C, H, W] -> contiguous NHWC rows [N*H*W, C], fp32 whatever ``dtype`` (the residual stream stays fp32; the
    walker casts a node's input to the compute dtype where a GEMM or a fused kernel reads it)."""
    del dtype
    n, c, h, w = x.shape
    return x.float().permute(0, 2, 3, 1).contiguous().view(n * h * w, c), n, h, w


def _default_chunk(n: int, layers: list[_Layer], hw: tuple[int, int], device: torch.device) -> int:
    if device.type != "cpu":
        return n
    # keep the largest group hidden tensor of a layer after the first around 8 MB (L3 sized)
    h, w = hw
    biggest = 1
    for level, layer in enumerate(layers):
        for g in layer.groups:
            if level == 0:
                ho, wo = math.ceil(h / g.stride), math.ceil(w / g.stride)
                continue
            biggest = max(biggest, sum(g.mids) * ho * wo * 4)
    per = max(1, min(n, int(8e6 // biggest)))
    return math.ceil(n / math.ceil(n / per))  # equal chunks


def rate_block_sse(supernet: nn.Module, i: int, pairs: list[tuple[Tensor, Tensor]], calib: list[Tensor] | None, *,
                   dtype: torch.dtype, device: torch.device, chunk_size: int | None = None, progress: bool = False,
                   candidates: Sequence[int] | None = None, kernels: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Per-candidate sums of squared errors over ``pairs`` ``[candidates]`` and of absolute errors per pair
    ``[len(pairs), candidates]`` (``space.candidates(i)`` order, float64 numpy; NaN for candidates not wanted)."""
    space = supernet.space
    spec = space.blocks[i]
    block = supernet.blocks[i]
    K = len(spec.ops)
    n_cands = space.num_candidates(i)
    want = np.ones(n_cands, dtype=bool)
    if candidates is not None:
        want[:] = False
        want[np.asarray(candidates, dtype=np.int64)] = True
    csum = np.concatenate([[0], np.cumsum(want)])

    def wanted(lo: int, hi: int) -> bool:
        return csum[hi] > csum[lo]

    dtype = _rk.engine_dtype(kernels, device, dtype)  # bf16 / fp16 on a CPU without bf16 dot products: fp32 kernels
    low = dtype != torch.float32
    # the fused passes (see _rating_kernels: the CPU kernels in fp32, the CUDA kernels, or the CUDA kernels under the
    # CPU emulator; their depthwise conv pads k // 2 like timm's MBConv); `timed`: per layer shape, the faster of them
    # and plain PyTorch
    fused, timed = _rk.resolve(kernels, device, dtype) if _NATIVE else (None, False)
    native = fused is not None
    # the stem of block 0 has no choice: recalibrate it once (once per cell where each cell has its own stem), then it
    # maps images to the trie's input
    stem_passes: dict[int, tuple[list[Tensor], list[Tensor] | None]] = {}

    def stem_pass(c: int) -> tuple[list[Tensor], list[Tensor] | None]:
        """(trie inputs, calibration inputs) of cell c's candidates."""
        module = block.stem_for(c)
        if module is None:
            return [x for x, _ in pairs], calib
        if id(module) not in stem_passes:
            stem_passes.clear()  # cells are walked in order: keep one stem's outputs at a time
            stem = copy.deepcopy(module).to(device).eval()
            calib_in = calib
            with torch.autocast(device.type, dtype=dtype, enabled=low):
                if calib is not None:
                    calib_in = [y.float() for y in recalibrate_bn(stem, calib)]
                stem_passes[id(module)] = ([stem(x).float() for x, _ in pairs], calib_in)
        return stem_passes[id(module)]

    inputs, calib_in = stem_pass(0)

    sse = torch.zeros(n_cands, dtype=torch.float64, device=device)
    sae = torch.zeros(len(pairs), n_cands, dtype=torch.float64, device=device)  # absolute errors per pair
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=int(want.sum()), desc=f"block {i}", unit="cand", leave=False)
    say = bar.write if bar is not None else None  # the timed kernel choices, with progress=True
    total_chunks = 0
    plans = []
    for c, cell in enumerate(spec.cells):
        layers = [_build_layer(block.cells[c].layers[layer].ops, device) for layer in range(cell.depth)]
        plans.append(layers)
        native = native and all(g.pad == g.kernel // 2 for layer in layers for g in layer.groups)
    for x in inputs:
        cs = chunk_size or _default_chunk(x.shape[0], plans[0], x.shape[-2:], device)
        total_chunks += math.ceil(x.shape[0] / cs)

    base = 0
    for c, cell in enumerate(spec.cells):
        layers = plans[c]
        depth = cell.depth
        size = K ** depth
        if not wanted(base, base + size):
            base += size
            continue
        walker = _Walker(layers, dtype, K, native, fused)
        inputs, calib_in = stem_pass(c)

        def pick(level: int, x2: Tensor, n: int, h: int, w: int, st: list[tuple] | None, calib_mode: bool,
                 tg: Tensor | bool | None) -> None:
            """Timed kernels: this node's siblings run fused or in plain PyTorch, whichever ran faster (once per
            layer shape and process, timed on this node)."""
            layer = walker.layers[level]
            shape = (n, h, w, x2.shape[1], level == depth - 1, layer.has_skip,
                     tuple((g.kernel, g.stride, tuple(g.mids), g.w_pwl[0].shape[1]) for g in layer.groups))
            key = (str(device), dtype, "calib" if calib_mode else "eval", shape)
            mode = (level, calib_mode)

            def run(on: bool) -> None:
                (walker.plain.discard if on else walker.plain.add)(mode)
                for _ in walker.siblings(level, x2, n, h, w, st, [] if calib_mode else None, target=tg):
                    pass

            on = _rk.choose(key, lambda: run(True), lambda: run(False), device, say)
            (walker.plain.discard if on else walker.plain.add)(mode)

        stats: dict[tuple, list[tuple]] | None = None
        if calib_in is not None:
            accs: dict[tuple, _StatsAcc] = {}

            def cal(level: int, x2: Tensor, n: int, h: int, w: int, prefix: tuple, lo: int) -> None:
                span = K ** (depth - level)
                if not wanted(lo, lo + span):
                    return
                flat: list[Tensor] = []
                last = level == depth - 1
                if timed and native:
                    pick(level, x2, n, h, w, None, True, True if last else None)
                for k, y, ho, wo in walker.siblings(level, x2, n, h, w, None, flat, target=True if last else None):
                    if not last:
                        cal(level + 1, y, n, ho, wo, prefix + (k,), lo + k * span // K)
                accs.setdefault(prefix, _StatsAcc()).add(flat)

            for xc in calib_in:
                x2, n, h, w = _to_rows(xc, dtype)
                cal(0, x2, n, h, w, (), base)
            stats = {p: a.mean(layers[len(p)]) for p, a in accs.items()}
            del accs
        running = [_running_stats(layer) for layer in layers]

        def node_stats(prefix: tuple) -> list[tuple]:
            return running[len(prefix)] if stats is None else stats[prefix]

        def walk(level: int, x2: Tensor, n: int, h: int, w: int, prefix: tuple, lo: int, tgt: Tensor,
                 pair: int) -> None:
            span = K ** (depth - level)
            if not wanted(lo, lo + span):
                return
            st = node_stats(prefix)
            if level == depth - 1:
                # residual of the last layer folds into the target: r = proj + b3 + skip - target
                tg = x2.float() - tgt if walker.layers[level].has_skip else tgt.neg()
                if timed and native:
                    pick(level, x2, n, h, w, st, False, tg)
                vals = [None] * K
                for k, v, _, _ in walker.siblings(level, x2, n, h, w, st, target=tg):
                    vals[k] = v
                sums = torch.stack(vals).double()
                sse[lo:lo + K] += sums[:, 0]
                sae[pair, lo:lo + K] += sums[:, 1]
                if bar is not None:
                    bar.update(K / total_chunks)
                return
            if timed and native:
                pick(level, x2, n, h, w, st, False, None)
            for k, y, ho, wo in walker.siblings(level, x2, n, h, w, st):
                walk(level + 1, y, n, ho, wo, prefix + (k,), lo + k * (span // K), tgt, pair)

        for pair, (x, (_, t)) in enumerate(zip(inputs, pairs)):
            cs = chunk_size or _default_chunk(x.shape[0], layers, x.shape[-2:], device)
            for s in range(0, x.shape[0], cs):
                x2, n, h, w = _to_rows(x[s:s + cs], dtype)
                t2 = t[s:s + cs].permute(0, 2, 3, 1).contiguous().view(-1, t.shape[1]).float()
                walk(0, x2, n, h, w, (), base, t2, pair)
        base += size
    if bar is not None:
        bar.close()
    out, out_abs = sse.cpu().numpy(), sae.cpu().numpy()
    out[~want] = np.nan
    out_abs[:, ~want] = np.nan
    return out, out_abs
