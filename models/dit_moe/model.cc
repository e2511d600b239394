#include "models/dit_moe/model.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "models/dit_moe/config_rules.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera::dit_moe {

DitMoeDims ResolveDims(const DitMoeConfig& c) {
  DitMoeDims d;
  d.input_size = c.input_size();
  d.channels = c.in_channels();
  d.patch = c.patch_size();
  d.hidden = c.hidden_size();
  d.depth = c.depth();
  d.heads = c.num_heads();
  d.num_classes = c.num_classes();
  d.num_experts = c.moe().num_experts();
  d.top_k = c.moe().experts_per_token();
  d.expert_hidden = ResolvedExpertHidden(c.moe(), MoeDefaults(c));
  d.shared_expert_hidden = ResolvedSharedExpertHidden(c.moe(), MoeDefaults(c));
  d.frequency_dim = c.frequency_embedding_size();
  d.capacity_factor = c.moe().capacity_factor();
  return d;
}

absl::StatusOr<std::unique_ptr<DitMoe>> DitMoe::Create(const DitMoeConfig& config,
                                                       ParameterStore& store,
                                                       const ModelParallel* mp) {
  const DitMoeDims dims = ResolveDims(config);
  if (dims.hidden % 4 != 0) {
    return UsageError(absl::StrFormat(
        "model.dit_moe.hidden_size=%d must be a multiple of 4 (2-D sin-cos positions)",
        dims.hidden));
  }
  if (dims.patch <= 0 || dims.input_size % dims.patch != 0) {
    return UsageError(absl::StrFormat("model.dit_moe.patch_size=%d must divide input_size=%d",
                                      dims.patch, dims.input_size));
  }
  if (dims.heads <= 0 || dims.hidden % dims.heads != 0) {
    return UsageError(absl::StrFormat("model.dit_moe.num_heads=%d must divide hidden_size=%d",
                                      dims.heads, dims.hidden));
  }
  if (dims.top_k < 1 || dims.top_k > dims.num_experts) {
    return UsageError(absl::StrFormat(
        "model.dit_moe.moe.experts_per_token=%d must be in [1, num_experts=%d]", dims.top_k,
        dims.num_experts));
  }
  auto model = std::unique_ptr<DitMoe>(new DitMoe(config, dims, store, mp));
  TESSERA_RETURN_IF_ERROR(model->Build(store));
  return model;
}

namespace {
// Under Megatron SP the patch embedding and the final linear run on a tp
// shard of the tokens: their gradients are partial sums over tp.
ParallelSpec TokenShardSpec(const ModelParallel* mp) {
  return mp && mp->sequence_parallel && mp->tp_size() > 1 ? ParallelSpec::TensorPartial()
                                                            : ParallelSpec::Replicated();
}
}  // namespace

DitMoe::DitMoe(const DitMoeConfig& config, const DitMoeDims& dims, ParameterStore& store,
               const ModelParallel* mp)
    : config_(config),
      dims_(dims),
      x_embedder_(store, "x_embedder", dims.channels, dims.input_size, dims.patch, dims.hidden,
                  TokenShardSpec(mp)),
      output_layout_(store.backend(), dims.channels, dims.input_size, dims.patch,
                     /*channel_last=*/true),
      t_embedder_(store, "t_embedder", dims.hidden, dims.frequency_dim),
      y_embedder_(store, "y_embedder", dims.num_classes, dims.hidden),
      stack_(store.backend()) {
  const int64_t T = dims.tokens();
  local_tokens_ = T;
  if (mp != nullptr && mp->dp != nullptr && mp->dp->size() > 1) {
    // GLOBAL_BATCH balance counts: summed over the data-parallel replicas.
    global_balance_ = GlobalBalanceCounts([dp = &mp->dp->host()](std::vector<int64_t>& values) {
      return dp->Complete(
          dp->AllReduce(values.data(), values.size(), DType::kI64, parallel::ReduceOp::kSum));
    });
  }
  if (mp != nullptr && mp->splits_model()) {
    parallel_ = true;
    mp_ = *mp;
    // Chunk sp_rank of T/sp tokens, and under Megatron SP chunk tp_rank of
    // that (sublayers.h). The layout checks (ValidateLayout) made these exact.
    const int64_t per_sp = T / mp->sp_size();
    first_token_ = mp->sp->rank() * per_sp;
    local_tokens_ = per_sp;
    if (mp->sequence_parallel && mp->tp_size() > 1) {
      local_tokens_ = per_sp / mp->tp_size();
      first_token_ += mp->tp->rank() * local_tokens_;
      loss_share_ = 1.0 / mp->tp_size();
    }
  }
}

