// Ulysses sequence parallelism (DeepSpeed-Ulysses) for attention: the sp
// ranks of a replica each hold a contiguous shard of every sample's tokens;
// attention needs whole sequences, so an all-to-all over the sp group trades
// the sequence shard for a head shard before the kernel and back after it.
//
//   this rank, before:  tokens [rank*S/sp, (rank+1)*S/sp), all H heads
//   all-to-all over sp  (block r of the send buffer: our tokens, heads of rank r)
//   this rank, kernel:  all S tokens, heads [rank*H/sp, (rank+1)*H/sp)
//   all-to-all back     (block r: rank r's tokens, our heads)
//
// Each head's attention is computed whole on one rank, so the result equals
// single-process attention up to floating-point reassociation. q, k and v
// travel in one all-to-all (and dq, dk, dv in one on the way back), so a
// forward-backward pass costs four all-to-alls of the sp group, issued in the
// same order on every rank (the Communicator's contract).
//
// Sizes: heads % sp == 0 and seq % sp == 0; violations are UsageErrors
// naming parallel.sp, identical on every rank.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parallel/comm/communicator.h"
#include "runtime/tensor/arena.h"

namespace tessera::parallel {

// OK when `heads` attention heads and sequences of `seq` tokens split over
// an sp group of `sp` ranks; otherwise a UsageError saying what must divide
// what. Config validation can call it before any communicator exists.
absl::Status ValidateUlyssesLayout(int64_t heads, int64_t seq, int sp);

// The attention core: no projections, just sequence <-> heads exchange
// around Backend::AttentionForward / AttentionBackward.
class UlyssesAttention {
 public:
  // Fails (UsageError) unless heads % sp.size() == 0. `sp` must outlive this.
  static absl::StatusOr<UlyssesAttention> Create(Communicator& sp, int64_t heads, int64_t head_dim,
                                                 bool causal = false);

  // q, k, v: this rank's tokens of every sample, [batch, seq/sp, heads,
  // head_dim], consecutive tokens `row_stride` floats apart (so they may
  // point into a fused [batch, seq/sp, 3, heads, head_dim] projection);
  // `seq` is the full sequence length. Returns out: [batch * seq/sp,
  // heads * head_dim] contiguous, allocated from `arena`. What Backward needs
  // is kept in `arena` too: do not Reset it in between.
  absl::StatusOr<Tensor> Forward(Arena& arena, int64_t batch, int64_t seq, int64_t row_stride,
                                 const float* q, const float* k, const float* v);

  // dout: [batch * seq/sp, heads * head_dim] contiguous. dq, dk, dv: the
  // layout of q, k, v in Forward (same row_stride); their heads*head_dim
  // columns are OVERWRITTEN, any padding up to row_stride is left alone.
  absl::Status Backward(Arena& arena, const Tensor& dout, float* dq, float* dk, float* dv);

  int sp_size() const { return sp_->size(); }
  int64_t heads() const { return heads_; }
  int64_t local_heads() const { return heads_ / sp_->size(); }
  int64_t head_dim() const { return head_dim_; }

 private:
  UlyssesAttention(Communicator& sp, int64_t heads, int64_t head_dim, bool causal)
      : sp_(&sp), heads_(heads), head_dim_(head_dim), causal_(causal) {}

  Communicator* sp_;
  int64_t heads_, head_dim_;
  bool causal_;
  int64_t batch_ = 0, seq_ = 0, row_stride_ = 0;
  // Heads layout, for Backward: qkv [B, S, 3, H/sp, Dh], out [B, S, H/sp * Dh],
  // lse [B, H/sp, S].
  Tensor saved_qkv_, saved_out_, saved_lse_;
};

}  // namespace tessera::parallel
