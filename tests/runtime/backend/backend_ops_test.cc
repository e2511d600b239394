// Every op of the Backend interface, run through the interface on every
// backend present (the CPU always; CUDA joins when its backend exists and a
// device is present), one test body per op, as ggml's test-backend-ops does.
//
// Each forward is compared with a naive double-precision reference; each
// backward with central differences of that reference (so the oracle never
// shares code with the backend). Outputs are poisoned (all bits set: NaN for
// floats, -1 for integers) before every op, so an element an op forgets to
// write fails the comparison.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "runtime/backend/backend.h"
#include "runtime/backend/device_select.h"
#include "runtime/base/random.h"
#include "runtime/tensor/tensor.h"
#include "tests/runtime/kernels/cpu/attention_reference.h"
#include "tests/runtime/kernels/cpu/ssd_reference.h"
#include "tests/runtime/kernels/cpu/reference.h"

namespace tessera {
namespace {

using cpu::test::Dot;
using cpu::test::NumericalGradient;
using cpu::test::RandomFloats;
using cpu::test::ToDouble;

constexpr double kTolerance = 1e-5;      // fp32 against double, relative to max(1, |want|)
constexpr double kGradTolerance = 2e-3;  // against central differences of the reference

// The CPU always; CUDA when the build has it and a device is usable (the
// backend lives for the whole test program).
std::vector<Backend*> BackendsPresent() {
  std::vector<Backend*> backends = {&HostBackend()};
  if (VisibleCudaDevices() > 0) {
    static std::unique_ptr<Backend> cuda = [] {
      auto created = CreateCudaBackend(0);
      if (!created.ok()) {
        std::fprintf(stderr, "CUDA backend: %s\n", std::string(created.status().message()).c_str());
        return std::unique_ptr<Backend>();
      }
      return *std::move(created);
    }();
    if (cuda != nullptr) backends.push_back(cuda.get());
  }
  return backends;
}

// Says in the test log when the CUDA backend did not run (rather than
// passing silently with the CPU alone).
TEST(BackendOpsOnCuda, RunsEveryOpWhenADeviceIsPresent) {
  if (!BuildHasCuda()) GTEST_SKIP() << "this build has no CUDA: the ops ran on the CPU only";
  if (VisibleCudaDevices() == 0) GTEST_SKIP() << "no CUDA device: the ops ran on the CPU only";
  EXPECT_EQ(BackendsPresent().size(), 2u) << "a CUDA device is visible but its backend failed";
}

class BackendOps : public ::testing::TestWithParam<Backend*> {
 protected:
  Backend& backend() { return *GetParam(); }

  // A buffer of the backend holding `values`.
  template <typename T>
  Tensor Upload(const std::vector<T>& values) {
    Tensor t = Tensor::Empty(DTypeOf<T>(), Shape{static_cast<int64_t>(values.size())}, backend());
    backend().CopyToDevice(t.address(), values.data(), t.bytes());
    return t;
  }
  // An output buffer of `n` elements, every bit set.
  template <typename T>
  Tensor Poisoned(int64_t n) {
    Tensor t = Tensor::Empty(DTypeOf<T>(), Shape{n}, backend());
    backend().Memset(t.address(), 0xff, t.bytes());
    return t;
  }
  template <typename T>
  std::vector<T> Download(const Tensor& t) {
    std::vector<T> out(static_cast<size_t>(t.numel()));
    backend().CopyToHost(out.data(), t.address(), t.bytes());
    EXPECT_TRUE(backend().Synchronize().ok());
    return out;
  }
  // Doubles in device memory (the ops' scalar outputs), held in i64 tensors.
  Tensor Doubles(const std::vector<double>& values) {
    Tensor t = Tensor::Empty(DType::kI64, Shape{static_cast<int64_t>(values.size())}, backend());
    backend().CopyToDevice(t.address(), values.data(), t.bytes());
    return t;
  }
  static double* DoublePtr(const Tensor& t) { return reinterpret_cast<double*>(t.ptr<int64_t>()); }
  std::vector<double> DownloadDoubles(const Tensor& t) {
    std::vector<double> out(static_cast<size_t>(t.numel()));
    backend().CopyToHost(out.data(), t.address(), t.bytes());
    EXPECT_TRUE(backend().Synchronize().ok());
    return out;
  }
};

// got (fp32) against want (double), relative to max(1, |want|); NaN fails.
void ExpectClose(const std::vector<float>& got, const std::vector<double>& want, double tol,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(got[i] - want[i]) / std::max(1.0, std::abs(want[i]));
    ASSERT_TRUE(err <= tol) << what << "[" << i << "] = " << got[i] << ", want " << want[i];
  }
}

// The gradient `got` of <w, f(x)> against central differences of the
// double reference f.
void ExpectGradient(const std::vector<float>& got,
                    const std::function<std::vector<double>(const std::vector<double>&)>& f,
                    const std::vector<float>& x, const std::vector<float>& w,
                    const std::string& what) {
  const std::vector<double> wd = ToDouble(w);
  const std::vector<double> want =
      NumericalGradient([&](const std::vector<double>& v) { return Dot(wd, f(v)); }, ToDouble(x));
  ExpectClose(got, want, kGradTolerance, what);
}

// ---- GEMM -------------------------------------------------------------------

std::vector<double> ReferenceGemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha,
                                  const std::vector<double>& a, int64_t lda,
                                  const std::vector<double>& b, int64_t ldb, double beta,
                                  std::vector<double> c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0;
      for (int64_t p = 0; p < k; ++p) {
        sum += (ta ? a[p * lda + i] : a[i * lda + p]) * (tb ? b[j * ldb + p] : b[p * ldb + j]);
      }
      c[i * ldc + j] = alpha * sum + (beta == 0 ? 0 : beta * c[i * ldc + j]);
    }
  return c;
}

TEST_P(BackendOps, GemmEveryTransposeWithPaddedLeadingDimensions) {
  const int64_t m = 7, n = 9, k = 5;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 2, ldc = n + 1;
      const auto a = RandomFloats((ta ? k : m) * lda, 1), b = RandomFloats((tb ? n : k) * ldb, 2);
      const auto c0 = RandomFloats(m * ldc, 3);
      for (float beta : {0.0f, 0.5f}) {
        Tensor c = Upload(c0);
        backend().Gemm(ta, tb, m, n, k, 1.5f, Upload(a).ptr<float>(), lda, Upload(b).ptr<float>(),
                       ldb, beta, c.ptr<float>(), ldc);
        const auto want = ReferenceGemm(ta, tb, m, n, k, 1.5, ToDouble(a), lda, ToDouble(b), ldb,
                                        beta, ToDouble(c0), ldc);
        ExpectClose(Download<float>(c), want, kTolerance,
                    "gemm ta=" + std::to_string(ta) + " tb=" + std::to_string(tb));
      }
    }
}

TEST_P(BackendOps, GemmBatchedIsIndependentGemms) {
  const int64_t batch = 3, m = 4, n = 6, k = 5;
  const auto a = RandomFloats(batch * m * k, 4), b = RandomFloats(batch * n * k, 5);
  Tensor c = Poisoned<float>(batch * m * n);
  backend().GemmBatched(false, true, batch, m, n, k, 1.0f, Upload(a).ptr<float>(), k, m * k,
                        Upload(b).ptr<float>(), k, n * k, 0.0f, c.ptr<float>(), n, m * n);
  std::vector<double> want;
  for (int64_t i = 0; i < batch; ++i) {
    const std::vector<double> ai(a.begin() + i * m * k, a.begin() + (i + 1) * m * k);
    const std::vector<double> bi(b.begin() + i * n * k, b.begin() + (i + 1) * n * k);
    const auto ci =
        ReferenceGemm(false, true, m, n, k, 1, ai, k, bi, k, 0, std::vector<double>(m * n), n);
    want.insert(want.end(), ci.begin(), ci.end());
  }
  ExpectClose(Download<float>(c), want, kTolerance, "batched gemm");
}

// x rounded to 8 significant bits, ties to even (bf16's significand),
// computed independently of the kernel's bit arithmetic.
double RoundBf16(double x) {
  if (x == 0 || !std::isfinite(x)) return x;
  int e = 0;
  const double m = std::frexp(x, &e);  // |m| in [0.5, 1)
  return std::ldexp(std::nearbyint(m * 256) / 256, e);
}

std::vector<double> RoundedBf16(const std::vector<float>& x) {
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = RoundBf16(x[i]);
  return out;
}

// bf16 GEMMs multiply the inputs rounded to bf16 and accumulate in fp32:
// against the double product of the rounded inputs they agree to fp32
// rounding; against the unrounded inputs they differ by bf16's ~2^-9.
TEST_P(BackendOps, GemmInBf16MultipliesRoundedInputsAndAccumulatesInFp32) {
  std::string note;
  if (!backend().CheckPrecision(MathPrecision::kBf16, &note).ok()) {
    GTEST_SKIP() << DeviceName(backend().device()) << " backend has no bf16 GEMMs here";
  }
  ScopedGemmPrecision bf16(backend(), MathPrecision::kBf16);
  const int64_t m = 33, n = 40, k = 70;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (float beta : {0.0f, 1.0f}) {
        const int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 2, ldc = n + 1;
        const auto a = RandomFloats((ta ? k : m) * lda, 11), b = RandomFloats((tb ? n : k) * ldb, 12);
        const auto c0 = RandomFloats(m * ldc, 13);
        Tensor c = Upload(c0);
        backend().Gemm(ta, tb, m, n, k, 0.75f, Upload(a).ptr<float>(), lda, Upload(b).ptr<float>(),
                       ldb, beta, c.ptr<float>(), ldc);
        const auto got = Download<float>(c);
        const std::string what = "bf16 gemm ta=" + std::to_string(ta) + " tb=" + std::to_string(tb) +
                                 " beta=" + std::to_string(beta);
        ExpectClose(got, ReferenceGemm(ta, tb, m, n, k, 0.75, RoundedBf16(a), lda, RoundedBf16(b),
                                       ldb, beta, ToDouble(c0), ldc),
                    kTolerance, what + " (rounded inputs)");
        const auto exact = ReferenceGemm(ta, tb, m, n, k, 0.75, ToDouble(a), lda, ToDouble(b), ldb,
                                         beta, ToDouble(c0), ldc);
        ExpectClose(got, exact, 2e-2, what + " (exact inputs)");
        double worst = 0;
        for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - exact[i]));
        EXPECT_GT(worst, 1e-4) << what << ": no bf16 rounding visible";
      }
  const int64_t batch = 3;
  const auto a = RandomFloats(batch * m * k, 14), b = RandomFloats(batch * n * k, 15);
  Tensor c = Poisoned<float>(batch * m * n);
  backend().GemmBatched(false, true, batch, m, n, k, 1.0f, Upload(a).ptr<float>(), k, m * k,
                        Upload(b).ptr<float>(), k, n * k, 0.0f, c.ptr<float>(), n, m * n);
  const auto ar = RoundedBf16(a), br = RoundedBf16(b);
  std::vector<double> want;
  for (int64_t i = 0; i < batch; ++i) {
    const std::vector<double> ai(ar.begin() + i * m * k, ar.begin() + (i + 1) * m * k);
    const std::vector<double> bi(br.begin() + i * n * k, br.begin() + (i + 1) * n * k);
    const auto ci =
        ReferenceGemm(false, true, m, n, k, 1, ai, k, bi, k, 0, std::vector<double>(m * n), n);
    want.insert(want.end(), ci.begin(), ci.end());
  }
  ExpectClose(Download<float>(c), want, kTolerance, "bf16 batched gemm");
}

// The grouped GEMM as the MoE experts call it: groups of their own sizes
// (m_g = 0 among them) in every transpose, C rows of one buffer, A and B
// buffers of their own with padded leading dimensions; then groups that
// differ in k (the weight gradients: k_g = rows, one of them 0, which must
// leave beta C). Against a double reference and against per-group Gemm.
struct GroupedCase {
  std::vector<int64_t> m, n, k;
};

TEST_P(BackendOps, GemmGroupedIsPerGroupGemmsWithEmptyGroups) {
  const std::vector<GroupedCase> cases = {
      // forward / data gradient: m_g varies (enough work to share out over threads)
      {{13, 0, 1, 17, 9, 0, 22, 6}, {24, 24, 24, 24, 24, 24, 24, 24}, {21, 21, 21, 21, 21, 21, 21, 21}},
      // weight gradients: k_g varies, one 0
      {{12, 12, 12, 12, 12}, {10, 10, 10, 10, 10}, {7, 0, 31, 1, 16}},
  };
  int seed = 100;
  for (const GroupedCase& gc : cases)
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (float beta : {0.0f, 0.5f}) {
          const size_t groups = gc.m.size();
          std::vector<Tensor> as, bs;
          std::vector<std::vector<float>> a_host, b_host;
          std::vector<int64_t> lda(groups), ldb(groups), c_row(groups + 1, 0);
          int64_t ldc = 0;
          for (size_t g = 0; g < groups; ++g) {
            const int64_t m = gc.m[g], n = gc.n[g], k = gc.k[g];
            lda[g] = (ta ? m : k) + 2;
            ldb[g] = (tb ? k : n) + 3;
            a_host.push_back(RandomFloats(std::max<int64_t>(1, (ta ? k : m) * lda[g]), ++seed));
            b_host.push_back(RandomFloats(std::max<int64_t>(1, (tb ? n : k) * ldb[g]), ++seed));
            as.push_back(Upload(a_host.back()));
            bs.push_back(Upload(b_host.back()));
            c_row[g + 1] = c_row[g] + m;
            ldc = std::max(ldc, n + 1);
          }
          const auto c0 = RandomFloats(std::max<int64_t>(1, c_row[groups] * ldc), ++seed);
          Tensor grouped = beta == 0 ? Poisoned<float>(static_cast<int64_t>(c0.size())) : Upload(c0);
          Tensor single = beta == 0 ? Poisoned<float>(static_cast<int64_t>(c0.size())) : Upload(c0);
          std::vector<GemmProblem> problems;
          for (size_t g = 0; g < groups; ++g) {
            problems.push_back({gc.m[g], gc.n[g], gc.k[g], as[g].ptr<float>(), lda[g],
                                bs[g].ptr<float>(), ldb[g], grouped.ptr<float>() + c_row[g] * ldc,
                                ldc});
            backend().Gemm(ta, tb, gc.m[g], gc.n[g], gc.k[g], 1.25f, as[g].ptr<float>(), lda[g],
                           bs[g].ptr<float>(), ldb[g], beta,
                           single.ptr<float>() + c_row[g] * ldc, ldc);
          }
          backend().GemmGrouped(ta, tb, 1.25f, beta, problems);
          const std::string what = "grouped gemm ta=" + std::to_string(ta) +
                                   " tb=" + std::to_string(tb) + " beta=" + std::to_string(beta) +
                                   " k0=" + std::to_string(gc.k[0]);
          const std::vector<float> got = Download<float>(grouped);
          const std::vector<float> per_group = Download<float>(single);
          std::vector<double> want = ToDouble(c0);
          for (size_t g = 0; g < groups; ++g) {
            const int64_t m = gc.m[g], n = gc.n[g];
            std::vector<double> cg(want.begin() + c_row[g] * ldc, want.begin() + c_row[g + 1] * ldc);
            cg = ReferenceGemm(ta, tb, m, n, gc.k[g], 1.25, ToDouble(a_host[g]), lda[g],
                               ToDouble(b_host[g]), ldb[g], beta, cg, ldc);
            std::copy(cg.begin(), cg.end(), want.begin() + c_row[g] * ldc);
          }
          // Only the n columns of each C row are outputs; the padding is untouched.
          std::vector<float> got_cols, per_group_cols;
          std::vector<double> want_cols;
          for (size_t g = 0; g < groups; ++g)
            for (int64_t r = c_row[g]; r < c_row[g + 1]; ++r)
              for (int64_t j = 0; j < gc.n[g]; ++j) {
                got_cols.push_back(got[r * ldc + j]);
                per_group_cols.push_back(per_group[r * ldc + j]);
                want_cols.push_back(want[r * ldc + j]);
              }
          ExpectClose(got_cols, want_cols, kTolerance, what + " (double reference)");
          ExpectClose(got_cols, ToDouble(per_group_cols), 1e-6, what + " (per-group Gemm)");
        }
}

