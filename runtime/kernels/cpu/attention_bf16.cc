// bf16 attention on the CPU (attention_bf16.h): FlashAttention-2 as
// attention.cc, with every product on bf16 pairs.
//
// Layout of the bf16 buffers. A product C [m, n] (+)= A [m, k] B [k, n] reads
//   A as rows of `Word`s: word p of row r holds A[r][2p] (low half) and
//     A[r][2p + 1] (high half);
//   B as "pair rows": word c of pair row p holds B[2p][c] and B[2p + 1][c];
// which is what `vdpbf16ps` multiplies: a broadcast A word against 16 B words
// adds both products of a pair into 16 fp32 sums. n is padded to a multiple
// of 16 and k to an even count, with zeros, in every buffer.
//
// The operands are rounded once per call. The forward pass, with at least 4
// heads per thread, packs a head's Q, K and V into the thread's scratch and
// runs all its query blocks while they are in cache; with fewer (one long
// sequence) it packs every head first (a parallel loop over heads) and then
// shares out the query blocks (a second one), so every core has work. The
// backward pass packs one head's Q, K, V and dO (seven layouts) into the
// thread's scratch when it starts that head. Only P and dS are rounded inside the block loops, once
// per block, as the GPU rounds them once per tile. Converting inside the
// products instead (oneDNN bf16 matmuls on fp32 tiles) made the op slower
// than fp32 (docs/precision.md).
#include "runtime/kernels/cpu/attention_bf16.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define TESSERA_ATTENTION_BF16_X86 1
#endif

#include "runtime/kernels/cpu/vector_math.h"

namespace tessera::cpu {
namespace {

using Word = uint32_t;  // two bf16, the lower index in the low half

// Query rows per block (an even count: P's pair rows never straddle blocks)
// and keys per block, as attention.cc.
constexpr int64_t kQueryBlock = 64;
constexpr int64_t kKeyBlock = 256;

std::atomic<bool> force_portable{false};

int64_t RoundUp(int64_t x, int64_t multiple) { return (x + multiple - 1) / multiple * multiple; }

// Round to nearest even, NaN kept quiet: GemmBf16's rounding (gemm_bf16.cc)
// and the GPU's __float2bfloat16_rn.
inline uint32_t Bf16Bits(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (bits >> 16) | 0x40u;
  return (bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded;
}
inline Word Pack(float lo, float hi) { return Bf16Bits(lo) | Bf16Bits(hi) << 16; }
inline float Lo(Word w) { return std::bit_cast<float>(w << 16); }
inline float Hi(Word w) { return std::bit_cast<float>(w & 0xffff0000u); }

// Per-thread buffer that only grows (no zero-fill on reuse).
template <typename T>
T* Grow(std::vector<T>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
  return buffer.data();
}

// ---- Packing (plain loops: the compiler vectorizes them for the build's target) ----

// A rows: dst[r * ld + p] = (src[r][2p], src[r][2p + 1]) for r < rows;
// columns past `cols` and words past cols/2 up to `ld` are zero. On a
// little-endian machine a row of words is the row's bf16 values in order.
void PackRows(const float* src, int64_t stride, int64_t rows, int64_t cols, Word* dst,
              int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = src + r * stride;
    uint16_t* y = reinterpret_cast<uint16_t*>(dst + r * ld);
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) y[c] = static_cast<uint16_t>(Bf16Bits(x[c]));
    std::fill(y + cols, y + 2 * ld, uint16_t{0});
  }
}

// B of a product summed over the columns of `src` (Q K^T's K, dO V^T's V):
// dst[p * ld + r] = (src[r][2p], src[r][2p + 1]), p < ceil(cols / 2);
// r in [rows, ld) zero. Each row is rounded contiguously (in chunks of
// kChunk columns), then its words are scattered down the columns.
constexpr int64_t kChunk = 128;
void PackColumnPairs(const float* src, int64_t stride, int64_t rows, int64_t cols, Word* dst,
                     int64_t ld) {
  const int64_t pairs = (cols + 1) / 2;
  Word row[kChunk / 2];
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c0 = 0; c0 < cols; c0 += kChunk) {
      const int64_t n = std::min(kChunk, cols - c0), chunk_pairs = (n + 1) / 2;
      PackRows(src + r * stride + c0, stride, 1, n, row, chunk_pairs);
      Word* out = dst + c0 / 2 * ld + r;
      for (int64_t p = 0; p < chunk_pairs; ++p) out[p * ld] = row[p];
    }
  }
  for (int64_t p = 0; p < pairs; ++p) std::fill(dst + p * ld + rows, dst + (p + 1) * ld, Word{0});
}

