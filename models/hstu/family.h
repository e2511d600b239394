// HSTU's entry in the model registry (models/registry.h).
#pragma once

#include <memory>

#include "models/hstu/model.h"
#include "models/registry.h"
#include "parallel/embedding/row_sharded_table.h"

namespace tessera::hstu {

ModelFamily Family();

ModelSizeEstimate EstimateSize(const RunConfig& config);

// The ranks the item table's rows are split over in a run of `world_size`
// processes: model.hstu.table_shards, or the world when 0; 0 for one process.
int TableShards(const RunConfig& config, int world_size);

// The item table's row-wise sparse optimizer from the config: Adam (optim's
// betas and eps) or row-wise Adagrad, at model.hstu.table_lr (0: optim.lr).
parallel::SparseOptimizerOptions TableOptimizer(const RunConfig& config);

// One rank's HSTU: its store, the encoder, its share of the row-sharded item
// table and a copy of the run config.
class HstuModel : public Model {
 public:
  // `model_parallel`: the tensor-parallel group the heads split over
  // (ModelParallel::tp) and the table's groups (table, table_replicas);
  // null: one process holding the whole model and table.
  static absl::StatusOr<std::unique_ptr<HstuModel>> Build(
      const RunConfig& config, const ParameterLayout& layout = {},
      const parallel::ModelParallel* model_parallel = nullptr);

  ParameterStore& store() override { return *store_; }
  absl::StatusOr<std::unique_ptr<TrainTask>> CreateTask(const TaskOptions& options) override;
  // The validation split of data.eval_dir every train.eval_every steps
  // (models/hstu/evaluation.h, HstuEvaluation).
  absl::StatusOr<std::unique_ptr<EvalTask>> CreateEvalTask(const TaskOptions& options) override;
  void SetOnGradientsReady(std::function<void(int, int)> callback) override {
    model_->set_on_gradients_ready(std::move(callback));
  }
  // Leave-one-out evaluation of every user of data.dir with the final
  // weights: validation and test HR@K / NDCG@K, printed and written to
  // <run_dir>/final_metrics.json.
  absl::Status FinishRun(const std::string& run_dir) override;

  SparseParameters* sparse_parameters() override { return table_.get(); }
  std::vector<WholeTensor> SparseWeights() override;
  absl::StatusOr<std::vector<float>> GatherSparse() override { return table_->Gather(); }

  Hstu& model() { return *model_; }
  parallel::RowShardedTable& table() { return *table_; }
  const RunConfig& config() const { return config_; }

 private:
  explicit HstuModel(const RunConfig& config) : config_(config) {}
  RunConfig config_;
  std::unique_ptr<ParameterStore> store_;
  std::unique_ptr<Hstu> model_;
  std::unique_ptr<parallel::RowShardedTable> table_;
  std::vector<float> host_rows_;  // SparseWeights' copy of a device-resident table
};

}  // namespace tessera::hstu