// bf16: the grouped call rounds its inputs as Gemm does.
TEST_P(BackendOps, GemmGroupedInBf16RoundsLikeGemm) {
  std::string note;
  if (!backend().CheckPrecision(MathPrecision::kBf16, &note).ok()) {
    GTEST_SKIP() << DeviceName(backend().device()) << " backend has no bf16 GEMMs here";
  }
  ScopedGemmPrecision bf16(backend(), MathPrecision::kBf16);
  const std::vector<int64_t> rows = {9, 0, 30, 4};
  const int64_t n = 20, k = 40;
  std::vector<GemmProblem> problems;
  std::vector<Tensor> keep;
  std::vector<double> want;
  int64_t total = 0;
  for (int64_t m : rows) total += m;
  Tensor c = Poisoned<float>(total * n);
  int64_t row = 0, seed = 300;
  for (int64_t m : rows) {
    const auto a = RandomFloats(std::max<int64_t>(1, m * k), ++seed);
    const auto b = RandomFloats(n * k, ++seed);
    keep.push_back(Upload(a));
    keep.push_back(Upload(b));
    problems.push_back({m, n, k, keep[keep.size() - 2].ptr<float>(), k, keep.back().ptr<float>(),
                        k, c.ptr<float>() + row * n, n});
    const std::vector<double> rounded = RoundedBf16(a);
    const std::vector<double> ar(rounded.begin(), rounded.begin() + m * k);
    const auto cg = ReferenceGemm(false, true, m, n, k, 1, ar, k, RoundedBf16(b), k, 0,
                                  std::vector<double>(m * n), n);
    want.insert(want.end(), cg.begin(), cg.end());
    row += m;
  }
  backend().GemmGrouped(false, true, 1.0f, 0.0f, problems);
  ExpectClose(Download<float>(c), want, kTolerance, "bf16 grouped gemm");
}

// RoundToBf16 writes the bits of RoundBf16 (nearest, ties to even), keeps
// infinities and NaNs, and is the rounding the bf16 GEMMs apply.
TEST_P(BackendOps, RoundToBf16RoundsToNearestEven) {
  std::vector<float> x = RandomFloats(1000, 21, -3, 3);
  const float tie_down = std::bit_cast<float>(uint32_t{0x3f808000});  // 1 + 2^-8: to 1 (even)
  const float tie_up = std::bit_cast<float>(uint32_t{0x3f818000});    // to 1 + 2^-6 (even)
  const float above = std::bit_cast<float>(uint32_t{0x3f808001});     // just past a tie: up
  x.insert(x.end(), {0.0f, -0.0f, tie_down, tie_up, above, 1e30f, -1e-30f, std::numeric_limits<float>::max(),
                     std::numeric_limits<float>::infinity(),
                     -std::numeric_limits<float>::infinity(),
                     std::numeric_limits<float>::quiet_NaN()});
  Tensor y = Poisoned<uint8_t>(static_cast<int64_t>(2 * x.size()));
  backend().RoundToBf16(Upload(x).ptr<float>(), static_cast<uint16_t*>(y.address()),
                        static_cast<int64_t>(x.size()));
  const std::vector<uint8_t> bytes = Download<uint8_t>(y);
  for (size_t i = 0; i < x.size(); ++i) {
    uint16_t bits;
    std::memcpy(&bits, bytes.data() + 2 * i, 2);
    const float got = std::bit_cast<float>(uint32_t{bits} << 16);
    if (std::isnan(x[i])) {
      EXPECT_TRUE(std::isnan(got)) << "NaN at " << i;
      continue;
    }
    // The largest float rounds past the largest bf16 to infinity, as IEEE
    // rounding does (the double reference would give 2^128).
    const double want = x[i] == std::numeric_limits<float>::max()
                            ? std::numeric_limits<double>::infinity()
                            : RoundBf16(x[i]);
    ASSERT_EQ(static_cast<double>(got), want) << "x[" << i << "] = " << x[i];
  }
}

// GemmOperands with bf16 copies of A and/or B (RoundToBf16 of the padded
// buffers, keeping their leading dimensions) gives the bf16 Gemm's result
// bit for bit: the double product of the rounded inputs. In an fp32 run the
// copies are ignored (they hold garbage here) and the fp32 product results.
TEST_P(BackendOps, GemmOperandsMultiplyTheBf16CopiesAsGemmRoundsItsInputs) {
  std::string note;
  if (!backend().CheckPrecision(MathPrecision::kBf16, &note).ok()) {
    GTEST_SKIP() << DeviceName(backend().device()) << " backend has no bf16 GEMMs here";
  }
  const int64_t m = 33, n = 40, k = 70;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (float beta : {0.0f, 1.0f}) {
        const int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 2, ldc = n + 1;
        const auto a = RandomFloats((ta ? k : m) * lda, 31), b = RandomFloats((tb ? n : k) * ldb, 32);
        const auto c0 = RandomFloats(m * ldc, 33);
        const std::string what = "ta=" + std::to_string(ta) + " tb=" + std::to_string(tb) +
                                 " beta=" + std::to_string(beta);
        Tensor a_dev = Upload(a), b_dev = Upload(b);
        Tensor a16 = Poisoned<uint8_t>(2 * static_cast<int64_t>(a.size()));
        Tensor b16 = Poisoned<uint8_t>(2 * static_cast<int64_t>(b.size()));
        backend().RoundToBf16(a_dev.ptr<float>(), static_cast<uint16_t*>(a16.address()),
                              static_cast<int64_t>(a.size()));
        backend().RoundToBf16(b_dev.ptr<float>(), static_cast<uint16_t*>(b16.address()),
                              static_cast<int64_t>(b.size()));
        const auto* a_bits = static_cast<const uint16_t*>(a16.address());
        const auto* b_bits = static_cast<const uint16_t*>(b16.address());
        std::vector<float> rounded_in_gemm;
        {
          ScopedGemmPrecision bf16(backend(), MathPrecision::kBf16);
          Tensor c = Upload(c0);
          backend().Gemm(ta, tb, m, n, k, 0.75f, a_dev.ptr<float>(), lda, b_dev.ptr<float>(), ldb,
                         beta, c.ptr<float>(), ldc);
          rounded_in_gemm = Download<float>(c);
          ExpectClose(rounded_in_gemm,
                      ReferenceGemm(ta, tb, m, n, k, 0.75, RoundedBf16(a), lda, RoundedBf16(b),
                                    ldb, beta, ToDouble(c0), ldc),
                      kTolerance, "bf16 gemm " + what);
          // Both copies, A's only, B's only.
          for (int which = 0; which < 3; ++which) {
            Tensor c2 = Upload(c0);
            backend().GemmOperands(ta, tb, m, n, k, 0.75f,
                                   {a_dev.ptr<float>(), which != 2 ? a_bits : nullptr}, lda,
                                   {b_dev.ptr<float>(), which != 1 ? b_bits : nullptr}, ldb, beta,
                                   c2.ptr<float>(), ldc);
            EXPECT_EQ(Download<float>(c2), rounded_in_gemm)
                << what << " copies of " << (which == 0 ? "A and B" : which == 1 ? "A" : "B");
          }
        }
        // fp32: the copies are not read (poison them to be sure).
        backend().Memset(a16.address(), 0xff, a16.bytes());
        backend().Memset(b16.address(), 0xff, b16.bytes());
        Tensor c3 = Upload(c0);
        backend().GemmOperands(ta, tb, m, n, k, 0.75f, {a_dev.ptr<float>(), a_bits}, lda,
                               {b_dev.ptr<float>(), b_bits}, ldb, beta, c3.ptr<float>(), ldc);
        ExpectClose(Download<float>(c3),
                    ReferenceGemm(ta, tb, m, n, k, 0.75, ToDouble(a), lda, ToDouble(b), ldb, beta,
                                  ToDouble(c0), ldc),
                    kTolerance, "fp32 gemm with copies " + what);
      }
}

// ---- Norms --------------------------------------------------------------------

std::vector<double> ReferenceNorm(const std::vector<double>& x, const std::vector<float>& gamma,
                                  const std::vector<float>& beta, int64_t rows, int64_t dim,
                                  bool rms) {
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    const double* xr = x.data() + r * dim;
    double mean = 0, var = 0;
    if (!rms) {
      for (int64_t i = 0; i < dim; ++i) mean += xr[i] / dim;
    }
    for (int64_t i = 0; i < dim; ++i) var += (xr[i] - mean) * (xr[i] - mean) / dim;
    const double rstd = 1 / std::sqrt(var + 1e-5);
    for (int64_t i = 0; i < dim; ++i) {
      double v = (xr[i] - mean) * rstd;
      if (!gamma.empty()) v = v * gamma[i] + (beta.empty() ? 0.0 : beta[i]);
      y[r * dim + i] = v;
    }
  }
  return y;
}

TEST_P(BackendOps, LayerNormAndRmsNormForwardAndBackward) {
  const int64_t rows = 5, dim = 37;
  const auto x = RandomFloats(rows * dim, 6, -2, 2), dy = RandomFloats(rows * dim, 7);
  const auto gamma = RandomFloats(dim, 8, 0.5f, 1.5f), beta = RandomFloats(dim, 9);
  for (bool rms : {false, true}) {
    const std::string what = rms ? "rmsnorm" : "layernorm";
    Tensor xt = Upload(x), y = Poisoned<float>(rows * dim), mean = Poisoned<float>(rows),
           rstd = Poisoned<float>(rows), g = Upload(gamma), b = Upload(beta);
    if (rms) {
      backend().RmsNormForward(xt.ptr<float>(), g.ptr<float>(), y.ptr<float>(), rstd.ptr<float>(),
                               rows, dim, 1e-5f);
    } else {
      backend().LayerNormForward(xt.ptr<float>(), g.ptr<float>(), b.ptr<float>(), y.ptr<float>(),
                                 mean.ptr<float>(), rstd.ptr<float>(), rows, dim, 1e-5f);
    }
    const std::vector<float> no_beta;
    ExpectClose(Download<float>(y), ReferenceNorm(ToDouble(x), gamma, rms ? no_beta : beta, rows, dim, rms),
                kTolerance, what);
    Tensor dx = Poisoned<float>(rows * dim), dg = Upload(std::vector<float>(dim, 0.0f)),
           db = Upload(std::vector<float>(dim, 0.0f)), dyt = Upload(dy);
    if (rms) {
      backend().RmsNormBackward(dyt.ptr<float>(), xt.ptr<float>(), g.ptr<float>(),
                                rstd.ptr<float>(), dx.ptr<float>(), dg.ptr<float>(), rows, dim);
    } else {
      backend().LayerNormBackward(dyt.ptr<float>(), xt.ptr<float>(), g.ptr<float>(),
                                  mean.ptr<float>(), rstd.ptr<float>(), dx.ptr<float>(),
                                  dg.ptr<float>(), db.ptr<float>(), rows, dim);
    }
    ExpectGradient(Download<float>(dx), [&](const std::vector<double>& v) {
      return ReferenceNorm(v, gamma, rms ? no_beta : beta, rows, dim, rms);
    }, x, dy, what + " dx");
    // dgamma = sum_r dy * normalized(x)
    const auto normalized = ReferenceNorm(ToDouble(x), {}, {}, rows, dim, rms);
    std::vector<double> want_dg(dim, 0.0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < dim; ++i) want_dg[i] += dy[r * dim + i] * normalized[r * dim + i];
    ExpectClose(Download<float>(dg), want_dg, kTolerance, what + " dgamma");
  }
}

// ---- Elementwise ----------------------------------------------------------------

double Silu(double x) { return x / (1 + std::exp(-x)); }
double Gelu(double x) {
  return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}