absl::Status DitMoe::Build(ParameterStore& store) {
  const ModelParallel* mp = parallel_ ? &mp_ : nullptr;
  param_ranges_.emplace_back(0, store.size());
  MoeLayer::Options moe = MoeLayerOptions(config_.moe(), MoeDefaults(config_));
  if (config_.moe().balance_scope() == MoeConfig::GLOBAL_BATCH) moe.global_balance = &global_balance_;
  recompute_.assign(dims_.depth, config_.recompute());
  for (int64_t i = 0; i < dims_.depth; ++i) {
    const int first = store.size();
    TESSERA_ASSIGN_OR_RETURN(auto block,
                             DitBlock::Create(store, "blocks." + std::to_string(i), dims_.hidden,
                                              dims_.heads, moe, mp));
    blocks_.push_back(std::move(block));
    param_ranges_.emplace_back(first, store.size());
  }
  const int first = store.size();
  TESSERA_ASSIGN_OR_RETURN(final_layer_, FinalLayer::Create(store, "final_layer", dims_.hidden,
                                                            dims_.patch_dim(), mp));
  param_ranges_.emplace_back(first, store.size());
  return absl::OkStatus();
}

absl::StatusOr<Tensor> DitMoe::ForwardRows(Arena& arena, const Tensor& x, const float* t,
                                           const int32_t* labels, bool record) {
  // Training forwards count the global batch's routing (GLOBAL_BATCH scope);
  // sampling and evaluation count their own tokens, with no collective.
  global_balance_.set_active(record);
  const int64_t B = x.dim(0), S = local_tokens_, D = dims_.hidden;
  if (x.rank() != 4 || x.dim(1) != dims_.channels || x.dim(2) != dims_.input_size ||
      x.dim(3) != dims_.input_size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "DiT-MoE input is %s, the config wants [B, %d, %d, %d] (model.dit_moe.in_channels, "
        "input_size)",
        x.DebugString(), dims_.channels, dims_.input_size, dims_.input_size));
  }
  batch_ = B;
  tape_.Clear();
  Backend& backend = arena.backend();

  Tensor stream = x_embedder_.Forward(arena, x, first_token_, S);  // [B*S, D]
  Tensor t_emb = t_embedder_.Forward(arena, t, B);
  Tensor y_emb = y_embedder_.Forward(arena, labels, B);
  cond_ = t_emb;  // c = t_emb + y_emb, in place
  backend.AddInPlace(cond_.ptr<float>(), y_emb.ptr<float>(), B * D);
  cond_silu_ = arena.AllocateUninitialized(DType::kF32, Shape{B, D});
  backend.SiluForward(cond_.ptr<float>(), cond_silu_.ptr<float>(), B * D);
  if (record) {
    tape_.Record([this, &arena] {
      // c = t_emb + y_emb: both embedders receive dc.
      Tensor dcond = arena.AllocateUninitialized(DType::kF32, cond_.shape());
      arena.backend().SiluBackward(dcond_silu_.ptr<float>(), cond_.ptr<float>(),
                                   dcond.ptr<float>(), dcond.numel());
      y_embedder_.Backward(arena, dcond);
      t_embedder_.Backward(arena, dcond);
      x_embedder_.Backward(arena, stack_.gradient());
      return absl::OkStatus();
    }, param_ranges_[0].first, param_ranges_[0].second);
  }

  for (size_t i = 0; i < blocks_.size(); ++i) {
    DitBlock& block = *blocks_[i];
    TESSERA_ASSIGN_OR_RETURN(
        stream,
        stack_.Run(
            tape_, arena, stream, recompute_[i], record,
            [this, &block, B, S](Arena& a, const Tensor& in) {
              return block.Forward(a, in, cond_silu_, B, S);
            },
            [this, &block](Arena& a, const Tensor& dy) {
              return block.Backward(a, dy, dcond_silu_, loss_scale_);
            },
            param_ranges_[1 + i].first, param_ranges_[1 + i].second));
  }
  TESSERA_ASSIGN_OR_RETURN(
      Tensor rows,
      stack_.Run(
          tape_, arena, stream, /*recompute=*/false, record,
          [this, B, S](Arena& a, const Tensor& in) {
            return final_layer_->Forward(a, in, cond_silu_, B, S);
          },
          [this](Arena& a, const Tensor& dy) {
            return final_layer_->Backward(a, dy, dcond_silu_);
          },
          param_ranges_.back().first, param_ranges_.back().second));
  return rows;  // [B*S, p*p*C]
}

