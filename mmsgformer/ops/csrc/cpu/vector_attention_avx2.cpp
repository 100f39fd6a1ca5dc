// The attention ops' vector kernels for AVX2 + FMA (cpu/vector_attention.h): 8-lane vectors,
// 6-row register tiles (12 accumulators, two panel loads and a broadcast of 16 registers).
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
namespace avx2_attention {

#define MMSG_TARGET __attribute__((target("avx2,fma")))

using vec = __m256;
constexpr int kLanes = 8;
constexpr int kTileRows = 6;

MMSG_TARGET inline vec vzero() { return _mm256_setzero_ps(); }
MMSG_TARGET inline vec vset1(float x) { return _mm256_set1_ps(x); }
MMSG_TARGET inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
MMSG_TARGET inline void vstore(float* p, vec x) { _mm256_storeu_ps(p, x); }
MMSG_TARGET inline vec vadd(vec a, vec b) { return _mm256_add_ps(a, b); }
MMSG_TARGET inline vec vsub(vec a, vec b) { return _mm256_sub_ps(a, b); }
MMSG_TARGET inline vec vmul(vec a, vec b) { return _mm256_mul_ps(a, b); }
MMSG_TARGET inline vec vmax(vec a, vec b) { return _mm256_max_ps(a, b); }
MMSG_TARGET inline vec vfmadd(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
MMSG_TARGET inline float vreduce_max(vec x) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}
MMSG_TARGET inline float vreduce_add(vec x) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
MMSG_TARGET inline vec vkeep_first(vec x, int n, vec fill) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane);
  return _mm256_blendv_ps(fill, x, _mm256_castsi256_ps(keep));
}

MMSG_TARGET inline vec vround(vec x) {
  return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
// 2^n built in the exponent field (n = -127 gives the field 0: the result 0).
MMSG_TARGET inline vec vscale(vec p, vec n) {
  const __m256i field =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(field));
}

#include "vector_attention_kernels.h"

#undef MMSG_TARGET

bool supported() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

}  // namespace avx2_attention

const VectorAttentionKernel kAvx2AttentionKernel{"avx2", &avx2_attention::supported,
                                                 &avx2_attention::forward,
                                                 &avx2_attention::backward};

}  // namespace mmsgformer
#endif  // MMSG_HAVE_VECTOR_ATTENTION
