#include "parallel/sequence_parallel/ulysses_attention.h"

#include "absl/strings/str_format.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera::parallel {
namespace {

// Sizes of one exchange as seen by this rank.
struct Blocks {
  int64_t ranks;       // sp
  int64_t batch;       // B
  int64_t local_seq;   // S/sp
  int64_t head_chunk;  // (H/sp) * Dh: the columns of one rank's heads
};

// Packs `parts` token-major arrays (rows `stride` floats apart, all H heads)
// into send blocks for the sequence -> heads exchange:
//   send [sp, B, S/sp, parts, (H/sp) * Dh], block r = heads of rank r.
void PackHeadBlocks(Backend& backend, const Blocks& n, const float* const* src, int parts,
                    int64_t stride, float* send) {
  const size_t chunk_bytes = static_cast<size_t>(n.head_chunk) * sizeof(float);
  const int64_t tokens = n.batch * n.local_seq;
  for (int64_t r = 0; r < n.ranks; ++r) {
    for (int p = 0; p < parts; ++p) {
      backend.Copy2D(send + (r * tokens * parts + p) * n.head_chunk, parts * chunk_bytes,
                     src[p] + r * n.head_chunk, stride * sizeof(float), chunk_bytes, tokens);
    }
  }
}

// The inverse of PackHeadBlocks: recv [sp, B, S/sp, parts, (H/sp) * Dh],
// block r = heads of rank r, into `parts` token-major arrays.
void UnpackHeadBlocks(Backend& backend, const Blocks& n, const float* recv, int parts,
                      int64_t stride, float* const* dst) {
  const size_t chunk_bytes = static_cast<size_t>(n.head_chunk) * sizeof(float);
  const int64_t tokens = n.batch * n.local_seq;
  for (int64_t r = 0; r < n.ranks; ++r) {
    for (int p = 0; p < parts; ++p) {
      backend.Copy2D(dst[p] + r * n.head_chunk, stride * sizeof(float),
                     recv + (r * tokens * parts + p) * n.head_chunk, parts * chunk_bytes,
                     chunk_bytes, tokens);
    }
  }
}

// [outer, inner, block] -> [inner, outer, block]. After a sequence -> heads
// all-to-all the received blocks are [sp, B, S/sp * row]; attention wants
// [B, sp * S/sp, row], i.e. (outer, inner) = (sp, B). The way back is the
// same transpose with (outer, inner) = (B, sp).
void SwapOuterDims(Backend& backend, const float* src, int64_t outer, int64_t inner,
                   int64_t block, float* dst) {
  const size_t block_bytes = static_cast<size_t>(block) * sizeof(float);
  for (int64_t o = 0; o < outer; ++o) {
    backend.Copy2D(dst + o * block, outer * block_bytes, src + o * inner * block, block_bytes,
                   block_bytes, inner);
  }
}

}  // namespace

absl::Status ValidateUlyssesLayout(int64_t heads, int64_t seq, int sp) {
  if (sp < 1) return UsageError(absl::StrFormat("parallel.sp = %d must be at least 1", sp));
  if (heads % sp != 0) {
    return UsageError(absl::StrFormat(
        "attention heads = %d must be divisible by parallel.sp = %d (Ulysses splits heads over "
        "the sp group)",
        heads, sp));
  }
  if (seq % sp != 0) {
    return UsageError(absl::StrFormat(
        "sequence length = %d tokens must be divisible by parallel.sp = %d (Ulysses splits each "
        "sequence over the sp group)",
        seq, sp));
  }
  return absl::OkStatus();
}

absl::StatusOr<UlyssesAttention> UlyssesAttention::Create(Communicator& sp, int64_t heads,
                                                          int64_t head_dim, bool causal) {
  TESSERA_RETURN_IF_ERROR(ValidateUlyssesLayout(heads, /*seq=*/0, sp.size()));
  return UlyssesAttention(sp, heads, head_dim, causal);
}

