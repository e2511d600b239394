// The CPU's bf16 attention (attention_bf16.h) against a naive double
// reference on the same bf16-rounded Q, K, V and dO, in two ways:
//
//  1. The bound the CUDA kernel is held to (docs/precision.md, "Tolerance";
//     tests/runtime/kernels/cuda/attention_bf16_test_util.h): against the
//     reference that rounds only the inputs, out and the three gradients are
//     within 2^-8 of the sum of |terms| of each element (P and dS carry at
//     most 2^-9 relative rounding each) plus 1e-5 of the largest value.
//  2. The rounding points: against a reference that also rounds P (relative
//     to the row max, the forward; exp(s - lse), the backward) and dS to bf16
//     exactly where the GPU kernel does, with D = rowsum(bf16(dO) * O), the
//     error is fp32 accumulation only: within 2^-16 of the sum of |terms|
//     plus 2^-7 of the element's largest term (one P or dS whose fp32 and
//     double values round to different bf16 neighbours: one bf16 ulp is at
//     most 2^-7 of the value), plus, for dq and dk, 2^-18 of the scale of
//     dP and D where dS = P (dP - D) cancels, and on average far
//     below the error against the reference of 1. (so the kernel does round
//     P and dS). The forward is checked this way for one key block
//     (S <= 256): past it the kernel, like the GPU's, rounds P against the
//     running max of the blocks so far.
//
// Both on the AVX-512 BF16 instructions (where this CPU has them) and on the
// portable code.
#include "runtime/kernels/cpu/attention_bf16.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "runtime/kernels/cpu/attention.h"
#include "runtime/kernels/cpu/gemm.h"
#include "runtime/kernels/cpu/gemm_bf16.h"

