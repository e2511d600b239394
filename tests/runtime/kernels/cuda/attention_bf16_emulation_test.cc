// The tensor-core attention's kernels (attention_bf16_kernels.cuh, the same
// source the GPU runs) executed on the host, without a GPU: every CUDA thread
// of a block is a fiber, __syncthreads a block barrier, a warp's shuffles and
// mma.sync a barrier-separated exchange among its 32 threads, and mma.sync
// m16n8k16 computes D = A B + C from the register fragments exactly as the
// PTX ISA's "Matrix Fragments for mma.m16n8k16" lays them out
// (groupID = lane / 4, threadID_in_group = lane % 4; see ElementA/ElementB).
// Blocks run one after another; shared memory starts as NaN bytes, so a read
// of anything not staged shows up in the results.
//
// What this checks without a GPU: the kernels' indexing, staging and
// transposition, masks, tile boundaries, online softmax and the fragment
// layouts they assume, against the CPU attention within the same rounding
// bound as the GPU test (attention_bf16_test_util.h). What it cannot check:
// timing, the real hardware's accumulation order, races the emulation's
// stricter synchronization hides, and whatever the emulation of mma.sync
// gets wrong the same way as the kernels (mma.sync's and ldmatrix's layouts
// are written here from the PTX ISA's tables, independently of the kernels'
// loaders, and MmaFromSharedTilesEqualsTheProduct checks the loaders against
// them).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <vector>

#include "runtime/kernels/cuda/attention_bf16.h"
#include "tests/runtime/kernels/cuda/attention_bf16_test_util.h"

