#include "runtime/base/human_units.h"

#include <gtest/gtest.h>

namespace tessera {
namespace {

TEST(HumanBytes, OneDecimalInBinaryUnits) {
  EXPECT_EQ(HumanBytes(0), "0.0 B");
  EXPECT_EQ(HumanBytes(1023), "1023.0 B");
  EXPECT_EQ(HumanBytes(1536), "1.5 KiB");
  EXPECT_EQ(HumanBytes(9.6 * 1024 * 1024), "9.6 MiB");
  EXPECT_EQ(HumanBytes(3.0 * 1024 * 1024 * 1024 * 1024 * 1024 * 1024), "3.0 EiB");
}

TEST(HumanSeconds, SecondsMinutesHours) {
  EXPECT_EQ(HumanSeconds(-3), "0s");
  EXPECT_EQ(HumanSeconds(42.7), "42s");
  EXPECT_EQ(HumanSeconds(187), "3m07s");
  EXPECT_EQ(HumanSeconds(2 * 3600 + 5 * 60 + 9), "2h05m");
}

}  // namespace
}  // namespace tessera
