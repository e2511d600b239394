// Fused attention on the tensor cores for bf16 runs: the contract of
// attention.h (token-major Q/K/V rows `row_stride` apart, out [B, S, H*Dh]
// contiguous, lse [B, H, S] natural-log log-sum-exp of the scaled scores,
// dq/dk/dv overwritten), with the FlashAttention-2 arithmetic of a bf16
// training run:
//
//   - Q, K, V (and dO in the backward) stay fp32 in memory and are rounded to
//     bf16 (nearest even, as cpu::GemmBf16 and cuda::Gemm) when a tile is
//     staged in shared memory;
//   - Q K^T, P V, dO V^T, P^T dO, dS^T Q and dS K run on the tensor cores
//     (mma.sync m16n8k16, bf16 inputs, fp32 accumulation);
//   - the softmax is fp32: scores, row max, row sum, lse, dP - D and the
//     probabilities themselves are fp32; P (forward and backward) and dS are
//     rounded to bf16 only as the inputs of the products that consume them.
//
// No [S, S] matrix in memory: the forward pass runs an online softmax over
// key tiles and saves the lse; the backward pass recomputes P from it, in
// two kernels (dK/dV per key block over the query tiles; dQ per query block
// over the key tiles) so that every gradient element is summed by one thread
// in a fixed order: no atomics, the same bits on every run.
//
// Head dims 16..128 in steps of 4 run on kernels built for 64, 96 and 128
// columns (the columns past head_dim are zeros in shared memory and never
// written). Anything else is the fp32 kernel's (attention.h): the backend
// asks Bf16AttentionSupports first.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>

#include "absl/status/status.h"
#include "runtime/kernels/kernel_args.h"

namespace tessera::cuda {

// The launch geometry of one shape: pure arithmetic on the shape, no CUDA
// call, so it is tested without a GPU (tests/runtime/kernels/cuda/
// attention_bf16_test.cc).
struct Bf16AttentionPlan {
  int padded_head_dim = 0;  // 64, 96 or 128: the kernels' column count
  int threads = 0;          // per block (4 warps, 16 rows of a tile each)
  // Forward: a block owns `forward_queries` query rows and walks the keys in
  // tiles of `forward_keys`.
  int forward_queries = 0, forward_keys = 0;
  // dK/dV: a block owns `kv_keys` keys and walks the queries in tiles of `kv_queries`.
  int kv_keys = 0, kv_queries = 0;
  // dQ: a block owns `q_queries` query rows and walks the keys in tiles of `q_keys`.
  int q_queries = 0, q_keys = 0;
  // Grids: x = batch * heads, y = the blocks along the sequence.
  int64_t grid_x = 0, forward_grid_y = 0, kv_grid_y = 0, q_grid_y = 0;
  // Dynamic shared memory of each kernel, bytes.
  size_t forward_smem = 0, kv_smem = 0, q_smem = 0;
};

// Shared memory one block may opt into on sm_90 (227 KiB); every plan fits.
inline constexpr size_t kBf16AttentionMaxSmem = 227 * 1024;

// The plan of `shape`, or nullopt when the bf16 kernels do not take it
// (head_dim outside 16..128 or not a multiple of 4, row_stride not a multiple
// of 4 or smaller than heads * head_dim, a grid past CUDA's limits, empty).
std::optional<Bf16AttentionPlan> PlanBf16Attention(const AttentionShape& shape);

// Whether the bf16 kernels take this call: a plan exists and every operand
// is 16-byte aligned (tiles are read as float4; the row strides are
// multiples of 4 floats, so every row is then aligned).
bool Bf16AttentionSupports(const AttentionShape& shape,
                           std::initializer_list<const void*> operands);

// Same arguments as AttentionForward/AttentionBackward (attention.h); an
// InvalidArgument Status when Bf16AttentionSupports is false.
absl::Status AttentionForwardBf16(const AttentionShape& shape, const float* q, const float* k,
                                  const float* v, float* out, float* lse, cudaStream_t stream);

// Floats of device scratch AttentionBackwardBf16 needs (the per-row dO . O).
inline int64_t AttentionBackwardBf16Scratch(const AttentionShape& shape) {
  return shape.batch * shape.heads * shape.seq;
}
absl::Status AttentionBackwardBf16(const AttentionShape& shape, const float* q, const float* k,
                                   const float* v, const float* out, const float* dout,
                                   const float* lse, float* dq, float* dk, float* dv,
                                   float* scratch, cudaStream_t stream);

}  // namespace tessera::cuda