absl::Status DitMoe::BackwardRows(Arena& arena, const Tensor& drows, float loss_scale) {
  loss_scale_ = loss_scale;
  dcond_silu_ = arena.Allocate(DType::kF32, Shape{batch_, dims_.hidden});
  stack_.gradient() = drows;
  absl::Status status = tape_.Backward();
  stack_.Clear();
  dcond_silu_ = cond_ = cond_silu_ = Tensor();
  return status;
}

Tensor DitMoe::LocalRows(Arena& arena, const Tensor& images) const {
  const int64_t B = images.dim(0), T = dims_.tokens(), P = dims_.patch_dim();
  Tensor rows = arena.AllocateUninitialized(DType::kF32, Shape{B * T, P});
  output_layout_.ToRows(images.ptr<float>(), rows.ptr<float>(), B);
  if (local_tokens_ == T) return rows;
  Tensor mine = arena.AllocateUninitialized(DType::kF32, Shape{B * local_tokens_, P});
  const size_t bytes = static_cast<size_t>(local_tokens_ * P) * sizeof(float);
  arena.backend().Copy2D(mine.ptr<float>(), bytes, rows.ptr<float>() + first_token_ * P,
                         T * P * sizeof(float), bytes, B);
  return mine;
}

absl::Status DitMoe::SumLossOverTensorGroup(double* loss) const {
  if (loss_share_ == 1) return absl::OkStatus();
  std::vector<double> all(mp_.tp_size());
  parallel::Communicator& tp = mp_.tp->host();  // the loss is a host value
  TESSERA_RETURN_IF_ERROR(tp.Complete(tp.AllGather(loss, all.data(), sizeof(double), DType::kU8)));
  *loss = 0;
  for (double value : all) *loss += value;  // rank order: the same on every rank
  return absl::OkStatus();
}

absl::Status DitMoe::SumDeviceLossOverTensorGroup(Arena& arena, double* loss) const {
  if (loss_share_ == 1) return absl::OkStatus();
  Backend& backend = arena.backend();
  const auto doubles = [](const Tensor& t) { return reinterpret_cast<double*>(t.ptr<int64_t>()); };
  const Tensor share = arena.Allocate(DType::kI64, Shape{1});  // 0, then += share * loss
  backend.AccumulateScalars(loss, 1, loss_share_, doubles(share));
  parallel::Communicator& tp = *mp_.tp;
  const Tensor all = arena.AllocateUninitialized(DType::kI64, Shape{tp.size()});
  TESSERA_RETURN_IF_ERROR(
      tp.CompleteOnDevice(tp.AllGather(share.address(), all.address(), sizeof(double), DType::kU8)));
  backend.Memset(loss, 0, sizeof(double));
  backend.AccumulateScalars(doubles(all), tp.size(), 1.0, loss);  // rank order
  return absl::OkStatus();
}

absl::StatusOr<Tensor> DitMoe::Forward(Arena& arena, const Tensor& x, const float* t,
                                       const int32_t* labels, bool record) {
  if (local_tokens_ != dims_.tokens()) {
    return absl::FailedPreconditionError(
        "DitMoe::Forward needs every token on this rank; use ForwardRows under sp or Megatron SP");
  }
  TESSERA_ASSIGN_OR_RETURN(Tensor rows, ForwardRows(arena, x, t, labels, record));
  Tensor out = arena.AllocateUninitialized(DType::kF32, x.shape());
  output_layout_.ToImages(rows.ptr<float>(), out.ptr<float>(), x.dim(0));
  return out;
}