TEST_P(BackendOps, SiluGeluAndSwigluForwardAndBackward) {
  const int64_t rows = 3, hidden = 41, n = rows * hidden;
  const auto x = RandomFloats(n, 10, -4, 4), dy = RandomFloats(n, 11);
  using Unary = void (Backend::*)(const float*, float*, int64_t);
  using UnaryBackward = void (Backend::*)(const float*, const float*, float*, int64_t);
  struct Case {
    const char* name;
    Unary forward;
    UnaryBackward backward;
    double (*f)(double);
  };
  for (const Case& c : {Case{"silu", &Backend::SiluForward, &Backend::SiluBackward, Silu},
                        Case{"gelu", &Backend::GeluForward, &Backend::GeluBackward, Gelu}}) {
    auto ref = [&](const std::vector<double>& v) {
      std::vector<double> y(v.size());
      std::transform(v.begin(), v.end(), y.begin(), c.f);
      return y;
    };
    Tensor xt = Upload(x), y = Poisoned<float>(n), dx = Poisoned<float>(n);
    (backend().*c.forward)(xt.ptr<float>(), y.ptr<float>(), n);
    ExpectClose(Download<float>(y), ref(ToDouble(x)), kTolerance, c.name);
    (backend().*c.backward)(Upload(dy).ptr<float>(), xt.ptr<float>(), dx.ptr<float>(), n);
    ExpectGradient(Download<float>(dx), ref, x, dy, std::string(c.name) + " dx");
  }
  // SwiGLU over [rows, 2*hidden] -> [rows, hidden].
  const auto gu = RandomFloats(2 * n, 12, -3, 3);
  auto swiglu = [&](const std::vector<double>& v) {
    std::vector<double> y(n);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < hidden; ++i)
        y[r * hidden + i] = Silu(v[r * 2 * hidden + i]) * v[r * 2 * hidden + hidden + i];
    return y;
  };
  Tensor gut = Upload(gu), y = Poisoned<float>(n), dgu = Poisoned<float>(2 * n);
  backend().SwigluForward(gut.ptr<float>(), y.ptr<float>(), rows, hidden);
  ExpectClose(Download<float>(y), swiglu(ToDouble(gu)), kTolerance, "swiglu");
  backend().SwigluBackward(Upload(dy).ptr<float>(), gut.ptr<float>(), dgu.ptr<float>(), rows,
                           hidden);
  ExpectGradient(Download<float>(dgu), swiglu, gu, dy, "swiglu dx");
}

TEST_P(BackendOps, AddBiasSumRowsScaleAndSumSquares) {
  const int64_t rows = 6, dim = 19, n = rows * dim;
  const auto x = RandomFloats(n, 13), y0 = RandomFloats(n, 14), bias = RandomFloats(dim, 15);
  Tensor y = Upload(y0);
  backend().AddInPlace(y.ptr<float>(), Upload(x).ptr<float>(), n);
  backend().AddBiasRows(y.ptr<float>(), Upload(bias).ptr<float>(), rows, dim);
  std::vector<double> want(n);
  for (int64_t i = 0; i < n; ++i) want[i] = double(y0[i]) + x[i] + bias[i % dim];
  ExpectClose(Download<float>(y), want, kTolerance, "add + bias");

  const auto db0 = RandomFloats(dim, 16);
  Tensor db = Upload(db0);
  backend().SumRowsAccumulate(Upload(x).ptr<float>(), db.ptr<float>(), rows, dim);
  std::vector<double> want_db(db0.begin(), db0.end());
  for (int64_t i = 0; i < n; ++i) want_db[i % dim] += x[i];
  ExpectClose(Download<float>(db), want_db, kTolerance, "sum rows (accumulates)");

  Tensor s = Upload(x);
  backend().Scale(s.ptr<float>(), n, 0.375f);
  std::vector<double> scaled(n);
  for (int64_t i = 0; i < n; ++i) scaled[i] = 0.375f * x[i];  // the one fp32 rounding
  ExpectClose(Download<float>(s), scaled, 0, "scale");

  for (int64_t len : {int64_t{0}, int64_t{1}, int64_t{100003}}) {
    const auto g = RandomFloats(len, 17, -3, 3);
    double want_sum = 0;
    for (float v : g) want_sum += double(v) * v;
    const Tensor sum = Doubles({-1.0});  // overwritten
    backend().SumSquares(len ? Upload(g).ptr<float>() : nullptr, len, DoublePtr(sum));
    const double got = DownloadDoubles(sum)[0];
    EXPECT_NEAR(got, want_sum, 1e-12 * std::max(1.0, want_sum)) << "sum of squares n=" << len;
  }
}

// The gradient norm's pieces: weighted sums in the host's order (exact
// here: small integers), and the guard's clip scale and divergence record.
TEST_P(BackendOps, AccumulateScalarsAndStepGuard) {
  const Tensor acc = Doubles({0.5});
  backend().AccumulateScalars(DoublePtr(Doubles({1, 2, 3})), 3, 2.0, DoublePtr(acc));
  EXPECT_EQ(DownloadDoubles(acc)[0], 12.5);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  backend().AccumulateScalars(DoublePtr(Doubles({7, nan})), 2, 0.0, DoublePtr(acc));
  EXPECT_TRUE(std::isnan(DownloadDoubles(acc)[0])) << "0 * NaN must reach the sum";

  struct Case {
    double norm_squared, max_norm, diverged_before;
    float scale;
    double diverged_after;
  };
  const double inf = std::numeric_limits<double>::infinity();
  for (const Case& c : {Case{0.25, 1.0, 0, 1.0f, 0},          // under the limit
                        Case{16.0, 2.0, 0, 0.5f, 0},          // clipped to the limit
                        Case{16.0, 0.0, 0, 1.0f, 0},          // clipping off
                        Case{nan, 1.0, 0, 0.0f, 7},           // diverges at this step
                        Case{inf, 0.0, 0, 0.0f, 7},           // even without clipping
                        Case{0.25, 1.0, 3, 0.0f, 3},          // diverged before: still skipped
                        Case{nan, 1.0, 3, 0.0f, 3}}) {        // the first step is kept
    const Tensor norm = Doubles({c.norm_squared}), diverged = Doubles({c.diverged_before});
    Tensor scale = Poisoned<float>(1);
    backend().StepGuard(DoublePtr(norm), c.max_norm, /*step=*/7, DoublePtr(diverged),
                        scale.ptr<float>());
    EXPECT_EQ(Download<float>(scale)[0], c.scale) << c.norm_squared << " " << c.max_norm;
    EXPECT_EQ(DownloadDoubles(diverged)[0], c.diverged_after) << c.norm_squared;
  }
}

TEST_P(BackendOps, GatherScatterCopy2DAndMemoryRoundTrip) {
  const int64_t n = 50;
  std::vector<int32_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  std::reverse(perm.begin(), perm.begin() + 20);
  std::rotate(perm.begin() + 20, perm.begin() + 33, perm.end());
  const auto x = RandomFloats(n, 18);
  Tensor index = Upload(perm), gathered = Poisoned<float>(n), scattered = Poisoned<float>(n);
  backend().GatherElements(Upload(x).ptr<float>(), index.ptr<int32_t>(), gathered.ptr<float>(), n);
  backend().ScatterElements(gathered.ptr<float>(), index.ptr<int32_t>(), scattered.ptr<float>(),
                            n);
  const auto g = Download<float>(gathered);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(g[i], x[perm[i]]);
  ASSERT_EQ(Download<float>(scattered), x);  // scatter inverts the gather

  // Copy2D: a [4 x 3] block out of a [5 x 7] matrix into a [4 x 6] one.
  const auto src = RandomFloats(35, 19);
  Tensor dst = Poisoned<float>(24);
  backend().Copy2D(dst.ptr<float>() + 1, 6 * sizeof(float), Upload(src).ptr<float>() + 7 + 2,
                   7 * sizeof(float), 3 * sizeof(float), 4);
  const auto d = Download<float>(dst);
  for (int64_t r = 0; r < 4; ++r)
    for (int64_t c = 0; c < 3; ++c) ASSERT_EQ(d[r * 6 + 1 + c], src[(r + 1) * 7 + 2 + c]);
  EXPECT_TRUE(std::isnan(d[0]));  // untouched bytes stay as they were

  Tensor copy = Poisoned<float>(n);
  backend().Copy(copy.ptr<float>(), Upload(x).ptr<float>(), n * sizeof(float));
  EXPECT_EQ(Download<float>(copy), x);
  backend().Memset(copy.ptr<float>(), 0, n * sizeof(float));
  EXPECT_EQ(Download<float>(copy), std::vector<float>(n, 0.0f));
}

// ---- Softmax and attention ---------------------------------------------------------

std::vector<double> ReferenceSoftmax(const std::vector<double>& x, int64_t rows, int64_t dim) {
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    const double max = *std::max_element(x.begin() + r * dim, x.begin() + (r + 1) * dim);
    double sum = 0;
    for (int64_t i = 0; i < dim; ++i) sum += std::exp(x[r * dim + i] - max);
    for (int64_t i = 0; i < dim; ++i) y[r * dim + i] = std::exp(x[r * dim + i] - max) / sum;
  }
  return y;
}

TEST_P(BackendOps, SoftmaxForwardAndBackward) {
  const int64_t rows = 4, dim = 23;
  const auto x = RandomFloats(rows * dim, 20, -5, 5), dy = RandomFloats(rows * dim, 21);
  Tensor xt = Upload(x), y = Poisoned<float>(rows * dim), dx = Poisoned<float>(rows * dim);
  backend().SoftmaxForward(xt.ptr<float>(), y.ptr<float>(), rows, dim);
  ExpectClose(Download<float>(y), ReferenceSoftmax(ToDouble(x), rows, dim), kTolerance, "softmax");
  backend().SoftmaxBackward(Upload(dy).ptr<float>(), y.ptr<float>(), dx.ptr<float>(), rows, dim);
  ExpectGradient(Download<float>(dx),
                 [&](const std::vector<double>& v) { return ReferenceSoftmax(v, rows, dim); }, x,
                 dy, "softmax dx");
}

TEST_P(BackendOps, AttentionForwardAndBackwardFromAFusedProjection) {
  for (bool causal : {false, true}) {
    const AttentionShape s{2, 9, 3, 4, 3 * 3 * 4, causal};
    const int64_t width = s.heads * s.head_dim, tokens = s.batch * s.seq;
    const auto qkv = RandomFloats(tokens * s.row_stride, 22), dout = RandomFloats(tokens * width, 23);
    auto forward = [&](const std::vector<double>& v) {
      std::vector<double> out(tokens * width), lse(s.batch * s.heads * s.seq);
      cpu::reference::ReferenceAttentionForward(s, v.data(), v.data() + width,
                                                v.data() + 2 * width, out.data(), lse.data());
      return out;
    };
    Tensor in = Upload(qkv), out = Poisoned<float>(tokens * width),
           lse = Poisoned<float>(s.batch * s.heads * s.seq), d = Poisoned<float>(qkv.size());
    const float* q = in.ptr<float>();
    backend().AttentionForward(s, q, q + width, q + 2 * width, out.ptr<float>(), lse.ptr<float>());
    const std::string what = causal ? "causal attention" : "attention";
    ExpectClose(Download<float>(out), forward(ToDouble(qkv)), kTolerance, what);
    float* dq = d.ptr<float>();
    backend().AttentionBackward(s, q, q + width, q + 2 * width, out.ptr<float>(),
                                Upload(dout).ptr<float>(), lse.ptr<float>(), dq, dq + width,
                                dq + 2 * width);
    ExpectGradient(Download<float>(d), forward, qkv, dout, what + " dqkv");
  }
}

// ---- Embedding and losses ---------------------------------------------------------------

TEST_P(BackendOps, EmbeddingForwardAndBackwardWithRepeatedIds) {
  const int64_t rows = 7, dim = 5;
  const std::vector<int32_t> ids = {3, 0, 3, 6, 1, 3, 0};
  const auto table = RandomFloats(rows * dim, 24), dout = RandomFloats(ids.size() * dim, 25);
  Tensor idt = Upload(ids), out = Poisoned<float>(ids.size() * dim);
  backend().EmbeddingForward(idt.ptr<int32_t>(), Upload(table).ptr<float>(), out.ptr<float>(),
                             ids.size(), dim);
  std::vector<double> want(ids.size() * dim), want_dt(rows * dim, 0.0);
  for (size_t i = 0; i < ids.size(); ++i)
    for (int64_t c = 0; c < dim; ++c) {
      want[i * dim + c] = table[ids[i] * dim + c];
      want_dt[ids[i] * dim + c] += dout[i * dim + c];
    }
  ExpectClose(Download<float>(out), want, 0, "embedding");
  Tensor dt = Upload(std::vector<float>(rows * dim, 0.0f));
  backend().EmbeddingBackward(idt.ptr<int32_t>(), Upload(dout).ptr<float>(), dt.ptr<float>(),
                              ids.size(), dim);
  ExpectClose(Download<float>(dt), want_dt, kTolerance, "embedding backward");
}

// Each of 3 tokens against 4 gathered rows of a 6-row table (rows repeat
// within and across tokens; dim 37: not a multiple of a warp or a band):
// the scores against the double reference with beta 1 onto existing
// values, and both gradients (dq overwritten, drows added to a non-zero
// start) by finite differences of <w, scores>.
TEST_P(BackendOps, GatherDotScoresEachQueryAgainstItsGatheredRows) {
  const int64_t tokens = 3, per_token = 4, rows = 6, dim = 37;
  const std::vector<int32_t> slots = {2, 0, 2, 5, 1, 1, 4, 2, 5, 0, 3, 2};
  const float alpha = 0.7f, beta = 1.0f;
  const auto q = RandomFloats(tokens * dim, 31), table = RandomFloats(rows * dim, 32);
  const auto start = RandomFloats(tokens * per_token, 33);
  const auto w = RandomFloats(tokens * per_token, 34);
  const auto scores = [&](const std::vector<double>& qd, const std::vector<double>& td) {
    std::vector<double> out(tokens * per_token);
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t c = 0; c < per_token; ++c) {
        double dot = 0;
        for (int64_t d = 0; d < dim; ++d) dot += qd[t * dim + d] * td[slots[t * per_token + c] * dim + d];
        out[t * per_token + c] = alpha * dot + beta * start[t * per_token + c];
      }
    return out;
  };
  Tensor slot_t = Upload(slots), q_t = Upload(q), table_t = Upload(table);
  Tensor out = Upload(start);
  backend().GatherDotForward(q_t.ptr<float>(), table_t.ptr<float>(), slot_t.ptr<int32_t>(), tokens,
                             per_token, dim, alpha, beta, out.ptr<float>());
  ExpectClose(Download<float>(out), scores(ToDouble(q), ToDouble(table)), kTolerance,
              "gather-dot");
  Tensor dq = Poisoned<float>(tokens * dim);
  const std::vector<float> ones(rows * dim, 1.0f);
  Tensor drows = Upload(ones);
  backend().GatherDotBackward(q_t.ptr<float>(), table_t.ptr<float>(), slot_t.ptr<int32_t>(),
                              tokens, per_token, dim, alpha, Upload(w).ptr<float>(),
                              dq.ptr<float>(), drows.ptr<float>());
  ExpectGradient(Download<float>(dq), [&](const std::vector<double>& v) {
    return scores(v, ToDouble(table));
  }, q, w, "gather-dot dq");
  std::vector<float> dtable = Download<float>(drows);
  for (float& g : dtable) g -= 1.0f;  // added to the start
  ExpectGradient(dtable, [&](const std::vector<double>& v) { return scores(ToDouble(q), v); },
                 table, w, "gather-dot drows");
}

