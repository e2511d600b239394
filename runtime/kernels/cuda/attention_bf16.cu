// FlashAttention-2 on the tensor cores (mma.sync m16n8k16, bf16 inputs,
// fp32 accumulation); attention_bf16.h says what is rounded, and
// attention_bf16_kernels.cuh holds the kernels. This file supplies the
// primitives they need from the hardware (mma.sync, ldmatrix, the dynamic
// shared memory), the launch plan and the launches.
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "runtime/kernels/cuda/attention_bf16.h"
#include "runtime/base/status.h"
#include "runtime/kernels/cuda/check.h"

namespace tessera::cuda {
namespace {

#include "runtime/kernels/cuda/attention_bf16_kernels.cuh"

__device__ __forceinline__ void Mma(float (&c)[4], const FragA& a, const FragB& b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a.x[0]), "r"(a.x[1]), "r"(a.x[2]), "r"(a.x[3]), "r"(b.x[0]), "r"(b.x[1]));
}

__device__ __forceinline__ void LoadMatrices4(const Bf16* row, uint32_t (&r)[4]) {
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

__device__ __forceinline__ void LoadMatrices2(const Bf16* row, uint32_t (&r)[2]) {
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(address));
}

__device__ __forceinline__ unsigned char* SharedMemory() {
  extern __shared__ __align__(16) unsigned char smem[];
  return smem;
}

constexpr int kMaxGridY = 65535;

// ---- Host side -------------------------------------------------------------

template <int kDh>
Bf16AttentionPlan PlanFor(const AttentionShape& a) {
  using C = Config<kDh>;
  auto blocks = [&](int rows) { return (a.seq + rows - 1) / rows; };
  Bf16AttentionPlan plan;
  plan.padded_head_dim = kDh;
  plan.threads = kThreads;
  plan.forward_queries = C::kForwardQueries;
  plan.forward_keys = C::kForwardKeys;
  plan.kv_keys = C::kKvKeys;
  plan.kv_queries = C::kKvQueries;
  plan.q_queries = C::kQQueries;
  plan.q_keys = C::kQKeys;
  plan.grid_x = a.batch * a.heads;
  plan.forward_grid_y = blocks(C::kForwardQueries);
  plan.kv_grid_y = blocks(C::kKvKeys);
  plan.q_grid_y = blocks(C::kQQueries);
  plan.forward_smem = C::kForwardSmem;
  plan.kv_smem = C::kKvSmem;
  plan.q_smem = C::kQSmem;
  return plan;
}

// Launches `kernel` with `smem_bytes` of dynamic shared memory (opting in past 48 KiB).
template <typename Kernel, typename... Args>
absl::Status Launch(Kernel kernel, int64_t grid_x, int64_t grid_y, size_t smem_bytes,
                    cudaStream_t stream, Args... args) {
  if (smem_bytes > 48 * 1024) {
    TESSERA_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem_bytes)));
  }
  kernel<<<dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y)), kThreads,
           smem_bytes, stream>>>(args...);
  TESSERA_CUDA_LAUNCH();
  return absl::OkStatus();
}

absl::StatusOr<Bf16AttentionPlan> CheckedPlan(const char* name, const AttentionShape& a,
                                              std::initializer_list<const void*> operands) {
  if (!Bf16AttentionSupports(a, operands)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda::%s: unsupported shape or operands batch=%d seq=%d heads=%d head_dim=%d "
        "(16..128, a multiple of 4) row_stride=%d (a multiple of 4), operands 16-byte aligned",
        name, a.batch, a.seq, a.heads, a.head_dim, a.row_stride));
  }
  return *PlanBf16Attention(a);
}

template <int kDh>
absl::Status LaunchForward(const Bf16AttentionPlan& p, const AttentionShape& a, const float* q,
                           const float* k, const float* v, float* out, float* lse, float scale,
                           cudaStream_t stream) {
  return Launch(ForwardKernel<kDh>, p.grid_x, p.forward_grid_y, p.forward_smem, stream, a, q, k, v,
                out, lse, scale);
}

