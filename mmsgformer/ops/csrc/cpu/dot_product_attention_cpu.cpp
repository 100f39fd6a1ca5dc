// CPU kernels of mmsgformer::dot_product_attention and dot_product_attention_key_mass
// (docs/design.md §18; formulas in ../dot_product_attention.h).
//
// Portable kernel (any float dtype and head dimension): one work item per query row; it
// writes the row's scores, takes their maximum, exponentiates and sums them, and accumulates
// the value rows weighted by the probabilities, all in the accumulation type.
//
// AVX-512 kernel (float32, D = 32, CPUs with AVX-512F; chosen at run time): the keys of each
// (b, h) are first packed into panels of 16 keys (panel[d][16]), so a score tile is a register
// GEMM: for a tile of R <= 12 query rows and 32 keys, each of the 32 dimensions costs two
// panel loads and 2R fused multiply-adds into 2R accumulators. The keys are walked in chunks of
// kChunk; each chunk's R x kChunk scores stay in an L1 buffer, go through the online softmax
// (base-2 exponent: the queries are scaled by scale * log2(e)) and are multiplied into the
// R x 32 output tile (2R accumulators again). The key mass (dot_product_attention_key_mass)
// recomputes the score tiles in a second pass with each row's m_i and 1 / l_i and sums the
// probabilities over rows into per-thread key sums. Neither kernel ever holds an (Nq, Nk)
// matrix.
//
// Why: at D = 32 PyTorch's flash kernel spends one exponential per 32 multiply-adds and runs
// its score GEMMs through a general BLAS call; this kernel keeps every score tile in registers
// and needs no call per tile (SG-Former-S at 800x1344: 73 -> ~52 ms per stage-3 self-guided
// block, `tools/analysis_tools/benchmark.py --breakdown`).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../dot_product_attention.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MMSG_HAVE_AVX512_PATH 1
#include <immintrin.h>
#define MMSG_AVX512 __attribute__((target("avx512f")))
#else
#define MMSG_HAVE_AVX512_PATH 0
#endif

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

#if MMSG_HAVE_AVX512_PATH
// --------------------------------------------------------------------------- AVX-512 kernel

constexpr int kD = static_cast<int>(kVectorHeadDim);
constexpr int kPanel = 16;     // keys per packed panel (one zmm register)
constexpr int kChunk = 256;    // keys per online-softmax step (a multiple of 2 * kPanel)
constexpr int kTileRows = 12;  // query rows per register tile
constexpr int kTaskRows = 4 * kTileRows;  // query rows per parallel work item

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}

// Whether the AVX-512 kernels serve these (checked) inputs: float32, D = 32, AVX-512F present.
bool use_avx512(const at::Tensor& q) {
  return q.scalar_type() == at::kFloat && q.size(3) == kVectorHeadDim && cpu_has_avx512();
}