TEST_P(BackendOps, MseAndCrossEntropyForwardAndBackward) {
  const int64_t n = 33;
  const auto pred = RandomFloats(n, 26), target = RandomFloats(n, 27);
  auto mse = [&](const std::vector<double>& p) {
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += (p[i] - target[i]) * (p[i] - target[i]) / n;
    return std::vector<double>{sum};
  };
  Tensor p = Upload(pred), t = Upload(target), dp = Poisoned<float>(n);
  const Tensor loss = Doubles({-1.0});
  backend().MseForward(p.ptr<float>(), t.ptr<float>(), n, DoublePtr(loss));
  EXPECT_NEAR(DownloadDoubles(loss)[0], mse(ToDouble(pred))[0], 1e-6);
  backend().MseBackward(p.ptr<float>(), t.ptr<float>(), dp.ptr<float>(), n, 2.0f);
  ExpectGradient(Download<float>(dp), mse, pred, {2.0f}, "mse dpred");

  const int64_t rows = 5, classes = 11;
  const auto logits = RandomFloats(rows * classes, 28, -4, 4);
  const std::vector<int32_t> labels = {0, 10, 3, 3, 7};
  auto ce = [&](const std::vector<double>& v) {
    const auto probs = ReferenceSoftmax(v, rows, classes);
    double sum = 0;
    for (int64_t r = 0; r < rows; ++r) sum -= std::log(probs[r * classes + labels[r]]) / rows;
    return std::vector<double>{sum};
  };
  Tensor lt = Upload(logits), lab = Upload(labels), probs = Poisoned<float>(rows * classes),
         dl = Poisoned<float>(rows * classes);
  backend().CrossEntropyForward(lt.ptr<float>(), lab.ptr<int32_t>(), probs.ptr<float>(), rows,
                                classes, DoublePtr(loss));
  EXPECT_NEAR(DownloadDoubles(loss)[0], ce(ToDouble(logits))[0], 1e-5);
  backend().CrossEntropyBackward(probs.ptr<float>(), lab.ptr<int32_t>(), dl.ptr<float>(), rows,
                                 classes, 0.5f);
  ExpectGradient(Download<float>(dl), ce, logits, {0.5f}, "cross entropy dlogits");
}

// The vocabulary split over 3 "ranks" by columns: each rank's statistics,
// gathered in rank order, give each rank its columns of the whole softmax,
// the summed loss and the argmax hits; ties across ranks go to the first.
TEST_P(BackendOps, VocabCrossEntropyOverColumnSlicesEqualsTheWholeVocabulary) {
  const int64_t rows = 4, ranks = 3, columns = 5, vocab = ranks * columns;
  std::vector<float> logits = RandomFloats(rows * vocab, 99, -4, 4);
  // Row 1: its maximum twice, in rank 0 and rank 2; the target is the first
  // (a hit). Row 2: the same tie, the target the second (not a hit).
  for (int64_t r : {1, 2}) {
    logits[r * vocab + 3] = 9.0f;
    logits[r * vocab + 12] = 9.0f;
  }
  logits[0 * vocab + 7] = -5.0f;  // row 0: the target is not the maximum
  logits[3 * vocab + 14] = 8.0f;  // row 3: the target is the maximum, in the last column
  const std::vector<int32_t> labels = {7, 3, 12, 14};
  const float scale = 0.5f;
  // The reference: the whole row's softmax in double.
  auto row_losses = [&](const std::vector<double>& v) {
    std::vector<double> loss(rows);
    for (int64_t r = 0; r < rows; ++r) {
      double max = v[r * vocab], sum = 0;
      for (int64_t j = 0; j < vocab; ++j) max = std::max(max, v[r * vocab + j]);
      for (int64_t j = 0; j < vocab; ++j) sum += std::exp(v[r * vocab + j] - max);
      loss[r] = std::log(sum) + max - v[r * vocab + labels[r]];
    }
    return loss;
  };
  const std::vector<double> whole = ToDouble(logits);
  double want_loss = 0;
  for (double l : row_losses(whole)) want_loss += l;
  int64_t want_hits = 0;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t best = 0;
    for (int64_t j = 1; j < vocab; ++j)
      if (logits[r * vocab + j] > logits[r * vocab + best]) best = j;
    want_hits += best == labels[r];
  }
  EXPECT_EQ(want_hits, 2);  // rows 1 and 3
  auto slice = [&](const std::vector<float>& v, int64_t k) {
    std::vector<float> out(rows * columns);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < columns; ++j) out[r * columns + j] = v[r * vocab + k * columns + j];
    return out;
  };
  Tensor lab = Upload(labels);
  std::vector<Tensor> pieces;
  std::vector<double> all_stats;
  for (int64_t k = 0; k < ranks; ++k) {
    pieces.push_back(Upload(slice(logits, k)));
    Tensor stats = Poisoned<int64_t>(rows * 4);
    backend().VocabCrossEntropyStats(pieces[k].ptr<float>(), lab.ptr<int32_t>(), rows, columns,
                                     k * columns, reinterpret_cast<double*>(stats.ptr<int64_t>()));
    const std::vector<int64_t> bits = Download<int64_t>(stats);
    const double* got = reinterpret_cast<const double*>(bits.data());
    for (int64_t r = 0; r < rows; ++r) {
      double max = -INFINITY, sum = 0, target = 0;
      int64_t argmax = 0;
      for (int64_t j = 0; j < columns; ++j) {
        const double x = whole[r * vocab + k * columns + j];
        if (x > max) max = x, argmax = k * columns + j;
      }
      for (int64_t j = 0; j < columns; ++j) sum += std::exp(whole[r * vocab + k * columns + j] - max);
      if (labels[r] / columns == k) target = whole[r * vocab + labels[r]];
      EXPECT_EQ(got[r * 4 + 0], max) << "rank " << k << " row " << r;
      EXPECT_NEAR(got[r * 4 + 1], sum, 1e-12 * sum) << "rank " << k << " row " << r;
      EXPECT_EQ(got[r * 4 + 2], target) << "rank " << k << " row " << r;
      EXPECT_EQ(got[r * 4 + 3], static_cast<double>(argmax)) << "rank " << k << " row " << r;
    }
    all_stats.insert(all_stats.end(), got, got + rows * 4);
  }
  std::vector<int64_t> all_bits(all_stats.size());
  std::memcpy(all_bits.data(), all_stats.data(), all_stats.size() * sizeof(double));
  Tensor all = Upload(all_bits);
  for (int64_t k = 0; k < ranks; ++k) {
    Tensor probs = Poisoned<float>(rows * columns), totals = Poisoned<int64_t>(2);
    backend().VocabCrossEntropyCombine(pieces[k].ptr<float>(),
                                       reinterpret_cast<const double*>(all.ptr<int64_t>()), ranks,
                                       lab.ptr<int32_t>(), probs.ptr<float>(), rows, columns,
                                       reinterpret_cast<double*>(totals.ptr<int64_t>()));
    const std::vector<int64_t> total_bits = Download<int64_t>(totals);
    double got_totals[2];
    std::memcpy(got_totals, total_bits.data(), sizeof(got_totals));
    EXPECT_NEAR(got_totals[0], want_loss, 1e-9 * std::abs(want_loss)) << "rank " << k;
    EXPECT_EQ(got_totals[1], static_cast<double>(want_hits)) << "rank " << k;
    const std::vector<double> softmax = ReferenceSoftmax(whole, rows, vocab);
    std::vector<double> want_probs(rows * columns);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < columns; ++j)
        want_probs[r * columns + j] = softmax[r * vocab + k * columns + j];
    ExpectClose(Download<float>(probs), want_probs, kTolerance, "vocab softmax columns");
    // The gradient of scale * (summed loss) in this rank's columns.
    Tensor dl = Poisoned<float>(rows * columns);
    backend().VocabCrossEntropyBackward(probs.ptr<float>(), lab.ptr<int32_t>(), dl.ptr<float>(),
                                        rows, columns, k * columns, scale);
    ExpectGradient(
        Download<float>(dl),
        [&](const std::vector<double>& mine) {
          std::vector<double> v = whole;
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t j = 0; j < columns; ++j) v[r * vocab + k * columns + j] = mine[r * columns + j];
          double sum = 0;
          for (double l : row_losses(v)) sum += l;
          return std::vector<double>{sum};
        },
        slice(logits, k), {scale}, "vocab cross entropy dlogits");
  }
}

// ---- adaLN modulation --------------------------------------------------------------------

TEST_P(BackendOps, ModulateAndGatedResidualForwardAndBackward) {
  const int64_t B = 2, S = 3, D = 8, stride = 3 * D, n = B * S * D;
  const auto x = RandomFloats(n, 29), cond = RandomFloats(B * stride, 30), dy = RandomFloats(n, 31);
  // shift = cond[:, 0:D], scale = cond[:, D:2D], gate = cond[:, 2D:3D]; the
  // reference differentiates with respect to x and the whole cond row.
  auto modulate = [&](const std::vector<double>& v) {  // v = [x | cond]
    std::vector<double> y(n);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < S; ++s)
        for (int64_t d = 0; d < D; ++d) {
          const double* c = v.data() + n + b * stride;
          y[(b * S + s) * D + d] = v[(b * S + s) * D + d] * (1 + c[D + d]) + c[d];
        }
    return y;
  };
  std::vector<float> joint(x);
  joint.insert(joint.end(), cond.begin(), cond.end());
  Tensor xt = Upload(x), ct = Upload(cond), y = Poisoned<float>(n);
  const float* c = ct.ptr<float>();
  backend().ModulateForward(xt.ptr<float>(), c, c + D, y.ptr<float>(), B, S, D, stride);
  ExpectClose(Download<float>(y), modulate(ToDouble(joint)), kTolerance, "modulate");
  Tensor dx = Poisoned<float>(n), dcond = Upload(std::vector<float>(B * stride, 0.0f));
  float* dc = dcond.ptr<float>();
  backend().ModulateBackward(Upload(dy).ptr<float>(), xt.ptr<float>(), c + D, dx.ptr<float>(), dc,
                             dc + D, B, S, D, stride);
  std::vector<float> got = Download<float>(dx);
  const auto dcond_got = Download<float>(dcond);
  got.insert(got.end(), dcond_got.begin(), dcond_got.end());
  ExpectGradient(got, modulate, joint, dy, "modulate d[x | shift | scale]");

  auto gated = [&](const std::vector<double>& v) {  // residual + gate * v_x
    std::vector<double> r(n);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t b = i / (S * D), d = i % D;
      r[i] = x[i] + v[n + b * stride + 2 * D + d] * v[i];
    }
    return r;
  };
  const auto yv = RandomFloats(n, 32);
  std::vector<float> joint2(yv);
  joint2.insert(joint2.end(), cond.begin(), cond.end());
  Tensor residual = Upload(x), yt = Upload(yv);
  backend().GatedResidualForward(residual.ptr<float>(), yt.ptr<float>(), c + 2 * D, B, S, D,
                                 stride);
  ExpectClose(Download<float>(residual), gated(ToDouble(joint2)), kTolerance, "gated residual");
  Tensor dyv = Poisoned<float>(n), dg = Upload(std::vector<float>(B * stride, 0.0f));
  backend().GatedResidualBackward(Upload(dy).ptr<float>(), yt.ptr<float>(), c + 2 * D,
                                  dyv.ptr<float>(), dg.ptr<float>() + 2 * D, B, S, D, stride);
  got = Download<float>(dyv);
  const auto dg_got = Download<float>(dg);
  got.insert(got.end(), dg_got.begin(), dg_got.end());
  ExpectGradient(got, gated, joint2, dy, "gated residual d[y | gate]");
}

// adaLN's affine-free LayerNorm and modulation fused: against the double
// LayerNorm-then-modulate, its row statistics against LayerNormForward's,
// and the gradient of [x | cond] by finite differences of the reference.
TEST_P(BackendOps, LayerNormModulateIsLayerNormThenModulate) {
  const int64_t B = 2, S = 3, D = 40, stride = 2 * D, rows = B * S, n = rows * D;
  const auto x = RandomFloats(n, 33, -2, 3), cond = RandomFloats(B * stride, 34),
             dy = RandomFloats(n, 35);
  const float eps = 1e-6f;
  auto reference = [&](const std::vector<double>& v) {  // v = [x | cond]
    std::vector<double> y(n);
    for (int64_t r = 0; r < rows; ++r) {
      const double* xr = v.data() + r * D;
      const double* c = v.data() + n + (r / S) * stride;
      double mean = 0, var = 0;
      for (int64_t d = 0; d < D; ++d) mean += xr[d] / D;
      for (int64_t d = 0; d < D; ++d) var += (xr[d] - mean) * (xr[d] - mean) / D;
      for (int64_t d = 0; d < D; ++d) {
        y[r * D + d] = (xr[d] - mean) / std::sqrt(var + eps) * (1 + c[D + d]) + c[d];
      }
    }
    return y;
  };
  std::vector<float> joint(x);
  joint.insert(joint.end(), cond.begin(), cond.end());
  Tensor xt = Upload(x), ct = Upload(cond), y = Poisoned<float>(n), mean = Poisoned<float>(rows),
         rstd = Poisoned<float>(rows);
  const float* c = ct.ptr<float>();
  backend().LayerNormModulateForward(xt.ptr<float>(), c, c + D, y.ptr<float>(), mean.ptr<float>(),
                                     rstd.ptr<float>(), B, S, D, stride, eps);
  ExpectClose(Download<float>(y), reference(ToDouble(joint)), kTolerance, "norm + modulate");
  Tensor plain = Poisoned<float>(n), plain_mean = Poisoned<float>(rows),
         plain_rstd = Poisoned<float>(rows);
  backend().LayerNormForward(xt.ptr<float>(), nullptr, nullptr, plain.ptr<float>(),
                             plain_mean.ptr<float>(), plain_rstd.ptr<float>(), rows, D, eps);
  ExpectClose(Download<float>(mean), ToDouble(Download<float>(plain_mean)), kTolerance, "mean");
  ExpectClose(Download<float>(rstd), ToDouble(Download<float>(plain_rstd)), kTolerance, "rstd");
  // Twice: dx is overwritten, the condition gradients accumulate.
  Tensor dx = Poisoned<float>(n), dcond = Upload(std::vector<float>(B * stride, 0.0f));
  float* dc = dcond.ptr<float>();
  for (int call = 1; call <= 2; ++call) {
    backend().LayerNormModulateBackward(Upload(dy).ptr<float>(), xt.ptr<float>(),
                                        mean.ptr<float>(), rstd.ptr<float>(), c + D,
                                        dx.ptr<float>(), dc, dc + D, B, S, D, stride);
  }
  std::vector<float> got = Download<float>(dx);
  for (float g : Download<float>(dcond)) got.push_back(g / 2);
  ExpectGradient(got, reference, joint, dy, "norm + modulate d[x | shift | scale]");
}

