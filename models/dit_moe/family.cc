#include "models/dit_moe/family.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <vector>

#include "absl/strings/str_format.h"
#include "models/dit_moe/config_rules.h"
#include "models/dit_moe/diffusion.h"
#include "models/dit_moe/evaluation.h"
#include "models/dit_moe/image_grid.h"
#include "models/dit_moe/task.h"
#include "runtime/base/status.h"

namespace tessera::dit_moe {
namespace {

// Routed expert hidden width as the model uses it (0 means 4 * hidden).
double ExpertHidden(const DitMoeConfig& m) {
  return static_cast<double>(ResolvedExpertHidden(m.moe(), MoeDefaults(m)));
}

double TokensPerImage(const DitMoeConfig& m) {
  const double side = static_cast<double>(m.input_size()) / std::max(1, m.patch_size());
  return side * side;
}

}  // namespace

ModelSizeEstimate EstimateSize(const RunConfig& config) {
  const DitMoeConfig& m = config.dit_moe();
  ModelSizeEstimate e;
  // A lower bound on the parameter count: per block attention (4 D^2), adaLN
  // (6 D^2) and the routed SwiGLU experts (E * 3 * D * H); the label and
  // timestep embeddings.
  const double d = m.hidden_size();
  const double block = 10.0 * d * d + m.moe().num_experts() * 3.0 * d * ExpertHidden(m);
  e.parameters =
      m.depth() * block + (m.num_classes() + 1.0) * d + m.frequency_embedding_size() * d;
  e.parameters_why = absl::StrFormat(
      "%.3g parameters: hidden_size %d, depth %d, num_experts %d, expert hidden %.0f, "
      "num_classes %d, frequency_embedding_size %d",
      e.parameters, m.hidden_size(), m.depth(), m.moe().num_experts(), ExpertHidden(m),
      m.num_classes(), m.frequency_embedding_size());
  // At least one [tokens, hidden] activation per block kept for backward.
  e.activation_bytes_per_sample = 4.0 * TokensPerImage(m) * d * m.depth();
  e.activations_why = absl::StrFormat("%.0f tokens x hidden_size %d x depth %d",
                                      TokensPerImage(m), m.hidden_size(), m.depth());
  e.bf16_weight_bytes = 2.0 * e.parameters;
  e.bf16_weight_why = absl::StrFormat("2 bytes x %.3g parameters", e.parameters);
  // At least the inputs of each block's qkv and output projections.
  e.bf16_activation_bytes_per_sample = 2.0 * 2.0 * TokensPerImage(m) * d * m.depth();
  e.bf16_activation_why =
      absl::StrFormat("2 bf16 copies of %.0f tokens x hidden_size %d x depth %d",
                      TokensPerImage(m), m.hidden_size(), m.depth());
  e.inference_bytes_per_sample = 4.0 * TokensPerImage(m) * d;
  e.inference_why =
      absl::StrFormat("%.0f tokens x hidden_size %d", TokensPerImage(m), m.hidden_size());
  e.input_bytes_per_sample = 4.0 * m.in_channels() * m.input_size() *
                             static_cast<double>(m.input_size());
  e.input_why = absl::StrFormat("%d x %d x %d fp32", m.in_channels(), m.input_size(),
                                m.input_size());
  return e;
}

ModelFamily Family() {
  ModelFamily family;
  family.name = "dit_moe";
  family.title = "DiT-MoE";
  family.validate = CheckConfig;
  family.estimate = EstimateSize;
  family.build = [](const RunConfig& config, const ParameterLayout& layout,
                    const parallel::ModelParallel* mp) -> absl::StatusOr<std::unique_ptr<Model>> {
    TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<DitMoeModel> model,
                             DitMoeModel::Build(config, layout, mp));
    return std::unique_ptr<Model>(std::move(model));
  };
  return family;
}

absl::StatusOr<std::unique_ptr<DitMoeModel>> DitMoeModel::Build(
    const RunConfig& config, const ParameterLayout& layout, const parallel::ModelParallel* mp) {
  auto built = std::unique_ptr<DitMoeModel>(new DitMoeModel(config));
  built->store_ = std::make_unique<ParameterStore>(layout.backend != nullptr ? *layout.backend
                                                                             : HostBackend());
  TESSERA_ASSIGN_OR_RETURN(built->model_,
                           DitMoe::Create(built->config_.dit_moe(), *built->store_, mp));
  built->store_->Finalize(config.train().seed(), layout);
  return built;
}

absl::StatusOr<std::unique_ptr<TrainTask>> DitMoeModel::CreateTask(const TaskOptions& options) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<DitMoeTask> task,
                           DitMoeTask::Create(config_, *model_, options.replica,
                                              options.num_replicas, options.micro_batch,
                                              options.start));
  return std::unique_ptr<TrainTask>(std::move(task));
}

absl::StatusOr<std::unique_ptr<EvalTask>> DitMoeModel::CreateEvalTask(
    const TaskOptions& options) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<DitMoeEvaluation> eval,
                           DitMoeEvaluation::Create(config_, *model_, options));
  return std::unique_ptr<EvalTask>(std::move(eval));
}

absl::Status DitMoeModel::FinishRun(const std::string& run_dir) {
  const int per_class = config_.dit_moe().sample_grid_per_class();
  if (per_class <= 0) return absl::OkStatus();
  const std::string png = run_dir + "/samples.png";
  const DitMoeConfig& m = config_.dit_moe();
  TESSERA_RETURN_IF_ERROR(WriteSampleGrid(*model_, config_, png, per_class, m.sample_steps(),
                                          m.cfg_scale(), config_.train().seed()));
  std::printf("wrote %s (%d per class, %d steps, cfg %.1f)\n", png.c_str(), per_class,
              m.sample_steps(), m.cfg_scale());
  return absl::OkStatus();
}

absl::Status WriteSampleGrid(DitMoe& model, const RunConfig& config, const std::string& path,
                             int per_class, int steps, float cfg_scale, uint64_t seed) {
  const int classes = static_cast<int>(model.dims().num_classes);
  Diffusion diffusion(config.dit_moe());
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

}  // namespace tessera::dit_moe
