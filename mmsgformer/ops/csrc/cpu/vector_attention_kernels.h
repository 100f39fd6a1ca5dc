// The vector kernels of the attention ops, for one instruction set. Not a header to include
// anywhere else: cpu/vector_attention_avx512.cpp and cpu/vector_attention_avx2.cpp include it
// inside their own namespace, after the standard and ATen headers, once they have defined
//
//   MMSG_TARGET                      the target attribute of every vector function
//   vec, kLanes                      the float vector type and its width
//   kTileRows                        query rows per register tile (2 * kTileRows + 3 <= registers)
//   vzero() vset1(x) vload(p) vstore(p, x) vadd vsub vmul vmax vfmadd(a, b, c) = a * b + c
//   vround(x)                        x rounded to the nearest integer (ties to even)
//   vscale(p, n)                     p * 2^n for integer-valued n in [-127, 0]
//   vreduce_max(x) vreduce_add(x)    over the lanes
//   vkeep_first(x, n, fill)          x with the lanes from n on replaced by fill
//
// The layout (design §18): the keys (and, for the backward, the values) of each (b, h) are packed
// into panels of kLanes keys (panel[d][kLanes]), so that a score tile of R query rows and two
// panels is a register GEMM: per dimension, two panel loads and 2R fused multiply-adds into 2R
// accumulators. Keys are walked in chunks of kChunk; each chunk's R x kChunk scores stay in an L1
// buffer, go through the online softmax (base-2: the queries are scaled by scale * log2(e)) and
// are multiplied into the R x kD output tile, kGroupCols output columns (2R accumulators) at a
// time. Nothing of size Nq x Nk is ever held.

constexpr int kD = static_cast<int>(kVectorHeadDim);
constexpr int kPanel = kLanes;            // keys per packed panel (one register)
constexpr int kChunk = 256;               // keys per online-softmax step (a multiple of 2 * kPanel)
constexpr int kTaskRows = 4 * kTileRows;  // query rows per parallel work item of the forward
constexpr int kGroupCols = 2 * kLanes;    // output columns per pass of value_tile / outer_tile
static_assert(kChunk % (2 * kPanel) == 0 && kD % kGroupCols == 0, "tile sizes");

// 2^x for x <= 0, to float32 rounding (x below -127 counts as -127): 2^n * p(f) with n = round(x),
// f = x - n in [-0.5, 0.5] and p the degree-6 Taylor polynomial of exp(f ln 2) (relative error
// < 1e-7).
MMSG_TARGET inline vec vexp2(vec x) {
  x = vmax(x, vset1(-127.f));
  const vec n = vround(x);
  const vec f = vsub(x, n);
  vec p = vset1(1.5403530393381606e-4f);
  p = vfmadd(p, f, vset1(1.3333558146428443e-3f));
  p = vfmadd(p, f, vset1(9.6181291076284772e-3f));
  p = vfmadd(p, f, vset1(5.5504108664821580e-2f));
  p = vfmadd(p, f, vset1(0.24022650695910071f));
  p = vfmadd(p, f, vset1(0.69314718055994531f));
  p = vfmadd(p, f, vset1(1.f));
  return vscale(p, n);
}

// Keys padded to whole pairs of panels.
inline int64_t padded_keys(int64_t Nk) {
  return (Nk + 2 * kPanel - 1) / (2 * kPanel) * (2 * kPanel);
}

// keys (Nk, kD) with row stride `ld` -> panels[Nk_padded / kPanel][kD][kPanel], zero padded.
inline void pack_keys(const float* keys, int64_t ld, int64_t Nk, int64_t Nk_padded, float* panels) {
  for (int64_t p = 0; p < Nk_padded / kPanel; ++p) {
    float* dst = panels + p * kD * kPanel;
    for (int t = 0; t < kPanel; ++t) {
      const int64_t j = p * kPanel + t;
      for (int d = 0; d < kD; ++d) dst[d * kPanel + t] = j < Nk ? keys[j * ld + d] : 0.f;
    }
  }
}