// ---- Routing ------------------------------------------------------------------------------

TEST_P(BackendOps, TopKSortPermuteAndCombineMatchAHandWrittenRouting) {
  const int64_t T = 5, E = 4, k = 2, D = 3;
  // Distinct probabilities per row, and one tie (row 4: experts 1 and 2).
  const std::vector<float> probs = {0.1f, 0.4f, 0.3f, 0.2f,   0.5f, 0.1f, 0.1f, 0.3f,
                                    0.25f, 0.05f, 0.3f, 0.4f, 0.7f, 0.1f, 0.15f, 0.05f,
                                    0.2f, 0.3f, 0.3f, 0.2f};
  const std::vector<int32_t> want_index = {1, 2, 0, 3, 3, 2, 0, 2, 1, 2};
  Tensor index = Poisoned<int32_t>(T * k), weights = Poisoned<float>(T * k);
  backend().TopKForward(Upload(probs).ptr<float>(), index.ptr<int32_t>(), weights.ptr<float>(), T,
                        E, k);
  ASSERT_EQ(Download<int32_t>(index), want_index);
  const auto w = Download<float>(weights);
  for (int64_t a = 0; a < T * k; ++a) ASSERT_EQ(w[a], probs[(a / k) * E + want_index[a]]);

  const auto dw = RandomFloats(T * k, 33);
  Tensor dprobs = Upload(std::vector<float>(T * E, 0.0f));
  backend().TopKBackward(Upload(dw).ptr<float>(), index.ptr<int32_t>(), dprobs.ptr<float>(), T, E,
                         k);
  std::vector<double> want_dp(T * E, 0.0);
  for (int64_t a = 0; a < T * k; ++a) want_dp[(a / k) * E + want_index[a]] += dw[a];
  ExpectClose(Download<float>(dprobs), want_dp, 0, "top-k backward");

  // Drop assignment 3 (token 1, expert 3): sort, permute, combine.
  std::vector<int32_t> kept_index = want_index;
  kept_index[3] = -1;
  Tensor ki = Upload(kept_index), offsets = Poisoned<int64_t>(E + 1),
         row_of = Poisoned<int32_t>(T * k), assignment_of = Poisoned<int32_t>(T * k);
  backend().SortByExpert(ki.ptr<int32_t>(), T * k, E, offsets.ptr<int64_t>(), row_of.ptr<int32_t>(),
                         assignment_of.ptr<int32_t>());
  EXPECT_EQ(Download<int64_t>(offsets), (std::vector<int64_t>{0, 2, 4, 8, 9}));
  const auto rows_of = Download<int32_t>(row_of);
  const auto assign_of = Download<int32_t>(assignment_of);
  EXPECT_EQ(rows_of[3], -1);
  for (int64_t r = 0; r < 9; ++r) ASSERT_EQ(rows_of[assign_of[r]], r);

  const int64_t rows = 9;
  const auto x = RandomFloats(T * D, 34), expert_out = RandomFloats(rows * D, 35);
  Tensor permuted = Poisoned<float>(rows * D);
  backend().PermuteForward(Upload(x).ptr<float>(), assignment_of.ptr<int32_t>(),
                           permuted.ptr<float>(), rows, D, k);
  const auto p = Download<float>(permuted);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < D; ++c) ASSERT_EQ(p[r * D + c], x[(assign_of[r] / k) * D + c]);

  const auto y0 = RandomFloats(T * D, 36);
  Tensor y = Upload(y0), wt = Upload(w), eo = Upload(expert_out);
  backend().UnpermuteCombineForward(eo.ptr<float>(), row_of.ptr<int32_t>(), wt.ptr<float>(),
                                    y.ptr<float>(), T, D, k);
  std::vector<double> want_y(y0.begin(), y0.end());
  for (int64_t a = 0; a < T * k; ++a) {
    if (rows_of[a] < 0) continue;
    for (int64_t c = 0; c < D; ++c) want_y[(a / k) * D + c] += double(w[a]) * expert_out[rows_of[a] * D + c];
  }
  ExpectClose(Download<float>(y), want_y, kTolerance, "combine");

  const auto dy = RandomFloats(T * D, 37);
  Tensor deo = Poisoned<float>(rows * D), dwt = Poisoned<float>(T * k), dyt = Upload(dy);
  backend().UnpermuteCombineBackward(dyt.ptr<float>(), eo.ptr<float>(), row_of.ptr<int32_t>(),
                                     wt.ptr<float>(), deo.ptr<float>(), dwt.ptr<float>(), T, D, k);
  std::vector<double> want_deo(rows * D), want_dwt(T * k, 0.0);
  for (int64_t a = 0; a < T * k; ++a) {
    if (rows_of[a] < 0) continue;
    for (int64_t c = 0; c < D; ++c) {
      want_deo[rows_of[a] * D + c] = double(w[a]) * dy[(a / k) * D + c];
      want_dwt[a] += double(dy[(a / k) * D + c]) * expert_out[rows_of[a] * D + c];
    }
  }
  ExpectClose(Download<float>(deo), want_deo, kTolerance, "combine d expert_out");
  ExpectClose(Download<float>(dwt), want_dwt, kTolerance, "combine d weights");

  Tensor dx = Poisoned<float>(T * D);
  backend().PermuteBackward(Upload(p).ptr<float>(), row_of.ptr<int32_t>(), dx.ptr<float>(), T, D, k);
  std::vector<double> want_dx(T * D, 0.0);
  for (int64_t a = 0; a < T * k; ++a) {
    if (rows_of[a] < 0) continue;
    for (int64_t c = 0; c < D; ++c) want_dx[(a / k) * D + c] += p[rows_of[a] * D + c];
  }
  ExpectClose(Download<float>(dx), want_dx, kTolerance, "permute backward");
}

// The routing bookkeeping ops (statistics, balance, capacity slots,
// renormalization, balance gradient) against double references written
// here, on a routing with a capacity that drops; the renormalization's
// backward against central differences.
TEST_P(BackendOps, RoutingBookkeepingMatchesItsReference) {
  const int64_t T = 7, E = 4, k = 2;
  const auto logits = RandomFloats(T * E, 41);
  std::vector<float> probs(T * E);
  for (int64_t t = 0; t < T; ++t) {
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += std::exp(double(logits[t * E + e]));
    for (int64_t e = 0; e < E; ++e)
      probs[t * E + e] = static_cast<float>(std::exp(double(logits[t * E + e])) / sum);
  }
  // Expert 1 is the favourite of every token, so a capacity of 3 drops.
  std::vector<int32_t> chosen(T * k);
  for (int64_t t = 0; t < T; ++t) {
    chosen[t * k] = 1;
    chosen[t * k + 1] = static_cast<int32_t>((t % 3 == 0) ? 0 : (t % 3 == 1 ? 2 : 3));
  }
  Tensor chosen_t = Upload(chosen), probs_t = Upload(probs);

  // Statistics.
  Tensor counts = Poisoned<int64_t>(E), sums = Poisoned<int64_t>(E);
  backend().MoeRoutingStatistics(chosen_t.ptr<int32_t>(), probs_t.ptr<float>(), T, E, k,
                                 counts.ptr<int64_t>(), reinterpret_cast<double*>(sums.ptr<int64_t>()));
  std::vector<int64_t> want_counts(E, 0);
  std::vector<double> want_sums(E, 0.0);
  for (int64_t a = 0; a < T * k; ++a) ++want_counts[chosen[a]];
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) want_sums[e] += probs[t * E + e];
  EXPECT_EQ(Download<int64_t>(counts), want_counts);
  const auto sums_bits = Download<int64_t>(sums);
  for (int64_t e = 0; e < E; ++e) {
    EXPECT_NEAR(std::bit_cast<double>(sums_bits[e]), want_sums[e], 1e-12) << "prob sum " << e;
  }

  // Balance: f, loss, load over 5 counted tokens (as GLOBAL_BATCH's other
  // token count) and T probability tokens, coefficient 0.3.
  const int64_t count_tokens = 5;
  Tensor balance = Poisoned<int64_t>(2 * E + 1);
  backend().MoeBalance(counts.ptr<int64_t>(), count_tokens,
                       reinterpret_cast<const double*>(sums.ptr<int64_t>()), T, E, k, 0.3,
                       reinterpret_cast<double*>(balance.ptr<int64_t>()));
  const auto balance_bits = Download<int64_t>(balance);
  double want_loss = 0;
  for (int64_t e = 0; e < E; ++e) {
    const double load = double(want_counts[e]) / double(count_tokens * k);
    const double f = E * load;
    want_loss += 0.3 * f * want_sums[e] / T;
    EXPECT_NEAR(std::bit_cast<double>(balance_bits[e]), f, 1e-15) << "f " << e;
    EXPECT_NEAR(std::bit_cast<double>(balance_bits[E + 1 + e]), load, 1e-15) << "load " << e;
  }
  EXPECT_NEAR(std::bit_cast<double>(balance_bits[E]), want_loss, 1e-12) << "loss";

  // Capacity 3 in fixed slots: first come, first served in assignment order.
  const int64_t capacity = 3;
  Tensor index = Poisoned<int32_t>(T * k), row_of = Poisoned<int32_t>(T * k),
         assignment_of = Poisoned<int32_t>(E * capacity), dropped = Poisoned<int64_t>(1);
  backend().MoeCapacitySlots(chosen_t.ptr<int32_t>(), T * k, E, capacity, index.ptr<int32_t>(),
                             row_of.ptr<int32_t>(), assignment_of.ptr<int32_t>(),
                             dropped.ptr<int64_t>());
  std::vector<int32_t> want_index(T * k), want_row(T * k), want_assignment(E * capacity, -1);
  std::vector<int64_t> taken(E, 0);
  int64_t want_dropped = 0;
  for (int64_t a = 0; a < T * k; ++a) {
    const int32_t e = chosen[a];
    if (taken[e] == capacity) {
      want_index[a] = want_row[a] = -1;
      ++want_dropped;
      continue;
    }
    want_index[a] = e;
    want_row[a] = static_cast<int32_t>(e * capacity + taken[e]++);
    want_assignment[want_row[a]] = static_cast<int32_t>(a);
  }
  ASSERT_EQ(want_dropped, T - capacity);  // the test's routing drops expert 1's late tokens
  EXPECT_EQ(Download<int32_t>(index), want_index);
  EXPECT_EQ(Download<int32_t>(row_of), want_row);
  EXPECT_EQ(Download<int32_t>(assignment_of), want_assignment);
  EXPECT_EQ(Download<int64_t>(dropped), std::vector<int64_t>{want_dropped});

  // PermuteForward over the slots: unused ones are zero rows.
  const int64_t D = 3, rows = E * capacity;
  const auto x = RandomFloats(T * D, 42);
  Tensor permuted = Poisoned<float>(rows * D);
  backend().PermuteForward(Upload(x).ptr<float>(), assignment_of.ptr<int32_t>(),
                           permuted.ptr<float>(), rows, D, k);
  const auto p = Download<float>(permuted);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < D; ++c) {
      const float want = want_assignment[r] < 0 ? 0.0f : x[(want_assignment[r] / k) * D + c];
      ASSERT_EQ(p[r * D + c], want) << "slot row " << r;
    }

  // Renormalization forward, and its backward by central differences.
  const auto raw = RandomFloats(T * k, 43, 0.05f, 1.0f);
  auto renormalize = [&](const std::vector<double>& r) {
    std::vector<double> w(r.size());
    for (int64_t t = 0; t < T; ++t) {
      double sum = 1e-20;
      for (int64_t s = 0; s < k; ++s) sum += r[t * k + s];
      for (int64_t s = 0; s < k; ++s) w[t * k + s] = r[t * k + s] / sum;
    }
    return w;
  };
  Tensor raw_t = Upload(raw), w_t = Poisoned<float>(T * k);
  backend().MoeRenormalizeForward(raw_t.ptr<float>(), w_t.ptr<float>(), T, k);
  const auto w = Download<float>(w_t);
  ExpectClose(w, renormalize(ToDouble(raw)), kTolerance, "renormalized weights");
  const auto dw = RandomFloats(T * k, 44);
  Tensor dw_t = Upload(dw);
  backend().MoeRenormalizeBackward(raw_t.ptr<float>(), w_t.ptr<float>(), dw_t.ptr<float>(), T, k);
  ExpectGradient(Download<float>(dw_t), renormalize, raw, dw, "renormalization backward");

  // Balance gradient: the f of the balance above, scale 0.5 * 0.3, over T.
  const auto dp0 = RandomFloats(T * E, 45);
  Tensor dprobs = Upload(dp0);
  backend().MoeBalanceGradient(reinterpret_cast<const double*>(balance.ptr<int64_t>()), 0.5 * 0.3,
                               static_cast<double>(T), dprobs.ptr<float>(), T, E);
  std::vector<double> want_dp(T * E);
  for (int64_t i = 0; i < T * E; ++i) {
    want_dp[i] = dp0[i] + 0.5 * 0.3 * std::bit_cast<double>(balance_bits[i % E]) / T;
  }
  ExpectClose(Download<float>(dprobs), want_dp, kTolerance, "balance gradient");
}

// ---- Optimizer ------------------------------------------------------------------------------

