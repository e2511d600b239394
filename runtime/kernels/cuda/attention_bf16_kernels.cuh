// The device code of the tensor-core attention (attention_bf16.cu), kept
// apart so that a host emulation of the CUDA primitives can run the very same
// kernels without a GPU (tests/runtime/kernels/cuda/
// attention_bf16_emulation_test.cc). No include guard and no namespace: the
// includer wraps it in an unnamed namespace of its own, after including
// <cuda_bf16.h>, <cmath>, <cstdint> and attention_bf16.h, and defines
//   void Mma(float (&c)[4], const FragA& a, const FragB& b)  // mma.sync m16n8k16
//   unsigned char* SharedMemory()                             // the block's dynamic shared memory
// plus, on the host, threadIdx / blockIdx / blockDim / gridDim,
// __syncthreads, __shfl_xor_sync, __ldg and min.
//
// Every block has 4 warps and every warp owns 16 rows of the block's tile
// (queries in the forward and dQ kernels, keys in the dK/dV kernel), so a
// warp's products are [16 x n] and their fp32 accumulators live in
// registers in the m16n8 "C" layout:
//
//   lane = 4 g + t; c[0], c[1] are row g, columns 2t, 2t+1 of an 8-column
//   tile; c[2], c[3] the same columns of row g + 8.
//
// The softmax works on those registers (a row's values are spread over the
// 4 lanes of a quad, reduced with two shuffles), and the C tiles of P and dS
// are exactly the "A" fragments of the next product once rounded to bf16
// (ToA), so probabilities never go through shared memory.
//
// Shared-memory tiles are bf16, either row-major [rows][cols + 8] or
// transposed [cols][rows + 8], and fragments come out of them by ldmatrix:
// the 8 extra columns make the row pitch 4 (or 20) words modulo 32 banks, so
// the 8 rows of 16 bytes of each 8 x 8 matrix it reads hit 32 different
// banks. A product's B operand must be
// stored [n][k] (each n's k values contiguous): K for Q K^T, V^T for P V,
// Q for K Q^T, dO for V dO^T, dO^T for P^T dO, Q^T for dS^T Q, K^T for dS K.
// Tiles are converted from the fp32 operands as they are staged.
// `#pragma unroll` under nvcc; nothing for the host compiler of the
// emulation, which would warn about a pragma it does not know.
#if defined(__CUDACC__)
#define TESSERA_UNROLL _Pragma("unroll")
#define TESSERA_NO_UNROLL _Pragma("unroll 1")
#else
#define TESSERA_UNROLL
#define TESSERA_NO_UNROLL
#endif

using Bf16 = __nv_bfloat16;

constexpr int kWarpSize = 32;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kRowsPerWarp = 16;
constexpr int kPad = 8;  // bf16 columns past each shared row (see the file comment)
constexpr float kLog2e = 1.4426950408889634f;

// Tile sizes of the kernels built for `kDh` columns. The dK/dV kernel holds
// two [16 x kDh] accumulators per warp, so at 96 and 128 columns it walks the
// queries 32 at a time to stay within 255 registers.
template <int kDh>
struct Config {
  static_assert(kDh % 16 == 0, "head dims are whole mma k-steps");
  static constexpr int kLd = kDh + kPad;  // pitch of a row-major tile
  static constexpr int kForwardQueries = kWarps * kRowsPerWarp, kForwardKeys = 64;
  static constexpr int kKvKeys = kWarps * kRowsPerWarp, kKvQueries = kDh <= 64 ? 64 : 32;
  static constexpr int kQQueries = kWarps * kRowsPerWarp, kQKeys = 64;

