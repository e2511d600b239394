// The MPI group's collectives on device buffers staged through host memory,
// on a pretend device (host memory that calls itself a GPU's and checks the
// side of every copy), against naive references built from every rank's
// deterministic inputs; outputs are poisoned with NaN first. Runs at any
// world size (CTest: 1 to 4 ranks).
#include "parallel/comm/staged_communicator.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "parallel/comm/mpi_communicator.h"
#include "tests/parallel/comm/mpi_test_main.h"
#include "tests/runtime/backend/pretend_device_backend.h"

namespace tessera::parallel {
namespace {

using testing::MpiForTests;

constexpr size_t kSizes[] = {0, 1, 7, 1023};
constexpr float kPoison = std::numeric_limits<float>::quiet_NaN();

// Small integers times 0.5: exact, so sums in any order are exact too.
float Input(int rank, size_t i, int salt) {
  return 0.5f * static_cast<float>(static_cast<int>((rank * 131 + i * 7 + salt * 17) % 23) - 11);
}

class StagedCommunicatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto world = MpiForTests()->CreateWorld(absl::Seconds(30));
    ASSERT_TRUE(world.ok()) << world.status();
    world_ = std::move(*world);
    staged_ = std::make_unique<StagedCommunicator>(*world_, device_);
  }
  void TearDown() override {
    for (void* buffer : buffers_) device_.Free(buffer);
  }

  // A device buffer holding `values` (at least one element, so that the
  // pointer is a real allocation even when `values` is empty).
  float* Upload(const std::vector<float>& values) {
    void* buffer = nullptr;
    EXPECT_TRUE(device_.Allocate(std::max<size_t>(values.size(), 1) * sizeof(float), &buffer).ok());
    buffers_.push_back(buffer);
    device_.CopyToDevice(buffer, values.data(), values.size() * sizeof(float));
    return static_cast<float*>(buffer);
  }
  float* Poisoned(size_t count) { return Upload(std::vector<float>(count, kPoison)); }
  std::vector<float> Download(const float* buffer, size_t count) {
    std::vector<float> host(count);
    device_.CopyToHost(host.data(), buffer, count * sizeof(float));
    return host;
  }
  std::vector<float> Inputs(int rank, size_t count, int salt) {
    std::vector<float> values(count);
    for (size_t i = 0; i < count; ++i) values[i] = Input(rank, i, salt);
    return values;
  }
  void Run(absl::StatusOr<std::unique_ptr<Work>> work) {
    const absl::Status status = staged_->CompleteOnDevice(std::move(work));
    ASSERT_TRUE(status.ok()) << status;
  }
  int me() const { return world_->rank(); }
  int n() const { return world_->size(); }

  PretendDeviceBackend device_;
  std::unique_ptr<MpiCommunicator> world_;
  std::unique_ptr<StagedCommunicator> staged_;
  std::vector<void*> buffers_;
};

TEST_F(StagedCommunicatorTest, AllReduceMatchesNaiveReferenceForSumAndMax) {
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
    for (size_t count : kSizes) {
      float* data = Upload(Inputs(me(), count, 1));
      Run(staged_->AllReduce(data, count, DType::kF32, op));
      const std::vector<float> got = Download(data, count);
      for (size_t i = 0; i < count; ++i) {
        double want = op == ReduceOp::kMax ? -INFINITY : 0.0;
        for (int r = 0; r < n(); ++r) {
          want =
              op == ReduceOp::kMax ? std::max<double>(want, Input(r, i, 1)) : want + Input(r, i, 1);
        }
        ASSERT_EQ(got[i], want) << "count " << count << " i " << i;
      }
    }
  }
}

TEST_F(StagedCommunicatorTest, ReduceScatterInPlaceAndNotMatchesReference) {
  for (bool in_place : {false, true}) {
    for (size_t block : kSizes) {
      float* send = Upload(Inputs(me(), block * n(), 2));
      float* recv = in_place ? send + block * me() : Poisoned(block);
      Run(staged_->ReduceScatter(send, recv, block, DType::kF32, ReduceOp::kSum));
      const std::vector<float> got = Download(recv, block);
      for (size_t i = 0; i < block; ++i) {
        double want = 0;
        for (int r = 0; r < n(); ++r) want += Input(r, block * me() + i, 2);
        ASSERT_EQ(got[i], want) << "in place " << in_place << " block " << block << " i " << i;
      }
    }
  }
}

