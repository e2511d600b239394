#include "data/prefetcher.h"

#include <atomic>
#include <chrono>
#include <thread>

#include "gtest/gtest.h"

namespace tessera {
namespace {

TEST(Prefetcher, DeliversBatchesInProductionOrder) {
  int next = 0;
  Prefetcher<int> prefetcher(3, [&next]() -> absl::StatusOr<int> { return next++; });
  for (int i = 0; i < 100; ++i) {
    auto value = prefetcher.Next();
    ASSERT_TRUE(value.ok());
    EXPECT_EQ(*value, i);
  }
}

TEST(Prefetcher, AnErrorArrivesInPlaceOfItsBatchAndSticks) {
  int next = 0;
  Prefetcher<int> prefetcher(4, [&next]() -> absl::StatusOr<int> {
    if (next == 5) return absl::DataLossError("batch 5 is broken");
    return next++;
  });
  for (int i = 0; i < 5; ++i) EXPECT_EQ(*prefetcher.Next(), i);
  for (int i = 0; i < 3; ++i) {
    const absl::Status status = prefetcher.Next().status();
    EXPECT_EQ(status.message(), "batch 5 is broken");
  }
}

TEST(Prefetcher, NeverRunsMoreThanDepthAheadAndStopsWhenDestroyed) {
  std::atomic<int> produced{0};
  bool finished_on_io_thread = false;
  std::thread::id io_thread;
  {
    Prefetcher<int> prefetcher(
        2,
        [&]() -> absl::StatusOr<int> {
          io_thread = std::this_thread::get_id();
          return produced++;
        },
        [&] { finished_on_io_thread = std::this_thread::get_id() == io_thread; });
    EXPECT_EQ(produced.load(), 0);  // nothing before the first Next()
    EXPECT_EQ(*prefetcher.Next(), 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let the queue fill
    // One consumed, at most `depth` queued, at most one in flight.
    EXPECT_LE(produced.load(), 1 + 2 + 1);
  }  // destroyed with a full queue: must return
  EXPECT_TRUE(finished_on_io_thread);
}

TEST(Prefetcher, DestructionWhileTheProducerIsBusyJoinsCleanly) {
  std::atomic<bool> inside{false};
  {
    Prefetcher<int> prefetcher(1, [&]() -> absl::StatusOr<int> {
      inside = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      return 1;
    });
    EXPECT_EQ(*prefetcher.Next(), 1);
  }
  EXPECT_TRUE(inside.load());
}

}  // namespace
}  // namespace tessera
