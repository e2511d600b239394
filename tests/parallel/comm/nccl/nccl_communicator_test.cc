// The NCCL backend against naive references, on CUDA buffers. Skipped
// without a GPU. One H200 allows only size-1 NCCL groups (NCCL refuses two
// ranks on one GPU), so CTest runs it at -np 1; the bodies are written for
// any size so that a multi-GPU machine checks the exchanges too.
#include "parallel/comm/nccl/nccl_communicator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/match.h"
#include "parallel/comm/mpi_runtime.h"
#include "runtime/backend/device_select.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/kernels/cuda/device.h"
#include "tests/parallel/comm/mpi_test_main.h"

namespace tessera::parallel {
namespace {

using cuda::DeviceBuffer;
using testing::MpiForTests;

constexpr size_t kSizes[] = {0, 1, 7, 1023};

// Small integers times 0.5: exact in f32 and bf16, so sums are exact too.
float Input(int rank, size_t i, int salt) {
  return 0.5f * static_cast<float>(static_cast<int>((rank * 131 + i * 7 + salt * 17) % 23) - 11);
}

class NcclCommunicatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const int devices = cuda::DeviceCount();
    if (devices == 0) GTEST_SKIP() << "no CUDA device";
    ASSERT_TRUE(cuda::SetDevice(MpiForTests()->world_rank() % devices).ok());
    auto world = MpiForTests()->CreateWorld(absl::Seconds(60));
    ASSERT_TRUE(world.ok()) << world.status();
    world_ = std::move(*world);
    auto nccl = NcclCommunicator::Create(*world_);
    ASSERT_TRUE(nccl.ok()) << nccl.status();
    comm_ = std::move(*nccl);
  }

  DeviceBuffer Upload(const std::vector<float>& host) {
    auto buffer = DeviceBuffer::Create(std::max<size_t>(1, host.size()) * sizeof(float));
    TESSERA_CHECK(buffer.ok());
    TESSERA_CHECK(buffer->CopyFromHost(host.data(), host.size() * sizeof(float)).ok());
    return std::move(*buffer);
  }
  std::vector<float> Download(const DeviceBuffer& buffer, size_t count) {
    std::vector<float> host(count);
    TESSERA_CHECK(buffer.CopyToHost(host.data(), count * sizeof(float)).ok());
    return host;
  }
  void Run(absl::StatusOr<std::unique_ptr<Work>> work) {
    const absl::Status status = comm_->Complete(std::move(work));
    ASSERT_TRUE(status.ok()) << status;
  }

  std::unique_ptr<MpiCommunicator> world_;
  std::unique_ptr<NcclCommunicator> comm_;
};

TEST_F(NcclCommunicatorTest, AllReduceMatchesNaiveReferenceForEveryOpAndSize) {
  const int me = comm_->rank(), n = comm_->size();
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax}) {
    for (size_t count : kSizes) {
      std::vector<float> host(count);
      for (size_t i = 0; i < count; ++i) host[i] = Input(me, i, 1);
      DeviceBuffer data = Upload(host);
      Run(comm_->AllReduce(data.data(), count, DType::kF32, op));
      const std::vector<float> got = Download(data, count);
      for (size_t i = 0; i < count; ++i) {
        double want = op == ReduceOp::kMax ? -INFINITY : 0.0;
        for (int r = 0; r < n; ++r) {
          want =
              op == ReduceOp::kMax ? std::max<double>(want, Input(r, i, 1)) : want + Input(r, i, 1);
        }
        if (op == ReduceOp::kAvg) want /= n;
        EXPECT_NEAR(got[i], want, 1e-6 * std::max(1.0, std::abs(want))) << i;
      }
    }
  }
}

