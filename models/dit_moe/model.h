// DiT-MoE ("Scaling Diffusion Transformers to 16 Billion Parameters"):
// patch embedding + fixed 2-D sin-cos positions, timestep and label
// embedders summed into the condition c, `depth` adaLN-Zero blocks with an
// attention and a MoE FFN each, and the final adaLN layer + unpatchify.
//
// Activations come from the caller's per-step arena. Each block's backward
// pass runs in a scratch arena that is reset after the block, and with
// `recompute` the block's forward activations live there too (only its input
// is kept), re-created in Backward.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "models/dit_moe/block.h"
#include "models/dit_moe/embedders.h"
#include "runtime/config/config.pb.h"
#include "runtime/nn/block_stack.h"
#include "runtime/nn/moe.h"
#include "runtime/nn/tape.h"

namespace tessera::dit_moe {

// Effective sizes after defaults (expert_hidden 0 -> 4D, shared 0 -> 2D).
struct DitMoeDims {
  int64_t input_size, channels, patch, hidden, depth, heads, num_classes;
  int64_t num_experts, top_k, expert_hidden, shared_expert_hidden, frequency_dim;
  double capacity_factor = 0;  // 0: dropless
  int64_t tokens() const { return (input_size / patch) * (input_size / patch); }
  int64_t patch_dim() const { return channels * patch * patch; }
};
DitMoeDims ResolveDims(const DitMoeConfig& config);

class DitMoe {
 public:
  // Registers every parameter in `store` (which the caller then finalizes).
  // `mp`: the model-parallel layout (sublayers.h); null for one process or
  // data parallelism alone (or a ModelParallel whose tp, sp and ep are 1,
  // for its dp group). The model keeps a copy.
  static absl::StatusOr<std::unique_ptr<DitMoe>> Create(const DitMoeConfig& config,
                                                        ParameterStore& store,
                                                        const ModelParallel* mp = nullptr);

  // x: [B, C, H, W] noisy images (whole on every rank); t: [B] timestep in
  // model units; labels: [B] in [0, num_classes] (num_classes = the null
  // label). Returns the prediction for this rank's tokens as output rows
  // [B * local_tokens(), patch_dim()] in Unpatchify's (py, px, c) order.
  // With `record` the tape remembers what ran.
  absl::StatusOr<Tensor> ForwardRows(Arena& arena, const Tensor& x, const float* t,
                                     const int32_t* labels, bool record = true);
  // drows: gradient of the loss w.r.t. ForwardRows' output; the MoE balance
  // losses enter with `loss_scale`. Accumulates parameter gradients.
  absl::Status BackwardRows(Arena& arena, const Tensor& drows, float loss_scale);
  // `images` [B, C, H, W] (e.g. the target) -> this rank's rows, laid out as
  // ForwardRows' output.
  Tensor LocalRows(Arena& arena, const Tensor& images) const;

  // Whole-image forms, for a model that holds every token (no sp, no
  // Megatron SP): the prediction [B, C, H, W] and its gradient.
  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x, const float* t,
                                 const int32_t* labels, bool record = true);
  absl::Status Backward(Arena& arena, const Tensor& dout, float loss_scale);

  // This rank's tokens of each sample: [first_token(), + local_tokens()).
  int64_t first_token() const { return first_token_; }
  int64_t local_tokens() const { return local_tokens_; }
  // Under Megatron SP the tp ranks of a replica hold different tokens of the
  // same samples: each rank's loss is its share (1/tp) of the replica's, and
  // the replica's is their sum. 1 and no-op otherwise.
  double loss_share() const { return loss_share_; }
  // A host loss (the evaluation's): replaced by its sum over the tensor group.
  absl::Status SumLossOverTensorGroup(double* loss) const;
  // A training loss in device memory: *loss, this rank's mean (one double),
  // becomes the replica's, the sum over the tensor group of loss_share()
  // times each rank's (the host version's arithmetic, in rank order), over
  // the tp device communicator; the buffers come from `arena`.
  absl::Status SumDeviceLossOverTensorGroup(Arena& arena, double* loss) const;

  // Before an optimizer step's first micro-batch: the MoE balance counts of
  // MoeConfig's GLOBAL_BATCH scope start again.
  void BeginStep() { global_balance_.BeginStep(); }