namespace tessera::cpu {
namespace {

struct Case {
  int64_t batch, seq, heads, head_dim;
  bool causal;
  bool fused;       // Q, K, V in one [B, S, 3, H, Dh] buffer
  int64_t padding;  // extra floats per row
  float magnitude;  // of Q and K
};

std::ostream& operator<<(std::ostream& os, const Case& c) {
  return os << "B" << c.batch << "_S" << c.seq << "_H" << c.heads << "_Dh" << c.head_dim
            << (c.causal ? "_causal" : "") << (c.fused ? "_fused" : "") << "_pad" << c.padding;
}

struct Operands {
  AttentionShape shape;
  std::vector<float> qkv, dout;  // rounded to bf16 already
  const float* q() const { return qkv.data(); }
  const float* k() const { return qkv.data() + (fused ? shape.heads * shape.head_dim : slab); }
  const float* v() const {
    return qkv.data() + (fused ? 2 * shape.heads * shape.head_dim : 2 * slab);
  }
  bool fused;
  int64_t slab;  // floats of one of Q, K, V when separate
};

Operands MakeOperands(const Case& c, uint32_t seed) {
  Operands o;
  const int64_t width = c.heads * c.head_dim;
  const int64_t rs = (c.fused ? 3 * width : width) + c.padding;
  o.shape = AttentionShape{c.batch, c.seq, c.heads, c.head_dim, rs, c.causal};
  o.fused = c.fused;
  o.slab = c.batch * c.seq * rs;
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  o.qkv.resize(c.fused ? o.slab : 3 * o.slab);
  for (float& x : o.qkv) x = RoundToBf16(c.magnitude * dist(gen));
  // V and dO of magnitude 1 (Q and K's magnitude sets the scores).
  o.dout.resize(c.batch * c.seq * width);
  for (float& x : o.dout) x = RoundToBf16(dist(gen));
  return o;
}

double Bf16(double x) { return RoundToBf16(static_cast<float>(x)); }

// Double references of one call, both kinds (file comment), plus the sums
// of |terms| and each element's largest term.
struct Reference {
  // [B, S, H*Dh] and in q's layout ([B, S, row_stride]).
  std::vector<double> out_plain, out_rounded, out_magnitude, out_largest;
  std::vector<double> lse;
  std::vector<double> dq_plain, dk_plain, dv_plain, dq_rounded, dk_rounded, dv_rounded;
  std::vector<double> dq_magnitude, dk_magnitude, dv_magnitude;
  std::vector<double> dq_largest, dk_largest, dv_largest;
  // dS = P (dP - D) cancels where dP ~ D (one visible key: D = dP up to
  // rounding): the fp32 error of dP and D carries over at the scale of
  // sum_d |dO_d| (|V_jd| + |O_d|), not of |dS|. These are those scales
  // summed as dq and dk sum dS (zero for out and dv).
  std::vector<double> dq_cancel, dk_cancel, zero;
};

// `out` is what the kernel's forward returned: the backward's D reads it, as
// the kernel's does.
Reference ComputeReference(const Operands& o, const std::vector<float>& out) {
  const AttentionShape& s = o.shape;
  const int64_t width = s.heads * s.head_dim, rs = s.row_stride, dh = s.head_dim, n = s.seq;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  Reference r;
  for (auto* x : {&r.out_plain, &r.out_rounded, &r.out_magnitude, &r.out_largest}) {
    x->assign(s.batch * n * width, 0.0);
  }
  r.lse.assign(s.batch * s.heads * n, 0.0);
  for (auto* x : {&r.dq_plain, &r.dk_plain, &r.dv_plain, &r.dq_rounded, &r.dk_rounded,
                  &r.dv_rounded, &r.dq_magnitude, &r.dk_magnitude, &r.dv_magnitude, &r.dq_largest,
                  &r.dk_largest, &r.dv_largest, &r.dq_cancel, &r.dk_cancel, &r.zero}) {
    x->assign(s.batch * n * rs, 0.0);
  }
  std::vector<double> scores(n * n), p(n * n), ds(n * n), ds_rounded(n * n), cancel(n * n);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < s.heads; ++h) {
      auto in = [&](const float* x, int64_t i, int64_t d) {
        return static_cast<double>(x[(b * n + i) * rs + h * dh + d]);
      };
      auto at = [&](int64_t i, int64_t d) { return (b * n + i) * rs + h * dh + d; };
      auto out_at = [&](int64_t i, int64_t d) { return (b * n + i) * width + h * dh + d; };
      for (int64_t i = 0; i < n; ++i) {
        const int64_t visible = s.causal ? i + 1 : n;
        double max_score = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < visible; ++j) {
          double dot = 0.0;
          for (int64_t d = 0; d < dh; ++d) dot += in(o.q(), i, d) * in(o.k(), j, d);
          scores[i * n + j] = scale * dot;
          max_score = std::max(max_score, scale * dot);
        }
        double sum = 0.0;
        for (int64_t j = 0; j < visible; ++j) sum += std::exp(scores[i * n + j] - max_score);
        const double lse = max_score + std::log(sum);
        r.lse[(b * s.heads + h) * n + i] = lse;
        for (int64_t d = 0; d < dh; ++d) {
          double plain = 0.0, rounded = 0.0, magnitude = 0.0, largest = 0.0;
          for (int64_t j = 0; j < visible; ++j) {
            const double e = std::exp(scores[i * n + j] - max_score);
            const double vj = in(o.v(), j, d);
            plain += e / sum * vj;
            rounded += Bf16(e) * vj;  // P rounded relative to the row max
            magnitude += e / sum * std::fabs(vj);
            largest = std::max(largest, e / sum * std::fabs(vj));
          }
          r.out_plain[out_at(i, d)] = plain;
          r.out_rounded[out_at(i, d)] = rounded / sum;
          r.out_magnitude[out_at(i, d)] = magnitude;
          r.out_largest[out_at(i, d)] = largest;
        }
        // Backward rows: P = exp(s - lse), D = dO . out with the kernel's out
        // (the backward's input, as the GPU test gives both backwards the
        // same out; dO is rounded already).
        double d_row = 0.0;
        for (int64_t d = 0; d < dh; ++d) {
          d_row += o.dout[out_at(i, d)] * static_cast<double>(out[out_at(i, d)]);
        }
        const double d_plain = d_row, d_rounded = d_row;
        for (int64_t j = 0; j < n; ++j) {
          if (j >= visible) {
            p[i * n + j] = ds[i * n + j] = ds_rounded[i * n + j] = cancel[i * n + j] = 0.0;
            continue;
          }
          double dp = 0.0, scale_of_terms = 0.0;
          for (int64_t d = 0; d < dh; ++d) {
            dp += o.dout[out_at(i, d)] * in(o.v(), j, d);
            scale_of_terms += std::fabs(o.dout[out_at(i, d)]) *
                              (std::fabs(in(o.v(), j, d)) + std::fabs(out[out_at(i, d)]));
          }
          p[i * n + j] = std::exp(scores[i * n + j] - lse);
          ds[i * n + j] = p[i * n + j] * (dp - d_plain);
          ds_rounded[i * n + j] = Bf16(p[i * n + j] * (dp - d_rounded));
          cancel[i * n + j] = scale * p[i * n + j] * scale_of_terms;
        }
      }
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          const double pij = p[i * n + j];
          if (pij == 0.0) continue;
          const double pr = Bf16(pij), dsij = ds[i * n + j], dsr = ds_rounded[i * n + j];
          const double cij = cancel[i * n + j];
          for (int64_t d = 0; d < dh; ++d) {
            const double g = o.dout[out_at(i, d)], qi = in(o.q(), i, d), kj = in(o.k(), j, d);
            r.dv_plain[at(j, d)] += pij * g;
            r.dv_rounded[at(j, d)] += pr * g;
            r.dv_magnitude[at(j, d)] += std::fabs(pij * g);
            r.dv_largest[at(j, d)] = std::max(r.dv_largest[at(j, d)], std::fabs(pij * g));
            r.dk_plain[at(j, d)] += scale * dsij * qi;
            r.dk_rounded[at(j, d)] += scale * dsr * qi;
            r.dk_magnitude[at(j, d)] += std::fabs(scale * dsij * qi);
            r.dk_largest[at(j, d)] = std::max(r.dk_largest[at(j, d)], std::fabs(scale * dsij * qi));
            r.dq_plain[at(i, d)] += scale * dsij * kj;
            r.dq_rounded[at(i, d)] += scale * dsr * kj;
            r.dq_magnitude[at(i, d)] += std::fabs(scale * dsij * kj);
            r.dq_largest[at(i, d)] = std::max(r.dq_largest[at(i, d)], std::fabs(scale * dsij * kj));
            r.dq_cancel[at(i, d)] += cij * std::fabs(kj);
            r.dk_cancel[at(j, d)] += cij * std::fabs(qi);
          }
        }
      }
    }
  }
  return r;
}