TEST_F(NcclCommunicatorTest, ReduceScatterAllGatherAllToAllAndBroadcastMatchReferences) {
  const int me = comm_->rank(), n = comm_->size();
  for (size_t count : kSizes) {
    std::vector<float> host(count * n);
    for (size_t i = 0; i < host.size(); ++i) host[i] = Input(me, i, 2);
    DeviceBuffer send = Upload(host), recv = Upload(std::vector<float>(count * n));

    Run(comm_->ReduceScatter(send.data(), recv.data(), count, DType::kF32, ReduceOp::kSum));
    std::vector<float> got = Download(recv, count);
    for (size_t i = 0; i < count; ++i) {
      double want = 0;
      for (int r = 0; r < n; ++r) want += Input(r, me * count + i, 2);
      EXPECT_EQ(got[i], want) << "reduce-scatter " << i;
    }

    Run(comm_->AllGather(send.data(), recv.data(), count, DType::kF32));
    got = Download(recv, count * n);
    for (int r = 0; r < n; ++r) {
      for (size_t i = 0; i < count; ++i) EXPECT_EQ(got[r * count + i], Input(r, i, 2));
    }

    Run(comm_->AllToAll(send.data(), recv.data(), count, DType::kF32));
    got = Download(recv, count * n);
    for (int q = 0; q < n; ++q) {
      for (size_t i = 0; i < count; ++i) EXPECT_EQ(got[q * count + i], Input(q, me * count + i, 2));
    }

    Run(comm_->Broadcast(send.data(), count, DType::kF32, n - 1));
    got = Download(send, count);
    for (size_t i = 0; i < count; ++i) EXPECT_EQ(got[i], Input(n - 1, i, 2));
  }
}

TEST_F(NcclCommunicatorTest, AllToAllVSkipsEmptyPairs) {
  const int me = comm_->rank(), n = comm_->size();
  auto pair_count = [](int q, int r) { return static_cast<size_t>((q + 2 * r + 1) % 3) * 5; };
  std::vector<size_t> send_counts(n), recv_counts(n);
  std::vector<float> host;
  size_t recv_total = 0;
  for (int r = 0; r < n; ++r) {
    send_counts[r] = pair_count(me, r);
    recv_counts[r] = pair_count(r, me);
    recv_total += recv_counts[r];
    for (size_t j = 0; j < send_counts[r]; ++j) host.push_back(Input(me, r * 1000 + j, 3));
  }
  DeviceBuffer send = Upload(host), recv = Upload(std::vector<float>(recv_total));
  Run(comm_->AllToAllV(send.data(), send_counts, recv.data(), recv_counts, DType::kF32));
  const std::vector<float> got = Download(recv, recv_total);
  size_t offset = 0;
  for (int q = 0; q < n; ++q) {
    for (size_t j = 0; j < recv_counts[q]; ++j)
      EXPECT_EQ(got[offset + j], Input(q, me * 1000 + j, 3));
    offset += recv_counts[q];
  }
}

TEST_F(NcclCommunicatorTest, Bf16ReducesAndBarrierCompletes) {
  const int me = comm_->rank(), n = comm_->size();
  std::vector<uint16_t> host(7);
  for (size_t i = 0; i < host.size(); ++i) host[i] = FloatToBF16(Input(me, i, 4));
  auto data = DeviceBuffer::Create(host.size() * 2);
  ASSERT_TRUE(data.ok());
  ASSERT_TRUE(data->CopyFromHost(host.data(), host.size() * 2).ok());
  Run(comm_->AllReduce(data->data(), host.size(), DType::kBF16, ReduceOp::kSum));
  ASSERT_TRUE(data->CopyToHost(host.data(), host.size() * 2).ok());
  for (size_t i = 0; i < host.size(); ++i) {
    double want = 0;
    for (int r = 0; r < n; ++r) want += Input(r, i, 4);
    EXPECT_EQ(BF16ToFloat(host[i]), want) << i;  // small halves: exact in bf16
  }
  Run(comm_->Barrier());
}

TEST_F(NcclCommunicatorTest, SendRecvRingAlternatesToAvoidStreamDeadlock) {
  const int me = comm_->rank(), n = comm_->size();
  if (n < 2) GTEST_SKIP() << "needs two GPUs";
  std::vector<float> host(7);
  for (size_t i = 0; i < host.size(); ++i) host[i] = Input(me, i, 5);
  DeviceBuffer send = Upload(host), recv = Upload(std::vector<float>(7));
  const int next = (me + 1) % n, previous = (me + n - 1) % n;
  // One stream serialises Send and Recv: even ranks send first, odd ranks receive first.
  if (me % 2 == 0) {
    Run(comm_->Send(send.data(), 7, DType::kF32, next, 0));
    Run(comm_->Recv(recv.data(), 7, DType::kF32, previous, 0));
  } else {
    Run(comm_->Recv(recv.data(), 7, DType::kF32, previous, 0));
    Run(comm_->Send(send.data(), 7, DType::kF32, next, 0));
  }
  const std::vector<float> got = Download(recv, 7);
  for (size_t i = 0; i < 7; ++i) EXPECT_EQ(got[i], Input(previous, i, 5));
}

