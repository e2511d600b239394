#include "launch/model_setup.h"

#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "launch/image_grid.h"
#include "models/dit_moe/diffusion.h"
#include "runtime/backend/cpu_backend.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {

absl::StatusOr<BuiltModel> BuildModel(const RunConfig& config, const ParameterLayout& layout,
                                      const dit_moe::ModelParallel* mp) {
  if (!config.has_dit_moe()) return UsageError("model: the config names no model (set dit_moe)");
  BuiltModel built;
  built.store = std::make_unique<ParameterStore>();
  TESSERA_ASSIGN_OR_RETURN(built.model,
                           dit_moe::DitMoe::Create(config.dit_moe(), *built.store, mp));
  built.store->Finalize(config.train().seed(), layout);
  return built;
}

absl::Status WriteSampleGrid(dit_moe::DitMoe& model, const RunConfig& config,
                             const std::string& path, int per_class, int steps, float cfg_scale,
                             uint64_t seed) {
  const int classes = static_cast<int>(model.dims().num_classes);
  dit_moe::Diffusion diffusion(config.dit_moe());
  Arena arena(model.backend());
  Rng rng(seed, /*stream=*/0x5a3d1e);
  // One class at a time keeps the batch (and memory) small.
  Tensor grid = Tensor::Empty(DType::kF32, Shape{classes * per_class, model.dims().channels,
                                                 model.dims().input_size,
                                                 model.dims().input_size});
  const size_t row_bytes = grid.bytes() / classes;
  for (int c = 0; c < classes; ++c) {
    std::vector<int32_t> labels(per_class, c);
    TESSERA_ASSIGN_OR_RETURN(Tensor images,
                             diffusion.Sample(model, arena, labels, steps, cfg_scale, rng));
    std::memcpy(static_cast<char*>(grid.raw()) + c * row_bytes, images.raw(), row_bytes);
  }
  return WritePngGrid(path, grid, classes, per_class);
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
