// StagingRing's rules (runtime/backend/staging_ring.h) on a CPU backend that
// plays a device running behind the host: an asynchronous copy is only
// queued, and runs when the host waits for an event recorded after it (or
// when the test lets the device catch up). A ring that hands out a region
// before the copy reading it has run corrupts what arrives, so comparing
// the destinations with what was uploaded checks the waits.
#include "runtime/backend/staging_ring.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "runtime/backend/cpu_backend.h"

namespace tessera {
namespace {

class LaggingDevice : public CpuBackend {
 public:
  struct Marker : Event {
    size_t position = 0;  // copies queued before it was recorded
  };
  struct Pending {
    void* dst;
    const void* src;
    size_t bytes;
  };

  void CopyToDeviceAsync(void* dst, const void* host_src, size_t bytes) override {
    queue.push_back({dst, host_src, bytes});
  }
  std::unique_ptr<Event> CreateEvent() override {
    ++events_created;
    return std::make_unique<Marker>();
  }
  void Record(Event& event) override { static_cast<Marker&>(event).position = queue.size(); }
  void HostWait(const Event& event) override {
    ++waits;
    RunUpTo(static_cast<const Marker&>(event).position);
  }
  absl::Status AllocatePinnedHost(size_t bytes, void** out) override {
    if (refuse_pinned) return absl::ResourceExhaustedError("no pinned memory in this test");
    ++pinned_allocations;
    return CpuBackend::AllocatePinnedHost(bytes, out);
  }
  // The device catches up with everything queued.
  void RunAll() { RunUpTo(queue.size()); }

  std::vector<Pending> queue;
  size_t done = 0;  // copies run so far
  int waits = 0, events_created = 0, pinned_allocations = 0;
  bool refuse_pinned = false;

