// The kernels the Mamba-2 hybrid's device path added: the SSM decay rates
// and a sequence shard's decay (ssm_pointwise), y += scale[r] * x
// (activation), and the vocabulary-parallel cross-entropy's statistics,
// combination and backward (loss), each against the CPU kernel of the same
// name on the same inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "runtime/kernels/cpu/activation.h"
#include "runtime/kernels/cpu/loss.h"
#include "runtime/kernels/cpu/ssm_pointwise.h"
#include "runtime/kernels/cuda/activation.h"
#include "runtime/kernels/cuda/loss.h"
#include "runtime/kernels/cuda/ssm_pointwise.h"
#include "tests/runtime/kernels/cuda/cuda_test_util.h"

namespace tessera::cuda {
namespace {

using testing::DeviceVector;
using testing::NormalizedMaxError;
using testing::RandomVector;

constexpr double kTolerance = 1e-5;

using CudaMambaPointwiseTest = testing::CudaTest;

// A device copy of `host` (any element type).
template <typename T>
DeviceBuffer Upload(const std::vector<T>& host) {
  auto buffer = DeviceBuffer::Create(host.size() * sizeof(T));
  EXPECT_TRUE(buffer.ok()) << buffer.status();
  if (!buffer.ok()) return DeviceBuffer();
  EXPECT_TRUE(buffer->CopyFromHost(host.data(), host.size() * sizeof(T)).ok());
  return std::move(buffer).value();
}

template <typename T>
std::vector<T> Download(const DeviceBuffer& buffer, size_t n) {
  std::vector<T> host(n);
  EXPECT_TRUE(buffer.CopyToHost(host.data(), n * sizeof(T)).ok());
  return host;
}

TEST_F(CudaMambaPointwiseTest, DecayRatesShardDecayAndScaledRowsMatchCpu) {
  uint64_t seed = 700;
  for (auto [batch, seq, heads] :
       {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {2, 37, 5}, {3, 1000, 24}}) {
    SCOPED_TRACE(::testing::Message() << "batch=" << batch << " seq=" << seq << " heads=" << heads);
    const std::vector<float> a_log = RandomVector(heads, seed++);
    const std::vector<float> da = RandomVector(heads, seed++);
    std::vector<float> dt = RandomVector(batch * seq * heads, seed++, 0.1f);
    for (float& v : dt) v = v < 0 ? -v : v;  // dt is a softplus: positive
    std::vector<float> da_log = RandomVector(heads, seed++);  // accumulated onto
    DeviceVector a_log_dev(a_log), da_dev(da), dt_dev(dt), da_log_dev(da_log), a_dev(heads);
    DeviceVector decay_dev(batch * heads);
    ASSERT_TRUE(SsmDecayRatesForward(a_log_dev.data(), a_dev.data(), heads, stream_).ok());
    ASSERT_TRUE(
        SsmDecayRatesBackward(da_dev.data(), a_dev.data(), da_log_dev.data(), heads, stream_).ok());
    ASSERT_TRUE(SsdShardDecay(dt_dev.data(), a_dev.data(), decay_dev.data(), batch, seq, heads,
                              stream_)
                    .ok());
    Sync();
    std::vector<float> a(heads), decay(batch * heads);
    cpu::SsmDecayRatesForward(a_log.data(), a.data(), heads);
    cpu::SsmDecayRatesBackward(da.data(), a.data(), da_log.data(), heads);
    cpu::SsdShardDecay(dt.data(), a.data(), decay.data(), batch, seq, heads);
    EXPECT_LT(NormalizedMaxError(a_dev.ToHost(), a), kTolerance) << "A";
    EXPECT_LT(NormalizedMaxError(da_log_dev.ToHost(), da_log), kTolerance) << "dA_log";
    EXPECT_LT(NormalizedMaxError(decay_dev.ToHost(), decay), kTolerance) << "shard decay";

    // Rows of P x N states scaled by the decays.
    const int64_t rows = batch * heads, dim = 33;
    std::vector<float> y = RandomVector(rows * dim, seed++);
    const std::vector<float> x = RandomVector(rows * dim, seed++);
    DeviceVector y_dev(y), x_dev(x);
    ASSERT_TRUE(
        AddScaledRows(y_dev.data(), decay_dev.data(), x_dev.data(), rows, dim, stream_).ok());
    Sync();
    cpu::AddScaledRows(y.data(), decay.data(), x.data(), rows, dim);
    EXPECT_LT(NormalizedMaxError(y_dev.ToHost(), y), kTolerance) << "scaled rows";
  }
}

// Two column slices of one vocabulary ("ranks"), large logits, a row whose
// maximum is tied across the slices, more columns than a warp.
TEST_F(CudaMambaPointwiseTest, VocabCrossEntropyMatchesCpu) {
  const int64_t rows = 9, columns = 70, ranks = 2;
  const std::vector<float> whole = RandomVector(rows * columns * ranks, 710, 30.0f);
  std::vector<std::vector<float>> slices(ranks, std::vector<float>(rows * columns));
  for (int64_t k = 0; k < ranks; ++k)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < columns; ++j)
        slices[k][r * columns + j] = whole[(r * ranks + k) * columns + j];
  slices[0][2 * columns + 5] = slices[1][2 * columns + 9] = 500.0f;  // tied maximum of row 2
  std::vector<int32_t> targets(rows);
  for (int64_t r = 0; r < rows; ++r) targets[r] = static_cast<int32_t>((r * 37) % (2 * columns));
  targets[2] = 5;  // the first of the tie: a hit
  DeviceBuffer targets_dev = Upload(targets);
  std::vector<double> all_cpu;
  std::vector<DeviceVector> slices_dev;
  std::vector<double> all_gpu;
  for (int64_t k = 0; k < ranks; ++k) {
    std::vector<double> stats(rows * 4);
    cpu::VocabCrossEntropyStats(slices[k].data(), targets.data(), rows, columns, k * columns,
                                stats.data());
    all_cpu.insert(all_cpu.end(), stats.begin(), stats.end());
    slices_dev.emplace_back(slices[k]);
    DeviceBuffer stats_dev = Upload(std::vector<double>(rows * 4, -1.0));
    ASSERT_TRUE(VocabCrossEntropyStats(slices_dev[k].data(), targets_dev.as<int32_t>(), rows,
                                       columns, k * columns, stats_dev.as<double>(), stream_)
                    .ok());
    Sync();
    const std::vector<double> got = Download<double>(stats_dev, rows * 4);
    for (int64_t i = 0; i < rows * 4; ++i) {
      // max, target logit and argmax exactly; the sum to rounding.
      if (i % 4 == 1) {
        EXPECT_NEAR(got[i], stats[i], 1e-12 * stats[i]) << "rank " << k << " item " << i;
      } else {
        EXPECT_EQ(got[i], stats[i]) << "rank " << k << " item " << i;
      }
    }
    all_gpu.insert(all_gpu.end(), got.begin(), got.end());
  }
  DeviceBuffer all_dev = Upload(all_gpu);
  for (int64_t k = 0; k < ranks; ++k) {
    std::vector<float> probs(rows * columns), dlogits(rows * columns);
    double totals[2];
    cpu::VocabCrossEntropyCombine(slices[k].data(), all_cpu.data(), ranks, targets.data(),
                                  probs.data(), rows, columns, totals);
    cpu::VocabCrossEntropyBackward(probs.data(), targets.data(), dlogits.data(), rows, columns,
                                   k * columns, 0.25f);
    DeviceVector probs_dev(rows * columns), dlogits_dev(rows * columns);
    DeviceBuffer scratch = Upload(std::vector<double>(2 * rows));
    DeviceBuffer totals_dev = Upload(std::vector<double>(2, -1.0));
    ASSERT_TRUE(VocabCrossEntropyCombine(slices_dev[k].data(), all_dev.as<double>(), ranks,
                                         targets_dev.as<int32_t>(), probs_dev.data(), rows,
                                         columns, scratch.as<double>(), totals_dev.as<double>(),
                                         stream_)
                    .ok());
    ASSERT_TRUE(VocabCrossEntropyBackward(probs_dev.data(), targets_dev.as<int32_t>(),
                                          dlogits_dev.data(), rows, columns, k * columns, 0.25f,
                                          stream_)
                    .ok());
    Sync();
    const std::vector<double> got = Download<double>(totals_dev, 2);
    EXPECT_NEAR(got[0], totals[0], 1e-12 * std::abs(totals[0])) << "loss, rank " << k;
    EXPECT_EQ(got[1], totals[1]) << "hits, rank " << k;
    EXPECT_LT(NormalizedMaxError(probs_dev.ToHost(), probs), kTolerance) << "probs";
    EXPECT_LT(NormalizedMaxError(dlogits_dev.ToHost(), dlogits), kTolerance) << "dlogits";
  }
}

TEST(CudaMambaPointwise, RejectsNegativeSizesAndAcceptsEmptyInputWithoutADevice) {
  EXPECT_EQ(SsdShardDecay(nullptr, nullptr, nullptr, 2, -1, 3, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AddScaledRows(nullptr, nullptr, nullptr, -1, 3, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(VocabCrossEntropyStats(nullptr, nullptr, 3, -1, 0, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(VocabCrossEntropyStats(nullptr, nullptr, 3, 0, 0, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(SsmDecayRatesForward(nullptr, nullptr, 0, nullptr).ok());
  EXPECT_TRUE(SsdShardDecay(nullptr, nullptr, nullptr, 0, 5, 3, nullptr).ok());
  EXPECT_TRUE(VocabCrossEntropyStats(nullptr, nullptr, 0, 8, 0, nullptr, nullptr).ok());
  EXPECT_TRUE(VocabCrossEntropyBackward(nullptr, nullptr, nullptr, 0, 8, 0, 1.0f, nullptr).ok());
}

}  // namespace
}  // namespace tessera::cuda
