// CPU kernels of mmsgformer::dot_product_attention, dot_product_attention_key_mass and
// dot_product_attention_backward (docs/design.md §18; formulas in ../dot_product_attention.h),
// and which one a call runs.
//
// Portable kernel (any float dtype and head dimension), here: one work item per query row; it
// writes the row's scores, takes their maximum, exponentiates and sums them, and accumulates
// the value rows weighted by the probabilities, all in the accumulation type. float64 runs it,
// so the ops equal the spelled-out softmax there.
//
// Vector kernels (float32, D = 32; cpu/vector_attention.h): AVX-512 where the CPU has it, else
// AVX2 + FMA, else the portable kernel. They keep every score tile in registers and need no
// BLAS call per tile, where PyTorch's flash kernel spends one exponential per 32 multiply-adds
// and runs its score GEMMs through a general BLAS call (SG-Former-S at 800x1344, AVX-512:
// 73 -> ~52 ms per stage-3 self-guided block, `tools/analysis_tools/benchmark.py --breakdown`).
//
// MMSGFORMER_CPU_ATTENTION=avx2 makes an AVX-512 CPU run the AVX2 kernel (to compare them and to
// test both on one machine).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "../dot_product_attention.h"
#include "vector_attention.h"

namespace mmsgformer {

namespace {

// ------------------------------------------------------------------------- portable kernel

// Also writes m_i and 1 / l_i of every query row to `row_max`, `row_inv_sum` (B * H * Nq
// accumulation-type values): the log-sum-exp for backward and the key-mass pass use them.
template <typename scalar_t>
void portable_kernel(const AttentionInputs& in, at::Tensor& out,
                     at::opmath_type<scalar_t>* row_max, at::opmath_type<scalar_t>* row_inv_sum) {
  using acc_t = at::opmath_type<scalar_t>;
  const at::Tensor &q = in.q, &k = in.k, &v = in.v;
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), D = q.size(3), Nk = k.size(2);
  if (B * H * Nq == 0) return;
  const scalar_t* qd = q.data_ptr<scalar_t>();
  const scalar_t* kd = k.data_ptr<scalar_t>();
  const scalar_t* vd = v.data_ptr<scalar_t>();
  scalar_t* od = out.data_ptr<scalar_t>();
  const acc_t scale = static_cast<acc_t>(in.scale);
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / (2 * Nk * D));

  at::parallel_for(0, B * H * Nq, grain, [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> score(Nk), acc(D);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t bh = r / Nq, i = r - bh * Nq, b = bh / H, h = bh - b * H;
      const scalar_t* qi = qd + b * q.stride(0) + h * q.stride(1) + i * q.stride(2);
      const scalar_t* kb = kd + b * k.stride(0) + h * k.stride(1);
      const scalar_t* vb = vd + b * v.stride(0) + h * v.stride(1);
      acc_t m = -std::numeric_limits<acc_t>::infinity();
      for (int64_t j = 0; j < Nk; ++j) {
        const scalar_t* kj = kb + j * k.stride(2);
        acc_t s = 0;
        for (int64_t d = 0; d < D; ++d) s += static_cast<acc_t>(qi[d]) * kj[d];
        score[j] = s * scale;
        m = std::max(m, score[j]);
      }
      acc_t l = 0;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t j = 0; j < Nk; ++j) {
        const acc_t p = std::exp(score[j] - m);
        l += p;
        const scalar_t* vj = vb + j * v.stride(2);
        for (int64_t d = 0; d < D; ++d) acc[d] += p * vj[d];
      }
      scalar_t* oi = od + b * out.stride(0) + h * out.stride(1) + i * out.stride(2);
      for (int64_t d = 0; d < D; ++d) oi[d] = static_cast<scalar_t>(acc[d] / l);
      row_max[r] = m;
      row_inv_sum[r] = acc_t(1) / l;
    }
  });
}

// mass[b, j] = sum_{h, i} exp(s_hij - m_hi) / l_hi / (H * Nq), one work item per (b, j).
template <typename scalar_t>
void portable_key_mass(const AttentionInputs& in, const at::opmath_type<scalar_t>* row_max,
                       const at::opmath_type<scalar_t>* row_inv_sum, at::Tensor& mass) {
  using acc_t = at::opmath_type<scalar_t>;
  const at::Tensor &q = in.q, &k = in.k;
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), D = q.size(3), Nk = k.size(2);
  const scalar_t* qd = q.data_ptr<scalar_t>();
  const scalar_t* kd = k.data_ptr<scalar_t>();
  scalar_t* md = mass.data_ptr<scalar_t>();
  const acc_t scale = static_cast<acc_t>(in.scale);
  const acc_t norm = acc_t(1) / static_cast<acc_t>(H * Nq);
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / (H * Nq * D));
  at::parallel_for(0, B * Nk, grain, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t b = c / Nk, j = c - b * Nk;
      acc_t total = 0;
      for (int64_t h = 0; h < H; ++h) {
        const scalar_t* kj = kd + b * k.stride(0) + h * k.stride(1) + j * k.stride(2);
        const int64_t row0 = (b * H + h) * Nq;
        for (int64_t i = 0; i < Nq; ++i) {
          const scalar_t* qi = qd + b * q.stride(0) + h * q.stride(1) + i * q.stride(2);
          acc_t s = 0;
          for (int64_t d = 0; d < D; ++d) s += static_cast<acc_t>(qi[d]) * kj[d];
          total += std::exp(s * scale - row_max[row0 + i]) * row_inv_sum[row0 + i];
        }
      }
      md[c] = static_cast<scalar_t>(total * norm);
    }
  });
}

