#include "models/hstu/family.h"

#include <algorithm>
#include <cstdio>
#include <fstream>

#include "absl/strings/str_format.h"
#include "models/hstu/config_rules.h"
#include "models/hstu/evaluation.h"
#include "models/hstu/task.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera::hstu {

ModelSizeEstimate EstimateSize(const RunConfig& config) {
  const HstuConfig& m = config.hstu();
  ModelSizeEstimate e;
  const double d = m.embedding_dim();
  const double fused = m.num_heads() * 2.0 * (m.attention_dim() + m.linear_dim());
  const double gated = m.num_heads() * static_cast<double>(m.linear_dim());
  const double block = fused * d + gated * d + d + 2.0 * m.max_len() + m.num_time_buckets();
  // The whole item table: each rank holds 1 / table_shards of it, but the
  // plan is per process and one process holds it all.
  e.parameters = (static_cast<double>(m.num_items()) + m.max_len()) * d + m.num_blocks() * block;
  e.parameters_why = absl::StrFormat(
      "%.3g parameters: num_items %d, embedding_dim %d, num_blocks %d, num_heads %d, "
      "attention_dim %d, linear_dim %d, max_len %d",
      e.parameters, m.num_items(), m.embedding_dim(), m.num_blocks(), m.num_heads(),
      m.attention_dim(), m.linear_dim(), m.max_len());
  e.activation_bytes_per_sample = ActivationBytesPerUser(m);
  // The item table is a sparse parameter its lookups read, not a GEMM
  // weight: only the dense part is copied.
  const double dense = static_cast<double>(m.max_len()) * d + m.num_blocks() * block;
  e.bf16_weight_bytes = 2.0 * dense;
  e.bf16_weight_why = absl::StrFormat("2 bytes x %.3g dense parameters", dense);
  // At least each block's input to its fused projection.
  e.bf16_activation_bytes_per_sample = 2.0 * m.max_len() * d * m.num_blocks();
  e.bf16_activation_why = absl::StrFormat("max_len %d x embedding_dim %d x num_blocks %d bf16",
                                          m.max_len(), m.embedding_dim(), m.num_blocks());
  e.activations_why = absl::StrFormat(
      "max_len %d positions x (num_blocks %d blocks + num_negatives %d candidates) fp32",
      m.max_len(), m.num_blocks(), m.num_negatives());
  e.inference_bytes_per_sample = 4.0 * m.max_len() * (3.0 * d + 2.0 * fused);
  e.inference_why = absl::StrFormat("max_len %d x one block's activations", m.max_len());
  // Events read per user: max_len + 1 + holdout, each an item id, a
  // timestamp and a rating.
  e.input_bytes_per_sample = 20.0 * (m.max_len() + 1.0 + m.holdout());
  e.input_why = absl::StrFormat("max_len %d + 1 + holdout %d events of 20 bytes", m.max_len(),
                                m.holdout());
  // The item table: its rows, Adam's two moments (row-wise Adagrad: one
  // float per row) and at most one summed gradient per row (the rows a step
  // touched).
  const bool adam = m.table_optimizer() == HstuConfig::ADAM;
  e.sparse_parameters = static_cast<double>(m.num_items()) * d;
  e.sparse_bytes_per_parameter = adam ? 16.0 : 8.0 + 4.0 / std::max(1.0, d);
  e.sparse_why =
      absl::StrFormat("num_items %d x embedding_dim %d: rows, %s and gradients", m.num_items(),
                      m.embedding_dim(), adam ? "Adam's m and v" : "row-wise Adagrad's sums");
  return e;
}

ModelFamily Family() {
  ModelFamily family;
  family.name = "hstu";
  family.title = "HSTU";
  family.validate = CheckConfig;
  family.estimate = EstimateSize;
  family.build = [](const RunConfig& config, const ParameterLayout& layout,
                    const parallel::ModelParallel* mp) -> absl::StatusOr<std::unique_ptr<Model>> {
    TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<HstuModel> model,
                             HstuModel::Build(config, layout, mp));
    return std::unique_ptr<Model>(std::move(model));
  };
  family.table_shards = TableShards;
  return family;
}

int TableShards(const RunConfig& config, int world_size) {
  if (world_size <= 1) return 0;
  const int shards = config.hstu().table_shards();
  return shards > 0 ? shards : world_size;
}

parallel::SparseOptimizerOptions TableOptimizer(const RunConfig& config) {
  const OptimConfig& optim = config.optim();
  parallel::SparseOptimizerOptions o;
  o.kind = config.hstu().table_optimizer() == HstuConfig::ROWWISE_ADAGRAD
               ? parallel::SparseOptimizerOptions::Kind::kRowwiseAdagrad
               : parallel::SparseOptimizerOptions::Kind::kAdam;
  o.lr = config.hstu().table_lr() > 0 ? config.hstu().table_lr() : optim.lr();
  o.beta1 = optim.beta1();
  o.beta2 = optim.beta2();
  o.eps = optim.eps();
  return o;
}