 private:
  void RunUpTo(size_t position) {
    for (; done < position; ++done) std::memcpy(queue[done].dst, queue[done].src, queue[done].bytes);
  }
};

std::vector<uint8_t> Bytes(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + 7 * i);
  return v;
}

TEST(StagingRing, TheSourceIsFreeOnReturnAndTheDeviceGetsWhatItHeldThen) {
  LaggingDevice device;
  StagingRing ring(device, 4096);
  std::vector<uint8_t> source = Bytes(300, 1), dst(300, 0);
  const std::vector<uint8_t> sent = source;
  ASSERT_TRUE(ring.Upload(dst.data(), source.data(), source.size()));
  std::fill(source.begin(), source.end(), 0xEE);  // the caller reuses its memory at once
  EXPECT_EQ(device.done, 0u);                       // the device has not run the copy yet
  device.RunAll();
  EXPECT_EQ(dst, sent);
  EXPECT_EQ(device.pinned_allocations, 1);
}

TEST(StagingRing, TheHostNeverWaitsWhileTheRingHasRoom) {
  LaggingDevice device;
  StagingRing ring(device, 4096);
  std::vector<std::vector<uint8_t>> dsts(15, std::vector<uint8_t>(200, 0));
  for (size_t i = 0; i < dsts.size(); ++i) {
    const std::vector<uint8_t> source = Bytes(200, static_cast<uint8_t>(i));
    ASSERT_TRUE(ring.Upload(dsts[i].data(), source.data(), source.size()));
  }
  // 15 regions of 256 bytes fill 3840 of 4096 bytes: nothing waited for.
  EXPECT_EQ(device.waits, 0);
  EXPECT_EQ(ring.host_waits(), 0);
  EXPECT_EQ(ring.in_flight(), 15u);
  device.RunAll();
  for (size_t i = 0; i < dsts.size(); ++i) EXPECT_EQ(dsts[i], Bytes(200, static_cast<uint8_t>(i)));
}

TEST(StagingRing, WrappingWaitsOnlyForTheCopiesInTheWay) {
  LaggingDevice device;
  StagingRing ring(device, 1024);
  std::vector<uint8_t> a(256), b(256), c(256), d(256), e(200);
  const std::vector<uint8_t> sa = Bytes(200, 1), sb = Bytes(200, 2), sc = Bytes(200, 3),
                             sd = Bytes(200, 4), se = Bytes(200, 5);
  ASSERT_TRUE(ring.Upload(a.data(), sa.data(), 200));  // [0, 256)
  ASSERT_TRUE(ring.Upload(b.data(), sb.data(), 200));  // [256, 512)
  ASSERT_TRUE(ring.Upload(c.data(), sc.data(), 200));  // [512, 768)
  ASSERT_TRUE(ring.Upload(d.data(), sd.data(), 200));  // [768, 1024)
  EXPECT_EQ(device.waits, 0);
  // The fifth wraps to [0, 256): only the first copy must have run.
  ASSERT_TRUE(ring.Upload(e.data(), se.data(), 200));
  EXPECT_EQ(device.waits, 1);
  EXPECT_EQ(device.done, 1u);
  EXPECT_EQ(ring.in_flight(), 4u);
  device.RunAll();
  EXPECT_TRUE(std::equal(sa.begin(), sa.end(), a.begin()));
  EXPECT_TRUE(std::equal(sb.begin(), sb.end(), b.begin()));
  EXPECT_TRUE(std::equal(sc.begin(), sc.end(), c.begin()));
  EXPECT_TRUE(std::equal(sd.begin(), sd.end(), d.begin()));
  EXPECT_TRUE(std::equal(se.begin(), se.end(), e.begin()));
}

TEST(StagingRing, ManyRandomCopiesAllArriveIntact) {
  LaggingDevice device;
  StagingRing ring(device, 8192);
  std::mt19937 rng(7);
  std::uniform_int_distribution<size_t> size(1, ring.max_copy_bytes());
  std::bernoulli_distribution catch_up(0.05);
  std::vector<std::vector<uint8_t>> sent, dsts;
  sent.reserve(3000);
  dsts.reserve(3000);
  for (int i = 0; i < 3000; ++i) {
    sent.push_back(Bytes(size(rng), static_cast<uint8_t>(i)));
    dsts.emplace_back(sent.back().size(), 0);
    std::vector<uint8_t> source = sent.back();
    ASSERT_TRUE(ring.Upload(dsts.back().data(), source.data(), source.size()));
    std::fill(source.begin(), source.end(), 0);
    if (catch_up(rng)) device.RunAll();  // sometimes the device is ahead
  }
  device.RunAll();
  for (size_t i = 0; i < sent.size(); ++i) ASSERT_EQ(dsts[i], sent[i]) << "copy " << i;
  EXPECT_GT(ring.host_waits(), 0);
  // Events are reused, not made per copy.
  EXPECT_LE(device.events_created, 257);
}

TEST(StagingRing, ManyTinyCopiesKeepAtMost256Queued) {
  LaggingDevice device;
  StagingRing ring(device, 1 << 20);
  std::vector<uint8_t> dst(1000 * 8);
  for (int i = 0; i < 1000; ++i) {
    const std::vector<uint8_t> source = Bytes(8, static_cast<uint8_t>(i));
    ASSERT_TRUE(ring.Upload(dst.data() + 8 * i, source.data(), 8));
    EXPECT_LE(ring.in_flight(), 256u);
  }
  device.RunAll();
  for (int i = 0; i < 1000; ++i) {
    EXPECT_EQ(std::vector<uint8_t>(dst.begin() + 8 * i, dst.begin() + 8 * i + 8),
              Bytes(8, static_cast<uint8_t>(i)));
  }
}

TEST(StagingRing, LargeCopiesAndNoPinnedMemoryAreLeftToTheCaller) {
  LaggingDevice device;
  StagingRing ring(device, 4096);
  std::vector<uint8_t> big(ring.max_copy_bytes() + 1), dst(big.size());
  EXPECT_FALSE(ring.Upload(dst.data(), big.data(), big.size()));
  EXPECT_TRUE(device.queue.empty());
  EXPECT_EQ(device.pinned_allocations, 0);

  LaggingDevice refusing;
  refusing.refuse_pinned = true;
  StagingRing off(refusing, 4096);
  std::vector<uint8_t> small(16);
  EXPECT_FALSE(off.Upload(dst.data(), small.data(), small.size()));
  EXPECT_FALSE(off.Upload(dst.data(), small.data(), small.size()));
  EXPECT_TRUE(refusing.queue.empty());
}

TEST(StagingRing, DestructionWaitsForEveryQueuedCopy) {
  LaggingDevice device;
  std::vector<uint8_t> dst(100);
  const std::vector<uint8_t> source = Bytes(100, 9);
  {
    StagingRing ring(device, 4096);
    ASSERT_TRUE(ring.Upload(dst.data(), source.data(), source.size()));
    ASSERT_TRUE(ring.Upload(dst.data(), source.data(), source.size()));
  }
  EXPECT_EQ(device.done, 2u);
  EXPECT_EQ(dst, source);
}

}  // namespace
}  // namespace tessera