struct KernelRun {
  std::vector<float> out, lse, dqkv;  // dqkv in the layout of qkv (separate: three slabs)
};

constexpr float kPoison = 12345.0f;  // the kernel must not write outside the heads' columns

KernelRun RunKernel(const Operands& o) {
  const AttentionShape& s = o.shape;
  KernelRun run;
  run.out.assign(s.batch * s.seq * s.heads * s.head_dim, 0.0f);
  run.lse.assign(s.batch * s.heads * s.seq, 0.0f);
  AttentionForwardBf16(s, o.q(), o.k(), o.v(), run.out.data(), run.lse.data());
  run.dqkv.assign(o.qkv.size(), kPoison);
  const int64_t dk = o.k() - o.q(), dv = o.v() - o.q();
  AttentionBackwardBf16(s, o.q(), o.k(), o.v(), run.out.data(), o.dout.data(), run.lse.data(),
                        run.dqkv.data(), run.dqkv.data() + dk, run.dqkv.data() + dv);
  return run;
}

struct Checked {
  double worst_ratio = 0.0;  // max error / bound
  double mean_error = 0.0;   // mean error / (magnitude + tiny)
};

// |got - want| <= bound at every head column of every row; fails the test
// for the first few that are not.
Checked Expect(const std::string& what, const float* got, const std::vector<double>& want,
               const std::vector<double>& bound, const std::vector<double>& magnitude,
               const AttentionShape& s, int64_t stride) {
  Checked checked;
  int failures = 0;
  int64_t count = 0;
  for (int64_t row = 0; row < s.batch * s.seq; ++row) {
    for (int64_t h = 0; h < s.heads; ++h) {
      for (int64_t d = 0; d < s.head_dim; ++d) {
        const int64_t e = row * stride + h * s.head_dim + d;
        const double error = std::fabs(static_cast<double>(got[e]) - want[e]);
        checked.worst_ratio = std::max(checked.worst_ratio, error / bound[e]);
        checked.mean_error += error / (magnitude[e] + 1e-6);
        ++count;
        if (!(error <= bound[e]) && failures++ < 5) {
          ADD_FAILURE() << what << " row " << row << " head " << h << " column " << d << ": got "
                        << got[e] << " want " << want[e] << " error " << error << " bound "
                        << bound[e];
        }
      }
    }
  }
  checked.mean_error /= std::max<int64_t>(count, 1);
  return checked;
}

