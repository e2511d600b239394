#include "models/mamba_hybrid/family.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "models/mamba_hybrid/config_rules.h"
#include "models/mamba_hybrid/evaluation.h"
#include "models/mamba_hybrid/mixer.h"
#include "models/mamba_hybrid/mlp.h"
#include "models/mamba_hybrid/pattern.h"
#include "models/mamba_hybrid/task.h"
#include "runtime/base/status.h"

namespace tessera::mamba_hybrid {
namespace {

struct LayerSizes {
  double parameters = 0;
  double saved_floats_per_token = 0;  // a lower bound
};

// Parameters and saved activations of one layer of `kind`, from the config.
LayerSizes SizeOfLayer(const MambaHybridConfig& m, char kind) {
  const double D = m.hidden_size();
  LayerSizes s;
  if (kind == kMamba) {
    const MixerDims d = ResolveMixerDims(m);
    s.parameters = D * d.in_proj_out() + d.conv_channels() * (d.conv_width + 1.0) +
                   3.0 * d.heads + d.d_inner + d.d_inner * D;
    s.saved_floats_per_token = d.in_proj_out() + 4.0 * d.conv_channels() + 2.0 * d.d_inner;
  } else if (kind == kAttention) {
    const double kv = m.num_query_groups() > 0 ? m.num_query_groups() : m.num_heads();
    const double head_dim = D / std::max(1, m.num_heads());
    s.parameters = 2 * D * D + 2 * D * kv * head_dim;
    s.saved_floats_per_token = 5 * D + 2 * kv * head_dim;
  } else if (kind == kMoe) {
    const MoeLayer::Options o = MoeLayerOptions(m.moe(), MoeDefaults(m));
    const double k = static_cast<double>(o.top_k);
    s.parameters = D * o.num_experts * (1 + 3.0 * o.expert_hidden) + 3 * D * o.shared_expert_hidden;
    s.saved_floats_per_token = k * (2 * D + 3.0 * o.expert_hidden) + 3.0 * o.shared_expert_hidden;
  } else {
    const double ffn = static_cast<double>(FfnHidden(m));
    const double up = m.mlp_activation() == MambaHybridConfig::SWIGLU ? 2 : 1;
    s.parameters = (up + 1) * D * ffn;
    s.saved_floats_per_token = (up + 1) * ffn;
  }
  s.parameters += D;  // the layer's norm
  s.saved_floats_per_token += 2 * D;
  return s;
}

}  // namespace

ModelSizeEstimate EstimateSize(const RunConfig& config) {
  const MambaHybridConfig& m = config.mamba_hybrid();
  absl::StatusOr<std::string> resolved = ResolvePattern(m);
  const std::string pattern =
      resolved.ok() ? *resolved : std::string(std::max(0, m.num_layers()), kMamba);
  const double D = m.hidden_size(), V = m.vocab_size(), L = m.seq_len();
  ModelSizeEstimate e;
  e.parameters = V * D * (m.tie_embeddings() ? 1 : 2) + D;
  double saved = 0;
  for (char kind : pattern) {
    const LayerSizes layer = SizeOfLayer(m, kind);
    e.parameters += layer.parameters;
    saved += layer.saved_floats_per_token;
  }
  e.parameters_why = absl::StrFormat(
      "%.4g parameters: pattern %s, hidden_size %d, vocab_size %d, state_dim %d, expand %d",
      e.parameters, pattern.size() > 64 ? pattern.substr(0, 64) + "..." : pattern,
      m.hidden_size(), m.vocab_size(), m.state_dim(), m.expand());
  e.activation_bytes_per_sample = 4.0 * L * (saved + 2 * V);
  e.activations_why = absl::StrFormat(
      "seq_len %d x (the layers' saved activations + logits and probabilities over vocab_size %d)",
      m.seq_len(), m.vocab_size());
  e.bf16_weight_bytes = 2.0 * e.parameters;
  e.bf16_weight_why = absl::StrFormat("2 bytes x %.4g parameters", e.parameters);
  // At least each layer's input to its first projection.
  e.bf16_activation_bytes_per_sample = 2.0 * L * D * static_cast<double>(pattern.size());
  e.bf16_activation_why = absl::StrFormat("seq_len %d x hidden_size %d x %d layers bf16",
                                          m.seq_len(), m.hidden_size(),
                                          static_cast<int>(pattern.size()));
  e.inference_bytes_per_sample = 4.0 * L * (4 * D + V);
  e.inference_why = absl::StrFormat("seq_len %d x (4 x hidden_size %d + vocab_size %d)",
                                    m.seq_len(), m.hidden_size(), m.vocab_size());
  e.input_bytes_per_sample = 4.0 * (L + 1) + 4.0 * L;
  e.input_why = absl::StrFormat("seq_len + 1 = %d int32 tokens and a float mask", m.seq_len() + 1);
  return e;
}

ModelFamily Family() {
  ModelFamily family;
  family.name = "mamba_hybrid";
  family.title = "Mamba-2 hybrid";
  family.validate = CheckConfig;
  family.estimate = EstimateSize;
  family.build = [](const RunConfig& config, const ParameterLayout& layout,
                    const parallel::ModelParallel* mp) -> absl::StatusOr<std::unique_ptr<Model>> {
    TESSERA_ASSIGN_OR_RETURN(
        std::unique_ptr<MambaHybridModel> model,
        MambaHybridModel::Build(config, layout, mp));
    return std::unique_ptr<Model>(std::move(model));
  };
  return family;
}

absl::StatusOr<std::unique_ptr<MambaHybridModel>> MambaHybridModel::Build(
    const RunConfig& config, const ParameterLayout& layout, const parallel::ModelParallel* mp) {
  auto built = std::unique_ptr<MambaHybridModel>(new MambaHybridModel(config));
  built->store_ = std::make_unique<ParameterStore>(layout.backend != nullptr ? *layout.backend
                                                                             : HostBackend());
  TESSERA_ASSIGN_OR_RETURN(built->model_,
                           MambaHybrid::Create(built->config_.mamba_hybrid(), *built->store_, mp));
  built->store_->Finalize(config.train().seed(), layout);
  return built;
}

absl::StatusOr<std::unique_ptr<TrainTask>> MambaHybridModel::CreateTask(
    const TaskOptions& options) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<LanguageModelTask> task,
                           LanguageModelTask::Create(config_, *model_, options.replica,
                                                     options.num_replicas, options.micro_batch,
                                                     options.start));
  return std::unique_ptr<TrainTask>(std::move(task));
}

absl::StatusOr<std::unique_ptr<EvalTask>> MambaHybridModel::CreateEvalTask(
    const TaskOptions& options) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<LanguageModelEvaluation> eval,
                           LanguageModelEvaluation::Create(config_, *model_, options));
  return std::unique_ptr<EvalTask>(std::move(eval));
}

}  // namespace tessera::mamba_hybrid