  static constexpr size_t RowMajor(int rows) { return sizeof(Bf16) * rows * kLd; }
  static constexpr size_t Transposed(int rows) { return sizeof(Bf16) * kDh * (rows + kPad); }
  // Q; K; V^T.
  static constexpr size_t kForwardSmem =
      RowMajor(kForwardQueries) + RowMajor(kForwardKeys) + Transposed(kForwardKeys);
  // K, V; Q, dO; Q^T, dO^T; the query tile's lse and D.
  static constexpr size_t kKvSmem = 2 * RowMajor(kKvKeys) + 2 * RowMajor(kKvQueries) +
                                    2 * Transposed(kKvQueries) + 2 * sizeof(float) * kKvQueries;
  // Q, dO; K, V; K^T.
  static constexpr size_t kQSmem =
      2 * RowMajor(kQQueries) + 2 * RowMajor(kQKeys) + Transposed(kQKeys);
  static_assert(kForwardSmem <= kBf16AttentionMaxSmem && kKvSmem <= kBf16AttentionMaxSmem &&
                kQSmem <= kBf16AttentionMaxSmem);
};

// ---- Fragments ------------------------------------------------------------

struct FragA {  // 16 x 16, row-major: 8 bf16 per lane
  uint32_t x[4];
};
struct FragB {  // 16 x 8 (k x n), "col": 4 bf16 per lane
  uint32_t x[2];
};

__device__ __forceinline__ uint32_t Pack(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // nearest even
  return static_cast<uint32_t>(__bfloat16_as_ushort(v.x)) |
         static_cast<uint32_t>(__bfloat16_as_ushort(v.y)) << 16;  // lo in the low half
}

// Defined by the includer: ldmatrix.sync.aligned.m8n8.x4 / .x2 .shared.b16.
// Lane i gives the address of row i % 8 of 8 x 8 matrix i / 8 (16 contiguous
// bytes, 16-byte aligned); register m of lane l receives the word holding
// row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1 of matrix m. That is the
// fragment layout of mma.m16n8k16, so one instruction loads a whole A (x4)
// or B (x2) fragment.
__device__ __forceinline__ void LoadMatrices4(const Bf16* row, uint32_t (&r)[4]);
__device__ __forceinline__ void LoadMatrices2(const Bf16* row, uint32_t (&r)[2]);

// A fragment of rows [r0, r0 + 16) x columns [c0, c0 + 16) of a row-major
// tile: matrices (rows 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15)
// are a.x[0..3].
__device__ __forceinline__ FragA LoadA(const Bf16* tile, int ld, int r0, int c0) {
  const int lane = threadIdx.x % kWarpSize;
  FragA a;
  LoadMatrices4(tile + (r0 + lane % 16) * ld + c0 + lane / 16 * 8, a.x);
  return a;
}

// B fragment (k in [k0, k0 + 16), n in [n0, n0 + 8)) of a tile stored [n][k]:
// matrices (n 0-7, k 0-7) and (n 0-7, k 8-15) are b.x[0], b.x[1]. Lanes
// 16-31's addresses are not read (x2); they repeat lanes 0-15's.
__device__ __forceinline__ FragB LoadB(const Bf16* tile, int ld, int n0, int k0) {
  const int lane = threadIdx.x % kWarpSize;
  FragB b;
  LoadMatrices2(tile + (n0 + lane % 8) * ld + k0 + lane / 8 % 2 * 8, b.x);
  return b;
}

// Defined by the includer: c += a b on the tensor cores (fp32 accumulation),
// and the block's dynamic shared memory (16-byte aligned).
__device__ __forceinline__ void Mma(float (&c)[4], const FragA& a, const FragB& b);
__device__ __forceinline__ unsigned char* SharedMemory();

// Columns [16 kk, 16 kk + 16) of a [16 x 8N] accumulator as the A fragment of
// the next product (the C tiles 2kk and 2kk+1 are its left and right halves),
// rounded to bf16.
template <int N>
__device__ __forceinline__ FragA ToA(const float (&c)[N][4], int kk) {
  FragA a;
  a.x[0] = Pack(c[2 * kk][0], c[2 * kk][1]);
  a.x[1] = Pack(c[2 * kk][2], c[2 * kk][3]);
  a.x[2] = Pack(c[2 * kk + 1][0], c[2 * kk + 1][1]);
  a.x[3] = Pack(c[2 * kk + 1][2], c[2 * kk + 1][3]);
  return a;
}

