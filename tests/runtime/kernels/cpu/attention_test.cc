#include "runtime/kernels/cpu/attention.h"

#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/runtime/kernels/cpu/attention_reference.h"

namespace tessera::cpu {
namespace {

using reference::ReferenceAttentionBackward;
using reference::ReferenceAttentionForward;

struct Case {
  int64_t batch, seq, heads, head_dim;
  bool fused;  // q, k, v inside one [B, S, 3, H, Dh] buffer
  bool causal;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << "B" << c.batch << " S" << c.seq << " H" << c.heads << " Dh" << c.head_dim
      << (c.fused ? " fused" : " separate") << (c.causal ? " causal" : " full");
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  return absl::StrCat("B", c.batch, "S", c.seq, "H", c.heads, "D", c.head_dim,
                      c.fused ? "Fused" : "Separate", c.causal ? "Causal" : "Full");
}

// Q, K and V (and their gradients) live in one buffer in both layouts: fused
// interleaves them per token, separate puts three [B, S, H*Dh] arrays end to
// end. Offsets say where each starts.
struct Layout {
  AttentionShape shape;
  int64_t size = 0;
  int64_t offset[3] = {0, 0, 0};  // q, k, v
  int64_t out_size = 0;           // [B, S, H*Dh]
  int64_t lse_size = 0;           // [B, H, S]
};

Layout MakeLayout(const Case& c) {
  Layout l;
  const int64_t width = c.heads * c.head_dim;
  l.shape = {c.batch, c.seq, c.heads, c.head_dim, c.fused ? 3 * width : width, c.causal};
  const int64_t tokens = c.batch * c.seq;
  l.size = 3 * tokens * width;
  for (int i = 0; i < 3; ++i) l.offset[i] = c.fused ? i * width : i * tokens * width;
  l.out_size = tokens * width;
  l.lse_size = c.batch * c.heads * c.seq;
  return l;
}

std::vector<float> Random(int64_t n, float range, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-range, range);
  std::vector<float> x(n);
  for (float& value : x) value = dist(gen);
  return x;
}

std::vector<double> ToDouble(const std::vector<float>& x) { return {x.begin(), x.end()}; }

// max |got - want| / max(1, max |want|): error relative to the tensor's scale.
double NormalizedError(const std::vector<float>& got, const std::vector<double>& want) {
  EXPECT_EQ(got.size(), want.size());
  double max_err = 0.0, max_ref = 1.0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
    max_err = std::max(max_err, std::abs(got[i] - want[i]));
    max_ref = std::max(max_ref, std::abs(want[i]));
  }
  return max_err / max_ref;
}

void Forward(const Layout& l, const std::vector<float>& qkv, std::vector<float>* out,
             std::vector<float>* lse) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  out->assign(l.out_size, nan);  // everything must be overwritten
  lse->assign(l.lse_size, nan);
  AttentionForward(l.shape, qkv.data() + l.offset[0], qkv.data() + l.offset[1],
                   qkv.data() + l.offset[2], out->data(), lse->data());
}

void Backward(const Layout& l, const std::vector<float>& qkv, const std::vector<float>& out,
              const std::vector<float>& dout, const std::vector<float>& lse,
              std::vector<float>* dqkv) {
  dqkv->assign(l.size, std::numeric_limits<float>::quiet_NaN());
  AttentionBackward(l.shape, qkv.data() + l.offset[0], qkv.data() + l.offset[1],
                    qkv.data() + l.offset[2], out.data(), dout.data(), lse.data(),
                    dqkv->data() + l.offset[0], dqkv->data() + l.offset[1],
                    dqkv->data() + l.offset[2]);
}

class AttentionTest : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionTest, ForwardAndLseMatchNaiveDoubleReference) {
  const Layout l = MakeLayout(GetParam());
  const std::vector<float> qkv = Random(l.size, 1.5f, 1);
  std::vector<float> out, lse;
  Forward(l, qkv, &out, &lse);

  const std::vector<double> qkv64 = ToDouble(qkv);
  std::vector<double> want_out(l.out_size), want_lse(l.lse_size);
  ReferenceAttentionForward(l.shape, qkv64.data() + l.offset[0], qkv64.data() + l.offset[1],
                            qkv64.data() + l.offset[2], want_out.data(), want_lse.data());
  EXPECT_LT(NormalizedError(out, want_out), 1e-5);
  EXPECT_LT(NormalizedError(lse, want_lse), 1e-5);
}

