#include "runtime/kernels/cpu/routing.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace tessera::cpu {
namespace {

std::vector<float> Random(int64_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> x(n);
  for (float& value : x) value = dist(gen);
  return x;
}

// Random expert choices in [-1, experts): -1 is a dropped assignment.
std::vector<int32_t> RandomExperts(int64_t n, int64_t experts, uint32_t seed, bool with_drops) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int32_t> dist(with_drops ? -1 : 0,
                                              static_cast<int32_t>(experts) - 1);
  std::vector<int32_t> e(n);
  for (int32_t& value : e) value = dist(gen);
  return e;
}

struct Routing {
  std::vector<int64_t> offsets;
  std::vector<int32_t> row_of_assignment, assignment_of_row;
  int64_t rows() const { return offsets.back(); }
};

Routing Sort(const std::vector<int32_t>& expert_index, int64_t experts) {
  Routing r;
  r.offsets.assign(experts + 1, -7);
  r.row_of_assignment.assign(expert_index.size(), -7);
  r.assignment_of_row.assign(expert_index.size(), -7);
  SortByExpert(expert_index.data(), expert_index.size(), experts, r.offsets.data(),
               r.row_of_assignment.data(), r.assignment_of_row.data());
  return r;
}

TEST(TopK, TiesGoToTheLowerExpertAndSlotsAreDescending) {
  // Hand-derived: 0.3 at experts 1 and 2, 0.2 at experts 0 and 3.
  const std::vector<float> probs = {0.2f, 0.3f, 0.3f, 0.2f};
  const std::vector<std::vector<int32_t>> want = {{1}, {1, 2}, {1, 2, 0}, {1, 2, 0, 3}};
  for (int64_t k = 1; k <= 4; ++k) {
    std::vector<int32_t> index(k, -1);
    std::vector<float> weights(k, -1.0f);
    TopKForward(probs.data(), index.data(), weights.data(), 1, 4, k);
    EXPECT_EQ(index, want[k - 1]) << "k = " << k;
    for (int64_t s = 0; s < k; ++s) EXPECT_EQ(weights[s], probs[index[s]]);
  }
}

TEST(TopK, MatchesRepeatedArgmaxForEveryK) {
  constexpr int64_t kTokens = 37, kExperts = 7;
  std::vector<float> probs = Random(kTokens * kExperts, 1, 0.0f, 1.0f);
  // Quantize so ties are common.
  for (float& p : probs) p = std::round(p * 4.0f) / 4.0f;
  for (int64_t k = 1; k <= kExperts; ++k) {
    std::vector<int32_t> index(kTokens * k);
    std::vector<float> weights(kTokens * k);
    TopKForward(probs.data(), index.data(), weights.data(), kTokens, kExperts, k);
    for (int64_t t = 0; t < kTokens; ++t) {
      std::vector<bool> taken(kExperts, false);
      for (int64_t s = 0; s < k; ++s) {
        int64_t best = -1;  // strict > keeps the lowest index among equals
        for (int64_t e = 0; e < kExperts; ++e) {
          if (!taken[e] && (best < 0 || probs[t * kExperts + e] > probs[t * kExperts + best])) {
            best = e;
          }
        }
        taken[best] = true;
        ASSERT_EQ(index[t * k + s], best) << "token " << t << " slot " << s << " k " << k;
        EXPECT_EQ(weights[t * k + s], probs[t * kExperts + best]);
      }
    }
  }
}

TEST(TopK, BackwardAddsEachSlotGradientToItsExpert) {
  constexpr int64_t kTokens = 5, kExperts = 6, kK = 3;
  const std::vector<float> probs = Random(kTokens * kExperts, 2, 0.0f, 1.0f);
  std::vector<int32_t> index(kTokens * kK);
  std::vector<float> weights(kTokens * kK);
  TopKForward(probs.data(), index.data(), weights.data(), kTokens, kExperts, kK);
  const std::vector<float> dweights = Random(kTokens * kK, 3);
  std::vector<float> dprobs = Random(kTokens * kExperts, 4);  // accumulates onto this
  std::vector<float> want = dprobs;
  for (int64_t t = 0; t < kTokens; ++t) {
    for (int64_t e = 0; e < kExperts; ++e) {
      for (int64_t s = 0; s < kK; ++s) {
        if (index[t * kK + s] == e) want[t * kExperts + e] += dweights[t * kK + s];
      }
    }
  }
  TopKBackward(dweights.data(), index.data(), dprobs.data(), kTokens, kExperts, kK);
  for (size_t i = 0; i < want.size(); ++i) EXPECT_FLOAT_EQ(dprobs[i], want[i]);
}

