// The HSTU encoder of a generative recommender: item embeddings × √D plus
// learned positions, dropout, `num_blocks` HSTU layers (layer.h), outputs
// L2-normalised — the reference's HSTU with its ML-1M preprocessing
// (LearnablePositionalEmbeddingInputFeaturesPreprocessor) and l2_norm
// output postprocessing. The item table is not part of the encoder: it is
// a row-sharded table (parallel/embedding/row_sharded_table.h) shared by
// the input and by the loss / ranking (sampled_softmax.h, evaluation); the
// encoder takes the rows of its input items and returns their gradient.
//
// Everything runs on the batch's T tokens; the attention per user.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "models/hstu/batch.h"
#include "models/hstu/layer.h"
#include "parallel/comm/single_rank_communicator.h"
#include "runtime/config/config.pb.h"
#include "runtime/nn/tape.h"

namespace tessera::hstu {

// Dropout's random stream for one forward: the mask of element d of token t
// at site s (0: the input, 1 + l: block l) is drawn at counter
// token_keys[t] * width + d of the stream keyed by (seed, step, s), so every
// layout drops the same elements.
struct DropoutDraw {
  float rate = 0;
  uint64_t seed = 0;
  int64_t step = 0;
};

class Hstu {
 public:
  // The item table: its global name and initial standard deviation.
  static constexpr char kItemTable[] = "item_embedding";
  static constexpr float kItemInitStd = 0.02f;

  // Registers pos_embedding [max_len, D] (normal sqrt(1/D)) and the blocks
  // in `store`, which the caller finalizes. `tp` (null: this process alone)
  // splits every block's heads (layer.h); `sp` (null: none) splits every
  // batch's tokens (Ulysses, layer.h); num_heads % (tp sp) == 0 and, for
  // tp > 1, linear_dim == attention_dim (the config rules check both).
  static absl::StatusOr<std::unique_ptr<Hstu>> Create(const HstuConfig& config,
                                                      ParameterStore& store,
                                                      parallel::Communicator* tp = nullptr,
                                                      parallel::Communicator* sp = nullptr);

  // The L2-normalised outputs [n, D] of this rank's tokens of the batch
  // (Tokens(batch): all T of them without sp, n of them), given item_rows
  // [n, D] (the item table's rows of those tokens' items, in the backend's memory, alive
  // until Backward). `dropout` null: none (evaluation). With `record` the
  // tape keeps what Backward needs. Under tp and sp every rank of the groups
  // passes the same batch (a collective over both).
  absl::StatusOr<Tensor> Forward(Arena& arena, const HstuBatch& batch, const float* item_rows,
                                 const DropoutDraw* dropout, bool record = true);
  // doutput: gradient w.r.t. Forward's output [n, D]; parameter gradients
  // accumulate and ditem_rows [n, D] (the input rows' gradient) is
  // overwritten. Announces each block's parameters as they are complete,
  // the position table last.
  absl::Status Backward(const Tensor& doutput, float* ditem_rows);
  void set_on_gradients_ready(std::function<void(int, int)> callback) {
    tape_.set_on_gradients_ready(std::move(callback));
  }

  ParameterStore& store() const { return store_; }
  // The tensor-parallel group the heads are split over (size 1: none).
  parallel::Communicator& tp() const { return *tp_; }
  // The sequence-parallel group the tokens are split over (size 1: none).
  parallel::Communicator& sp() const { return *sp_; }
  // This rank's tokens of `batch` (all of them without sp).
  parallel::TokenRange Tokens(const HstuBatch& batch) const {
    return parallel::SequenceShard(batch.tokens(), sp_->rank(), sp_->size());
  }
  int64_t dim() const { return dim_; }
  int64_t max_len() const { return max_len_; }
  int64_t num_items() const { return num_items_; }
  // Forward FLOPs this rank computes for one user of `length` tokens (its
  // tp heads, its sp share).
  double ForwardFlops(int64_t length) const;

 private:
  Hstu(const HstuConfig& config, ParameterStore& store, parallel::Communicator* tp,
       parallel::Communicator* sp);
  // The jagged geometry and inputs of `batch` in the arena's memory.
  JaggedTokens Upload(Arena& arena, const HstuBatch& batch);
  Tensor Embed(Arena& arena, int64_t total, const float* item_rows, const Tensor& mask);
  void EmbedBackward(Arena& arena, const Tensor& dx);
  Tensor Normalize(Arena& arena, const Tensor& y);
  Tensor NormalizeBackward(Arena& arena, const Tensor& doutput);

  ParameterStore& store_;
  std::unique_ptr<parallel::SingleRankCommunicator> one_tp_, one_sp_;  // when none is given
  parallel::Communicator* tp_;
  parallel::Communicator* sp_;
  int64_t dim_, max_len_, num_items_;
  ParameterStore::Id pos_table_;
  std::vector<std::unique_ptr<HstuLayer>> blocks_;
  std::vector<std::pair<int, int>> block_params_;  // parameter ids of block l

  Tape tape_;
  Arena* arena_ = nullptr;  // of the recorded forward
  // Saved by Forward for Backward.
  bool empty_ = false;         // the batch (every rank's) holds no token
  Tensor positions_;           // i32 [n]: this rank's tokens
  float* ditem_rows_ = nullptr;  // where Backward writes the input rows' gradient
  Tensor input_mask_;          // [T, D] or undefined
  Tensor last_hidden_, rstd_;  // [T, D], [T]: the output norm's input and statistics
  Tensor dhidden_;             // the gradient flowing down the blocks
};

// The dropout mask of one site, [tokens, width]: 0 or 1 / (1 - rate).
// `token_keys`: i64 [tokens] in the arena's memory; the mask is drawn there
// (Backend::CounterDropoutMask).
Tensor DropoutMask(Arena& arena, const DropoutDraw& draw, uint64_t site, const Tensor& token_keys,
                   int64_t width);

}  // namespace tessera::hstu
