#include "runtime/kernels/cpu/gemm.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/runtime/kernels/cpu/reference.h"

namespace tessera::cpu {
namespace {

using test::MaxRelativeError;
using test::RandomFloats;

// Naive row-major GEMM in double: C = alpha op(A) op(B) + beta C.
void ReferenceGemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                   const std::vector<float>& a, int64_t lda, const std::vector<float>& b,
                   int64_t ldb, double beta, std::vector<double>& c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        const double av = trans_a ? a[p * lda + i] : a[i * lda + p];
        const double bv = trans_b ? b[j * ldb + p] : b[p * ldb + j];
        sum += av * bv;
      }
      double& out = c[i * ldc + j];
      out = alpha * sum + (beta == 0.0 ? 0.0 : beta * out);
    }
  }
}

struct Case {
  int64_t m, n, k;
};

// Stored shapes of A and B and their padded leading dimensions.
struct Layout {
  int64_t a_rows, lda, b_rows, ldb, ldc;
};

Layout MakeLayout(bool trans_a, bool trans_b, const Case& s, int64_t pad) {
  Layout l;
  l.a_rows = trans_a ? s.k : s.m;
  l.lda = (trans_a ? s.m : s.k) + pad;
  l.b_rows = trans_b ? s.n : s.k;
  l.ldb = (trans_b ? s.k : s.n) + pad;
  l.ldc = s.n + pad;
  return l;
}

TEST(Gemm, MatchesReferenceForAllTransposesLeadingDimensionsAndScalars) {
  const Case cases[] = {{1, 1, 1}, {7, 33, 5}, {33, 7, 1}, {1, 33, 7}, {16, 24, 64}, {65, 3, 33}};
  const float scalars[][2] = {{1.0f, 0.0f}, {0.7f, -0.3f}, {-1.5f, 1.0f}};
  uint64_t seed = 1;
  for (bool trans_a : {false, true}) {
    for (bool trans_b : {false, true}) {
      for (const Case& s : cases) {
        for (int64_t pad : {0, 3}) {
          for (const auto& ab : scalars) {
            const Layout l = MakeLayout(trans_a, trans_b, s, pad);
            const auto a = RandomFloats(l.a_rows * l.lda, seed++);
            const auto b = RandomFloats(l.b_rows * l.ldb, seed++);
            auto c = RandomFloats(s.m * l.ldc, seed++);
            std::vector<double> want(c.begin(), c.end());
            ReferenceGemm(trans_a, trans_b, s.m, s.n, s.k, ab[0], a, l.lda, b, l.ldb, ab[1], want,
                          l.ldc);
            Gemm(trans_a, trans_b, s.m, s.n, s.k, ab[0], a.data(), l.lda, b.data(), l.ldb, ab[1],
                 c.data(), l.ldc);
            // Padding columns of C are untouched, so comparing whole buffers
            // also checks that nothing is written past n.
            EXPECT_LE(MaxRelativeError(c, want), 1e-5)
                << absl::StrCat("ta=", trans_a, " tb=", trans_b, " m=", s.m, " n=", s.n, " k=", s.k,
                                " pad=", pad, " alpha=", ab[0], " beta=", ab[1]);
          }
        }
      }
    }
  }
}

TEST(Gemm, BetaZeroOverwritesNanInC) {
  const int64_t m = 7, n = 5, k = 3;
  const auto a = RandomFloats(m * k, 10);
  const auto b = RandomFloats(k * n, 11);
  std::vector<float> c(m * n, std::numeric_limits<float>::quiet_NaN());
  std::vector<double> want(m * n, 0.0);
  ReferenceGemm(false, false, m, n, k, 1.0, a, k, b, n, 0.0, want, n);
  Gemm(false, false, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c.data(), n);
  EXPECT_LE(MaxRelativeError(c, want), 1e-5);
}

TEST(Gemm, EmptyOutputLeavesCUntouched) {
  std::vector<float> c = {1.0f, 2.0f, 3.0f};
  const float a = 1.0f, b = 1.0f;
  Gemm(false, false, 0, 3, 4, 1.0f, &a, 4, &b, 3, 0.0f, c.data(), 3);
  Gemm(false, false, 1, 0, 4, 1.0f, &a, 4, &b, 1, 0.0f, c.data(), 3);
  EXPECT_EQ(c, (std::vector<float>{1.0f, 2.0f, 3.0f}));
}

