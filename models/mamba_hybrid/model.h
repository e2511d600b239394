// The Mamba-2 hybrid language model: token embedding, the layers of the
// pattern (pattern.h; each a pre-RMSNorm residual block, block.h), a final
// RMSNorm, the output projection (tied to the embedding or its own) and the
// cross-entropy over the vocabulary at the target positions.
//
// Activations come from the caller's step arena; each layer's backward runs
// in the BlockStack's scratch arena, and `recompute` drops a layer's saved
// activations and recreates them in backward.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "models/mamba_hybrid/block.h"
#include "runtime/config/config.pb.h"
#include "runtime/nn/block_stack.h"
#include "runtime/nn/linear.h"
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
  // Registers every parameter in `store` (which the caller then finalizes).
  static absl::StatusOr<std::unique_ptr<MambaHybrid>> Create(const MambaHybridConfig& config,
                                                             ParameterStore& store);

  // The sum over the masked positions of -log p(target), and their count.
  // With `record`, Backward can follow.
  struct LossSum {
    double sum = 0;
    int64_t count = 0;
  };
  absl::StatusOr<LossSum> ForwardLoss(Arena& arena, const LmInputs& in, bool record = true);
  // Accumulates the parameter gradients of scale * LossSum::sum.
  absl::Status Backward(Arena& arena, float scale);

  // The final hidden states [batch * seq, hidden] (after the last norm) and
  // the logits [rows, vocab] of given hidden rows: the pieces generation uses.
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
  // Forward FLOPs of a micro-batch (a training step is about 3x).
  double ForwardFlops(int64_t batch, int64_t seq) const;
  // Activation bytes of one training micro-batch, from the shapes.
  size_t PredictActivationBytes(int64_t batch, int64_t seq) const;

 private:
  MambaHybrid(const MambaHybridConfig& config, std::string pattern, ParameterStore& store);
  void Build();
  void RecordHeadBackward(int64_t rows);
  void RecordEmbeddingBackward(const Tensor& ids);

  MambaHybridConfig config_;
  std::string pattern_;
  ParameterStore& store_;
  int64_t hidden_, vocab_;
  ParameterStore::Id embedding_ = -1, final_norm_ = -1;
  std::vector<std::unique_ptr<HybridBlock>> blocks_;
  std::unique_ptr<Linear> lm_head_;  // null when tied to the embedding
  // Parameter ids of each tape entry: [0] embedding, [1 + i] layer i, last: the head.
  std::vector<std::pair<int, int>> param_ranges_;
  std::vector<bool> recompute_;

  Tape tape_;
  BlockStack stack_;
  // Saved by ForwardLoss for Backward.
  Tensor final_in_, final_rstd_, selected_hidden_, selected_index_, targets_, probs_;
  int64_t selected_ = 0;
  float scale_ = 1;
};

}  // namespace tessera::mamba_hybrid
