// The tensor-core attention (runtime/kernels/cuda/attention_bf16.h): its
// launch plan on the host (no GPU needed), and on a GPU its forward and
// backward against the CPU's fp32 attention on bf16-ROUNDED inputs.
//
// Tolerance. With Q, K, V, dO already bf16 values, the kernel rounds nothing
// else on the way in, and its products of bf16 values are exact in fp32.
// What differs from the fp32 CPU kernel is (a) the probabilities P rounded
// to bf16 before P V and P^T dO, (b) dS rounded to bf16 before dS K and
// dS^T Q, (c) fp32 summation order and exp2 against exp. Rounding to nearest
// changes each factor by at most 2^-9 of itself, so an output element
// sum_j x_j y_j with x rounded moves by at most 2^-9 sum_j |x_j y_j|:
//   out[i]  : 2^-9 sum_j P_ij |V_j|          dV[j] : 2^-9 sum_i P_ij |dO_i|
//   dK[j]   : 2^-9 scale sum_i |dS_ij| |Q_i| dQ[i] : 2^-9 scale sum_j |dS_ij| |K_j|
// The test computes those sums in double for every element and allows twice
// the bound (2^-8 of it) plus 1e-5 of the largest value for (c). A wrong
// key, column, mask or tile boundary moves an element by about the whole
// sum, 256 times the tolerance. Each pass runs on identical inputs (the
// backward gets the CPU's out and lse), so the bounds do not compound.
#include "runtime/kernels/cuda/attention_bf16.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "runtime/kernels/cpu/attention.h"
#include "runtime/kernels/cpu/gemm_bf16.h"
#include "tests/runtime/kernels/cuda/cuda_test_util.h"