absl::Status DitMoe::Backward(Arena& arena, const Tensor& dout, float loss_scale) {
  const int64_t B = batch_, T = dims_.tokens();
  Tensor drows = arena.AllocateUninitialized(DType::kF32, Shape{B * T, dims_.patch_dim()});
  // Unpatchify is a permutation: its adjoint is its inverse.
  output_layout_.ToRows(dout.ptr<float>(), drows.ptr<float>(), B);
  return BackwardRows(arena, drows, loss_scale);
}

double DitMoe::balance_loss() const {
  double total = 0;
  for (const auto& block : blocks_) total += block->moe().balance_loss();
  return total;
}

double DitMoe::KeepReports(Backend& backend, int micro, double* device_aux) {
  const int64_t depth = static_cast<int64_t>(blocks_.size());
  if (depth == 0) return 0;
  if (blocks_[0]->moe().device_report() == nullptr) {
    // Host values already: keep them as they are.
    if (kept_host_.size() <= static_cast<size_t>(micro)) kept_host_.resize(micro + 1);
    kept_host_[micro] = RoutingReport{balance_loss(), expert_load(), dropped_assignments()};
    return kept_host_[micro].balance_loss;
  }
  const int64_t width = dims_.num_experts + 2;
  const int64_t slots = (micro + 1) * depth * width;
  if (!kept_reports_.defined() || kept_reports_.numel() < slots ||
      &kept_reports_.backend() != &backend) {
    // Grown (with what earlier micro-batches of this step kept) to the
    // step's micro-batches: the first step only, as the arena.
    Tensor grown = Tensor::Empty(DType::kI64, Shape{slots}, backend);
    if (kept_reports_.defined() && &kept_reports_.backend() == &backend) {
      backend.Copy(grown.address(), kept_reports_.address(), kept_reports_.bytes());
    }
    kept_reports_ = grown;
  }
  for (int64_t l = 0; l < depth; ++l) {
    const Tensor& report = *blocks_[l]->moe().device_report();
    int64_t* slot = kept_reports_.ptr<int64_t>() + (micro * depth + l) * width;
    backend.Copy(slot, report.address(), report.bytes());
    // The balance loss is the report's first double.
    backend.AccumulateScalars(reinterpret_cast<const double*>(report.ptr<int64_t>()), 1, 1.0,
                              device_aux);
  }
  return 0;
}

std::vector<DitMoe::RoutingReport> DitMoe::ReadReports(int micro_batches) const {
  std::vector<RoutingReport> reports(static_cast<size_t>(micro_batches));
  const int64_t depth = static_cast<int64_t>(blocks_.size());
  if (depth == 0 || micro_batches == 0) return reports;
  if (blocks_[0]->moe().device_report() == nullptr) {
    for (int m = 0; m < micro_batches && static_cast<size_t>(m) < kept_host_.size(); ++m) {
      reports[m] = kept_host_[m];
    }
    return reports;
  }
  const int64_t E = dims_.num_experts, width = E + 2;
  std::vector<int64_t> values(static_cast<size_t>(micro_batches * depth * width));
  TESSERA_CHECK(kept_reports_.defined() &&
                kept_reports_.numel() >= static_cast<int64_t>(values.size()));
  kept_reports_.backend().CopyToHost(values.data(), kept_reports_.address(),
                                     values.size() * sizeof(int64_t));
  for (int m = 0; m < micro_batches; ++m) {
    RoutingReport& report = reports[m];
    for (int64_t l = 0; l < depth; ++l) {
      const int64_t* slot = values.data() + (m * depth + l) * width;
      const double* doubles = reinterpret_cast<const double*>(slot);
      report.balance_loss += doubles[0];
      report.load.emplace_back(doubles + 1, doubles + 1 + E);
      report.dropped += slot[E + 1];
    }
  }
  return reports;
}

std::vector<std::vector<double>> DitMoe::expert_load() const {
  std::vector<std::vector<double>> load;
  for (const auto& block : blocks_) load.push_back(block->moe().expert_load());
  return load;
}

int64_t DitMoe::dropped_assignments() const {
  int64_t dropped = 0;
  for (const auto& block : blocks_) dropped += block->moe().dropped_assignments();
  return dropped;
}

double DitMoe::ForwardFlops(int64_t batch) const {
  const int64_t T = local_tokens_;
  double flops = x_embedder_.ForwardFlops(batch) + t_embedder_.ForwardFlops(batch) +
                 final_layer_->ForwardFlops(batch, T);
  for (const auto& block : blocks_) flops += block->ForwardFlops(batch, T);
  return flops;
}