// ---- Staging ----------------------------------------------------------------

// Rows [0, kRows) of one head of an fp32 operand (row r at src + r * stride,
// columns [0, dh)) into bf16 shared tiles: row-major `rows` [kRows][kDh + 8]
// and/or transposed `cols` [kDh][kRows + 8]. Rows >= valid and columns >= dh
// are zeros. Each thread takes a pair of rows and 4 columns: 8 lanes read 8
// row pairs of the same 16 bytes, 4 such groups cover 64 contiguous bytes of
// each row, and the transposed copy stores one word (two rows) per column.
template <int kRows, int kDh, bool kRowMajor, bool kTransposed>
__device__ __forceinline__ void StageTile(const float* __restrict__ src, int64_t stride, int valid,
                                          int dh, Bf16* rows, Bf16* cols) {
  constexpr int kVecs = kDh / 4, kItems = kRows / 2 * kVecs;
  constexpr int kLd = kDh + kPad, kLdt = kRows + kPad;
  static_assert(kRows % 16 == 0 && kItems % kThreads == 0, "whole passes of the block");
TESSERA_UNROLL
  for (int pass = 0; pass < kItems / kThreads; ++pass) {
    const int e = pass * kThreads + threadIdx.x;
    const int pair = e % 8, c = (e / 8) % kVecs * 4, r = e / (8 * kVecs) * 16 + 2 * pair;
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    const bool in_cols = c < dh;
    const float4 x0 = in_cols && r < valid
                          ? __ldg(reinterpret_cast<const float4*>(src + r * stride + c))
                          : zero;
    const float4 x1 = in_cols && r + 1 < valid
                          ? __ldg(reinterpret_cast<const float4*>(src + (r + 1) * stride + c))
                          : zero;
    if constexpr (kRowMajor) {
      *reinterpret_cast<uint2*>(rows + r * kLd + c) = make_uint2(Pack(x0.x, x0.y), Pack(x0.z, x0.w));
      *reinterpret_cast<uint2*>(rows + (r + 1) * kLd + c) =
          make_uint2(Pack(x1.x, x1.y), Pack(x1.z, x1.w));
    }
    if constexpr (kTransposed) {
      *reinterpret_cast<uint32_t*>(cols + (c + 0) * kLdt + r) = Pack(x0.x, x1.x);
      *reinterpret_cast<uint32_t*>(cols + (c + 1) * kLdt + r) = Pack(x0.y, x1.y);
      *reinterpret_cast<uint32_t*>(cols + (c + 2) * kLdt + r) = Pack(x0.z, x1.z);
      *reinterpret_cast<uint32_t*>(cols + (c + 3) * kLdt + r) = Pack(x0.w, x1.w);
    }
  }
}

// Writes row g (half 0) or g + 8 (half 1) of a [16 x kDh] accumulator times
// `scale` to dst (the row's first column), columns < dh.
template <int kDh>
__device__ __forceinline__ void StoreRow(const float (&acc)[kDh / 8][4], int half, float scale,
                                         int dh, float* dst) {
  const int t = threadIdx.x % 4;
TESSERA_UNROLL
  for (int dt = 0; dt < kDh / 8; ++dt) {
    const int col = dt * 8 + 2 * t;
    if (col < dh) {
      *reinterpret_cast<float2*>(dst + col) =
          make_float2(scale * acc[dt][2 * half], scale * acc[dt][2 * half + 1]);
    }
  }
}

// ---- Kernels -------------------------------------------------------------------