namespace tessera::cuda {
namespace {

using testing::DeviceVector;
using testing::RandomVector;

// ---- The plan (host only) -----------------------------------------------------

AttentionShape Shape(int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
                     bool causal = false) {
  return AttentionShape{batch, seq, heads, head_dim, 3 * heads * head_dim, causal};
}

TEST(CudaAttentionBf16Plan, TakesHeadDimsUpTo128InStepsOf4OnThe64_96_128Kernels) {
  for (int64_t dh = 0; dh <= 160; ++dh) {
    SCOPED_TRACE(::testing::Message() << "head_dim=" << dh);
    const std::optional<Bf16AttentionPlan> plan = PlanBf16Attention(Shape(2, 100, 3, dh));
    const bool expected = dh >= 16 && dh <= 128 && dh % 4 == 0;
    ASSERT_EQ(plan.has_value(), expected);
    if (!plan) continue;
    // The smallest kernel that holds the head: 64, 96 or 128 columns.
    EXPECT_GE(plan->padded_head_dim, dh);
    for (int smaller : {64, 96, 128}) {
      if (smaller < plan->padded_head_dim) EXPECT_LT(smaller, dh) << smaller;
    }
    EXPECT_TRUE(plan->padded_head_dim == 64 || plan->padded_head_dim == 96 ||
                plan->padded_head_dim == 128);
  }
}

TEST(CudaAttentionBf16Plan, GridsCoverTheSequenceAndSharedMemoryFitsTwoBlocksPerSm) {
  for (int64_t dh : {16, 32, 64, 72, 96, 128}) {
    for (int64_t seq : {1, 15, 16, 63, 64, 65, 200, 1000, 4096}) {
      SCOPED_TRACE(::testing::Message() << "head_dim=" << dh << " seq=" << seq);
      const AttentionShape shape = Shape(3, seq, 5, dh, seq % 2 == 1);
      const std::optional<Bf16AttentionPlan> plan = PlanBf16Attention(shape);
      ASSERT_TRUE(plan.has_value());
      const Bf16AttentionPlan& p = *plan;
      EXPECT_EQ(p.grid_x, 15);
      EXPECT_EQ(p.threads % 32, 0);
      // A warp owns 16 rows of the block's own tile.
      for (int rows : {p.forward_queries, p.kv_keys, p.q_queries}) EXPECT_EQ(rows, p.threads / 2);
      // Inner tiles are whole mma steps (16 along k, 8 along n).
      for (int tile : {p.forward_keys, p.kv_queries, p.q_keys}) EXPECT_EQ(tile % 16, 0) << tile;
      struct Grid {
        int64_t blocks;
        int rows;
      };
      for (const Grid& g : {Grid{p.forward_grid_y, p.forward_queries}, Grid{p.kv_grid_y, p.kv_keys},
                            Grid{p.q_grid_y, p.q_queries}}) {
        EXPECT_GE(g.blocks * g.rows, seq);
        EXPECT_LT((g.blocks - 1) * g.rows, seq);
      }
      // Shared memory holds at least the bf16 tiles each kernel stages, and
      // two blocks of each fit in an H100/H200 SM (228 KiB).
      const size_t row_bytes = 2 * p.padded_head_dim;
      EXPECT_GE(p.forward_smem, row_bytes * (p.forward_queries + 2 * p.forward_keys));
      EXPECT_GE(p.kv_smem, row_bytes * (2 * p.kv_keys + 4 * p.kv_queries));
      EXPECT_GE(p.q_smem, row_bytes * (2 * p.q_queries + 3 * p.q_keys));
      for (size_t smem : {p.forward_smem, p.kv_smem, p.q_smem}) {
        EXPECT_LE(smem, kBf16AttentionMaxSmem);
        EXPECT_LE(2 * smem, size_t{228} * 1024);
      }
    }
  }
}

TEST(CudaAttentionBf16Plan, RefusesStridesPointersAndSizesTheKernelsCannotTake) {
  alignas(16) static float buffer[64];
  const float* aligned = buffer;
  const float* odd = buffer + 1;  // 4-byte aligned only
  const AttentionShape ok = Shape(2, 50, 2, 64);
  EXPECT_TRUE(Bf16AttentionSupports(ok, {aligned, aligned + 4, aligned + 8}));
  EXPECT_FALSE(Bf16AttentionSupports(ok, {aligned, odd, aligned}));

  AttentionShape odd_stride = ok;
  odd_stride.row_stride = 3 * 2 * 64 + 2;  // rows would not stay 16-byte aligned
  EXPECT_FALSE(Bf16AttentionSupports(odd_stride, {aligned}));
  AttentionShape padded = ok;
  padded.row_stride = 3 * 2 * 64 + 4;
  EXPECT_TRUE(Bf16AttentionSupports(padded, {aligned}));
  AttentionShape narrow = ok;
  narrow.row_stride = 2 * 64 - 4;  // rows overlap
  EXPECT_FALSE(Bf16AttentionSupports(narrow, {aligned}));

  EXPECT_FALSE(PlanBf16Attention(Shape(0, 50, 2, 64)).has_value());
  EXPECT_FALSE(PlanBf16Attention(Shape(2, 0, 2, 64)).has_value());
  // 65535 blocks of 64 rows is the longest sequence a grid's y holds.
  EXPECT_TRUE(PlanBf16Attention(Shape(1, int64_t{65535} * 64, 1, 64)).has_value());
  EXPECT_FALSE(PlanBf16Attention(Shape(1, int64_t{65535} * 64 + 1, 1, 64)).has_value());
}

// Argument errors come back before any CUDA call, so these run without a GPU.
TEST(CudaAttentionBf16Plan, EntryPointsRejectUnsupportedCallsAndAcceptEmptyOnes) {
  alignas(16) static float buffer[64];
  const AttentionShape dh8 = Shape(1, 4, 1, 8);
  const absl::Status forward =
      AttentionForwardBf16(dh8, buffer, buffer, buffer, buffer, buffer, nullptr);
  EXPECT_EQ(forward.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(forward.message().find("head_dim=8"), std::string::npos) << forward;
  EXPECT_EQ(AttentionBackwardBf16(dh8, buffer, buffer, buffer, buffer, buffer, buffer, buffer,
                                  buffer, buffer, buffer, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      AttentionForwardBf16(Shape(0, 4, 1, 64), nullptr, nullptr, nullptr, nullptr, nullptr, nullptr)
          .ok());
  EXPECT_TRUE(AttentionBackwardBf16(Shape(2, 0, 1, 64), nullptr, nullptr, nullptr, nullptr,
                                    nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr)
                  .ok());
}

// ---- Against the CPU (GPU) --------------------------------------------------------

std::vector<float> Rounded(std::vector<float> x) {
  for (float& value : x) value = cpu::RoundToBf16(value);
  return x;
}

// Elementwise bounds of attention_bf16_test.cc's header, in double, from the
// same (rounded) inputs: the sums of |terms| of out, dq, dk, dv.
struct Magnitudes {
  std::vector<double> out, dq, dk, dv;  // out [B,S,H*Dh]; the gradients in q's layout
};

Magnitudes ComputeMagnitudes(const AttentionShape& s, const float* q, const float* k,
                             const float* v, const float* dout) {
  const int64_t width = s.heads * s.head_dim, rs = s.row_stride, dh = s.head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  Magnitudes m;
  m.out.assign(s.batch * s.seq * width, 0.0);
  m.dq.assign(s.batch * s.seq * rs, 0.0);
  m.dk = m.dq;
  m.dv = m.dq;
  std::vector<double> p(s.seq * s.seq), ds(s.seq * s.seq), o(s.seq * dh);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < s.heads; ++h) {
      auto in = [&](const float* x, int64_t i, int64_t d) {
        return static_cast<double>(x[(b * s.seq + i) * rs + h * dh + d]);
      };
      auto grad = [&](int64_t i, int64_t d) { return (b * s.seq + i) * rs + h * dh + d; };
      auto out_at = [&](int64_t i, int64_t d) { return (b * s.seq + i) * width + h * dh + d; };
      for (int64_t i = 0; i < s.seq; ++i) {
        const int64_t visible = s.causal ? i + 1 : s.seq;
        double max_score = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < visible; ++j) {
          double dot = 0.0;
          for (int64_t d = 0; d < dh; ++d) dot += in(q, i, d) * in(k, j, d);
          p[i * s.seq + j] = scale * dot;
          max_score = std::max(max_score, scale * dot);
        }
        double sum = 0.0;
        for (int64_t j = 0; j < visible; ++j) sum += std::exp(p[i * s.seq + j] - max_score);
        for (int64_t j = 0; j < s.seq; ++j) {
          p[i * s.seq + j] = j < visible ? std::exp(p[i * s.seq + j] - max_score) / sum : 0.0;
        }
        for (int64_t d = 0; d < dh; ++d) {
          double value = 0.0, magnitude = 0.0;
          for (int64_t j = 0; j < visible; ++j) {
            value += p[i * s.seq + j] * in(v, j, d);
            magnitude += p[i * s.seq + j] * std::fabs(in(v, j, d));
          }
          o[i * dh + d] = value;
          m.out[out_at(i, d)] = magnitude;
        }
        double row_d = 0.0;
        for (int64_t d = 0; d < dh; ++d) row_d += dout[out_at(i, d)] * o[i * dh + d];
        for (int64_t j = 0; j < s.seq; ++j) {
          double dp = 0.0;
          for (int64_t d = 0; d < dh; ++d) dp += dout[out_at(i, d)] * in(v, j, d);
          ds[i * s.seq + j] = p[i * s.seq + j] * (dp - row_d);
        }
      }
      for (int64_t i = 0; i < s.seq; ++i) {
        for (int64_t j = 0; j < s.seq; ++j) {
          const double pij = p[i * s.seq + j], dsij = std::fabs(ds[i * s.seq + j]);
          if (pij == 0.0 && dsij == 0.0) continue;
          for (int64_t d = 0; d < dh; ++d) {
            m.dv[grad(j, d)] += pij * std::fabs(dout[out_at(i, d)]);
            m.dk[grad(j, d)] += scale * dsij * std::fabs(in(q, i, d));
            m.dq[grad(i, d)] += scale * dsij * std::fabs(in(k, j, d));
          }
        }
      }
    }
  }
  return m;
}

// Checks |got - want| <= 2^-8 magnitude + 1e-5 max|want| at the elements of
// `columns` per row (the head columns), `stride` floats a row; and that the
// other columns of `got` still hold `poison` (the kernel wrote nothing there).
void ExpectWithinBound(const char* what, const std::vector<float>& got,
                       const std::vector<float>& want, const std::vector<double>& magnitude,
                       int64_t stride, int64_t offset, int64_t columns, float poison) {
  ASSERT_EQ(got.size(), want.size());
  double max_want = 0.0;
  for (float x : want) max_want = std::max(max_want, std::fabs(static_cast<double>(x)));
  int64_t failures = 0;
  double worst_ratio = 0.0;
  for (size_t e = 0; e < got.size(); ++e) {
    const int64_t col = static_cast<int64_t>(e) % stride;
    if (col < offset || col >= offset + columns) {
      if (got[e] != poison && failures++ < 5) {
        ADD_FAILURE() << what << ": element " << e << " outside the head columns was written";
      }
      continue;
    }
    const double bound = std::ldexp(magnitude[e], -8) + 1e-5 * max_want;
    const double error = std::fabs(static_cast<double>(got[e]) - want[e]);
    worst_ratio = std::max(worst_ratio, std::isnan(error) ? INFINITY : error / bound);
    if (!(error <= bound) && failures++ < 5) {
      ADD_FAILURE() << what << "[" << e << "]: gpu " << got[e] << " cpu " << want[e]
                    << " error " << error << " bound " << bound;
    }
  }
  EXPECT_EQ(failures, 0) << what;
  // Recorded so a log shows how close the kernel runs to the bound.
  ::testing::Test::RecordProperty(std::string(what) + "_worst_error_over_bound",
                                  std::to_string(worst_ratio));
}

using CudaAttentionBf16Test = testing::CudaTest;

struct Case {
  int64_t batch, seq, heads, head_dim;
  bool causal;
  bool fused;       // Q, K, V views into one [B, S, 3, H, Dh] buffer; else three buffers
  int64_t padding;  // extra floats per row (a multiple of 4)
  float magnitude;  // of Q and K: 3 makes scores of +-30 (the max shift matters)
};

TEST_F(CudaAttentionBf16Test, ForwardAndBackwardMatchCpuOnBf16RoundedInputs) {
  const Case cases[] = {
      {2, 77, 3, 64, false, true, 0, 1.0f},   // seq not a multiple of 64, batch > 1
      {2, 77, 3, 64, true, true, 0, 1.0f},    // causal
      {1, 130, 2, 128, false, true, 4, 1.0f}, // 128 columns, padded fused rows
      {1, 130, 2, 128, true, false, 0, 1.0f}, // separate buffers
      {3, 64, 2, 64, true, false, 8, 3.0f},   // exactly one tile, large scores, padded rows
      {1, 1, 1, 64, false, true, 0, 1.0f},    // one token
      {1, 300, 1, 128, true, true, 0, 3.0f},  // five key tiles: the online rescaling
      {2, 200, 2, 96, false, true, 0, 1.0f},  // the 96-column kernels
      {1, 70, 2, 72, true, true, 4, 1.0f},    // 72 on the 96-column kernels (zero columns)
      {2, 33, 4, 32, false, true, 0, 1.0f},   // 32 on the 64-column kernels
  };
  uint64_t seed = 100;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message()
                 << "B=" << c.batch << " S=" << c.seq << " H=" << c.heads << " Dh=" << c.head_dim
                 << " causal=" << c.causal << " fused=" << c.fused << " padding=" << c.padding
                 << " magnitude=" << c.magnitude);
    const int64_t width = c.heads * c.head_dim;
    const int64_t stride = (c.fused ? 3 * width : width) + c.padding;
    const AttentionShape shape{c.batch, c.seq, c.heads, c.head_dim, stride, c.causal};
    const int64_t rows = c.batch * c.seq;
    // Q, K, V: one buffer (offsets 0, width, 2 width) or three (offset 0 each).
    const int64_t buffers = c.fused ? 1 : 3;
    std::vector<std::vector<float>> qkv(buffers);
    for (auto& buffer : qkv) buffer = Rounded(RandomVector(rows * stride, seed++, c.magnitude));
    if (!c.fused) {  // V at the unit scale whatever the score magnitude
      qkv[2] = Rounded(RandomVector(rows * stride, seed++));
    }
    auto operand = [&](int which) {
      return c.fused ? qkv[0].data() + which * width : qkv[which].data();
    };
    auto offset = [&](int which) { return c.fused ? which * width : int64_t{0}; };
    const std::vector<float> dout = Rounded(RandomVector(rows * width, seed++));

