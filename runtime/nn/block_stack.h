// BlockStack: runs a model's residual stack block by block, recording one
// tape entry per block, with per-block recomputation and a scratch arena for
// each block's backward pass. Every model with a stack of blocks (DiT-MoE's
// adaLN blocks, the Mamba hybrid's layers) drives its backward through it.
//
// Memory: each block's backward runs in the scratch arena, which is reset
// after the block; only the gradient flowing to the previous block is copied
// into the step arena, so backward temporaries never pile up across blocks.
// With recomputation the block's forward activations live in the scratch
// arena too and are recreated in backward; only its input is kept.
//
// The gradient flowing down the stack is `gradient()`: the model sets it to
// the gradient of the stack's output before Tape::Backward, and reads the
// gradient of the stack's input from it afterwards.
#pragma once

#include <functional>

#include "absl/status/statusor.h"
#include "runtime/nn/tape.h"
#include "runtime/tensor/arena.h"

namespace tessera {

class BlockStack {
 public:
  // Forward of one block: (arena, input) -> output, saving what its backward needs.
  using ForwardFn = std::function<absl::StatusOr<Tensor>(Arena&, const Tensor&)>;
  // Backward of one block: (scratch arena, output gradient) -> input gradient;
  // accumulates the block's parameter gradients.
  using BackwardFn = std::function<absl::StatusOr<Tensor>(Arena&, const Tensor&)>;

  explicit BlockStack(Backend& backend) : scratch_(backend) {}

  // Runs `forward` on `x` in `arena` (or, recomputing, in the scratch arena
  // with the output copied into `arena`). With `record`, the tape gets an
  // entry that runs the block's backward on gradient() and reports the
  // parameter ids [first_param, end_param) ready.
  absl::StatusOr<Tensor> Run(Tape& tape, Arena& arena, const Tensor& x, bool recompute,
                             bool record, ForwardFn forward, BackwardFn backward, int first_param,
                             int end_param);

  Tensor& gradient() { return gradient_; }
  Arena& scratch() { return scratch_; }
  const Arena& scratch() const { return scratch_; }
  // Sizes the scratch arena up front, so training never grows it.
  void ReserveScratch(size_t bytes) { scratch_ = Arena(scratch_.backend(), bytes); }
  // Drops the gradient (after Tape::Backward).
  void Clear() { gradient_ = Tensor(); }

 private:
  Arena scratch_;
  Tensor gradient_;
};

// A copy of `x` in `arena`.
Tensor CopyInto(Arena& arena, const Tensor& x);

}  // namespace tessera
