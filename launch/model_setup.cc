#include "launch/model_setup.h"

#include <algorithm>
#include <cstdio>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"

#include "runtime/backend/cpu_backend.h"
#include "runtime/base/errors.h"
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

absl::Status ConfigurePrecision(const RunConfig& config, Backend& backend, bool leader) {
  const MathPrecision precision =
      config.train().precision() == "bf16" ? MathPrecision::kBf16 : MathPrecision::kFp32;
  std::string note;
  const absl::Status supported = backend.CheckPrecision(precision, &note);
  if (!supported.ok()) {
    return UsageError(absl::StrCat("train.precision=", config.train().precision(), ": the ",
                                   DeviceName(backend.device()), " backend cannot run it (",
                                   supported.message(), "); use train.precision=fp32"));
  }
  if (leader && !note.empty()) {
    std::printf("train.precision=%s: %s\n", PrecisionName(precision), note.c_str());
  }
  backend.set_gemm_precision(precision);
  return absl::OkStatus();
}

}  // namespace tessera