    // CPU, fp32 on the rounded inputs.
    std::vector<float> out(rows * width), lse(c.batch * c.heads * c.seq);
    cpu::AttentionForward(shape, operand(0), operand(1), operand(2), out.data(), lse.data());
    constexpr float kPoison = -7.25f;  // where the kernels must not write
    std::vector<std::vector<float>> grads(buffers, std::vector<float>(rows * stride, kPoison));
    auto grad = [&](std::vector<std::vector<float>>& g, int which) {
      return c.fused ? g[0].data() + which * width : g[which].data();
    };
    cpu::AttentionBackward(shape, operand(0), operand(1), operand(2), out.data(), dout.data(),
                           lse.data(), grad(grads, 0), grad(grads, 1), grad(grads, 2));

    // GPU: the forward, then the backward from the CPU's out and lse.
    std::vector<DeviceVector> qkv_dev, grads_dev;
    for (int i = 0; i < buffers; ++i) {
      qkv_dev.emplace_back(qkv[i]);
      grads_dev.emplace_back(std::vector<float>(rows * stride, kPoison));
    }
    auto dev = [&](std::vector<DeviceVector>& d, int which) {
      return c.fused ? d[0].data() + which * width : d[which].data();
    };
    DeviceVector out_dev(std::vector<float>(rows * width, kPoison));
    DeviceVector lse_dev(std::vector<float>(lse.size(), kPoison));
    DeviceVector out_cpu_dev(out), lse_cpu_dev(lse), dout_dev(dout);
    DeviceVector scratch(AttentionBackwardBf16Scratch(shape));
    ASSERT_TRUE(Bf16AttentionSupports(shape, {dev(qkv_dev, 0), dev(qkv_dev, 1), dev(qkv_dev, 2)}));
    ASSERT_TRUE(AttentionForwardBf16(shape, dev(qkv_dev, 0), dev(qkv_dev, 1), dev(qkv_dev, 2),
                                     out_dev.data(), lse_dev.data(), stream_)
                    .ok());
    ASSERT_TRUE(AttentionBackwardBf16(shape, dev(qkv_dev, 0), dev(qkv_dev, 1), dev(qkv_dev, 2),
                                      out_cpu_dev.data(), dout_dev.data(), lse_cpu_dev.data(),
                                      dev(grads_dev, 0), dev(grads_dev, 1), dev(grads_dev, 2),
                                      scratch.data(), stream_)
                    .ok());
    Sync();