TEST_P(AttentionTest, BackwardMatchesNaiveDoubleBackward) {
  const Layout l = MakeLayout(GetParam());
  const std::vector<float> qkv = Random(l.size, 1.5f, 2);
  const std::vector<float> dout = Random(l.out_size, 1.0f, 3);
  std::vector<float> out, lse, dqkv;
  Forward(l, qkv, &out, &lse);
  Backward(l, qkv, out, dout, lse, &dqkv);

  const std::vector<double> qkv64 = ToDouble(qkv), dout64 = ToDouble(dout);
  std::vector<double> want(l.size, 0.0);
  ReferenceAttentionBackward(l.shape, qkv64.data() + l.offset[0], qkv64.data() + l.offset[1],
                             qkv64.data() + l.offset[2], dout64.data(), want.data() + l.offset[0],
                             want.data() + l.offset[1], want.data() + l.offset[2]);
  EXPECT_LT(NormalizedError(dqkv, want), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionTest,
    ::testing::Values(Case{2, 1, 3, 8, false, false},    // one token
                      Case{2, 1, 3, 8, true, true},      // one token, causal
                      Case{2, 70, 2, 32, false, false},  // seq not a multiple of the block
                      Case{2, 70, 2, 32, true, true},    //
                      Case{1, 64, 6, 64, true, false},   // exactly one query block
                      Case{1, 129, 1, 8, false, true},   // one past two query blocks
                      Case{1, 300, 2, 64, true, false},  // two key blocks: online rescaling
                      Case{1, 300, 1, 32, false, true},  // the same, causal
                      Case{3, 17, 5, 64, true, true}),   // odd everything
    CaseName);

// L(q, k, v) = sum(dO * O), evaluated by the double reference; the kernel's
// gradients must match its central differences.
TEST(AttentionGradient, BackwardMatchesFiniteDifferences) {
  for (const Case& c : {Case{1, 5, 2, 8, true, true}, Case{2, 3, 1, 8, false, false},
                        Case{1, 4, 1, 8, false, true}, Case{1, 1, 2, 8, true, false}}) {
    SCOPED_TRACE(absl::StrCat("B", c.batch, " S", c.seq, " H", c.heads, " fused ", c.fused,
                              " causal ", c.causal));
    const Layout l = MakeLayout(c);
    const std::vector<float> qkv = Random(l.size, 1.5f, 4);
    const std::vector<float> dout = Random(l.out_size, 1.0f, 5);
    std::vector<float> out, lse, dqkv;
    Forward(l, qkv, &out, &lse);
    Backward(l, qkv, out, dout, lse, &dqkv);

    std::vector<double> x = ToDouble(qkv);
    std::vector<double> o(l.out_size), unused_lse(l.lse_size);
    auto loss = [&]() {
      ReferenceAttentionForward(l.shape, x.data() + l.offset[0], x.data() + l.offset[1],
                                x.data() + l.offset[2], o.data(), unused_lse.data());
      double sum = 0.0;
      for (int64_t i = 0; i < l.out_size; ++i) sum += dout[i] * o[i];
      return sum;
    };
    constexpr double kEps = 1e-6;
    std::vector<double> numeric(l.size);
    for (int64_t i = 0; i < l.size; ++i) {
      const double saved = x[i];
      x[i] = saved + kEps;
      const double plus = loss();
      x[i] = saved - kEps;
      const double minus = loss();
      x[i] = saved;
      numeric[i] = (plus - minus) / (2 * kEps);
    }
    EXPECT_LT(NormalizedError(dqkv, numeric), 1e-4);
  }
}

TEST(AttentionGradient, BackwardIsBitwiseIdenticalAcrossRunsAndThreadCounts) {
  const Layout l = MakeLayout(Case{2, 100, 3, 32, true, false});
  const std::vector<float> qkv = Random(l.size, 1.5f, 6);
  const std::vector<float> dout = Random(l.out_size, 1.0f, 7);
  std::vector<float> out, lse, first, second, single_thread;
  Forward(l, qkv, &out, &lse);
  Backward(l, qkv, out, dout, lse, &first);
  Backward(l, qkv, out, dout, lse, &second);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  Backward(l, qkv, out, dout, lse, &single_thread);
  omp_set_num_threads(threads);
  EXPECT_EQ(std::memcmp(first.data(), second.data(), first.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(first.data(), single_thread.data(), first.size() * sizeof(float)), 0);
}

TEST(AttentionEdgeCases, EmptyBatchOrSequenceTouchesNothing) {
  for (const Case& c : {Case{0, 16, 2, 8, false, false}, Case{2, 0, 2, 8, true, true}}) {
    const Layout l = MakeLayout(c);
    std::vector<float> sentinel(8, 7.0f);
    AttentionForward(l.shape, sentinel.data(), sentinel.data(), sentinel.data(), sentinel.data(),
                     sentinel.data());
    AttentionBackward(l.shape, sentinel.data(), sentinel.data(), sentinel.data(), sentinel.data(),
                      sentinel.data(), sentinel.data(), sentinel.data(), sentinel.data(),
                      sentinel.data());
    for (float value : sentinel) EXPECT_EQ(value, 7.0f);
  }
}

}  // namespace
}  // namespace tessera::cpu
