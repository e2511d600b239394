// Multi-rank training on a device whose memory the host cannot read,
// without a GPU: `tessera train`'s code path under mpirun on a pretend
// device (host memory that calls itself a GPU's and checks the side of
// every host/device copy), where launch gives every group the MPI
// collectives staged through host memory: the tiny DiT-MoE at dp2, dp2 with
// ZeRO-1, tp2 and ep2, the tiny HSTU (its item table in host memory over
// the MPI groups) at dp2, tp2 and sp2, and the tiny Mamba-2 hybrid at tp2
// (the vocabulary-parallel loss across ranks), sp2 in both Mamba modes
// (state passing and all-to-all; Ulysses attention) and ep2. Each layout
// must log the same losses and gradient norms, bit for bit, as the plain
// CPU run of the same layout (whose equality with one process the e2e
// oracles check), the Mamba runs must end on the same checkpoint, and the
// CPU run must use the MPI groups themselves.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "data/synthetic_images.h"
#include "data/synthetic_interactions.h"
#include "data/synthetic_tokens.h"
#include "launch/distributed.h"
#include "launch/train_command.h"
#include "runtime/config/config.h"
#include "tests/launch/device_run_util.h"
#include "tests/runtime/backend/pretend_device_backend.h"

namespace tessera {
namespace {

Distributed* g_distributed = nullptr;
// One folder per MPI job (every rank of a job sees the same namespace):
// rank 0 removes it at the start and the end, which a fixed name let a job
// of another checkout on the same machine do under this one's runs.
const std::string& Base() {
  static const std::string base = [] {
    const char* job = std::getenv("PMIX_NAMESPACE");
    if (job == nullptr) job = std::getenv("OMPI_MCA_ess_base_jobid");
    return std::string("/tmp/tessera_device_collectives") + (job ? std::string("_") + job : "");
  }();
  return base;
}

// "step", "loss", "aux_loss" and "grad_norm" of each line, as written.
std::vector<std::string> LoggedNumbers(const std::string& path) {
  return testing::LoggedFields(
      path, {"\"step\":", "\"loss\":", "\"aux_loss\":", "\"grad_norm\":"});
}

RunConfig TinyDitConfig(const std::string& run) {
  RunConfig config = *LoadRunConfig(TESSERA_SOURCE_DIR "/configs/dit_moe_tiny.textproto");
  config.mutable_data()->set_dir(Base() + "/data");
  config.mutable_train()->set_run_dir(Base() + "/" + run);
  config.mutable_train()->set_steps(3);
  config.mutable_train()->set_threads(1);
  config.mutable_dit_moe()->set_sample_grid_per_class(0);
  config.mutable_checkpoint()->set_every(0);
  return config;
}

// The tiny HSTU on the interactions data set, 3 steps.
RunConfig TinyHstuConfig(const std::string& run) {
  RunConfig config = *LoadRunConfig(TESSERA_SOURCE_DIR "/configs/hstu_tiny.textproto");
  config.mutable_data()->set_dir(Base() + "/interactions");
  config.mutable_train()->set_run_dir(Base() + "/" + run);
  config.mutable_train()->set_steps(3);
  config.mutable_train()->set_global_batch(16);
  config.mutable_train()->set_threads(1);
  config.mutable_checkpoint()->set_every(0);
  return config;
}

// Whether the world holds an even number of ranks, from MPI itself (the
// mesh behind g_distributed->size() exists only after a first run, so a
// test run alone would see 1).
bool EvenWorld() {
  int world = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  return world % 2 == 0;
}

// One run on `backend` with this process's MPI; the groups of the previous
// run go first (device communicators before the MPI groups they use).
absl::Status TrainOn(const RunConfig& config, Backend& backend) {
  Distributed& d = *g_distributed;
  d.world_device.reset();
  d.dense_device.reset();
  d.expert_device.reset();
  d.expert.reset();
  d.dense.reset();
  d.world.reset();
  d.backend = &backend;
  return TrainRun(config, d);
}

void ExpectDeviceRunEqualsCpuRun(const std::string& name, const RunConfig& cpu_config,
                                 const RunConfig& device_config) {
  const absl::Status on_cpu = TrainOn(cpu_config, HostBackend());
  ASSERT_TRUE(on_cpu.ok()) << on_cpu;
  EXPECT_EQ(g_distributed->device_comm, DeviceComm::kHost);
  EXPECT_EQ(g_distributed->dense_device, nullptr);  // the MPI group itself, no staging
  PretendDeviceBackend device;
  const absl::Status on_device = TrainOn(device_config, device);
  ASSERT_TRUE(on_device.ok()) << on_device;
  EXPECT_EQ(g_distributed->device_comm, DeviceComm::kStagedMpi);
  EXPECT_GT(device.bytes_to_host(), 0u);
  if (g_distributed->rank() != 0) return;
  const std::vector<std::string> cpu =
      LoggedNumbers(cpu_config.train().run_dir() + "/metrics.jsonl");
  ASSERT_GE(cpu.size(), 3u) << name;  // 3 steps (and an evaluation's line)
  EXPECT_EQ(LoggedNumbers(device_config.train().run_dir() + "/metrics.jsonl"), cpu) << name;
}

TEST(DeviceCollectives, DataParallelOnAPretendDeviceEqualsTheCpuRun) {
  ExpectDeviceRunEqualsCpuRun("dp", TinyDitConfig("dp_cpu"), TinyDitConfig("dp_device"));
}

TEST(DeviceCollectives, ZeroOneOnAPretendDeviceEqualsTheCpuRun) {
  RunConfig cpu = TinyDitConfig("zero_cpu"), device = TinyDitConfig("zero_device");
  cpu.mutable_parallel()->set_zero_stage(1);
  device.mutable_parallel()->set_zero_stage(1);
  ExpectDeviceRunEqualsCpuRun("zero1", cpu, device);
}

// Tensor and expert parallelism move activations and expert tokens over the
// device communicators, and their MoE backward works on device memory.
TEST(DeviceCollectives, TensorParallelOnAPretendDeviceEqualsTheCpuRun) {
  if (!EvenWorld()) GTEST_SKIP() << "tp2 needs an even number of ranks";
  RunConfig cpu = TinyDitConfig("tp_cpu"), device = TinyDitConfig("tp_device");
  cpu.mutable_parallel()->set_tp(2);
  device.mutable_parallel()->set_tp(2);
  ExpectDeviceRunEqualsCpuRun("tp2", cpu, device);
}

TEST(DeviceCollectives, ExpertParallelOnAPretendDeviceEqualsTheCpuRun) {
  if (!EvenWorld()) GTEST_SKIP() << "ep2 needs an even number of ranks";
  RunConfig cpu = TinyDitConfig("ep_cpu"), device = TinyDitConfig("ep_device");
  cpu.mutable_parallel()->set_ep(2);
  device.mutable_parallel()->set_ep(2);
  ExpectDeviceRunEqualsCpuRun("ep2", cpu, device);
}

// HSTU: the encoder and the item table on the device, the table
// row-sharded over both ranks (its rows and gradients exchanged over the
// staged device groups, its ids over the MPI groups); dp2, tp2 (heads: the
// norm-gate's all-gathers and W_o's all-reduce on device buffers) and sp2
// (Ulysses: the all-to-alls on device buffers); dp2 with two copies of the
// table (model.hstu.table_shards=1: the copies' gradients summed on the
// device), and dp2 with the table kept in host memory
// (model.hstu.table_placement=HOST).
TEST(DeviceCollectives, HstuOnAPretendDeviceEqualsTheCpuRunAtDpTpAndSp) {
  if (!EvenWorld()) GTEST_SKIP() << "the layouts need an even number of ranks";
  for (const std::string layout : {"dp", "tp", "sp", "dp_copies", "dp_host"}) {
    RunConfig cpu = TinyHstuConfig("hstu_" + layout + "_cpu");
    RunConfig device = TinyHstuConfig("hstu_" + layout + "_device");
    for (RunConfig* config : {&cpu, &device}) {
      if (layout == "tp") config->mutable_parallel()->set_tp(2);
      if (layout == "sp") config->mutable_parallel()->set_sp(2);
      if (layout == "dp_copies") config->mutable_hstu()->set_table_shards(1);
    }
    if (layout == "dp_host") device.mutable_hstu()->set_table_placement(HstuConfig::HOST);
    // The validation ranking after the last step, against the table where
    // it lies (the device table's rows on the device).
    for (RunConfig* config : {&cpu, &device}) {
      config->mutable_data()->set_eval_dir(Base() + "/interactions");
      config->mutable_train()->set_eval_every(3);
    }
    ExpectDeviceRunEqualsCpuRun("hstu " + layout, cpu, device);
    if (g_distributed->rank() != 0) continue;
    const std::vector<std::string> cpu_eval =
        testing::LoggedFields(cpu.train().run_dir() + "/metrics.jsonl", {"\"val_"});
    ASSERT_TRUE(std::any_of(cpu_eval.begin(), cpu_eval.end(),
                            [](const std::string& kept) { return !kept.empty(); }))
        << layout << ": no evaluation logged";
    EXPECT_EQ(testing::LoggedFields(device.train().run_dir() + "/metrics.jsonl", {"\"val_"}),
              cpu_eval)
        << layout;
  }
}

// The tiny Mamba-2 hybrid (M*-ME: Mamba-2, attention, MLP, MoE), 3 steps
// of two micro-batches, a checkpoint at the end.
RunConfig TinyMambaConfig(const std::string& run) {
  RunConfig config = *LoadRunConfig(TESSERA_SOURCE_DIR "/configs/mamba_hybrid_tiny.textproto");
  config.mutable_data()->set_dir(Base() + "/tokens");
  config.mutable_train()->set_run_dir(Base() + "/" + run);
  config.mutable_train()->set_steps(3);
  config.mutable_train()->set_threads(1);
  config.mutable_train()->set_micro_batch(2);
  config.mutable_checkpoint()->set_every(3);
  return config;
}

void ExpectMambaLayoutEqualsCpu(const std::string& name,
                                const std::function<void(RunConfig&)>& layout) {
  if (!EvenWorld()) GTEST_SKIP() << name << " needs an even number of ranks";
  RunConfig cpu = TinyMambaConfig("mamba_" + name + "_cpu");
  RunConfig device = TinyMambaConfig("mamba_" + name + "_device");
  layout(cpu);
  layout(device);
  ExpectDeviceRunEqualsCpuRun("mamba " + name, cpu, device);
  if (::testing::Test::HasFatalFailure() || g_distributed->rank() != 0) return;
  testing::ExpectSameCheckpoint(cpu.train().run_dir() + "/checkpoints/step_00000003",
                                device.train().run_dir() + "/checkpoints/step_00000003");
}

// Megatron-style tp: heads and groups split, the vocabulary-parallel
// embedding and loss (statistics all-gathered on device buffers).
TEST(DeviceCollectives, MambaHybridTensorParallelOnAPretendDeviceEqualsTheCpuRun) {
  ExpectMambaLayoutEqualsCpu("tp2", [](RunConfig& c) { c.mutable_parallel()->set_tp(2); });
}

// The conv halo, the SSM states and their gradients along the sp chain.
TEST(DeviceCollectives, MambaHybridStatePassingSequenceParallelOnAPretendDeviceEqualsTheCpuRun) {
  ExpectMambaLayoutEqualsCpu("sp2_state_passing", [](RunConfig& c) {
    c.mutable_parallel()->set_sp(2);
    c.mutable_mamba_hybrid()->set_mamba_sp_mode(MambaHybridConfig::STATE_PASSING);
  });
}

// The head exchange around the Mamba layers' conv and scan.
TEST(DeviceCollectives, MambaHybridAllToAllSequenceParallelOnAPretendDeviceEqualsTheCpuRun) {
  ExpectMambaLayoutEqualsCpu("sp2_all_to_all", [](RunConfig& c) {
    c.mutable_parallel()->set_sp(2);
    c.mutable_mamba_hybrid()->set_mamba_sp_mode(MambaHybridConfig::ALL_TO_ALL);
  });
}

TEST(DeviceCollectives, MambaHybridExpertParallelOnAPretendDeviceEqualsTheCpuRun) {
  ExpectMambaLayoutEqualsCpu("ep2", [](RunConfig& c) { c.mutable_parallel()->set_ep(2); });
}

}  // namespace
}  // namespace tessera