// grid (B*H, ceil(S / 64)); causal blocks run the longest (last) query block first.
template <int kDh>
__global__ void __launch_bounds__(kThreads)
    ForwardKernel(AttentionShape a, const float* __restrict__ q, const float* __restrict__ k,
                  const float* __restrict__ v, float* __restrict__ out, float* __restrict__ lse,
                  float scale) {
  using C = Config<kDh>;
  constexpr int kBq = C::kForwardQueries, kBk = C::kForwardKeys, kLd = C::kLd, kLdt = kBk + kPad;
  unsigned char* smem = SharedMemory();
  Bf16* qs = reinterpret_cast<Bf16*>(smem);
  Bf16* ks = qs + kBq * kLd;
  Bf16* vt = ks + kBk * kLd;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const int seq = static_cast<int>(a.seq), dh = static_cast<int>(a.head_dim);
  const int64_t b = blockIdx.x / a.heads, h = blockIdx.x % a.heads, rs = a.row_stride;
  const int q0 = (a.causal ? gridDim.y - 1 - blockIdx.y : blockIdx.y) * kBq;
  const int64_t head = b * a.seq * rs + h * a.head_dim;  // (b, 0, h, 0)

  StageTile<kBq, kDh, true, false>(q + head + q0 * rs, rs, seq - q0, dh, qs, nullptr);
  __syncthreads();
  FragA qf[kDh / 16];
TESSERA_UNROLL
  for (int kk = 0; kk < kDh / 16; ++kk) qf[kk] = LoadA(qs, kLd, warp * kRowsPerWarp, kk * 16);

  const int first_row = q0 + warp * kRowsPerWarp;
  const int row[2] = {first_row + g, first_row + g + 8};
  const float scale_log2 = scale * kLog2e;
  float o[kDh / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY};  // row max of the raw scores so far
  float l[2] = {0.0f, 0.0f};            // this lane's part of the row sum of exp
  const int key_end = a.causal ? min(seq, q0 + kBq) : seq;
TESSERA_NO_UNROLL
  for (int k0 = 0; k0 < key_end; k0 += kBk) {
    __syncthreads();  // the previous tile is no longer read
    StageTile<kBk, kDh, true, false>(k + head + k0 * rs, rs, seq - k0, dh, ks, nullptr);
    StageTile<kBk, kDh, false, true>(v + head + k0 * rs, rs, seq - k0, dh, nullptr, vt);
    __syncthreads();

    float s[kBk / 8][4] = {};
TESSERA_UNROLL
    for (int kk = 0; kk < kDh / 16; ++kk) {
TESSERA_UNROLL
      for (int nt = 0; nt < kBk / 8; ++nt) Mma(s[nt], qf[kk], LoadB(ks, kLd, nt * 8, kk * 16));
    }
    // Keys past the sequence, and causally keys after the row's query, are -inf.
    if (k0 + kBk > seq || (a.causal && k0 + kBk - 1 > first_row)) {
TESSERA_UNROLL
      for (int nt = 0; nt < kBk / 8; ++nt) {
TESSERA_UNROLL
        for (int e = 0; e < 4; ++e) {
          const int j = k0 + nt * 8 + 2 * t + (e & 1);
          if (j >= seq || (a.causal && j > row[e / 2])) s[nt][e] = -INFINITY;
        }
      }
    }
    float mx[2] = {m[0], m[1]};
TESSERA_UNROLL
    for (int nt = 0; nt < kBk / 8; ++nt) {
TESSERA_UNROLL
      for (int e = 0; e < 4; ++e) mx[e / 2] = fmaxf(mx[e / 2], s[nt][e]);
    }
    float base[2];
TESSERA_UNROLL
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      // A row that has seen no visible key yet keeps l = 0 and o = 0.
      base[r] = mx[r] == -INFINITY ? 0.0f : mx[r] * scale_log2;
      const float correction = exp2f(m[r] * scale_log2 - base[r]);  // 0 while m = -inf
      m[r] = mx[r];
      l[r] *= correction;
TESSERA_UNROLL
      for (int dt = 0; dt < kDh / 8; ++dt) {
        o[dt][2 * r] *= correction;
        o[dt][2 * r + 1] *= correction;
      }
    }
TESSERA_UNROLL
    for (int nt = 0; nt < kBk / 8; ++nt) {
TESSERA_UNROLL
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = exp2f(fmaf(s[nt][e], scale_log2, -base[e / 2]));
        l[e / 2] += s[nt][e];
      }
    }
    // O += P V, P rounded to bf16 as the A operand.
