// The vector kernels of the attention ops (float32, head dimension kVectorHeadDim), one per
// instruction set: avx512 (cpu/vector_attention_avx512.cpp) and avx2 (AVX2 + FMA,
// cpu/vector_attention_avx2.cpp). Both are the same code (cpu/vector_attention_kernels.h)
// written against a few vector operations that each file defines; each is compiled with a
// per-function target attribute, so the library loads on any x86-64 and
// cpu/dot_product_attention_cpu.cpp picks one at run time. design §18 describes them.
#pragma once

#include <ATen/core/Tensor.h>

#include "../dot_product_attention.h"

namespace mmsgformer {

// One instruction set's kernels. `forward` writes out and, per query row, m_i (base 2) and
// 1 / l_i (B * H * Nq floats each), and with `mass` the key mass; `backward` writes the three
// gradients (inputs as checked by prepare_attention / prepare_attention_backward, float32,
// D = kVectorHeadDim).
struct VectorAttentionKernel {
  const char* name;
  bool (*supported)();  // whether this CPU has the instruction set
  void (*forward)(const AttentionInputs& in, at::Tensor& out, float* row_max, float* row_inv_sum,
                  at::Tensor* mass);
  void (*backward)(const AttentionGradInputs& in, at::Tensor& grad_q, at::Tensor& grad_k,
                   at::Tensor& grad_v);
};

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MMSG_HAVE_VECTOR_ATTENTION 1
extern const VectorAttentionKernel kAvx512AttentionKernel;
extern const VectorAttentionKernel kAvx2AttentionKernel;
#else
#define MMSG_HAVE_VECTOR_ATTENTION 0
#endif

}  // namespace mmsgformer