// The counter-based dropout mask equals the host's draws bit for bit (rows
// keyed out of order, width 37), keeps about 1 - rate, and a shard of the
// rows draws what the whole does.
TEST_P(BackendOps, CounterDropoutMaskIsTheHostsCounterDraws) {
  const int64_t width = 37;
  const std::vector<int64_t> keys = {5, 0, 123456789, 7, 7, 40000};
  const auto rows = static_cast<int64_t>(keys.size());
  const uint64_t key = Mix64(99);
  const float rate = 0.3f;
  Tensor mask = Poisoned<float>(rows * width);
  backend().CounterDropoutMask(Upload(keys).ptr<int64_t>(), rows, width, key, rate,
                               mask.ptr<float>());
  const std::vector<float> got = Download<float>(mask);
  int64_t kept = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < width; ++d) {
      const float u = CounterUniform(key, static_cast<uint64_t>(keys[r]) * width + d);
      const float want = u < rate ? 0.0f : 1.0f / (1.0f - rate);
      ASSERT_EQ(got[r * width + d], want) << "row " << r << ", column " << d;
      kept += want != 0.0f;
    }
  EXPECT_NEAR(static_cast<double>(kept) / (rows * width), 0.7, 0.1);
  // Rows 3..5 alone.
  Tensor shard = Poisoned<float>(3 * width);
  backend().CounterDropoutMask(Upload(std::vector<int64_t>(keys.begin() + 3, keys.end()))
                                   .ptr<int64_t>(),
                               3, width, key, rate, shard.ptr<float>());
  const std::vector<float> part = Download<float>(shard);
  EXPECT_TRUE(std::equal(part.begin(), part.end(), got.begin() + 3 * width));
}

TEST_P(BackendOps, AdamWUpdateAndEmaFollowTheirFormulas) {
  const int64_t n = 40;
  const auto p0 = RandomFloats(n, 38), g = RandomFloats(n, 39), m0 = RandomFloats(n, 40),
             v0 = RandomFloats(n, 41, 0.0f, 1.0f);
  AdamWScalars s;
  s.beta1 = 0.9f, s.beta2 = 0.95f, s.one_minus_beta1 = 0.1f, s.one_minus_beta2 = 0.05f;
  s.step_size = 0.01f, s.inv_sqrt_bias2 = 1.5f, s.eps = 1e-8f, s.decay_keep = 0.99f;
  const std::vector<AdamWSegment> segments = {{0, 10, false}, {10, 25, true}, {25, 40, false}};
  Tensor p = Upload(p0), m = Upload(m0), v = Upload(v0);
  backend().AdamWUpdate(s, segments, p.ptr<float>(), Upload(g).ptr<float>(), m.ptr<float>(),
                        v.ptr<float>(), /*grad_scale=*/nullptr);
  std::vector<double> want_p(n), want_m(n), want_v(n);
  for (int64_t i = 0; i < n; ++i) {
    want_m[i] = 0.9 * m0[i] + 0.1 * g[i];
    want_v[i] = 0.95 * v0[i] + 0.05 * double(g[i]) * g[i];
    const double keep = (i >= 10 && i < 25) ? 0.99 : 1.0;
    want_p[i] = p0[i] * keep - 0.01 * want_m[i] / (std::sqrt(want_v[i]) * 1.5 + 1e-8);
  }
  ExpectClose(Download<float>(m), want_m, kTolerance, "adamw m");
  ExpectClose(Download<float>(v), want_v, kTolerance, "adamw v");
  ExpectClose(Download<float>(p), want_p, kTolerance, "adamw params");

  Tensor ema = Upload(m0);
  backend().EmaUpdate(ema.ptr<float>(), Upload(p0).ptr<float>(), n, 0.25f, /*guard=*/nullptr);
  std::vector<double> want_ema(n);
  for (int64_t i = 0; i < n; ++i) want_ema[i] = m0[i] + 0.25 * (double(p0[i]) - m0[i]);
  ExpectClose(Download<float>(ema), want_ema, kTolerance, "ema");

  // A device scale: the update of the gradients scaled first, bit for bit;
  // a scale of 0 (StepGuard's skip) changes nothing, EMA included.
  std::vector<float> scaled(g);
  for (float& x : scaled) x *= 0.375f;
  Tensor p1 = Upload(p0), m1 = Upload(m0), v1 = Upload(v0);
  backend().AdamWUpdate(s, segments, p1.ptr<float>(), Upload(scaled).ptr<float>(), m1.ptr<float>(),
                        v1.ptr<float>(), nullptr);
  Tensor p2 = Upload(p0), m2 = Upload(m0), v2 = Upload(v0);
  backend().AdamWUpdate(s, segments, p2.ptr<float>(), Upload(g).ptr<float>(), m2.ptr<float>(),
                        v2.ptr<float>(), Upload(std::vector<float>{0.375f}).ptr<float>());
  EXPECT_EQ(Download<float>(p2), Download<float>(p1));
  EXPECT_EQ(Download<float>(m2), Download<float>(m1));
  EXPECT_EQ(Download<float>(v2), Download<float>(v1));
  const Tensor skip = Upload(std::vector<float>{0.0f});
  backend().AdamWUpdate(s, segments, p2.ptr<float>(), Upload(g).ptr<float>(), m2.ptr<float>(),
                        v2.ptr<float>(), skip.ptr<float>());
  EXPECT_EQ(Download<float>(p2), Download<float>(p1));
  EXPECT_EQ(Download<float>(m2), Download<float>(m1));
  EXPECT_EQ(Download<float>(v2), Download<float>(v1));
  const std::vector<float> before = Download<float>(ema);
  backend().EmaUpdate(ema.ptr<float>(), Upload(p0).ptr<float>(), n, 0.25f, skip.ptr<float>());
  EXPECT_EQ(Download<float>(ema), before);
}

// The row-sharded table's sparse optimizer (Adam and row-wise Adagrad) on a
// few touched rows, out of order: against a double-precision reference of
// its formula (within the rounding of its float state), untouched rows and
// their state unchanged bit for bit, and equal bit for bit to the CPU
// kernel (on a GPU: the same rounding of every operation).
TEST_P(BackendOps, SparseRowUpdateFollowsTheTablesFormulaOnTouchedRowsOnly) {
  const int64_t rows = 6, dim = 7;
  const std::vector<int32_t> touched = {4, 1, 5};
  const auto count = static_cast<int64_t>(touched.size());
  const auto p0 = RandomFloats(rows * dim, 50), m0 = RandomFloats(rows * dim, 51),
             v0 = RandomFloats(rows * dim, 52, 0.0f, 1.0f), g = RandomFloats(count * dim, 53),
             sums0 = RandomFloats(rows, 54, 0.0f, 1.0f);
  for (const bool adam : {true, false}) {
    SparseRowScalars s;
    s.adam = adam;
    s.lr = 0.05, s.beta1 = 0.9, s.beta2 = 0.98, s.eps = 1e-8;
    s.bias1 = 1 - std::pow(0.9, 3), s.bias2 = 1 - std::pow(0.98, 3);
    s.grad_scale = 0.5f;
    Tensor p = Upload(p0), m = Upload(m0), v = Upload(v0), sums = Upload(sums0);
    backend().SparseRowUpdate(s, Upload(touched).ptr<int32_t>(), count, dim,
                              Upload(g).ptr<float>(), p.ptr<float>(), m.ptr<float>(),
                              v.ptr<float>(), sums.ptr<float>());
    std::vector<double> want_p = ToDouble(p0), want_m = ToDouble(m0), want_v = ToDouble(v0),
                        want_sums = ToDouble(sums0);
    for (int64_t k = 0; k < count; ++k) {
      const int64_t row = touched[k];
      double mean_square = 0;
      for (int64_t d = 0; d < dim; ++d) {
        const double gd = 0.5 * g[k * dim + d];
        mean_square += gd * gd / dim;
      }
      if (!adam) want_sums[row] += mean_square;
      for (int64_t d = 0; d < dim; ++d) {
        const int64_t i = row * dim + d;
        const double gd = 0.5 * g[k * dim + d];
        if (adam) {
          want_m[i] = 0.9 * want_m[i] + 0.1 * gd;
          want_v[i] = 0.98 * want_v[i] + 0.02 * gd * gd;
          want_p[i] -= 0.05 * (want_m[i] / s.bias1) / (std::sqrt(want_v[i] / s.bias2) + 1e-8);
        } else {
          want_p[i] -= 0.05 * gd / (std::sqrt(want_sums[row]) + 1e-8);
        }
      }
    }
    const std::string what = adam ? "sparse adam " : "sparse adagrad ";
    const std::vector<float> got_p = Download<float>(p), got_m = Download<float>(m),
                             got_v = Download<float>(v), got_sums = Download<float>(sums);
    ExpectClose(got_p, want_p, kTolerance, what + "params");
    ExpectClose(got_m, want_m, kTolerance, what + "m");
    ExpectClose(got_v, want_v, kTolerance, what + "v");
    ExpectClose(got_sums, want_sums, kTolerance, what + "sums");
    for (int64_t row : {0, 2, 3}) {  // untouched
      for (int64_t d = 0; d < dim; ++d) {
        const int64_t i = row * dim + d;
        ASSERT_EQ(got_p[i], p0[i]) << what << "row " << row;
        ASSERT_EQ(got_m[i], m0[i]) << what << "row " << row;
        ASSERT_EQ(got_v[i], v0[i]) << what << "row " << row;
      }
      ASSERT_EQ(got_sums[row], sums0[row]) << what << "row " << row;
    }
    std::vector<float> cpu_p = p0, cpu_m = m0, cpu_v = v0, cpu_sums = sums0;
    HostBackend().SparseRowUpdate(s, touched.data(), count, dim, g.data(), cpu_p.data(),
                                  cpu_m.data(), cpu_v.data(), cpu_sums.data());
    EXPECT_EQ(got_p, cpu_p) << what;
    EXPECT_EQ(got_m, cpu_m) << what;
    EXPECT_EQ(got_v, cpu_v) << what;
    EXPECT_EQ(got_sums, cpu_sums) << what;
  }
}

TEST_P(BackendOps, EventsOrderWorkAndSynchronizeReportsSuccess) {
  auto event = backend().CreateEvent();
  ASSERT_NE(event, nullptr);
  Tensor t = Poisoned<float>(4);
  backend().Memset(t.ptr<float>(), 0, t.bytes());
  backend().Record(*event);
  backend().StreamWait(*event);
  backend().HostWait(*event);
  EXPECT_TRUE(backend().Synchronize().ok());
  EXPECT_EQ(Download<float>(t), std::vector<float>(4, 0.0f));
}

// ---- HSTU (jagged pointwise attention) --------------------------------------------------------

// The reference's time bucket, written out here so the oracle shares no code
// with the backend: floor(ln(max(|dt|, 1)) / 0.301) in float32, clamped.
int32_t ReferenceTimeBucket(int64_t dt, int32_t num_buckets) {
  const double magnitude = std::max<double>(std::abs(static_cast<double>(dt)), 1.0);
  const float bucket = std::log(static_cast<float>(magnitude)) / 0.301f;
  return std::min<int32_t>(static_cast<int32_t>(bucket), num_buckets);
}

// Jagged batch: users of lengths {3, 0, 1, 4} (max_len 4), 2 heads.
struct HstuBatch {
  static constexpr int64_t kMaxLen = 4, kHeads = 2, kQk = 3, kV = 2;
  static constexpr int32_t kBuckets = 40;
  std::vector<int64_t> offsets = {0, 3, 3, 4, 8};
  std::vector<int64_t> timestamps = {100, 160, 4000, 50, 10, 11, 90000, 90001};
  std::vector<int64_t> next = {5000, 0, 70, 100000};
  std::vector<int64_t> query = {160, 4000, 5000, 70, 11, 90000, 90001, 100000};
  int64_t users() const { return 4; }
  int64_t total() const { return 8; }
};

// x = q | k | v | pos | time (flat); out [total, H * kV].
std::vector<double> ReferenceHstu(const HstuBatch& b, const std::vector<double>& x) {
  const int64_t n = b.kMaxLen, hq = b.kHeads * b.kQk, hv = b.kHeads * b.kV, t = b.total();
  const double* q = x.data();
  const double* k = q + t * hq;
  const double* v = k + t * hq;
  const double* pos = v + t * hv;
  const double* time = pos + 2 * n - 1;
  std::vector<double> out(t * hv, 0.0);
  for (int64_t u = 0; u < b.users(); ++u)
    for (int64_t i = b.offsets[u]; i < b.offsets[u + 1]; ++i)
      for (int64_t j = b.offsets[u]; j <= i; ++j)
        for (int64_t h = 0; h < b.kHeads; ++h) {
          double s = pos[n - 1 + j - i] +
                     time[ReferenceTimeBucket(b.query[i] - b.timestamps[j], b.kBuckets)];
          for (int64_t d = 0; d < b.kQk; ++d) s += q[i * hq + h * b.kQk + d] * k[j * hq + h * b.kQk + d];
          const double a = s / (1.0 + std::exp(-s)) / n;
          for (int64_t d = 0; d < b.kV; ++d) out[i * hv + h * b.kV + d] += a * v[j * hv + h * b.kV + d];
        }
  return out;
}

