// The rank-environment rules, against environments written out by hand from
// what srun and mpirun really set (seen on a one-node Slurm 22.05 with Open
// MPI 4.1, see tests/e2e/slurm.sh for the live check).
#include "launch/rank_environment.h"

#include <gtest/gtest.h>

#include "runtime/base/errors.h"

namespace tessera {
namespace {

// Task 2 of `srun -n 3 --mpi=pmix` on one node.
LauncherEnvironment SrunTask2Of3() {
  return {{"SLURM_JOB_ID", "7"},         {"SLURM_STEP_ID", "0"},
          {"SLURM_PROCID", "2"},         {"SLURM_NTASKS", "3"},
          {"SLURM_STEP_NUM_TASKS", "3"}, {"SLURM_LOCALID", "2"},
          {"SLURM_NODEID", "0"},         {"SLURM_STEP_TASKS_PER_NODE", "3"},
          {"SLURM_TASKS_PER_NODE", "3"}, {"PMIX_RANK", "2"}};
}

// Rank 1 of `mpirun -np 3` inside a batch job: the batch shell's SLURM_*
// values (rank 0 of 1 step) leak into every rank.
LauncherEnvironment MpirunRank1Of3InsideSlurm() {
  return {{"OMPI_COMM_WORLD_RANK", "1"},
          {"OMPI_COMM_WORLD_SIZE", "3"},
          {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
          {"OMPI_COMM_WORLD_LOCAL_SIZE", "3"},
          {"OMPI_MCA_ess_base_jobid", "213319681"},
          {"SLURM_JOB_ID", "7"},
          {"SLURM_PROCID", "0"},
          {"SLURM_LOCALID", "0"},
          {"SLURM_NTASKS", "3"},
          {"SLURM_NODEID", "0"},
          {"SLURM_TASKS_PER_NODE", "3"},
          {"PMIX_RANK", "1"}};
}

TEST(DetectLauncher, OpenMpiVariablesWinOverInheritedSlurmOnes) {
  EXPECT_EQ(DetectLauncher(MpirunRank1Of3InsideSlurm()), Launcher::kOpenMpi);
  EXPECT_EQ(DetectLauncher(SrunTask2Of3()), Launcher::kSrun);
  EXPECT_EQ(DetectLauncher({}), Launcher::kNone);
  EXPECT_EQ(DetectLauncher({{"PMI_RANK", "0"}, {"PMI_SIZE", "2"}}), Launcher::kOther);
  // A batch shell (SLURM_PROCID but no step) is not an srun task.
  EXPECT_EQ(DetectLauncher({{"SLURM_JOB_ID", "7"}, {"SLURM_PROCID", "0"}}), Launcher::kNone);
}

TEST(ParseSlurmTasksPerNode, ExpandsRepeatsInOrder) {
  auto counts = ParseSlurmTasksPerNode("2(x3),1");
  ASSERT_TRUE(counts.ok()) << counts.status();
  EXPECT_EQ(*counts, (std::vector<int>{2, 2, 2, 1}));
  EXPECT_EQ(*ParseSlurmTasksPerNode("4"), (std::vector<int>{4}));
  EXPECT_EQ(*ParseSlurmTasksPerNode("1,3(x2)"), (std::vector<int>{1, 3, 3}));
}

TEST(ParseSlurmTasksPerNode, RejectsMalformedListsAsUsageErrors) {
  for (const char* bad : {"", "x", "2(x)", "2(x0)", "2(x3", "-1", "2,,1"}) {
    auto counts = ParseSlurmTasksPerNode(bad);
    EXPECT_FALSE(counts.ok()) << bad;
    EXPECT_EQ(ExitCodeFor(counts.status()), 2) << bad;
  }
}

TEST(CheckRankEnvironment, SrunTaskThatMatchesMpiChecksAllFourQuantities) {
  auto checked = CheckRankEnvironment({2, 3, 2, 3}, SrunTask2Of3());
  ASSERT_TRUE(checked.ok()) << checked.status();
  EXPECT_EQ(*checked, (std::vector<std::string>{"SLURM_PROCID", "SLURM_STEP_NUM_TASKS",
                                                "SLURM_LOCALID", "SLURM_STEP_TASKS_PER_NODE"}));
}

TEST(CheckRankEnvironment, MpirunInsideSlurmIgnoresInheritedSlurmValues) {
  auto checked = CheckRankEnvironment({1, 3, 1, 3}, MpirunRank1Of3InsideSlurm());
  ASSERT_TRUE(checked.ok()) << checked.status();
  EXPECT_EQ(*checked,
            (std::vector<std::string>{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                                      "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"}));
}

// Each mismatch names the variable, its value and MPI's value.
void ExpectMismatch(const RankLayout& mpi, const LauncherEnvironment& env,
                    const std::string& variable_and_value, const std::string& mpi_says) {
  auto checked = CheckRankEnvironment(mpi, env);
  ASSERT_FALSE(checked.ok()) << variable_and_value;
  EXPECT_EQ(ExitCodeFor(checked.status()), 2);
  const std::string message(checked.status().message());
  EXPECT_NE(message.find(variable_and_value), std::string::npos) << message;
  EXPECT_NE(message.find("MPI says " + mpi_says), std::string::npos) << message;
}

TEST(CheckRankEnvironment, EachSrunMismatchNamesVariableValueAndMpiValue) {
  LauncherEnvironment env = SrunTask2Of3();
  env["SLURM_LOCALID"] = std::string("7");  // not a literal: GCC 12 -Wrestrict false positive
  ExpectMismatch({2, 3, 2, 3}, env, "SLURM_LOCALID=7", "local rank 2");
  // N singletons from `srun --mpi=none`: MPI sees a world of one.
  ExpectMismatch({0, 1, 0, 1}, SrunTask2Of3(), "SLURM_PROCID=2", "world rank 0");
  ExpectMismatch({2, 4, 2, 3}, SrunTask2Of3(), "SLURM_STEP_NUM_TASKS=3", "world size 4");
  ExpectMismatch({2, 3, 2, 4}, SrunTask2Of3(), "SLURM_STEP_TASKS_PER_NODE[SLURM_NODEID=0]=3",
                 "local size 4");
  env = SrunTask2Of3();
  env["SLURM_PROCID"] = "two";
  ExpectMismatch({2, 3, 2, 3}, env, "SLURM_PROCID=two", "world rank 2");
}

TEST(CheckRankEnvironment, SrunLocalSizeUsesThisNodesEntryOfTheList) {
  // Node 2 of "2(x3),1" is a 2-task node: local size 2 passes, 1 fails.
  LauncherEnvironment env = {{"SLURM_STEP_ID", "0"}, {"SLURM_PROCID", "5"},
                             {"SLURM_NODEID", "2"},  {"SLURM_LOCALID", "1"},
                             {"SLURM_NTASKS", "7"},  {"SLURM_STEP_TASKS_PER_NODE", "2(x3),1"}};
  EXPECT_TRUE(CheckRankEnvironment({5, 7, 1, 2}, env).ok());
  ExpectMismatch({5, 7, 1, 1}, env, "SLURM_STEP_TASKS_PER_NODE[SLURM_NODEID=2]=2", "local size 1");
  // Without a step list the job's list is used; size falls back to SLURM_NTASKS.
  env.erase("SLURM_STEP_TASKS_PER_NODE");
  env["SLURM_TASKS_PER_NODE"] = "2(x3),3";
  ExpectMismatch({5, 7, 1, 2},
                 {{"SLURM_STEP_ID", "0"},
                  {"SLURM_PROCID", "5"},
                  {"SLURM_NODEID", "3"},
                  {"SLURM_TASKS_PER_NODE", "2(x3),3"}},
                 "SLURM_TASKS_PER_NODE[SLURM_NODEID=3]=3", "local size 2");
  ExpectMismatch({5, 8, 1, 2}, env, "SLURM_NTASKS=7", "world size 8");
  // A node id past the end of the list is reported, not read out of bounds.
  env["SLURM_NODEID"] = "4";
  auto checked = CheckRankEnvironment({5, 7, 1, 2}, env);
  ASSERT_FALSE(checked.ok());
  EXPECT_NE(checked.status().message().find("SLURM_NODEID=4"), absl::string_view::npos);
}

TEST(CheckRankEnvironment, EachOpenMpiMismatchNamesVariableValueAndMpiValue) {
  const LauncherEnvironment env = MpirunRank1Of3InsideSlurm();
  ExpectMismatch({2, 3, 1, 3}, env, "OMPI_COMM_WORLD_RANK=1", "world rank 2");
  ExpectMismatch({1, 2, 1, 3}, env, "OMPI_COMM_WORLD_SIZE=3", "world size 2");
  ExpectMismatch({1, 3, 0, 3}, env, "OMPI_COMM_WORLD_LOCAL_RANK=1", "local rank 0");
  ExpectMismatch({1, 3, 1, 2}, env, "OMPI_COMM_WORLD_LOCAL_SIZE=3", "local size 2");
}

TEST(CheckRankEnvironment, NoLauncherOrUnsetVariablesCheckNothing) {
  auto checked = CheckRankEnvironment({0, 1, 0, 1}, {});
  ASSERT_TRUE(checked.ok());
  EXPECT_TRUE(checked->empty());
  checked = CheckRankEnvironment({0, 2, 0, 2}, {{"OMPI_COMM_WORLD_SIZE", "2"}});
  ASSERT_TRUE(checked.ok());
  EXPECT_EQ(*checked, std::vector<std::string>{"OMPI_COMM_WORLD_SIZE"});
}

TEST(DeviceForLocalRank, OneGpuPerLocalRankOrCpu) {
  EXPECT_EQ(*DeviceForLocalRank(true, 0, 4, 0), -1);  // no GPU: the CPU
  EXPECT_EQ(*DeviceForLocalRank(true, 3, 4, 4), 3);
  EXPECT_EQ(*DeviceForLocalRank(true, 1, 2, 8), 1);  // fewer ranks than GPUs
  EXPECT_EQ(*DeviceForLocalRank(true, 2, 4, 1), 0);  // one bound GPU per task
  EXPECT_EQ(*DeviceForLocalRank(true, 0, 1, 1), 0);
}

// A CPU run binds no GPU, so any number of ranks may share a node with a
// few GPUs (before, 5 CPU ranks beside 4 GPUs were refused).
TEST(DeviceForLocalRank, RunWithoutGpuBindsNoneAndRefusesNoRankCount) {
  EXPECT_EQ(*DeviceForLocalRank(false, 4, 5, 4), -1);
  EXPECT_EQ(*DeviceForLocalRank(false, 3, 4, 4), -1);
  EXPECT_EQ(*DeviceForLocalRank(false, 0, 1, 0), -1);
}

TEST(DeviceForLocalRank, MoreRanksThanSeveralGpusIsAUsageError) {
  auto device = DeviceForLocalRank(true, 4, 5, 4);
  ASSERT_FALSE(device.ok());
  EXPECT_EQ(ExitCodeFor(device.status()), 2);
  EXPECT_NE(device.status().message().find("5 ranks on this node but 4 GPUs"),
            absl::string_view::npos);
}

}  // namespace
}  // namespace tessera
