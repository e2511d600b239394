// MultiHeadAttention (runtime/nn/attention.h) under Ulysses sequence
// parallelism: see ulysses_attention.h for the exchange itself.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "parallel/comm/communicator.h"
#include "parallel/sequence_parallel/ulysses_attention.h"
#include "runtime/nn/linear.h"
#include "runtime/tensor/arena.h"

namespace tessera::parallel {

// MultiHeadAttention (runtime/nn/attention.h) under Ulysses: the qkv and proj
// Linear layers are replicated and run on the local token shard, the
// attention core between them is UlyssesAttention. Parameters are registered
// exactly as MultiHeadAttention registers them (names, shapes, init), so the
// same seed gives the same weights; each rank's gradients are partial sums
// over its tokens, which the dp x sp gradient reduction adds up.
class UlyssesMultiHeadAttention {
 public:
  // Fails (UsageError) unless hidden % heads == 0 and heads % sp.size() == 0;
  // registers nothing then. `store` and `sp` must outlive this.
  static absl::StatusOr<std::unique_ptr<UlyssesMultiHeadAttention>> Create(
      ParameterStore& store, const std::string& name, int64_t hidden, int64_t heads,
      Communicator& sp, bool causal = false);

  // x: [batch * seq/sp, hidden], this rank's tokens [rank*seq/sp,
  // (rank+1)*seq/sp) of each sample, sample-major; `seq` is the full sequence
  // length. Returns [batch * seq/sp, hidden].
  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x, int64_t batch, int64_t seq);
  // dy: [batch * seq/sp, hidden] -> dx, same shape; parameter gradients
  // accumulate this rank's share.
  absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy);

 private:
  UlyssesMultiHeadAttention(ParameterStore& store, const std::string& name, int64_t hidden,
                            UlyssesAttention core);

  int64_t hidden_;
  UlyssesAttention core_;
  Linear qkv_, proj_;
  Tensor saved_qkv_;  // [B * S/sp, 3, H, Dh], the core reads q, k, v from it
};

}  // namespace tessera::parallel
