// CUDA kernels of the significance-guided aggregation (forward and backward).
//
// Same math and the same indexing functions (sg_aggregate.h) as the CPU kernels:
// forward  - one thread per output element (b, j, c); consecutive threads read consecutive
//            channels of the same token row, so the gathered rows are read coalesced;
// backward - one warp per rank (b, p); lanes stride over channels, write the token's gradient
//            row and reduce <grad_out row, token row> with warp shuffles into rank_dot[b, p],
//            then one block per weight (resp. segment) reduces rank_dot (resp. grad_out) into
//            dL/dw (dL/dbias) in a fixed order: deterministic, no atomics.
// Indices of `order` are bounds-checked with CUDA_KERNEL_ASSERT; the full permutation check on
// CUDA is the Python debug mode (mmsgformer.ops.set_debug(True) / MMSGFORMER_DEBUG=1).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../sg_aggregate.h"

namespace mmsgformer {

namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride loops cover the rest

int64_t num_blocks(int64_t threads_needed) {
  const int64_t blocks = (threads_needed + kThreads - 1) / kThreads;
  return std::max<int64_t>(1, std::min(blocks, kMaxBlocks));
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ order,
                               const acc_t* __restrict__ w, const acc_t* __restrict__ bias,
                               scalar_t* __restrict__ out, const SegmentTable table, int64_t B,
                               int64_t C) {
  const int64_t N = table.num_tokens, J = table.num_out;
  const int64_t total = B * J * C;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t c = i % C;
    const int64_t row = i / C;
    const int64_t j = row % J;
    const int64_t b = row / J;
    const GroupSpan s = group_of_output(table, j);
    const int64_t* ranks = order + b * N + s.first_rank;
    const scalar_t* xb = x + b * N * C + c;
    const acc_t* wk = w + s.weight_offset;
    acc_t acc = bias[s.segment];
    for (int64_t t = 0; t < s.size; ++t) {
      const int64_t token = ranks[t];
      CUDA_KERNEL_ASSERT(token >= 0 && token < N);
      acc += wk[t] * static_cast<acc_t>(xb[token * C]);
    }
    out[i] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad_out,
                                const scalar_t* __restrict__ x,
                                const int64_t* __restrict__ order, const acc_t* __restrict__ w,
                                scalar_t* __restrict__ grad_x, acc_t* __restrict__ rank_dot,
                                const SegmentTable table, int64_t B, int64_t C) {
  const int64_t N = table.num_tokens, J = table.num_out;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarp;
  // All lanes of a warp share r, so the loop (and the shuffles below) are warp-uniform.
  for (int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
       r < B * N; r += warps) {
    const int64_t b = r / N, p = r - b * N;
    const RankSlot s = slot_of_rank(table, p);
    const int64_t token = order[r];
    CUDA_KERNEL_ASSERT(token >= 0 && token < N);
    const scalar_t* g_row = grad_out + (b * J + s.out_index) * C;
    const scalar_t* x_row = x + (b * N + token) * C;
    scalar_t* gx_row = grad_x + (b * N + token) * C;
    const acc_t wt = w[s.weight_index];
    acc_t dot = 0;
    for (int64_t c = lane; c < C; c += kWarp) {
      const acc_t g = static_cast<acc_t>(g_row[c]);
      gx_row[c] = static_cast<scalar_t>(wt * g);
      dot += g * static_cast<acc_t>(x_row[c]);
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      dot += __shfl_down_sync(0xffffffffu, dot, offset);
    }
    if (lane == 0) rank_dot[r] = dot;
  }
}

// Sum of `v` over the block (blockDim.x a multiple of 32, at most kThreads); valid in thread 0.
template <typename acc_t>
__device__ acc_t block_sum(acc_t v) {
  __shared__ acc_t warp_sums[kThreads / kWarp];
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = 0;
  if (warp == 0) {
    const int num_warps = blockDim.x / kWarp;
    v = lane < num_warps ? warp_sums[lane] : acc_t(0);
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      v += __shfl_down_sync(0xffffffffu, v, offset);
    }
  }
  return v;
}

// One block per weight: sums rank_dot over the groups holding its slot, for all images.
template <typename acc_t>
__global__ void weight_grad_kernel(const acc_t* __restrict__ rank_dot,
                                   acc_t* __restrict__ grad_weight, const SegmentTable table,
                                   int64_t B) {
  const int64_t wi = blockIdx.x;
  const int32_t k = segment_of_weight(table, wi);
  const int64_t slot = wi - table.weight_offset[k];
  const int64_t n = groups_with_slot(table, k, slot);
  acc_t sum = 0;
  for (int64_t i = threadIdx.x; i < B * n; i += blockDim.x) {
    const int64_t b = i / n, m = i - b * n;
    sum += rank_dot[b * table.num_tokens + rank_of_slot(table, k, m, slot)];
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) grad_weight[wi] = sum;
}

