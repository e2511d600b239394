#include "models/mamba_hybrid/model.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "models/mamba_hybrid/attention.h"
#include "models/mamba_hybrid/config_rules.h"
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
    const MambaHybridConfig& config, ParameterStore& store, const parallel::ModelParallel* mp) {
  TESSERA_ASSIGN_OR_RETURN(std::string pattern, ResolvePattern(config));
  if (pattern.find(kMoe) != std::string::npos && !config.has_moe()) {
    return UsageError(absl::StrCat(Field("model.mamba_hybrid.pattern", pattern),
                                   " has MoE layers (E): set model.mamba_hybrid.moe"));
  }
  auto model =
      std::unique_ptr<MambaHybrid>(new MambaHybrid(config, std::move(pattern), store, mp));
  TESSERA_RETURN_IF_ERROR(model->Build());
  return model;
}

namespace {

HybridLayout MakeLayout(const parallel::ModelParallel* mp, const SingleProcessLayout* one) {
  if (mp == nullptr) return one->layout();
  HybridLayout layout;
  layout.tp = mp->tp;
  layout.sp = mp->sp;
  layout.megatron_sp = mp->sequence_parallel && mp->tp_size() > 1;
  layout.ep = mp->ep;
  layout.tp_sp = mp->tp_sp;
  layout.dp = mp->dp;
  return layout;
}

// GLOBAL_BATCH balance counts summed over the data-parallel replicas.
GlobalBalanceCounts MakeGlobalBalance(const HybridLayout& layout) {
  if (layout.dp == nullptr || layout.dp->size() == 1) return GlobalBalanceCounts();
  parallel::Communicator* dp = &layout.dp->host();  // counts on the host
  return GlobalBalanceCounts([dp](std::vector<int64_t>& values) {
    return dp->Complete(
        dp->AllReduce(values.data(), values.size(), DType::kI64, parallel::ReduceOp::kSum));
  });
}

}  // namespace

MambaHybrid::MambaHybrid(const MambaHybridConfig& config, std::string pattern,
                         ParameterStore& store, const parallel::ModelParallel* mp)
    : config_(config),
      pattern_(std::move(pattern)),
      store_(store),
      one_process_(mp ? nullptr : std::make_unique<SingleProcessLayout>(store.backend())),
      layout_(MakeLayout(mp, one_process_.get())),
      hidden_(config.hidden_size()),
      vocab_(config.vocab_size()),
      vocab_local_(config.vocab_size() / layout_.tp_size()),
      global_balance_(MakeGlobalBalance(layout_)),
      loss_(*layout_.tp, layout_.tp_rank() * vocab_local_),
      recompute_(pattern_.size(), config.recompute()),
      stack_(store.backend()) {}

absl::StatusOr<std::unique_ptr<Sublayer>> MambaHybrid::MakeSublayer(char kind,
                                                                     const std::string& prefix) {
  switch (kind) {
    case kMamba:
      return std::make_unique<Mamba2Mixer>(store_, prefix + ".mixer", config_, layout_);
    case kAttention:
      return std::make_unique<CausalSelfAttention>(store_, prefix + ".mixer", config_, layout_);
    case kMoe: {
      MoeLayer::Options options = MoeLayerOptions(config_.moe(), MoeDefaults(config_));
      if (config_.moe().balance_scope() == MoeConfig::GLOBAL_BATCH) {
        options.global_balance = &global_balance_;
      }
      TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<HybridMoe> moe,
                               HybridMoe::Create(store_, prefix + ".moe", hidden_, layout_, options));
      moe_layers_.push_back(moe.get());
      return std::unique_ptr<Sublayer>(std::move(moe));
    }
    default:
      return std::make_unique<HybridMlp>(store_, prefix + ".mlp", config_, layout_);
  }
}