// scores[r][0 : kPanel * num_panels] = <q[r], key> for R query rows (q: R x kD, contiguous;
// num_panels even).
template <int R>
MMSG_TARGET void score_tile(const float* q, const float* panels, int num_panels, float* scores) {
  for (int p = 0; p < num_panels; p += 2) {
    vec acc0[R], acc1[R];
    for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = vzero();
    const float* k0 = panels + static_cast<int64_t>(p) * kD * kPanel;
    const float* k1 = k0 + kD * kPanel;
    for (int d = 0; d < kD; ++d) {
      const vec b0 = vload(k0 + d * kPanel);
      const vec b1 = vload(k1 + d * kPanel);
      for (int r = 0; r < R; ++r) {
        const vec a = vset1(q[r * kD + d]);
        acc0[r] = vfmadd(a, b0, acc0[r]);
        acc1[r] = vfmadd(a, b1, acc1[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      vstore(scores + r * kChunk + p * kPanel, acc0[r]);
      vstore(scores + r * kChunk + (p + 1) * kPanel, acc1[r]);
    }
  }
}

// One row of a chunk's scores (base-2 logits; `count` valid, the row padded to whole panels)
// -> probabilities in place, unnormalized, with the running maximum `m` and sum `l` updated.
// Returns the factor exp2(m_old - m_new) that rescales what was accumulated before this chunk.
MMSG_TARGET inline float softmax_step(float* s, int count, float& m, float& l) {
  const vec neg_inf = vset1(-std::numeric_limits<float>::infinity());
  const int full = count / kPanel * kPanel, tail = count - full;
  vec mx = neg_inf;
  for (int j = 0; j < full; j += kPanel) mx = vmax(mx, vload(s + j));
  if (tail) mx = vmax(mx, vkeep_first(vload(s + full), tail, neg_inf));
  const float m_new = std::max(m, vreduce_max(mx));
  const float rescale = std::exp2(m - m_new);
  const vec mv = vset1(m_new);
  vec sum = vzero();
  for (int j = 0; j < full; j += kPanel) {
    const vec p = vexp2(vsub(vload(s + j), mv));
    vstore(s + j, p);
    sum = vadd(sum, p);
  }
  if (tail) {  // the padded lanes' logits are -inf: probability <= 2^-127, nothing next to l >= 1
    const vec p = vexp2(vsub(vkeep_first(vload(s + full), tail, neg_inf), mv));
    vstore(s + full, p);
    sum = vadd(sum, p);
  }
  l = l * rescale + vreduce_add(sum);
  m = m_new;
  return rescale;
}

// acc[r] = rescale[r] * acc[r] + sum_{j < count} probs[r][j] * v[j]   (acc: R x kD).
template <int R>
MMSG_TARGET void value_tile(const float* probs, const float* v, int64_t ld, int count,
                            const float* rescale, float* acc) {
  for (int c = 0; c < kD; c += kGroupCols) {
    vec o0[R], o1[R];
    for (int r = 0; r < R; ++r) {
      const vec f = vset1(rescale[r]);
      o0[r] = vmul(f, vload(acc + r * kD + c));
      o1[r] = vmul(f, vload(acc + r * kD + c + kLanes));
    }
    for (int j = 0; j < count; ++j) {
      const vec v0 = vload(v + j * ld + c);
      const vec v1 = vload(v + j * ld + c + kLanes);
      for (int r = 0; r < R; ++r) {
        const vec p = vset1(probs[r * kChunk + j]);
        o0[r] = vfmadd(p, v0, o0[r]);
        o1[r] = vfmadd(p, v1, o1[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      vstore(acc + r * kD + c, o0[r]);
      vstore(acc + r * kD + c + kLanes, o1[r]);
    }
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
MMSG_TARGET void row_tile(const RowTile& t) {
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

// colsum[0 : kPanel * num_panels] += sum_r exp2(<q[r], key> - m[r]) * inv_l[r]: the
// probabilities of R query rows for one chunk of keys, summed over the rows (q scaled like
// row_tile's, `scores` R x kChunk scratch; the padded keys' sums are not used).
template <int R>
MMSG_TARGET void mass_tile(const float* q, const float* panels, int num_panels, const float* m,
                           const float* inv_l, float* scores, float* colsum) {
  score_tile<R>(q, panels, num_panels, scores);
  for (int r = 0; r < R; ++r) {
    const vec mr = vset1(m[r]), wr = vset1(inv_l[r]);
    const float* s = scores + r * kChunk;
    for (int j = 0; j < num_panels * kPanel; j += kPanel) {
      const vec p = vexp2(vsub(vload(s + j), mr));
      vstore(colsum + j, vfmadd(p, wr, vload(colsum + j)));
    }
  }
}

using RowTileFn = void (*)(const RowTile&);
using MassTileFn = void (*)(const float*, const float*, int, const float*, const float*, float*,
                            float*);

template <int... Rs>
constexpr std::array<RowTileFn, sizeof...(Rs) + 1> row_tiles(std::integer_sequence<int, Rs...>) {
  return {nullptr, &row_tile<Rs + 1>...};
}

template <int... Rs>
constexpr std::array<MassTileFn, sizeof...(Rs) + 1> mass_tiles(
    std::integer_sequence<int, Rs...>) {
  return {nullptr, &mass_tile<Rs + 1>...};
}

// The forward. Work items are kTaskRows query rows of one head, against all keys. With `mass`
// (B, Nk): also mass[b, j] = sum_{h, i} P_hij / (H * Nq), from a second pass over the same work
// items that recomputes the score tiles with the rows' m_i and 1 / l_i of the first; each item
// sums its rows' probabilities in float32 and adds them to its thread's float64 row of key sums,
// added up in a fixed order at the end (no two threads write the same memory).
void forward(const AttentionInputs& in, at::Tensor& out, float* row_max, float* row_inv_sum,
             at::Tensor* mass) {
  const at::Tensor &q = in.q, &k = in.k, &v = in.v;
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), Nk = k.size(2);
  if (B * H * Nq == 0) return;
  const int64_t Nk_padded = padded_keys(Nk);
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

// ------------------------------------------------------------------------------ backward

// acc[j] += sum_r coef[r][j] * rows[r] for j < count (acc: count x kD; rows: R x kD; coef: R
// rows of a kChunk scratch). kGroupCols columns of the R rows stay in 2R registers while the
// keys stream by.
template <int R>
MMSG_TARGET void outer_tile(const float* coef, const float* rows, int count, float* acc) {
  for (int c = 0; c < kD; c += kGroupCols) {
    vec r0[R], r1[R];
    for (int r = 0; r < R; ++r) {
      r0[r] = vload(rows + r * kD + c);
      r1[r] = vload(rows + r * kD + c + kLanes);
    }
    for (int j = 0; j < count; ++j) {
      vec a0 = vload(acc + j * kD + c), a1 = vload(acc + j * kD + c + kLanes);
      for (int r = 0; r < R; ++r) {
        const vec f = vset1(coef[r * kChunk + j]);
        a0 = vfmadd(f, r0[r], a0);
        a1 = vfmadd(f, r1[r], a1);
      }
      vstore(acc + j * kD + c, a0);
      vstore(acc + j * kD + c + kLanes, a1);
    }
  }
}

// One chunk of a row's scores and value products (base-2 logits / plain products) ->
// probabilities P = exp2(s - L) in `s`, score gradients P * (dp - delta) in `dp`.
MMSG_TARGET inline void grad_step(float* s, float* dp, int width, float L, float delta) {
  const vec lv = vset1(L), dv = vset1(delta);
  for (int j = 0; j < width; j += kPanel) {
    const vec p = vexp2(vsub(vload(s + j), lv));
    vstore(s + j, p);
    vstore(dp + j, vmul(p, vsub(vload(dp + j), dv)));
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
MMSG_TARGET void grad_tile(const GradTile& t) {
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

// One work item per (b, h): its keys and values packed once, its query rows in tiles of
// kTileRows, each against all keys in chunks (recomputing the scores from the log-sum-exp), its
// key and value gradients accumulated in the item's own buffers (no two items write the same
// memory).
void backward(const AttentionGradInputs& in, at::Tensor& grad_q, at::Tensor& grad_k,
              at::Tensor& grad_v) {
  const at::Tensor &q = in.q, &k = in.k, &v = in.v, &o = in.out, &g = in.grad_out;
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), Nk = k.size(2);
  const int64_t Nk_padded = padded_keys(Nk);
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
