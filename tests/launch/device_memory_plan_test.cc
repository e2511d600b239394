// The GPU memory plan: the same model-state and activation formulas as the
// host check, against a model actually built from the config.
#include <gtest/gtest.h>

#include "launch/memory_fit.h"
#include "launch/model_setup.h"
#include "models/registry.h"
#include "runtime/base/errors.h"
#include "runtime/config/config.h"

namespace tessera {
namespace {

RunConfig TinyDit() {
  RunConfig config = *LoadRunConfig(TESSERA_SOURCE_DIR "/configs/dit_moe_tiny.textproto");
  config.mutable_train()->set_global_batch(8);
  return config;
}

TEST(DeviceMemoryPlan, ModelStateIsFiveFp32CopiesOfTheEstimatedParametersWithEma) {
  RunConfig config = TinyDit();
  const ModelSizeEstimate estimate = (*FindModelFamily(config))->estimate(config);
  // values, gradients, AdamW m and v, EMA: 4 bytes each.
  EXPECT_DOUBLE_EQ(PlanDeviceMemory(config, 1).state, 20 * estimate.parameters);
  // The estimate is a lower bound of the parameters the model builds.
  auto built = BuildModel(config);
  ASSERT_TRUE(built.ok()) << built.status();
  const double params = static_cast<double>(built->model->store().numel());
  EXPECT_LE(estimate.parameters, params);
  EXPECT_GE(estimate.parameters, 0.8 * params);
  config.mutable_optim()->set_ema_decay(0);
  EXPECT_DOUBLE_EQ(PlanDeviceMemory(config, 1).state, 16 * estimate.parameters);
  // Two ranks hold half each.
  EXPECT_DOUBLE_EQ(PlanDeviceMemory(config, 2).state, 8 * estimate.parameters);
}

TEST(DeviceMemoryPlan, ActivationsAndInputsGrowWithTheMicroBatch) {
  RunConfig config = TinyDit();
  const DeviceMemoryPlan eight = PlanDeviceMemory(config, 1);
  config.mutable_train()->set_global_batch(16);
  const DeviceMemoryPlan sixteen = PlanDeviceMemory(config, 1);
  EXPECT_GT(eight.activations, 0);
  EXPECT_DOUBLE_EQ(sixteen.activations, 2 * eight.activations);
  EXPECT_DOUBLE_EQ(sixteen.inputs, 2 * eight.inputs);
  EXPECT_DOUBLE_EQ(sixteen.state, eight.state);
  EXPECT_DOUBLE_EQ(eight.total(),
                   eight.state + eight.activations + eight.inputs + eight.workspace);
}

// A bf16 run holds the weights' bf16 copy (2 bytes per parameter) and bf16
// copies of activations besides everything an fp32 run holds; both plans
// (the device's and the host check's) count them, named.
TEST(DeviceMemoryPlan, Bf16RunsCountTheWeightAndActivationCopies) {
  RunConfig config = TinyDit();
  const ModelSizeEstimate estimate = (*FindModelFamily(config))->estimate(config);
  const DeviceMemoryPlan fp32 = PlanDeviceMemory(config, 1);
  EXPECT_EQ(fp32.bf16, 0);
  EXPECT_EQ(FormatDeviceMemoryPlan(fp32, 1, 1).find("bf16"), std::string::npos);
  config.mutable_train()->set_precision("bf16");
  const DeviceMemoryPlan bf16 = PlanDeviceMemory(config, 1);
  const double micro = static_cast<double>(config.train().global_batch());
  EXPECT_GT(estimate.bf16_activation_bytes_per_sample, 0);
  EXPECT_DOUBLE_EQ(bf16.bf16,
                   2 * estimate.parameters + micro * estimate.bf16_activation_bytes_per_sample);
  EXPECT_DOUBLE_EQ(bf16.total(), fp32.total() + bf16.bf16);
  EXPECT_DOUBLE_EQ(bf16.state, fp32.state);
  const std::string line = FormatDeviceMemoryPlan(bf16, size_t{2} << 30, size_t{4} << 30);
  EXPECT_NE(line.find("+ bf16 copies"), std::string::npos) << line;
  EXPECT_NE(line.find("weights (train.precision=bf16: 2 bytes x"), std::string::npos) << line;
  // Two ranks: a half of the weights each, as the state; the activations'
  // copies as the activations (half the micro-batch, a half of that).
  EXPECT_DOUBLE_EQ(PlanDeviceMemory(config, 2).bf16,
                   estimate.parameters + micro / 4 * estimate.bf16_activation_bytes_per_sample);

  // The host check: the same two terms, by name, and only in a bf16 run.
  auto term = [](const std::vector<MemoryTerm>& terms, const std::string& name) {
    for (const MemoryTerm& t : terms) {
      if (t.name == name) return t.bytes;
    }
    return -1.0;
  };
  const std::vector<MemoryTerm> host = TrainingMemoryTerms(config, 1);
  EXPECT_DOUBLE_EQ(term(host, "bf16 weight copy"), 2 * estimate.parameters);
  EXPECT_DOUBLE_EQ(term(host, "bf16 activation copies"),
                   micro * estimate.bf16_activation_bytes_per_sample);
  config.mutable_train()->set_precision("fp32");
  EXPECT_EQ(term(TrainingMemoryTerms(config, 1), "bf16 weight copy"), -1.0);
  EXPECT_EQ(TrainingMemoryTerms(config, 1).size() + 2, host.size());
}

TEST(DeviceMemoryPlan, ARunThatDoesNotFitIsAUsageErrorNamingTheDeviceAndLargestTerm) {
  DeviceMemoryPlan plan;
  plan.state = 3e9;
  plan.state_why = "123 parameters";
  plan.activations = 1e9;
  EXPECT_TRUE(CheckDeviceMemoryFits(plan, static_cast<size_t>(plan.total()) + 1, 0).ok());
  const absl::Status status = CheckDeviceMemoryFits(plan, size_t{2} << 30, 3);
  EXPECT_EQ(ExitCodeFor(status), 2) << status;
  EXPECT_NE(status.message().find("CUDA device 3"), std::string::npos) << status;
  EXPECT_NE(status.message().find("parameters, gradients and optimizer state"), std::string::npos)
      << status;
  EXPECT_NE(status.message().find("123 parameters"), std::string::npos) << status;
  const std::string line = FormatDeviceMemoryPlan(plan, size_t{2} << 30, size_t{4} << 30);
  EXPECT_NE(line.find("GPU memory plan"), std::string::npos) << line;
  EXPECT_NE(line.find("2.0 GiB free of 4.0 GiB"), std::string::npos) << line;
}

// HSTU's item table is a term of its own: rows, Adam's m and v and at
// most one gradient per row (16 bytes per element, Adagrad 8 + 4 / D), over
// the ranks of the table's group, outside "model state"; the placement
// rule puts it on the device when the whole plan fits (AUTO), always
// (DEVICE) or never (HOST), and a plan that does not fit with it names it.
TEST(DeviceMemoryPlan, HstusItemTableIsATermOfItsOwnPlacedWhereItFits) {
  RunConfig config = *LoadRunConfig(TESSERA_SOURCE_DIR "/configs/hstu_tiny.textproto");
  config.mutable_hstu()->set_num_items(1000000);  // 16 M elements of D = 16
  const ModelSizeEstimate estimate = (*FindModelFamily(config))->estimate(config);
  const double table = 1000000.0 * 16;
  EXPECT_DOUBLE_EQ(estimate.sparse_parameters, table);
  const DeviceMemoryPlan one = PlanDeviceMemory(config, 1);
  EXPECT_DOUBLE_EQ(one.sparse, 16 * table);
  EXPECT_DOUBLE_EQ(one.state, 16 * (estimate.parameters - table));
  EXPECT_DOUBLE_EQ(PlanDeviceMemory(config, 4).sparse, 4 * table);  // a quarter of the rows
  config.mutable_hstu()->set_table_shards(2);
  EXPECT_DOUBLE_EQ(PlanDeviceMemory(config, 4).sparse, 8 * table);  // two copies over 2 ranks
  config.mutable_hstu()->set_table_shards(0);
  config.mutable_hstu()->set_table_optimizer(HstuConfig::ROWWISE_ADAGRAD);
  EXPECT_DOUBLE_EQ(PlanDeviceMemory(config, 1).sparse, (8 + 4.0 / 16) * table);
  config.mutable_hstu()->set_table_optimizer(HstuConfig::ADAM);

  const size_t roomy = static_cast<size_t>(one.total()) + 1;
  const size_t tight = static_cast<size_t>(one.total() - one.sparse) + 1;  // all but the table
  DeviceMemoryPlan plan = one;
  EXPECT_NE(PlaceSparseParameters(config, plan, roomy).find("on the device"), std::string::npos);
  EXPECT_TRUE(plan.sparse_on_device);
  const std::string kept = PlaceSparseParameters(config, plan, tight);
  EXPECT_FALSE(plan.sparse_on_device);
  EXPECT_NE(kept.find("host memory"), std::string::npos) << kept;
  EXPECT_TRUE(CheckDeviceMemoryFits(plan, tight, 0).ok());  // without the table it fits
  EXPECT_NE(FormatDeviceMemoryPlan(plan, tight, tight).find("in host memory"), std::string::npos);
  config.mutable_hstu()->set_table_placement(HstuConfig::HOST);
  PlaceSparseParameters(config, plan, roomy);
  EXPECT_FALSE(plan.sparse_on_device);
  config.mutable_hstu()->set_table_placement(HstuConfig::DEVICE);
  PlaceSparseParameters(config, plan, tight);
  EXPECT_TRUE(plan.sparse_on_device);
  EXPECT_NE(FormatDeviceMemoryPlan(plan, tight, tight).find("+ item table"), std::string::npos);
  const absl::Status status = CheckDeviceMemoryFits(plan, tight, 1);
  EXPECT_EQ(ExitCodeFor(status), 2) << status;
  EXPECT_NE(status.message().find("item table"), std::string::npos) << status;
  EXPECT_NE(status.message().find("table_placement=HOST"), std::string::npos) << status;
}

}  // namespace
}  // namespace tessera