absl::Status MambaHybrid::Build() {
  embedding_ = RegisterTpSplit(store_, layout_, "embedding.weight", Shape{vocab_, hidden_}, 0,
                               ParamInit::Normal(kEmbeddingStd), /*weight_decay=*/false);
  param_ranges_.emplace_back(embedding_, embedding_ + 1);
  for (size_t i = 0; i < pattern_.size(); ++i) {
    const int first = store_.size();
    const std::string prefix = absl::StrCat("layers.", i);
    TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Sublayer> sublayer, MakeSublayer(pattern_[i], prefix));
    blocks_.push_back(std::make_unique<HybridBlock>(store_, prefix + ".norm.weight", hidden_,
                                                    config_.norm_eps(), std::move(sublayer),
                                                    TokenShardSpec(layout_)));
    param_ranges_.emplace_back(first, store_.size());
  }
  const int head_first = store_.size();
  final_norm_ = store_.Register("norm_f.weight", Shape{hidden_}, ParamInit::Ones(),
                                /*weight_decay=*/false, TokenShardSpec(layout_));
  if (!config_.tie_embeddings()) {
    const float bound = static_cast<float>(1 / std::sqrt(static_cast<double>(hidden_)));
    lm_head_ = RegisterTpSplit(store_, layout_, "lm_head.weight", Shape{vocab_, hidden_}, 0,
                               ParamInit::Uniform(bound), /*weight_decay=*/true);
  }
  param_ranges_.emplace_back(head_first, store_.size());
  return absl::OkStatus();
}

absl::StatusOr<Tensor> MambaHybrid::RunLayers(Arena& arena, Tensor stream, int64_t batch,
                                              int64_t seq, bool record) {
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
    if (keep_activations_) kept_.streams.push_back(stream);
  }
  const int64_t rows = stream.dim(0);
  final_in_ = stream;
  final_rstd_ = arena.AllocateUninitialized(DType::kF32, Shape{rows});
  Tensor hidden = arena.AllocateUninitialized(DType::kF32, Shape{rows, hidden_});
  arena.backend().RmsNormForward(stream.ptr<float>(), store_.param(final_norm_).ptr<float>(),
                                 hidden.ptr<float>(), final_rstd_.ptr<float>(), rows, hidden_,
                                 config_.norm_eps());
  return hidden;
}

absl::StatusOr<Tensor> MambaHybrid::ForwardHidden(Arena& arena, const Tensor& ids, int64_t batch,
                                                  int64_t seq, bool record) {
  if (layout_.tp_size() != 1 || layout_.sp_size() != 1) {
    return absl::FailedPreconditionError(
        "MambaHybrid::ForwardHidden runs on one process (generation); training uses ForwardLoss");
  }
  global_balance_.set_active(false);  // generation counts its own tokens, no collective
  const int64_t rows = batch * seq;
  Tensor stream = arena.AllocateUninitialized(DType::kF32, Shape{rows, hidden_});
  arena.backend().EmbeddingForward(ids.ptr<int32_t>(), store_.param(embedding_).ptr<float>(),
                                   stream.ptr<float>(), rows, hidden_);
  ids_ = ids;
  batch_ = batch;
  if (record) RecordEmbeddingBackward(ids);
  return RunLayers(arena, stream, batch, seq, record);
}

Tensor MambaHybrid::HeadLogits(Arena& arena, const Tensor& hidden) {
  const int64_t rows = hidden.dim(0);
  const ParameterStore::Id head = lm_head_ >= 0 ? lm_head_ : embedding_;
  Tensor logits = arena.AllocateUninitialized(DType::kF32, Shape{rows, vocab_local_});
  // logits = hidden @ W^T, W this rank's [vocab/tp, hidden] rows (tied: the embedding's).
  arena.backend().Gemm(false, true, rows, vocab_local_, hidden_, 1.0f, hidden.ptr<float>(),
                       hidden_, store_.param(head).ptr<float>(), hidden_, 0.0f,
                       logits.ptr<float>(), vocab_local_);
  return logits;
}