// 2^x for x <= 0 (to float32 rounding): 2^n * p(f) with n = round(x), f = x - n in
// [-0.5, 0.5] and p the degree-6 Taylor polynomial of exp(f ln 2) (relative error < 1e-7).
MMSG_AVX512 inline __m512 exp2_ps(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-127.f));
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(1.5403530393381606e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24022650695910071f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.69314718055994531f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// keys (Nk, kD) with row stride `ld` -> panels[Nk_padded / kPanel][kD][kPanel], zero padded.
void pack_keys(const float* keys, int64_t ld, int64_t Nk, int64_t Nk_padded, float* panels) {
  for (int64_t p = 0; p < Nk_padded / kPanel; ++p) {
    float* dst = panels + p * kD * kPanel;
    for (int t = 0; t < kPanel; ++t) {
      const int64_t j = p * kPanel + t;
      for (int d = 0; d < kD; ++d) dst[d * kPanel + t] = j < Nk ? keys[j * ld + d] : 0.f;
    }
  }
}

// scores[r][0 : 16 * num_panels] = <q[r], key> for R query rows (q: R x kD, contiguous).
template <int R>
MMSG_AVX512 void score_tile(const float* q, const float* panels, int num_panels,
                            float* scores) {
  for (int p = 0; p < num_panels; p += 2) {
    __m512 acc0[R], acc1[R];
    for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
    const float* k0 = panels + static_cast<int64_t>(p) * kD * kPanel;
    const float* k1 = k0 + kD * kPanel;
    for (int d = 0; d < kD; ++d) {
      const __m512 b0 = _mm512_loadu_ps(k0 + d * kPanel);
      const __m512 b1 = _mm512_loadu_ps(k1 + d * kPanel);
      for (int r = 0; r < R; ++r) {
        const __m512 a = _mm512_set1_ps(q[r * kD + d]);
        acc0[r] = _mm512_fmadd_ps(a, b0, acc0[r]);
        acc1[r] = _mm512_fmadd_ps(a, b1, acc1[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      _mm512_storeu_ps(scores + r * kChunk + p * kPanel, acc0[r]);
      _mm512_storeu_ps(scores + r * kChunk + (p + 1) * kPanel, acc1[r]);
    }
  }
}

// One row of a chunk's scores (base-2 logits) -> probabilities in place, unnormalized, with
// the running maximum `m` and sum `l` updated. Returns the factor exp2(m_old - m_new) that
// rescales what was accumulated before this chunk.
MMSG_AVX512 inline float softmax_step(float* s, int count, float& m, float& l) {
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const int full = count / kPanel * kPanel;
  const __mmask16 tail = static_cast<__mmask16>((1u << (count - full)) - 1u);
  __m512 mx = neg_inf;
  for (int j = 0; j < full; j += kPanel) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j));
  if (tail) mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(neg_inf, tail, s + full));
  const float m_new = std::max(m, _mm512_reduce_max_ps(mx));
  const float rescale = std::exp2(m - m_new);
  const __m512 mv = _mm512_set1_ps(m_new);
  __m512 sum = _mm512_setzero_ps();
  for (int j = 0; j < full; j += kPanel) {
    const __m512 p = exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j), mv));
    _mm512_storeu_ps(s + j, p);
    sum = _mm512_add_ps(sum, p);
  }
  if (tail) {
    const __m512 p = exp2_ps(_mm512_sub_ps(_mm512_mask_loadu_ps(neg_inf, tail, s + full), mv));
    _mm512_mask_storeu_ps(s + full, tail, p);
    sum = _mm512_add_ps(sum, p);
  }
  l = l * rescale + _mm512_reduce_add_ps(sum);
  m = m_new;
  return rescale;
}