DitMoe::ActivationPlan DitMoe::PlanActivations(int64_t batch) const {
  // Counted in floats, from the tensors each layer saves (see the Forward
  // methods); every arena allocation is rounded up to 64 bytes, which is
  // negligible at these sizes.
  const double B = static_cast<double>(batch), T = static_cast<double>(local_tokens_);
  const double D = static_cast<double>(dims_.hidden), R = B * T;
  const double E = static_cast<double>(dims_.num_experts), k = static_cast<double>(dims_.top_k);
  const double He = static_cast<double>(dims_.expert_hidden);
  const double Hs = static_cast<double>(dims_.shared_expert_hidden);
  const double P = static_cast<double>(dims_.patch_dim());
  // One block's forward: modulation, norm1's stats (fused with the
  // modulation: its normalized rows are not kept), modulated input, qkv,
  // attention out + lse, proj out, x1, norm2's stats, modulated input, the MoE
  // (logits, probs, routing ints, permuted rows, expert gate/up/act and
  // outputs, shared expert, combine output).
  const double attention = R * 3 * D + R * D + B * dims_.heads * T + R * D;
  // Expert rows: the R k assignments dropless; with a capacity factor c the
  // single-rank layer's fixed slots, E ceil(c R k / E) <= c R k + E of them
  // (docs/architecture.md), counted here as at least R k.
  const double c = dims_.capacity_factor;
  const double rows = c > 0 ? std::max(R * k, c * R * k + E) : R * k;
  const double moe = R * E * 2 + R * k * 6 + rows * D * 2 + rows * He * 3 + R * Hs * 3 +
                     (Hs > 0 ? R * D : 0) + R * D;
  const double block = B * 6 * D + 2 * (2 * R) + 2 * R * D + attention + R * D + moe;
  // The largest block backward (scratch arena): roughly its forward again.
  const double block_backward = block + R * D * 4;
  const double embed = R * P * 2 + R * D + B * (dims_.frequency_dim + 4 * D);
  const double final_layer = B * 2 * D + 2 * R + R * D * 2 + R * P * 2;
  int64_t recomputed = 0;
  for (bool r : recompute_) recomputed += r;
  // A bf16 run also keeps bf16 copies of the GEMM inputs that backward reads
  // again (Bf16Copy, runtime/nn/linear.h: a Linear's x, the experts' and the
  // shared expert's x and act), and makes copies of the output gradients in
  // each block's backward (a Linear's dy, the experts' dy and dgate_up; the
  // experts' over their `rows`). Counted in floats too (one bf16 is half a float). The router's GEMM is
  // fp32 and makes none.
  const bool bf16 = backend().gemm_precision() == MathPrecision::kBf16;
  const double half = 0.5;
  const double block_bf16 =
      bf16 ? half * (B * D + R * D + R * D + rows * D + rows * He + (Hs > 0 ? R * D + R * Hs : 0))
           : 0;
  const double block_backward_bf16 =
      bf16 ? half * (B * 6 * D + R * 3 * D + R * D + rows * D + rows * 2 * He +
                     (Hs > 0 ? R * D + R * 2 * Hs : 0))
           : 0;
  const double embed_bf16 = bf16 ? half * (R * P + B * dims_.frequency_dim + B * D) : 0;
  const double final_bf16 = bf16 ? half * (B * D + R * D) : 0;
  const double saved = static_cast<double>(dims_.depth - recomputed) * (block + block_bf16) +
                       static_cast<double>(recomputed) * R * D;
  ActivationPlan plan;
  plan.step_arena = static_cast<size_t>(
      (embed + embed_bf16 + saved + final_layer + final_bf16 + R * D * 2) * sizeof(float));
  // A recomputed block's forward (and its bf16 copies) runs in the scratch arena.
  plan.scratch_arena = static_cast<size_t>(
      (block_backward * (recomputed > 0 ? 2 : 1) + block_backward_bf16 +
       (recomputed > 0 ? block_bf16 : 0)) *
      sizeof(float));
  return plan;
}

void DitMoe::ReserveScratch(int64_t batch) {
  stack_.ReserveScratch(PlanActivations(batch).scratch_arena);
}

}  // namespace tessera::dit_moe
