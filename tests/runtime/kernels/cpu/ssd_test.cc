// The chunked SSD scan against the naive double recurrence (forward) and
// central differences of it (backward), for chunks that do and do not divide
// the length; the one-token step against the scan; and state passing: shards
// of a sequence chained through their states equal the whole sequence,
// forward and backward.
#include "runtime/kernels/cpu/ssd.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/runtime/kernels/cpu/reference.h"
#include "tests/runtime/kernels/cpu/ssd_reference.h"

namespace tessera::cpu {
namespace {

using reference::ReferenceSsd;
using test::Dot;
using test::MaxRelativeError;
using test::NumericalGradient;
using test::RandomFloats;
using test::ToDouble;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Inputs of one scan, in the kernels' layouts. dt in [0.05, 0.6] and A in
// [-1.5, -0.3] give decays per token between 0.4 and 0.985.
struct Inputs {
  SsdShape s;
  std::vector<float> x, dt, A, B, C, D, init;

  Inputs(SsdShape shape, uint64_t seed, bool with_skip, bool with_init) : s(shape) {
    const int64_t tokens = s.batch * s.seq;
    x = RandomFloats(tokens * s.heads * s.head_dim, seed);
    dt = RandomFloats(tokens * s.heads, seed + 1, 0.05f, 0.6f);
    A = RandomFloats(s.heads, seed + 2, -1.5f, -0.3f);
    B = RandomFloats(tokens * s.groups * s.state_dim, seed + 3);
    C = RandomFloats(tokens * s.groups * s.state_dim, seed + 4);
    if (with_skip) D = RandomFloats(s.heads, seed + 5);
    if (with_init) init = RandomFloats(StateSize(), seed + 6);
  }
  int64_t StateSize() const { return s.batch * s.heads * s.head_dim * s.state_dim; }
  int64_t OutSize() const { return s.batch * s.seq * s.heads * s.head_dim; }
  const float* Dp() const { return D.empty() ? nullptr : D.data(); }
  const float* InitP() const { return init.empty() ? nullptr : init.data(); }
};

struct Forward {
  std::vector<float> y, final_state;
};

Forward RunForward(const Inputs& in) {
  Forward f{std::vector<float>(in.OutSize(), kNaN), std::vector<float>(in.StateSize(), kNaN)};
  SsdScanForward(in.s, in.x.data(), in.dt.data(), in.A.data(), in.B.data(), in.C.data(), in.Dp(),
                 in.InitP(), f.y.data(), f.final_state.data());
  return f;
}

struct Grads {
  std::vector<float> dx, ddt, dA, dB, dC, dD, dinit;
};

// dA and dD start at `accumulate_base` to check that they accumulate.
Grads RunBackward(const Inputs& in, const std::vector<float>& dy, const std::vector<float>& dfinal,
                  float accumulate_base = 0.0f) {
  Grads g;
  g.dx.assign(in.x.size(), kNaN), g.ddt.assign(in.dt.size(), kNaN);
  g.dB.assign(in.B.size(), kNaN), g.dC.assign(in.C.size(), kNaN);
  g.dinit.assign(in.StateSize(), kNaN);
  g.dA.assign(in.A.size(), accumulate_base), g.dD.assign(in.A.size(), accumulate_base);
  SsdScanBackward(in.s, in.x.data(), in.dt.data(), in.A.data(), in.B.data(), in.C.data(),
                  in.Dp(), in.InitP(), dy.data(), dfinal.empty() ? nullptr : dfinal.data(),
                  g.dx.data(), g.ddt.data(), g.dA.data(), g.dB.data(), g.dC.data(), g.dD.data(),
                  g.dinit.data());
  return g;
}

std::string Describe(const SsdShape& s) {
  return absl::StrCat("B", s.batch, " L", s.seq, " H", s.heads, " P", s.head_dim, " G", s.groups,
                      " N", s.state_dim, " Q", s.chunk);
}

TEST(SsdScan, ForwardMatchesNaiveRecurrenceForEveryChunkSize) {
  for (int64_t chunk : {1, 4, 7, 16, 37, 64})
    for (bool with_init : {false, true}) {
      const SsdShape s{2, 37, 4, 8, 2, 6, chunk};
      const Inputs in(s, 10 + chunk, /*with_skip=*/with_init, with_init);
      const Forward f = RunForward(in);
      const auto want = ReferenceSsd(s, ToDouble(in.x), ToDouble(in.dt), ToDouble(in.A),
                                     ToDouble(in.B), ToDouble(in.C), ToDouble(in.D),
                                     ToDouble(in.init));
      EXPECT_LT(MaxRelativeError(f.y, want.y), 2e-6) << Describe(s) << " init=" << with_init;
      EXPECT_LT(MaxRelativeError(f.final_state, want.final_state), 2e-6) << Describe(s);
    }
}

TEST(SsdScan, LongChunksWithStrongDecayStayAccurate) {
  // cs reaches about -200 within a chunk of 256: decays are formed from
  // double differences, so nothing cancels.
  SsdShape s{1, 300, 2, 4, 1, 8, 256};
  Inputs in(s, 77, true, true);
  in.dt = RandomFloats(s.seq * s.heads, 78, 0.2f, 1.0f);
  const Forward f = RunForward(in);
  const auto want = ReferenceSsd(s, ToDouble(in.x), ToDouble(in.dt), ToDouble(in.A),
                                 ToDouble(in.B), ToDouble(in.C), ToDouble(in.D), ToDouble(in.init));
  EXPECT_LT(MaxRelativeError(f.y, want.y), 2e-6);
  EXPECT_LT(MaxRelativeError(f.final_state, want.final_state), 2e-6);
}

// <wy, y> + <ws, final_state> of the double reference as a function of one
// input, the others fixed.
struct LossOf {
  const Inputs& in;
  std::vector<double> wy, ws;
  double operator()(int which, const std::vector<double>& v) const {
    std::vector<double> a[7] = {ToDouble(in.x), ToDouble(in.dt), ToDouble(in.A), ToDouble(in.B),
                                ToDouble(in.C), ToDouble(in.D),  ToDouble(in.init)};
    a[which] = v;
    const auto r = ReferenceSsd(in.s, a[0], a[1], a[2], a[3], a[4], a[5], a[6]);
    return Dot(wy, r.y) + Dot(ws, r.final_state);
  }
};

TEST(SsdScan, BackwardMatchesCentralDifferencesForDividingAndRaggedChunks) {
  for (int64_t chunk : {3, 4, 5, 12})
    for (int64_t groups : {1, 2}) {
      const SsdShape s{2, 12, 4, 3, groups, 4, chunk};
      const Inputs in(s, 100 + chunk, true, true);
      const auto dy = RandomFloats(in.OutSize(), 200), dfinal = RandomFloats(in.StateSize(), 201);
      const Grads g = RunBackward(in, dy, dfinal, 0.5f);
      const LossOf loss{in, ToDouble(dy), ToDouble(dfinal)};
      const std::vector<float>* inputs[7] = {&in.x, &in.dt, &in.A, &in.B, &in.C, &in.D, &in.init};
      std::vector<float> got[7] = {g.dx, g.ddt, g.dA, g.dB, g.dC, g.dD, g.dinit};
      for (float& v : got[2]) v -= 0.5f;  // dA, dD accumulated onto 0.5
      for (float& v : got[5]) v -= 0.5f;
      const char* names[7] = {"dx", "ddt", "dA", "dB", "dC", "dD", "dinit"};
      for (int i = 0; i < 7; ++i) {
        const auto want = NumericalGradient(
            [&](const std::vector<double>& v) { return loss(i, v); }, ToDouble(*inputs[i]));
        EXPECT_LT(MaxRelativeError(got[i], want), 1e-4) << names[i] << " " << Describe(s);
      }
    }
}

TEST(SsdScan, BackwardWithoutInitialStateOrSkipOrFinalGradient) {
  const SsdShape s{1, 10, 2, 3, 1, 4, 4};
  const Inputs in(s, 300, false, false);
  const auto dy = RandomFloats(in.OutSize(), 301);
  const Grads g = RunBackward(in, dy, {});
  const LossOf loss{in, ToDouble(dy), std::vector<double>(in.StateSize(), 0.0)};
  const std::vector<float>* inputs[5] = {&in.x, &in.dt, &in.A, &in.B, &in.C};
  const std::vector<float>* got[5] = {&g.dx, &g.ddt, &g.dA, &g.dB, &g.dC};
  for (int i = 0; i < 5; ++i) {
    const auto want = NumericalGradient([&](const std::vector<double>& v) { return loss(i, v); },
                                        ToDouble(*inputs[i]));
    EXPECT_LT(MaxRelativeError(*got[i], want), 1e-4) << i;
  }
  // d(initial state) is still defined: the gradient of a zero state.
  const auto want_dinit = NumericalGradient(
      [&](const std::vector<double>& v) { return loss(6, v); },
      std::vector<double>(in.StateSize(), 0.0));
  EXPECT_LT(MaxRelativeError(g.dinit, want_dinit), 1e-4);
}

TEST(SsdScan, RecurrentStepEqualsTheChunkedScanTokenByToken) {
  const SsdShape s{2, 21, 4, 8, 2, 16, 8};
  const Inputs in(s, 400, true, true);
  const Forward f = RunForward(in);
  std::vector<float> state = in.init;
  const int64_t H = s.heads, P = s.head_dim, GN = s.groups * s.state_dim;
  std::vector<float> x(s.batch * H * P), dt(s.batch * H), B(s.batch * GN), C(s.batch * GN);
  std::vector<float> y_step(in.OutSize()), y(s.batch * H * P);
  for (int64_t t = 0; t < s.seq; ++t) {
    for (int64_t b = 0; b < s.batch; ++b) {
      const int64_t row = b * s.seq + t;
      std::copy_n(in.x.begin() + row * H * P, H * P, x.begin() + b * H * P);
      std::copy_n(in.dt.begin() + row * H, H, dt.begin() + b * H);
      std::copy_n(in.B.begin() + row * GN, GN, B.begin() + b * GN);
      std::copy_n(in.C.begin() + row * GN, GN, C.begin() + b * GN);
    }
    SsdStep(s, x.data(), dt.data(), in.A.data(), B.data(), C.data(), in.D.data(), state.data(),
            y.data());
    for (int64_t b = 0; b < s.batch; ++b)
      std::copy_n(y.begin() + b * H * P, H * P, y_step.begin() + (b * s.seq + t) * H * P);
  }
  EXPECT_LT(MaxRelativeError(y_step, ToDouble(f.y)), 2e-6);
  EXPECT_LT(MaxRelativeError(state, ToDouble(f.final_state)), 2e-6);
}

// Rows [t0, t0 + len) of every sample of a [B, L, width] tensor.
std::vector<float> Rows(const std::vector<float>& v, int64_t batch, int64_t seq, int64_t width,
                        int64_t t0, int64_t len) {
  std::vector<float> out;
  for (int64_t b = 0; b < batch; ++b)
    out.insert(out.end(), v.begin() + (b * seq + t0) * width,
               v.begin() + (b * seq + t0 + len) * width);
  return out;
}
void PutRows(const std::vector<float>& part, int64_t batch, int64_t seq, int64_t width, int64_t t0,
             int64_t len, std::vector<float>& v) {
  for (int64_t b = 0; b < batch; ++b)
    std::copy_n(part.begin() + b * len * width, len * width, v.begin() + (b * seq + t0) * width);
}

// Shard s of L split in `shards` nearly equal parts.
int64_t ShardStart(int64_t seq, int64_t shards, int64_t s) { return seq * s / shards; }

TEST(SsdScan, StatePassingAcrossShardsEqualsTheWholeSequence) {
  // Chunk 8: shards of 48 are chunk-aligned for 2, 3 and 4 shards; 50 makes
  // shard boundaries fall inside chunks.
  for (int64_t seq : {48, 50})
    for (int64_t shards : {2, 3, 4}) {
      const SsdShape whole{2, seq, 4, 8, 2, 6, 8};
      const Inputs in(whole, 500 + seq, true, true);
      const auto dy = RandomFloats(in.OutSize(), 600), dfinal = RandomFloats(in.StateSize(), 601);
      const Forward f = RunForward(in);
      const Grads g = RunBackward(in, dy, dfinal);

      const int64_t HP = whole.heads * whole.head_dim, H = whole.heads;
      const int64_t GN = whole.groups * whole.state_dim;
      std::vector<Inputs> parts;
      std::vector<std::vector<float>> part_dy;
      for (int64_t k = 0; k < shards; ++k) {
        const int64_t t0 = ShardStart(seq, shards, k), len = ShardStart(seq, shards, k + 1) - t0;
        SsdShape ps = whole;
        ps.seq = len;
        Inputs p = in;
        p.s = ps;
        p.x = Rows(in.x, 2, seq, HP, t0, len), p.dt = Rows(in.dt, 2, seq, H, t0, len);
        p.B = Rows(in.B, 2, seq, GN, t0, len), p.C = Rows(in.C, 2, seq, GN, t0, len);
        parts.push_back(p);
        part_dy.push_back(Rows(dy, 2, seq, HP, t0, len));
      }
      // Forward chain: shard k starts from shard k-1's final state.
      std::vector<float> y(in.OutSize()), state = in.init;
      for (int64_t k = 0; k < shards; ++k) {
        parts[k].init = state;
        const Forward pf = RunForward(parts[k]);
        PutRows(pf.y, 2, seq, HP, ShardStart(seq, shards, k), parts[k].s.seq, y);
        state = pf.final_state;
      }
      const std::string what = absl::StrCat("L", seq, " shards ", shards);
      EXPECT_LT(MaxRelativeError(y, ToDouble(f.y)), 1e-6) << what;
      EXPECT_LT(MaxRelativeError(state, ToDouble(f.final_state)), 1e-6) << what;

      // Backward chain in reverse: d(final state) of shard k is d(initial
      // state) of shard k+1.
      std::vector<float> dx(in.x.size()), ddt(in.dt.size()), dB(in.B.size()), dC(in.C.size());
      std::vector<float> dA(H, 0.0f), dD(H, 0.0f), dstate = dfinal;
      for (int64_t k = shards - 1; k >= 0; --k) {
        const Grads pg = RunBackward(parts[k], part_dy[k], dstate);
        const int64_t t0 = ShardStart(seq, shards, k), len = parts[k].s.seq;
        PutRows(pg.dx, 2, seq, HP, t0, len, dx), PutRows(pg.ddt, 2, seq, H, t0, len, ddt);
        PutRows(pg.dB, 2, seq, GN, t0, len, dB), PutRows(pg.dC, 2, seq, GN, t0, len, dC);
        for (int64_t h = 0; h < H; ++h) dA[h] += pg.dA[h], dD[h] += pg.dD[h];
        dstate = pg.dinit;
      }
      EXPECT_LT(MaxRelativeError(dx, ToDouble(g.dx)), 1e-6) << what;
      EXPECT_LT(MaxRelativeError(ddt, ToDouble(g.ddt)), 1e-6) << what;
      EXPECT_LT(MaxRelativeError(dB, ToDouble(g.dB)), 1e-6) << what;
      EXPECT_LT(MaxRelativeError(dC, ToDouble(g.dC)), 1e-6) << what;
      EXPECT_LT(MaxRelativeError(dA, ToDouble(g.dA)), 1e-6) << what;
      EXPECT_LT(MaxRelativeError(dD, ToDouble(g.dD)), 1e-6) << what;
      EXPECT_LT(MaxRelativeError(dstate, ToDouble(g.dinit)), 1e-6) << what;
    }
}

TEST(SsdScan, ResultsAreBitIdenticalForAnyThreadCount) {
  const SsdShape s{2, 40, 4, 8, 2, 6, 16};
  const Inputs in(s, 700, true, true);
  const auto dy = RandomFloats(in.OutSize(), 701), dfinal = RandomFloats(in.StateSize(), 702);
  Forward f1, f2;
  Grads g1, g2;
  {
    test::ScopedNumThreads one(1);
    f1 = RunForward(in), g1 = RunBackward(in, dy, dfinal);
  }
  {
    test::ScopedNumThreads two(2);
    f2 = RunForward(in), g2 = RunBackward(in, dy, dfinal);
  }
  EXPECT_TRUE(test::BitwiseEqual(f1.y, f2.y));
  EXPECT_TRUE(test::BitwiseEqual(f1.final_state, f2.final_state));
  for (auto [a, b] : {std::pair{&g1.dx, &g2.dx}, {&g1.ddt, &g2.ddt}, {&g1.dA, &g2.dA},
                      {&g1.dB, &g2.dB}, {&g1.dC, &g2.dC}, {&g1.dD, &g2.dD},
                      {&g1.dinit, &g2.dinit}})
    EXPECT_TRUE(test::BitwiseEqual(*a, *b));
}

TEST(SsdScan, FlopCountSumsTheChunkEinsums) {
  // One chunk of 4 (L = 6: chunks of 4 and 2), P = 3, N = 5, one head.
  const SsdShape s{1, 6, 1, 3, 1, 5, 4};
  const double want = (2.0 * 16 * 8 + 4.0 * 4 * 15) + (2.0 * 4 * 8 + 4.0 * 2 * 15);
  EXPECT_DOUBLE_EQ(SsdScanForwardFlops(s), want);
}

}  // namespace
}  // namespace tessera::cpu
