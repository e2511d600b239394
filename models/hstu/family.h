// HSTU's entry in the model registry (models/registry.h).
#pragma once

#include <memory>

#include "models/hstu/model.h"
#include "models/registry.h"

namespace tessera::hstu {

ModelFamily Family();

ModelSizeEstimate EstimateSize(const RunConfig& config);

// One rank's HSTU: its store, the encoder and a copy of the run config.
class HstuModel : public Model {
 public:
  static absl::StatusOr<std::unique_ptr<HstuModel>> Build(const RunConfig& config,
                                                          const ParameterLayout& layout = {});

  ParameterStore& store() override { return *store_; }
  absl::StatusOr<std::unique_ptr<TrainTask>> CreateTask(const TaskOptions& options) override;
  void SetOnGradientsReady(std::function<void(int, int)> callback) override {
    model_->set_on_gradients_ready(std::move(callback));
  }
  // Leave-one-out evaluation of every user of data.dir with the final
  // weights: validation and test HR@K / NDCG@K, printed and written to
  // <run_dir>/final_metrics.json.
  absl::Status FinishRun(const std::string& run_dir) override;

  Hstu& model() { return *model_; }
  const RunConfig& config() const { return config_; }

 private:
  explicit HstuModel(const RunConfig& config) : config_(config) {}
  RunConfig config_;
  std::unique_ptr<ParameterStore> store_;
  std::unique_ptr<Hstu> model_;
};

}  // namespace tessera::hstu
