// The HSTU layer against a padded double-precision reference written the way
// the reference code is (every user padded to n, full [n, n] scores, causal
// and validity masks), and its backward against central differences of that
// reference — on users of length 1, of the maximum length, of length 0 and
// in between, with a dropout mask.
#include "models/hstu/layer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "parallel/comm/single_rank_communicator.h"
#include "tests/runtime/kernels/cpu/reference.h"

namespace tessera::hstu {
namespace {

using cpu::test::MaxRelativeError;
using cpu::test::NumericalGradient;
using cpu::test::RandomFloats;

constexpr int64_t kD = 8, kHeads = 2, kQk = 3, kV = 2, kN = 5;
constexpr int32_t kBuckets = 8;
constexpr int64_t kF = kHeads * (2 * kV + 2 * kQk), kG = kHeads * kV;

struct Params {
  std::vector<double> w_uvqk, w_o, b_o, pos, time;  // [F, D], [D, G], [D], [2n-1], [B+1]
};

struct Histories {
  std::vector<int64_t> offsets, timestamps, query_timestamps;
  std::vector<double> mask;  // [T, G] dropout
};

// The reference's bucket: float32 log of |dt| as a float32, / 0.301f, truncated.
int Bucket(int64_t dt) {
  const float a = std::max(1.0f, static_cast<float>(std::llabs(dt)));
  return std::min<int>(kBuckets, std::max(0, static_cast<int>(std::log(a) / 0.301f)));
}

std::vector<double> LayerNormRows(const std::vector<double>& x, int64_t rows, int64_t dim) {
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < dim; ++i) mean += x[r * dim + i] / dim;
    for (int64_t i = 0; i < dim; ++i) var += std::pow(x[r * dim + i] - mean, 2) / dim;
    for (int64_t i = 0; i < dim; ++i) y[r * dim + i] = (x[r * dim + i] - mean) / std::sqrt(var + 1e-6);
  }
  return y;
}

double Silu(double s) { return s / (1 + std::exp(-s)); }

// One user padded to n rows: rows [0, length) of the layer's output.
std::vector<double> PaddedUser(const std::vector<double>& xu, int64_t length, const Params& p,
                               const int64_t* ts, const int64_t* qts, const double* mask) {
  std::vector<double> x(kN * kD, 0.0);
  std::copy(xu.begin(), xu.end(), x.begin());
  const std::vector<double> xn = LayerNormRows(x, kN, kD);
  std::vector<double> s(kN * kF);
  for (int64_t r = 0; r < kN; ++r)
    for (int64_t o = 0; o < kF; ++o) {
      double sum = 0;
      for (int64_t i = 0; i < kD; ++i) sum += xn[r * kD + i] * p.w_uvqk[o * kD + i];
      s[r * kF + o] = Silu(sum);
    }
  std::vector<double> av(kN * kG, 0.0);
  for (int64_t h = 0; h < kHeads; ++h)
    for (int64_t i = 0; i < kN; ++i)
      for (int64_t j = 0; j <= i && j < length && i < length; ++j) {
        double qk = p.pos[kN - 1 + j - i] + p.time[Bucket(qts[i] - ts[j])];
        for (int64_t c = 0; c < kQk; ++c) {
          qk += s[i * kF + 2 * kG + h * kQk + c] * s[j * kF + 2 * kG + kHeads * kQk + h * kQk + c];
        }
        const double a = Silu(qk) / kN;
        for (int64_t c = 0; c < kV; ++c) av[i * kG + h * kV + c] += a * s[j * kF + kG + h * kV + c];
      }
  const std::vector<double> normed = LayerNormRows(av, kN, kG);
  std::vector<double> y(length * kD);
  for (int64_t r = 0; r < length; ++r)
    for (int64_t o = 0; o < kD; ++o) {
      double sum = x[r * kD + o] + p.b_o[o];
      for (int64_t g = 0; g < kG; ++g) {
        sum += s[r * kF + g] * normed[r * kG + g] * mask[r * kG + g] * p.w_o[o * kG + g];
      }
      y[r * kD + o] = sum;
    }
  return y;
}

std::vector<double> ReferenceLayer(const std::vector<double>& x, const Params& p,
                                   const Histories& h) {
  std::vector<double> y;
  for (size_t u = 0; u + 1 < h.offsets.size(); ++u) {
    const int64_t b = h.offsets[u], len = h.offsets[u + 1] - b;
    std::vector<double> xu(x.begin() + b * kD, x.begin() + (b + len) * kD);
    const auto yu = PaddedUser(xu, len, p, h.timestamps.data() + b,
                               h.query_timestamps.data() + b, h.mask.data() + b * kG);
    y.insert(y.end(), yu.begin(), yu.end());
  }
  return y;
}

void Fill(ParameterStore& store, const std::string& name, const std::vector<double>& values) {
  Tensor t = store.param(*store.Find(name));
  ASSERT_EQ(t.numel(), static_cast<int64_t>(values.size())) << name;
  for (size_t i = 0; i < values.size(); ++i) t.data<float>()[i] = static_cast<float>(values[i]);
}

