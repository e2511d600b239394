#include "parallel/sequence_parallel/ulysses_multi_head_attention.h"

#include <utility>

#include "absl/strings/str_format.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/nn/attention.h"

namespace tessera::parallel {

absl::StatusOr<std::unique_ptr<UlyssesMultiHeadAttention>> UlyssesMultiHeadAttention::Create(
    ParameterStore& store, const std::string& name, int64_t hidden, int64_t heads, Communicator& sp,
    bool causal) {
  if (heads < 1 || hidden % heads != 0) {
    return UsageError(absl::StrFormat("%s: hidden size = %d must be divisible by heads = %d", name,
                                      hidden, heads));
  }
  TESSERA_ASSIGN_OR_RETURN(UlyssesAttention core,
                           UlyssesAttention::Create(sp, heads, hidden / heads, causal));
  return std::unique_ptr<UlyssesMultiHeadAttention>(
      new UlyssesMultiHeadAttention(store, name, hidden, std::move(core)));
}

// Registration order and names follow MultiHeadAttention: qkv, then proj.
UlyssesMultiHeadAttention::UlyssesMultiHeadAttention(ParameterStore& store, const std::string& name,
                                                     int64_t hidden, UlyssesAttention core)
    : hidden_(hidden),
      core_(std::move(core)),
      qkv_(store, name + ".qkv", hidden, 3 * hidden, MultiHeadAttention::QkvOptions()),
      proj_(store, name + ".proj", hidden, hidden) {}

absl::StatusOr<Tensor> UlyssesMultiHeadAttention::Forward(Arena& arena, const Tensor& x,
                                                          int64_t batch, int64_t seq) {
  TESSERA_RETURN_IF_ERROR(ValidateUlyssesLayout(core_.heads(), seq, core_.sp_size()));
  TESSERA_CHECK(x.rank() == 2 && x.dim(1) == hidden_ &&
                x.dim(0) == batch * (seq / core_.sp_size()));
  saved_qkv_ = qkv_.Forward(arena, x);  // [B * S/sp, 3, H, Dh]
  const float* qkv = saved_qkv_.data<float>();
  TESSERA_ASSIGN_OR_RETURN(Tensor out,
                           core_.Forward(arena, batch, seq, 3 * hidden_, qkv, qkv + hidden_,
                                         qkv + 2 * hidden_));  // [B * S/sp, hidden]
  return proj_.Forward(arena, out);
}

absl::StatusOr<Tensor> UlyssesMultiHeadAttention::Backward(Arena& arena, const Tensor& dy) {
  Tensor dout = proj_.Backward(arena, dy);  // [B * S/sp, hidden]
  Tensor dqkv = arena.AllocateUninitialized(DType::kF32, saved_qkv_.shape());
  float* d = dqkv.data<float>();
  TESSERA_RETURN_IF_ERROR(core_.Backward(arena, dout, d, d + hidden_, d + 2 * hidden_));
  saved_qkv_ = Tensor();
  return qkv_.Backward(arena, dqkv);
}

}  // namespace tessera::parallel
