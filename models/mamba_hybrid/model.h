// The Mamba-2 hybrid language model: token embedding, the layers of the
// pattern (pattern.h; each a pre-RMSNorm residual block, block.h), a final
// RMSNorm, the output projection (tied to the embedding or its own) and the
// cross-entropy over the vocabulary at the target positions, plus the MoE
// layers' balance losses weighted by the micro-batch's target count (so that
// per-token weighting makes them a per-micro-batch mean, as DiT-MoE's).
//
// Activations come from the caller's step arena; each layer's backward runs
// in the BlockStack's scratch arena, and `recompute` drops a layer's saved
// activations and recreates them in backward.
//
// Under model parallelism (layout.h) the embedding and the output
// projection are vocab-parallel over tp (the vocabulary split, the loss's
// maximum and sum reduced over tp, the logits never gathered); each rank
// takes its sp shard (and under Megatron SP its tp chunk) of the positions.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "models/mamba_hybrid/block.h"
#include "models/mamba_hybrid/layout.h"
#include "models/mamba_hybrid/moe.h"
#include "parallel/model_parallel.h"
#include "parallel/tensor_parallel/vocab_parallel_cross_entropy.h"
#include "runtime/config/config.pb.h"
#include "runtime/nn/block_stack.h"
#include "runtime/nn/tape.h"

namespace tessera::mamba_hybrid {

// One micro-batch of language-model inputs, on the host: `batch` windows of
// `seq` positions, sample-major. Position i reads inputs[i] and, where
// mask[i] != 0, predicts targets[i].
struct LmInputs {
  int64_t batch = 0, seq = 0;
  std::vector<int32_t> inputs, targets;
  std::vector<uint8_t> mask;
};

class MambaHybrid {
 public:
  // Registers every parameter in `store` (which the caller then finalizes):
  // this rank's pieces under `mp` (null: one process, or data parallelism).
  static absl::StatusOr<std::unique_ptr<MambaHybrid>> Create(
      const MambaHybridConfig& config, ParameterStore& store,
      const parallel::ModelParallel* mp = nullptr);

  // The sum over the masked positions of -log p(target), their count, and
  // how many of them have the target as the argmax of the logits (the first
  // maximum over the whole vocabulary): this rank's sp shard of the
  // positions (the same on the tp ranks of a shard). With `record`, Backward
  // can follow.
  // The MoE layers' balance losses (summed over the E layers; each over the
  // replica's whole micro-batch) enter the objective as balance_weight *
  // balance_loss, balance_weight being the micro-batch's target count over
  // all of its positions (every sp shard's).
  struct LossSum {
    double sum = 0;
    int64_t count = 0;
    int64_t correct = 0;
    double balance_loss = 0;
    int64_t balance_weight = 0;
    // The loss sum and the hits as two doubles in device memory (an i64
    // tensor [2]; undefined when count is 0), which ForwardLoss reads into
    // `sum` and `correct`.
    Tensor totals;
  };
  absl::StatusOr<LossSum> ForwardLoss(Arena& arena, const LmInputs& in, bool record = true);
  // The training forward: ForwardLoss with `sum` and `correct` left in
  // `totals` (0 on the host), so that the host does not wait for the loss.
  absl::StatusOr<LossSum> ForwardLossOnDevice(Arena& arena, const LmInputs& in) {
    return ForwardLossTotals(arena, in, /*record=*/true);
  }
  // Accumulates the parameter gradients of
  // scale * (LossSum::sum + balance_weight * balance_loss).
  absl::Status Backward(Arena& arena, float scale);
  // A new optimizer step (GLOBAL_BATCH balance counts start again).
  void BeginStep() { global_balance_.BeginStep(); }
  // The E layers, in order (their load and drops, for the log).
  const std::vector<HybridMoe*>& moe_layers() const { return moe_layers_; }

  // For the numerics dump: with keep_activations(true), ForwardLoss keeps
  // this rank's rows of the residual stream entering the first layer and
  // leaving each layer (`streams`, 1 + layers tensors [batch * positions,
  // hidden], positions [stream_first, + streams[i].dim(0) / batch) of each
  // sample) and the final norm's output over the tp region's rows (`hidden`
  // [batch * positions, hidden], from hidden_first). Valid until Backward.
  struct KeptActivations {
    int64_t batch = 0, stream_first = 0, hidden_first = 0;
    std::vector<Tensor> streams;
    Tensor hidden;
  };
  void keep_activations(bool keep) { keep_activations_ = keep; }
  const KeptActivations& kept() const { return kept_; }
  // The logits of every kept hidden row: [rows, vocab/tp], this rank's
  // vocabulary from vocab_offset().
  Tensor KeptLogits(Arena& arena) { return HeadLogits(arena, kept_.hidden); }
  int64_t vocab_offset() const { return layout_.tp_rank() * vocab_local_; }