// acc[r] = rescale[r] * acc[r] + sum_{j < count} probs[r][j] * v[j]   (acc: R x kD).
template <int R>
MMSG_AVX512 void value_tile(const float* probs, const float* v, int64_t ld, int count,
                            const float* rescale, float* acc) {
  __m512 o0[R], o1[R];
  for (int r = 0; r < R; ++r) {
    const __m512 c = _mm512_set1_ps(rescale[r]);
    o0[r] = _mm512_mul_ps(c, _mm512_loadu_ps(acc + r * kD));
    o1[r] = _mm512_mul_ps(c, _mm512_loadu_ps(acc + r * kD + 16));
  }
  for (int j = 0; j < count; ++j) {
    const __m512 v0 = _mm512_loadu_ps(v + j * ld);
    const __m512 v1 = _mm512_loadu_ps(v + j * ld + 16);
    for (int r = 0; r < R; ++r) {
      const __m512 p = _mm512_set1_ps(probs[r * kChunk + j]);
      o0[r] = _mm512_fmadd_ps(p, v0, o0[r]);
      o1[r] = _mm512_fmadd_ps(p, v1, o1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(acc + r * kD, o0[r]);
    _mm512_storeu_ps(acc + r * kD + 16, o1[r]);
  }
}

struct RowTile {
  const float* q;       // first query row; rows `ldq` apart
  int64_t ldq;
  const float* panels;  // this (b, h)'s packed keys
  const float* v;       // first value row; rows `ldv` apart
  int64_t ldv;
  int64_t Nk;
  float q_scale;        // scale * log2(e)
  float* out;           // first output row; rows `ldo` apart
  int64_t ldo;
  float* scores;        // kTileRows x kChunk scratch
  float* row_max;       // where the rows' m_i (base 2) go
  float* row_inv_sum;   // where the rows' 1 / l_i go
};

template <int R>
MMSG_AVX512 void row_tile(const RowTile& t) {
  alignas(64) float q[R * kD];
  alignas(64) float acc[R * kD];
  float m[R], l[R], rescale[R];
  for (int r = 0; r < R; ++r) {
    for (int d = 0; d < kD; ++d) q[r * kD + d] = t.q[r * t.ldq + d] * t.q_scale;
    for (int d = 0; d < kD; ++d) acc[r * kD + d] = 0.f;
    m[r] = -std::numeric_limits<float>::infinity();
    l[r] = 0.f;
  }
  for (int64_t j0 = 0; j0 < t.Nk; j0 += kChunk) {
    const int count = static_cast<int>(std::min<int64_t>(kChunk, t.Nk - j0));
    const int num_panels = (count + 2 * kPanel - 1) / (2 * kPanel) * 2;
    score_tile<R>(q, t.panels + j0 * kD, num_panels, t.scores);
    for (int r = 0; r < R; ++r) rescale[r] = softmax_step(t.scores + r * kChunk, count, m[r], l[r]);
    value_tile<R>(t.scores, t.v + j0 * t.ldv, t.ldv, count, rescale, acc);
  }
  for (int r = 0; r < R; ++r) {
    const float inv = 1.f / l[r];
    for (int d = 0; d < kD; ++d) t.out[r * t.ldo + d] = acc[r * kD + d] * inv;
    t.row_max[r] = m[r];
    t.row_inv_sum[r] = inv;
  }
}

// colsum[0 : 16 * num_panels] += sum_r exp2(<q[r], key> - m[r]) * inv_l[r]: the probabilities
// of R query rows for one chunk of keys, summed over the rows (q scaled like row_tile's,
// `scores` R x kChunk scratch).
template <int R>
MMSG_AVX512 void mass_tile(const float* q, const float* panels, int num_panels, const float* m,
                           const float* inv_l, float* scores, float* colsum) {
  score_tile<R>(q, panels, num_panels, scores);
  for (int r = 0; r < R; ++r) {
    const __m512 mr = _mm512_set1_ps(m[r]), wr = _mm512_set1_ps(inv_l[r]);
    const float* s = scores + r * kChunk;
    for (int j = 0; j < num_panels * kPanel; j += kPanel) {
      const __m512 p = exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j), mr));
      _mm512_storeu_ps(colsum + j, _mm512_fmadd_ps(p, wr, _mm512_loadu_ps(colsum + j)));
    }
  }
}

using MassTileFn = void (*)(const float*, const float*, int, const float*, const float*, float*,
                            float*);

template <int... Rs>
constexpr std::array<MassTileFn, sizeof...(Rs) + 1> mass_tiles(
    std::integer_sequence<int, Rs...>) {
  return {nullptr, &mass_tile<Rs + 1>...};
}

using RowTileFn = void (*)(const RowTile&);

template <int... Rs>
constexpr std::array<RowTileFn, sizeof...(Rs) + 1> row_tiles(std::integer_sequence<int, Rs...>) {
  return {nullptr, &row_tile<Rs + 1>...};
}