// Pair rows (B of a product summed over the rows of `src`): dst[p * ld + c] =
// (src[2p][c], src[2p + 1][c]) for p < pair_rows; a row past `rows` and
// columns past `cols` up to `ld` are zero.
void PackPairRows(const float* src, int64_t stride, int64_t rows, int64_t cols, Word* dst,
                  int64_t ld, int64_t pair_rows) {
  for (int64_t p = 0; p < pair_rows; ++p) {
    Word* w = dst + p * ld;
    const int64_t r = 2 * p;
    if (r + 1 < rows) {
      const float* x0 = src + r * stride;
      const float* x1 = x0 + stride;
      for (int64_t c = 0; c < cols; ++c) w[c] = Pack(x0[c], x1[c]);
    } else if (r < rows) {
      const float* x0 = src + r * stride;
      for (int64_t c = 0; c < cols; ++c) w[c] = Pack(x0[c], 0.0f);
    } else {
      std::fill(w, w + cols, Word{0});
    }
    std::fill(w + cols, w + ld, Word{0});
  }
}

// A of a product summed over the rows of `src` (dS^T Q's Q^T, P^T dO's dO^T):
// dst[c * ld + p] = (src[2p][c], src[2p + 1][c]) for c < cols, p < ld; rows
// past `rows` zero. Each pair of rows is packed contiguously (in chunks),
// then scattered down the columns.
void PackTransposedPairs(const float* src, int64_t stride, int64_t rows, int64_t cols, Word* dst,
                         int64_t ld) {
  Word words[kChunk];
  for (int64_t p = 0; p < ld; ++p) {
    const int64_t r = 2 * p;
    for (int64_t c0 = 0; c0 < cols; c0 += kChunk) {
      const int64_t n = std::min(kChunk, cols - c0);
      // Rows past `rows` read nothing: PackPairRows zero-fills them.
      PackPairRows(src + r * stride + c0, stride, std::max<int64_t>(rows - r, 0), n, words, n, 1);
      Word* out = dst + c0 * ld + p;
      for (int64_t c = 0; c < n; ++c) out[c * ld] = words[c];
    }
  }
}

// ---- Products ----------------------------------------------------------------

// C [m, n] (+)= A [m, 2 kp] B [2 kp, n] on the layouts above; n % 16 == 0.
struct Product {
  const Word* a;
  int64_t lda;
  const Word* b;
  int64_t ldb;
  int64_t m, n, kp;
  float* c;
  int64_t ldc;
  bool accumulate;
};

// Where the CPU has no bf16 dot product: the same rounded inputs, each bf16
// product exact in fp32, summed in fp32.
void ProductPortable(const Product& p) {
  for (int64_t r = 0; r < p.m; ++r) {
    float* c = p.c + r * p.ldc;
    if (!p.accumulate) std::fill(c, c + p.n, 0.0f);
    const Word* a = p.a + r * p.lda;
    for (int64_t q = 0; q < p.kp; ++q) {
      const float a0 = Lo(a[q]), a1 = Hi(a[q]);
      if (a[q] == 0) continue;  // masked probabilities and padding
      const Word* b = p.b + q * p.ldb;
#pragma omp simd
      for (int64_t j = 0; j < p.n; ++j) c[j] += a0 * Lo(b[j]) + a1 * Hi(b[j]);
    }
  }
}

#ifdef TESSERA_ATTENTION_BF16_X86
#define TESSERA_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))

