#include "runtime/nn/block_stack.h"

#include "runtime/base/status.h"

namespace tessera {

Tensor CopyInto(Arena& arena, const Tensor& x) {
  Tensor out = arena.AllocateUninitialized(x.dtype(), x.shape());
  arena.backend().Copy(out.address(), x.address(), x.bytes());
  return out;
}

absl::StatusOr<Tensor> BlockStack::Run(Tape& tape, Arena& arena, const Tensor& x,
                                       bool recompute, bool record, ForwardFn forward,
                                       BackwardFn backward, int first_param, int end_param) {
  recompute = recompute && record;
  Tensor out;
  if (recompute) {
    TESSERA_ASSIGN_OR_RETURN(Tensor scratch_out, forward(scratch_, x));
    out = CopyInto(arena, scratch_out);
    scratch_.Reset();
  } else {
    TESSERA_ASSIGN_OR_RETURN(out, forward(arena, x));
  }
  if (!record) return out;
  // The input stays valid: it lives in the step arena until the step ends.
  const Tensor input = recompute ? x : Tensor();
  tape.Record(
      [this, &arena, input, recompute, forward = std::move(forward),
       backward = std::move(backward)]() -> absl::Status {
        if (recompute) TESSERA_RETURN_IF_ERROR(forward(scratch_, input).status());
        TESSERA_ASSIGN_OR_RETURN(Tensor dx, backward(scratch_, gradient_));
        gradient_ = CopyInto(arena, dx);
        scratch_.Reset();
        return absl::OkStatus();
      },
      first_param, end_param);
  return out;
}

}  // namespace tessera
