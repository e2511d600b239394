#include "launch/threading.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace tessera {

std::optional<EnvironmentSetting> ChooseThreadWaitPolicy(
    const std::function<const char*(const char*)>& getenv) {
  for (const char* chosen_by_user : {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"}) {
    if (getenv(chosen_by_user) != nullptr) return std::nullopt;
  }
  return EnvironmentSetting{"GOMP_SPINCOUNT", "20000"};
}

void EnsureThreadWaitPolicy(char** argv) {
  const std::optional<EnvironmentSetting> setting =
      ChooseThreadWaitPolicy([](const char* name) { return std::getenv(name); });
  if (!setting) return;
  // After this the re-executed process finds the variable set and returns above.
  if (setenv(setting->name.c_str(), setting->value.c_str(), /*overwrite=*/1) != 0) return;
  execv("/proc/self/exe", argv);
  std::fprintf(stderr,
               "tessera: warning: could not restart with %s=%s (%s); OpenMP threads keep "
               "spinning at barriers, which is slow when other processes share the cores\n",
               setting->name.c_str(), setting->value.c_str(), std::strerror(errno));
}

}  // namespace tessera