// With `mass` (B, Nk): also mass[b, j] = sum_{h, i} P_hij / (H * Nq), from a second pass that
// recomputes the score tiles with the rows' m_i and 1 / l_i of the first. Its work items are
// those of the first pass (48 query rows of one head, against all keys); each sums its rows'
// probabilities in float32 and adds them to its thread's float64 row of key sums, which are
// added up at the end (no two threads write the same memory).
// The rows' m_i (base 2) and 1 / l_i go to `row_max`, `row_inv_sum` (B * H * Nq each).
void avx512_kernel(const AttentionInputs& in, at::Tensor& out, float* row_max, float* row_inv_sum,
                   at::Tensor* mass = nullptr) {
  const at::Tensor &q = in.q, &k = in.k, &v = in.v;
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), Nk = k.size(2);
  if (B * H * Nq == 0) return;
  const int64_t Nk_padded = (Nk + 2 * kPanel - 1) / (2 * kPanel) * (2 * kPanel);
  at::Tensor panels = at::empty({B * H, Nk_padded * kD}, q.options());
  float* pd = panels.data_ptr<float>();
  const float* kd = k.data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / H, h = i - b * H;
      pack_keys(kd + b * k.stride(0) + h * k.stride(1), k.stride(2), Nk, Nk_padded,
                pd + i * Nk_padded * kD);
    }
  });

  static constexpr auto tiles = row_tiles(std::make_integer_sequence<int, kTileRows>{});
  const float q_scale = static_cast<float>(in.scale * 1.4426950408889634);  // log2(e)
  const int64_t tasks_per_head = (Nq + kTaskRows - 1) / kTaskRows;
  const float* qd = q.data_ptr<float>();
  const float* vd = v.data_ptr<float>();
  float* od = out.data_ptr<float>();
  at::parallel_for(0, B * H * tasks_per_head, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> scores(kTileRows * kChunk);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t i = task / tasks_per_head, b = i / H, h = i - b * H;
      const int64_t first = (task - i * tasks_per_head) * kTaskRows;
      const int64_t last = std::min(Nq, first + kTaskRows);
      for (int64_t r = first; r < last; r += kTileRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kTileRows, last - r));
        const RowTile tile{qd + b * q.stride(0) + h * q.stride(1) + r * q.stride(2),
                           q.stride(2),
                           pd + i * Nk_padded * kD,
                           vd + b * v.stride(0) + h * v.stride(1),
                           v.stride(2),
                           Nk,
                           q_scale,
                           od + b * out.stride(0) + h * out.stride(1) + r * out.stride(2),
                           out.stride(2),
                           scores.data(),
                           row_max + i * Nq + r,
                           row_inv_sum + i * Nq + r};
        tiles[rows](tile);
      }
    }
  });
  if (!mass) return;

  static constexpr auto mass_fns = mass_tiles(std::make_integer_sequence<int, kTileRows>{});
  const int num_threads = at::get_num_threads();
  std::vector<double> key_sums(static_cast<size_t>(num_threads) * B * Nk, 0.0);
  at::parallel_for(0, B * H * tasks_per_head, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> scores(kTileRows * kChunk), task_sums(Nk_padded);
    double* sums = key_sums.data() + static_cast<size_t>(at::get_thread_num()) * B * Nk;
    alignas(64) float qs[kTileRows * kD];
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t i = task / tasks_per_head, b = i / H, h = i - b * H;
      const int64_t first = (task - i * tasks_per_head) * kTaskRows;
      const int64_t last = std::min(Nq, first + kTaskRows);
      const float* qh = qd + b * q.stride(0) + h * q.stride(1);
      std::fill(task_sums.begin(), task_sums.end(), 0.f);
      for (int64_t r = first; r < last; r += kTileRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kTileRows, last - r));
        for (int t = 0; t < rows; ++t)
          for (int d = 0; d < kD; ++d) qs[t * kD + d] = qh[(r + t) * q.stride(2) + d] * q_scale;
        for (int64_t j0 = 0; j0 < Nk; j0 += kChunk) {
          const int count = static_cast<int>(std::min<int64_t>(kChunk, Nk - j0));
          const int num_panels = (count + 2 * kPanel - 1) / (2 * kPanel) * 2;
          mass_fns[rows](qs, pd + i * Nk_padded * kD + j0 * kD, num_panels,
                         row_max + i * Nq + r, row_inv_sum + i * Nq + r, scores.data(),
                         task_sums.data() + j0);
        }
      }
      for (int64_t j = 0; j < Nk; ++j) sums[b * Nk + j] += task_sums[j];
    }
  });
  const double norm = 1.0 / static_cast<double>(H * Nq);
  float* md = mass->data_ptr<float>();
  for (int64_t c = 0; c < B * Nk; ++c) {
    double total = 0.0;
    for (int t = 0; t < num_threads; ++t) total += key_sums[static_cast<size_t>(t) * B * Nk + c];
    md[c] = static_cast<float>(total * norm);
  }
}

