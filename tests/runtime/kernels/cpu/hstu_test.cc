#include "runtime/kernels/cpu/hstu.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/runtime/kernels/cpu/reference.h"

namespace tessera::cpu {
namespace {

using test::MaxRelativeError;
using test::NumericalGradient;
using test::RandomFloats;
using test::ToDouble;

// ---- Time buckets and query timestamps -------------------------------------------------------

// floor(ln(max(|dt|, 1)) / 0.301), clamped to [0, num_buckets], worked by hand:
// ln 2 = 0.6931 -> 2.303; ln 3 = 1.0986 -> 3.650; ln 10 = 2.3026 -> 7.650;
// ln 60 = 4.0943 -> 13.60; ln 3600 = 8.1887 -> 27.20; ln 86400 = 11.367 -> 37.76;
// ln 1e9 = 20.723 -> 68.85; ln 2^62 = 42.975 -> 142.8 (clamped to 128).
TEST(HstuTimeBucket, MatchesHandWorkedExamples) {
  EXPECT_EQ(HstuTimeBucket(0, 128), 0);
  EXPECT_EQ(HstuTimeBucket(1, 128), 0);
  EXPECT_EQ(HstuTimeBucket(-1, 128), 0);
  EXPECT_EQ(HstuTimeBucket(2, 128), 2);  // bucket 1 needs 1 < |dt| < 1.35: no integer
  EXPECT_EQ(HstuTimeBucket(3, 128), 3);
  EXPECT_EQ(HstuTimeBucket(10, 128), 7);
  EXPECT_EQ(HstuTimeBucket(-10, 128), 7);  // |dt|
  EXPECT_EQ(HstuTimeBucket(60, 128), 13);
  EXPECT_EQ(HstuTimeBucket(3600, 128), 27);
  EXPECT_EQ(HstuTimeBucket(86400, 128), 37);
  EXPECT_EQ(HstuTimeBucket(1'000'000'000, 128), 68);
  EXPECT_EQ(HstuTimeBucket(int64_t{1} << 62, 128), 128);
  EXPECT_EQ(HstuTimeBucket(std::numeric_limits<int64_t>::min(), 128), 128);
  EXPECT_EQ(HstuTimeBucket(86400, 20), 20);  // clamped to num_buckets
}

TEST(HstuTimeBucket, IsMonotoneInTheMagnitude) {
  int32_t last = 0;
  for (int64_t dt = 1; dt < (int64_t{1} << 40); dt = dt * 5 / 4 + 1) {
    const int32_t bucket = HstuTimeBucket(dt, 128);
    EXPECT_GE(bucket, last) << dt;
    last = bucket;
  }
}

// Query i measures from the next item's timestamp; a user's last item from
// the target's (next_timestamps) or, without one, from its own.
TEST(HstuQueryTimestamps, TakesTheNextItemsTimestamp) {
  const std::vector<int64_t> offsets = {0, 3, 3, 4, 6};
  const std::vector<int64_t> timestamps = {10, 20, 35, 7, 100, 160};
  const std::vector<int64_t> next = {50, 999, 8, 200};
  std::vector<int64_t> query(6, -1);
  HstuQueryTimestamps(offsets.data(), 4, timestamps.data(), next.data(), query.data());
  EXPECT_EQ(query, (std::vector<int64_t>{20, 35, 50, 8, 160, 200}));
  HstuQueryTimestamps(offsets.data(), 4, timestamps.data(), nullptr, query.data());
  EXPECT_EQ(query, (std::vector<int64_t>{20, 35, 35, 7, 160, 160}));
}

// ---- y = u * LayerNorm(x) ---------------------------------------------------------------------

std::vector<double> NormGateReference(const std::vector<double>& x, const std::vector<double>& u,
                                      int64_t u_stride, int64_t rows, int64_t dim, double eps) {
  std::vector<double> y(rows * dim);
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0.0, var = 0.0;
    for (int64_t c = 0; c < dim; ++c) mean += x[r * dim + c] / dim;
    for (int64_t c = 0; c < dim; ++c) var += (x[r * dim + c] - mean) * (x[r * dim + c] - mean) / dim;
    for (int64_t c = 0; c < dim; ++c)
      y[r * dim + c] = u[r * u_stride + c] * (x[r * dim + c] - mean) / std::sqrt(var + eps);
  }
  return y;
}

TEST(HstuNormGate, ForwardAndBackwardMatchDoubleReferenceAndFiniteDifferences) {
  const int64_t rows = 5, dim = 12, u_stride = 30;  // u is a view into a wider projection
  const float eps = 1e-6f;
  const auto x = RandomFloats(rows * dim, 31), u = RandomFloats(rows * u_stride, 32);
  std::vector<float> y(rows * dim), mean(rows), rstd(rows);
  HstuNormGateForward(x.data(), u.data(), u_stride, y.data(), mean.data(), rstd.data(), rows, dim,
                      eps);
  EXPECT_LT(MaxRelativeError(y, NormGateReference(ToDouble(x), ToDouble(u), u_stride, rows, dim,
                                                  eps)),
            1e-5);

  const auto dy = RandomFloats(rows * dim, 33);
  // du's own columns poisoned; the columns between rows belong to others (0 here).
  std::vector<float> dx(rows * dim, NAN), du(rows * u_stride, 0.0f);
  for (int64_t r = 0; r < rows; ++r) std::fill_n(du.data() + r * u_stride, dim, NAN);
  HstuNormGateBackward(dy.data(), x.data(), u.data(), u_stride, mean.data(), rstd.data(),
                       dx.data(), du.data(), rows, dim);
  const std::vector<double> w = ToDouble(dy), ud = ToDouble(u), xd = ToDouble(x);
  const auto want_dx = NumericalGradient(
      [&](const std::vector<double>& xs) {
        return test::Dot(w, NormGateReference(xs, ud, u_stride, rows, dim, eps));
      },
      xd);
  const auto want_du = NumericalGradient(
      [&](const std::vector<double>& us) {
        return test::Dot(w, NormGateReference(xd, us, u_stride, rows, dim, eps));
      },
      ud);
  EXPECT_LT(MaxRelativeError(dx, want_dx), 2e-3);
  EXPECT_LT(MaxRelativeError(du, want_du), 2e-3);  // the gaps: 0 against 0
}

// ---- A jagged batch and its double-precision PADDED reference ---------------------------------

struct Case {
  std::vector<int64_t> lengths;  // per user; 0 allowed
  int64_t max_len, heads, qk_dim, v_dim;
  bool fused;  // q, k, v inside one [total, U | V | Q | K] projection
  bool pos, time;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << "lengths {";
  for (int64_t len : c.lengths) *os << len << " ";
  *os << "} N" << c.max_len << " H" << c.heads << " Dqk" << c.qk_dim << " Dv" << c.v_dim
      << (c.fused ? " fused" : " separate") << (c.pos ? " pos" : "") << (c.time ? " time" : "");
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  std::string name = absl::StrCat("N", c.max_len, "U", c.lengths.size(), "H", c.heads, "Dqk",
                                  c.qk_dim, "Dv", c.v_dim, c.fused ? "Fused" : "Separate");
  if (c.pos) name += "Pos";
  if (c.time) name += "Time";
  return name;
}

struct Batch {
  Case c;
  std::vector<int64_t> offsets;
  int64_t total = 0, qk_stride = 0, v_stride = 0;
  // The projection buffer: q, k, v are views at q_off, k_off, v_off.
  std::vector<float> proj;
  int64_t q_off = 0, k_off = 0, v_off = 0;
  std::vector<float> pos_bias, time_bias;
  std::vector<int64_t> timestamps, next_timestamps, query_timestamps;
  int32_t num_buckets = 16;

  const float* q() const { return proj.data() + q_off; }
  const float* k() const { return proj.data() + k_off; }
  const float* v() const { return proj.data() + v_off; }
};

Batch MakeBatch(const Case& c, uint64_t seed) {
  Batch b;
  b.c = c;
  b.offsets = {0};
  for (int64_t len : c.lengths) b.offsets.push_back(b.offsets.back() + len);
  b.total = b.offsets.back();
  const int64_t hq = c.heads * c.qk_dim, hv = c.heads * c.v_dim;
  if (c.fused) {
    // [total, U | V | Q | K], as the reference's uvqk projection.
    b.qk_stride = b.v_stride = 2 * hv + 2 * hq;
    b.v_off = hv, b.q_off = 2 * hv, b.k_off = 2 * hv + hq;
    b.proj = RandomFloats(b.total * b.qk_stride, seed);
  } else {
    b.qk_stride = hq, b.v_stride = hv;
    b.q_off = 0, b.k_off = b.total * hq, b.v_off = 2 * b.total * hq;
    b.proj = RandomFloats(b.total * (2 * hq + hv), seed);
  }
  b.pos_bias = RandomFloats(2 * c.max_len - 1, seed + 1, -0.5f, 0.5f);
  b.time_bias = RandomFloats(b.num_buckets + 1, seed + 2, -0.5f, 0.5f);
  // Increasing timestamps with gaps from seconds to weeks, so many buckets occur.
  const auto gaps = RandomFloats(b.total + 1, seed + 3, 0.0f, 14.0f);
  int64_t now = 1'000'000'000;
  for (int64_t t = 0; t < b.total; ++t) {
    now += static_cast<int64_t>(std::exp(gaps[t]));
    b.timestamps.push_back(now);
  }
  for (size_t u = 0; u < c.lengths.size(); ++u) b.next_timestamps.push_back(now + 1000 * (u + 1));
  b.query_timestamps.assign(b.total, -1);
  HstuQueryTimestamps(b.offsets.data(), c.lengths.size(), b.timestamps.data(),
                      b.next_timestamps.data(), b.query_timestamps.data());
  return b;
}

// The reference's structure in double: pad every user to max_len with zeros
// (jagged_to_padded_dense), full [n, n] scores per head (einsum), rab for every
// (i, j) from padded timestamps, SiLU / n, times the causal mask, A V, then keep
// each user's first `length` rows (dense_to_jagged). x holds q | k | v | pos |
// time as flat jagged [total, H, d] arrays, so finite differences can perturb it.
struct Flat {
  std::vector<double> x;
  int64_t q, k, v, pos, time;  // offsets into x
};

Flat Flatten(const Batch& b) {
  const Case& c = b.c;
  Flat f;
  auto put = [&](const float* base, int64_t stride, int64_t dim) {
    for (int64_t t = 0; t < b.total; ++t)
      for (int64_t e = 0; e < c.heads * dim; ++e) f.x.push_back(base[t * stride + e]);
  };
  f.q = 0;
  put(b.q(), b.qk_stride, c.qk_dim);
  f.k = f.x.size();
  put(b.k(), b.qk_stride, c.qk_dim);
  f.v = f.x.size();
  put(b.v(), b.v_stride, c.v_dim);
  f.pos = f.x.size();
  f.x.insert(f.x.end(), b.pos_bias.begin(), b.pos_bias.end());
  f.time = f.x.size();
  f.x.insert(f.x.end(), b.time_bias.begin(), b.time_bias.end());
  return f;
}

double Silu(double s) { return s / (1.0 + std::exp(-s)); }

// out: jagged [total, H * v_dim].
std::vector<double> PaddedReference(const Batch& b, const Flat& f, const std::vector<double>& x) {
  const Case& c = b.c;
  const int64_t n = c.max_len, users = c.lengths.size();
  const int64_t hq = c.heads * c.qk_dim, hv = c.heads * c.v_dim;
  std::vector<double> out(b.total * hv, 0.0);
  for (int64_t u = 0; u < users; ++u) {
    const int64_t begin = b.offsets[u], len = c.lengths[u];
    std::vector<double> q(n * hq, 0.0), k(n * hq, 0.0), v(n * hv, 0.0);
    std::vector<int64_t> ts(n, 0), qts(n, 0);
    for (int64_t i = 0; i < len; ++i) {
      for (int64_t e = 0; e < hq; ++e) q[i * hq + e] = x[f.q + (begin + i) * hq + e];
      for (int64_t e = 0; e < hq; ++e) k[i * hq + e] = x[f.k + (begin + i) * hq + e];
      for (int64_t e = 0; e < hv; ++e) v[i * hv + e] = x[f.v + (begin + i) * hv + e];
      ts[i] = b.timestamps[begin + i];
      qts[i] = b.query_timestamps[begin + i];
    }
    std::vector<double> padded_out(n * hv, 0.0);
    for (int64_t h = 0; h < c.heads; ++h) {
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          double s = 0.0;
          for (int64_t d = 0; d < c.qk_dim; ++d)
            s += q[i * hq + h * c.qk_dim + d] * k[j * hq + h * c.qk_dim + d];
          if (c.pos) s += x[f.pos + n - 1 + j - i];
          if (c.time) s += x[f.time + HstuTimeBucket(qts[i] - ts[j], b.num_buckets)];
          const double a = (j <= i ? 1.0 : 0.0) * Silu(s) / n;
          for (int64_t d = 0; d < c.v_dim; ++d)
            padded_out[i * hv + h * c.v_dim + d] += a * v[j * hv + h * c.v_dim + d];
        }
      }
    }
    for (int64_t i = 0; i < len; ++i)
      for (int64_t e = 0; e < hv; ++e) out[(begin + i) * hv + e] = padded_out[i * hv + e];
  }
  return out;
}

std::vector<float> RunForward(const Batch& b) {
  const Case& c = b.c;
  std::vector<float> out(b.total * c.heads * c.v_dim, std::numeric_limits<float>::quiet_NaN());
  HstuAttentionForward(b.offsets.data(), c.lengths.size(), c.max_len, c.heads, c.qk_dim, c.v_dim,
                       b.q(), b.k(), b.qk_stride, b.v(), b.v_stride,
                       c.pos ? b.pos_bias.data() : nullptr, c.time ? b.time_bias.data() : nullptr,
                       b.num_buckets, b.timestamps.data(), b.query_timestamps.data(), out.data());
  return out;
}

struct Grads {
  std::vector<float> dproj, dpos, dtime;  // dproj has the layout of proj
};

Grads RunBackward(const Batch& b, const std::vector<float>& dout) {
  const Case& c = b.c;
  Grads g;
  g.dproj.assign(b.proj.size(), std::numeric_limits<float>::quiet_NaN());
  g.dpos.assign(b.pos_bias.size(), 0.0f);
  g.dtime.assign(b.time_bias.size(), 0.0f);
  HstuAttentionBackward(b.offsets.data(), c.lengths.size(), c.max_len, c.heads, c.qk_dim,
                        c.v_dim, b.q(), b.k(), b.qk_stride, b.v(), b.v_stride,
                        c.pos ? b.pos_bias.data() : nullptr,
                        c.time ? b.time_bias.data() : nullptr, b.num_buckets,
                        b.timestamps.data(), b.query_timestamps.data(), dout.data(),
                        g.dproj.data() + b.q_off, g.dproj.data() + b.k_off,
                        g.dproj.data() + b.v_off, c.pos ? g.dpos.data() : nullptr,
                        c.time ? g.dtime.data() : nullptr);
  return g;
}

// A kernel gradient in proj layout, flattened like Flat (q | k | v).
std::vector<float> FlattenGrad(const Batch& b, const Grads& g) {
  const Case& c = b.c;
  std::vector<float> out;
  auto put = [&](int64_t off, int64_t stride, int64_t dim) {
    for (int64_t t = 0; t < b.total; ++t)
      for (int64_t e = 0; e < c.heads * dim; ++e) out.push_back(g.dproj[off + t * stride + e]);
  };
  put(b.q_off, b.qk_stride, c.qk_dim);
  put(b.k_off, b.qk_stride, c.qk_dim);
  put(b.v_off, b.v_stride, c.v_dim);
  out.insert(out.end(), g.dpos.begin(), g.dpos.end());
  out.insert(out.end(), g.dtime.begin(), g.dtime.end());
  return out;
}

class HstuAttention : public ::testing::TestWithParam<Case> {};

TEST_P(HstuAttention, ForwardMatchesDoublePaddedReference) {
  const Batch b = MakeBatch(GetParam(), 11);
  const Flat f = Flatten(b);
  const std::vector<float> out = RunForward(b);
  EXPECT_LT(MaxRelativeError(out, PaddedReference(b, f, f.x)), 1e-5);
}

class HstuAttentionGradient : public ::testing::TestWithParam<Case> {};

TEST_P(HstuAttentionGradient, BackwardMatchesFiniteDifferencesOfPaddedReference) {
  const Batch b = MakeBatch(GetParam(), 12);
  const Flat f = Flatten(b);
  const auto dout = RandomFloats(b.total * b.c.heads * b.c.v_dim, 13);
  const std::vector<double> w = ToDouble(dout);
  const std::vector<double> want = NumericalGradient(
      [&](const std::vector<double>& x) { return test::Dot(w, PaddedReference(b, f, x)); }, f.x);
  const std::vector<float> got = FlattenGrad(b, RunBackward(b, dout));
  // Each part on its own scale: dq, dk, dv, dpos, dtime.
  const std::vector<int64_t> parts = {0, f.k, f.v, f.pos, f.time, int64_t(f.x.size())};
  const char* names[] = {"dq", "dk", "dv", "dpos", "dtime"};
  for (int p = 0; p < 5; ++p) {
    const int64_t n = parts[p + 1] - parts[p];
    if (n == 0) continue;
    EXPECT_LT(MaxRelativeError(got.data() + parts[p], want.data() + parts[p], n), 2e-3)
        << names[p];
  }
}

// The same histories as one padded batch: each user padded to max_len with
// garbage tokens, run by the same kernel as users of length max_len. Under
// causality the real tokens never see the padding, and with zero output
// gradient on padding rows the padding sends no gradient back.
TEST_P(HstuAttention, JaggedEqualsPaddedOnTheSameHistories) {
  const Batch b = MakeBatch(GetParam(), 14);
  const Case& c = b.c;
  const int64_t n = c.max_len, users = c.lengths.size(), hv = c.heads * c.v_dim;
  Batch p = b;
  p.c.lengths.assign(users, n);
  p.offsets.clear();
  for (int64_t u = 0; u <= users; ++u) p.offsets.push_back(u * n);
  p.total = users * n;
  const int64_t width = c.fused ? b.qk_stride : 0;
  // Padded copies of the projections, timestamps and query timestamps.
  auto padded_rows = [&](const float* src, int64_t stride, int64_t row_width, int64_t out_stride,
                         float* dst) {
    for (int64_t u = 0; u < users; ++u)
      for (int64_t i = 0; i < c.lengths[u]; ++i)
        std::copy_n(src + (b.offsets[u] + i) * stride, row_width, dst + (u * n + i) * out_stride);
  };
  p.proj = RandomFloats(c.fused ? p.total * width
                                : p.total * (2 * c.heads * c.qk_dim + hv),
                        99);  // garbage in the padding
  if (!c.fused) p.k_off = p.total * c.heads * c.qk_dim, p.v_off = 2 * p.total * c.heads * c.qk_dim;
  if (c.fused) {
    padded_rows(b.proj.data(), width, width, width, p.proj.data());
  } else {
    padded_rows(b.q(), b.qk_stride, b.qk_stride, p.qk_stride, p.proj.data() + p.q_off);
    padded_rows(b.k(), b.qk_stride, b.qk_stride, p.qk_stride, p.proj.data() + p.k_off);
    padded_rows(b.v(), b.v_stride, b.v_stride, p.v_stride, p.proj.data() + p.v_off);
  }
  p.timestamps.assign(p.total, 0);
  p.query_timestamps.assign(p.total, 0);
  for (int64_t u = 0; u < users; ++u)
    for (int64_t i = 0; i < c.lengths[u]; ++i) {
      p.timestamps[u * n + i] = b.timestamps[b.offsets[u] + i];
      p.query_timestamps[u * n + i] = b.query_timestamps[b.offsets[u] + i];
    }

  const std::vector<float> jagged_out = RunForward(b), padded_out = RunForward(p);
  const auto dout = RandomFloats(b.total * hv, 15);
  std::vector<float> padded_dout(p.total * hv, 0.0f);
  padded_rows(dout.data(), hv, hv, hv, padded_dout.data());
  const Grads jg = RunBackward(b, dout), pg = RunBackward(p, padded_dout);

  // Compare on the real rows only; fp32 sums of different GEMM shapes.
  auto expect_rows_close = [&](const std::vector<float>& jagged, int64_t j_off, int64_t j_stride,
                               const std::vector<float>& padded, int64_t p_off, int64_t p_stride,
                               int64_t row_width, const char* what) {
    for (int64_t u = 0; u < users; ++u)
      for (int64_t i = 0; i < c.lengths[u]; ++i)
        for (int64_t e = 0; e < row_width; ++e) {
          const float a = jagged[j_off + (b.offsets[u] + i) * j_stride + e];
          const float z = padded[p_off + (u * n + i) * p_stride + e];
          ASSERT_NEAR(a, z, 1e-5f * std::max(1.0f, std::abs(z)))
              << what << " user " << u << " row " << i << " col " << e;
        }
  };
  expect_rows_close(jagged_out, 0, hv, padded_out, 0, hv, hv, "out");
  for (int64_t h = 0; h < c.heads; ++h) {
    expect_rows_close(jg.dproj, b.q_off + h * c.qk_dim, b.qk_stride, pg.dproj,
                      p.q_off + h * c.qk_dim, p.qk_stride, c.qk_dim, "dq");
    expect_rows_close(jg.dproj, b.k_off + h * c.qk_dim, b.qk_stride, pg.dproj,
                      p.k_off + h * c.qk_dim, p.qk_stride, c.qk_dim, "dk");
    expect_rows_close(jg.dproj, b.v_off + h * c.v_dim, b.v_stride, pg.dproj,
                      p.v_off + h * c.v_dim, p.v_stride, c.v_dim, "dv");
  }
  for (size_t i = 0; i < jg.dpos.size(); ++i)
    EXPECT_NEAR(jg.dpos[i], pg.dpos[i], 1e-5f * std::max(1.0f, std::abs(pg.dpos[i]))) << i;
  for (size_t i = 0; i < jg.dtime.size(); ++i)
    EXPECT_NEAR(jg.dtime[i], pg.dtime[i], 1e-5f * std::max(1.0f, std::abs(pg.dtime[i]))) << i;
}

TEST_P(HstuAttention, BackwardIsBitIdenticalForAnyThreadCount) {
  const Batch b = MakeBatch(GetParam(), 16);
  const auto dout = RandomFloats(b.total * b.c.heads * b.c.v_dim, 17);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const Grads one = RunBackward(b, dout);
  const std::vector<float> out_one = RunForward(b);
  omp_set_num_threads(3);
  const Grads three = RunBackward(b, dout);
  const std::vector<float> out_three = RunForward(b);
  omp_set_num_threads(saved);
  EXPECT_TRUE(test::BitwiseEqual(out_one, out_three));
  EXPECT_TRUE(test::BitwiseEqual(FlattenGrad(b, one), FlattenGrad(b, three)));
}

// Users of length 1, of the maximum length, and of length 0, fused and
// separate layouts, each bias on and off.
const Case kSmallCases[] = {
    Case{{1, 6, 0, 3, 6}, 6, 2, 3, 2, false, true, true},
    Case{{6, 1, 0, 4}, 6, 2, 2, 3, true, true, true},
    Case{{5, 0, 2}, 5, 1, 4, 4, false, true, false},
    Case{{0, 5, 1}, 5, 2, 3, 3, true, false, true},
    Case{{4, 2}, 4, 1, 2, 2, false, false, false},
};
// Longer users cross the 64-query block (lengths 64 and 65) and the maximum.
const Case kLongCase{{150, 1, 0, 64, 65, 130}, 150, 2, 8, 6, true, true, true};

INSTANTIATE_TEST_SUITE_P(Small, HstuAttention, ::testing::ValuesIn(kSmallCases), CaseName);
INSTANTIATE_TEST_SUITE_P(Long, HstuAttention, ::testing::Values(kLongCase), CaseName);
// Finite differences only where they are quick.
INSTANTIATE_TEST_SUITE_P(Small, HstuAttentionGradient, ::testing::ValuesIn(kSmallCases), CaseName);

}  // namespace
}  // namespace tessera::cpu