  // The final hidden states [batch * seq, hidden] (after the last norm) and
  // the logits [rows, vocab] of given hidden rows: the pieces generation
  // uses (one process: the whole sequence and vocabulary).
  absl::StatusOr<Tensor> ForwardHidden(Arena& arena, const Tensor& ids, int64_t batch,
                                       int64_t seq, bool record);
  Tensor Logits(Arena& arena, const Tensor& hidden);

  // Generation in the recurrent form: StartGeneration sizes every layer's
  // state for `batch` sequences of up to `max_len` tokens (attention layers:
  // batch 1); StepLogits feeds the next token of each sequence (`ids`, host,
  // [batch]) and returns the logits [batch, vocab] for the position after it.
  absl::Status StartGeneration(int64_t batch, int64_t max_len);
  absl::StatusOr<Tensor> StepLogits(Arena& arena, const std::vector<int32_t>& ids);

  void set_on_gradients_ready(std::function<void(int, int)> callback) {
    tape_.set_on_gradients_ready(std::move(callback));
  }
  void set_recompute(int64_t layer, bool on) { recompute_[layer] = on; }

  const std::string& pattern() const { return pattern_; }
  const MambaHybridConfig& config() const { return config_; }
  Backend& backend() const { return stack_.scratch().backend(); }
  // Forward FLOPs this rank computes for a micro-batch of `seq`-token
  // samples (its sp shard, tp heads and vocabulary; a training step is
  // about 3x).
  double ForwardFlops(int64_t batch, int64_t seq) const;
  // Activation bytes of one training micro-batch, from the shapes.
  size_t PredictActivationBytes(int64_t batch, int64_t seq) const;

 private:
  // ForwardLoss without the read.
  absl::StatusOr<LossSum> ForwardLossTotals(Arena& arena, const LmInputs& whole, bool record);
  MambaHybrid(const MambaHybridConfig& config, std::string pattern, ParameterStore& store,
              const parallel::ModelParallel* mp);
  absl::Status Build();
  absl::StatusOr<std::unique_ptr<Sublayer>> MakeSublayer(char kind, const std::string& prefix);
  // This rank's positions of `in`, in sample order: its sp shard ([batch,
  // seq/sp]; under Megatron SP the layers' own rows are a tp chunk of it).
  LmInputs ShardOf(const LmInputs& in) const;
  // The embedding of the shard's ids [batch * seq/sp] (host; vocab-parallel:
  // summed over tp) -> this rank's rows.
  absl::StatusOr<Tensor> Embed(Arena& arena, const std::vector<int32_t>& ids, int64_t batch);
  // The layers and the final norm over this rank's rows [batch * seq, hidden].
  absl::StatusOr<Tensor> RunLayers(Arena& arena, Tensor stream, int64_t batch, int64_t seq,
                                   bool record);
  // The head's hidden rows [selected, hidden] -> this rank's logits
  // [selected, vocab/tp].
  Tensor HeadLogits(Arena& arena, const Tensor& hidden);
  absl::Status HeadBackward(Arena& arena);
  void RecordHeadBackward();
  void RecordEmbeddingBackward(const Tensor& ids);

  MambaHybridConfig config_;
  std::string pattern_;
  ParameterStore& store_;
  // One process: groups of one rank; otherwise views of the mesh's groups.
  std::unique_ptr<SingleProcessLayout> one_process_;
  HybridLayout layout_;
  int64_t hidden_, vocab_, vocab_local_, batch_ = 0;
  ParameterStore::Id embedding_ = -1, final_norm_ = -1;
  ParameterStore::Id lm_head_ = -1;  // [vocab/tp, hidden]; -1 when tied to the embedding
  std::vector<std::unique_ptr<HybridBlock>> blocks_;
  GlobalBalanceCounts global_balance_;  // MoeConfig's GLOBAL_BATCH scope
  std::vector<HybridMoe*> moe_layers_;  // owned by blocks_
  int64_t balance_weight_ = 0;          // of the last ForwardLoss
  parallel::VocabParallelCrossEntropy loss_;
  // Parameter ids of each tape entry: [0] embedding, [1 + i] layer i, last: the head.
  std::vector<std::pair<int, int>> param_ranges_;
  std::vector<bool> recompute_;

  Tape tape_;
  BlockStack stack_;
  // Saved by ForwardLoss for Backward.
  Tensor ids_, final_in_, final_rstd_, selected_hidden_, selected_index_;
  int64_t selected_ = 0;
  float scale_ = 1;
  bool keep_activations_ = false;
  KeptActivations kept_;
};

}  // namespace tessera::mamba_hybrid