TEST_F(StagedCommunicatorTest, AllGatherInPlaceAndNotMatchesReference) {
  for (bool in_place : {false, true}) {
    for (size_t block : kSizes) {
      float* recv = Poisoned(block * n());
      float* send = in_place ? recv + block * me() : Upload(Inputs(me(), block, 3));
      if (in_place)
        device_.CopyToDevice(send, Inputs(me(), block, 3).data(), block * sizeof(float));
      Run(staged_->AllGather(send, recv, block, DType::kF32));
      const std::vector<float> got = Download(recv, block * n());
      for (int r = 0; r < n(); ++r) {
        for (size_t i = 0; i < block; ++i) {
          ASSERT_EQ(got[r * block + i], Input(r, i, 3)) << "in place " << in_place << " r " << r;
        }
      }
    }
  }
}

TEST_F(StagedCommunicatorTest, AllToAllAndAllToAllVMatchReference) {
  for (size_t block : kSizes) {
    // Element i of block q on rank r: Input(r, q * block + i).
    float* send = Upload(Inputs(me(), block * n(), 4));
    float* recv = Poisoned(block * n());
    Run(staged_->AllToAll(send, recv, block, DType::kF32));
    const std::vector<float> got = Download(recv, block * n());
    for (int r = 0; r < n(); ++r) {
      for (size_t i = 0; i < block; ++i) {
        ASSERT_EQ(got[r * block + i], Input(r, me() * block + i, 4)) << "block " << block;
      }
    }
  }
  // Rank q sends (q + r) % 3 elements to rank r, some of them none.
  const auto count = [](int from, int to) { return static_cast<size_t>((from + to) % 3); };
  std::vector<size_t> send_counts(n()), recv_counts(n());
  size_t send_total = 0, recv_total = 0;
  for (int r = 0; r < n(); ++r) {
    send_counts[r] = count(me(), r);
    recv_counts[r] = count(r, me());
    send_total += send_counts[r];
    recv_total += recv_counts[r];
  }
  float* send = Upload(Inputs(me(), send_total, 5));
  float* recv = Poisoned(recv_total);
  Run(staged_->AllToAllV(send, send_counts, recv, recv_counts, DType::kF32));
  const std::vector<float> got = Download(recv, recv_total);
  size_t at = 0;
  for (int r = 0; r < n(); ++r) {
    size_t offset = 0;  // where rank r's block for me starts in its send buffer
    for (int q = 0; q < me(); ++q) offset += count(r, q);
    for (size_t i = 0; i < recv_counts[r]; ++i) ASSERT_EQ(got[at++], Input(r, offset + i, 5));
  }
}

TEST_F(StagedCommunicatorTest, BroadcastFromEveryRoot) {
  for (int root = 0; root < n(); ++root) {
    float* data = me() == root ? Upload(Inputs(root, 7, 6)) : Poisoned(7);
    Run(staged_->Broadcast(data, 7, DType::kF32, root));
    EXPECT_EQ(Download(data, 7), Inputs(root, 7, 6)) << "root " << root;
  }
}

// The sp shard chain issues a receive and a send before waiting for either.
TEST_F(StagedCommunicatorTest, ShiftAlongARingWithBothOperationsInFlight) {
  const int to = (me() + 1) % n(), from = (me() + n() - 1) % n();
  float* send = Upload(Inputs(me(), 7, 7));
  float* recv = Poisoned(7);
  auto receiving = staged_->Recv(recv, 7, DType::kF32, from, 3);
  ASSERT_TRUE(receiving.ok()) << receiving.status();
  auto sending = staged_->Send(send, 7, DType::kF32, to, 3);
  ASSERT_TRUE(sending.ok()) << sending.status();
  ASSERT_TRUE((*receiving)->StreamWait(absl::Seconds(30)).ok());
  ASSERT_TRUE((*sending)->StreamWait(absl::Seconds(30)).ok());
  EXPECT_EQ(Download(recv, 7), Inputs(from, 7, 7));
}

TEST_F(StagedCommunicatorTest, StagingIsReusedAndHostValuesSkipIt) {
  float* data = Upload(Inputs(me(), 1023, 8));
  Run(staged_->AllReduce(data, 1023, DType::kF32, ReduceOp::kSum));
  const size_t held = staged_->staging_bytes();
  EXPECT_EQ(held, 1023 * sizeof(float));
  Run(staged_->AllReduce(data, 7, DType::kF32, ReduceOp::kSum));
  Run(staged_->AllReduce(data, 1023, DType::kF32, ReduceOp::kSum));
  EXPECT_EQ(staged_->staging_bytes(), held);  // one buffer, grown once
  EXPECT_EQ(&staged_->host(), world_.get());
  int64_t value = me();
  ASSERT_TRUE(staged_->host()
                  .Complete(staged_->host().AllReduce(&value, 1, DType::kI64, ReduceOp::kSum))
                  .ok());
  EXPECT_EQ(value, int64_t{n()} * (n() - 1) / 2);
}

}  // namespace
}  // namespace tessera::parallel