TESSERA_UNROLL
    for (int kk = 0; kk < kBk / 16; ++kk) {
      const FragA p = ToA(s, kk);
TESSERA_UNROLL
      for (int dt = 0; dt < kDh / 8; ++dt) Mma(o[dt], p, LoadB(vt, kLdt, dt * 8, kk * 16));
    }
  }

  const int64_t od = a.heads * a.head_dim;
TESSERA_UNROLL
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    if (row[r] >= seq) continue;
    StoreRow<kDh>(o, r, 1.0f / l[r], dh, out + (b * a.seq + row[r]) * od + h * a.head_dim);
    if (t == 0) lse[(b * a.heads + h) * a.seq + row[r]] = m[r] * scale + logf(l[r]);
  }
}

// delta[b, h, i] = bf16(dO_i) . O_i (one warp per row): the D of dS = P (dP - D),
// with dO rounded as the dP product sees it.
__global__ void DeltaKernel(AttentionShape a, const float* __restrict__ out,
                            const float* __restrict__ dout, float* __restrict__ delta) {
  const int64_t row = int64_t{blockIdx.x} * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= a.batch * a.heads * a.seq) return;
  const int64_t i = row % a.seq, bh = row / a.seq, b = bh / a.heads, h = bh % a.heads;
  const int64_t at = (b * a.seq + i) * a.heads * a.head_dim + h * a.head_dim;
  float sum = 0.0f;
  for (int64_t d = lane; d < a.head_dim; d += kWarpSize) {
    sum += __bfloat162float(__float2bfloat16_rn(dout[at + d])) * out[at + d];
  }
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  }
  if (lane == 0) delta[row] = sum;
}