TEST_F(NcclCommunicatorTest, UnmatchedReceiveFailsWithCommunicationErrorAndAborts) {
  if (comm_->size() != 1) GTEST_SKIP() << "relies on a lone receive from itself";
  DeviceBuffer data = Upload(std::vector<float>(4));
  auto work = comm_->Recv(data.data(), 4, DType::kF32, 0, 0);  // nobody sends
  absl::Status status = work.ok() ? (*work)->Wait(absl::Milliseconds(500)) : work.status();
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(ExitCodeFor(status), 5) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "Recv of 4 x f32 (16 bytes)")) << status;
}

// A communicator ordered with a CudaBackend's compute stream: the collective
// reads what compute ops queued before it wrote, and compute ops queued after
// CompleteOnDevice read its result, with no host wait in between.
TEST_F(NcclCommunicatorTest, OrderedWithTheComputeStreamWithoutHostWaits) {
  auto backend = CreateCudaBackend(MpiForTests()->world_rank() % cuda::DeviceCount());
  ASSERT_TRUE(backend.ok()) << backend.status();
  auto ordered = NcclCommunicator::Create(*world_, backend->get());
  ASSERT_TRUE(ordered.ok()) << ordered.status();
  EXPECT_EQ(&(*ordered)->host(), world_.get());
  const int me = (*ordered)->rank(), n = (*ordered)->size();
  constexpr size_t kCount = 1 << 20;  // large enough that unordered reads would show
  std::vector<float> host(kCount);
  for (size_t i = 0; i < kCount; ++i) host[i] = Input(me, i, 6);
  void* data = nullptr;
  ASSERT_TRUE((*backend)->Allocate(kCount * sizeof(float), &data).ok());
  float* values = static_cast<float*>(data);
  (*backend)->CopyToDevice(values, host.data(), kCount * sizeof(float));
  (*backend)->Scale(values, kCount, 4.0f);  // produced on the compute stream
  ASSERT_TRUE(
      (*ordered)
          ->CompleteOnDevice((*ordered)->AllReduce(values, kCount, DType::kF32, ReduceOp::kSum))
          .ok());
  (*backend)->Scale(values, kCount, 0.25f);  // consumed on the compute stream
  (*backend)->CopyToHost(host.data(), values, kCount * sizeof(float));
  ASSERT_TRUE((*backend)->Synchronize().ok());
  (*backend)->Free(data);
  for (size_t i = 0; i < kCount; i += 4099) {
    double want = 0;
    for (int r = 0; r < n; ++r) want += Input(r, i, 6);
    ASSERT_EQ(host[i], want) << i;
  }
}

// A collective the compute stream waits for, which never completes, is
// caught by the group's next operation after its deadline: exit code 5
// naming it, and the communicator aborted.
TEST_F(NcclCommunicatorTest, AStreamWaitedCollectiveThatNeverCompletesEndsTheNextOperation) {
  if (comm_->size() != 1) GTEST_SKIP() << "relies on a lone receive from itself";
  auto backend = CreateCudaBackend(MpiForTests()->world_rank() % cuda::DeviceCount());
  ASSERT_TRUE(backend.ok()) << backend.status();
  auto ordered = NcclCommunicator::Create(*world_, backend->get());
  ASSERT_TRUE(ordered.ok()) << ordered.status();
  DeviceBuffer data = Upload(std::vector<float>(4));
  auto work = (*ordered)->Recv(data.data(), 4, DType::kF32, 0, 0);  // nobody sends
  ASSERT_TRUE(work.ok()) << work.status();
  ASSERT_TRUE((*work)->StreamWait(absl::Milliseconds(200)).ok());  // the host goes on
  absl::SleepFor(absl::Milliseconds(400));
  const absl::Status status = (*ordered)->Barrier().status();
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(ExitCodeFor(status), 5) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "Recv of 4 x f32 (16 bytes)")) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "aborted")) << status;
}

}  // namespace
}  // namespace tessera::parallel