// One register tile: kRows rows x 16 kVecs columns of C, starting at (r0, c0).
// 6 x 4 holds 24 accumulators, 4 B vectors and the broadcast A word in the 32
// zmm registers.
template <int kRows, int kVecs>
TESSERA_BF16_TARGET void TileBf16(const Product& p, int64_t r0, int64_t c0) {
  __m512 acc[kRows][kVecs];
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kVecs; ++v) {
      acc[r][v] = p.accumulate ? _mm512_loadu_ps(p.c + (r0 + r) * p.ldc + c0 + 16 * v)
                               : _mm512_setzero_ps();
    }
  }
  const Word* a = p.a + r0 * p.lda;
  const Word* b = p.b + c0;
  for (int64_t q = 0; q < p.kp; ++q) {
    __m512bh bv[kVecs];
    for (int v = 0; v < kVecs; ++v) {
      bv[v] = (__m512bh)_mm512_loadu_si512(b + q * p.ldb + 16 * v);
    }
    for (int r = 0; r < kRows; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r * p.lda + q]));
      for (int v = 0; v < kVecs; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kVecs; ++v) {
      _mm512_storeu_ps(p.c + (r0 + r) * p.ldc + c0 + 16 * v, acc[r][v]);
    }
  }
}

using TileFn = void (*)(const Product&, int64_t, int64_t);
constexpr int kTileRows = 6, kTileVecs = 4;

template <int kRows>
TileFn TileFor(int vecs) {
  return vecs == 1 ? TileBf16<kRows, 1>
                   : vecs == 2 ? TileBf16<kRows, 2> : vecs == 3 ? TileBf16<kRows, 3> : TileBf16<kRows, 4>;
}
TileFn TileOf(int rows, int vecs) {
  switch (rows) {
    case 1: return TileFor<1>(vecs);
    case 2: return TileFor<2>(vecs);
    case 3: return TileFor<3>(vecs);
    case 4: return TileFor<4>(vecs);
    case 5: return TileFor<5>(vecs);
    default: return TileFor<6>(vecs);
  }
}

// Columns in panels of 64 (the B panel, kp x 64 words, stays in L1 while the
// row tiles pass over it).
void ProductBf16(const Product& p) {
  for (int64_t c0 = 0; c0 < p.n; c0 += 16 * kTileVecs) {
    const int vecs = static_cast<int>(std::min<int64_t>(kTileVecs, (p.n - c0) / 16));
    const TileFn full = TileOf(kTileRows, vecs);
    int64_t r0 = 0;
    for (; r0 + kTileRows <= p.m; r0 += kTileRows) full(p, r0, c0);
    if (r0 < p.m) TileOf(static_cast<int>(p.m - r0), vecs)(p, r0, c0);
  }
}

bool CpuHasBf16Dot() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}
#else
bool CpuHasBf16Dot() { return false; }
void ProductBf16(const Product& p) { ProductPortable(p); }
#endif

bool UseDot() {
  static const bool has = CpuHasBf16Dot();
  return has && !force_portable.load(std::memory_order_relaxed);
}

void Multiply(const Product& p, bool dot) {
  if (p.m == 0 || p.n == 0) return;
  if (dot) {
    ProductBf16(p);
  } else {
    ProductPortable(p);
  }
}

// Keys of block [k0, k0 + bk) that query `query` may see.
inline int64_t VisibleKeys(bool causal, int64_t query, int64_t k0, int64_t bk) {
  if (!causal) return bk;
  return std::clamp<int64_t>(query - k0 + 1, 0, bk);
}

inline int64_t HeadOffset(const AttentionShape& s, int64_t b, int64_t h, int64_t row_stride) {
  return b * s.seq * row_stride + h * s.head_dim;
}

// Padded extents of one head's buffers.
struct Extents {
  int64_t dh, dh_pairs, dh16;  // head_dim, its pairs, rounded up to 16
  int64_t seq, seq16, seq_pairs;  // keys as B columns (16s); queries as pairs
  explicit Extents(const AttentionShape& s)
      : dh(s.head_dim),
        dh_pairs((s.head_dim + 1) / 2),
        dh16(RoundUp(s.head_dim, 16)),
        seq(s.seq),
        seq16(RoundUp(s.seq, 16)),
        seq_pairs((s.seq + 1) / 2) {}
  // Q (or dO) rows [seq][dh_pairs]; K (or V) pairs of columns [dh_pairs][seq16];
  // K (or V) pair rows [seq16 / 2][dh16].
  int64_t rows() const { return seq * dh_pairs; }
  int64_t column_pairs() const { return dh_pairs * seq16; }
  int64_t pair_rows() const { return seq16 / 2 * dh16; }
};

}  // namespace

