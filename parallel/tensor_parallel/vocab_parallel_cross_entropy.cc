#include "parallel/tensor_parallel/vocab_parallel_cross_entropy.h"

#include "runtime/base/status.h"

namespace tessera::parallel {
namespace {

constexpr int64_t kStats = 4;  // per row: max, sum of exponentials, target logit, argmax

}  // namespace

absl::StatusOr<double> VocabParallelCrossEntropy::Forward(const Tensor& logits,
                                                          const std::vector<int32_t>& targets,
                                                          int64_t* correct) {
  Backend& backend = logits.backend();
  TESSERA_ASSIGN_OR_RETURN(
      const Tensor totals,
      Run([&backend](DType dtype, Shape shape) { return Tensor::Empty(dtype, shape, backend); },
          logits, targets));
  return Read(totals, correct);
}

absl::StatusOr<double> VocabParallelCrossEntropy::Forward(Arena& arena, const Tensor& logits,
                                                          const std::vector<int32_t>& targets,
                                                          int64_t* correct) {
  TESSERA_ASSIGN_OR_RETURN(const Tensor totals, ForwardTotals(arena, logits, targets));
  return Read(totals, correct);
}

absl::StatusOr<Tensor> VocabParallelCrossEntropy::ForwardTotals(
    Arena& arena, const Tensor& logits, const std::vector<int32_t>& targets) {
  TESSERA_CHECK(&arena.backend() == &logits.backend());
  return Run([&arena](DType dtype, Shape shape) {
               return arena.AllocateUninitialized(dtype, shape);
             },
             logits, targets);
}

double VocabParallelCrossEntropy::Read(const Tensor& totals, int64_t* correct) {
  double host[2];  // the loss sum and the hits
  totals.backend().CopyToHost(host, totals.address(), sizeof(host));
  if (correct != nullptr) *correct = static_cast<int64_t>(host[1]);
  return host[0];
}

absl::StatusOr<Tensor> VocabParallelCrossEntropy::Run(const Allocator& allocate,
                                                      const Tensor& logits,
                                                      const std::vector<int32_t>& targets) {
  const int64_t rows = logits.dim(0), columns = logits.dim(1);
  TESSERA_CHECK(static_cast<int64_t>(targets.size()) == rows);
  Backend& backend = logits.backend();
  targets_ = allocate(DType::kI32, Shape{rows});
  backend.CopyToDevice(targets_.address(), targets.data(), targets_.bytes());
  // The statistics are doubles, held in i64 tensors (the same 8 bytes) and
  // moved as bytes.
  const int ranks = tp_->size();
  const Tensor mine = allocate(DType::kI64, Shape{rows, kStats});
  const auto doubles = [](const Tensor& t) { return reinterpret_cast<double*>(t.ptr<int64_t>()); };
  backend.VocabCrossEntropyStats(logits.ptr<float>(), targets_.ptr<int32_t>(), rows, columns,
                                 vocab_begin_, doubles(mine));
  Tensor all = mine;
  if (ranks > 1) {
    all = allocate(DType::kI64, Shape{ranks * rows, kStats});
    TESSERA_RETURN_IF_ERROR(tp_->CompleteOnDevice(
        tp_->AllGather(mine.address(), all.address(), mine.bytes(), DType::kU8)));
  }
  // Combined in rank order: the same loss and softmax on every rank.
  probs_ = allocate(DType::kF32, logits.shape());
  const Tensor totals = allocate(DType::kI64, Shape{2});
  backend.VocabCrossEntropyCombine(logits.ptr<float>(), doubles(all), ranks,
                                   targets_.ptr<int32_t>(), probs_.ptr<float>(), rows, columns,
                                   doubles(totals));
  return totals;
}

void VocabParallelCrossEntropy::Backward(const Tensor& dlogits, float scale) const {
  const int64_t rows = probs_.dim(0), columns = probs_.dim(1);
  probs_.backend().VocabCrossEntropyBackward(probs_.ptr<float>(), targets_.ptr<int32_t>(),
                                             dlogits.ptr<float>(), rows, columns, vocab_begin_,
                                             scale);
}

}  // namespace tessera::parallel
