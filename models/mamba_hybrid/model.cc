#include "models/mamba_hybrid/model.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "models/mamba_hybrid/attention.h"
#include "models/mamba_hybrid/mixer.h"
#include "models/mamba_hybrid/mlp.h"
#include "models/mamba_hybrid/pattern.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/config/config_check.h"

namespace tessera::mamba_hybrid {
namespace {

constexpr float kEmbeddingStd = 0.02f;  // mamba_ssm's _init_weights

Tensor Upload(Arena& arena, DType dtype, Shape shape, const void* host) {
  Tensor t = arena.AllocateUninitialized(dtype, shape);
  arena.backend().CopyToDevice(t.address(), host, t.bytes());
  return t;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MambaHybrid>> MambaHybrid::Create(
    const MambaHybridConfig& config, ParameterStore& store) {
  TESSERA_ASSIGN_OR_RETURN(std::string pattern, ResolvePattern(config));
  if (pattern.find(kMoe) != std::string::npos) {
    return UsageError(absl::StrCat(Field("model.mamba_hybrid.pattern", pattern),
                                   ": MoE layers (E) are not built yet in this version"));
  }
  auto model = std::unique_ptr<MambaHybrid>(new MambaHybrid(config, std::move(pattern), store));
  model->Build();
  return model;
}

MambaHybrid::MambaHybrid(const MambaHybridConfig& config, std::string pattern,
                         ParameterStore& store)
    : config_(config),
      pattern_(std::move(pattern)),
      store_(store),
      hidden_(config.hidden_size()),
      vocab_(config.vocab_size()),
      recompute_(pattern_.size(), config.recompute()),
      stack_(store.backend()) {}

void MambaHybrid::Build() {
  embedding_ = store_.Register("embedding.weight", Shape{vocab_, hidden_},
                               ParamInit::Normal(kEmbeddingStd), /*weight_decay=*/false);
  param_ranges_.emplace_back(embedding_, embedding_ + 1);
  for (size_t i = 0; i < pattern_.size(); ++i) {
    const int first = store_.size();
    const std::string prefix = absl::StrCat("layers.", i);
    std::unique_ptr<Sublayer> sublayer;
    switch (pattern_[i]) {
      case kMamba:
        sublayer = std::make_unique<Mamba2Mixer>(store_, prefix + ".mixer", config_);
        break;
      case kAttention:
        sublayer = std::make_unique<CausalSelfAttention>(store_, prefix + ".mixer", config_);
        break;
      default:
        sublayer = std::make_unique<HybridMlp>(store_, prefix + ".mlp", config_);
        break;
    }
    blocks_.push_back(std::make_unique<HybridBlock>(store_, prefix + ".norm.weight", hidden_,
                                                    config_.norm_eps(), std::move(sublayer)));
    param_ranges_.emplace_back(first, store_.size());
  }
  const int head_first = store_.size();
  final_norm_ = store_.Register("norm_f.weight", Shape{hidden_}, ParamInit::Ones(),
                                /*weight_decay=*/false);
  if (!config_.tie_embeddings()) {
    Linear::Options options;
    options.bias = false;
    options.weight_init =
        ParamInit::Uniform(static_cast<float>(1 / std::sqrt(static_cast<double>(hidden_))));
    lm_head_ = std::make_unique<Linear>(store_, "lm_head", hidden_, vocab_, options);
  }
  param_ranges_.emplace_back(head_first, store_.size());
}

absl::StatusOr<Tensor> MambaHybrid::ForwardHidden(Arena& arena, const Tensor& ids, int64_t batch,
                                                  int64_t seq, bool record) {
  Backend& backend = arena.backend();
  const int64_t rows = batch * seq;
  Tensor stream = arena.AllocateUninitialized(DType::kF32, Shape{rows, hidden_});
  backend.EmbeddingForward(ids.ptr<int32_t>(), store_.param(embedding_).ptr<float>(),
                           stream.ptr<float>(), rows, hidden_);
  if (record) RecordEmbeddingBackward(ids);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    HybridBlock& block = *blocks_[i];
    TESSERA_ASSIGN_OR_RETURN(
        stream, stack_.Run(
                    tape_, arena, stream, recompute_[i], record,
                    [&block, batch, seq](Arena& a, const Tensor& in) {
                      return block.Forward(a, in, batch, seq);
                    },
                    [&block](Arena& a, const Tensor& dy) { return block.Backward(a, dy); },
                    param_ranges_[1 + i].first, param_ranges_[1 + i].second));
  }
  final_in_ = stream;
  final_rstd_ = arena.AllocateUninitialized(DType::kF32, Shape{rows});
  Tensor hidden = arena.AllocateUninitialized(DType::kF32, Shape{rows, hidden_});
  backend.RmsNormForward(stream.ptr<float>(), store_.param(final_norm_).ptr<float>(),
                         hidden.ptr<float>(), final_rstd_.ptr<float>(), rows, hidden_,
                         config_.norm_eps());
  return hidden;
}

Tensor MambaHybrid::Logits(Arena& arena, const Tensor& hidden) {
  const int64_t rows = hidden.dim(0);
  if (lm_head_) return lm_head_->Forward(arena, hidden);
  Tensor logits = arena.AllocateUninitialized(DType::kF32, Shape{rows, vocab_});
  // Tied: logits = hidden @ embedding^T.
  arena.backend().Gemm(false, true, rows, vocab_, hidden_, 1.0f, hidden.ptr<float>(), hidden_,
                       store_.param(embedding_).ptr<float>(), hidden_, 0.0f,
                       logits.ptr<float>(), vocab_);
  return logits;
}

absl::Status MambaHybrid::StartGeneration(int64_t batch, int64_t max_len) {
  for (auto& block : blocks_) {
    TESSERA_RETURN_IF_ERROR(block->StartGeneration(store_.backend(), batch, max_len));
  }
  return absl::OkStatus();
}

absl::StatusOr<Tensor> MambaHybrid::StepLogits(Arena& arena, const std::vector<int32_t>& ids) {
  Backend& backend = arena.backend();
  const int64_t batch = static_cast<int64_t>(ids.size());
  const Tensor ids_device = Upload(arena, DType::kI32, Shape{batch}, ids.data());
  Tensor stream = arena.AllocateUninitialized(DType::kF32, Shape{batch, hidden_});
  backend.EmbeddingForward(ids_device.ptr<int32_t>(), store_.param(embedding_).ptr<float>(),
                           stream.ptr<float>(), batch, hidden_);
  for (auto& block : blocks_) {
    TESSERA_ASSIGN_OR_RETURN(stream, block->Step(arena, stream));
  }
  Tensor rstd = arena.AllocateUninitialized(DType::kF32, Shape{batch});
  Tensor hidden = arena.AllocateUninitialized(DType::kF32, Shape{batch, hidden_});
  backend.RmsNormForward(stream.ptr<float>(), store_.param(final_norm_).ptr<float>(),
                         hidden.ptr<float>(), rstd.ptr<float>(), batch, hidden_,
                         config_.norm_eps());
  return Logits(arena, hidden);
}

absl::StatusOr<MambaHybrid::LossSum> MambaHybrid::ForwardLoss(Arena& arena, const LmInputs& in,
                                                              bool record) {
  const int64_t rows = in.batch * in.seq;
  TESSERA_CHECK(static_cast<int64_t>(in.inputs.size()) == rows &&
                in.targets.size() == in.inputs.size() && in.mask.size() == in.inputs.size());
  tape_.Clear();
  const Tensor ids = Upload(arena, DType::kI32, Shape{rows}, in.inputs.data());
  TESSERA_ASSIGN_OR_RETURN(Tensor hidden, ForwardHidden(arena, ids, in.batch, in.seq, record));
  // Only the positions with a target reach the head.
  std::vector<int32_t> targets, element_index;
  for (int64_t r = 0; r < rows; ++r) {
    if (in.mask[r] == 0) continue;
    targets.push_back(in.targets[r]);
    for (int64_t c = 0; c < hidden_; ++c) element_index.push_back(static_cast<int32_t>(r * hidden_ + c));
  }
  selected_ = static_cast<int64_t>(targets.size());
  LossSum loss;
  loss.count = selected_;
  if (selected_ == 0) {
    if (record) RecordHeadBackward(rows);
    return loss;
  }
  Backend& backend = arena.backend();
  selected_hidden_ = hidden;
  selected_index_ = Tensor();
  if (selected_ < rows) {
    selected_index_ = Upload(arena, DType::kI32, Shape{selected_ * hidden_}, element_index.data());
    selected_hidden_ = arena.AllocateUninitialized(DType::kF32, Shape{selected_, hidden_});
    backend.GatherElements(hidden.ptr<float>(), selected_index_.ptr<int32_t>(),
                           selected_hidden_.ptr<float>(), selected_ * hidden_);
  }
  const Tensor logits = Logits(arena, selected_hidden_);
  targets_ = Upload(arena, DType::kI32, Shape{selected_}, targets.data());
  probs_ = arena.AllocateUninitialized(DType::kF32, logits.shape());
  loss.sum = selected_ * backend.CrossEntropyForward(logits.ptr<float>(), targets_.ptr<int32_t>(),
                                                     probs_.ptr<float>(), selected_, vocab_);
  if (record) RecordHeadBackward(rows);
  return loss;
}

void MambaHybrid::RecordEmbeddingBackward(const Tensor& ids) {
  tape_.Record(
      [this, ids]() -> absl::Status {
        Tensor& dx = stack_.gradient();
        backend().EmbeddingBackward(ids.ptr<int32_t>(), dx.ptr<float>(),
                                    store_.grad(embedding_).ptr<float>(), ids.numel(), hidden_);
        return absl::OkStatus();
      },
      param_ranges_[0].first, param_ranges_[0].second);
}

void MambaHybrid::RecordHeadBackward(int64_t rows) {
  tape_.Record(
      [this, rows]() -> absl::Status {
        Arena& arena = stack_.scratch();
        Backend& backend = arena.backend();
        Tensor dhidden = arena.Allocate(DType::kF32, Shape{rows, hidden_});
        if (selected_ > 0) {
          Tensor dlogits = arena.AllocateUninitialized(DType::kF32, probs_.shape());
          // The kernel's gradient is of the mean over rows: scale by the count for the sum.
          backend.CrossEntropyBackward(probs_.ptr<float>(), targets_.ptr<int32_t>(),
                                       dlogits.ptr<float>(), selected_, vocab_,
                                       scale_ * static_cast<float>(selected_));
          Tensor dselected = selected_index_.defined()
                                 ? arena.AllocateUninitialized(DType::kF32, selected_hidden_.shape())
                                 : dhidden;
          if (lm_head_) {
            Tensor dx = lm_head_->Backward(arena, dlogits);
            backend.Copy(dselected.address(), dx.address(), dx.bytes());
          } else {
            const float* table = store_.param(embedding_).ptr<float>();
            backend.Gemm(false, false, selected_, hidden_, vocab_, 1.0f, dlogits.ptr<float>(),
                         vocab_, table, hidden_, 0.0f, dselected.ptr<float>(), hidden_);
            backend.Gemm(true, false, vocab_, hidden_, selected_, 1.0f, dlogits.ptr<float>(),
                         vocab_, selected_hidden_.ptr<float>(), hidden_, 1.0f,
                         store_.grad(embedding_).ptr<float>(), hidden_);
          }
          if (selected_index_.defined()) {
            backend.ScatterElements(dselected.ptr<float>(), selected_index_.ptr<int32_t>(),
                                    dhidden.ptr<float>(), selected_ * hidden_);
          }
        }
        Tensor dx = arena.AllocateUninitialized(DType::kF32, Shape{rows, hidden_});
        backend.RmsNormBackward(dhidden.ptr<float>(), final_in_.ptr<float>(),
                                store_.param(final_norm_).ptr<float>(), final_rstd_.ptr<float>(),
                                dx.ptr<float>(), store_.grad(final_norm_).ptr<float>(), rows,
                                hidden_);
        stack_.gradient() = dx;
        return absl::OkStatus();
      },
      param_ranges_.back().first, param_ranges_.back().second);
}

absl::Status MambaHybrid::Backward(Arena& arena, float scale) {
  scale_ = scale;
  absl::Status status = tape_.Backward();
  stack_.Clear();
  stack_.scratch().Reset();
  (void)arena;
  final_in_ = final_rstd_ = selected_hidden_ = selected_index_ = targets_ = probs_ = Tensor();
  return status;
}

double MambaHybrid::ForwardFlops(int64_t batch, int64_t seq) const {
  double flops = 2.0 * batch * seq * hidden_ * vocab_;  // the head
  for (const auto& block : blocks_) flops += block->ForwardFlops(batch, seq);
  return flops;
}

size_t MambaHybrid::PredictActivationBytes(int64_t batch, int64_t seq) const {
  const double rows = static_cast<double>(batch) * seq;
  double floats = rows * (3.0 * hidden_ + 2) + 2 * rows * vocab_ + rows * hidden_;
  double largest = 0;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const double layer = rows * blocks_[i]->SavedFloatsPerToken();
    largest = std::max(largest, layer);
    floats += recompute_[i] ? rows * hidden_ : layer;
  }
  // The scratch arena: one layer's backward (about its forward again, twice
  // with recomputation), or the head's.
  floats += std::max(2 * largest, 2 * rows * vocab_ + 2 * rows * hidden_);
  return static_cast<size_t>(floats * sizeof(float));
}

}  // namespace tessera::mamba_hybrid