// Gradients of one (b, h) per work item, rows in order (no two items write the same memory):
// for each query row i, p_j = exp(s_ij - lse_i), ds_j = p_j (<dout_i, v_j> - <dout_i, out_i>);
// dq_i = scale sum_j ds_j k_j, dk_j += scale ds_j q_i, dv_j += p_j dout_i.
template <typename scalar_t>
void portable_backward(const AttentionGradInputs& in, at::Tensor& grad_q, at::Tensor& grad_k,
                       at::Tensor& grad_v) {
  using acc_t = at::opmath_type<scalar_t>;
  const at::Tensor &q = in.q, &k = in.k, &v = in.v, &o = in.out, &g = in.grad_out;
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), D = q.size(3), Nk = k.size(2);
  const acc_t scale = static_cast<acc_t>(in.scale);
  const scalar_t *qd = q.data_ptr<scalar_t>(), *kd = k.data_ptr<scalar_t>();
  const scalar_t *vd = v.data_ptr<scalar_t>(), *od = o.data_ptr<scalar_t>();
  const scalar_t* gd = g.data_ptr<scalar_t>();
  const scalar_t* lse = in.lse.data_ptr<scalar_t>();
  scalar_t *dq = grad_q.data_ptr<scalar_t>(), *dk = grad_k.data_ptr<scalar_t>();
  scalar_t* dv = grad_v.data_ptr<scalar_t>();
  at::parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
    std::vector<acc_t> p(Nk), ds(Nk), dk_acc(Nk * D), dv_acc(Nk * D), dq_acc(D);
    for (int64_t bh = i0; bh < i1; ++bh) {
      const int64_t b = bh / H, h = bh - b * H;
      const scalar_t* kb = kd + b * k.stride(0) + h * k.stride(1);
      const scalar_t* vb = vd + b * v.stride(0) + h * v.stride(1);
      std::fill(dk_acc.begin(), dk_acc.end(), acc_t(0));
      std::fill(dv_acc.begin(), dv_acc.end(), acc_t(0));
      for (int64_t i = 0; i < Nq; ++i) {
        const scalar_t* qi = qd + b * q.stride(0) + h * q.stride(1) + i * q.stride(2);
        const scalar_t* oi = od + b * o.stride(0) + h * o.stride(1) + i * o.stride(2);
        const scalar_t* gi = gd + b * g.stride(0) + h * g.stride(1) + i * g.stride(2);
        const acc_t L = static_cast<acc_t>(lse[bh * Nq + i]);
        acc_t delta = 0;
        for (int64_t d = 0; d < D; ++d) delta += static_cast<acc_t>(gi[d]) * oi[d];
        std::fill(dq_acc.begin(), dq_acc.end(), acc_t(0));
        for (int64_t j = 0; j < Nk; ++j) {
          const scalar_t* kj = kb + j * k.stride(2);
          const scalar_t* vj = vb + j * v.stride(2);
          acc_t s = 0, dp = 0;
          for (int64_t d = 0; d < D; ++d) {
            s += static_cast<acc_t>(qi[d]) * kj[d];
            dp += static_cast<acc_t>(gi[d]) * vj[d];
          }
          const acc_t pj = std::exp(s * scale - L);
          const acc_t dsj = pj * (dp - delta) * scale;
          for (int64_t d = 0; d < D; ++d) {
            dq_acc[d] += dsj * kj[d];
            dk_acc[j * D + d] += dsj * qi[d];
            dv_acc[j * D + d] += pj * gi[d];
          }
        }
        scalar_t* dqi = dq + b * grad_q.stride(0) + h * grad_q.stride(1) + i * grad_q.stride(2);
        for (int64_t d = 0; d < D; ++d) dqi[d] = static_cast<scalar_t>(dq_acc[d]);
      }
      for (int64_t j = 0; j < Nk; ++j) {
        scalar_t* dkj = dk + b * grad_k.stride(0) + h * grad_k.stride(1) + j * grad_k.stride(2);
        scalar_t* dvj = dv + b * grad_v.stride(0) + h * grad_v.stride(1) + j * grad_v.stride(2);
        for (int64_t d = 0; d < D; ++d) {
          dkj[d] = static_cast<scalar_t>(dk_acc[j * D + d]);
          dvj[d] = static_cast<scalar_t>(dv_acc[j * D + d]);
        }
      }
    }
  });
}

