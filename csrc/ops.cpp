// Schemas of the dna_fast operators. Implementations register per dispatch key in cpu/ and cuda/.
#include <torch/library.h>

TORCH_LIBRARY(dna_fast, m) {
  // swish(x * scale + shift) per channel of an NCHW / channels_last tensor (folded BN + activation).
  m.def("scale_shift_swish(Tensor x, Tensor scale, Tensor shift) -> Tensor");
  // Gradient w.r.t. z = x * scale + shift: grad * swish'(z). Reductions for scale/shift happen in Python.
  m.def("scale_shift_swish_backward(Tensor grad, Tensor x, Tensor scale, Tensor shift) -> Tensor");
  // swish(depthwise_conv(x, weight[C, 1, k, k], padding k // 2, stride) * scale + shift); with_sums: also the fp32
  // per-(n, c) sums of the output over space [N, C] (else an empty [0] tensor).
  m.def("dwconv_bn_act(Tensor x, Tensor weight, Tensor scale, Tensor shift, int stride, bool with_sums) "
        "-> (Tensor, Tensor)");
  // depthwise_conv(x, weight[C, 1, k, k], padding k // 2, stride) of an fp32 input (output channels_last) and, per
  // output row r = n * H_out + y, the mean [N * H_out, C] and sum of squared deviations from it [N * H_out, C] of the
  // row's outputs: what train-mode BatchNorm statistics of the output need, from the same pass (CPU).
  m.def("dwconv_stats(Tensor x, Tensor weight, int stride) -> (Tensor, Tensor, Tensor)");
  // In place over a contiguous fp32 [rows, C] matrix: x = swish(x * scale + shift) (no scale: 1, no shift: 0); returns
  // the column sums of the result per group of rows / groups consecutive rows [groups, C] (groups = 0: [0, C]) (CPU).
  m.def("swish_rows_(Tensor(a!) x, Tensor? scale, Tensor? shift, int groups) -> Tensor");
  // swish(x @ weight + bias) for x [rows, K], weight [K, N], bias [N] -> [rows, N] (CPU).
  m.def("linear_swish(Tensor x, Tensor weight, Tensor bias) -> Tensor");
  // For e = (x * gate) @ weight + offset + shift with x [rows, K], weight [K, N], offset [rows, N], shift [N] and an
  // optional gate [groups, K] scaling x's columns per group of rows / groups consecutive rows: per group (one group
  // without a gate) the sum of e^2 and the sum of |e|, two fp64 [groups] tensors, without storing the product (CPU).
  m.def("linear_sq_err(Tensor x, Tensor weight, Tensor offset, Tensor shift, Tensor? gate=None) -> (Tensor, Tensor)");
  // Per column, sum over rows of ((x * gate) @ weight - mean)^2 as fp64 [N] (gate as in linear_sq_err), without
  // storing the product (CPU).
  m.def("linear_col_dev(Tensor x, Tensor weight, Tensor mean, Tensor? gate=None) -> Tensor");
  // The MBConv expansion swish(x @ w1 + b1) (x [N, Cin, H, W], w1 [Cin, C], b1 [C]) fused into the depthwise conv
  // that follows it, the expanded rows kept in a ring in cache: expand_dwconv_bn_act as dwconv_bn_act(with_sums=True)
  // of the expansion, expand_dwconv_stats as dwconv_stats of it (CPU).
  m.def("expand_dwconv_bn_act(Tensor x, Tensor w1, Tensor b1, Tensor w_dw, Tensor scale, Tensor shift, int stride) "
        "-> (Tensor, Tensor)");
  m.def("expand_dwconv_stats(Tensor x, Tensor w1, Tensor b1, Tensor w_dw, int stride) -> (Tensor, Tensor, Tensor)");
  // SE gate per sample: sigmoid(w_expand @ swish(w_reduce @ pooled + b_reduce) + b_expand), pooled [N, C] -> [N, C].
  m.def("se_gate(Tensor pooled, Tensor w_reduce, Tensor b_reduce, Tensor w_expand, Tensor b_expand) -> Tensor");
  // conv1x1(x * gate[:, :, None, None], weight) * scale + shift (+ residual) -> [N, Co, H, W]; with target: the fp32
  // per-sample sums of squared differences to the target [N] instead.
  m.def("pw_project(Tensor x, Tensor gate, Tensor weight, Tensor scale, Tensor shift, Tensor? residual, "
        "Tensor? target) -> Tensor");
}
