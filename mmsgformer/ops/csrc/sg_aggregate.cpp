// Schema of the mmsgformer ops, input validation and the device-generic parts of the backward.
//
// The device kernels are registered in cpu/sg_aggregate_cpu.cpp (CPU) and
// cuda/sg_aggregate_cuda.cu (CUDA). Autograd and the fake (meta) kernels are registered from
// Python in mmsgformer/ops/_registration.py.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <string>

#include "sg_aggregate.h"

extern "C" {
// `import mmsgformer._C` loads this shared library, which runs the TORCH_LIBRARY static
// initializers below. The module itself is empty: the ops live in torch.ops.mmsgformer.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // m_name
      "mmsgformer's compiled ops; use torch.ops.mmsgformer.*",  // m_doc
      -1,    // m_size
      nullptr,  // m_methods
  };
  return PyModule_Create(&module_def);
}
}

namespace mmsgformer {

namespace {

std::string join(c10::IntArrayRef values) {
  std::string s = "[";
  for (size_t i = 0; i < values.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(values[i]);
  }
  return s + "]";
}

bool is_supported_float(c10::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Checks shared by the forward and the backward: tokens, order, weight.
void check_common(const char* op, const at::Tensor& tokens, const at::Tensor& order,
                  const at::Tensor& weight, c10::DeviceType device) {
  TORCH_CHECK_VALUE(tokens.dim() == 3, op, ": tokens must be (B, N, C), got ", tokens.dim(),
                    " dims with shape ", tokens.sizes());
  TORCH_CHECK_VALUE(is_supported_float(tokens.scalar_type()), op,
                    ": tokens dtype must be float32, float64, float16 or bfloat16, got ",
                    tokens.scalar_type());
  TORCH_CHECK_VALUE(tokens.device().type() == device, op, ": tokens are on ", tokens.device(),
                    " but this is the ", c10::DeviceTypeName(device), " kernel");
  TORCH_CHECK_VALUE(order.dim() == 2 && order.size(0) == tokens.size(0) &&
                        order.size(1) == tokens.size(1),
                    op, ": order must be (B, N) = ", tokens.sizes().slice(0, 2),
                    " like tokens (B, N, C) = ", tokens.sizes(), ", got ", order.sizes());
  TORCH_CHECK_VALUE(order.scalar_type() == at::kLong, op,
                    ": order must be int64 (torch.sort(...).indices), got ", order.scalar_type());
  TORCH_CHECK_VALUE(order.device() == tokens.device(), op, ": order is on ", order.device(),
                    " but tokens are on ", tokens.device());
  TORCH_CHECK_VALUE(weight.dim() == 1, op, ": weight must be 1-D (sum of group sizes,), got shape ",
                    weight.sizes());
  TORCH_CHECK_VALUE(weight.device() == tokens.device(), op, ": weight is on ", weight.device(),
                    " but tokens are on ", tokens.device());
  const auto wt = weight.scalar_type();
  const auto tt = tokens.scalar_type();
  const bool reduced = tt == at::kHalf || tt == at::kBFloat16;
  TORCH_CHECK_VALUE(wt == tt || (reduced && wt == at::kFloat), op, ": weight dtype ", wt,
                    " does not match tokens dtype ", tt,
                    " (weight and bias must have the tokens' dtype, or float32 when the tokens "
                    "are float16/bfloat16)");
}

at::Tensor to_acc(const at::Tensor& t) {
  const auto acc = at::toOpMathType(t.scalar_type());
  return t.to(acc).contiguous();
}

}  // namespace

SegmentTable make_segment_table(c10::IntArrayRef seg_starts, c10::IntArrayRef seg_lengths,
                                c10::IntArrayRef group_sizes, int64_t num_tokens) {
  const int64_t K = static_cast<int64_t>(group_sizes.size());
  TORCH_CHECK_VALUE(K >= 1 && K <= kMaxSegments, "sg_aggregate: group_sizes has ", K,
                    " segments, must have between 1 and ", kMaxSegments);
  TORCH_CHECK_VALUE(static_cast<int64_t>(seg_starts.size()) == K &&
                        static_cast<int64_t>(seg_lengths.size()) == K,
                    "sg_aggregate: seg_starts ", join(seg_starts), ", seg_lengths ",
                    join(seg_lengths), " and group_sizes ", join(group_sizes),
                    " must have one entry per segment");
  SegmentTable t{};
  t.num_segments = static_cast<int32_t>(K);
  int64_t expected_start = 0, out = 0, wo = 0;
  for (int64_t k = 0; k < K; ++k) {
    TORCH_CHECK_VALUE(group_sizes[k] >= 1, "sg_aggregate: group_sizes[", k, "]=", group_sizes[k],
                      " must be >= 1");
    TORCH_CHECK_VALUE(seg_lengths[k] >= 0, "sg_aggregate: seg_lengths[", k, "]=", seg_lengths[k],
                      " must be >= 0");
    TORCH_CHECK_VALUE(seg_starts[k] == expected_start, "sg_aggregate: seg_starts[", k, "]=",
                      seg_starts[k], " must be ", expected_start,
                      " (segments are consecutive rank ranges from rank 0; seg_starts ",
                      join(seg_starts), ", seg_lengths ", join(seg_lengths), ")");
    t.start[k] = seg_starts[k];
    t.length[k] = seg_lengths[k];
    t.group[k] = group_sizes[k];
    t.count[k] = (seg_lengths[k] + group_sizes[k] - 1) / group_sizes[k];
    t.out_offset[k] = out;
    t.weight_offset[k] = wo;
    expected_start += seg_lengths[k];
    out += t.count[k];
    wo += group_sizes[k];
  }
  TORCH_CHECK_VALUE(expected_start == num_tokens, "sg_aggregate: the layout covers ",
                    expected_start, " ranks (sum of seg_lengths ", join(seg_lengths),
                    ") but tokens have N=", num_tokens,
                    "; build it with segment_layout(N, sr_ratio)");
  t.num_tokens = num_tokens;
  t.num_out = out;
  t.num_weights = wo;
  return t;
}

ForwardInputs prepare_forward(const at::Tensor& tokens, const at::Tensor& order,
                              const at::Tensor& weight, const at::Tensor& bias,
                              c10::IntArrayRef seg_starts, c10::IntArrayRef seg_lengths,
                              c10::IntArrayRef group_sizes, c10::DeviceType device) {
  check_common("sg_aggregate", tokens, order, weight, device);
  SegmentTable table = make_segment_table(seg_starts, seg_lengths, group_sizes, tokens.size(1));
  TORCH_CHECK_VALUE(weight.numel() == table.num_weights, "sg_aggregate: weight has ",
                    weight.numel(), " elements but must have sum(group_sizes) = ",
                    table.num_weights, " (group_sizes ", join(group_sizes), ")");
  TORCH_CHECK_VALUE(bias.dim() == 1 && bias.numel() == table.num_segments,
                    "sg_aggregate: bias must have shape (", table.num_segments,
                    ",) (one per segment), got ", bias.sizes());
  TORCH_CHECK_VALUE(bias.device() == tokens.device(), "sg_aggregate: bias is on ",
                    bias.device(), " but tokens are on ", tokens.device());
  TORCH_CHECK_VALUE(bias.scalar_type() == weight.scalar_type(), "sg_aggregate: bias dtype ",
                    bias.scalar_type(), " must equal weight dtype ", weight.scalar_type());
  return ForwardInputs{tokens.contiguous(), order.contiguous(), to_acc(weight), to_acc(bias),
                       table};
}

BackwardInputs prepare_backward(const at::Tensor& grad_out, const at::Tensor& tokens,
                                const at::Tensor& order, const at::Tensor& weight,
                                c10::IntArrayRef seg_starts, c10::IntArrayRef seg_lengths,
                                c10::IntArrayRef group_sizes, c10::DeviceType device) {
  check_common("sg_aggregate_backward", tokens, order, weight, device);
  SegmentTable table = make_segment_table(seg_starts, seg_lengths, group_sizes, tokens.size(1));
  TORCH_CHECK_VALUE(weight.numel() == table.num_weights, "sg_aggregate_backward: weight has ",
                    weight.numel(), " elements but must have sum(group_sizes) = ",
                    table.num_weights);
  TORCH_CHECK_VALUE(grad_out.dim() == 3 && grad_out.size(0) == tokens.size(0) &&
                        grad_out.size(1) == table.num_out && grad_out.size(2) == tokens.size(2),
                    "sg_aggregate_backward: grad_out must be (B, num_out, C) = (",
                    tokens.size(0), ", ", table.num_out, ", ", tokens.size(2), "), got ",
                    grad_out.sizes());
  TORCH_CHECK_VALUE(grad_out.scalar_type() == tokens.scalar_type(),
                    "sg_aggregate_backward: grad_out dtype ", grad_out.scalar_type(),
                    " must equal tokens dtype ", tokens.scalar_type());
  TORCH_CHECK_VALUE(grad_out.device() == tokens.device(), "sg_aggregate_backward: grad_out is on ",
                    grad_out.device(), " but tokens are on ", tokens.device());
  return BackwardInputs{grad_out.contiguous(), tokens.contiguous(), order.contiguous(),
                        to_acc(weight), weight.scalar_type(), table};
}

}  // namespace mmsgformer

// The layout arguments are SymInt[] so that torch.compile with dynamic shapes can trace a layout
// computed from a symbolic N; the kernels receive concrete ints.
TORCH_LIBRARY(mmsgformer, m) {
  m.def(
      "sg_aggregate(Tensor tokens, Tensor order, Tensor weight, Tensor bias, "
      "SymInt[] seg_starts, SymInt[] seg_lengths, int[] group_sizes) -> Tensor");
  m.def(
      "sg_aggregate_backward(Tensor grad_out, Tensor tokens, Tensor order, Tensor weight, "
      "SymInt[] seg_starts, SymInt[] seg_lengths, int[] group_sizes) -> "
      "(Tensor grad_tokens, Tensor grad_weight, Tensor grad_bias)");
}