template <int kDh>
absl::Status LaunchBackward(const Bf16AttentionPlan& p, const AttentionShape& a, const float* q,
                            const float* k, const float* v, const float* dout, const float* lse,
                            const float* delta, float* dq, float* dk, float* dv, float scale,
                            cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(Launch(KeyValueGradKernel<kDh>, p.grid_x, p.kv_grid_y, p.kv_smem, stream,
                                 a, q, k, v, dout, lse, delta, dk, dv, scale));
  return Launch(QueryGradKernel<kDh>, p.grid_x, p.q_grid_y, p.q_smem, stream, a, q, k, v, dout, lse,
                delta, dq, scale);
}

}  // namespace

std::optional<Bf16AttentionPlan> PlanBf16Attention(const AttentionShape& a) {
  if (a.batch <= 0 || a.seq <= 0 || a.heads <= 0) return std::nullopt;
  if (a.head_dim < 16 || a.head_dim > 128 || a.head_dim % 4 != 0) return std::nullopt;
  if (a.row_stride % 4 != 0 || a.row_stride < a.heads * a.head_dim) return std::nullopt;
  if (a.batch > INT32_MAX / a.heads) return std::nullopt;  // grid x
  if (a.seq > int64_t{kMaxGridY} * kWarps * kRowsPerWarp) return std::nullopt;  // grid y
  if (a.batch * a.heads > int64_t{INT32_MAX} * 8 / a.seq) return std::nullopt;  // the D kernel's grid
  const Bf16AttentionPlan plan =
      a.head_dim <= 64 ? PlanFor<64>(a) : a.head_dim <= 96 ? PlanFor<96>(a) : PlanFor<128>(a);
  if (std::max({plan.forward_grid_y, plan.kv_grid_y, plan.q_grid_y}) > kMaxGridY) {
    return std::nullopt;
  }
  return plan;
}

bool Bf16AttentionSupports(const AttentionShape& shape,
                           std::initializer_list<const void*> operands) {
  for (const void* p : operands) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  }
  return PlanBf16Attention(shape).has_value();
}

absl::Status AttentionForwardBf16(const AttentionShape& a, const float* q, const float* k,
                                  const float* v, float* out, float* lse, cudaStream_t stream) {
  if (a.batch == 0 || a.seq == 0 || a.heads == 0) return absl::OkStatus();
  TESSERA_ASSIGN_OR_RETURN(const Bf16AttentionPlan plan,
                           CheckedPlan("AttentionForwardBf16", a, {q, k, v, out}));
  const float scale = 1.0f / std::sqrt(static_cast<float>(a.head_dim));
  switch (plan.padded_head_dim) {
    case 64: return LaunchForward<64>(plan, a, q, k, v, out, lse, scale, stream);
    case 96: return LaunchForward<96>(plan, a, q, k, v, out, lse, scale, stream);
    default: return LaunchForward<128>(plan, a, q, k, v, out, lse, scale, stream);
  }
}

absl::Status AttentionBackwardBf16(const AttentionShape& a, const float* q, const float* k,
                                   const float* v, const float* out, const float* dout,
                                   const float* lse, float* dq, float* dk, float* dv,
                                   float* scratch, cudaStream_t stream) {
  if (a.batch == 0 || a.seq == 0 || a.heads == 0) return absl::OkStatus();
  TESSERA_ASSIGN_OR_RETURN(
      const Bf16AttentionPlan plan,
      CheckedPlan("AttentionBackwardBf16", a, {q, k, v, out, dout, dq, dk, dv}));
  const float scale = 1.0f / std::sqrt(static_cast<float>(a.head_dim));
  const int64_t rows = a.batch * a.heads * a.seq;
  constexpr int kDeltaWarps = 8;
  DeltaKernel<<<static_cast<unsigned>((rows + kDeltaWarps - 1) / kDeltaWarps),
                kDeltaWarps * kWarpSize, 0, stream>>>(a, out, dout, scratch);
  TESSERA_CUDA_LAUNCH();
  switch (plan.padded_head_dim) {
    case 64:
      return LaunchBackward<64>(plan, a, q, k, v, dout, lse, scratch, dq, dk, dv, scale, stream);
    case 96:
      return LaunchBackward<96>(plan, a, q, k, v, dout, lse, scratch, dq, dk, dv, scale, stream);
    default:
      return LaunchBackward<128>(plan, a, q, k, v, dout, lse, scratch, dq, dk, dv, scale, stream);
  }
}

}  // namespace tessera::cuda