// MPI comes from StartMpi, as in `tessera train` under mpirun.
int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto distributed = tessera::StartMpi();
  if (!distributed.ok()) {
    std::fprintf(stderr, "MPI start-up failed: %s\n", distributed.status().ToString().c_str());
    return 1;
  }
  tessera::g_distributed = &*distributed;
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) {
    std::filesystem::remove_all(tessera::Base());
    if (!tessera::SynthesizeImages(tessera::Base() + "/data", 64, 1, 8, 8, 10, 3, 64).ok()) {
      return 1;
    }
    tessera::ClusteredInteractionsSpec spec;
    spec.num_users = 64;
    spec.num_items = 200;
    spec.max_length = 30;
    if (!tessera::SynthesizeInteractions(tessera::Base() + "/interactions", spec).ok()) return 1;
    tessera::MarkovLanguageSpec language;
    language.num_documents = 64;
    language.min_length = 24;
    language.max_length = 96;
    language.seed = 3;
    if (!tessera::SynthesizeMarkovLanguage(tessera::Base() + "/tokens", language).ok()) return 1;
  }
  MPI_Barrier(MPI_COMM_WORLD);
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (rank != 0) delete listeners.Release(listeners.default_result_printer());
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0, any_failed = failed;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0) std::filesystem::remove_all(tessera::Base());
  return any_failed;
}
