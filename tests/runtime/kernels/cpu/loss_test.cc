#include "runtime/kernels/cpu/loss.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "tests/runtime/kernels/cpu/reference.h"

namespace tessera::cpu {
namespace {

using test::MaxRelativeError;
using test::NumericalGradient;
using test::RandomFloats;
using test::ToDouble;

double ReferenceMse(const std::vector<double>& pred, const std::vector<double>& target) {
  double sum = 0.0;
  for (size_t i = 0; i < pred.size(); ++i) sum += (pred[i] - target[i]) * (pred[i] - target[i]);
  return sum / static_cast<double>(pred.size());
}

// Mean over rows of logsumexp(logits) - logits[target], with the softmax.
double ReferenceCrossEntropy(const std::vector<double>& logits, const std::vector<int32_t>& targets,
                             int64_t classes, std::vector<double>* probs = nullptr) {
  const int64_t rows = static_cast<int64_t>(targets.size());
  double total = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    const double* x = logits.data() + r * classes;
    double max = x[0];
    for (int64_t j = 0; j < classes; ++j) max = std::max(max, x[j]);
    double sum = 0.0;
    for (int64_t j = 0; j < classes; ++j) sum += std::exp(x[j] - max);
    total += std::log(sum) + max - x[targets[r]];
    if (probs != nullptr) {
      for (int64_t j = 0; j < classes; ++j) probs->push_back(std::exp(x[j] - max) / sum);
    }
  }
  return total / static_cast<double>(rows);
}

std::vector<int32_t> RandomTargets(int64_t rows, int32_t classes, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> t(rows);
  for (int32_t& v : t) v = static_cast<int32_t>(rng.NextU64() % classes);
  return t;
}

TEST(Mse, ForwardMatchesDoubleReferenceAndIsZeroForNoElements) {
  EXPECT_EQ(MseForward(nullptr, nullptr, 0), 0.0);
  for (int64_t n : {1, 7, 33, 100000}) {
    const auto pred = RandomFloats(n, n);
    const auto target = RandomFloats(n, n + 1);
    const double want = ReferenceMse(ToDouble(pred), ToDouble(target));
    EXPECT_NEAR(MseForward(pred.data(), target.data(), n), want, 1e-12 * want) << "n=" << n;
  }
}

TEST(Mse, BackwardIsGradientOfScaledMean) {
  const int64_t n = 13;
  const float scale = 0.37f;
  const auto pred = RandomFloats(n, 1);
  const auto target = RandomFloats(n, 2);
  const auto td = ToDouble(target);
  std::vector<float> dpred(n, 9.0f);
  MseBackward(pred.data(), target.data(), dpred.data(), n, scale);
  const auto want = NumericalGradient(
      [&](const std::vector<double>& p) { return scale * ReferenceMse(p, td); }, ToDouble(pred));
  EXPECT_LE(MaxRelativeError(dpred, want), 1e-5);
}

TEST(CrossEntropy, ForwardMatchesDoubleReference) {
  uint64_t seed = 10;
  for (int64_t rows : {1, 7, 33}) {
    for (int64_t classes : {1, 7, 1000}) {
      const auto logits = RandomFloats(rows * classes, seed++, -6.0f, 6.0f);
      const auto targets = RandomTargets(rows, static_cast<int32_t>(classes), seed++);
      std::vector<double> want_probs;
      const double want = ReferenceCrossEntropy(ToDouble(logits), targets, classes, &want_probs);
      std::vector<float> probs(rows * classes);
      const double got =
          CrossEntropyForward(logits.data(), targets.data(), probs.data(), rows, classes);
      EXPECT_NEAR(got, want, 1e-6 * (1.0 + want)) << "rows=" << rows << " classes=" << classes;
      EXPECT_LE(MaxRelativeError(probs, want_probs), 1e-5);
    }
  }
}

// A target whose probability underflows float must still give its finite,
// exact loss (log-sum-exp form, not -log(p)).
TEST(CrossEntropy, ForwardIsFiniteWhenTargetProbabilityUnderflows) {
  const std::vector<float> logits = {0.0f, 200.0f, -300.0f, 1e4f};
  const std::vector<int32_t> targets = {0, 0};  // p = e^-200 and e^-10300
  std::vector<float> probs(4);
  const double got = CrossEntropyForward(logits.data(), targets.data(), probs.data(), 2, 2);
  const double want = ReferenceCrossEntropy(ToDouble(logits), targets, 2);
  EXPECT_NEAR(got, want, 1e-6 * want);
  EXPECT_EQ(CrossEntropyForward(nullptr, nullptr, nullptr, 0, 5), 0.0);
}

TEST(CrossEntropy, BackwardIsGradientOfScaledMean) {
  const int64_t rows = 6, classes = 9;
  const float scale = 1.7f;
  const auto logits = RandomFloats(rows * classes, 30, -3.0f, 3.0f);
  const auto targets = RandomTargets(rows, classes, 31);
  std::vector<float> probs(rows * classes), dlogits(rows * classes, 9.0f);
  CrossEntropyForward(logits.data(), targets.data(), probs.data(), rows, classes);
  CrossEntropyBackward(probs.data(), targets.data(), dlogits.data(), rows, classes, scale);
  const auto want = NumericalGradient(
      [&](const std::vector<double>& x) {
        return scale * ReferenceCrossEntropy(x, targets, classes);
      },
      ToDouble(logits));
  EXPECT_LE(MaxRelativeError(dlogits, want), 1e-5);
}

TEST(Loss, ResultsAreBitwiseIndependentOfThreadCount) {
  const int64_t rows = 200, classes = 300, n = rows * classes;
  const auto logits = RandomFloats(n, 40, -5.0f, 5.0f);
  const auto target = RandomFloats(n, 41);
  const auto targets = RandomTargets(rows, classes, 42);
  auto run = [&](int threads) {
    test::ScopedNumThreads scoped(threads);
    std::vector<float> probs(n);
    const double ce =
        CrossEntropyForward(logits.data(), targets.data(), probs.data(), rows, classes);
    const double mse = MseForward(logits.data(), target.data(), n);
    return std::vector<double>{ce, mse};
  };
  const auto serial = run(1);
  EXPECT_EQ(serial, run(2));
  EXPECT_EQ(serial, run(3));
}

}  // namespace
}  // namespace tessera::cpu