bool Bf16AttentionTakes(const AttentionShape& s) {
  return s.head_dim >= 16 && s.head_dim <= 128 && s.head_dim % 4 == 0 && s.row_stride % 4 == 0 &&
         s.row_stride >= s.heads * s.head_dim && s.batch > 0 && s.seq > 0 && s.heads > 0;
}

bool Bf16AttentionUsesDotInstructions() { return UseDot(); }

namespace internal {
void ForcePortableBf16Attention(bool portable) { force_portable.store(portable); }
}  // namespace internal

namespace {

// Packs one head's Q (rows), K (column pairs) and V (pair rows) at `packed`.
void PackForwardHead(const AttentionShape& s, const Extents& e, const float* q, const float* k,
                     const float* v, int64_t bh, Word* packed) {
  const int64_t in = HeadOffset(s, bh / s.heads, bh % s.heads, s.row_stride);
  Word* qa = packed;
  Word* kb = qa + e.rows();
  Word* vp = kb + e.column_pairs();
  PackRows(q + in, s.row_stride, s.seq, s.head_dim, qa, e.dh_pairs);
  PackColumnPairs(k + in, s.row_stride, s.seq, s.head_dim, kb, e.seq16);
  PackPairRows(v + in, s.row_stride, s.seq, s.head_dim, vp, e.dh16, e.seq16 / 2);
}

// Per-thread scratch of the forward's query blocks.
struct ForwardScratch {
  float* scores;    // [kQueryBlock, key_block16]
  float* acc;       // [kQueryBlock, dh16]
  float* row_max;   // [kQueryBlock], of the scaled scores
  float* row_sum;   // [kQueryBlock]
  uint16_t* probs;  // P rounded, [kQueryBlock, key_block16]
  static ForwardScratch Get(const Extents& e, int64_t key_block16) {
    thread_local std::vector<float> float_buffer;
    thread_local std::vector<uint16_t> probs_buffer;
    ForwardScratch f;
    f.scores = Grow(float_buffer, kQueryBlock * (key_block16 + e.dh16 + 2));
    f.acc = f.scores + kQueryBlock * key_block16;
    f.row_max = f.acc + kQueryBlock * e.dh16;
    f.row_sum = f.row_max + kQueryBlock;
    f.probs = Grow(probs_buffer, kQueryBlock * key_block16);
    return f;
  }
};

// Query rows [q0, q0 + bq) of head bh from its packed operands: out rows and lse.
void ForwardQueryBlock(const AttentionShape& s, const Extents& e, const Word* packed, int64_t bh,
                       int64_t q0, const ForwardScratch& f, bool dot, float* out, float* lse) {
  const int64_t bq = std::min(kQueryBlock, s.seq - q0);
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  const Word* qa = packed;
  const Word* kb = qa + e.rows();
  const Word* vp = kb + e.column_pairs();
  const int64_t key_end = s.causal ? q0 + bq : s.seq;
  float* scores = f.scores;
  float* acc = f.acc;
  float* row_max = f.row_max;
  float* row_sum = f.row_sum;
  uint16_t* probs = f.probs;
  std::fill(row_max, row_max + bq, -std::numeric_limits<float>::infinity());
  std::fill(row_sum, row_sum + bq, 0.0f);
  for (int64_t k0 = 0; k0 < key_end; k0 += kKeyBlock) {
    const int64_t bk = std::min(kKeyBlock, key_end - k0);
    const int64_t bk16 = RoundUp(bk, 16);
    // scores [bq, bk16] = Q_blk K_blk^T (unscaled, as the GPU's mma)
    Multiply({qa + q0 * e.dh_pairs, e.dh_pairs, kb + k0, e.seq16, bq, bk16, e.dh_pairs, scores,
              bk16, false},
             dot);
    for (int64_t i = 0; i < bq; ++i) {
      const float* row = scores + i * bk16;
      const int64_t visible = VisibleKeys(s.causal, q0 + i, k0, bk);
      float raw_max = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : raw_max)
      for (int64_t j = 0; j < visible; ++j) raw_max = row[j] > raw_max ? row[j] : raw_max;
      // The scale is positive: the max of the scaled scores is the scaled max.
      const float block_max = std::max(row_max[i], raw_max * scale);
      float sum = 0.0f;
      uint16_t* p = probs + i * bk16;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < visible; ++j) {
        const float x = FastExp(row[j] * scale - block_max);
        sum += x;  // the row sum adds P unrounded, as the GPU's
        p[j] = static_cast<uint16_t>(Bf16Bits(x));
      }
      std::fill(p + visible, p + bk16, uint16_t{0});
      // The first key block sees key 0, so row_max is finite from then on.
      const float correction = k0 == 0 ? 0.0f : std::exp(row_max[i] - block_max);
      row_sum[i] = row_sum[i] * correction + sum;
      row_max[i] = block_max;
      if (k0 > 0 && correction != 1.0f) {
        float* o = acc + i * e.dh16;
#pragma omp simd
        for (int64_t d = 0; d < e.dh16; ++d) o[d] *= correction;
      }
    }
    // acc [bq, dh16] (+)= bf16(P) [bq, bk16] V_blk [bk16, dh16]
    Multiply({reinterpret_cast<const Word*>(probs), bk16 / 2, vp + k0 / 2 * e.dh16, e.dh16, bq,
              e.dh16, bk16 / 2, acc, e.dh16, k0 > 0},
             dot);
  }
  const int64_t out_stride = s.heads * s.head_dim;
  float* out_blk = out + HeadOffset(s, bh / s.heads, bh % s.heads, out_stride) + q0 * out_stride;
  for (int64_t i = 0; i < bq; ++i) {
    const float inv = 1.0f / row_sum[i];
    const float* a = acc + i * e.dh16;
    float* o = out_blk + i * out_stride;
#pragma omp simd
    for (int64_t d = 0; d < s.head_dim; ++d) o[d] = a[d] * inv;
    lse[bh * s.seq + q0 + i] = row_max[i] + std::log(row_sum[i]);
  }
}

}  // namespace