// One block per segment: sums the output gradient of the segment's groups.
template <typename scalar_t, typename acc_t>
__global__ void bias_grad_kernel(const scalar_t* __restrict__ grad_out,
                                 acc_t* __restrict__ grad_bias, const SegmentTable table,
                                 int64_t B, int64_t C) {
  const int32_t k = blockIdx.x;
  const int64_t per_image = table.count[k] * C;
  acc_t sum = 0;
  for (int64_t i = threadIdx.x; i < B * per_image; i += blockDim.x) {
    const int64_t b = i / per_image, e = i - b * per_image;
    sum += static_cast<acc_t>(grad_out[(b * table.num_out + table.out_offset[k]) * C + e]);
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) grad_bias[k] = sum;
}

at::Tensor sg_aggregate_cuda(const at::Tensor& tokens, const at::Tensor& order,
                             const at::Tensor& weight, const at::Tensor& bias,
                             at::IntArrayRef seg_starts, at::IntArrayRef seg_lengths,
                             at::IntArrayRef group_sizes) {
  ForwardInputs in = prepare_forward(tokens, order, weight, bias, seg_starts, seg_lengths,
                                     group_sizes, c10::DeviceType::CUDA);
  const c10::cuda::OptionalCUDAGuard guard(in.tokens.device());
  const int64_t B = in.tokens.size(0), C = in.tokens.size(2);
  at::Tensor out = at::empty({B, in.table.num_out, C}, in.tokens.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, in.tokens.scalar_type(), "sg_aggregate_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        forward_kernel<scalar_t, acc_t><<<num_blocks(total), kThreads, 0, stream>>>(
            in.tokens.data_ptr<scalar_t>(), in.order.data_ptr<int64_t>(),
            in.weight.data_ptr<acc_t>(), in.bias.data_ptr<acc_t>(), out.data_ptr<scalar_t>(),
            in.table, B, C);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sg_aggregate_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& tokens, const at::Tensor& order,
    const at::Tensor& weight, at::IntArrayRef seg_starts, at::IntArrayRef seg_lengths,
    at::IntArrayRef group_sizes) {
  BackwardInputs in = prepare_backward(grad_out, tokens, order, weight, seg_starts, seg_lengths,
                                       group_sizes, c10::DeviceType::CUDA);
  const c10::cuda::OptionalCUDAGuard guard(in.tokens.device());
  const int64_t B = in.tokens.size(0), N = in.tokens.size(1), C = in.tokens.size(2);
  const auto acc_options = in.tokens.options().dtype(in.weight.scalar_type());
  const SegmentTable& T = in.table;
  // Zero-filled so that rows stay defined even if order is not a permutation (unchecked here
  // outside debug mode); with a permutation every row is overwritten once.
  at::Tensor grad_tokens = at::zeros_like(in.tokens);
  at::Tensor rank_dot = at::zeros({B, N}, acc_options);
  at::Tensor grad_weight = at::empty({T.num_weights}, acc_options);
  at::Tensor grad_bias = at::empty({T.num_segments}, acc_options);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, in.tokens.scalar_type(), "sg_aggregate_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        if (B * N > 0 && C > 0) {
          backward_kernel<scalar_t, acc_t><<<num_blocks(B * N * kWarp), kThreads, 0, stream>>>(
              in.grad_out.data_ptr<scalar_t>(), in.tokens.data_ptr<scalar_t>(),
              in.order.data_ptr<int64_t>(), in.weight.data_ptr<acc_t>(),
              grad_tokens.data_ptr<scalar_t>(), rank_dot.data_ptr<acc_t>(), T, B, C);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        weight_grad_kernel<acc_t><<<T.num_weights, kThreads, 0, stream>>>(
            rank_dot.data_ptr<acc_t>(), grad_weight.data_ptr<acc_t>(), T, B);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        bias_grad_kernel<scalar_t, acc_t><<<T.num_segments, kThreads, 0, stream>>>(
            in.grad_out.data_ptr<scalar_t>(), grad_bias.data_ptr<acc_t>(), T, B, C);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  grad_weight = grad_weight.to(in.weight_dtype);
  grad_bias = grad_bias.to(in.weight_dtype);
  return {grad_tokens, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(mmsgformer, CUDA, m) {
  m.impl("sg_aggregate", &sg_aggregate_cuda);
  m.impl("sg_aggregate_backward", &sg_aggregate_backward_cuda);
}

}  // namespace mmsgformer
