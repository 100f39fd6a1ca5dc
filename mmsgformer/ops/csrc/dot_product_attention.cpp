// Schema and input validation of mmsgformer::dot_product_attention and
// mmsgformer::dot_product_attention_key_mass (docs/design.md §18).
//
// The CPU kernels are registered in cpu/dot_product_attention_cpu.cpp. There is no CUDA kernel:
// on a GPU, PyTorch's own flash and memory-efficient kernels are the fast path. Autograd and
// the fake kernels are registered from Python in mmsgformer/ops/_registration.py.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <utility>

#include "dot_product_attention.h"

namespace mmsgformer {

namespace {

void check_operand(const char* name, const at::Tensor& t, const at::Tensor& q) {
  TORCH_CHECK_VALUE(t.dim() == 4, "dot_product_attention: ", name,
                    " must be (B, H, N, D), got ", t.dim(), " dims with shape ", t.sizes());
  TORCH_CHECK_VALUE(t.device().is_cpu(), "dot_product_attention: ", name, " is on ", t.device(),
                    " but the op has only a CPU kernel (use "
                    "F.scaled_dot_product_attention on other devices)");
  TORCH_CHECK_VALUE(t.scalar_type() == q.scalar_type(), "dot_product_attention: ", name,
                    " dtype ", t.scalar_type(), " must equal q dtype ", q.scalar_type());
  TORCH_CHECK_VALUE(t.size(0) == q.size(0) && t.size(1) == q.size(1) && t.size(3) == q.size(3),
                    "dot_product_attention: ", name, " must be (B, H, Nk, D) = (", q.size(0),
                    ", ", q.size(1), ", Nk, ", q.size(3), ") like q ", q.sizes(), ", got ",
                    t.sizes());
}

at::Tensor rows_contiguous(const at::Tensor& t) {
  return t.stride(3) == 1 ? t : t.contiguous();
}

}  // namespace

AttentionInputs prepare_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  double scale) {
  TORCH_CHECK_VALUE(q.dim() == 4, "dot_product_attention: q must be (B, H, Nq, D), got ",
                    q.dim(), " dims with shape ", q.sizes());
  TORCH_CHECK_VALUE(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
                    "dot_product_attention: dtype must be float32 or float64, got ",
                    q.scalar_type());
  check_operand("q", q, q);
  check_operand("k", k, q);
  check_operand("v", v, q);
  TORCH_CHECK_VALUE(k.size(2) == v.size(2), "dot_product_attention: k has ", k.size(2),
                    " keys but v has ", v.size(2), " values (k and v must be (B, H, Nk, D))");
  TORCH_CHECK_VALUE(k.size(2) >= 1 || q.size(2) == 0 || q.size(0) * q.size(1) == 0,
                    "dot_product_attention: k and v have no keys (Nk=0): the softmax over "
                    "keys is undefined");
  TORCH_CHECK_VALUE(q.size(3) >= 1, "dot_product_attention: head dimension D must be >= 1");
  return AttentionInputs{rows_contiguous(q), rows_contiguous(k), rows_contiguous(v), scale};
}

AttentionGradInputs prepare_attention_backward(const at::Tensor& grad_out, const at::Tensor& q,
                                               const at::Tensor& k, const at::Tensor& v,
                                               const at::Tensor& out, const at::Tensor& lse,
                                               double scale) {
  const AttentionInputs in = prepare_attention(q, k, v, scale);
  for (const auto& named : {std::make_pair("out", &out), std::make_pair("grad_out", &grad_out)}) {
    const at::Tensor& t = *named.second;
    TORCH_CHECK_VALUE(t.sizes() == q.sizes(), "dot_product_attention_backward: ", named.first,
                      " must be (B, H, Nq, D) = ", q.sizes(), " like q, got ", t.sizes());
    TORCH_CHECK_VALUE(t.scalar_type() == q.scalar_type() && t.device() == q.device(),
                      "dot_product_attention_backward: ", named.first, " (", t.scalar_type(),
                      ", ", t.device(), ") must have q's dtype and device (", q.scalar_type(),
                      ", ", q.device(), ")");
  }
  TORCH_CHECK_VALUE(lse.dim() == 3 && lse.size(0) == q.size(0) && lse.size(1) == q.size(1) &&
                        lse.size(2) == q.size(2),
                    "dot_product_attention_backward: lse must be (B, H, Nq) = (", q.size(0), ", ",
                    q.size(1), ", ", q.size(2), "), got ", lse.sizes());
  TORCH_CHECK_VALUE(lse.scalar_type() == q.scalar_type() && lse.device() == q.device(),
                    "dot_product_attention_backward: lse (", lse.scalar_type(), ", ",
                    lse.device(), ") must have q's dtype and device");
  return AttentionGradInputs{rows_contiguous(grad_out), in.q, in.k, in.v, rows_contiguous(out),
                             lse.contiguous(), scale};
}

at::Tensor new_attention_output(const at::Tensor& q) {
  return at::empty({q.size(0), q.size(2), q.size(1), q.size(3)}, q.options()).transpose(1, 2);
}

}  // namespace mmsgformer

TORCH_LIBRARY_FRAGMENT(mmsgformer, m) {
  m.def(
      "dot_product_attention(Tensor q, Tensor k, Tensor v, float scale) -> "
      "(Tensor out, Tensor lse)");
  m.def(
      "dot_product_attention_key_mass(Tensor q, Tensor k, Tensor v, float scale) -> "
      "(Tensor out, Tensor lse, Tensor mass)");
  m.def(
      "dot_product_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, "
      "Tensor out, Tensor lse, float scale) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
  m.def("dot_product_attention_cpu_kernel(int head_dim) -> str",
        [](int64_t head_dim) { return mmsgformer::attention_cpu_kernel(head_dim); });
}
