// The depthwise causal conv1d against a naive double reference (forward) and
// central differences of it (backward), with and without a halo; halos passed
// across shards equal the whole sequence; the one-token step equals the
// forward pass token by token.
#include "runtime/kernels/cpu/causal_conv1d.h"

#include <array>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "tests/runtime/kernels/cpu/reference.h"
#include "tests/runtime/kernels/cpu/ssd_reference.h"

namespace tessera::cpu {
namespace {

using reference::ReferenceConv;
using test::Dot;
using test::MaxRelativeError;
using test::NumericalGradient;
using test::RandomFloats;
using test::ToDouble;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct ConvInputs {
  CausalConv1dShape s;
  std::vector<float> x, w, bias, halo;
  ConvInputs(CausalConv1dShape shape, uint64_t seed, bool with_halo) : s(shape) {
    x = RandomFloats(s.batch * s.seq * s.channels, seed);
    w = RandomFloats(s.channels * s.width, seed + 1);
    bias = RandomFloats(s.channels, seed + 2);
    if (with_halo) halo = RandomFloats(HaloSize(), seed + 3);
  }
  int64_t HaloSize() const { return s.batch * (s.width - 1) * s.channels; }
  const float* HaloP() const { return halo.empty() ? nullptr : halo.data(); }
};

TEST(CausalConv1d, ForwardMatchesReferenceWithAndWithoutHalo) {
  for (int64_t width : {1, 2, 4})
    for (bool with_halo : {false, true}) {
      // 37 channels: a ragged vector tail; L = 2 < K - 1 for width 4 below.
      for (int64_t seq : {2, 19}) {
        const ConvInputs in({2, seq, 37, width}, 10 * width + seq, with_halo);
        std::vector<float> y(in.x.size(), kNaN), halo_out(in.HaloSize(), kNaN);
        CausalConv1dForward(in.s, in.x.data(), in.w.data(), in.bias.data(), in.HaloP(), y.data(),
                            halo_out.data());
        const auto want = ReferenceConv(in.s, ToDouble(in.x), ToDouble(in.w), ToDouble(in.bias),
                                        ToDouble(in.halo));
        EXPECT_LT(MaxRelativeError(y, want), 1e-6) << width << " " << with_halo << " " << seq;
        // halo_out: the last K-1 inputs of halo ++ x.
        for (int64_t b = 0; b < 2; ++b)
          for (int64_t j = 0; j < width - 1; ++j)
            for (int64_t c = 0; c < 37; ++c) {
              const int64_t tau = seq - (width - 1) + j;
              const float want_h = tau >= 0 ? in.x[(b * seq + tau) * 37 + c]
                                            : (with_halo ? in.halo[(b * (width - 1) + width - 1 + tau) * 37 + c] : 0.0f);
              ASSERT_EQ(halo_out[(b * (width - 1) + j) * 37 + c], want_h);
            }
      }
    }
}

TEST(CausalConv1d, BackwardMatchesCentralDifferences) {
  for (bool with_halo : {false, true}) {
    const ConvInputs in({2, 7, 5, 4}, 40, with_halo);
    const auto dy = RandomFloats(in.x.size(), 41);
    std::vector<float> dx(in.x.size(), kNaN), dhalo(in.HaloSize(), kNaN);
    std::vector<float> dw(in.w.size(), 0.25f), db(in.bias.size(), 0.25f);
    CausalConv1dBackward(in.s, in.x.data(), in.w.data(), in.HaloP(), dy.data(), dx.data(),
                         dw.data(), db.data(), dhalo.data());
    for (float& v : dw) v -= 0.25f;  // accumulated onto 0.25
    for (float& v : db) v -= 0.25f;
    const auto wy = ToDouble(dy);
    const std::array<std::vector<double>, 4> a = {
        ToDouble(in.x), ToDouble(in.w), ToDouble(in.bias),
        with_halo ? ToDouble(in.halo) : std::vector<double>(in.HaloSize(), 0.0)};
    const std::vector<float>* got[4] = {&dx, &dw, &db, &dhalo};
    for (int i = 0; i < 4; ++i) {
      const auto want = NumericalGradient(
          [&](const std::vector<double>& v) {
            auto args = a;
            args[i] = v;
            return Dot(wy, ReferenceConv(in.s, args[0], args[1], args[2], args[3]));
          },
          a[i]);
      EXPECT_LT(MaxRelativeError(*got[i], want), 1e-5) << i << " halo=" << with_halo;
    }
  }
}

TEST(CausalConv1d, HaloPassingAcrossShardsEqualsTheWholeSequence) {
  const int64_t seq = 30, ch = 6, K = 4;
  const ConvInputs in({2, seq, ch, K}, 50, true);
  const auto dy = RandomFloats(in.x.size(), 51);
  std::vector<float> y(in.x.size()), dx(in.x.size()), dhalo(in.HaloSize());
  std::vector<float> dw(in.w.size(), 0.0f), db(ch, 0.0f);
  CausalConv1dForward(in.s, in.x.data(), in.w.data(), in.bias.data(), in.HaloP(), y.data(),
                      nullptr);
  CausalConv1dBackward(in.s, in.x.data(), in.w.data(), in.HaloP(), dy.data(), dx.data(),
                       dw.data(), db.data(), dhalo.data());
  for (int64_t shards : {2, 3, 4}) {
    std::vector<float> halo = in.halo, py(in.x.size()), pdx(in.x.size());
    std::vector<float> pdw(in.w.size(), 0.0f), pdb(ch, 0.0f);
    std::vector<std::vector<float>> halos;  // the halo each shard started from
    for (int64_t k = 0; k < shards; ++k) {
      const int64_t t0 = seq * k / shards, len = seq * (k + 1) / shards - t0;
      const CausalConv1dShape ps{2, len, ch, K};
      std::vector<float> x, out(2 * len * ch);
      for (int64_t b = 0; b < 2; ++b)
        x.insert(x.end(), in.x.begin() + (b * seq + t0) * ch, in.x.begin() + (b * seq + t0 + len) * ch);
      halos.push_back(halo);
      CausalConv1dForward(ps, x.data(), in.w.data(), in.bias.data(), halo.data(), out.data(),
                          halo.data());  // halo_out aliases halo
      for (int64_t b = 0; b < 2; ++b)
        std::copy_n(out.begin() + b * len * ch, len * ch, py.begin() + (b * seq + t0) * ch);
    }
    EXPECT_LT(MaxRelativeError(py, ToDouble(y)), 1e-6) << shards;
    // Backward in reverse: shard k's dhalo adds to the last K-1 rows of the
    // previous shards' dx (and to the initial halo's gradient).
    std::vector<float> dprev(in.HaloSize(), 0.0f);  // gradient of the halo of shard k+1
    for (int64_t k = shards - 1; k >= 0; --k) {
      const int64_t t0 = seq * k / shards, len = seq * (k + 1) / shards - t0;
      const CausalConv1dShape ps{2, len, ch, K};
      std::vector<float> x, g, pdxk(2 * len * ch), pdh(in.HaloSize());
      for (int64_t b = 0; b < 2; ++b) {
        x.insert(x.end(), in.x.begin() + (b * seq + t0) * ch, in.x.begin() + (b * seq + t0 + len) * ch);
        g.insert(g.end(), dy.begin() + (b * seq + t0) * ch, dy.begin() + (b * seq + t0 + len) * ch);
      }
      CausalConv1dBackward(ps, x.data(), in.w.data(), halos[k].data(), g.data(), pdxk.data(),
                           pdw.data(), pdb.data(), pdh.data());
      for (int64_t b = 0; b < 2; ++b)
        std::copy_n(pdxk.begin() + b * len * ch, len * ch, pdx.begin() + (b * seq + t0) * ch);
      // Shard k+1's halo rows are this shard's (and earlier) last inputs.
      for (int64_t b = 0; b < 2; ++b)
        for (int64_t j = 0; j < K - 1; ++j) {
          const int64_t tau = seq * (k + 1) / shards - (K - 1) + j;  // global row
          if (k + 1 == shards) break;
          for (int64_t c = 0; c < ch; ++c)
            pdx[(b * seq + tau) * ch + c] += dprev[(b * (K - 1) + j) * ch + c];
        }
      dprev = pdh;
    }
    EXPECT_LT(MaxRelativeError(pdx, ToDouble(dx)), 1e-6) << shards;
    EXPECT_LT(MaxRelativeError(dprev, ToDouble(dhalo)), 1e-6) << shards;
    EXPECT_LT(MaxRelativeError(pdw, ToDouble(dw)), 1e-6) << shards;
    EXPECT_LT(MaxRelativeError(pdb, ToDouble(db)), 1e-6) << shards;
  }
}

TEST(CausalConv1d, StepEqualsForwardTokenByToken) {
  const int64_t seq = 9, ch = 11, K = 4;
  const ConvInputs in({2, seq, ch, K}, 60, true);
  std::vector<float> y(in.x.size());
  CausalConv1dForward(in.s, in.x.data(), in.w.data(), in.bias.data(), in.HaloP(), y.data(),
                      nullptr);
  std::vector<float> state = in.halo, xt(2 * ch), yt(2 * ch), y_step(in.x.size());
  for (int64_t t = 0; t < seq; ++t) {
    for (int64_t b = 0; b < 2; ++b)
      std::copy_n(in.x.begin() + (b * seq + t) * ch, ch, xt.begin() + b * ch);
    CausalConv1dStep(in.s, xt.data(), in.w.data(), in.bias.data(), state.data(), yt.data());
    for (int64_t b = 0; b < 2; ++b)
      std::copy_n(yt.begin() + b * ch, ch, y_step.begin() + (b * seq + t) * ch);
  }
  EXPECT_LT(MaxRelativeError(y_step, ToDouble(y)), 1e-6);
}

}  // namespace
}  // namespace tessera::cpu