TEST_P(BackendOps, HstuAttentionMatchesJaggedReferenceAndFiniteDifferences) {
  const HstuBatch b;
  const int64_t n = b.kMaxLen, t = b.total(), hq = b.kHeads * b.kQk, hv = b.kHeads * b.kV;
  Tensor offsets = Upload(b.offsets), ts = Upload(b.timestamps), next = Upload(b.next);
  Tensor query = Poisoned<int64_t>(t);
  backend().HstuQueryTimestamps(offsets.ptr<int64_t>(), b.users(), ts.ptr<int64_t>(),
                                next.ptr<int64_t>(), query.ptr<int64_t>());
  EXPECT_EQ(Download<int64_t>(query), b.query);

  const auto q = RandomFloats(t * hq, 50), k = RandomFloats(t * hq, 51), v = RandomFloats(t * hv, 52);
  const auto pos = RandomFloats(2 * n - 1, 53), time = RandomFloats(b.kBuckets + 1, 54);
  std::vector<float> x = q;
  for (const auto* part : {&k, &v, &pos, &time}) x.insert(x.end(), part->begin(), part->end());
  Tensor qt = Upload(q), kt = Upload(k), vt = Upload(v), pt = Upload(pos), tt = Upload(time);
  Tensor out = Poisoned<float>(t * hv);
  backend().HstuAttentionForward(offsets.ptr<int64_t>(), b.users(), n, b.kHeads, b.kQk, b.kV,
                                 qt.ptr<float>(), kt.ptr<float>(), hq, vt.ptr<float>(), hv,
                                 pt.ptr<float>(), tt.ptr<float>(), b.kBuckets, ts.ptr<int64_t>(),
                                 query.ptr<int64_t>(), out.ptr<float>());
  ExpectClose(Download<float>(out), ReferenceHstu(b, ToDouble(x)), kTolerance, "hstu forward");

  const auto dout = RandomFloats(t * hv, 55);
  const auto dpos0 = RandomFloats(2 * n - 1, 56), dtime0 = RandomFloats(b.kBuckets + 1, 57);
  Tensor dq = Poisoned<float>(t * hq), dk = Poisoned<float>(t * hq), dv = Poisoned<float>(t * hv);
  Tensor dpos = Upload(dpos0), dtime = Upload(dtime0);  // parameter gradients accumulate
  backend().HstuAttentionBackward(offsets.ptr<int64_t>(), b.users(), n, b.kHeads, b.kQk, b.kV,
                                  qt.ptr<float>(), kt.ptr<float>(), hq, vt.ptr<float>(), hv,
                                  pt.ptr<float>(), tt.ptr<float>(), b.kBuckets, ts.ptr<int64_t>(),
                                  query.ptr<int64_t>(), Upload(dout).ptr<float>(), dq.ptr<float>(),
                                  dk.ptr<float>(), dv.ptr<float>(), dpos.ptr<float>(),
                                  dtime.ptr<float>());
  std::vector<float> got = Download<float>(dq);
  for (const auto& part : {Download<float>(dk), Download<float>(dv)})
    got.insert(got.end(), part.begin(), part.end());
  const auto dpos_got = Download<float>(dpos), dtime_got = Download<float>(dtime);
  for (int64_t i = 0; i < 2 * n - 1; ++i) got.push_back(dpos_got[i] - dpos0[i]);
  for (int64_t i = 0; i <= b.kBuckets; ++i) got.push_back(dtime_got[i] - dtime0[i]);
  ExpectGradient(got, [&](const std::vector<double>& xs) { return ReferenceHstu(b, xs); }, x,
                 dout, "hstu backward (dq | dk | dv | dpos | dtime)");
}

TEST_P(BackendOps, HstuNormGateIsUTimesLayerNorm) {
  const int64_t rows = 3, dim = 8, u_stride = 20;
  const float eps = 1e-6f;
  const auto x = RandomFloats(rows * dim, 60), u = RandomFloats(rows * u_stride, 61);
  auto reference = [&](const std::vector<double>& xs, const std::vector<double>& us) {
    std::vector<double> y(rows * dim);
    for (int64_t r = 0; r < rows; ++r) {
      double mean = 0, var = 0;
      for (int64_t c = 0; c < dim; ++c) mean += xs[r * dim + c] / dim;
      for (int64_t c = 0; c < dim; ++c) var += std::pow(xs[r * dim + c] - mean, 2) / dim;
      for (int64_t c = 0; c < dim; ++c)
        y[r * dim + c] = us[r * u_stride + c] * (xs[r * dim + c] - mean) / std::sqrt(var + eps);
    }
    return y;
  };
  Tensor xt = Upload(x), ut = Upload(u);
  Tensor y = Poisoned<float>(rows * dim), mean = Poisoned<float>(rows), rstd = Poisoned<float>(rows);
  backend().HstuNormGateForward(xt.ptr<float>(), ut.ptr<float>(), u_stride, y.ptr<float>(),
                                mean.ptr<float>(), rstd.ptr<float>(), rows, dim, eps);
  ExpectClose(Download<float>(y), reference(ToDouble(x), ToDouble(u)), kTolerance, "norm gate");

  const auto dy = RandomFloats(rows * dim, 62);
  std::vector<float> du0(rows * u_stride, 0.0f);  // columns outside u's rows stay 0
  Tensor dx = Poisoned<float>(rows * dim), du = Upload(du0);
  for (int64_t r = 0; r < rows; ++r)
    backend().Memset(du.ptr<float>() + r * u_stride, 0xff, dim * sizeof(float));
  backend().HstuNormGateBackward(Upload(dy).ptr<float>(), xt.ptr<float>(), ut.ptr<float>(),
                                 u_stride, mean.ptr<float>(), rstd.ptr<float>(), dx.ptr<float>(),
                                 du.ptr<float>(), rows, dim);
  const std::vector<double> ud = ToDouble(u), xd = ToDouble(x);
  ExpectGradient(Download<float>(dx), [&](const std::vector<double>& xs) { return reference(xs, ud); },
                 x, dy, "norm gate dx");
  ExpectGradient(Download<float>(du), [&](const std::vector<double>& us) { return reference(xd, us); },
                 u, dy, "norm gate du");
}

// The norm-gate of rows split over two "ranks" (columns [0, 5) and [5, 8),
// unequal shares) through the partial sums, summed here as the tp
// all-reduce sums them: the gate, dx and du equal the whole rows'.
TEST_P(BackendOps, HstuNormGateSplitOverRanksEqualsTheWholeRow) {
  const int64_t rows = 3, dim = 8, u_stride = 20, cut = 5;
  const float eps = 1e-6f;
  const auto x = RandomFloats(rows * dim, 63), u = RandomFloats(rows * u_stride, 64);
  const auto dy = RandomFloats(rows * dim, 65);
  // The whole rows, as one process computes them.
  Tensor xt = Upload(x), ut = Upload(u), dyt = Upload(dy);
  Tensor y = Poisoned<float>(rows * dim), mean = Poisoned<float>(rows), rstd = Poisoned<float>(rows);
  backend().HstuNormGateForward(xt.ptr<float>(), ut.ptr<float>(), u_stride, y.ptr<float>(),
                                mean.ptr<float>(), rstd.ptr<float>(), rows, dim, eps);
  Tensor dx = Poisoned<float>(rows * dim), du = Poisoned<float>(rows * u_stride);
  backend().HstuNormGateBackward(dyt.ptr<float>(), xt.ptr<float>(), ut.ptr<float>(), u_stride,
                                 mean.ptr<float>(), rstd.ptr<float>(), dx.ptr<float>(),
                                 du.ptr<float>(), rows, dim);
  const std::vector<float> want_y = Download<float>(y), want_dx = Download<float>(dx);
  const std::vector<float> want_du = Download<float>(du);
  // Each part's columns as a rank holds them: x and dy contiguous, u in place.
  struct Part {
    int64_t first, width;
    Tensor x, dy;
  };
  std::vector<Part> parts;
  for (const auto& [first, width] : {std::pair<int64_t, int64_t>{0, cut}, {cut, dim - cut}}) {
    std::vector<float> px, pdy;
    for (int64_t r = 0; r < rows; ++r) {
      px.insert(px.end(), x.begin() + r * dim + first, x.begin() + r * dim + first + width);
      pdy.insert(pdy.end(), dy.begin() + r * dim + first, dy.begin() + r * dim + first + width);
    }
    parts.push_back({first, width, Upload(px), Upload(pdy)});
  }
  // Sums over the parts of a per-row partial (`per_row` floats a row).
  auto summed = [&](int64_t per_row, const std::function<void(const Part&, float*)>& partial) {
    std::vector<float> total(rows * per_row, 0.0f);
    for (const Part& part : parts) {
      Tensor out = Poisoned<float>(rows * per_row);
      partial(part, out.ptr<float>());
      const std::vector<float> got = Download<float>(out);
      for (size_t i = 0; i < total.size(); ++i) total[i] += got[i];
    }
    return total;
  };
  std::vector<float> sums = summed(1, [&](const Part& p, float* out) {
    backend().HstuNormGateSums(p.x.ptr<float>(), rows, p.width, nullptr, out);
  });
  for (float& s : sums) s /= static_cast<float>(dim);
  Tensor split_mean = Upload(sums), split_rstd = Poisoned<float>(rows);
  Tensor squares = Upload(summed(1, [&](const Part& p, float* out) {
    backend().HstuNormGateSums(p.x.ptr<float>(), rows, p.width, split_mean.ptr<float>(), out);
  }));
  std::vector<double> got_y(rows * dim), got_dx(rows * dim), got_du(rows * dim);
  for (const Part& p : parts) {
    Tensor py = Poisoned<float>(rows * p.width);
    backend().HstuNormGateApply(p.x.ptr<float>(), ut.ptr<float>() + p.first, u_stride,
                                split_mean.ptr<float>(), squares.ptr<float>(), dim, eps,
                                py.ptr<float>(), split_rstd.ptr<float>(), rows, p.width);
    const std::vector<float> v = Download<float>(py);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < p.width; ++c) got_y[r * dim + p.first + c] = v[r * p.width + c];
  }
  ExpectClose(Download<float>(split_rstd), ToDouble(Download<float>(rstd)), kTolerance, "rstd");
  std::vector<double> want_yd = ToDouble(want_y);
  ExpectClose(std::vector<float>(got_y.begin(), got_y.end()), want_yd, kTolerance, "split gate");
  Tensor grad_sums = Upload(summed(2, [&](const Part& p, float* out) {
    backend().HstuNormGateBackwardSums(p.dy.ptr<float>(), p.x.ptr<float>(),
                                       ut.ptr<float>() + p.first, u_stride,
                                       split_mean.ptr<float>(), split_rstd.ptr<float>(), rows,
                                       p.width, out);
  }));
  for (const Part& p : parts) {
    Tensor pdx = Poisoned<float>(rows * p.width), pdu = Poisoned<float>(rows * u_stride);
    backend().HstuNormGateBackwardApply(p.dy.ptr<float>(), p.x.ptr<float>(),
                                        ut.ptr<float>() + p.first, u_stride,
                                        split_mean.ptr<float>(), split_rstd.ptr<float>(),
                                        grad_sums.ptr<float>(), dim, pdx.ptr<float>(),
                                        pdu.ptr<float>() + p.first, rows, p.width);
    const std::vector<float> vx = Download<float>(pdx), vu = Download<float>(pdu);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < p.width; ++c) {
        got_dx[r * dim + p.first + c] = vx[r * p.width + c];
        got_du[r * dim + p.first + c] = vu[r * u_stride + p.first + c];
      }
  }
  ExpectClose(std::vector<float>(got_dx.begin(), got_dx.end()), ToDouble(want_dx), kTolerance,
              "split gate dx");
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < dim; ++c) {
      EXPECT_NEAR(got_du[r * dim + c], want_du[r * u_stride + c],
                  kTolerance * std::max(1.0f, std::abs(want_du[r * u_stride + c])))
          << "split gate du[" << r << ", " << c << "]";
    }
}

// ---- State-space models (Mamba-2) ----------------------------------------------------------

TEST_P(BackendOps, SsdScanForwardBackwardAndStepMatchTheRecurrence) {
  // L = 10 in chunks of 4 (the last one ragged); two heads per group.
  const SsdShape s{2, 10, 4, 3, 2, 5, 4};
  const int64_t tokens = s.batch * s.seq, states = s.batch * s.heads * s.head_dim * s.state_dim;
  const int64_t out_size = tokens * s.heads * s.head_dim;
  std::vector<float> in[7] = {RandomFloats(out_size, 50),
                              RandomFloats(tokens * s.heads, 51, 0.05f, 0.6f),
                              RandomFloats(s.heads, 52, -1.5f, -0.3f),
                              RandomFloats(tokens * s.groups * s.state_dim, 53),
                              RandomFloats(tokens * s.groups * s.state_dim, 54),
                              RandomFloats(s.heads, 55),
                              RandomFloats(states, 56)};  // x, dt, A, B, C, D, initial state
  // [y | final state] of the double reference as a function of input i.
  auto reference = [&](int i, const std::vector<double>& v) {
    std::vector<double> a[7];
    for (int j = 0; j < 7; ++j) a[j] = j == i ? v : ToDouble(in[j]);
    auto r = cpu::reference::ReferenceSsd(s, a[0], a[1], a[2], a[3], a[4], a[5], a[6]);
    r.y.insert(r.y.end(), r.final_state.begin(), r.final_state.end());
    return r.y;
  };
  Tensor t[7];
  for (int j = 0; j < 7; ++j) t[j] = Upload(in[j]);
  Tensor y = Poisoned<float>(out_size), final_state = Poisoned<float>(states);
  backend().SsdScanForward(s, t[0].ptr<float>(), t[1].ptr<float>(), t[2].ptr<float>(),
                           t[3].ptr<float>(), t[4].ptr<float>(), t[5].ptr<float>(),
                           t[6].ptr<float>(), y.ptr<float>(), final_state.ptr<float>());
  std::vector<float> got = Download<float>(y);
  const auto got_state = Download<float>(final_state);
  got.insert(got.end(), got_state.begin(), got_state.end());
  ExpectClose(got, reference(-1, {}), kTolerance, "ssd forward [y | final state]");

  const auto dy = RandomFloats(out_size, 57), dfinal = RandomFloats(states, 58);
  std::vector<float> w = dy;
  w.insert(w.end(), dfinal.begin(), dfinal.end());
  Tensor grads[7] = {Poisoned<float>(out_size),
                     Poisoned<float>(tokens * s.heads),
                     Upload(std::vector<float>(s.heads, 0.0f)),  // dA accumulates
                     Poisoned<float>(tokens * s.groups * s.state_dim),
                     Poisoned<float>(tokens * s.groups * s.state_dim),
                     Upload(std::vector<float>(s.heads, 0.0f)),  // dD accumulates
                     Poisoned<float>(states)};
  backend().SsdScanBackward(s, t[0].ptr<float>(), t[1].ptr<float>(), t[2].ptr<float>(),
                            t[3].ptr<float>(), t[4].ptr<float>(), t[5].ptr<float>(),
                            t[6].ptr<float>(), Upload(dy).ptr<float>(),
                            Upload(dfinal).ptr<float>(), grads[0].ptr<float>(),
                            grads[1].ptr<float>(), grads[2].ptr<float>(), grads[3].ptr<float>(),
                            grads[4].ptr<float>(), grads[5].ptr<float>(), grads[6].ptr<float>());
  const char* names[7] = {"dx", "ddt", "dA", "dB", "dC", "dD", "d initial state"};
  for (int i = 0; i < 7; ++i) {
    ExpectGradient(Download<float>(grads[i]),
                   [&](const std::vector<double>& v) { return reference(i, v); }, in[i], w,
                   std::string("ssd backward ") + names[i]);
  }

  // One token from the initial state equals the first token of the scan.
  SsdShape one = s;
  one.seq = 1;
  std::vector<float> x1, dt1, b1, c1;
  const int64_t hp = s.heads * s.head_dim, gn = s.groups * s.state_dim;
  for (int64_t b = 0; b < s.batch; ++b) {
    x1.insert(x1.end(), in[0].begin() + b * s.seq * hp, in[0].begin() + (b * s.seq + 1) * hp);
    dt1.insert(dt1.end(), in[1].begin() + b * s.seq * s.heads,
               in[1].begin() + (b * s.seq + 1) * s.heads);
    b1.insert(b1.end(), in[3].begin() + b * s.seq * gn, in[3].begin() + (b * s.seq + 1) * gn);
    c1.insert(c1.end(), in[4].begin() + b * s.seq * gn, in[4].begin() + (b * s.seq + 1) * gn);
  }
  Tensor state = Upload(in[6]), y1 = Poisoned<float>(s.batch * hp);
  backend().SsdStep(one, Upload(x1).ptr<float>(), Upload(dt1).ptr<float>(), t[2].ptr<float>(),
                    Upload(b1).ptr<float>(), Upload(c1).ptr<float>(), t[5].ptr<float>(),
                    state.ptr<float>(), y1.ptr<float>());
  auto want1 = cpu::reference::ReferenceSsd(one, ToDouble(x1), ToDouble(dt1), ToDouble(in[2]),
                                            ToDouble(b1), ToDouble(c1), ToDouble(in[5]),
                                            ToDouble(in[6]));
  ExpectClose(Download<float>(y1), want1.y, kTolerance, "ssd step y");
  ExpectClose(Download<float>(state), want1.final_state, kTolerance, "ssd step state");
}

