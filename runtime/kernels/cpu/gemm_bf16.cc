#include "runtime/kernels/cpu/gemm_bf16.h"

#include <bit>
#include <map>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "runtime/base/status.h"
#include "runtime/kernels/cpu/gemm.h"
#include "runtime/kernels/cpu/parallel_loops.h"

namespace tessera::cpu {
namespace {

using dnnl::memory;

inline uint16_t Bf16Bits(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

// Rows `rows` x `cols` of a matrix with leading dimension `ld`, rounded to
// bf16 into a dense [rows, cols] buffer.
void PackBf16(const float* src, int64_t rows, int64_t cols, int64_t ld, std::vector<uint16_t>& dst) {
  dst.resize(static_cast<size_t>(rows * cols));
  uint16_t* out = dst.data();
#pragma omp parallel for if (ShouldParallelize(rows * cols) && !omp_in_parallel())
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = src + r * ld;
    uint16_t* dst_row = out + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) dst_row[c] = Bf16Bits(row[c]);
  }
}

const dnnl::engine& Engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One primitive per shape; each thread keeps its own (GemmBatched calls in
// parallel, and oneDNN's primitive cache still shares the kernels).
using ShapeKey = std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, float, float>;

struct Matmul {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul primitive;
};

Matmul MakeMatmul(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, int64_t ldc,
                        float alpha, float beta) {
  const memory::desc a_md({m, k}, memory::data_type::bf16,
                          trans_a ? memory::dims{1, m} : memory::dims{k, 1});
  const memory::desc b_md({k, n}, memory::data_type::bf16,
                          trans_b ? memory::dims{1, k} : memory::dims{n, 1});
  const memory::desc c_md({m, n}, memory::data_type::f32, memory::dims{ldc, 1});
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

const Matmul& CachedMatmul(const ShapeKey& key) {
  thread_local std::map<ShapeKey, Matmul> cache;
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() >= 512) cache.clear();
  const auto& [ta, tb, m, n, k, ldc, alpha, beta] = key;
  return cache.emplace(key, MakeMatmul(ta, tb, m, n, k, ldc, alpha, beta)).first->second;
}

}  // namespace

float RoundToBf16(float x) { return std::bit_cast<float>(uint32_t{Bf16Bits(x)} << 16); }

std::string Bf16GemmSupport(std::string* why) {
  try {
    MakeMatmul(false, false, 16, 16, 16, 16, 1.0f, 0.0f);
  } catch (const dnnl::error& e) {
    *why = std::string("oneDNN has no bf16 matmul for this CPU (") + e.what() + ")";
    return "";
  }
  const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
  const bool native = isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx;
  return native ? "native" : "emulated";
}

void GemmBf16(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
              const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
              int64_t ldc) {
  if (m == 0 || n == 0 || k == 0) {
    Gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  thread_local std::vector<uint16_t> a16, b16;
  // Stored shapes: A is [m, k] or, transposed, [k, m]; B is [k, n] or [n, k].
  PackBf16(a, trans_a ? k : m, trans_a ? m : k, lda, a16);
  PackBf16(b, trans_b ? n : k, trans_b ? k : n, ldb, b16);
  const Matmul& matmul = CachedMatmul({trans_a, trans_b, m, n, k, ldc, alpha, beta});
  memory a_mem(matmul.pd.src_desc(), Engine(), a16.data());
  memory b_mem(matmul.pd.weights_desc(), Engine(), b16.data());
  memory c_mem(matmul.pd.dst_desc(), Engine(), c);
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