TEST(SortByExpert, HandExampleWithEmptyExpertsAndDrops) {
  // Experts 1 and 3 get nothing; assignment 2 is dropped.
  const Routing r = Sort({2, 0, -1, 2, 0, 2}, 4);
  EXPECT_EQ(r.offsets, (std::vector<int64_t>{0, 2, 2, 5, 5}));
  EXPECT_EQ(r.row_of_assignment, (std::vector<int32_t>{2, 0, -1, 3, 1, 4}));
  EXPECT_EQ(r.assignment_of_row, (std::vector<int32_t>{1, 4, 0, 3, 5, -1}));
}

TEST(SortByExpert, IsAStableInversePermutationGroupedByExpert) {
  constexpr int64_t kExperts = 9;
  for (bool with_drops : {false, true}) {
    const std::vector<int32_t> experts = RandomExperts(200, kExperts, 5, with_drops);
    const Routing r = Sort(experts, kExperts);
    int64_t kept = 0;
    for (int32_t e : experts) kept += e >= 0;
    ASSERT_EQ(r.rows(), kept);
    EXPECT_EQ(r.offsets[0], 0);
    for (int64_t e = 0; e < kExperts; ++e) {
      int64_t count = 0;
      for (int32_t x : experts) count += x == e;
      EXPECT_EQ(r.offsets[e + 1] - r.offsets[e], count) << "expert " << e;
      for (int64_t row = r.offsets[e]; row < r.offsets[e + 1]; ++row) {
        EXPECT_EQ(experts[r.assignment_of_row[row]], e);
        if (row > r.offsets[e]) {  // stable: assignment order kept inside an expert
          EXPECT_LT(r.assignment_of_row[row - 1], r.assignment_of_row[row]);
        }
      }
    }
    for (size_t a = 0; a < experts.size(); ++a) {
      if (experts[a] < 0) {
        EXPECT_EQ(r.row_of_assignment[a], -1);
      } else {
        EXPECT_EQ(r.assignment_of_row[r.row_of_assignment[a]], static_cast<int32_t>(a));
      }
    }
  }
}

TEST(SortByExpert, NoAssignmentsGiveZeroOffsets) {
  const Routing r = Sort({}, 3);
  EXPECT_EQ(r.offsets, (std::vector<int64_t>{0, 0, 0, 0}));
}

// A routing of `tokens` tokens with k slots over `experts` experts, some
// assignments dropped.
struct Problem {
  int64_t tokens, dim, k, experts;
  std::vector<int32_t> expert_index;
  Routing routing;
};

Problem MakeProblem(int64_t tokens, int64_t dim, int64_t k, int64_t experts, uint32_t seed) {
  Problem p{tokens, dim, k, experts, RandomExperts(tokens * k, experts, seed, true), {}};
  p.routing = Sort(p.expert_index, experts);
  return p;
}

double Dot(const std::vector<float>& a, const std::vector<float>& b) {
  double sum = 0.0;
  for (size_t i = 0; i < a.size(); ++i) sum += static_cast<double>(a[i]) * b[i];
  return sum;
}

TEST(Permute, ForwardGathersTokenRowsInExpertOrder) {
  const Problem p = MakeProblem(23, 13, 2, 5, 6);
  const std::vector<float> x = Random(p.tokens * p.dim, 7);
  std::vector<float> out(p.routing.rows() * p.dim, NAN);
  PermuteForward(x.data(), p.routing.assignment_of_row.data(), out.data(), p.routing.rows(), p.dim,
                 p.k);
  for (int64_t t = 0; t < p.tokens; ++t) {
    for (int64_t s = 0; s < p.k; ++s) {
      const int32_t row = p.routing.row_of_assignment[t * p.k + s];
      if (row < 0) continue;
      for (int64_t d = 0; d < p.dim; ++d) EXPECT_EQ(out[row * p.dim + d], x[t * p.dim + d]);
    }
  }
}