// ------------------------------------------------------------------ AVX-512 backward kernel

// acc[j] += sum_r coef[r][j] * rows[r] for j < count (acc: count x kD; rows: R x kD; coef: R
// rows of a kChunk scratch). The R rows stay in 2R registers while the keys stream by.
template <int R>
MMSG_AVX512 void outer_tile(const float* coef, const float* rows, int count, float* acc) {
  __m512 r0[R], r1[R];
  for (int r = 0; r < R; ++r) {
    r0[r] = _mm512_loadu_ps(rows + r * kD);
    r1[r] = _mm512_loadu_ps(rows + r * kD + 16);
  }
  for (int j = 0; j < count; ++j) {
    __m512 a0 = _mm512_loadu_ps(acc + j * kD), a1 = _mm512_loadu_ps(acc + j * kD + 16);
    for (int r = 0; r < R; ++r) {
      const __m512 c = _mm512_set1_ps(coef[r * kChunk + j]);
      a0 = _mm512_fmadd_ps(c, r0[r], a0);
      a1 = _mm512_fmadd_ps(c, r1[r], a1);
    }
    _mm512_storeu_ps(acc + j * kD, a0);
    _mm512_storeu_ps(acc + j * kD + 16, a1);
  }
}

// One chunk of a row's scores and value products (both base-2 logits / plain products) ->
// probabilities P = exp2(s - L) in `s`, score gradients P * (dp - delta) in `dp`.
MMSG_AVX512 inline void grad_step(float* s, float* dp, int width, float L, float delta) {
  const __m512 lv = _mm512_set1_ps(L), dv = _mm512_set1_ps(delta);
  for (int j = 0; j < width; j += kPanel) {
    const __m512 p = exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j), lv));
    _mm512_storeu_ps(s + j, p);
    _mm512_storeu_ps(dp + j, _mm512_mul_ps(p, _mm512_sub_ps(_mm512_loadu_ps(dp + j), dv)));
  }
}

struct GradTile {
  const float* qs;       // R x kD queries * scale * log2(e)
  const float* q;        // R x kD queries
  const float* g;        // R x kD output gradients
  const float* L;        // R log-sum-exps, base 2
  const float* delta;    // R values <dout_i, out_i>
  const float* kpanels;  // this head's packed keys
  const float* vpanels;  // this head's packed values
  const float* k;        // first key row; rows `ldk` apart
  int64_t ldk;
  int64_t Nk;
  float* dq;             // R x kD accumulator
  float* dk;             // Nk_padded x kD accumulator (unscaled)
  float* dv;             // Nk_padded x kD accumulator
  float* s;              // kTileRows x kChunk scratch
  float* dp;             // kTileRows x kChunk scratch
};

