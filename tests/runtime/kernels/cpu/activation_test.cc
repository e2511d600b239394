#include "runtime/kernels/cpu/activation.h"

#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "gtest/gtest.h"
#include "tests/runtime/kernels/cpu/reference.h"

namespace tessera::cpu {
namespace {

using test::Dot;
using test::MaxRelativeError;
using test::NumericalGradient;
using test::RandomFloats;
using test::ToDouble;

double ReferenceSilu(double x) { return x / (1.0 + std::exp(-x)); }

// The tanh form exactly as DiT's approx_gelu writes it.
double ReferenceGelu(double x) {
  const double k = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}

std::vector<double> Map(const std::vector<double>& x, const std::function<double(double)>& f) {
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = f(x[i]);
  return y;
}

// Inputs spanning the interesting region plus far tails, where a careless
// formula produces inf or NaN.
std::vector<float> ActivationInputs(int64_t n, uint64_t seed) {
  auto x = RandomFloats(n, seed, -6.0f, 6.0f);
  const float tails[] = {-100.0f, -30.0f, -10.0f, 0.0f, 10.0f, 30.0f, 100.0f};
  // Only with the tails' own scale present does a normalized error stay
  // meaningful (silu(-100) ~ -4e-42 alone would be its own yardstick).
  if (x.size() >= 7) std::copy(tails, tails + 7, x.begin());
  return x;
}

struct Elementwise {
  const char* name;
  void (*forward)(const float*, float*, int64_t);
  void (*backward)(const float*, const float*, float*, int64_t);
  double (*reference)(double);
};

const Elementwise kElementwise[] = {
    {"silu", SiluForward, SiluBackward, ReferenceSilu},
    {"gelu", GeluForward, GeluBackward, ReferenceGelu},
};

TEST(Activation, SiluAndGeluForwardMatchDoubleReference) {
  for (const Elementwise& op : kElementwise) {
    for (int64_t n : {0, 1, 7, 33, 4099}) {
      const auto x = ActivationInputs(n, 1 + n);
      std::vector<float> y(n);
      op.forward(x.data(), y.data(), n);
      EXPECT_LE(MaxRelativeError(y, Map(ToDouble(x), op.reference)), 1e-6) << op.name << " n=" << n;
    }
  }
}

// Elementwise ops: dx[i] = dy[i] f'(x[i]), checked per element (a relative
// error per element, not normalized, since the tails have tiny derivatives).
TEST(Activation, SiluAndGeluBackwardMatchFiniteDifferences) {
  for (const Elementwise& op : kElementwise) {
    const int64_t n = 257;
    const auto x = ActivationInputs(n, 5);
    const auto dy = RandomFloats(n, 6);
    std::vector<float> dx(n, 9.0f);
    op.backward(dy.data(), x.data(), dx.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const double h = 1e-4;
      const double fd = (op.reference(x[i] + h) - op.reference(x[i] - h)) / (2.0 * h);
      EXPECT_NEAR(dx[i], dy[i] * fd, 1e-5 * (1.0 + std::abs(dy[i] * fd)))
          << op.name << " x=" << x[i];
    }
  }
}

std::vector<double> ReferenceSwiglu(const std::vector<double>& x, int64_t rows, int64_t hidden) {
  std::vector<double> y(rows * hidden);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < hidden; ++j) {
      y[r * hidden + j] = ReferenceSilu(x[r * 2 * hidden + j]) * x[r * 2 * hidden + hidden + j];
    }
  }
  return y;
}

TEST(Swiglu, ForwardMatchesDoubleReference) {
  for (int64_t rows : {0, 1, 7, 33}) {
    for (int64_t hidden : {1, 7, 64}) {
      const auto x = RandomFloats(rows * 2 * hidden, 10 + rows * hidden, -5.0f, 5.0f);
      std::vector<float> y(rows * hidden);
      SwigluForward(x.data(), y.data(), rows, hidden);
      EXPECT_LE(MaxRelativeError(y, ReferenceSwiglu(ToDouble(x), rows, hidden)), 1e-6)
          << "rows=" << rows << " hidden=" << hidden;
    }
  }
}

TEST(Swiglu, BackwardMatchesFiniteDifferencesForGateAndUp) {
  for (int64_t hidden : {1, 9}) {
    const int64_t rows = 5;
    const auto x = RandomFloats(rows * 2 * hidden, 20 + hidden, -4.0f, 4.0f);
    const auto dy = RandomFloats(rows * hidden, 30 + hidden);
    std::vector<float> dx(rows * 2 * hidden, 9.0f);
    SwigluBackward(dy.data(), x.data(), dx.data(), rows, hidden);
    const auto dyd = ToDouble(dy);
    const auto want = NumericalGradient(
        [&](const std::vector<double>& v) { return Dot(dyd, ReferenceSwiglu(v, rows, hidden)); },
        ToDouble(x));
    EXPECT_LE(MaxRelativeError(dx, want), 1e-5) << "hidden=" << hidden;
  }
}

TEST(Elementwise, AddInPlaceAndAddBiasRowsMatchReference) {
  for (int64_t rows : {0, 1, 7, 300}) {
    const int64_t dim = 129;
    auto y = RandomFloats(rows * dim, 40);
    const auto x = RandomFloats(rows * dim, 41);
    const auto bias = RandomFloats(dim, 42);
    std::vector<double> want(rows * dim);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < dim; ++j) {
        want[r * dim + j] = static_cast<double>(y[r * dim + j]) + x[r * dim + j] + bias[j];
      }
    }
    AddInPlace(y.data(), x.data(), rows * dim);
    AddBiasRows(y.data(), bias.data(), rows, dim);
    EXPECT_LE(MaxRelativeError(y, want), 1e-6) << "rows=" << rows;
  }
}

TEST(Elementwise, SumRowsAccumulateAddsColumnSumsToExistingValues) {
  for (int64_t rows : {0, 1, 7, 513}) {
    for (int64_t dim : {1, 7, 100}) {
      const auto dy = RandomFloats(rows * dim, 50 + rows);
      auto dbias = RandomFloats(dim, 51);
      std::vector<double> want(dbias.begin(), dbias.end());
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < dim; ++j) want[j] += dy[r * dim + j];
      }
      SumRowsAccumulate(dy.data(), dbias.data(), rows, dim);
      EXPECT_LE(MaxRelativeError(dbias, want), 1e-5) << "rows=" << rows << " dim=" << dim;
    }
  }
}

TEST(Elementwise, ResultsAreBitwiseIndependentOfThreadCount) {
  const int64_t rows = 700, dim = 130, n = rows * dim;
  const auto x = ActivationInputs(n, 60);
  const auto dy = RandomFloats(n, 61);
  auto run = [&](int threads) {
    test::ScopedNumThreads scoped(threads);
    std::vector<float> out;
    std::vector<float> buf(n);
    for (const Elementwise& op : kElementwise) {
      op.forward(x.data(), buf.data(), n);
      out.insert(out.end(), buf.begin(), buf.end());
      op.backward(dy.data(), x.data(), buf.data(), n);
      out.insert(out.end(), buf.begin(), buf.end());
    }
    std::vector<float> dbias(dim, 0.5f);
    SumRowsAccumulate(dy.data(), dbias.data(), rows, dim);
    out.insert(out.end(), dbias.begin(), dbias.end());
    return out;
  };
  const auto serial = run(1);
  EXPECT_TRUE(test::BitwiseEqual(serial, run(2)));
  EXPECT_TRUE(test::BitwiseEqual(serial, run(3)));
}

}  // namespace
}  // namespace tessera::cpu