std::vector<double> LooseBound(const std::vector<double>& magnitude,
                               const std::vector<double>& want) {
  double largest = 0.0;
  for (double x : want) largest = std::max(largest, std::fabs(x));
  std::vector<double> bound(magnitude.size());
  // 1e-7: an element whose terms cancel exactly in double (one token: dS =
  // dP - D = 0) is an fp32 difference of O(1) values.
  for (size_t e = 0; e < bound.size(); ++e) {
    bound[e] = std::ldexp(magnitude[e], -8) + 1e-5 * largest + 1e-7;
  }
  return bound;
}

std::vector<double> TightBound(const std::vector<double>& magnitude,
                               const std::vector<double>& largest_term,
                               const std::vector<double>& cancel,
                               const std::vector<double>& want) {
  double largest = 0.0;
  for (double x : want) largest = std::max(largest, std::fabs(x));
  std::vector<double> bound(magnitude.size());
  for (size_t e = 0; e < bound.size(); ++e) {
    bound[e] = std::ldexp(magnitude[e], -16) + std::ldexp(largest_term[e], -7) +
               std::ldexp(cancel[e], -18) + 1e-7 * largest + 1e-7;
  }
  return bound;
}

struct Param {
  Case c;
  bool portable;
};

std::string Name(const ::testing::TestParamInfo<Param>& info) {
  std::ostringstream os;
  os << info.param.c << (info.param.portable ? "_portable" : "_dot");
  return os.str();
}

class AttentionBf16Test : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    if (!GetParam().portable && !Bf16AttentionUsesDotInstructions()) {
      GTEST_SKIP() << "this CPU has no AVX-512 BF16";
    }
    internal::ForcePortableBf16Attention(GetParam().portable);
  }
  void TearDown() override { internal::ForcePortableBf16Attention(false); }
};

TEST_P(AttentionBf16Test, MatchesDoubleReferenceOnRoundedInputsWithinTheRoundingBound) {
  const Operands o = MakeOperands(GetParam().c, 11);
  const AttentionShape& s = o.shape;
  const KernelRun run = RunKernel(o);
  const Reference r = ComputeReference(o, run.out);
  Expect("out", run.out.data(), r.out_plain, LooseBound(r.out_magnitude, r.out_plain),
         r.out_magnitude, s, s.heads * s.head_dim);
  for (size_t e = 0; e < r.lse.size(); ++e) {
    ASSERT_NEAR(run.lse[e], r.lse[e], 2e-5 * std::max(1.0, std::fabs(r.lse[e]))) << "lse " << e;
  }
  const int64_t dk = o.k() - o.q(), dv = o.v() - o.q();
  Expect("dq", run.dqkv.data(), r.dq_plain, LooseBound(r.dq_magnitude, r.dq_plain), r.dq_magnitude,
         s, s.row_stride);
  Expect("dk", run.dqkv.data() + dk, r.dk_plain, LooseBound(r.dk_magnitude, r.dk_plain),
         r.dk_magnitude, s, s.row_stride);
  Expect("dv", run.dqkv.data() + dv, r.dv_plain, LooseBound(r.dv_magnitude, r.dv_plain),
         r.dv_magnitude, s, s.row_stride);
  // Nothing outside the heads' columns (the padding of each row) was
  // written: every other element of dqkv still holds the poison.
  const int64_t written = 3 * s.batch * s.seq * s.heads * s.head_dim;
  EXPECT_EQ(std::count(run.dqkv.begin(), run.dqkv.end(), kPoison),
            static_cast<int64_t>(run.dqkv.size()) - written);
}

