// Significance-guided key/value aggregation: shared definitions of the CPU and CUDA kernels.
// The op's contract is docs/design.md §17.
//
// Tokens are ranked by ascending significance (`order[b, p]` is the token index of rank `p`).
// The ranks are cut into K segments; segment k covers ranks [start_k, start_k + len_k) and is
// merged in groups of g_k consecutive ranks, one output token per group:
//
//   out[b, off_k + m, c] =
//       bias[k] + sum_{t < n} w[wo_k + t] * x[b, order[b, start_k + m*g_k + t], c]
//
// with n = min(g_k, start_k + len_k - (start_k + m*g_k)) (only the last group of a segment is
// short; its missing slots contribute nothing), off_k = sum_{i<k} ceil(len_i / g_i) and
// wo_k = sum_{i<k} g_i.
//
// Everything that maps (segment, group, slot) to ranks, weights and output rows lives here as
// host+device inline functions, so the CPU kernels (which the tests exercise) and the CUDA
// kernels index the data with the same code. Gradients:
//
//   dL/dx[b, order[b, p], c] = w[weight_index(p)] * dL/dout[b, out_index(p), c]
//   dL/dw[wi]  = sum_{b, m} rank_dot[b, rank_of_slot(k, m, wi - wo_k)]   (groups holding the slot)
//   dL/dbias[k] = sum_{b, c, m < count_k} dL/dout[b, off_k + m, c]
//
// with rank_dot[b, p] = <dL/dout[b, out_index(p), :], x[b, order[b, p], :]>.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SG_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SG_HOST_DEVICE inline
#endif

#ifndef SG_NO_TORCH  // the indexing part below is usable without torch (e.g. in unit tests)
#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/util/ArrayRef.h>
#endif