// dK, dV: grid (B*H, ceil(S / 64)), a block owns 64 keys (16 per warp) and
// walks the query tiles that can see them. Each warp computes the transposed
// products S^T = K Q^T and dP^T = V dO^T, so its keys are the rows of the C
// fragments and dV += P^T dO, dK += dS^T Q accumulate in its registers.
template <int kDh>
__global__ void __launch_bounds__(kThreads)
    KeyValueGradKernel(AttentionShape a, const float* __restrict__ q, const float* __restrict__ k,
                       const float* __restrict__ v, const float* __restrict__ dout,
                       const float* __restrict__ lse, const float* __restrict__ delta,
                       float* __restrict__ dk, float* __restrict__ dv, float scale) {
  using C = Config<kDh>;
  constexpr int kBk = C::kKvKeys, kBq = C::kKvQueries, kLd = C::kLd, kLdt = kBq + kPad;
  unsigned char* smem = SharedMemory();
  Bf16* ks = reinterpret_cast<Bf16*>(smem);
  Bf16* vs = ks + kBk * kLd;
  Bf16* qs = vs + kBk * kLd;
  Bf16* dos = qs + kBq * kLd;
  Bf16* qt = dos + kBq * kLd;
  Bf16* dot = qt + kDh * kLdt;
  float* lse2 = reinterpret_cast<float*>(dot + kDh * kLdt);  // lse * log2(e)
  float* dl = lse2 + kBq;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const int seq = static_cast<int>(a.seq), dh = static_cast<int>(a.head_dim);
  const int64_t bh = blockIdx.x, b = bh / a.heads, h = bh % a.heads, rs = a.row_stride;
  const int64_t od = a.heads * a.head_dim;
  const int64_t head = b * a.seq * rs + h * a.head_dim, out_head = b * a.seq * od + h * a.head_dim;
  const int j0 = blockIdx.y * kBk;

  StageTile<kBk, kDh, true, false>(k + head + j0 * rs, rs, seq - j0, dh, ks, nullptr);
  StageTile<kBk, kDh, true, false>(v + head + j0 * rs, rs, seq - j0, dh, vs, nullptr);
  const int first_key = j0 + warp * kRowsPerWarp;
  const int key[2] = {first_key + g, first_key + g + 8};
  const float scale_log2 = scale * kLog2e;
  float dk_acc[kDh / 8][4] = {}, dv_acc[kDh / 8][4] = {};
  // Causally only queries i >= j see key j: start at the tile holding j0.
  const int first = a.causal ? j0 / kBq * kBq : 0;
TESSERA_NO_UNROLL
  for (int i0 = first; i0 < seq; i0 += kBq) {
    __syncthreads();  // the previous tile is no longer read
    StageTile<kBq, kDh, true, true>(q + head + i0 * rs, rs, seq - i0, dh, qs, qt);
    StageTile<kBq, kDh, true, true>(dout + out_head + i0 * od, od, seq - i0, dh, dos, dot);
    for (int r = threadIdx.x; r < kBq; r += kThreads) {
      const bool in = i0 + r < seq;
      lse2[r] = in ? lse[bh * a.seq + i0 + r] * kLog2e : 0.0f;
      dl[r] = in ? delta[bh * a.seq + i0 + r] : 0.0f;
    }
    __syncthreads();

    float st[kBq / 8][4] = {}, dpt[kBq / 8][4] = {};
TESSERA_UNROLL
    for (int kk = 0; kk < kDh / 16; ++kk) {
      const FragA ka = LoadA(ks, kLd, warp * kRowsPerWarp, kk * 16);
      const FragA va = LoadA(vs, kLd, warp * kRowsPerWarp, kk * 16);
TESSERA_UNROLL
      for (int nt = 0; nt < kBq / 8; ++nt) {
        Mma(st[nt], ka, LoadB(qs, kLd, nt * 8, kk * 16));
        Mma(dpt[nt], va, LoadB(dos, kLd, nt * 8, kk * 16));
      }
    }
    // P^T = exp(scale S^T - lse), dS^T = P^T (dP^T - D); zero where the query
    // is past the sequence or (causally) before the key.
    const bool masked = i0 + kBq > seq || (a.causal && first_key + kRowsPerWarp - 1 > i0);
TESSERA_UNROLL
    for (int nt = 0; nt < kBq / 8; ++nt) {
TESSERA_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int col = nt * 8 + 2 * t + (e & 1), i = i0 + col;
        const bool visible = !masked || (i < seq && (!a.causal || key[e / 2] <= i));
        const float p = visible ? exp2f(fmaf(st[nt][e], scale_log2, -lse2[col])) : 0.0f;
        st[nt][e] = p;
        dpt[nt][e] = p * (dpt[nt][e] - dl[col]);
      }
    }
TESSERA_UNROLL
    for (int kk = 0; kk < kBq / 16; ++kk) {
      const FragA pa = ToA(st, kk), da = ToA(dpt, kk);
TESSERA_UNROLL
      for (int dt = 0; dt < kDh / 8; ++dt) {
        Mma(dv_acc[dt], pa, LoadB(dot, kLdt, dt * 8, kk * 16));
        Mma(dk_acc[dt], da, LoadB(qt, kLdt, dt * 8, kk * 16));
      }
    }
  }

TESSERA_UNROLL
  for (int r = 0; r < 2; ++r) {
    if (key[r] >= seq) continue;
    StoreRow<kDh>(dk_acc, r, scale, dh, dk + head + key[r] * rs);
    StoreRow<kDh>(dv_acc, r, 1.0f, dh, dv + head + key[r] * rs);
  }
}