TEST_P(BackendOps, CausalConv1dForwardBackwardAndStepMatchTheReference) {
  const CausalConv1dShape s{2, 6, 5, 4};
  const int64_t n = s.batch * s.seq * s.channels, halo_size = s.batch * (s.width - 1) * s.channels;
  std::vector<float> in[4] = {RandomFloats(n, 60), RandomFloats(s.channels * s.width, 61),
                              RandomFloats(s.channels, 62), RandomFloats(halo_size, 63)};
  auto reference = [&](int i, const std::vector<double>& v) {
    std::vector<double> a[4];
    for (int j = 0; j < 4; ++j) a[j] = j == i ? v : ToDouble(in[j]);
    return cpu::reference::ReferenceConv(s, a[0], a[1], a[2], a[3]);
  };
  Tensor t[4];
  for (int j = 0; j < 4; ++j) t[j] = Upload(in[j]);
  Tensor y = Poisoned<float>(n), halo_out = Poisoned<float>(halo_size);
  backend().CausalConv1dForward(s, t[0].ptr<float>(), t[1].ptr<float>(), t[2].ptr<float>(),
                                t[3].ptr<float>(), y.ptr<float>(), halo_out.ptr<float>());
  ExpectClose(Download<float>(y), reference(-1, {}), kTolerance, "conv forward");
  std::vector<double> want_halo;
  for (int64_t b = 0; b < s.batch; ++b)
    want_halo.insert(want_halo.end(),
                     in[0].begin() + (b * s.seq + s.seq - (s.width - 1)) * s.channels,
                     in[0].begin() + (b + 1) * s.seq * s.channels);
  ExpectClose(Download<float>(halo_out), want_halo, 0, "conv halo out");

  const auto dy = RandomFloats(n, 64);
  Tensor grads[4] = {Poisoned<float>(n), Upload(std::vector<float>(s.channels * s.width, 0.0f)),
                     Upload(std::vector<float>(s.channels, 0.0f)), Poisoned<float>(halo_size)};
  backend().CausalConv1dBackward(s, t[0].ptr<float>(), t[1].ptr<float>(), t[3].ptr<float>(),
                                 Upload(dy).ptr<float>(), grads[0].ptr<float>(),
                                 grads[1].ptr<float>(), grads[2].ptr<float>(),
                                 grads[3].ptr<float>());
  const char* names[4] = {"dx", "dweight", "dbias", "dhalo"};
  for (int i = 0; i < 4; ++i) {
    ExpectGradient(Download<float>(grads[i]),
                   [&](const std::vector<double>& v) { return reference(i, v); }, in[i], dy,
                   std::string("conv backward ") + names[i]);
  }

  // One token from the halo equals the first output of the forward pass.
  std::vector<float> x1;
  std::vector<double> want1;
  const auto y_all = reference(-1, {});
  for (int64_t b = 0; b < s.batch; ++b) {
    x1.insert(x1.end(), in[0].begin() + b * s.seq * s.channels,
              in[0].begin() + (b * s.seq + 1) * s.channels);
    want1.insert(want1.end(), y_all.begin() + b * s.seq * s.channels,
                 y_all.begin() + (b * s.seq + 1) * s.channels);
  }
  Tensor state = Upload(in[3]), y1 = Poisoned<float>(s.batch * s.channels);
  backend().CausalConv1dStep(s, Upload(x1).ptr<float>(), t[1].ptr<float>(), t[2].ptr<float>(),
                             state.ptr<float>(), y1.ptr<float>());
  ExpectClose(Download<float>(y1), want1, kTolerance, "conv step");
}

// ---- The Mamba-2 mixer's pointwise pieces --------------------------------------------------

TEST_P(BackendOps, ReluSquaredForwardAndBackward) {
  const int64_t n = 97;
  const auto x = RandomFloats(n, 90, -3, 3), dy = RandomFloats(n, 91);
  auto ref = [&](const std::vector<double>& v) {
    std::vector<double> y(v.size());
    for (size_t i = 0; i < v.size(); ++i) y[i] = v[i] > 0 ? v[i] * v[i] : 0.0;
    return y;
  };
  Tensor xt = Upload(x), y = Poisoned<float>(n), dx = Poisoned<float>(n);
  backend().ReluSquaredForward(xt.ptr<float>(), y.ptr<float>(), n);
  ExpectClose(Download<float>(y), ref(ToDouble(x)), kTolerance, "relu^2");
  backend().ReluSquaredBackward(Upload(dy).ptr<float>(), xt.ptr<float>(), dx.ptr<float>(), n);
  ExpectGradient(Download<float>(dx), ref, x, dy, "relu^2 dx");
}

// A [rows, stride] buffer of zeros whose columns [0, cols) of each row are poisoned: a
// backward that writes strided gradients must fill exactly those.
Tensor PoisonedColumns(Backend& backend, int64_t rows, int64_t stride, int64_t cols) {
  Tensor t = Tensor::Empty(DType::kF32, Shape{rows * stride}, backend);
  backend.Memset(t.address(), 0, t.bytes());
  for (int64_t r = 0; r < rows; ++r)
    backend.Memset(t.ptr<float>() + r * stride, 0xff, cols * sizeof(float));
  return t;
}

TEST_P(BackendOps, DtSoftplusReadsStridedRowsAndReducesTheBias) {
  const int64_t rows = 5, heads = 3, stride = 7;
  // Values around the softplus threshold of 20 too.
  auto raw = RandomFloats(rows * stride, 92, -6, 6);
  raw[stride + 1] = 25.0f;
  const auto bias = RandomFloats(heads, 93), ddt = RandomFloats(rows * heads, 94);
  auto reference = [&](const std::vector<double>& r, const std::vector<double>& b) {
    std::vector<double> dt(rows * heads);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t h = 0; h < heads; ++h) {
        const double v = r[i * stride + h] + b[h];
        dt[i * heads + h] = v > 20 ? v : std::log1p(std::exp(v));
      }
    return dt;
  };
  Tensor rawt = Upload(raw), biast = Upload(bias), dt = Poisoned<float>(rows * heads);
  backend().DtSoftplusForward(rawt.ptr<float>(), stride, biast.ptr<float>(), dt.ptr<float>(),
                              rows, heads);
  ExpectClose(Download<float>(dt), reference(ToDouble(raw), ToDouble(bias)), kTolerance, "dt");
  Tensor draw = PoisonedColumns(backend(), rows, stride, heads);
  std::vector<float> dbias0 = {0.5f, -0.25f, 1.0f};  // accumulates onto these
  Tensor dbias = Upload(dbias0);
  backend().DtSoftplusBackward(Upload(ddt).ptr<float>(), rawt.ptr<float>(), stride,
                               biast.ptr<float>(), draw.ptr<float>(), dbias.ptr<float>(), rows,
                               heads);
  const std::vector<double> rawd = ToDouble(raw), biasd = ToDouble(bias);
  ExpectGradient(Download<float>(draw),
                 [&](const std::vector<double>& r) { return reference(r, biasd); }, raw, ddt,
                 "dt draw");
  std::vector<float> got_bias = Download<float>(dbias);
  for (int64_t h = 0; h < heads; ++h) got_bias[h] -= dbias0[h];
  ExpectGradient(got_bias, [&](const std::vector<double>& b) { return reference(rawd, b); },
                 bias, ddt, "dt dbias");
}

TEST_P(BackendOps, GatedRmsNormNormalizesEachGroupOfTheGatedInput) {
  const int64_t rows = 3, dim = 12, group = 4, z_stride = 20, groups = dim / group;
  const float eps = 1e-5f;
  const auto x = RandomFloats(rows * dim, 95, -2, 2), z = RandomFloats(rows * z_stride, 96, -3, 3);
  const auto w = RandomFloats(dim, 97, 0.5f, 1.5f), dy = RandomFloats(rows * dim, 98);
  auto reference = [&](const std::vector<double>& xs, const std::vector<double>& zs,
                       const std::vector<double>& ws) {
    std::vector<double> y(rows * dim);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t g = 0; g < groups; ++g) {
        double sum = 0;
        std::vector<double> u(group);
        for (int64_t j = 0; j < group; ++j) {
          u[j] = xs[r * dim + g * group + j] * Silu(zs[r * z_stride + g * group + j]);
          sum += u[j] * u[j];
        }
        const double rstd = 1 / std::sqrt(sum / group + eps);
        for (int64_t j = 0; j < group; ++j)
          y[r * dim + g * group + j] = u[j] * rstd * ws[g * group + j];
      }
    return y;
  };
  Tensor xt = Upload(x), zt = Upload(z), wt = Upload(w);
  Tensor y = Poisoned<float>(rows * dim), rstd = Poisoned<float>(rows * groups);
  backend().GatedRmsNormForward(xt.ptr<float>(), zt.ptr<float>(), z_stride, wt.ptr<float>(),
                                y.ptr<float>(), rstd.ptr<float>(), rows, dim, group, eps);
  const std::vector<double> xd = ToDouble(x), zd = ToDouble(z), wd = ToDouble(w);
  ExpectClose(Download<float>(y), reference(xd, zd, wd), kTolerance, "gated rmsnorm");
  Tensor dx = Poisoned<float>(rows * dim), dz = PoisonedColumns(backend(), rows, z_stride, dim);
  Tensor dw = Upload(std::vector<float>(dim, 0.0f));
  backend().GatedRmsNormBackward(Upload(dy).ptr<float>(), xt.ptr<float>(), zt.ptr<float>(),
                                 z_stride, wt.ptr<float>(), rstd.ptr<float>(), dx.ptr<float>(),
                                 dz.ptr<float>(), dw.ptr<float>(), rows, dim, group);
  ExpectGradient(Download<float>(dx),
                 [&](const std::vector<double>& v) { return reference(v, zd, wd); }, x, dy,
                 "gated rmsnorm dx");
  ExpectGradient(Download<float>(dz),
                 [&](const std::vector<double>& v) { return reference(xd, v, wd); }, z, dy,
                 "gated rmsnorm dz");
  ExpectGradient(Download<float>(dw),
                 [&](const std::vector<double>& v) { return reference(xd, zd, v); }, w, dy,
                 "gated rmsnorm dweight");
}

TEST_P(BackendOps, SsmDecayRatesShardDecayAndScaledRows) {
  const int64_t heads = 5, batch = 2, seq = 7;
  const auto a_log = RandomFloats(heads, 100, -2, 2), da = RandomFloats(heads, 101);
  auto rates = [&](const std::vector<double>& v) {
    std::vector<double> a(v.size());
    for (size_t h = 0; h < v.size(); ++h) a[h] = -std::exp(v[h]);
    return a;
  };
  Tensor alog = Upload(a_log), a = Poisoned<float>(heads);
  backend().SsmDecayRatesForward(alog.ptr<float>(), a.ptr<float>(), heads);
  const std::vector<float> got_a = Download<float>(a);
  ExpectClose(got_a, rates(ToDouble(a_log)), kTolerance, "A = -exp(A_log)");
  const std::vector<float> dalog0 = {0.25f, -1.0f, 0.0f, 2.0f, 0.5f};  // accumulates onto these
  Tensor dalog = Upload(dalog0);
  backend().SsmDecayRatesBackward(Upload(da).ptr<float>(), a.ptr<float>(), dalog.ptr<float>(),
                                  heads);
  std::vector<float> got_dalog = Download<float>(dalog);
  for (int64_t h = 0; h < heads; ++h) got_dalog[h] -= dalog0[h];
  ExpectGradient(got_dalog, rates, a_log, da, "dA_log");

  const auto dt = RandomFloats(batch * seq * heads, 102, 0.01f, 0.5f);
  Tensor decay = Poisoned<float>(batch * heads);
  backend().SsdShardDecay(Upload(dt).ptr<float>(), a.ptr<float>(), decay.ptr<float>(), batch, seq,
                          heads);
  std::vector<double> want_decay(batch * heads);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h) {
      double sum = 0;
      for (int64_t t = 0; t < seq; ++t) sum += dt[(b * seq + t) * heads + h];
      want_decay[b * heads + h] = std::exp(sum * got_a[h]);
    }
  ExpectClose(Download<float>(decay), want_decay, kTolerance, "shard decay");

  const int64_t rows = 3, dim = 37;
  const auto y0 = RandomFloats(rows * dim, 103), x = RandomFloats(rows * dim, 104);
  const auto row_scale = RandomFloats(rows, 105, -2, 2);
  Tensor y = Upload(y0);
  backend().AddScaledRows(y.ptr<float>(), Upload(row_scale).ptr<float>(), Upload(x).ptr<float>(),
                          rows, dim);
  std::vector<double> want_y(rows * dim);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < dim; ++j)
      want_y[r * dim + j] = y0[r * dim + j] + static_cast<double>(row_scale[r]) * x[r * dim + j];
  ExpectClose(Download<float>(y), want_y, kTolerance, "y += scale[r] x");
}

INSTANTIATE_TEST_SUITE_P(EveryBackend, BackendOps, ::testing::ValuesIn(BackendsPresent()),
                         [](const ::testing::TestParamInfo<Backend*>& info) {
                           return std::string(DeviceName(info.param->device()));
                         });

}  // namespace
}  // namespace tessera