    const Magnitudes m = ComputeMagnitudes(shape, operand(0), operand(1), operand(2), dout.data());
    ExpectWithinBound("out", out_dev.ToHost(), out, m.out, width, 0, width, kPoison);
    const std::vector<float> lse_gpu = lse_dev.ToHost();
    for (size_t i = 0; i < lse.size(); ++i) {
      ASSERT_NEAR(lse_gpu[i], lse[i], 2e-5 * std::max(1.0f, std::fabs(lse[i]))) << "lse " << i;
    }
    const char* names[] = {"dq", "dk", "dv"};
    const std::vector<double>* bounds[] = {&m.dq, &m.dk, &m.dv};
    for (int which = 0; which < 3; ++which) {
      if (c.fused) continue;  // checked together below
      ExpectWithinBound(names[which], grads_dev[which].ToHost(), grads[which], *bounds[which],
                        stride, 0, width, kPoison);
    }
    if (c.fused) {
      // One buffer: compare each third against its own bound, the rest poison.
      const std::vector<float> got = grads_dev[0].ToHost();
      for (int which = 0; which < 3; ++which) {
        std::vector<float> got_part = got, want_part = grads[0];
        std::vector<double> bound(rows * stride, 0.0);
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t col = 0; col < stride; ++col) {
            const int64_t e = r * stride + col;
            if (col >= offset(which) && col < offset(which) + width) {
              bound[e] = (*bounds[which])[r * stride + col - offset(which)];
            } else {
              got_part[e] = want_part[e] = kPoison;  // the other thirds: checked in their turn
            }
          }
        }
        ExpectWithinBound(names[which], got_part, want_part, bound, stride, offset(which), width,
                          kPoison);
      }
    }
  }
}

