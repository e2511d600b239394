#include "runtime/kernels/cpu/gemm_bf16.h"

#include <bit>
#include <map>
#include <memory>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "runtime/base/status.h"
#include "runtime/kernels/cpu/gemm.h"
#include "runtime/kernels/cpu/parallel_loops.h"

namespace tessera::cpu {
namespace {

using dnnl::memory;

// Round to nearest even by integer arithmetic on the bits; a NaN keeps its
// sign and high payload and is made quiet (rounding could carry it into an
// infinity). A select rather than a branch, so the loops calling it
// vectorize (a branch here kept them scalar: 110 ms per 200M values).
inline uint16_t Bf16Bits(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (bits >> 16) | 0x40u;
  return static_cast<uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// A per-thread buffer that only grows and is never cleared (std::vector's
// resize would zero-fill it again every time a smaller call came between two
// larger ones).
template <typename T>
class Scratch {
 public:
  T* Get(int64_t n) {
    if (n > capacity_) {
      data_ = std::make_unique_for_overwrite<T[]>(static_cast<size_t>(n));
      capacity_ = n;
    }
    return data_.get();
  }

 private:
  std::unique_ptr<T[]> data_;
  int64_t capacity_ = 0;
};

// Rows `rows` x `cols` of a matrix with leading dimension `ld`, rounded to
// bf16 into a dense [rows, cols] buffer.
uint16_t* PackBf16(const float* src, int64_t rows, int64_t cols, int64_t ld,
                   Scratch<uint16_t>& dst) {
  uint16_t* out = dst.Get(rows * cols);
#pragma omp parallel for if (ShouldParallelize(rows * cols) && !omp_in_parallel())
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = src + r * ld;
    uint16_t* dst_row = out + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) dst_row[c] = Bf16Bits(row[c]);
  }
  return out;
}

const dnnl::engine& Engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One primitive per (transposes, alpha, beta), with every size and stride a
// run-time value: the MoE experts' row counts change every step, and a
// primitive per shape would generate a kernel per shape. Run-time strides let
// an operand keep its leading dimension (a bf16 copy made by RoundToBf16, the
// gate and up halves of a SwiGLU projection written into one buffer) with no
// copy in between. Each thread keeps its own (GemmBatched calls in parallel).
using PrimitiveKey = std::tuple<bool, bool, float, float>;

struct Matmul {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul primitive;
};

constexpr memory::dim kAny = DNNL_RUNTIME_DIM_VAL;

// A row-major [rows, cols] operand whose rows are `ld` apart, or, when
// `transposed`, one stored as [cols, rows] (so its logical rows are 1 apart
// and its logical columns `ld` apart).
memory::desc Strided(memory::dim rows, memory::dim cols, memory::dim ld, memory::data_type type,
                     bool transposed) {
  return memory::desc({rows, cols}, type,
                      transposed ? memory::dims{1, ld} : memory::dims{ld, 1});
}

Matmul MakeMatmul(bool trans_a, bool trans_b, float alpha, float beta) {
  const memory::desc a_md = Strided(kAny, kAny, kAny, memory::data_type::bf16, trans_a);
  const memory::desc b_md = Strided(kAny, kAny, kAny, memory::data_type::bf16, trans_b);
  const memory::desc c_md = Strided(kAny, kAny, kAny, memory::data_type::f32, false);
  dnnl::primitive_attr attr;
  if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
  if (beta != 0.0f) {
    dnnl::post_ops ops;
    ops.append_sum(beta);
    attr.set_post_ops(ops);
  }
  const dnnl::matmul::desc desc(a_md, b_md, c_md);
  dnnl::matmul::primitive_desc pd(desc, attr, Engine());
  return {pd, dnnl::matmul(pd)};
}

const Matmul& CachedMatmul(const PrimitiveKey& key) {
  thread_local std::map<PrimitiveKey, Matmul> cache;
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const auto& [ta, tb, alpha, beta] = key;
  return cache.emplace(key, MakeMatmul(ta, tb, alpha, beta)).first->second;
}

}  // namespace

float RoundToBf16(float x) { return std::bit_cast<float>(uint32_t{Bf16Bits(x)} << 16); }

std::string Bf16GemmSupport(std::string* why) {
  try {
    MakeMatmul(false, false, 1.0f, 0.0f);
  } catch (const dnnl::error& e) {
    *why = std::string("oneDNN has no bf16 matmul for this CPU (") + e.what() + ")";
    return "";
  }
  const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
  const bool native = isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx;
  return native ? "native" : "emulated";
}

void RoundToBf16(const float* x, uint16_t* y, int64_t n) {
  // `parallel:` so that the condition, which is false inside the region
  // (omp_in_parallel), does not also turn the simd off.
#pragma omp parallel for simd schedule(static) if (parallel : ShouldParallelize(n) && !omp_in_parallel())
  for (int64_t i = 0; i < n; ++i) y[i] = Bf16Bits(x[i]);
}

void GemmBf16(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
              const float* a, const uint16_t* a16, int64_t lda, const float* b,
              const uint16_t* b16, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0 || k == 0) {
    Gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  thread_local Scratch<uint16_t> a_scratch, b_scratch;
  // Stored shapes: A is [m, k] or, transposed, [k, m]; B is [k, n] or [n, k].
  // An operand without a copy is rounded into dense scratch (its leading
  // dimension becomes its stored row length).
  if (a16 == nullptr) {
    a16 = PackBf16(a, trans_a ? k : m, trans_a ? m : k, lda, a_scratch);
    lda = trans_a ? m : k;
  }
  if (b16 == nullptr) {
    b16 = PackBf16(b, trans_b ? n : k, trans_b ? k : n, ldb, b_scratch);
    ldb = trans_b ? k : n;
  }
  const Matmul& matmul = CachedMatmul({trans_a, trans_b, alpha, beta});
  memory a_mem(Strided(m, k, lda, memory::data_type::bf16, trans_a), Engine(),
               const_cast<uint16_t*>(a16));
  memory b_mem(Strided(k, n, ldb, memory::data_type::bf16, trans_b), Engine(),
               const_cast<uint16_t*>(b16));
  memory c_mem(Strided(m, n, ldc, memory::data_type::f32, false), Engine(), c);
  thread_local dnnl::stream stream(Engine());
  matmul.primitive.execute(stream, {{DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, b_mem}, {DNNL_ARG_DST, c_mem}});
  stream.wait();
}

void GemmBatchedBf16(bool trans_a, bool trans_b, int64_t batch, int64_t m, int64_t n, int64_t k,
                     float alpha, const float* a, int64_t lda, int64_t stride_a, const float* b,
                     int64_t ldb, int64_t stride_b, float beta, float* c, int64_t ldc,
                     int64_t stride_c) {
  if (batch == 0 || m == 0 || n == 0) return;
#pragma omp parallel for schedule(static) if (GemmBatchPerThread(batch, m, n, k))
  for (int64_t i = 0; i < batch; ++i) {
    GemmBf16(trans_a, trans_b, m, n, k, alpha, a + i * stride_a, lda, b + i * stride_b, ldb, beta,
             c + i * stride_c, ldc);
  }
}

}  // namespace tessera::cpu