TEST_P(AttentionBf16Test, RoundsWhereTheGpuKernelRounds) {
  const Operands o = MakeOperands(GetParam().c, 12);
  const AttentionShape& s = o.shape;
  const KernelRun run = RunKernel(o);
  const Reference r = ComputeReference(o, run.out);
  const int64_t dk = o.k() - o.q(), dv = o.v() - o.q();
  struct Item {
    const char* what;
    const float* got;
    const std::vector<double>*rounded, *plain, *magnitude, *largest, *cancel;
    int64_t stride;
  };
  std::vector<Item> items = {
      {"dq", run.dqkv.data(), &r.dq_rounded, &r.dq_plain, &r.dq_magnitude, &r.dq_largest,
       &r.dq_cancel, s.row_stride},
      {"dk", run.dqkv.data() + dk, &r.dk_rounded, &r.dk_plain, &r.dk_magnitude, &r.dk_largest,
       &r.dk_cancel, s.row_stride},
      {"dv", run.dqkv.data() + dv, &r.dv_rounded, &r.dv_plain, &r.dv_magnitude, &r.dv_largest,
       &r.zero, s.row_stride},
  };
  if (s.seq <= 256) {
    items.push_back({"out", run.out.data(), &r.out_rounded, &r.out_plain, &r.out_magnitude,
                     &r.out_largest, &r.zero, s.heads * s.head_dim});
  }
  for (const Item& item : items) {
    SCOPED_TRACE(item.what);
    const Checked against_rounded =
        Expect(absl::StrCat(item.what, " (rounding reference)"), item.got, *item.rounded,
               TightBound(*item.magnitude, *item.largest, *item.cancel, *item.rounded),
               *item.magnitude, s,
               item.stride);
    // The same errors against the reference that does not round P and dS:
    // with one token there is nothing to round (P = 1, dS = 0).
    if (s.seq < 8) continue;
    std::vector<double> unbounded(item.magnitude->size(), std::numeric_limits<double>::infinity());
    const Checked against_plain =
        Expect(absl::StrCat(item.what, " (plain)"), item.got, *item.plain, unbounded,
               *item.magnitude, s, item.stride);
    EXPECT_LT(against_rounded.mean_error, 0.5 * against_plain.mean_error)
        << "P and dS do not look rounded: mean relative error " << against_rounded.mean_error
        << " against the rounding reference, " << against_plain.mean_error << " against the plain one";
  }
}

std::vector<Param> Params() {
  const std::vector<Case> cases = {
      {2, 77, 3, 64, false, true, 0, 1.0f},    // seq not a multiple of 16 or 64, batch > 1
      {2, 77, 3, 64, true, true, 0, 1.0f},     // causal
      {1, 130, 2, 128, false, true, 4, 1.0f},  // 128 columns, padded fused rows
      {1, 130, 2, 128, true, false, 0, 1.0f},  // separate buffers
      {3, 64, 2, 64, true, false, 8, 3.0f},    // one query block, large scores, padded rows
      {1, 1, 1, 64, false, true, 0, 1.0f},     // one token
      {1, 300, 1, 128, true, true, 0, 3.0f},   // two key blocks: the online rescaling
      {1, 300, 2, 96, false, true, 0, 1.0f},   // two key blocks, not causal
      {1, 70, 2, 72, true, true, 4, 1.0f},     // 72 columns (pads to 80)
      {2, 33, 4, 20, false, true, 0, 1.0f},    // 20 columns, odd seq
      {2, 256, 2, 64, false, true, 0, 1.0f},   // exactly one key block (DiT's S/2)
  };
  std::vector<Param> params;
  for (bool portable : {false, true}) {
    for (const Case& c : cases) params.push_back({c, portable});
  }
  return params;
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionBf16Test, ::testing::ValuesIn(Params()), Name);

