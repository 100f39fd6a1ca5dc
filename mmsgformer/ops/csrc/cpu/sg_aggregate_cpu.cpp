// CPU kernels of the significance-guided aggregation (forward and backward).
//
// Forward: one work item per output token (b, j); it walks the group's ranks through `order`
// and accumulates weighted token rows (contiguous over C) in the accumulation type.
// Backward: one work item per token (b, n), in memory order through the inverse permutation
// (the token rows are read and their gradient rows written sequentially; the small grad_out
// stays in cache); it writes the token's gradient row (w * grad_out row of its group) and its
// rank's product <grad_out row, token row>; the weight and bias gradients are then reduced
// in a fixed order (deterministic) with the table functions of sg_aggregate.h.
// Neither keeps nor builds a permuted copy of the tokens.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../sg_aggregate.h"

namespace mmsgformer {

namespace {

// The CPU always checks that each order[b] is a permutation of 0..N-1 (O(B*N), cheap next to
// the O(B*N*C) kernels): out-of-range indices would read or write out of bounds, duplicates
// would make the backward wrong. With `inverse`, also returns rank[b*N + token] (the inverse
// permutation), which lets the backward stream through the tokens in memory order.
void check_permutation_cpu(const at::Tensor& order, std::vector<int64_t>* inverse = nullptr) {
  const int64_t B = order.size(0), N = order.size(1);
  if (B == 0 || N == 0) return;
  const int64_t* o = order.data_ptr<int64_t>();
  if (inverse) inverse->assign(B * N, -1);
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / N);
  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
    std::vector<int64_t> local;
    for (int64_t b = b0; b < b1; ++b) {
      int64_t* rank = nullptr;
      if (inverse) {
        rank = inverse->data() + b * N;
      } else {
        local.assign(N, -1);
        rank = local.data();
      }
      const int64_t* ob = o + b * N;
      for (int64_t p = 0; p < N; ++p) {
        const int64_t idx = ob[p];
        TORCH_CHECK_VALUE(idx >= 0 && idx < N, "sg_aggregate: order[", b, ", ", p, "]=", idx,
                          " is out of range: order[b] must be a permutation of 0..N-1 (N=", N,
                          ")");
        TORCH_CHECK_VALUE(rank[idx] < 0, "sg_aggregate: order[", b,
                          "] is not a permutation of 0..N-1: token ", idx,
                          " appears twice (at ranks ", rank[idx], " and ", p, ")");
        rank[idx] = p;
      }
    }
  });
}

template <typename scalar_t>
void forward_kernel(const ForwardInputs& in, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const SegmentTable& T = in.table;
  const int64_t B = in.tokens.size(0), N = in.tokens.size(1), C = in.tokens.size(2);
  const int64_t J = T.num_out;
  if (B == 0 || J == 0 || C == 0) return;
  const scalar_t* x = in.tokens.data_ptr<scalar_t>();
  const int64_t* o = in.order.data_ptr<int64_t>();
  const acc_t* w = in.weight.data_ptr<acc_t>();
  const acc_t* bias = in.bias.data_ptr<acc_t>();
  scalar_t* y = out.data_ptr<scalar_t>();
  const int64_t work_per_item = C * std::max<int64_t>(1, N / J);
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / work_per_item);

  at::parallel_for(0, B * J, grain, [&](int64_t i0, int64_t i1) {
    std::vector<acc_t> acc(C);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / J, j = i - b * J;
      const GroupSpan s = group_of_output(T, j);
      std::fill(acc.begin(), acc.end(), bias[s.segment]);
      const int64_t* ranks = o + b * N + s.first_rank;
      const scalar_t* xb = x + b * N * C;
      const acc_t* wk = w + s.weight_offset;
      acc_t* a = acc.data();
      for (int64_t t = 0; t < s.size; ++t) {
        const acc_t wt = wk[t];
        const scalar_t* row = xb + ranks[t] * C;
        for (int64_t c = 0; c < C; ++c) a[c] += wt * static_cast<acc_t>(row[c]);
      }
      scalar_t* dst = y + i * C;
      for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<scalar_t>(a[c]);
    }
  });
}

// <a, b> over C channels with 8 independent partial sums, so the compiler can vectorize it
// without reassociating a single accumulator.
template <typename scalar_t, typename acc_t>
inline acc_t row_dot(const scalar_t* a, const scalar_t* b, int64_t C) {
  constexpr int kLanes = 8;
  acc_t part[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= C; c += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      part[l] += static_cast<acc_t>(a[c + l]) * static_cast<acc_t>(b[c + l]);
    }
  }
  acc_t dot = 0;
  for (; c < C; ++c) dot += static_cast<acc_t>(a[c]) * static_cast<acc_t>(b[c]);
  for (int l = 0; l < kLanes; ++l) dot += part[l];
  return dot;
}

