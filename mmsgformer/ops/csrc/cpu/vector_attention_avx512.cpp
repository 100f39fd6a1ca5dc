// The attention ops' vector kernels for AVX-512F (cpu/vector_attention.h): 16-lane vectors,
// 12-row register tiles (24 accumulators, two panel loads and a broadcast of 32 registers).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "vector_attention.h"

#if MMSG_HAVE_VECTOR_ATTENTION
#include <immintrin.h>

namespace mmsgformer {
namespace avx512_attention {

#define MMSG_TARGET __attribute__((target("avx512f")))

using vec = __m512;
constexpr int kLanes = 16;
constexpr int kTileRows = 12;

MMSG_TARGET inline vec vzero() { return _mm512_setzero_ps(); }
MMSG_TARGET inline vec vset1(float x) { return _mm512_set1_ps(x); }
MMSG_TARGET inline vec vload(const float* p) { return _mm512_loadu_ps(p); }
MMSG_TARGET inline void vstore(float* p, vec x) { _mm512_storeu_ps(p, x); }
MMSG_TARGET inline vec vadd(vec a, vec b) { return _mm512_add_ps(a, b); }
MMSG_TARGET inline vec vsub(vec a, vec b) { return _mm512_sub_ps(a, b); }
MMSG_TARGET inline vec vmul(vec a, vec b) { return _mm512_mul_ps(a, b); }
MMSG_TARGET inline vec vmax(vec a, vec b) { return _mm512_max_ps(a, b); }
MMSG_TARGET inline vec vfmadd(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
MMSG_TARGET inline float vreduce_max(vec x) { return _mm512_reduce_max_ps(x); }
MMSG_TARGET inline float vreduce_add(vec x) { return _mm512_reduce_add_ps(x); }
MMSG_TARGET inline vec vkeep_first(vec x, int n, vec fill) {
  return _mm512_mask_blend_ps(static_cast<__mmask16>((1u << n) - 1u), fill, x);
}

MMSG_TARGET inline vec vround(vec x) {
  return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
MMSG_TARGET inline vec vscale(vec p, vec n) { return _mm512_scalef_ps(p, n); }

#include "vector_attention_kernels.h"

#undef MMSG_TARGET

bool supported() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}

}  // namespace avx512_attention

const VectorAttentionKernel kAvx512AttentionKernel{"avx512", &avx512_attention::supported,
                                                   &avx512_attention::forward,
                                                   &avx512_attention::backward};

}  // namespace mmsgformer
#endif  // MMSG_HAVE_VECTOR_ATTENTION
