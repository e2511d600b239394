// The sub-layers of the Mamba hybrid behind one small interface, so that one
// residual block (block.h) serves every layer kind: the Mamba-2 mixer
// (mixer.h), causal grouped-query attention (attention.h) and the MLP
// (mlp.h). Each maps this rank's rows [batch * seq, hidden] (sample-major)
// to rows of the same shape.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "runtime/tensor/arena.h"

namespace tessera::mamba_hybrid {

class Sublayer {
 public:
  virtual ~Sublayer() = default;
  // x: [batch * seq, hidden] -> [batch * seq, hidden]; saves what Backward needs.
  virtual absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x, int64_t batch,
                                         int64_t seq) = 0;
  // dy -> dx (overwritten); parameter gradients accumulate.
  virtual absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy) = 0;
  // Multiply-adds x 2 of one forward pass (scan and conv included).
  virtual double ForwardFlops(int64_t batch, int64_t seq) const = 0;
  // Floats one forward pass saves per token (the activation plan).
  virtual double SavedFloatsPerToken() const = 0;

  // Generation, one token at a time (the recurrent form): StartGeneration
  // allocates and zeroes the layer's state on `backend` (Mamba: the conv and
  // SSM states; attention: the key/value cache for `max_len` tokens); each
  // Step maps the rows [batch, hidden] of the next position to its output
  // and advances the state.
  virtual absl::Status StartGeneration(Backend& backend, int64_t batch, int64_t max_len) = 0;
  virtual absl::StatusOr<Tensor> Step(Arena& arena, const Tensor& x) = 0;
};

}  // namespace tessera::mamba_hybrid
