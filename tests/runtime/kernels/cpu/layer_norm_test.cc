#include "runtime/kernels/cpu/layer_norm.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/runtime/kernels/cpu/reference.h"

namespace tessera::cpu {
namespace {

using test::Dot;
using test::MaxRelativeError;
using test::NumericalGradient;
using test::RandomFloats;
using test::ToDouble;

constexpr double kEps = 1e-5;

// Double reference. Empty gamma/beta mean "no affine"; mean/rstd optional.
std::vector<double> ReferenceLayerNorm(const std::vector<double>& x,
                                       const std::vector<double>& gamma,
                                       const std::vector<double>& beta, int64_t rows, int64_t dim,
                                       std::vector<double>* mean = nullptr,
                                       std::vector<double>* rstd = nullptr) {
  std::vector<double> y(rows * dim);
  for (int64_t r = 0; r < rows; ++r) {
    double mu = 0.0, var = 0.0;
    for (int64_t j = 0; j < dim; ++j) mu += x[r * dim + j];
    mu /= dim;
    for (int64_t j = 0; j < dim; ++j) var += (x[r * dim + j] - mu) * (x[r * dim + j] - mu);
    const double s = 1.0 / std::sqrt(var / dim + kEps);
    if (mean != nullptr) mean->push_back(mu);
    if (rstd != nullptr) rstd->push_back(s);
    for (int64_t j = 0; j < dim; ++j) {
      double v = (x[r * dim + j] - mu) * s;
      if (!gamma.empty()) v *= gamma[j];
      if (!beta.empty()) v += beta[j];
      y[r * dim + j] = v;
    }
  }
  return y;
}

std::vector<double> ReferenceRmsNorm(const std::vector<double>& x, const std::vector<double>& gamma,
                                     int64_t rows, int64_t dim,
                                     std::vector<double>* rstd = nullptr) {
  std::vector<double> y(rows * dim);
  for (int64_t r = 0; r < rows; ++r) {
    double ms = 0.0;
    for (int64_t j = 0; j < dim; ++j) ms += x[r * dim + j] * x[r * dim + j];
    const double s = 1.0 / std::sqrt(ms / dim + kEps);
    if (rstd != nullptr) rstd->push_back(s);
    for (int64_t j = 0; j < dim; ++j) {
      y[r * dim + j] = x[r * dim + j] * s * (gamma.empty() ? 1.0 : gamma[j]);
    }
  }
  return y;
}

enum class Affine { kNone, kGammaOnly, kGammaAndBeta };

TEST(LayerNorm, ForwardMatchesDoubleReference) {
  uint64_t seed = 1;
  for (Affine affine : {Affine::kNone, Affine::kGammaOnly, Affine::kGammaAndBeta}) {
    for (int64_t rows : {0, 1, 7, 33}) {
      for (int64_t dim : {1, 7, 64, 130}) {
        const auto x = RandomFloats(rows * dim, seed++, -2.0f, 3.0f);
        auto gamma = RandomFloats(dim, seed++, 0.5f, 1.5f);
        auto beta = RandomFloats(dim, seed++);
        if (affine == Affine::kNone) gamma.clear();
        if (affine != Affine::kGammaAndBeta) beta.clear();
        std::vector<double> want_mean, want_rstd;
        const auto want = ReferenceLayerNorm(ToDouble(x), ToDouble(gamma), ToDouble(beta), rows,
                                             dim, &want_mean, &want_rstd);
        std::vector<float> y(rows * dim), mean(rows), rstd(rows);
        LayerNormForward(x.data(), gamma.empty() ? nullptr : gamma.data(),
                         beta.empty() ? nullptr : beta.data(), y.data(), mean.data(), rstd.data(),
                         rows, dim, static_cast<float>(kEps));
        const std::string where = absl::StrCat("rows=", rows, " dim=", dim);
        EXPECT_LE(MaxRelativeError(y, want), 1e-5) << where;
        EXPECT_LE(MaxRelativeError(mean, want_mean), 1e-6) << where;
        EXPECT_LE(MaxRelativeError(rstd, want_rstd), 1e-6) << where;
      }
    }
  }
}

// Rows whose mean is 1e4 times their spread: a one-pass E[x^2] - E[x]^2 in
// float would lose every digit of the variance. The output is then limited by
// the float mean it subtracts (ulp(100) / std ~ 1e-3), the statistics are not.
TEST(LayerNorm, ForwardIsAccurateWhenMeanDominatesSpread) {
  const int64_t rows = 4, dim = 256;
  auto x = RandomFloats(rows * dim, 7, -0.01f, 0.01f);
  for (float& v : x) v += 100.0f;
  std::vector<double> want_mean, want_rstd;
  const auto want = ReferenceLayerNorm(ToDouble(x), {}, {}, rows, dim, &want_mean, &want_rstd);
  std::vector<float> y(rows * dim), mean(rows), rstd(rows);
  LayerNormForward(x.data(), nullptr, nullptr, y.data(), mean.data(), rstd.data(), rows, dim,
                   static_cast<float>(kEps));
  EXPECT_LE(MaxRelativeError(mean, want_mean), 1e-7);
  EXPECT_LE(MaxRelativeError(rstd, want_rstd), 1e-6);
  EXPECT_LE(MaxRelativeError(y, want), 2e-3);
}

// L = sum(dy * LayerNorm(x, gamma, beta)); the kernel's dx, dgamma, dbeta
// against central differences of L in double.
TEST(LayerNorm, BackwardMatchesFiniteDifferences) {
  uint64_t seed = 20;
  for (Affine affine : {Affine::kNone, Affine::kGammaAndBeta}) {
    for (int64_t dim : {1, 5, 13}) {
      const int64_t rows = 6;
      const auto x = RandomFloats(rows * dim, seed++, -2.0f, 2.0f);
      const auto dy = RandomFloats(rows * dim, seed++);
      auto gamma = RandomFloats(dim, seed++, 0.5f, 1.5f);
      auto beta = RandomFloats(dim, seed++);
      if (affine == Affine::kNone) {
        gamma.clear();
        beta.clear();
      }
      const auto xd = ToDouble(x), gd = ToDouble(gamma), bd = ToDouble(beta), dyd = ToDouble(dy);
      std::vector<float> y(rows * dim), mean(rows), rstd(rows), dx(rows * dim, 7.0f);
      std::vector<float> dgamma(dim, 0.0f), dbeta(dim, 0.0f);
      const bool has_affine = affine != Affine::kNone;
      LayerNormForward(x.data(), has_affine ? gamma.data() : nullptr,
                       has_affine ? beta.data() : nullptr, y.data(), mean.data(), rstd.data(), rows,
                       dim, static_cast<float>(kEps));
      LayerNormBackward(dy.data(), x.data(), has_affine ? gamma.data() : nullptr, mean.data(),
                        rstd.data(), dx.data(), has_affine ? dgamma.data() : nullptr,
                        has_affine ? dbeta.data() : nullptr, rows, dim);
      const auto want_dx = NumericalGradient(
          [&](const std::vector<double>& v) {
            return Dot(dyd, ReferenceLayerNorm(v, gd, bd, rows, dim));
          },
          xd);
      // dim == 1: the output is constant, both gradients exactly zero.
      EXPECT_LE(MaxRelativeError(dx, want_dx), 1e-4) << "dim=" << dim;
      if (has_affine) {
        const auto want_dgamma = NumericalGradient(
            [&](const std::vector<double>& v) {
              return Dot(dyd, ReferenceLayerNorm(xd, v, bd, rows, dim));
            },
            gd);
        const auto want_dbeta = NumericalGradient(
            [&](const std::vector<double>& v) {
              return Dot(dyd, ReferenceLayerNorm(xd, gd, v, rows, dim));
            },
            bd);
        EXPECT_LE(MaxRelativeError(dgamma, want_dgamma), 1e-4) << "dim=" << dim;
        EXPECT_LE(MaxRelativeError(dbeta, want_dbeta), 1e-4) << "dim=" << dim;
      }
    }
  }
}

TEST(LayerNorm, BackwardOverwritesDxAndAccumulatesParameterGrads) {
  const int64_t rows = 5, dim = 9;
  const auto x = RandomFloats(rows * dim, 40);
  const auto dy = RandomFloats(rows * dim, 41);
  const auto gamma = RandomFloats(dim, 42);
  const auto beta = RandomFloats(dim, 43);
  std::vector<float> y(rows * dim), mean(rows), rstd(rows);
  LayerNormForward(x.data(), gamma.data(), beta.data(), y.data(), mean.data(), rstd.data(), rows,
                   dim, 1e-5f);
  std::vector<float> dx1(rows * dim), dg1(dim, 0.0f), db1(dim, 0.0f);
  LayerNormBackward(dy.data(), x.data(), gamma.data(), mean.data(), rstd.data(), dx1.data(),
                    dg1.data(), db1.data(), rows, dim);
  std::vector<float> dx2(rows * dim), dg2(dim, 0.0f), db2(dim, 0.0f);
  for (int call = 0; call < 2; ++call) {
    LayerNormBackward(dy.data(), x.data(), gamma.data(), mean.data(), rstd.data(), dx2.data(),
                      dg2.data(), db2.data(), rows, dim);
  }
  EXPECT_EQ(dx1, dx2);
  for (int64_t j = 0; j < dim; ++j) {
    EXPECT_FLOAT_EQ(dg2[j], 2.0f * dg1[j]);
    EXPECT_FLOAT_EQ(db2[j], 2.0f * db1[j]);
  }
}

TEST(RmsNorm, ForwardMatchesDoubleReference) {
  uint64_t seed = 60;
  for (bool affine : {false, true}) {
    for (int64_t rows : {0, 1, 7, 33}) {
      for (int64_t dim : {1, 7, 64, 130}) {
        const auto x = RandomFloats(rows * dim, seed++, -2.0f, 3.0f);
        auto gamma = RandomFloats(dim, seed++, 0.5f, 1.5f);
        if (!affine) gamma.clear();
        std::vector<double> want_rstd;
        const auto want = ReferenceRmsNorm(ToDouble(x), ToDouble(gamma), rows, dim, &want_rstd);
        std::vector<float> y(rows * dim), rstd(rows);
        RmsNormForward(x.data(), affine ? gamma.data() : nullptr, y.data(), rstd.data(), rows, dim,
                       static_cast<float>(kEps));
        EXPECT_LE(MaxRelativeError(y, want), 1e-5) << "rows=" << rows << " dim=" << dim;
        EXPECT_LE(MaxRelativeError(rstd, want_rstd), 1e-6) << "rows=" << rows << " dim=" << dim;
      }
    }
  }
}

TEST(RmsNorm, BackwardMatchesFiniteDifferences) {
  uint64_t seed = 80;
  for (bool affine : {false, true}) {
    // Not dim 1: there y = sign(x) (1 - O(eps)) and dx is a float
    // cancellation of O(eps) — meaningless to compare.
    for (int64_t dim : {2, 5, 13}) {
      const int64_t rows = 6;
      const auto x = RandomFloats(rows * dim, seed++, -2.0f, 2.0f);
      const auto dy = RandomFloats(rows * dim, seed++);
      auto gamma = RandomFloats(dim, seed++, 0.5f, 1.5f);
      if (!affine) gamma.clear();
      const auto xd = ToDouble(x), gd = ToDouble(gamma), dyd = ToDouble(dy);
      std::vector<float> y(rows * dim), rstd(rows), dx(rows * dim, 7.0f), dgamma(dim, 0.0f);
      RmsNormForward(x.data(), affine ? gamma.data() : nullptr, y.data(), rstd.data(), rows, dim,
                     static_cast<float>(kEps));
      RmsNormBackward(dy.data(), x.data(), affine ? gamma.data() : nullptr, rstd.data(), dx.data(),
                      affine ? dgamma.data() : nullptr, rows, dim);
      const auto want_dx = NumericalGradient(
          [&](const std::vector<double>& v) {
            return Dot(dyd, ReferenceRmsNorm(v, gd, rows, dim));
          },
          xd);
      EXPECT_LE(MaxRelativeError(dx, want_dx), 1e-4) << "dim=" << dim;
      if (affine) {
        const auto want_dgamma = NumericalGradient(
            [&](const std::vector<double>& v) {
              return Dot(dyd, ReferenceRmsNorm(xd, v, rows, dim));
            },
            gd);
        EXPECT_LE(MaxRelativeError(dgamma, want_dgamma), 1e-4) << "dim=" << dim;
      }
    }
  }
}

TEST(RmsNorm, BackwardOverwritesDxAndAccumulatesDgamma) {
  const int64_t rows = 5, dim = 9;
  const auto x = RandomFloats(rows * dim, 90);
  const auto dy = RandomFloats(rows * dim, 91);
  const auto gamma = RandomFloats(dim, 92);
  std::vector<float> y(rows * dim), rstd(rows);
  RmsNormForward(x.data(), gamma.data(), y.data(), rstd.data(), rows, dim, 1e-5f);
  std::vector<float> dx1(rows * dim), dg1(dim, 0.0f), dx2(rows * dim), dg2(dim, 0.0f);
  RmsNormBackward(dy.data(), x.data(), gamma.data(), rstd.data(), dx1.data(), dg1.data(), rows,
                  dim);
  for (int call = 0; call < 2; ++call) {
    RmsNormBackward(dy.data(), x.data(), gamma.data(), rstd.data(), dx2.data(), dg2.data(), rows,
                    dim);
  }
  EXPECT_EQ(dx1, dx2);
  for (int64_t j = 0; j < dim; ++j) EXPECT_FLOAT_EQ(dg2[j], 2.0f * dg1[j]);
}

// Large enough to run multi-threaded; every output must be bit-identical
// whatever the thread count.
TEST(LayerNorm, ResultsAreBitwiseIndependentOfThreadCount) {
  const int64_t rows = 300, dim = 200;
  const auto x = RandomFloats(rows * dim, 100);
  const auto dy = RandomFloats(rows * dim, 101);
  const auto gamma = RandomFloats(dim, 102);
  const auto beta = RandomFloats(dim, 103);
  auto run = [&](int threads) {
    test::ScopedNumThreads scoped(threads);
    std::vector<float> y(rows * dim), mean(rows), rstd(rows), dx(rows * dim), dg(dim, 0.0f),
        db(dim, 0.0f), rms_y(rows * dim), rms_rstd(rows), rms_dx(rows * dim), rms_dg(dim, 0.0f);
    LayerNormForward(x.data(), gamma.data(), beta.data(), y.data(), mean.data(), rstd.data(), rows,
                     dim, 1e-5f);
    LayerNormBackward(dy.data(), x.data(), gamma.data(), mean.data(), rstd.data(), dx.data(),
                      dg.data(), db.data(), rows, dim);
    RmsNormForward(x.data(), gamma.data(), rms_y.data(), rms_rstd.data(), rows, dim, 1e-5f);
    RmsNormBackward(dy.data(), x.data(), gamma.data(), rms_rstd.data(), rms_dx.data(),
                    rms_dg.data(), rows, dim);
    return std::vector<std::vector<float>>{y, dx, dg, db, rms_y, rms_dx, rms_dg};
  };
  const auto serial = run(1);
  for (int threads : {2, 3}) {
    const auto parallel = run(threads);
    for (size_t i = 0; i < serial.size(); ++i) {
      EXPECT_TRUE(test::BitwiseEqual(serial[i], parallel[i]))
          << "output " << i << " threads=" << threads;
    }
  }
}

}  // namespace
}  // namespace tessera::cpu
