// DiT-MoE's entry in the model registry (models/registry.h): its config
// rules, size estimate, build and end-of-run sample grid; and what the
// DiT-only `tessera sample` command uses.
#pragma once

#include <memory>
#include <string>

#include "models/dit_moe/model.h"
#include "models/registry.h"

namespace tessera::dit_moe {

ModelFamily Family();

// One rank's DiT-MoE: its store, the model, and a copy of the run config
// (the task reads it for the rest of the run).
class DitMoeModel : public Model {
 public:
  static absl::StatusOr<std::unique_ptr<DitMoeModel>> Build(
      const RunConfig& config, const ParameterLayout& layout = {},
      const parallel::ModelParallel* model_parallel = nullptr);

  ParameterStore& store() override { return *store_; }
  absl::StatusOr<std::unique_ptr<TrainTask>> CreateTask(const TaskOptions& options) override;
  // The validation diffusion loss on data.eval_dir (models/dit_moe/evaluation.h).
  absl::StatusOr<std::unique_ptr<EvalTask>> CreateEvalTask(const TaskOptions& options) override;
  void SetOnGradientsReady(std::function<void(int, int)> callback) override {
    model_->set_on_gradients_ready(std::move(callback));
  }
  // Writes <run_dir>/samples.png with model.dit_moe.sample_grid_per_class per class.
  absl::Status FinishRun(const std::string& run_dir) override;

  DitMoe& model() { return *model_; }

 private:
  explicit DitMoeModel(const RunConfig& config) : config_(config) {}
  RunConfig config_;
  std::unique_ptr<ParameterStore> store_;
  std::unique_ptr<DitMoe> model_;
};

ModelSizeEstimate EstimateSize(const RunConfig& config);

// Samples `per_class` images of every class with the model's current
// weights and writes them as a grid (one row per class) to `path`.
absl::Status WriteSampleGrid(DitMoe& model, const RunConfig& config, const std::string& path,
                             int per_class, int steps, float cfg_scale, uint64_t seed);

}  // namespace tessera::dit_moe