// The vector kernel that serves float32 inputs with head dimension `head_dim` on this CPU, or
// nullptr (the portable kernel).
const VectorAttentionKernel* vector_kernel(int64_t head_dim) {
#if MMSG_HAVE_VECTOR_ATTENTION
  if (head_dim != kVectorHeadDim) return nullptr;
  const char* choice = std::getenv("MMSGFORMER_CPU_ATTENTION");
  const bool avx2_only = choice && std::strcmp(choice, "avx2") == 0;
  if (!avx2_only && kAvx512AttentionKernel.supported()) return &kAvx512AttentionKernel;
  if (kAvx2AttentionKernel.supported()) return &kAvx2AttentionKernel;
#endif
  (void)head_dim;
  return nullptr;
}

const VectorAttentionKernel* vector_kernel(const at::Tensor& q) {
  return q.scalar_type() == at::kFloat ? vector_kernel(q.size(3)) : nullptr;
}

// The forward pass, every kernel: out, the log-sum-exp (B, H, Nq) (natural log, in q's dtype)
// and, with `mass`, the key mass.
at::Tensor forward(const AttentionInputs& in, at::Tensor& out, at::Tensor* mass) {
  const int64_t rows = in.q.size(0) * in.q.size(1) * in.q.size(2);
  at::Tensor lse = at::empty({in.q.size(0), in.q.size(1), in.q.size(2)}, in.q.options());
  if (mass && in.q.size(1) * in.q.size(2) == 0) mass->zero_();
  if (rows == 0) return lse;
  if (const VectorAttentionKernel* kernel = vector_kernel(in.q)) {
    std::vector<float> row_max(rows), row_inv_sum(rows);
    kernel->forward(in, out, row_max.data(), row_inv_sum.data(), mass);
    float* L = lse.data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r)  // (m - log2(1 / l)) * ln 2 = natural log-sum-exp
      L[r] = (row_max[r] - std::log2(row_inv_sum[r])) * 0.69314718055994531f;
    return lse;
  }
  AT_DISPATCH_FLOATING_TYPES(in.q.scalar_type(), "dot_product_attention_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> row_max(rows), row_inv_sum(rows);
    portable_kernel<scalar_t>(in, out, row_max.data(), row_inv_sum.data());
    if (mass) portable_key_mass<scalar_t>(in, row_max.data(), row_inv_sum.data(), *mass);
    scalar_t* L = lse.data_ptr<scalar_t>();
    for (int64_t r = 0; r < rows; ++r)
      L[r] = static_cast<scalar_t>(row_max[r] - std::log(row_inv_sum[r]));
  });
  return lse;
}

std::tuple<at::Tensor, at::Tensor> dot_product_attention_cpu(const at::Tensor& q,
                                                             const at::Tensor& k,
                                                             const at::Tensor& v, double scale) {
  const AttentionInputs in = prepare_attention(q, k, v, scale);
  at::Tensor out = new_attention_output(in.q);
  at::Tensor lse = forward(in, out, nullptr);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dot_product_attention_key_mass_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  const AttentionInputs in = prepare_attention(q, k, v, scale);
  at::Tensor out = new_attention_output(in.q);
  at::Tensor mass = at::empty({in.q.size(0), in.k.size(2)}, in.q.options());
  at::Tensor lse = forward(in, out, &mass);
  return {out, lse, mass};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dot_product_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, double scale) {
  const AttentionGradInputs in = prepare_attention_backward(grad_out, q, k, v, out, lse, scale);
  at::Tensor grad_q = new_attention_output(in.q);
  at::Tensor grad_k = at::empty_like(in.k, at::MemoryFormat::Contiguous);
  at::Tensor grad_v = at::empty_like(in.v, at::MemoryFormat::Contiguous);
  if (in.q.size(2) == 0) {  // no queries: nothing reaches the keys and values
    grad_k.zero_();
    grad_v.zero_();
    return {grad_q, grad_k, grad_v};
  }
  if (const VectorAttentionKernel* kernel = vector_kernel(in.q)) {
    kernel->backward(in, grad_q, grad_k, grad_v);
    return {grad_q, grad_k, grad_v};
  }
  AT_DISPATCH_FLOATING_TYPES(in.q.scalar_type(), "dot_product_attention_backward_cpu",
                             [&] { portable_backward<scalar_t>(in, grad_q, grad_k, grad_v); });
  return {grad_q, grad_k, grad_v};
}

}  // namespace

std::string attention_cpu_kernel(int64_t head_dim) {
  const VectorAttentionKernel* kernel = vector_kernel(head_dim);
  return kernel ? kernel->name : "portable";
}

TORCH_LIBRARY_IMPL(mmsgformer, CPU, m) {
  m.impl("dot_product_attention", &dot_product_attention_cpu);
  m.impl("dot_product_attention_key_mass", &dot_product_attention_key_mass_cpu);
  m.impl("dot_product_attention_backward", &dot_product_attention_backward_cpu);
}

}  // namespace mmsgformer
