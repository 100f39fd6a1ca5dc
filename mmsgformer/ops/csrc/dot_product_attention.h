// Scaled dot-product attention without a mask: shared definitions of the op's registration
// (dot_product_attention.cpp) and its CPU kernels (cpu/dot_product_attention_cpu.cpp). The
// op's contract is docs/design.md §18.
//
// For every (b, h) and query row i, with keys/values j < Nk:
//
//   s_ij  = scale * <q[b, h, i, :], k[b, h, j, :]>
//   out[b, h, i, :] = sum_j exp(s_ij - m_i) v[b, h, j, :] / l_i,
//   m_i = max_j s_ij,  l_i = sum_j exp(s_ij - m_i).
//
// dot_product_attention_key_mass also returns the mean probability each key receives (the key
// mass of a hybrid-scale block's coarse branch, design §5.1), over heads and queries:
//
//   mass[b, j] = sum_{h, i} exp(s_ij - m_i) / l_i / (H * Nq),
//
// from a second pass over the scores with the first pass's m_i and l_i (0 when H * Nq = 0).
//
// The vector kernel computes m_i and l_i online over chunks of keys (flash attention): after
// chunk c, m_i is the maximum so far and the running sums are rescaled by exp(m_old - m_new).
// Both forward ops also return lse_i = m_i + log l_i, from which the backward op
// (dot_product_attention_backward) recomputes P_ij = exp(s_ij - lse_i) tile by tile:
//
//   dv = P^T dout,  dP = dout v^T,  dS = P * (dP - delta),  delta_i = <dout_i, out_i>
//   (= rowsum(dP * P)),  dq = scale * dS k,  dk = scale * dS^T q.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace mmsgformer {

// The inputs of one call, checked: q (B, H, Nq, D), k (B, H, Nk, D), v (B, H, Nk, D) on the
// CPU, one float dtype, innermost dimension contiguous (copied when it is not).
struct AttentionInputs {
  at::Tensor q, k, v;
  double scale;
};

AttentionInputs prepare_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  double scale);

// The inputs of a backward call, checked like the forward's, plus the forward's output
// (B, H, Nq, D), the output gradient (same shape) and the log-sum-exp lse (B, H, Nq) (q's
// dtype; lse_i = m_i + log l_i).
struct AttentionGradInputs {
  at::Tensor grad_out, q, k, v, out, lse;
  double scale;
};

AttentionGradInputs prepare_attention_backward(const at::Tensor& grad_out, const at::Tensor& q,
                                               const at::Tensor& k, const at::Tensor& v,
                                               const at::Tensor& out, const at::Tensor& lse,
                                               double scale);

// The output of a call: (B, H, Nq, D) whose memory is (B, Nq, H, D), so that the usual
// `out.transpose(1, 2).reshape(B, Nq, H * D)` is free (the layout of PyTorch's flash kernel).
at::Tensor new_attention_output(const at::Tensor& q);

// Which CPU kernel float32 inputs with head dimension `head_dim` run on this machine: "avx512"
// or "avx2" (the vector kernels, cpu/vector_attention.h), else "portable" (one query row at a
// time, scalar loops).
std::string attention_cpu_kernel(int64_t head_dim);

// The head dimension of the vector kernels.
constexpr int64_t kVectorHeadDim = 32;

}  // namespace mmsgformer