template <int R>
MMSG_AVX512 void grad_tile(const GradTile& t) {
  float one[R];  // value_tile's rescale factors
  for (int r = 0; r < R; ++r) one[r] = 1.f;
  for (int64_t j0 = 0; j0 < t.Nk; j0 += kChunk) {
    const int count = static_cast<int>(std::min<int64_t>(kChunk, t.Nk - j0));
    const int num_panels = (count + 2 * kPanel - 1) / (2 * kPanel) * 2;
    score_tile<R>(t.qs, t.kpanels + j0 * kD, num_panels, t.s);
    score_tile<R>(t.g, t.vpanels + j0 * kD, num_panels, t.dp);
    for (int r = 0; r < R; ++r)
      grad_step(t.s + r * kChunk, t.dp + r * kChunk, num_panels * kPanel, t.L[r], t.delta[r]);
    outer_tile<R>(t.s, t.g, count, t.dv + j0 * kD);
    outer_tile<R>(t.dp, t.q, count, t.dk + j0 * kD);
    value_tile<R>(t.dp, t.k + j0 * t.ldk, t.ldk, count, one, t.dq);
  }
}

using GradTileFn = void (*)(const GradTile&);

template <int... Rs>
constexpr std::array<GradTileFn, sizeof...(Rs) + 1> grad_tiles(std::integer_sequence<int, Rs...>) {
  return {nullptr, &grad_tile<Rs + 1>...};
}

// One work item per (b, h): its keys and values packed once, its query rows in tiles of 12,
// each against all keys in chunks (recomputing the scores from the log-sum-exp), its key and
// value gradients accumulated in the item's own buffers (no two items write the same memory).
void avx512_backward(const AttentionGradInputs& in, at::Tensor& grad_q, at::Tensor& grad_k,
                     at::Tensor& grad_v) {
  const at::Tensor &q = in.q, &k = in.k, &v = in.v, &o = in.out, &g = in.grad_out;
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), Nk = k.size(2);
  const int64_t Nk_padded = (Nk + 2 * kPanel - 1) / (2 * kPanel) * (2 * kPanel);
  const float scale = static_cast<float>(in.scale);
  const float q_scale = static_cast<float>(in.scale * 1.4426950408889634);  // log2(e)
  const float log2e = 1.4426950408889634f;
  static constexpr auto tiles = grad_tiles(std::make_integer_sequence<int, kTileRows>{});
  const float *qd = q.data_ptr<float>(), *kd = k.data_ptr<float>(), *vd = v.data_ptr<float>();
  const float *od = o.data_ptr<float>(), *gd = g.data_ptr<float>();
  const float* lse = in.lse.data_ptr<float>();
  float *dqd = grad_q.data_ptr<float>(), *dkd = grad_k.data_ptr<float>();
  float* dvd = grad_v.data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> kp(Nk_padded * kD), vp(Nk_padded * kD), dk(Nk_padded * kD),
        dv(Nk_padded * kD), s(kTileRows * kChunk), dp(kTileRows * kChunk);
    alignas(64) float qs[kTileRows * kD], qr[kTileRows * kD], gr[kTileRows * kD];
    alignas(64) float dq[kTileRows * kD];
    float L[kTileRows], delta[kTileRows];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / H, h = i - b * H;
      const float* kb = kd + b * k.stride(0) + h * k.stride(1);
      pack_keys(kb, k.stride(2), Nk, Nk_padded, kp.data());
      pack_keys(vd + b * v.stride(0) + h * v.stride(1), v.stride(2), Nk, Nk_padded, vp.data());
      std::fill(dk.begin(), dk.end(), 0.f);
      std::fill(dv.begin(), dv.end(), 0.f);
      for (int64_t r0 = 0; r0 < Nq; r0 += kTileRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kTileRows, Nq - r0));
        for (int t = 0; t < rows; ++t) {
          const int64_t r = r0 + t;
          const float* qi = qd + b * q.stride(0) + h * q.stride(1) + r * q.stride(2);
          const float* oi = od + b * o.stride(0) + h * o.stride(1) + r * o.stride(2);
          const float* gi = gd + b * g.stride(0) + h * g.stride(1) + r * g.stride(2);
          float dot = 0.f;
          for (int d = 0; d < kD; ++d) {
            qr[t * kD + d] = qi[d];
            qs[t * kD + d] = qi[d] * q_scale;
            gr[t * kD + d] = gi[d];
            dq[t * kD + d] = 0.f;
            dot += gi[d] * oi[d];
          }
          delta[t] = dot;
          L[t] = lse[i * Nq + r] * log2e;
        }
        const GradTile tile{qs, qr, gr, L, delta, kp.data(), vp.data(), kb, k.stride(2), Nk,
                            dq, dk.data(), dv.data(), s.data(), dp.data()};
        tiles[rows](tile);
        for (int t = 0; t < rows; ++t) {
          float* dqi = dqd + b * grad_q.stride(0) + h * grad_q.stride(1) +
                       (r0 + t) * grad_q.stride(2);
          for (int d = 0; d < kD; ++d) dqi[d] = dq[t * kD + d] * scale;
        }
      }
      for (int64_t j = 0; j < Nk; ++j) {
        float* dkj = dkd + b * grad_k.stride(0) + h * grad_k.stride(1) + j * grad_k.stride(2);
        float* dvj = dvd + b * grad_v.stride(0) + h * grad_v.stride(1) + j * grad_v.stride(2);
        for (int d = 0; d < kD; ++d) {
          dkj[d] = dk[j * kD + d] * scale;
          dvj[d] = dv[j * kD + d];
        }
      }
    }
  });
}
#endif  // MMSG_HAVE_AVX512_PATH

