// PinnedBufferPool's reuse rules (runtime/backend/pinned_pool.h), on a CPU
// backend that logs every pinned allocation, free, event record and host
// wait, so the order of those calls — the only thing that keeps a device
// copy and the host off the same bytes — is what is checked.
#include "runtime/backend/pinned_pool.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/backend/cpu_backend.h"
#include "runtime/base/status.h"

namespace tessera {
namespace {

class LoggingBackend : public CpuBackend {
 public:
  struct NumberedEvent : Event {
    int id = 0;
  };
  absl::Status AllocatePinnedHost(size_t bytes, void** out) override {
    TESSERA_RETURN_IF_ERROR(CpuBackend::AllocatePinnedHost(bytes, out));
    log.push_back(absl::StrCat("alloc ", bytes));
    return absl::OkStatus();
  }
  void FreePinnedHost(void* ptr) override {
    log.push_back("free");
    CpuBackend::FreePinnedHost(ptr);
  }
  std::unique_ptr<Event> CreateEvent() override {
    auto event = std::make_unique<NumberedEvent>();
    event->id = ++events;
    return event;
  }
  void Record(Event& event) override {
    log.push_back(absl::StrCat("record ", static_cast<NumberedEvent&>(event).id));
  }
  void HostWait(const Event& event) override {
    log.push_back(absl::StrCat("wait ", static_cast<const NumberedEvent&>(event).id));
  }
  std::vector<std::string> TakeLog() { return std::exchange(log, {}); }

  std::vector<std::string> log;
  int events = 0;
};

using Log = std::vector<std::string>;

TEST(PinnedBufferPool, BuffersGoRoundAndAreWaitedForOnlyWhenReused) {
  LoggingBackend backend;
  PinnedBufferPool pool(backend, 2);
  absl::StatusOr<void*> first = pool.Acquire(100);
  ASSERT_TRUE(first.ok()) << first.status();
  std::memset(*first, 1, 100);  // the host may write it now
  pool.Release();
  EXPECT_EQ(backend.TakeLog(), (Log{"alloc 100", "record 1"}));
  // The second buffer has never been out: no wait, its own allocation.
  absl::StatusOr<void*> second = pool.Acquire(100);
  ASSERT_TRUE(second.ok());
  EXPECT_NE(*second, *first);
  pool.Release();
  EXPECT_EQ(backend.TakeLog(), (Log{"alloc 100", "record 2"}));
  // The first again: the host waits for the event of its last release, and
  // nothing is allocated.
  absl::StatusOr<void*> again = pool.Acquire(64);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *first);
  EXPECT_EQ(backend.TakeLog(), (Log{"wait 1"}));
  pool.Release();
  // Its event object is reused (one per buffer), recorded again.
  EXPECT_EQ(backend.TakeLog(), (Log{"record 1"}));
  EXPECT_EQ(pool.bytes_held(), 200u);
}

TEST(PinnedBufferPool, ABiggerRequestWaitsThenReallocatesAndNeverShrinks) {
  LoggingBackend backend;
  PinnedBufferPool pool(backend, 1);
  ASSERT_TRUE(pool.Acquire(10).ok());
  pool.Release();
  backend.TakeLog();
  ASSERT_TRUE(pool.Acquire(1000).ok());
  // The old buffer may still be read by a copy: wait, then free it.
  EXPECT_EQ(backend.TakeLog(), (Log{"wait 1", "free", "alloc 1000"}));
  pool.Release();
  ASSERT_TRUE(pool.Acquire(10).ok());
  EXPECT_EQ(backend.TakeLog(), (Log{"record 1", "wait 1"}));
  EXPECT_EQ(pool.bytes_held(), 1000u);
  pool.Release();
}

TEST(PinnedBufferPool, AcquireWhileHoldingIsAnErrorNamingTheBuffer) {
  LoggingBackend backend;
  PinnedBufferPool pool(backend, 2);
  ASSERT_TRUE(pool.Acquire(8).ok());
  const absl::Status twice = pool.Acquire(8).status();
  EXPECT_EQ(twice.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(twice.message().find("buffer 0 is still held"), std::string::npos) << twice;
  pool.Release();
  EXPECT_TRUE(pool.Acquire(8).ok());
  pool.Release();
}

TEST(PinnedBufferPool, DestructionWaitsForCopiesInFlightBeforeFreeing) {
  LoggingBackend backend;
  {
    PinnedBufferPool pool(backend, 2);
    ASSERT_TRUE(pool.Acquire(16).ok());
    pool.Release();
    ASSERT_TRUE(pool.Acquire(16).ok());  // held, never released: nothing to wait for
    backend.TakeLog();
  }
  EXPECT_EQ(backend.TakeLog(), (Log{"wait 1", "free", "free"}));
}

TEST(PinnedBufferPool, AnAllocationFailureIsReturnedAndTheBufferStaysFree) {
  LoggingBackend backend;
  PinnedBufferPool pool(backend, 1);
  const absl::Status huge = pool.Acquire(size_t{1} << 50).status();
  EXPECT_EQ(huge.code(), absl::StatusCode::kResourceExhausted) << huge;
  EXPECT_NE(huge.message().find("pinned host memory"), std::string::npos) << huge;
  EXPECT_TRUE(pool.Acquire(32).ok());  // not left "held"
  pool.Release();
}

// The copies themselves: a round trip through a pinned buffer with the
// asynchronous copies, waiting on the event as a caller must.
TEST(PinnedBufferPool, AsyncCopiesThroughAPinnedBufferRoundTrip) {
  CpuBackend backend;
  PinnedBufferPool pool(backend, 2);
  void* device = nullptr;
  ASSERT_TRUE(backend.Allocate(64, &device).ok());
  absl::StatusOr<void*> up = pool.Acquire(64);
  ASSERT_TRUE(up.ok());
  for (int i = 0; i < 16; ++i) static_cast<float*>(*up)[i] = static_cast<float>(i) + 0.5f;
  backend.CopyToDeviceAsync(device, *up, 64);
  pool.Release();
  absl::StatusOr<void*> down = pool.Acquire(64);
  ASSERT_TRUE(down.ok());
  backend.CopyToHostAsync(*down, device, 64);
  auto done = backend.CreateEvent();
  backend.Record(*done);
  backend.HostWait(*done);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(static_cast<float*>(*down)[i], i + 0.5f);
  pool.Release();
  backend.Free(device);
}

}  // namespace
}  // namespace tessera