namespace mmsgformer {

// Upper bound on the number of segments (the official rules use 2 or 3).
constexpr int kMaxSegments = 8;

// The segment layout flattened into fixed arrays so it can be passed by value to a CUDA kernel.
struct SegmentTable {
  int32_t num_segments;          // K
  int64_t num_tokens;            // N = sum(length)
  int64_t num_out;               // sum(count)
  int64_t num_weights;           // sum(group)
  int64_t start[kMaxSegments];   // first rank of segment k
  int64_t length[kMaxSegments];  // ranks in segment k
  int64_t group[kMaxSegments];   // g_k >= 1
  int64_t count[kMaxSegments];   // ceil(length / group): output tokens of segment k
  int64_t out_offset[kMaxSegments];     // first output token of segment k
  int64_t weight_offset[kMaxSegments];  // first weight of segment k in the concatenated vector
};

// One output token's group: ranks [first_rank, first_rank + size), weights from weight_offset.
struct GroupSpan {
  int32_t segment;
  int64_t first_rank;
  int64_t size;  // 1 <= size <= group[segment]
  int64_t weight_offset;
};

// One rank's place: the output token it is merged into and the weight it is multiplied by.
struct RankSlot {
  int32_t segment;
  int64_t out_index;
  int64_t weight_index;
};

// The segment that owns output token j (0 <= j < num_out). Empty segments own no output and are
// skipped because their out_offset equals the next one's.
SG_HOST_DEVICE int32_t segment_of_output(const SegmentTable& t, int64_t j) {
  int32_t k = 0;
  while (k + 1 < t.num_segments && j >= t.out_offset[k + 1]) ++k;
  return k;
}

// The segment that owns rank p (0 <= p < num_tokens).
SG_HOST_DEVICE int32_t segment_of_rank(const SegmentTable& t, int64_t p) {
  int32_t k = 0;
  while (k + 1 < t.num_segments && p >= t.start[k + 1]) ++k;
  return k;
}

// Output token j -> the ranks it merges and the weights it uses.
SG_HOST_DEVICE GroupSpan group_of_output(const SegmentTable& t, int64_t j) {
  const int32_t k = segment_of_output(t, j);
  const int64_t m = j - t.out_offset[k];
  const int64_t first = t.start[k] + m * t.group[k];
  const int64_t left = t.start[k] + t.length[k] - first;
  GroupSpan s;
  s.segment = k;
  s.first_rank = first;
  s.size = left < t.group[k] ? left : t.group[k];
  s.weight_offset = t.weight_offset[k];
  return s;
}

// Rank p -> the output token it contributes to and its weight index (slot t = (p - start) % g).
SG_HOST_DEVICE RankSlot slot_of_rank(const SegmentTable& t, int64_t p) {
  const int32_t k = segment_of_rank(t, p);
  const int64_t r = p - t.start[k];
  RankSlot s;
  s.segment = k;
  s.out_index = t.out_offset[k] + r / t.group[k];
  s.weight_index = t.weight_offset[k] + r % t.group[k];
  return s;
}

// The segment that owns weight wi (0 <= wi < num_weights).
SG_HOST_DEVICE int32_t segment_of_weight(const SegmentTable& t, int64_t wi) {
  int32_t k = 0;
  while (k + 1 < t.num_segments && wi >= t.weight_offset[k + 1]) ++k;
  return k;
}

// (segment k, group m, slot) -> rank. The inverse of slot_of_rank.
SG_HOST_DEVICE int64_t rank_of_slot(const SegmentTable& t, int32_t k, int64_t m, int64_t slot) {
  return t.start[k] + m * t.group[k] + slot;
}

// Number of groups of segment k whose slot `slot` holds a rank: all full groups, plus the short
// last group when the slot falls inside it.
SG_HOST_DEVICE int64_t groups_with_slot(const SegmentTable& t, int32_t k, int64_t slot) {
  const int64_t full = t.length[k] / t.group[k];
  return full + (slot < t.length[k] - full * t.group[k] ? 1 : 0);
}

#ifndef SG_NO_TORCH

// Validated, contiguous inputs of the forward op. Weight and bias are converted to the
// accumulation type (float for half/bfloat16/float, double for double).
struct ForwardInputs {
  at::Tensor tokens;  // (B, N, C) contiguous
  at::Tensor order;   // (B, N) int64 contiguous
  at::Tensor weight;  // (sum g_k,) accumulation dtype, contiguous
  at::Tensor bias;    // (K,) accumulation dtype, contiguous
  SegmentTable table;
};

// Validated, contiguous inputs of the backward op.
struct BackwardInputs {
  at::Tensor grad_out;  // (B, num_out, C) contiguous, tokens' dtype
  at::Tensor tokens;
  at::Tensor order;
  at::Tensor weight;    // accumulation dtype
  c10::ScalarType weight_dtype;  // the caller's weight (and bias) dtype, for the gradients
  SegmentTable table;
};

// Checks the layout (K <= kMaxSegments, contiguous segments from rank 0 that cover N, g_k >= 1)
// and builds the table. Throws c10::ValueError naming the bad argument.
SegmentTable make_segment_table(c10::IntArrayRef seg_starts, c10::IntArrayRef seg_lengths,
                                c10::IntArrayRef group_sizes, int64_t num_tokens);

// Checks devices, dtypes and shapes (errors name the argument and the rule) and makes the
// tensors contiguous. `device` is the device type whose kernel is running.
ForwardInputs prepare_forward(const at::Tensor& tokens, const at::Tensor& order,
                              const at::Tensor& weight, const at::Tensor& bias,
                              c10::IntArrayRef seg_starts, c10::IntArrayRef seg_lengths,
                              c10::IntArrayRef group_sizes, c10::DeviceType device);

BackwardInputs prepare_backward(const at::Tensor& grad_out, const at::Tensor& tokens,
                                const at::Tensor& order, const at::Tensor& weight,
                                c10::IntArrayRef seg_starts, c10::IntArrayRef seg_lengths,
                                c10::IntArrayRef group_sizes, c10::DeviceType device);

#endif  // SG_NO_TORCH

}  // namespace mmsgformer