TEST(Permute, BackwardIsTheAdjointOfForward) {
  for (int64_t tokens : {0, 1, 31}) {
    const Problem p = MakeProblem(tokens, 9, 3, 4, 8);
    const std::vector<float> x = Random(p.tokens * p.dim, 9);
    const std::vector<float> dout = Random(p.routing.rows() * p.dim, 10);
    std::vector<float> out(p.routing.rows() * p.dim);
    std::vector<float> dx(p.tokens * p.dim, NAN);  // overwritten, also for all-dropped tokens
    PermuteForward(x.data(), p.routing.assignment_of_row.data(), out.data(), p.routing.rows(),
                   p.dim, p.k);
    PermuteBackward(dout.data(), p.routing.row_of_assignment.data(), dx.data(), p.tokens, p.dim,
                    p.k);
    // <dout, Permute(x)> == <PermuteBackward(dout), x>
    EXPECT_NEAR(Dot(dout, out), Dot(dx, x), 1e-4 * (1.0 + std::abs(Dot(dout, out))));
    for (float v : dx) EXPECT_TRUE(std::isfinite(v));
  }
}

std::vector<double> NaiveCombine(const Problem& p, const std::vector<float>& expert_out,
                                 const std::vector<float>& weights,
                                 const std::vector<float>& out0) {
  std::vector<double> out(out0.begin(), out0.end());
  for (int64_t a = 0; a < p.tokens * p.k; ++a) {
    const int32_t row = p.routing.row_of_assignment[a];
    if (row < 0) continue;
    for (int64_t d = 0; d < p.dim; ++d) {
      out[(a / p.k) * p.dim + d] += static_cast<double>(weights[a]) * expert_out[row * p.dim + d];
    }
  }
  return out;
}

TEST(UnpermuteCombine, ForwardAddsWeightedExpertRowsToTokens) {
  const Problem p = MakeProblem(29, 11, 2, 6, 11);
  const std::vector<float> expert_out = Random(p.routing.rows() * p.dim, 12);
  const std::vector<float> weights = Random(p.tokens * p.k, 13, 0.0f, 1.0f);
  std::vector<float> out = Random(p.tokens * p.dim, 14);  // accumulates onto this
  const std::vector<double> want = NaiveCombine(p, expert_out, weights, out);
  UnpermuteCombineForward(expert_out.data(), p.routing.row_of_assignment.data(), weights.data(),
                          out.data(), p.tokens, p.dim, p.k);
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], want[i], 1e-5);
}

// L = <dout, Combine(expert_out, weights)>: the combine is linear in each
// argument, so central differences are exact up to rounding.
TEST(UnpermuteCombine, BackwardMatchesFiniteDifferences) {
  const Problem p = MakeProblem(17, 7, 3, 4, 15);
  const int64_t rows = p.routing.rows();
  std::vector<float> expert_out = Random(rows * p.dim, 16);
  std::vector<float> weights = Random(p.tokens * p.k, 17, 0.0f, 1.0f);
  const std::vector<float> dout = Random(p.tokens * p.dim, 18);
  auto loss = [&]() {
    std::vector<float> out(p.tokens * p.dim, 0.0f);
    UnpermuteCombineForward(expert_out.data(), p.routing.row_of_assignment.data(), weights.data(),
                            out.data(), p.tokens, p.dim, p.k);
    return Dot(dout, out);
  };
  // One spare row past the kept ones must stay untouched.
  constexpr float kSentinel = 42.0f;
  std::vector<float> dexpert_out((rows + 1) * p.dim, kSentinel);
  std::vector<float> dweights(p.tokens * p.k, NAN);
  UnpermuteCombineBackward(dout.data(), expert_out.data(), p.routing.row_of_assignment.data(),
                           weights.data(), dexpert_out.data(), dweights.data(), p.tokens, p.dim,
                           p.k);

  constexpr float kEps = 1e-2f;
  auto central = [&](float* x) {
    const float saved = *x;
    *x = saved + kEps;
    const double plus = loss();
    *x = saved - kEps;
    const double minus = loss();
    *x = saved;
    return (plus - minus) / (2.0 * kEps);
  };
  for (int64_t i = 0; i < rows * p.dim; ++i) {
    EXPECT_NEAR(dexpert_out[i], central(&expert_out[i]), 1e-4) << "expert_out " << i;
  }
  for (int64_t a = 0; a < p.tokens * p.k; ++a) {
    EXPECT_NEAR(dweights[a], central(&weights[a]), 1e-4) << "weight " << a;
    if (p.expert_index[a] < 0) {
      EXPECT_EQ(dweights[a], 0.0f);
    }
  }
  for (int64_t d = 0; d < p.dim; ++d) EXPECT_EQ(dexpert_out[rows * p.dim + d], kSentinel);
}

}  // namespace
}  // namespace tessera::cpu