namespace tessera::cuda::emulated {
namespace {

// ---- The CUDA primitives the kernels use ------------------------------------------
//
// Every CUDA thread of a block is a fiber (ucontext) on the test's one OS
// thread; a barrier yields to the scheduler until all its threads have
// arrived. One fiber runs at a time, so threadIdx and friends are plain
// variables the scheduler sets before resuming a fiber.

struct Index {
  unsigned x = 0, y = 0, z = 0;
};
Index threadIdx, blockIdx, blockDim, gridDim;

struct Barrier {
  int expected = 0, arrived = 0;
  uint64_t generation = 0;
};

struct Warp {
  Barrier barrier{32};
  float values[32];
  uint32_t a[32][4], b[32][2];
  const __nv_bfloat16* rows[32];
};

struct Fiber {
  ucontext_t context;
  std::vector<char> stack;
  bool done = false;
};

struct Block {
  Block(int threads, size_t smem_bytes) : memory(smem_bytes + 16, 0xff) {
    barrier.expected = threads;
    warps.resize((threads + 31) / 32);
    // 16-byte aligned, as CUDA's dynamic shared memory; 0xffff is a bf16 NaN.
    smem = memory.data() + (16 - reinterpret_cast<uintptr_t>(memory.data()) % 16) % 16;
  }
  Barrier barrier;
  std::vector<Warp> warps;
  std::vector<unsigned char> memory;
  unsigned char* smem = nullptr;
};

Block* current_block = nullptr;
ucontext_t scheduler_context;
Fiber* current_fiber = nullptr;
std::function<void()> fiber_body;
uint64_t events = 0;  // arrivals at barriers and finished threads: the scheduler's progress

void Arrive(Barrier& barrier) {
  ++events;
  const uint64_t generation = barrier.generation;
  if (++barrier.arrived == barrier.expected) {
    barrier.arrived = 0;
    ++barrier.generation;
    return;
  }
  while (barrier.generation == generation) {
    swapcontext(&current_fiber->context, &scheduler_context);
  }
}

Warp& MyWarp() { return current_block->warps[threadIdx.x / 32]; }
int Lane() { return static_cast<int>(threadIdx.x % 32); }

void __syncthreads() { Arrive(current_block->barrier); }

float __shfl_xor_sync(unsigned /*mask*/, float value, int lane_mask) {
  Warp& warp = MyWarp();
  warp.values[Lane()] = value;
  Arrive(warp.barrier);
  const float result = warp.values[Lane() ^ lane_mask];
  Arrive(warp.barrier);  // nobody overwrites a slot before all have read
  return result;
}

float4 __ldg(const float4* p) { return *p; }
int min(int a, int b) { return a < b ? a : b; }

// The host compiler has no launch bounds (the CUDA headers define the macro
// only for nvcc).
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wattributes"  // __global__
#include "runtime/kernels/cuda/attention_bf16_kernels.cuh"
#pragma GCC diagnostic pop

unsigned char* SharedMemory() { return current_block->smem; }

// ldmatrix .x4 / .x2: lane i's address is row i % 8 of matrix i / 8; register
// m of lane l is the word at row l / 4, columns 2 (l % 4), +1 of matrix m.
template <int kMatrices>
void LoadMatrices(const Bf16* row, uint32_t (&r)[kMatrices]) {
  Warp& warp = MyWarp();
  const int lane = Lane();
  warp.rows[lane] = row;
  Arrive(warp.barrier);
  for (int m = 0; m < kMatrices; ++m) {
    std::memcpy(&r[m], warp.rows[m * 8 + lane / 4] + 2 * (lane % 4), sizeof(uint32_t));
  }
  Arrive(warp.barrier);
}
void LoadMatrices4(const Bf16* row, uint32_t (&r)[4]) { LoadMatrices<4>(row, r); }
void LoadMatrices2(const Bf16* row, uint32_t (&r)[2]) { LoadMatrices<2>(row, r); }

float Half(uint32_t word, int high) {
  const uint32_t bits = (high ? word >> 16 : word & 0xffffu) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// Element (row, k) of the warp's 16 x 16 A: PTX's a0..a7 of lane
// 4 * (row % 8) + (k % 8) / 2, register (row >= 8) + 2 (k >= 8), half k % 2.
float ElementA(const Warp& w, int row, int k) {
  return Half(w.a[(row % 8) * 4 + (k % 8) / 2][(row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k % 2);
}
// Element (k, n) of the 16 x 8 B: b0..b3 of lane 4 n + (k % 8) / 2, register k >= 8, half k % 2.
float ElementB(const Warp& w, int k, int n) {
  return Half(w.b[n * 4 + (k % 8) / 2][k >= 8 ? 1 : 0], k % 2);
}

// D = A B + C; lane 4 g + t owns D rows g (c[0], c[1]) and g + 8 (c[2], c[3]), columns 2t, 2t+1.
void Mma(float (&c)[4], const FragA& a, const FragB& b) {
  Warp& warp = MyWarp();
  const int lane = Lane();
  for (int i = 0; i < 4; ++i) warp.a[lane][i] = a.x[i];
  for (int i = 0; i < 2; ++i) warp.b[lane][i] = b.x[i];
  Arrive(warp.barrier);
  const int g = lane / 4, t = lane % 4;
  for (int e = 0; e < 4; ++e) {
    const int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
    float sum = c[e];
    for (int k = 0; k < 16; ++k) sum += ElementA(warp, row, k) * ElementB(warp, k, col);
    c[e] = sum;
  }
  Arrive(warp.barrier);
}

void FiberEntry() {
  fiber_body();
  ++events;
  current_fiber->done = true;
  swapcontext(&current_fiber->context, &scheduler_context);
}

// Runs `kernel` over a grid of blocks (one after another), `threads` threads
// each; fails the test if the threads of a block stop at barriers that can
// never complete (a divergent __syncthreads or shuffle).
template <typename... Params, typename... Args>
void Launch(void (*kernel)(Params...), int64_t grid_x, int64_t grid_y, int threads,
            size_t smem_bytes, Args... args) {
  constexpr size_t kStackBytes = 256 * 1024;
  std::vector<Fiber> fibers(threads);
  for (Fiber& fiber : fibers) fiber.stack.resize(kStackBytes);
  fiber_body = [&] { kernel(args...); };
  gridDim = Index{static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y), 1};
  blockDim = Index{static_cast<unsigned>(threads), 1, 1};
  for (int64_t y = 0; y < grid_y; ++y) {
    for (int64_t x = 0; x < grid_x; ++x) {
      Block block(threads, smem_bytes);
      current_block = &block;
      blockIdx = Index{static_cast<unsigned>(x), static_cast<unsigned>(y), 0};
      for (Fiber& fiber : fibers) {
        fiber.done = false;
        getcontext(&fiber.context);
        fiber.context.uc_stack.ss_sp = fiber.stack.data();
        fiber.context.uc_stack.ss_size = fiber.stack.size();
        fiber.context.uc_link = nullptr;
        makecontext(&fiber.context, FiberEntry, 0);
      }
      for (int finished = 0; finished < threads;) {
        // A pass resumes every live thread once; one that returns without a
        // barrier having moved on is still waiting, so a pass in which
        // nothing arrives and nothing finishes is a deadlock.
        const uint64_t events_before = events;
        finished = 0;
        for (int t = 0; t < threads; ++t) {
          Fiber& fiber = fibers[t];
          if (fiber.done) {
            ++finished;
            continue;
          }
          threadIdx = Index{static_cast<unsigned>(t), 0, 0};
          current_fiber = &fiber;
          swapcontext(&scheduler_context, &fiber.context);
          if (fiber.done) ++finished;
        }
        if (finished < threads && events == events_before) {
          ADD_FAILURE() << "deadlock in block (" << x << ", " << y << "): " << threads - finished
                        << " threads wait at barriers that cannot complete";
          return;
        }
      }
    }
  }
}

// attention_bf16.cu's launches, on the emulation.
struct EmulatedRun {
  template <int kDh>
  static void Forward(const Bf16AttentionPlan& p, const AttentionShape& a, const float* q,
                      const float* k, const float* v, float* out, float* lse, float scale) {
    Launch(ForwardKernel<kDh>, p.grid_x, p.forward_grid_y, kThreads, p.forward_smem, a, q, k, v,
           out, lse, scale);
  }
  template <int kDh>
  static void Backward(const Bf16AttentionPlan& p, const AttentionShape& a, const float* q,
                       const float* k, const float* v, const float* dout, const float* lse,
                       const float* delta, float* dq, float* dk, float* dv, float scale) {
    Launch(KeyValueGradKernel<kDh>, p.grid_x, p.kv_grid_y, kThreads, p.kv_smem, a, q, k, v, dout,
           lse, delta, dk, dv, scale);
    Launch(QueryGradKernel<kDh>, p.grid_x, p.q_grid_y, kThreads, p.q_smem, a, q, k, v, dout, lse,
           delta, dq, scale);
  }

  void Forward(const AttentionShape& a, const float* q, const float* k, const float* v,
               float* out, float* lse) {
    const std::optional<Bf16AttentionPlan> plan = PlanBf16Attention(a);
    ASSERT_TRUE(plan.has_value());
    const float scale = 1.0f / std::sqrt(static_cast<float>(a.head_dim));
    switch (plan->padded_head_dim) {
      case 64: return Forward<64>(*plan, a, q, k, v, out, lse, scale);
      case 96: return Forward<96>(*plan, a, q, k, v, out, lse, scale);
      default: return Forward<128>(*plan, a, q, k, v, out, lse, scale);
    }
  }
  void Backward(const AttentionShape& a, const float* q, const float* k, const float* v,
                const float* out, const float* dout, const float* lse, float* dq, float* dk,
                float* dv, float* scratch) {
    const std::optional<Bf16AttentionPlan> plan = PlanBf16Attention(a);
    ASSERT_TRUE(plan.has_value());
    const float scale = 1.0f / std::sqrt(static_cast<float>(a.head_dim));
    const int64_t rows = a.batch * a.heads * a.seq;
    constexpr int kDeltaWarps = 8;  // as attention_bf16.cu
    Launch(DeltaKernel, (rows + kDeltaWarps - 1) / kDeltaWarps, 1, kDeltaWarps * kWarpSize, 0, a,
           out, dout, scratch);
    switch (plan->padded_head_dim) {
      case 64: return Backward<64>(*plan, a, q, k, v, dout, lse, scratch, dq, dk, dv, scale);
      case 96: return Backward<96>(*plan, a, q, k, v, dout, lse, scratch, dq, dk, dv, scale);
      default: return Backward<128>(*plan, a, q, k, v, dout, lse, scratch, dq, dk, dv, scale);
    }
  }
};

// Host memory with DeviceVector's interface, 16-byte aligned.
class HostVector {
 public:
  explicit HostVector(const std::vector<float>& values)
      : storage_(values.size() + 4), size_(values.size()) {
    data_ = storage_.data() + (4 - reinterpret_cast<uintptr_t>(storage_.data()) / 4 % 4) % 4;
    std::copy(values.begin(), values.end(), data_);
  }
  float* data() const { return data_; }
  std::vector<float> ToHost() const { return std::vector<float>(data_, data_ + size_); }

 private:
  std::vector<float> storage_;
  size_t size_;
  float* data_;
};

// The loaders and the C layout the kernels assume, against the emulated
// mma.sync: a [16 x 32] A and a [32 x 8] B staged by StageTile (A row-major,
// B transposed into [n][k]), loaded by LoadA / LoadB, multiplied by two mma
// steps, equal the product; and ToA of the C tiles gives A back.
void FragmentKernel(const float* a, const float* b, float* product, float* round_trip) {
  Bf16* a_tile = reinterpret_cast<Bf16*>(SharedMemory());  // [16][32 + 8]
  Bf16* b_tile = a_tile + 16 * (32 + kPad);                 // [8][32 + 8]: B^T
  if (threadIdx.x == 0) {
    for (int r = 0; r < 16; ++r) {
      for (int k = 0; k < 32; ++k) a_tile[r * (32 + kPad) + k] = __float2bfloat16_rn(a[r * 32 + k]);
    }
    for (int k = 0; k < 32; ++k) {
      for (int n = 0; n < 8; ++n) b_tile[n * (32 + kPad) + k] = __float2bfloat16_rn(b[k * 8 + n]);
    }
  }
  __syncthreads();
  float c[1][4] = {};
  for (int kk = 0; kk < 2; ++kk) {
    Mma(c[0], LoadA(a_tile, 32 + kPad, 0, kk * 16), LoadB(b_tile, 32 + kPad, 0, kk * 16));
  }
  const int g = Lane() / 4, t = Lane() % 4;
  for (int e = 0; e < 4; ++e) product[(g + (e >= 2 ? 8 : 0)) * 8 + 2 * t + (e & 1)] = c[0][e];
  // A [16 x 16] built from two C tiles (columns 0-7 and 8-15) must read back as itself.
  float pair[2][4];
  for (int e = 0; e < 4; ++e) {
    pair[0][e] = a[(g + (e >= 2 ? 8 : 0)) * 32 + 2 * t + (e & 1)];
    pair[1][e] = a[(g + (e >= 2 ? 8 : 0)) * 32 + 8 + 2 * t + (e & 1)];
  }
  const FragA from_c = ToA(pair, 0), loaded = LoadA(a_tile, 32 + kPad, 0, 0);
  for (int i = 0; i < 4; ++i) round_trip[Lane() * 4 + i] = from_c.x[i] == loaded.x[i] ? 1.0f : 0.0f;
}

TEST(CudaAttentionBf16Emulation, MmaFromSharedTilesEqualsTheProduct) {
  // Small integers: exact in bf16 and in the fp32 sums.
  std::vector<float> a(16 * 32), b(32 * 8), product(16 * 8, NAN), round_trip(32 * 4, 0.0f);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(static_cast<int>(i * 7 % 11) - 5);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(static_cast<int>(i * 5 % 9) - 4);
  Launch(FragmentKernel, 1, 1, 32, 2 * 24 * (32 + kPad) * sizeof(Bf16), a.data(), b.data(),
         product.data(), round_trip.data());
  for (int r = 0; r < 16; ++r) {
    for (int n = 0; n < 8; ++n) {
      float want = 0.0f;
      for (int k = 0; k < 32; ++k) want += a[r * 32 + k] * b[k * 8 + n];
      EXPECT_EQ(product[r * 8 + n], want) << "row " << r << " column " << n;
    }
  }
  for (size_t i = 0; i < round_trip.size(); ++i) EXPECT_EQ(round_trip[i], 1.0f) << "register " << i;
}

TEST(CudaAttentionBf16Emulation, KernelsMatchCpuOnBf16RoundedInputs) {
  uint64_t seed = 100;
  EmulatedRun run;
  for (const testing::Case& c : testing::Bf16AttentionCases()) {
    testing::CheckAgainstCpu<HostVector>(c, seed, run);
    if (HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace tessera::cuda::emulated
