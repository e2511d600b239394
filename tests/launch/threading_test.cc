// The compute threads' waiting policy: chosen only when the user did not.
#include "launch/threading.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

namespace tessera {
namespace {

std::optional<EnvironmentSetting> ChooseWith(const std::map<std::string, std::string>& env) {
  return ChooseThreadWaitPolicy([&](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

TEST(ThreadWaitPolicy, BoundedSpinWhenTheUserChoseNothing) {
  const auto setting = ChooseWith({{"OMP_NUM_THREADS", "2"}});
  ASSERT_TRUE(setting.has_value());
  EXPECT_EQ(setting->name, "GOMP_SPINCOUNT");
  EXPECT_EQ(setting->value, "20000");
}

TEST(ThreadWaitPolicy, TheUsersOwnWaitPolicyOrSpinCountIsLeftAlone) {
  EXPECT_FALSE(ChooseWith({{"OMP_WAIT_POLICY", "active"}}).has_value());
  EXPECT_FALSE(ChooseWith({{"OMP_WAIT_POLICY", ""}}).has_value());
  EXPECT_FALSE(ChooseWith({{"GOMP_SPINCOUNT", "10000"}}).has_value());
}

}  // namespace
}  // namespace tessera