Tensor MambaHybrid::Logits(Arena& arena, const Tensor& hidden) {
  TESSERA_CHECK(layout_.tp_size() == 1);
  return HeadLogits(arena, hidden);
}

absl::Status MambaHybrid::StartGeneration(int64_t batch, int64_t max_len) {
  for (auto& block : blocks_) {
    TESSERA_RETURN_IF_ERROR(block->StartGeneration(store_.backend(), batch, max_len));
  }
  return absl::OkStatus();
}

absl::StatusOr<Tensor> MambaHybrid::StepLogits(Arena& arena, const std::vector<int32_t>& ids) {
  Backend& backend = arena.backend();
  global_balance_.set_active(false);
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

LmInputs MambaHybrid::ShardOf(const LmInputs& in) const {
  if (layout_.sp_size() == 1) return in;
  LmInputs shard;
  shard.batch = in.batch;
  shard.seq = in.seq / layout_.sp_size();  // the config rules made it exact
  const int64_t first = layout_.sp_rank() * shard.seq;
  for (int64_t b = 0; b < in.batch; ++b) {
    const int64_t begin = b * in.seq + first, end = begin + shard.seq;
    shard.inputs.insert(shard.inputs.end(), in.inputs.begin() + begin, in.inputs.begin() + end);
    shard.targets.insert(shard.targets.end(), in.targets.begin() + begin,
                         in.targets.begin() + end);
    shard.mask.insert(shard.mask.end(), in.mask.begin() + begin, in.mask.begin() + end);
  }
  return shard;
}

absl::StatusOr<Tensor> MambaHybrid::Embed(Arena& arena, const std::vector<int32_t>& ids,
                                          int64_t batch) {
  Backend& backend = arena.backend();
  const int64_t rows = static_cast<int64_t>(ids.size());
  Tensor partial = arena.AllocateUninitialized(DType::kF32, Shape{rows, hidden_});
  if (layout_.tp_size() == 1) {
    ids_ = Upload(arena, DType::kI32, Shape{rows}, ids.data());
    backend.EmbeddingForward(ids_.ptr<int32_t>(), store_.param(embedding_).ptr<float>(),
                             partial.ptr<float>(), rows, hidden_);
    return partial;
  }
  // Vocab-parallel: ids of other ranks' vocabulary read a zero row appended
  // to this rank's [vocab/tp, hidden] piece; the sum over tp is the lookup.
  const int64_t begin = layout_.tp_rank() * vocab_local_;
  std::vector<int32_t> local(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t id = ids[i] - begin;
    local[i] = static_cast<int32_t>(id >= 0 && id < vocab_local_ ? id : vocab_local_);
  }
  ids_ = Upload(arena, DType::kI32, Shape{rows}, local.data());
  Tensor table = arena.AllocateUninitialized(DType::kF32, Shape{vocab_local_ + 1, hidden_});
  const Tensor piece = store_.param(embedding_);
  backend.Copy(table.address(), piece.address(), piece.bytes());
  backend.Memset(table.ptr<float>() + vocab_local_ * hidden_, 0, hidden_ * sizeof(float));
  backend.EmbeddingForward(ids_.ptr<int32_t>(), table.ptr<float>(), partial.ptr<float>(), rows,
                           hidden_);
  return ExitTpRegion(arena, layout_, partial, batch);
}

absl::StatusOr<MambaHybrid::LossSum> MambaHybrid::ForwardLoss(Arena& arena, const LmInputs& in,
                                                              bool record) {
  TESSERA_ASSIGN_OR_RETURN(LossSum loss, ForwardLossTotals(arena, in, record));
  if (loss.totals.defined()) {
    double host[2];  // the loss sum and the hits
    arena.backend().CopyToHost(host, loss.totals.address(), sizeof(host));
    loss.sum = host[0];
    loss.correct = static_cast<int64_t>(host[1]);
  }
  return loss;
}

absl::StatusOr<MambaHybrid::LossSum> MambaHybrid::ForwardLossTotals(Arena& arena,
                                                                    const LmInputs& whole,
                                                                    bool record) {
  TESSERA_CHECK(static_cast<int64_t>(whole.inputs.size()) == whole.batch * whole.seq &&
                whole.targets.size() == whole.inputs.size() &&
                whole.mask.size() == whole.inputs.size());
  tape_.Clear();
  // Training forwards count the global batch's routing (GLOBAL_BATCH);
  // evaluation counts its own tokens, with no collective.
  global_balance_.set_active(record);
  const LmInputs in = ShardOf(whole);
  batch_ = in.batch;
  const int64_t rows = in.batch * in.seq;  // this sp shard's positions
  TESSERA_ASSIGN_OR_RETURN(Tensor stream, Embed(arena, in.inputs, in.batch));
  if (record) RecordEmbeddingBackward(ids_);
  const int64_t local_rows = stream.dim(0);  // a tp chunk of them under Megatron SP
  kept_ = KeptActivations();
  if (keep_activations_) {
    kept_.batch = in.batch;
    kept_.hidden_first = layout_.sp_rank() * in.seq;
    kept_.stream_first =
        kept_.hidden_first +
        (layout_.rows_split_over_tp() ? layout_.tp_rank() * local_rows / in.batch : 0);
    kept_.streams.push_back(stream);
  }
  TESSERA_ASSIGN_OR_RETURN(Tensor hidden_local,
                           RunLayers(arena, stream, in.batch, local_rows / in.batch, record));
  TESSERA_ASSIGN_OR_RETURN(const Tensor hidden,
                           EnterTpRegion(arena, layout_, hidden_local, in.batch));
  if (keep_activations_) kept_.hidden = hidden;
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
  selected_hidden_ = hidden;
  selected_index_ = Tensor();
  if (selected_ > 0 && selected_ < rows) {
    selected_index_ = Upload(arena, DType::kI32, Shape{selected_ * hidden_}, element_index.data());
    selected_hidden_ = arena.AllocateUninitialized(DType::kF32, Shape{selected_, hidden_});
    arena.backend().GatherElements(hidden.ptr<float>(), selected_index_.ptr<int32_t>(),
                                   selected_hidden_.ptr<float>(), selected_ * hidden_);
  }
  if (selected_ > 0) {
    const Tensor logits = HeadLogits(arena, selected_hidden_);
    TESSERA_ASSIGN_OR_RETURN(loss.totals, loss_.ForwardTotals(arena, logits, targets));
  }
  if (record) RecordHeadBackward();
  // The balance losses' weight: the micro-batch's targets in every shard.
  balance_weight_ = 0;
  for (uint8_t m : whole.mask) balance_weight_ += m != 0;
  loss.balance_weight = balance_weight_;
  for (const HybridMoe* moe : moe_layers_) loss.balance_loss += moe->balance_loss();
  return loss;
}

void MambaHybrid::RecordEmbeddingBackward(const Tensor& ids) {
  tape_.Record(
      [this, ids]() -> absl::Status {
        Arena& arena = stack_.scratch();
        Backend& backend = arena.backend();
        TESSERA_ASSIGN_OR_RETURN(const Tensor dx,
                                 ExitTpRegionBackward(arena, layout_, stack_.gradient(), batch_));
        if (layout_.tp_size() == 1) {
          backend.EmbeddingBackward(ids.ptr<int32_t>(), dx.ptr<float>(),
                                    store_.grad(embedding_).ptr<float>(), ids.numel(), hidden_);
          return absl::OkStatus();
        }
        // Rows of other ranks' vocabulary land in the appended row, dropped.
        Tensor dtable = arena.Allocate(DType::kF32, Shape{vocab_local_ + 1, hidden_});
        backend.EmbeddingBackward(ids.ptr<int32_t>(), dx.ptr<float>(), dtable.ptr<float>(),
                                  ids.numel(), hidden_);
        backend.AddInPlace(store_.grad(embedding_).ptr<float>(), dtable.ptr<float>(),
                           vocab_local_ * hidden_);
        return absl::OkStatus();
      },
      param_ranges_[0].first, param_ranges_[0].second);
}

absl::Status MambaHybrid::HeadBackward(Arena& arena) {
  Backend& backend = arena.backend();
  const int64_t rows =
      final_in_.dim(0) * (layout_.rows_split_over_tp() ? layout_.tp_size() : 1);
  Tensor dhidden = arena.Allocate(DType::kF32, Shape{rows, hidden_});  // the shard's rows
  if (selected_ > 0) {
    const ParameterStore::Id head = lm_head_ >= 0 ? lm_head_ : embedding_;
    Tensor dlogits = arena.AllocateUninitialized(DType::kF32, Shape{selected_, vocab_local_});
    loss_.Backward(dlogits, scale_);
    Tensor dselected = selected_index_.defined()
                           ? arena.AllocateUninitialized(DType::kF32, selected_hidden_.shape())
                           : dhidden;
    // dhidden = dlogits W (a partial sum over the tp ranks' vocabulary);
    // dW += dlogits^T hidden.
    backend.Gemm(false, false, selected_, hidden_, vocab_local_, 1.0f, dlogits.ptr<float>(),
                 vocab_local_, store_.param(head).ptr<float>(), hidden_, 0.0f,
                 dselected.ptr<float>(), hidden_);
    backend.Gemm(true, false, vocab_local_, hidden_, selected_, 1.0f, dlogits.ptr<float>(),
                 vocab_local_, selected_hidden_.ptr<float>(), hidden_, 1.0f,
                 store_.grad(head).ptr<float>(), hidden_);
    if (selected_index_.defined()) {
      backend.ScatterElements(dselected.ptr<float>(), selected_index_.ptr<int32_t>(),
                              dhidden.ptr<float>(), selected_ * hidden_);
    }
  }
  TESSERA_ASSIGN_OR_RETURN(const Tensor dlocal,
                           EnterTpRegionBackward(arena, layout_, dhidden, batch_));
  const int64_t local_rows = final_in_.dim(0);
  Tensor dx = arena.AllocateUninitialized(DType::kF32, Shape{local_rows, hidden_});
  backend.RmsNormBackward(dlocal.ptr<float>(), final_in_.ptr<float>(),
                          store_.param(final_norm_).ptr<float>(), final_rstd_.ptr<float>(),
                          dx.ptr<float>(), store_.grad(final_norm_).ptr<float>(), local_rows,
                          hidden_);
  stack_.gradient() = dx;
  return absl::OkStatus();
}

void MambaHybrid::RecordHeadBackward() {
  tape_.Record([this]() -> absl::Status { return HeadBackward(stack_.scratch()); },
               param_ranges_.back().first, param_ranges_.back().second);
}

absl::Status MambaHybrid::Backward(Arena& arena, float scale) {
  scale_ = scale;
  // Each rank's E layers hold the balance gradient of their own tokens; the
  // gradient reduction sums them over the replica's ranks.
  for (HybridMoe* moe : moe_layers_) {
    moe->set_balance_loss_scale(scale * static_cast<float>(balance_weight_));
  }
  absl::Status status = tape_.Backward();
  stack_.Clear();
  stack_.scratch().Reset();
  (void)arena;
  ids_ = final_in_ = final_rstd_ = selected_hidden_ = selected_index_ = Tensor();
  kept_ = KeptActivations();
  return status;
}

double MambaHybrid::ForwardFlops(int64_t batch, int64_t seq) const {
  // This rank's share: its sp shard of the tokens, its tp vocabulary, and
  // (in the blocks) its heads and columns.
  const int64_t local_seq = seq / layout_.sp_size();
  double flops = 2.0 * batch * local_seq * hidden_ * vocab_local_;
  for (const auto& block : blocks_) flops += block->ForwardFlops(batch, local_seq);
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