absl::StatusOr<Tensor> UlyssesAttention::Forward(Arena& arena, int64_t batch, int64_t seq,
                                                 int64_t row_stride, const float* q, const float* k,
                                                 const float* v) {
  TESSERA_RETURN_IF_ERROR(ValidateUlyssesLayout(heads_, seq, sp_->size()));
  TESSERA_CHECK(batch >= 0 && row_stride >= heads_ * head_dim_);
  batch_ = batch;
  seq_ = seq;
  row_stride_ = row_stride;
  const int64_t sp = sp_->size();
  Backend& backend = arena.backend();
  const Blocks n{sp, batch, seq / sp, local_heads() * head_dim_};
  const int64_t local_tokens = batch * n.local_seq;

  // Sequence shard -> heads shard, q, k and v together.
  const float* qkv[3] = {q, k, v};
  Tensor send = arena.AllocateUninitialized(DType::kF32, Shape{sp, local_tokens, 3, n.head_chunk});
  Tensor recv = arena.AllocateUninitialized(DType::kF32, send.shape());  // blocks from each rank
  PackHeadBlocks(backend, n, qkv, 3, row_stride, send.ptr<float>());
  TESSERA_RETURN_IF_ERROR(sp_->CompleteOnDevice(sp_->AllToAll(
      send.ptr<float>(), recv.ptr<float>(), local_tokens * 3 * n.head_chunk, DType::kF32)));
  saved_qkv_ = arena.AllocateUninitialized(DType::kF32, Shape{batch, seq, 3, n.head_chunk});
  SwapOuterDims(backend, recv.ptr<float>(), sp, batch, n.local_seq * 3 * n.head_chunk,
                saved_qkv_.ptr<float>());

  // Whole sequences, this rank's heads.
  saved_out_ = arena.AllocateUninitialized(DType::kF32, Shape{batch, seq, n.head_chunk});
  saved_lse_ = arena.AllocateUninitialized(DType::kF32, Shape{batch, local_heads(), seq});
  const AttentionShape shape{batch, seq, local_heads(), head_dim_, 3 * n.head_chunk, causal_};
  const float* heads_qkv = saved_qkv_.ptr<float>();
  backend.AttentionForward(shape, heads_qkv, heads_qkv + n.head_chunk, heads_qkv + 2 * n.head_chunk,
                        saved_out_.ptr<float>(), saved_lse_.ptr<float>());

  // Heads shard -> sequence shard.
  Tensor out_send = arena.AllocateUninitialized(DType::kF32, Shape{sp, local_tokens, n.head_chunk});
  Tensor out_recv = arena.AllocateUninitialized(DType::kF32, out_send.shape());
  SwapOuterDims(backend, saved_out_.ptr<float>(), batch, sp, n.local_seq * n.head_chunk,
                out_send.ptr<float>());
  TESSERA_RETURN_IF_ERROR(sp_->CompleteOnDevice(sp_->AllToAll(
      out_send.ptr<float>(), out_recv.ptr<float>(), local_tokens * n.head_chunk, DType::kF32)));
  Tensor out = arena.AllocateUninitialized(DType::kF32, Shape{local_tokens, heads_ * head_dim_});
  float* out_parts[1] = {out.ptr<float>()};
  UnpackHeadBlocks(backend, n, out_recv.ptr<float>(), 1, heads_ * head_dim_, out_parts);
  return out;
}

absl::Status UlyssesAttention::Backward(Arena& arena, const Tensor& dout, float* dq, float* dk,
                                        float* dv) {
  TESSERA_CHECK(saved_qkv_.defined());
  const int64_t sp = sp_->size();
  Backend& backend = arena.backend();
  const Blocks n{sp, batch_, seq_ / sp, local_heads() * head_dim_};
  const int64_t local_tokens = batch_ * n.local_seq;
  TESSERA_CHECK(dout.rank() == 2 && dout.dim(0) == local_tokens &&
                dout.dim(1) == heads_ * head_dim_);

  // dout: sequence shard -> heads shard, as q, k, v went in Forward.
  Tensor send = arena.AllocateUninitialized(DType::kF32, Shape{sp, local_tokens, n.head_chunk});
  Tensor recv = arena.AllocateUninitialized(DType::kF32, send.shape());
  const float* dout_parts[1] = {dout.ptr<float>()};
  PackHeadBlocks(backend, n, dout_parts, 1, heads_ * head_dim_, send.ptr<float>());
  TESSERA_RETURN_IF_ERROR(sp_->CompleteOnDevice(sp_->AllToAll(send.ptr<float>(), recv.ptr<float>(),
                                                      local_tokens * n.head_chunk, DType::kF32)));
  Tensor heads_dout = arena.AllocateUninitialized(DType::kF32, Shape{batch_, seq_, n.head_chunk});
  SwapOuterDims(backend, recv.ptr<float>(), sp, batch_, n.local_seq * n.head_chunk,
                heads_dout.ptr<float>());

  // [B, S, 3, H/sp * Dh]: dq, dk, dv of this rank's heads.
  Tensor heads_dqkv = arena.AllocateUninitialized(DType::kF32, saved_qkv_.shape());
  const AttentionShape shape{batch_,           seq_,   local_heads(), head_dim_,
                                  3 * n.head_chunk, causal_};
  const float* qkv = saved_qkv_.ptr<float>();
  float* d = heads_dqkv.ptr<float>();
  backend.AttentionBackward(shape, qkv, qkv + n.head_chunk, qkv + 2 * n.head_chunk,
                         saved_out_.ptr<float>(), heads_dout.ptr<float>(),
                         saved_lse_.ptr<float>(), d, d + n.head_chunk, d + 2 * n.head_chunk);

  // dq, dk, dv: heads shard -> sequence shard, together.
  Tensor dsend = arena.AllocateUninitialized(DType::kF32, Shape{sp, local_tokens, 3, n.head_chunk});
  Tensor drecv = arena.AllocateUninitialized(DType::kF32, dsend.shape());
  SwapOuterDims(backend, d, batch_, sp, n.local_seq * 3 * n.head_chunk, dsend.ptr<float>());
  TESSERA_RETURN_IF_ERROR(sp_->CompleteOnDevice(sp_->AllToAll(
      dsend.ptr<float>(), drecv.ptr<float>(), local_tokens * 3 * n.head_chunk, DType::kF32)));
  float* grads[3] = {dq, dk, dv};
  UnpackHeadBlocks(backend, n, drecv.ptr<float>(), 3, row_stride_, grads);
  saved_qkv_ = saved_out_ = saved_lse_ = Tensor();
  return absl::OkStatus();
}

}  // namespace tessera::parallel