void AttentionForwardBf16(const AttentionShape& shape, const float* q, const float* k,
                          const float* v, float* out, float* lse) {
  const AttentionShape& s = shape;
  if (s.batch == 0 || s.seq == 0 || s.heads == 0 || s.head_dim == 0) return;
  const Extents e(s);
  const int64_t heads = s.batch * s.heads;
  const int64_t per_head = e.rows() + e.column_pairs() + e.pair_rows();
  const bool dot = UseDot();
  const int64_t query_blocks = (s.seq + kQueryBlock - 1) / kQueryBlock;
  const int64_t key_block16 = RoundUp(std::min(kKeyBlock, s.seq), 16);

  // With enough heads for every thread, a thread packs a head and runs all
  // its query blocks at once, while the packed head is in its cache.
  if (heads >= 4 * static_cast<int64_t>(omp_get_max_threads())) {
#pragma omp parallel
    {
      thread_local std::vector<Word> head_buffer;
      Word* packed = Grow(head_buffer, per_head);
      const ForwardScratch f = ForwardScratch::Get(e, key_block16);
#pragma omp for schedule(dynamic, 1)
      for (int64_t bh = 0; bh < heads; ++bh) {
        PackForwardHead(s, e, q, k, v, bh, packed);
        for (int64_t q0 = 0; q0 < s.seq; q0 += kQueryBlock) {
          ForwardQueryBlock(s, e, packed, bh, q0, f, dot, out, lse);
        }
      }
    }
    return;
  }
  // Few heads (one long sequence): pack every head first (the caller's
  // thread keeps the buffer, B*H*S*Dh*6 bytes), then share out the query
  // blocks, so every thread has work.
  thread_local std::vector<Word> packed_buffer;
  Word* packed = Grow(packed_buffer, heads * per_head);
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < heads; ++bh) PackForwardHead(s, e, q, k, v, bh, packed + bh * per_head);
    // (the implicit barrier: every head is packed)
    const ForwardScratch f = ForwardScratch::Get(e, key_block16);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < heads * query_blocks; ++task) {
      const int64_t bh = task / query_blocks;
      ForwardQueryBlock(s, e, packed + bh * per_head, bh, (task % query_blocks) * kQueryBlock, f,
                        dot, out, lse);
    }
  }
}