absl::StatusOr<std::unique_ptr<HstuModel>> HstuModel::Build(
    const RunConfig& config, const ParameterLayout& layout,
    const parallel::ModelParallel* model_parallel) {
  auto built = std::unique_ptr<HstuModel>(new HstuModel(config));
  const HstuConfig& m = built->config_.hstu();
  // The encoder's parameters live on the run's device; the item table too
  // (row_sharded_table.h, device-resident), unless model.hstu.table_placement
  // says HOST or the run's memory plan found no room for it there
  // (layout.sparse_on_host): then host memory, its rows copied over per batch.
  built->store_ = std::make_unique<ParameterStore>(layout.backend != nullptr ? *layout.backend
                                                                             : HostBackend());
  parallel::Communicator* tp = model_parallel ? model_parallel->tp : nullptr;
  parallel::Communicator* sp = model_parallel ? model_parallel->sp : nullptr;
  TESSERA_ASSIGN_OR_RETURN(built->model_, Hstu::Create(m, *built->store_, tp, sp));
  built->store_->Finalize(config.train().seed(), layout);
  parallel::Communicator* group = model_parallel ? model_parallel->table : nullptr;
  parallel::Communicator* replicas = model_parallel ? model_parallel->table_replicas : nullptr;
  Backend* device = layout.backend;
  if (device != nullptr && (device->device() == Device::kCpu || layout.sparse_on_host ||
                            m.table_placement() == HstuConfig::HOST)) {
    device = nullptr;
  }
  built->table_ = std::make_unique<parallel::RowShardedTable>(
      group, replicas, Hstu::kItemTable, m.num_items(), m.embedding_dim(), Hstu::kItemInitStd,
      config.train().seed(), device);
  built->table_->set_options(TableOptimizer(config), config.optim().lr());
  return built;
}

std::vector<WholeTensor> HstuModel::SparseWeights() {
  const HstuConfig& m = config_.hstu();
  // A device-resident table is read through a host copy (the weights a run
  // ends with; a load into it would not reach the device).
  float* rows = nullptr;
  if (table_->device() != nullptr) {
    host_rows_ = table_->HostRows();
    rows = host_rows_.data();
  } else {
    rows = table_->local_rows().data();
  }
  return {WholeTensor{Hstu::kItemTable, Shape{m.num_items(), m.embedding_dim()}, rows}};
}

absl::StatusOr<std::unique_ptr<TrainTask>> HstuModel::CreateTask(const TaskOptions& options) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<HstuTask> task,
                           HstuTask::Create(config_, *model_, *table_, options.replica,
                                            options.num_replicas, options.micro_batch,
                                            options.start));
  return std::unique_ptr<TrainTask>(std::move(task));
}

absl::StatusOr<std::unique_ptr<EvalTask>> HstuModel::CreateEvalTask(const TaskOptions& options) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<HstuEvaluation> eval,
                           HstuEvaluation::Create(config_, *model_, *table_, options));
  return std::unique_ptr<EvalTask>(std::move(eval));
}

absl::Status HstuModel::FinishRun(const std::string& run_dir) {
  EvaluationOptions options;
  options.dir = config_.data().dir();
  options.prefetch = config_.data().prefetch();
  TESSERA_ASSIGN_OR_RETURN(const RankingSums validation,
                           EvaluateSplit(*model_, *table_, options, Split::kValidation));
  TESSERA_ASSIGN_OR_RETURN(const RankingSums test,
                           EvaluateSplit(*model_, *table_, options, Split::kTest));
  const std::string json = absl::StrCat("{", RankingJsonFields(validation, "val_"), ",",
                                        RankingJsonFields(test, "test_"), "}\n");
  const std::string path = run_dir + "/final_metrics.json";
  std::ofstream out(path);
  out << json;
  out.close();
  if (!out) return UsageError(absl::StrCat("cannot write ", path));
  for (const auto& [name, sums] : {std::pair{"validation", validation}, std::pair{"test", test}}) {
    const double users = std::max(1.0, sums.users);
    std::printf("%s (%.0f users, full ranking): HR@10 %.4f NDCG@10 %.4f HR@50 %.4f HR@200 %.4f\n",
                name, sums.users, sums.hits[0] / users, sums.ndcg[0] / users,
                sums.hits[1] / users, sums.hits[2] / users);
  }
  std::printf("wrote %s\n", path.c_str());
  return absl::OkStatus();
}

}  // namespace tessera::hstu
