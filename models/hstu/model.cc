#include "models/hstu/model.h"

#include <cmath>

#include "runtime/base/random.h"
#include "runtime/base/status.h"

namespace tessera::hstu {
namespace {

// The output norm is RmsNorm without gamma scaled by 1/sqrt(D):
// x / sqrt(|x|^2 + D eps). With eps = 1e-12 / D that is x / max(|x|, ~1e-6),
// the reference's l2_norm (eps 1e-6) for every norm that matters.
float UnitNormEps(int64_t dim) { return 1e-12f / static_cast<float>(dim); }

uint64_t DropoutKey(const DropoutDraw& draw, uint64_t site) {
  return Mix64(Mix64(draw.seed ^ HashName("hstu.dropout")) ^ Mix64(draw.step) ^ (site << 48));
}

template <typename T>
Tensor UploadVector(Arena& arena, const std::vector<T>& values) {
  Tensor t = arena.AllocateUninitialized(DTypeOf<T>(), Shape{static_cast<int64_t>(values.size())});
  if (!values.empty()) arena.backend().CopyToDevice(t.address(), values.data(), t.bytes());
  return t;
}

}  // namespace

Tensor DropoutMask(Arena& arena, const DropoutDraw& draw, uint64_t site,
                   const Tensor& token_keys, int64_t width) {
  const int64_t tokens = token_keys.numel();
  Tensor mask = arena.AllocateUninitialized(DType::kF32, Shape{tokens, width});
  arena.backend().CounterDropoutMask(token_keys.ptr<int64_t>(), tokens, width,
                                     DropoutKey(draw, site), draw.rate, mask.ptr<float>());
  return mask;
}

absl::StatusOr<std::unique_ptr<Hstu>> Hstu::Create(const HstuConfig& config,
                                                   ParameterStore& store,
                                                   parallel::Communicator* tp,
                                                   parallel::Communicator* sp) {
  auto model = std::unique_ptr<Hstu>(new Hstu(config, store, tp, sp));
  HstuLayerDims dims;
  dims.dim = model->dim_;
  dims.heads = config.num_heads();
  dims.attention_dim = config.attention_dim();
  dims.linear_dim = config.linear_dim();
  dims.max_len = model->max_len_;
  dims.num_time_buckets = config.num_time_buckets();
  for (int l = 0; l < config.num_blocks(); ++l) {
    const int first = store.size();
    TESSERA_ASSIGN_OR_RETURN(
        std::unique_ptr<HstuLayer> block,
        HstuLayer::Create(store, *model->tp_, *model->sp_, "blocks." + std::to_string(l), dims));
    model->blocks_.push_back(std::move(block));
    model->block_params_.emplace_back(first, store.size());
  }
  return model;
}

Hstu::Hstu(const HstuConfig& config, ParameterStore& store, parallel::Communicator* tp,
           parallel::Communicator* sp)
    : store_(store),
      one_tp_(tp ? nullptr
                 : std::make_unique<parallel::SingleRankCommunicator>(store.backend(), "tp")),
      one_sp_(sp ? nullptr
                 : std::make_unique<parallel::SingleRankCommunicator>(store.backend(), "sp")),
      tp_(tp ? tp : one_tp_.get()),
      sp_(sp ? sp : one_sp_.get()),
      dim_(config.embedding_dim()),
      max_len_(config.max_len()),
      num_items_(config.num_items()) {
  pos_table_ = store.Register("pos_embedding", Shape{max_len_, dim_},
                              ParamInit::Normal(std::sqrt(1.0f / dim_)), /*weight_decay=*/false);
}

JaggedTokens Hstu::Upload(Arena& arena, const HstuBatch& batch) {
  JaggedTokens tokens;
  tokens.users = batch.users();
  tokens.total = batch.tokens();
  tokens.mine = Tokens(batch);
  const Tensor offsets = UploadVector(arena, batch.offsets);
  const Tensor timestamps = UploadVector(arena, batch.timestamps);
  const Tensor next = UploadVector(arena, batch.next_timestamps);
  Tensor query = arena.AllocateUninitialized(DType::kI64, Shape{tokens.total});
  arena.backend().HstuQueryTimestamps(offsets.ptr<int64_t>(), tokens.users,
                                      timestamps.ptr<int64_t>(), next.ptr<int64_t>(),
                                      query.ptr<int64_t>());
  tokens.offsets = offsets.ptr<int64_t>();
  tokens.timestamps = timestamps.ptr<int64_t>();
  tokens.query_timestamps = query.ptr<int64_t>();
  const std::vector<int32_t> positions(batch.positions.begin() + tokens.mine.begin,
                                       batch.positions.begin() + tokens.mine.end);
  positions_ = UploadVector(arena, positions);
  return tokens;
}

// x = item_embedding[items] * sqrt(D) + pos_embedding[positions], dropped
// out, for this rank's tokens.
Tensor Hstu::Embed(Arena& arena, int64_t total, const float* item_rows, const Tensor& mask) {
  Backend& backend = arena.backend();
  const int64_t n = total * dim_;
  Tensor x = arena.AllocateUninitialized(DType::kF32, Shape{total, dim_});  // [T, D]
  Tensor pos = arena.AllocateUninitialized(DType::kF32, Shape{total, dim_});
  backend.Copy(x.address(), item_rows, x.bytes());
  backend.Scale(x.ptr<float>(), n, std::sqrt(static_cast<float>(dim_)));
  backend.EmbeddingForward(positions_.ptr<int32_t>(), store_.param(pos_table_).ptr<float>(),
                           pos.ptr<float>(), total, dim_);
  backend.AddInPlace(x.ptr<float>(), pos.ptr<float>(), n);
  return mask.defined() ? ApplyDropout(arena, x, mask) : x;
}

void Hstu::EmbedBackward(Arena& arena, const Tensor& dx) {
  Backend& backend = arena.backend();
  const int64_t total = dx.dim(0), n = total * dim_;
  Tensor d;
  if (input_mask_.defined()) {
    d = ApplyDropout(arena, dx, input_mask_);
  } else {
    d = arena.AllocateUninitialized(DType::kF32, Shape{total, dim_});
    backend.Copy(d.address(), dx.address(), d.bytes());
  }
  backend.EmbeddingBackward(positions_.ptr<int32_t>(), d.ptr<float>(),
                            store_.grad(pos_table_).ptr<float>(), total, dim_);
  backend.Scale(d.ptr<float>(), n, std::sqrt(static_cast<float>(dim_)));
  backend.Copy(ditem_rows_, d.address(), d.bytes());
}

Tensor Hstu::Normalize(Arena& arena, const Tensor& y) {
  const int64_t total = y.dim(0);
  Tensor out = arena.AllocateUninitialized(DType::kF32, Shape{total, dim_});
  rstd_ = arena.AllocateUninitialized(DType::kF32, Shape{total});
  arena.backend().RmsNormForward(y.ptr<float>(), nullptr, out.ptr<float>(), rstd_.ptr<float>(),
                                 total, dim_, UnitNormEps(dim_));
  arena.backend().Scale(out.ptr<float>(), total * dim_, 1.0f / std::sqrt(static_cast<float>(dim_)));
  last_hidden_ = y;
  return out;
}

Tensor Hstu::NormalizeBackward(Arena& arena, const Tensor& doutput) {
  const int64_t total = doutput.dim(0);
  Tensor scaled = arena.AllocateUninitialized(DType::kF32, Shape{total, dim_});
  arena.backend().Copy(scaled.address(), doutput.address(), scaled.bytes());
  arena.backend().Scale(scaled.ptr<float>(), total * dim_,
                        1.0f / std::sqrt(static_cast<float>(dim_)));
  Tensor dy = arena.AllocateUninitialized(DType::kF32, Shape{total, dim_});
  arena.backend().RmsNormBackward(scaled.ptr<float>(), last_hidden_.ptr<float>(), nullptr,
                                  rstd_.ptr<float>(), dy.ptr<float>(), nullptr, total, dim_);
  return dy;
}

absl::StatusOr<Tensor> Hstu::Forward(Arena& arena, const HstuBatch& batch,
                                     const float* item_rows, const DropoutDraw* dropout,
                                     bool record) {
  tape_.Clear();
  arena_ = &arena;
  // Every rank of the groups holds the same batch: all skip, or none does
  // (a rank whose share is no token still joins the layers' collectives).
  empty_ = batch.tokens() == 0;
  const bool drop = dropout != nullptr && dropout->rate > 0 && !empty_;
  const JaggedTokens tokens = Upload(arena, batch);
  // This rank's tokens' keys, on the device once for every site's mask.
  const Tensor keys = drop ? UploadVector(arena, std::vector<int64_t>(
                                                     batch.token_keys.begin() + tokens.mine.begin,
                                                     batch.token_keys.begin() + tokens.mine.end))
                           : Tensor();
  input_mask_ = drop ? DropoutMask(arena, *dropout, 0, keys, dim_) : Tensor();
  Tensor x = empty_ ? arena.AllocateUninitialized(DType::kF32, Shape{0, dim_})
                    : Embed(arena, tokens.mine.size(), item_rows, input_mask_);
  if (record) {
    tape_.Record([this] {
      if (!empty_) EmbedBackward(*arena_, dhidden_);
      return absl::OkStatus();
    }, 0, block_params_.empty() ? store_.size() : block_params_[0].first);
  }
  for (size_t l = 0; l < blocks_.size(); ++l) {
    const HstuLayer& block = *blocks_[l];
    const Tensor mask =
        drop ? DropoutMask(arena, *dropout, 1 + l, keys, block.dims().gated()) : Tensor();
    if (!empty_) {
      TESSERA_ASSIGN_OR_RETURN(x, blocks_[l]->Forward(arena, x, tokens, mask));
    }
    if (record) {
      tape_.Record([this, l]() -> absl::Status {
        if (!empty_) {
          TESSERA_ASSIGN_OR_RETURN(dhidden_, blocks_[l]->Backward(*arena_, dhidden_));
        }
        return absl::OkStatus();
      }, block_params_[l].first, block_params_[l].second);
    }
  }
  if (empty_) return x;
  return Normalize(arena, x);
}

absl::Status Hstu::Backward(const Tensor& doutput, float* ditem_rows) {
  ditem_rows_ = ditem_rows;
  dhidden_ = empty_ ? doutput : NormalizeBackward(*arena_, doutput);
  absl::Status status = tape_.Backward();
  dhidden_ = last_hidden_ = rstd_ = input_mask_ = positions_ = Tensor();
  ditem_rows_ = nullptr;
  return status;
}

double Hstu::ForwardFlops(int64_t length) const {
  double flops = 0;
  for (const auto& block : blocks_) flops += block->ForwardFlops(length);
  return flops;
}

}  // namespace tessera::hstu
