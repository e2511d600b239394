#include "runtime/kernels/cpu/modulate.h"

#include <cstdint>
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

// The conditioning buffer is one adaLN projection [B, 6*D]; shift, scale and
// gate are its column slices 0, 1 and 2, so cond_stride = 6*D.
struct Shape {
  int64_t batch, seq, dim;
  int64_t stride() const { return 6 * dim; }
};

// Slice k (of 6) of cond as a dense [B, D] vector, and its inverse.
std::vector<double> Slice(const std::vector<double>& cond, const Shape& s, int k) {
  std::vector<double> out(s.batch * s.dim);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t j = 0; j < s.dim; ++j) out[b * s.dim + j] = cond[b * s.stride() + k * s.dim + j];
  }
  return out;
}
std::vector<double> Unslice(const std::vector<double>& slice, const Shape& s, int k) {
  std::vector<double> cond(s.batch * s.stride(), 0.0);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t j = 0; j < s.dim; ++j) cond[b * s.stride() + k * s.dim + j] = slice[b * s.dim + j];
  }
  return cond;
}

std::vector<double> ReferenceModulate(const std::vector<double>& x,
                                      const std::vector<double>& shift,
                                      const std::vector<double>& scale, const Shape& s) {
  std::vector<double> y(x.size());
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t t = 0; t < s.seq; ++t) {
      for (int64_t j = 0; j < s.dim; ++j) {
        const int64_t i = (b * s.seq + t) * s.dim + j;
        y[i] = x[i] * (1.0 + scale[b * s.dim + j]) + shift[b * s.dim + j];
      }
    }
  }
  return y;
}

std::vector<double> ReferenceGatedResidual(const std::vector<double>& residual,
                                           const std::vector<double>& y,
                                           const std::vector<double>& gate, const Shape& s) {
  std::vector<double> out(residual);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t t = 0; t < s.seq; ++t) {
      for (int64_t j = 0; j < s.dim; ++j) {
        const int64_t i = (b * s.seq + t) * s.dim + j;
        out[i] += gate[b * s.dim + j] * y[i];
      }
    }
  }
  return out;
}

const Shape kShapes[] = {{1, 1, 1}, {2, 7, 5}, {3, 1, 33}, {2, 0, 4}};

TEST(Modulate, ForwardMatchesDoubleReferenceWithCondStride) {
  uint64_t seed = 1;
  for (const Shape& s : kShapes) {
    const auto x = RandomFloats(s.batch * s.seq * s.dim, seed++);
    const auto cond = RandomFloats(s.batch * s.stride(), seed++);
    const auto cd = ToDouble(cond);
    std::vector<float> y(x.size());
    ModulateForward(x.data(), cond.data(), cond.data() + s.dim, y.data(), s.batch, s.seq, s.dim,
                    s.stride());
    EXPECT_LE(
        MaxRelativeError(y, ReferenceModulate(ToDouble(x), Slice(cd, s, 0), Slice(cd, s, 1), s)),
        1e-6)
        << "dim=" << s.dim;
  }
}

// dx, dshift, dscale against finite differences of sum(dy * modulate); the
// parameter grads land in their slices of a [B, 6*D] gradient buffer whose
// other columns must stay untouched.
TEST(Modulate, BackwardMatchesFiniteDifferencesAndAccumulates) {
  uint64_t seed = 10;
  for (const Shape& s : kShapes) {
    const int64_t n = s.batch * s.seq * s.dim;
    const auto x = RandomFloats(n, seed++);
    const auto dy = RandomFloats(n, seed++);
    const auto cond = RandomFloats(s.batch * s.stride(), seed++);
    const auto xd = ToDouble(x), dyd = ToDouble(dy), cd = ToDouble(cond);
    const auto shift = Slice(cd, s, 0), scale = Slice(cd, s, 1);
    const auto want_dx = NumericalGradient(
        [&](const std::vector<double>& v) {
          return Dot(dyd, ReferenceModulate(v, shift, scale, s));
        },
        xd);
    const auto want_dshift = NumericalGradient(
        [&](const std::vector<double>& v) { return Dot(dyd, ReferenceModulate(xd, v, scale, s)); },
        shift);
    const auto want_dscale = NumericalGradient(
        [&](const std::vector<double>& v) { return Dot(dyd, ReferenceModulate(xd, shift, v, s)); },
        scale);
    // Twice: dx is overwritten (same as once), the condition grads double.
    std::vector<float> dx(n), dcond(s.batch * s.stride(), 0.0f);
    for (int call = 1; call <= 2; ++call) {
      ModulateBackward(dy.data(), x.data(), cond.data() + s.dim, dx.data(), dcond.data(),
                       dcond.data() + s.dim, s.batch, s.seq, s.dim, s.stride());
      std::vector<double> want_dcond = Unslice(want_dshift, s, 0);
      const auto scale_part = Unslice(want_dscale, s, 1);
      for (size_t i = 0; i < want_dcond.size(); ++i) {
        want_dcond[i] = call * (want_dcond[i] + scale_part[i]);
      }
      EXPECT_LE(MaxRelativeError(dx, want_dx), 1e-5) << "dim=" << s.dim << " call=" << call;
      EXPECT_LE(MaxRelativeError(dcond, want_dcond), 1e-5) << "dim=" << s.dim << " call=" << call;
    }
  }
}