// dQ: grid (B*H, ceil(S / 64)), a block owns 64 queries (16 per warp) and
// walks the key tiles they see; dQ += dS K accumulates in registers.
template <int kDh>
__global__ void __launch_bounds__(kThreads)
    QueryGradKernel(AttentionShape a, const float* __restrict__ q, const float* __restrict__ k,
                    const float* __restrict__ v, const float* __restrict__ dout,
                    const float* __restrict__ lse, const float* __restrict__ delta,
                    float* __restrict__ dq, float scale) {
  using C = Config<kDh>;
  constexpr int kBq = C::kQQueries, kBk = C::kQKeys, kLd = C::kLd, kLdt = kBk + kPad;
  unsigned char* smem = SharedMemory();
  Bf16* qs = reinterpret_cast<Bf16*>(smem);
  Bf16* dos = qs + kBq * kLd;
  Bf16* ks = dos + kBq * kLd;
  Bf16* vs = ks + kBk * kLd;
  Bf16* kt = vs + kBk * kLd;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const int seq = static_cast<int>(a.seq), dh = static_cast<int>(a.head_dim);
  const int64_t bh = blockIdx.x, b = bh / a.heads, h = bh % a.heads, rs = a.row_stride;
  const int64_t od = a.heads * a.head_dim;
  const int64_t head = b * a.seq * rs + h * a.head_dim, out_head = b * a.seq * od + h * a.head_dim;
  const int q0 = (a.causal ? gridDim.y - 1 - blockIdx.y : blockIdx.y) * kBq;

  StageTile<kBq, kDh, true, false>(q + head + q0 * rs, rs, seq - q0, dh, qs, nullptr);
  StageTile<kBq, kDh, true, false>(dout + out_head + q0 * od, od, seq - q0, dh, dos, nullptr);
  const int first_row = q0 + warp * kRowsPerWarp;
  const int row[2] = {first_row + g, first_row + g + 8};
  float lse2[2], dl[2];
TESSERA_UNROLL
  for (int r = 0; r < 2; ++r) {
    lse2[r] = row[r] < seq ? lse[bh * a.seq + row[r]] * kLog2e : 0.0f;
    dl[r] = row[r] < seq ? delta[bh * a.seq + row[r]] : 0.0f;
  }
  const float scale_log2 = scale * kLog2e;
  float dq_acc[kDh / 8][4] = {};
  const int key_end = a.causal ? min(seq, q0 + kBq) : seq;
TESSERA_NO_UNROLL
  for (int k0 = 0; k0 < key_end; k0 += kBk) {
    __syncthreads();  // the previous tile is no longer read (and Q, dO are staged)
    StageTile<kBk, kDh, true, true>(k + head + k0 * rs, rs, seq - k0, dh, ks, kt);
    StageTile<kBk, kDh, true, false>(v + head + k0 * rs, rs, seq - k0, dh, vs, nullptr);
    __syncthreads();

    float s[kBk / 8][4] = {}, dp[kBk / 8][4] = {};
TESSERA_UNROLL
    for (int kk = 0; kk < kDh / 16; ++kk) {
      const FragA qa = LoadA(qs, kLd, warp * kRowsPerWarp, kk * 16);
      const FragA da = LoadA(dos, kLd, warp * kRowsPerWarp, kk * 16);
TESSERA_UNROLL
      for (int nt = 0; nt < kBk / 8; ++nt) {
        Mma(s[nt], qa, LoadB(ks, kLd, nt * 8, kk * 16));
        Mma(dp[nt], da, LoadB(vs, kLd, nt * 8, kk * 16));
      }
    }
    const bool masked = k0 + kBk > seq || first_row + kRowsPerWarp > seq ||
                        (a.causal && k0 + kBk - 1 > first_row);
TESSERA_UNROLL
    for (int nt = 0; nt < kBk / 8; ++nt) {
TESSERA_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int j = k0 + nt * 8 + 2 * t + (e & 1), i = row[e / 2];
        const bool visible = !masked || (j < seq && i < seq && (!a.causal || j <= i));
        const float p = visible ? exp2f(fmaf(s[nt][e], scale_log2, -lse2[e / 2])) : 0.0f;
        dp[nt][e] = p * (dp[nt][e] - dl[e / 2]);
      }
    }
TESSERA_UNROLL
    for (int kk = 0; kk < kBk / 16; ++kk) {
      const FragA ds = ToA(dp, kk);
TESSERA_UNROLL
      for (int dt = 0; dt < kDh / 8; ++dt) Mma(dq_acc[dt], ds, LoadB(kt, kLdt, dt * 8, kk * 16));
    }
  }

TESSERA_UNROLL
  for (int r = 0; r < 2; ++r) {
    if (row[r] < seq) StoreRow<kDh>(dq_acc, r, scale, dh, dq + head + row[r] * rs);
  }
}
