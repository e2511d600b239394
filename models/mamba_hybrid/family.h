// The Mamba hybrid's entry in the model registry (models/registry.h).
#pragma once

#include <memory>

#include "models/mamba_hybrid/model.h"
#include "models/registry.h"

namespace tessera::mamba_hybrid {

ModelFamily Family();

// One rank's Mamba hybrid: its store, the model, and a copy of the run config.
class MambaHybridModel : public Model {
 public:
  // `mp`: the model-parallel groups (tp, sp or ep > 1; or data parallelism
  // with the MoE balance over the global batch), or null.
  static absl::StatusOr<std::unique_ptr<MambaHybridModel>> Build(
      const RunConfig& config, const ParameterLayout& layout = {},
      const parallel::ModelParallel* mp = nullptr);

  ParameterStore& store() override { return *store_; }
  absl::StatusOr<std::unique_ptr<TrainTask>> CreateTask(const TaskOptions& options) override;
  // The held-out loss, bits per token and accuracy on data.eval_dir
  // (models/mamba_hybrid/evaluation.h).
  absl::StatusOr<std::unique_ptr<EvalTask>> CreateEvalTask(const TaskOptions& options) override;
  void SetOnGradientsReady(std::function<void(int, int)> callback) override {
    model_->set_on_gradients_ready(std::move(callback));
  }
  MambaHybrid& model() { return *model_; }

 private:
  explicit MambaHybridModel(const RunConfig& config) : config_(config) {}
  RunConfig config_;
  std::unique_ptr<ParameterStore> store_;
  std::unique_ptr<MambaHybrid> model_;
};

ModelSizeEstimate EstimateSize(const RunConfig& config);

}  // namespace tessera::mamba_hybrid