// The forward pass, both kernels: out, the log-sum-exp (B, H, Nq) (natural log, in q's dtype)
// and, with `mass`, the key mass.
at::Tensor forward(const AttentionInputs& in, at::Tensor& out, at::Tensor* mass) {
  const int64_t rows = in.q.size(0) * in.q.size(1) * in.q.size(2);
  at::Tensor lse = at::empty({in.q.size(0), in.q.size(1), in.q.size(2)}, in.q.options());
  if (mass && in.q.size(1) * in.q.size(2) == 0) mass->zero_();
  if (rows == 0) return lse;
#if MMSG_HAVE_AVX512_PATH
  if (use_avx512(in.q)) {
    std::vector<float> row_max(rows), row_inv_sum(rows);
    avx512_kernel(in, out, row_max.data(), row_inv_sum.data(), mass);
    float* L = lse.data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r)  // (m - log2(1 / l)) * ln 2 = natural log-sum-exp
      L[r] = (row_max[r] - std::log2(row_inv_sum[r])) * 0.69314718055994531f;
    return lse;
  }
#endif
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
#if MMSG_HAVE_AVX512_PATH
  if (use_avx512(in.q)) {
    avx512_backward(in, grad_q, grad_k, grad_v);
    return {grad_q, grad_k, grad_v};
  }
#endif
  AT_DISPATCH_FLOATING_TYPES(in.q.scalar_type(), "dot_product_attention_backward_cpu",
                             [&] { portable_backward<scalar_t>(in, grad_q, grad_k, grad_v); });
  return {grad_q, grad_k, grad_v};
}

}  // namespace

std::string attention_cpu_kernel(int64_t head_dim) {
#if MMSG_HAVE_AVX512_PATH
  if (head_dim == kVectorHeadDim && cpu_has_avx512()) return "avx512";
#endif
  (void)head_dim;
  return "portable";
}

TORCH_LIBRARY_IMPL(mmsgformer, CPU, m) {
  m.impl("dot_product_attention", &dot_product_attention_cpu);
  m.impl("dot_product_attention_key_mass", &dot_product_attention_key_mass_cpu);
  m.impl("dot_product_attention_backward", &dot_product_attention_backward_cpu);
}

}  // namespace mmsgformer