TEST_F(CudaAttentionBf16Test, RepeatedRunsGiveTheSameBits) {
  const AttentionShape shape{2, 150, 3, 64, 3 * 3 * 64, true};
  const int64_t rows = shape.batch * shape.seq, width = shape.heads * shape.head_dim;
  DeviceVector qkv(RandomVector(rows * shape.row_stride, 7)), dout(RandomVector(rows * width, 8));
  DeviceVector out(rows * width), lse(shape.batch * shape.heads * shape.seq);
  DeviceVector scratch(AttentionBackwardBf16Scratch(shape));
  std::vector<float> first[3];
  for (int run = 0; run < 2; ++run) {
    DeviceVector dqkv(RandomVector(rows * shape.row_stride, 9 + run));  // overwritten
    ASSERT_TRUE(AttentionForwardBf16(shape, qkv.data(), qkv.data() + width,
                                     qkv.data() + 2 * width, out.data(), lse.data(), stream_)
                    .ok());
    ASSERT_TRUE(AttentionBackwardBf16(shape, qkv.data(), qkv.data() + width,
                                      qkv.data() + 2 * width, out.data(), dout.data(), lse.data(),
                                      dqkv.data(), dqkv.data() + width, dqkv.data() + 2 * width,
                                      scratch.data(), stream_)
                    .ok());
    Sync();
    // The fused buffer has no padding, so all of it is overwritten.
    const std::vector<float> now[3] = {out.ToHost(), lse.ToHost(), dqkv.ToHost()};
    if (run == 0) {
      for (int i = 0; i < 3; ++i) first[i] = now[i];
      continue;
    }
    EXPECT_EQ(now[0], first[0]) << "out";
    EXPECT_EQ(now[1], first[1]) << "lse";
    EXPECT_EQ(now[2], first[2]) << "dq, dk, dv";
  }
}

}  // namespace
}  // namespace tessera::cuda