// The instructions and the portable code round at the same points; only the
// order and fusing of fp32 adds differ.
TEST(AttentionBf16, DotInstructionsAndPortableCodeAgree) {
  if (!Bf16AttentionUsesDotInstructions()) GTEST_SKIP() << "this CPU has no AVX-512 BF16";
  const Operands o = MakeOperands({2, 150, 3, 64, true, true, 0, 2.0f}, 13);
  const KernelRun dot = RunKernel(o);
  internal::ForcePortableBf16Attention(true);
  const KernelRun portable = RunKernel(o);
  internal::ForcePortableBf16Attention(false);
  auto close = [](const std::vector<float>& a, const std::vector<float>& b, const char* what) {
    double largest = 0.0, worst = 0.0;
    for (size_t e = 0; e < a.size(); ++e) largest = std::max(largest, std::fabs(double{b[e]}));
    for (size_t e = 0; e < a.size(); ++e) worst = std::max(worst, std::fabs(double{a[e]} - b[e]));
    // A P or dS whose fp32 sums differ in the last bit can round to the
    // other bf16 neighbour: 2^-8 of one term, far below 1e-3 of the largest.
    EXPECT_LE(worst, 1e-3 * largest) << what;
    EXPECT_GT(largest, 0.0) << what;
  };
  close(dot.out, portable.out, "out");
  close(dot.lse, portable.lse, "lse");
  close(dot.dqkv, portable.dqkv, "dqkv");
}

TEST(AttentionBf16, IsBitwiseIdenticalAcrossRunsAndThreadCounts) {
  const Operands o = MakeOperands({2, 200, 3, 64, true, true, 0, 1.0f}, 14);
  const int threads = NumThreads();
  SetNumThreads(1);
  const KernelRun one = RunKernel(o);
  SetNumThreads(2);
  const KernelRun two = RunKernel(o);
  const KernelRun again = RunKernel(o);
  SetNumThreads(threads);
  for (const KernelRun* run : {&two, &again}) {
    EXPECT_EQ(run->out, one.out);
    EXPECT_EQ(run->lse, one.lse);
    EXPECT_EQ(run->dqkv, one.dqkv);
  }
}

// The CPU takes the bf16 path for the shapes the GPU's kernels take
// (cuda::PlanBf16Attention), so a bf16 run rounds alike on both.
TEST(AttentionBf16, TakesTheShapesOfTheGpuKernels) {
  auto shape = [](int64_t dh, int64_t rs) { return AttentionShape{2, 100, 3, dh, rs, false}; };
  EXPECT_TRUE(Bf16AttentionTakes(shape(64, 3 * 3 * 64)));
  EXPECT_TRUE(Bf16AttentionTakes(shape(16, 48)));
  EXPECT_TRUE(Bf16AttentionTakes(shape(128, 3 * 128 + 4)));
  EXPECT_TRUE(Bf16AttentionTakes(shape(72, 216)));
  EXPECT_FALSE(Bf16AttentionTakes(shape(12, 36)));    // too narrow
  EXPECT_FALSE(Bf16AttentionTakes(shape(132, 396)));  // too wide
  EXPECT_FALSE(Bf16AttentionTakes(shape(66, 198)));   // not a multiple of 4
  EXPECT_FALSE(Bf16AttentionTakes(shape(64, 194)));   // row stride not a multiple of 4
  EXPECT_FALSE(Bf16AttentionTakes(shape(64, 128)));   // row stride narrower than the heads
}

}  // namespace
}  // namespace tessera::cpu