  // Of the last Forward.
  double balance_loss() const;
  std::vector<std::vector<double>> expert_load() const;  // [depth][experts]
  int64_t dropped_assignments() const;
  // The routing reports of every MoE layer over a step's micro-batches,
  // without a host read inside the step: KeepReports, after micro-batch
  // `micro`'s forward, copies each layer's report (MoeLayer::report()) into
  // the step's slot in backend memory and adds the balance losses kept
  // there to *device_aux (one double in that memory); it returns the
  // balance losses that are host values already (expert-parallel layers).
  // ReadReports reads the slots of micro-batches [0, micro_batches) once (a
  // log step's read) and returns per micro-batch the balance loss, the
  // load [depth][experts] and the dropped assignments.
  struct RoutingReport {
    double balance_loss = 0;
    std::vector<std::vector<double>> load;
    int64_t dropped = 0;
  };
  double KeepReports(Backend& backend, int micro, double* device_aux);
  std::vector<RoutingReport> ReadReports(int micro_batches) const;

  // Called during Backward as each layer's parameter gradients are complete
  // (parameter ids [first, end)): data parallelism starts reducing them.
  void set_on_gradients_ready(std::function<void(int, int)> callback) {
    tape_.set_on_gradients_ready(std::move(callback));
  }

  // Per-block recomputation switch (model.dit_moe.recompute sets all blocks).
  void set_recompute(int64_t block, bool on) { recompute_[block] = on; }

  const DitMoeDims& dims() const { return dims_; }
  // The device the model's parameters and activations live on.
  Backend& backend() const { return stack_.scratch().backend(); }
  int64_t null_label() const { return dims_.num_classes; }
  // Forward FLOPs for a batch (training step = 3x).
  double ForwardFlops(int64_t batch) const;
  // Activation bytes of one training micro-batch, predicted from shapes: the
  // caller's step arena (forward saves, embedder gradients) and the model's
  // block-wise scratch arena.
  struct ActivationPlan {
    size_t step_arena = 0, scratch_arena = 0;
    size_t total() const { return step_arena + scratch_arena; }
  };
  ActivationPlan PlanActivations(int64_t batch) const;
  size_t PredictActivationBytes(int64_t batch) const { return PlanActivations(batch).total(); }
  // Sizes the scratch arena for `batch` up front, so training never grows it.
  void ReserveScratch(int64_t batch);
  // Peak bytes the block-wise scratch arena held (measured).
  size_t scratch_peak_bytes() const { return stack_.scratch().peak_bytes(); }

 private:
  DitMoe(const DitMoeConfig& config, const DitMoeDims& dims, ParameterStore& store,
         const ModelParallel* mp);
  absl::Status Build(ParameterStore& store);

  DitMoeConfig config_;
  DitMoeDims dims_;
  GlobalBalanceCounts global_balance_;  // the MoE layers' GLOBAL_BATCH counts
  bool parallel_ = false;
  ModelParallel mp_;
  int64_t first_token_ = 0, local_tokens_ = 0;
  double loss_share_ = 1;
  PatchEmbed x_embedder_;
  PatchLayout output_layout_;  // output rows (py, px, c) <-> images
  TimestepEmbedder t_embedder_;
  LabelEmbedder y_embedder_;
  std::vector<std::unique_ptr<DitBlock>> blocks_;
  // KeepReports' slots: i64 [micro-batches][depth][experts + 2] in backend
  // memory (grown to the step's micro-batches), and the host reports of the
  // layers that have no device report.
  Tensor kept_reports_;
  std::vector<RoutingReport> kept_host_;  // [micro], when the layers report on the host
  std::unique_ptr<FinalLayer> final_layer_;
  // Parameter ids of each tape entry, for gradient-ready notifications:
  // [0] embedders, [1 + i] block i, [1 + depth] the final layer.
  std::vector<std::pair<int, int>> param_ranges_;

  Tape tape_;
  BlockStack stack_;  // the blocks' backward driver and scratch arena
  int64_t batch_ = 0;
  Tensor cond_;        // [B, D] c = t_emb + y_emb
  Tensor cond_silu_;   // [B, D]
  std::vector<bool> recompute_;  // per block
  // Backward state, read and written by the tape's closures (the residual
  // stream's gradient is stack_.gradient(), [B*T, D]).
  Tensor dcond_silu_;  // [B, D]
  float loss_scale_ = 1;
};

}  // namespace tessera::dit_moe