void AttentionBackwardBf16(const AttentionShape& shape, const float* q, const float* k,
                           const float* v, const float* out, const float* dout, const float* lse,
                           float* dq, float* dk, float* dv) {
  const AttentionShape& s = shape;
  if (s.batch == 0 || s.seq == 0 || s.heads == 0 || s.head_dim == 0) return;
  const Extents e(s);
  const int64_t heads = s.batch * s.heads;
  const bool dot = UseDot();
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  const int64_t out_stride = s.heads * s.head_dim;
  const int64_t key_block16 = RoundUp(std::min(kKeyBlock, s.seq), 16);
  // Q^T and dO^T as A rows [dh][seq_pairs] (pairs along the queries).
  const int64_t transposed = e.dh * e.seq_pairs;

#pragma omp parallel
  {
    thread_local std::vector<Word> head_buffer, block_buffer;
    thread_local std::vector<float> float_buffer;
    Word* qa = Grow(head_buffer, 2 * e.rows() + 2 * e.column_pairs() + e.pair_rows() +
                                     2 * transposed);
    Word* da = qa + e.rows();          // dO rows
    Word* kb = da + e.rows();          // K column pairs (for Q K^T)
    Word* vb = kb + e.column_pairs();  // V column pairs (for dO V^T)
    Word* kp = vb + e.column_pairs();  // K pair rows (for dS K)
    Word* qt = kp + e.pair_rows();     // Q^T (for dS^T Q)
    Word* dt = qt + transposed;        // dO^T (for P^T dO)
    // P and dS pair rows [bq / 2][key_block16]; dS rows [bq][key_block16 / 2].
    const int64_t block_pairs = kQueryBlock / 2 * key_block16;
    Word* pb = Grow(block_buffer, 2 * block_pairs + kQueryBlock * key_block16 / 2);
    Word* dsb = pb + block_pairs;
    Word* dsa = dsb + block_pairs;
    float* probs = Grow(float_buffer, 2 * kQueryBlock * key_block16 + s.seq + s.seq * e.dh16 +
                                          2 * e.dh * e.seq16);
    float* dprobs = probs + kQueryBlock * key_block16;
    float* d_row = dprobs + kQueryBlock * key_block16;
    float* dq_acc = d_row + s.seq;             // [seq][dh16]
    float* dk_acc = dq_acc + s.seq * e.dh16;   // dK^T [dh][seq16]
    float* dv_acc = dk_acc + e.dh * e.seq16;   // dV^T [dh][seq16]

#pragma omp for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < heads; ++bh) {
      const int64_t b = bh / s.heads, h = bh % s.heads;
      const int64_t in = HeadOffset(s, b, h, s.row_stride);
      const int64_t od = HeadOffset(s, b, h, out_stride);
      const float* qh = q + in;
      const float* kh = k + in;
      const float* vh = v + in;
      const float* oh = out + od;
      const float* gh = dout + od;
      const float* lh = lse + bh * s.seq;
      PackRows(qh, s.row_stride, s.seq, s.head_dim, qa, e.dh_pairs);
      PackRows(gh, out_stride, s.seq, s.head_dim, da, e.dh_pairs);
      PackColumnPairs(kh, s.row_stride, s.seq, s.head_dim, kb, e.seq16);
      PackColumnPairs(vh, s.row_stride, s.seq, s.head_dim, vb, e.seq16);
      PackPairRows(kh, s.row_stride, s.seq, s.head_dim, kp, e.dh16, e.seq16 / 2);
      PackTransposedPairs(qh, s.row_stride, s.seq, s.head_dim, qt, e.seq_pairs);
      PackTransposedPairs(gh, out_stride, s.seq, s.head_dim, dt, e.seq_pairs);
      // D_i = bf16(dO_i) . O_i, with dO rounded as the dP product sees it.
      for (int64_t i = 0; i < s.seq; ++i) {
        const float* o = oh + i * out_stride;
        const float* g = gh + i * out_stride;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t d = 0; d < s.head_dim; ++d) {
          sum += std::bit_cast<float>(Bf16Bits(g[d]) << 16) * o[d];
        }
        d_row[i] = sum;
      }
      std::fill(dq_acc, dq_acc + s.seq * e.dh16, 0.0f);
      std::fill(dk_acc, dk_acc + 2 * e.dh * e.seq16, 0.0f);

      for (int64_t q0 = 0; q0 < s.seq; q0 += kQueryBlock) {
        const int64_t bq = std::min(kQueryBlock, s.seq - q0);
        const int64_t bq_pairs = (bq + 1) / 2;
        const int64_t key_end = s.causal ? q0 + bq : s.seq;
        for (int64_t k0 = 0; k0 < key_end; k0 += kKeyBlock) {
          const int64_t bk = std::min(kKeyBlock, key_end - k0);
          const int64_t bk16 = RoundUp(bk, 16);
          // probs = Q_blk K_blk^T, dprobs = dO_blk V_blk^T  [bq, bk16]
          Multiply({qa + q0 * e.dh_pairs, e.dh_pairs, kb + k0, e.seq16, bq, bk16, e.dh_pairs,
                    probs, bk16, false},
                   dot);
          Multiply({da + q0 * e.dh_pairs, e.dh_pairs, vb + k0, e.seq16, bq, bk16, e.dh_pairs,
                    dprobs, bk16, false},
                   dot);
          for (int64_t i = 0; i < bq; ++i) {
            float* p = probs + i * bk16;
            float* ds = dprobs + i * bk16;
            const int64_t visible = VisibleKeys(s.causal, q0 + i, k0, bk);
            const float row_lse = lh[q0 + i];
            const float row_d = d_row[q0 + i];
#pragma omp simd
            for (int64_t j = 0; j < visible; ++j) {
              p[j] = FastExp(p[j] * scale - row_lse);
              ds[j] = p[j] * (ds[j] - row_d);
            }
            std::fill(p + visible, p + bk16, 0.0f);
            std::fill(ds + visible, ds + bk16, 0.0f);
          }
          // P and dS rounded once, in the two layouts their products read.
          PackPairRows(probs, bk16, bq, bk16, pb, bk16, bq_pairs);
          PackPairRows(dprobs, bk16, bq, bk16, dsb, bk16, bq_pairs);
          PackRows(dprobs, bk16, bq, bk16, dsa, bk16 / 2);
          // dV^T [dh, bk] += dO_blk^T P,  dK^T [dh, bk] += Q_blk^T dS
          Multiply({dt + q0 / 2, e.seq_pairs, pb, bk16, e.dh, bk16, bq_pairs, dv_acc + k0, e.seq16,
                    true},
                   dot);
          Multiply({qt + q0 / 2, e.seq_pairs, dsb, bk16, e.dh, bk16, bq_pairs, dk_acc + k0,
                    e.seq16, true},
                   dot);
          // dQ_blk [bq, dh16] += dS K_blk
          Multiply({dsa, bk16 / 2, kp + k0 / 2 * e.dh16, e.dh16, bq, e.dh16, bk16 / 2,
                    dq_acc + q0 * e.dh16, e.dh16, true},
                   dot);
        }
      }
      for (int64_t i = 0; i < s.seq; ++i) {
        const float* a = dq_acc + i * e.dh16;
        float* g = dq + in + i * s.row_stride;
#pragma omp simd
        for (int64_t d = 0; d < s.head_dim; ++d) g[d] = scale * a[d];
      }
      for (int64_t j = 0; j < s.seq; ++j) {
        float* gk = dk + in + j * s.row_stride;
        float* gv = dv + in + j * s.row_stride;
        for (int64_t d = 0; d < s.head_dim; ++d) {
          gk[d] = scale * dk_acc[d * e.seq16 + j];
          gv[d] = dv_acc[d * e.seq16 + j];
        }
      }
    }
  }
}

}  // namespace tessera::cpu