TEST(GatedResidual, ForwardAddsGatedBranchToResidual) {
  uint64_t seed = 30;
  for (const Shape& s : kShapes) {
    const int64_t n = s.batch * s.seq * s.dim;
    auto residual = RandomFloats(n, seed++);
    const auto y = RandomFloats(n, seed++);
    const auto cond = RandomFloats(s.batch * s.stride(), seed++);
    const auto want =
        ReferenceGatedResidual(ToDouble(residual), ToDouble(y), Slice(ToDouble(cond), s, 2), s);
    GatedResidualForward(residual.data(), y.data(), cond.data() + 2 * s.dim, s.batch, s.seq, s.dim,
                         s.stride());
    EXPECT_LE(MaxRelativeError(residual, want), 1e-6) << "dim=" << s.dim;
  }
}

TEST(GatedResidual, BackwardMatchesFiniteDifferencesAndAccumulates) {
  uint64_t seed = 40;
  for (const Shape& s : kShapes) {
    const int64_t n = s.batch * s.seq * s.dim;
    const auto residual = ToDouble(RandomFloats(n, seed++));
    const auto y = RandomFloats(n, seed++);
    const auto dres = RandomFloats(n, seed++);
    const auto cond = RandomFloats(s.batch * s.stride(), seed++);
    const auto yd = ToDouble(y), dd = ToDouble(dres);
    const auto gate = Slice(ToDouble(cond), s, 2);
    const auto want_dy = NumericalGradient(
        [&](const std::vector<double>& v) {
          return Dot(dd, ReferenceGatedResidual(residual, v, gate, s));
        },
        yd);
    const auto want_dgate =
        Unslice(NumericalGradient(
                    [&](const std::vector<double>& v) {
                      return Dot(dd, ReferenceGatedResidual(residual, yd, v, s));
                    },
                    gate),
                s, 2);
    std::vector<float> dy(n), dcond(s.batch * s.stride(), 0.0f);
    for (int call = 1; call <= 2; ++call) {
      GatedResidualBackward(dres.data(), y.data(), cond.data() + 2 * s.dim, dy.data(),
                            dcond.data() + 2 * s.dim, s.batch, s.seq, s.dim, s.stride());
      std::vector<double> want = want_dgate;
      for (double& v : want) v *= call;
      EXPECT_LE(MaxRelativeError(dy, want_dy), 1e-5) << "dim=" << s.dim;
      EXPECT_LE(MaxRelativeError(dcond, want), 1e-5) << "dim=" << s.dim << " call=" << call;
    }
  }
}

TEST(Modulate, BackwardIsBitwiseIndependentOfThreadCount) {
  const Shape s{3, 100, 200};
  const int64_t n = s.batch * s.seq * s.dim;
  const auto x = RandomFloats(n, 50);
  const auto dy = RandomFloats(n, 51);
  const auto cond = RandomFloats(s.batch * s.stride(), 52);
  auto run = [&](int threads) {
    test::ScopedNumThreads scoped(threads);
    std::vector<float> dx(n), dgated(n), dcond(s.batch * s.stride(), 0.5f);
    ModulateBackward(dy.data(), x.data(), cond.data() + s.dim, dx.data(), dcond.data(),
                     dcond.data() + s.dim, s.batch, s.seq, s.dim, s.stride());
    GatedResidualBackward(dy.data(), x.data(), cond.data() + 2 * s.dim, dgated.data(),
                          dcond.data() + 2 * s.dim, s.batch, s.seq, s.dim, s.stride());
    dx.insert(dx.end(), dgated.begin(), dgated.end());
    dx.insert(dx.end(), dcond.begin(), dcond.end());
    return dx;
  };
  const auto serial = run(1);
  EXPECT_TRUE(test::BitwiseEqual(serial, run(2)));
  EXPECT_TRUE(test::BitwiseEqual(serial, run(3)));
}

}  // namespace
}  // namespace tessera::cpu
