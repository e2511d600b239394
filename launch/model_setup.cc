#include "launch/model_setup.h"

#include <algorithm>
#include <thread>

#include "runtime/backend/cpu_backend.h"
#include "runtime/base/status.h"

namespace tessera {

absl::StatusOr<BuiltModel> BuildModel(const RunConfig& config, const ParameterLayout& layout,
                                      const parallel::ModelParallel* mp) {
  BuiltModel built;
  TESSERA_ASSIGN_OR_RETURN(built.family, FindModelFamily(config));
  TESSERA_ASSIGN_OR_RETURN(built.model, built.family->build(config, layout, mp));
  return built;
}

void ConfigureThreads(const RunConfig& config, int local_ranks) {
  int threads = config.train().threads();
  if (threads <= 0) {
    // The cores of this host, shared among the ranks a launcher put on it.
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    threads = std::max(1, cores / std::max(1, local_ranks));
  }
  SetHostThreads(threads);
}

}  // namespace tessera
