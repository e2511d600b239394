// MoeLayer on a pretend device (host memory that calls itself a CUDA
// device's, tests/runtime/backend/pretend_device_backend.h): its output,
// input gradient, parameter gradients, balance loss, load and drops equal
// the CPU's bit for bit, and a Forward + Backward copies to the host exactly
// the E + 1 expert offsets when dropless and nothing with a capacity (the
// routing bookkeeping stays in device memory; docs/cuda.md).
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "runtime/backend/cpu_backend.h"
#include "runtime/base/random.h"
#include "runtime/nn/moe.h"
#include "runtime/nn/parameter.h"
#include "runtime/tensor/arena.h"
#include "tests/runtime/backend/pretend_device_backend.h"

namespace tessera {
namespace {

constexpr int64_t kDim = 6, kTokens = 11, kExperts = 4;

MoeLayer::Options Options(float capacity_factor, bool renormalize) {
  MoeLayer::Options options;
  options.num_experts = kExperts;
  options.top_k = 2;
  options.expert_hidden = 8;
  options.shared_expert_hidden = 5;
  options.balance_loss_coef = 0.5f;
  options.renormalize_topk = renormalize;
  options.capacity_factor = capacity_factor;
  return options;
}

std::vector<float> Values(int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = 2.0f * rng.Uniform() - 1.0f;
  return v;
}

// One layer's results on `backend`, and the bytes its Forward + Backward
// copied to the host.
struct LayerRun {
  std::vector<float> y, dx, grads;
  double balance_loss = 0;
  std::vector<double> load;
  int64_t dropped = 0;
  size_t bytes_read = 0;
};

LayerRun Run(Backend& backend, const MoeLayer::Options& options,
             const PretendDeviceBackend* counter) {
  ParameterStore store(backend);
  MoeLayer moe(store, "moe", kDim, options);
  store.Finalize(7);
  Arena arena(backend);
  auto upload = [&](const std::vector<float>& values, Shape shape) {
    Tensor t = Tensor::Empty(DType::kF32, shape, backend);
    backend.CopyToDevice(t.address(), values.data(), t.bytes());
    return t;
  };
  auto download = [&](const Tensor& t) {
    std::vector<float> out(static_cast<size_t>(t.numel()));
    backend.CopyToHost(out.data(), t.address(), t.bytes());
    return out;
  };
  const Tensor x = upload(Values(kTokens * kDim, 1), Shape{kTokens, kDim});
  const Tensor dy = upload(Values(kTokens * kDim, 2), Shape{kTokens, kDim});
  LayerRun run;
  const size_t before = counter != nullptr ? counter->bytes_to_host() : 0;
  absl::StatusOr<Tensor> y = moe.Forward(arena, x);
  EXPECT_TRUE(y.ok()) << y.status();
  if (!y.ok()) return run;
  const Tensor dx = moe.Backward(arena, dy, 0.5f);
  if (counter != nullptr) run.bytes_read = counter->bytes_to_host() - before;
  run.y = download(*y);
  run.dx = download(dx);
  run.grads = download(store.grads());
  run.balance_loss = moe.balance_loss();
  run.load = moe.expert_load();
  run.dropped = moe.dropped_assignments();
  return run;
}

void ExpectDeviceEqualsCpu(const MoeLayer::Options& options, size_t want_bytes_read) {
  const LayerRun cpu = Run(HostBackend(), options, nullptr);
  PretendDeviceBackend device;
  const LayerRun on_device = Run(device, options, &device);
  EXPECT_EQ(on_device.bytes_read, want_bytes_read);
  EXPECT_EQ(on_device.y, cpu.y);
  EXPECT_EQ(on_device.dx, cpu.dx);
  EXPECT_EQ(on_device.grads, cpu.grads);
  EXPECT_EQ(on_device.balance_loss, cpu.balance_loss);
  EXPECT_GT(cpu.balance_loss, 0);
  EXPECT_EQ(on_device.load, cpu.load);
  EXPECT_EQ(on_device.dropped, cpu.dropped);
}

TEST(MoeLayerOnDevice, DroplessReadsOnlyTheExpertOffsets) {
  ExpectDeviceEqualsCpu(Options(0, false), (kExperts + 1) * sizeof(int64_t));
  ExpectDeviceEqualsCpu(Options(0, true), (kExperts + 1) * sizeof(int64_t));
}

TEST(MoeLayerOnDevice, CapacityReadsNothing) {
  ExpectDeviceEqualsCpu(Options(0.5f, false), 0);
  ExpectDeviceEqualsCpu(Options(1.25f, true), 0);
}

// The accessors read the last Forward's [loss | load | dropped] once.
TEST(MoeLayerOnDevice, TheReportIsReadOnceWhenAsked) {
  PretendDeviceBackend device;
  ParameterStore store(device);
  MoeLayer moe(store, "moe", kDim, Options(0.5f, false));
  store.Finalize(7);
  Arena arena(device);
  Tensor x = Tensor::Empty(DType::kF32, Shape{kTokens, kDim}, device);
  const std::vector<float> values = Values(kTokens * kDim, 1);
  device.CopyToDevice(x.address(), values.data(), x.bytes());
  ASSERT_TRUE(moe.Forward(arena, x).ok());
  const size_t before = device.bytes_to_host();
  const double loss = moe.balance_loss();
  EXPECT_EQ(device.bytes_to_host() - before, (kExperts + 2) * sizeof(int64_t));
  EXPECT_EQ(moe.expert_load().size(), static_cast<size_t>(kExperts));
  EXPECT_GT(moe.dropped_assignments(), 0);  // capacity 0.5 drops
  EXPECT_EQ(moe.balance_loss(), loss);
  EXPECT_EQ(device.bytes_to_host() - before, (kExperts + 2) * sizeof(int64_t));
}

}  // namespace
}  // namespace tessera
