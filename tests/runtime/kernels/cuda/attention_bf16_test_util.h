// Shared by the tensor-core attention's tests on a GPU
// (attention_bf16_test.cc) and in the host emulation
// (attention_bf16_emulation_test.cc): the cases, bf16 rounding of inputs, and
// the elementwise rounding bound both hold the kernels to (its derivation is
// at the top of attention_bf16_test.cc).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "runtime/kernels/cpu/attention.h"
#include "runtime/kernels/cpu/gemm_bf16.h"
#include "runtime/kernels/cuda/attention_bf16.h"
#include "tests/runtime/kernels/cuda/cuda_test_util.h"
#include "runtime/kernels/kernel_args.h"

namespace tessera::cuda::testing {

struct Case {
  int64_t batch, seq, heads, head_dim;
  bool causal;
  bool fused;       // Q, K, V views into one [B, S, 3, H, Dh] buffer; else three buffers
  int64_t padding;  // extra floats per row (a multiple of 4)
  float magnitude;  // of Q and K: 3 makes scores of +-30 (the max shift matters)
};

// The shapes both tests run: every tail, kernel width, layout and mask.
inline std::vector<Case> Bf16AttentionCases() {
  return {
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
}

inline std::vector<float> Rounded(std::vector<float> x) {
  for (float& value : x) value = cpu::RoundToBf16(value);
  return x;
}

// Elementwise bounds of attention_bf16_test.cc's header, in double, from the
// same (rounded) inputs: the sums of |terms| of out, dq, dk, dv.
struct Magnitudes {
  std::vector<double> out, dq, dk, dv;  // out [B,S,H*Dh]; the gradients in q's layout
};

inline Magnitudes ComputeMagnitudes(const AttentionShape& s, const float* q, const float* k,
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
inline void ExpectWithinBound(const char* what, const std::vector<float>& got,
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


// Runs case `c` (inputs from `seed`, which advances) through `run`, a
// Forward(shape, q, k, v, out, lse) and Backward(shape, q, k, v, out, dout,
// lse, dq, dk, dv, scratch) on pointers of `Buffer`s (constructed from a host
// vector; data(), ToHost()), and checks out, lse and the gradients against
// the CPU attention on the same bf16-rounded inputs.
template <typename Buffer, typename Run>
void CheckAgainstCpu(const Case& c, uint64_t& seed, Run& run) {
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

    // The kernels: the forward, then the backward from the CPU's out and lse.
    std::vector<Buffer> qkv_dev, grads_dev;
    for (int i = 0; i < buffers; ++i) {
      qkv_dev.emplace_back(qkv[i]);
      grads_dev.emplace_back(std::vector<float>(rows * stride, kPoison));
    }
    auto dev = [&](std::vector<Buffer>& d, int which) {
      return c.fused ? d[0].data() + which * width : d[which].data();
    };
    Buffer out_dev(std::vector<float>(rows * width, kPoison));
    Buffer lse_dev(std::vector<float>(lse.size(), kPoison));
    Buffer out_cpu_dev(out), lse_cpu_dev(lse), dout_dev(dout);
    Buffer scratch(std::vector<float>(AttentionBackwardBf16Scratch(shape), kPoison));
    ASSERT_TRUE(Bf16AttentionSupports(shape, {dev(qkv_dev, 0), dev(qkv_dev, 1), dev(qkv_dev, 2)}));
    run.Forward(shape, dev(qkv_dev, 0), dev(qkv_dev, 1), dev(qkv_dev, 2), out_dev.data(),
                lse_dev.data());
    run.Backward(shape, dev(qkv_dev, 0), dev(qkv_dev, 1), dev(qkv_dev, 2), out_cpu_dev.data(),
                 dout_dev.data(), lse_cpu_dev.data(), dev(grads_dev, 0), dev(grads_dev, 1),
                 dev(grads_dev, 2), scratch.data());
    if (::testing::Test::HasFatalFailure()) return;

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

}  // namespace tessera::cuda::testing