template <typename scalar_t>
void backward_kernel(const BackwardInputs& in, const int64_t* rank, at::Tensor& grad_tokens,
                     at::Tensor& grad_weight, at::Tensor& grad_bias) {
  using acc_t = at::opmath_type<scalar_t>;
  const SegmentTable& T = in.table;
  const int64_t B = in.tokens.size(0), N = in.tokens.size(1), C = in.tokens.size(2);
  const int64_t J = T.num_out;
  const scalar_t* go = in.grad_out.data_ptr<scalar_t>();
  const scalar_t* x = in.tokens.data_ptr<scalar_t>();
  const acc_t* w = in.weight.data_ptr<acc_t>();
  scalar_t* gx = grad_tokens.data_ptr<scalar_t>();
  acc_t* gw = grad_weight.data_ptr<acc_t>();
  acc_t* gb = grad_bias.data_ptr<acc_t>();
  std::vector<acc_t> rank_dot(B * N);
  acc_t* rd = rank_dot.data();

  // 1. per token, in memory order (via the inverse permutation `rank`): the token's gradient
  //    row and its rank's product with the group's output gradient
  const int64_t grain =
      std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, 2 * C));
  at::parallel_for(0, B * N, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / N, p = rank[r];
      const RankSlot s = slot_of_rank(T, p);
      const scalar_t* g_row = go + (b * J + s.out_index) * C;
      const scalar_t* x_row = x + r * C;
      scalar_t* gx_row = gx + r * C;
      const acc_t wt = w[s.weight_index];
      for (int64_t c = 0; c < C; ++c) {
        gx_row[c] = static_cast<scalar_t>(wt * static_cast<acc_t>(g_row[c]));
      }
      rd[b * N + p] = row_dot<scalar_t, acc_t>(g_row, x_row, C);
    }
  });

  // 2. weights: each weight sums the products of its slot over all groups and images
  //    (O(B*N), serial and in a fixed order: deterministic)
  for (int64_t wi = 0; wi < T.num_weights; ++wi) {
    const int32_t k = segment_of_weight(T, wi);
    const int64_t slot = wi - T.weight_offset[k];
    const int64_t n = groups_with_slot(T, k, slot);
    acc_t sum = 0;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t m = 0; m < n; ++m) sum += rd[b * N + rank_of_slot(T, k, m, slot)];
    }
    gw[wi] = sum;
  }

  // 3. biases: each bias sums the output gradient of its segment's groups
  for (int32_t k = 0; k < T.num_segments; ++k) {
    acc_t sum = 0;
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t* g_seg = go + (b * J + T.out_offset[k]) * C;
      const int64_t len = T.count[k] * C;
      for (int64_t i = 0; i < len; ++i) sum += static_cast<acc_t>(g_seg[i]);
    }
    gb[k] = sum;
  }
}

at::Tensor sg_aggregate_cpu(const at::Tensor& tokens, const at::Tensor& order,
                            const at::Tensor& weight, const at::Tensor& bias,
                            at::IntArrayRef seg_starts, at::IntArrayRef seg_lengths,
                            at::IntArrayRef group_sizes) {
  ForwardInputs in = prepare_forward(tokens, order, weight, bias, seg_starts, seg_lengths,
                                     group_sizes, c10::DeviceType::CPU);
  check_permutation_cpu(in.order);
  at::Tensor out = at::empty({in.tokens.size(0), in.table.num_out, in.tokens.size(2)},
                             in.tokens.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.tokens.scalar_type(),
                                  "sg_aggregate_cpu", [&] { forward_kernel<scalar_t>(in, out); });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sg_aggregate_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& tokens, const at::Tensor& order,
    const at::Tensor& weight, at::IntArrayRef seg_starts, at::IntArrayRef seg_lengths,
    at::IntArrayRef group_sizes) {
  BackwardInputs in = prepare_backward(grad_out, tokens, order, weight, seg_starts, seg_lengths,
                                       group_sizes, c10::DeviceType::CPU);
  std::vector<int64_t> rank;  // inverse permutation: rank[b*N + token]
  check_permutation_cpu(in.order, &rank);
  const auto acc_options = in.tokens.options().dtype(in.weight.scalar_type());
  // Every row is written exactly once (order is a permutation), so no zero fill is needed.
  at::Tensor grad_tokens = at::empty_like(in.tokens);
  at::Tensor grad_weight = at::empty({in.table.num_weights}, acc_options);
  at::Tensor grad_bias = at::empty({in.table.num_segments}, acc_options);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, in.tokens.scalar_type(), "sg_aggregate_backward_cpu",
      [&] { backward_kernel<scalar_t>(in, rank.data(), grad_tokens, grad_weight, grad_bias); });
  grad_weight = grad_weight.to(in.weight_dtype);
  grad_bias = grad_bias.to(in.weight_dtype);
  return {grad_tokens, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(mmsgformer, CPU, m) {
  m.impl("sg_aggregate", &sg_aggregate_cpu);
  m.impl("sg_aggregate_backward", &sg_aggregate_backward_cpu);
}

}  // namespace mmsgformer