std::vector<float> Grad(ParameterStore& store, const std::string& name) {
  Tensor t = store.grad(*store.Find(name));
  return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
}

std::vector<double> Rounded(const std::vector<float>& v) { return {v.begin(), v.end()}; }

TEST(HstuLayer, MatchesThePaddedDoubleReferenceAndFiniteDifferences) {
  // Users of length 1, 5 (= max_len), 0 and 3.
  Histories h;
  h.offsets = {0, 1, 6, 6, 9};
  const int64_t total = 9;
  const std::vector<int64_t> next = {700, 90000, 0, 5000000};
  for (int64_t t = 0; t < total; ++t) h.timestamps.push_back(100 + t * t * 997);
  h.query_timestamps.resize(total);
  for (size_t u = 0; u + 1 < h.offsets.size(); ++u)
    for (int64_t i = h.offsets[u]; i < h.offsets[u + 1]; ++i) {
      h.query_timestamps[i] = i + 1 < h.offsets[u + 1] ? h.timestamps[i + 1] : next[u];
    }
  const auto mask_draw = RandomFloats(total * kG, 7, 0, 1);
  std::vector<float> mask(total * kG);
  for (size_t i = 0; i < mask.size(); ++i) mask[i] = mask_draw[i] < 0.25f ? 0.0f : 1.0f / 0.75f;
  h.mask = Rounded(mask);

  const std::vector<float> xf = RandomFloats(total * kD, 1, -1.5, 1.5);
  Params p{Rounded(RandomFloats(kF * kD, 2, -0.6, 0.6)), Rounded(RandomFloats(kD * kG, 3)),
           Rounded(RandomFloats(kD, 4)), Rounded(RandomFloats(2 * kN - 1, 5)),
           Rounded(RandomFloats(kBuckets + 1, 6))};

  ParameterStore store;
  HstuLayerDims dims{kD, kHeads, kQk, kV, kN, kBuckets};
  parallel::SingleRankCommunicator tp(HostBackend()), sp(HostBackend());
  auto created = HstuLayer::Create(store, tp, sp, "layer", dims);
  ASSERT_TRUE(created.ok()) << created.status();
  HstuLayer& layer = **created;
  store.Finalize(0);
  Fill(store, "layer.uvqk.weight", p.w_uvqk);
  Fill(store, "layer.o.weight", p.w_o);
  Fill(store, "layer.o.bias", p.b_o);
  Fill(store, "layer.pos_bias", p.pos);
  Fill(store, "layer.time_bias", p.time);

  Arena arena;
  Tensor x = Tensor::Empty(DType::kF32, Shape{total, kD});
  std::copy(xf.begin(), xf.end(), x.data<float>());
  Tensor m = Tensor::Empty(DType::kF32, Shape{total, kG});
  std::copy(mask.begin(), mask.end(), m.data<float>());
  JaggedTokens tokens{h.offsets.data(), 4,         total, {0, total}, h.timestamps.data(),
                      h.query_timestamps.data()};
  Tensor y = *layer.Forward(arena, x, tokens, m);
  const std::vector<double> want = ReferenceLayer(Rounded(xf), p, h);
  EXPECT_LT(MaxRelativeError(y.data<float>(), want.data(), total * kD), 1e-5);

  const std::vector<float> w = RandomFloats(total * kD, 8);
  Tensor dy = Tensor::Empty(DType::kF32, Shape{total, kD});
  std::copy(w.begin(), w.end(), dy.data<float>());
  store.ZeroGrads();
  Tensor dx = *layer.Backward(arena, dy);
  const std::vector<double> wd = Rounded(w);
  auto loss = [&](const std::vector<double>& xx, const Params& pp) {
    return cpu::test::Dot(wd, ReferenceLayer(xx, pp, h));
  };
  const auto want_dx = NumericalGradient([&](const auto& v) { return loss(v, p); }, Rounded(xf));
  EXPECT_LT(MaxRelativeError(dx.data<float>(), want_dx.data(), total * kD), 1e-4) << "dx";
  const struct {
    const char* name;
    std::vector<double> Params::*member;
  } params[] = {{"layer.uvqk.weight", &Params::w_uvqk}, {"layer.o.weight", &Params::w_o},
                {"layer.o.bias", &Params::b_o},         {"layer.pos_bias", &Params::pos},
                {"layer.time_bias", &Params::time}};
  for (const auto& param : params) {
    const auto want_grad = NumericalGradient(
        [&](const std::vector<double>& v) {
          Params q = p;
          q.*param.member = v;
          return loss(Rounded(xf), q);
        },
        p.*param.member);
    EXPECT_LT(MaxRelativeError(Grad(store, param.name), want_grad), 1e-4) << param.name;
  }
}

}  // namespace
}  // namespace tessera::hstu