TEST(Gemm, EmptyInnerDimensionScalesCByBeta) {
  const int64_t m = 3, n = 2, ldc = 4;
  std::vector<float> c = {1, 2, 9, 9, 3, 4, 9, 9, 5, 6, 9, 9};
  const float unused = 0.0f;
  Gemm(false, true, m, n, 0, 1.0f, &unused, 1, &unused, 1, 0.5f, c.data(), ldc);
  EXPECT_EQ(c, (std::vector<float>{0.5f, 1, 9, 9, 1.5f, 2, 9, 9, 2.5f, 3, 9, 9}));

  std::vector<float> nan_c(m * ldc, std::numeric_limits<float>::quiet_NaN());
  Gemm(true, false, m, n, 0, 1.0f, &unused, 1, &unused, 1, 0.0f, nan_c.data(), ldc);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) EXPECT_EQ(nan_c[i * ldc + j], 0.0f);
    EXPECT_TRUE(std::isnan(nan_c[i * ldc + n]));  // padding not written
  }
}

// Small matrices (one per thread) and large ones (all threads each) take
// different paths; both must match per-matrix references, with strides larger
// than the matrices.
TEST(GemmBatched, MatchesPerMatrixReferenceWithStrides) {
  const struct {
    int64_t batch;
    Case s;
  } cases[] = {{8, {16, 16, 16}}, {3, {7, 33, 5}}, {2, {128, 128, 128}}, {1, {1, 1, 1}}};
  uint64_t seed = 100;
  for (bool trans_a : {false, true}) {
    for (bool trans_b : {false, true}) {
      for (const auto& bc : cases) {
        const Case& s = bc.s;
        const Layout l = MakeLayout(trans_a, trans_b, s, 2);
        const int64_t stride_a = l.a_rows * l.lda + 5;
        const int64_t stride_b = l.b_rows * l.ldb + 1;
        const int64_t stride_c = s.m * l.ldc + 3;
        const auto a = RandomFloats(bc.batch * stride_a, seed++);
        const auto b = RandomFloats(bc.batch * stride_b, seed++);
        auto c = RandomFloats(bc.batch * stride_c, seed++);
        std::vector<double> want(c.begin(), c.end());
        for (int64_t i = 0; i < bc.batch; ++i) {
          std::vector<float> ai(a.begin() + i * stride_a, a.begin() + (i + 1) * stride_a);
          std::vector<float> bi(b.begin() + i * stride_b, b.begin() + (i + 1) * stride_b);
          std::vector<double> ci(want.begin() + i * stride_c, want.begin() + (i + 1) * stride_c);
          ReferenceGemm(trans_a, trans_b, s.m, s.n, s.k, 0.5, ai, l.lda, bi, l.ldb, 2.0, ci, l.ldc);
          std::copy(ci.begin(), ci.end(), want.begin() + i * stride_c);
        }
        GemmBatched(trans_a, trans_b, bc.batch, s.m, s.n, s.k, 0.5f, a.data(), l.lda, stride_a,
                    b.data(), l.ldb, stride_b, 2.0f, c.data(), l.ldc, stride_c);
        EXPECT_LE(MaxRelativeError(c, want), 1e-5)
            << absl::StrCat("ta=", trans_a, " tb=", trans_b, " batch=", bc.batch, " m=", s.m);
      }
    }
  }
}

TEST(GemmBatched, ZeroBatchOrEmptyInnerDimension) {
  std::vector<float> c = {1, 2, 3, 4};
  const float unused = 0.0f;
  GemmBatched(false, false, 0, 2, 2, 2, 1.0f, &unused, 2, 4, &unused, 2, 4, 0.0f, c.data(), 2, 2);
  EXPECT_EQ(c, (std::vector<float>{1, 2, 3, 4}));
  // Two 1x2 outputs with k = 0: C = beta * C.
  GemmBatched(false, false, 2, 1, 2, 0, 1.0f, &unused, 1, 0, &unused, 2, 0, 3.0f, c.data(), 2, 2);
  EXPECT_EQ(c, (std::vector<float>{3, 6, 9, 12}));
}

TEST(Gemm, SetNumThreadsIsWhatNumThreadsReports) {
  test::ScopedNumThreads scoped(3);
  EXPECT_EQ(NumThreads(), 3);
  SetNumThreads(1);
  EXPECT_EQ(NumThreads(), 1);
}

}  // namespace
}  // namespace tessera::cpu
