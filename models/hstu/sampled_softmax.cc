#include "models/hstu/sampled_softmax.h"

#include <cmath>

#include "runtime/base/errors.h"
#include "runtime/base/random.h"

namespace tessera::hstu {
namespace {

constexpr float kMasked = -1e9f;

// Candidate rows are normalised to length sqrt(D) by RmsNorm without gamma;
// the logit folds the 1/sqrt(D) into its scale. eps as Hstu's output norm.
float RowNormEps(int64_t dim) { return 1e-12f / static_cast<float>(dim); }

template <typename T>
Tensor UploadVector(Arena& arena, const std::vector<T>& values) {
  Tensor t = arena.AllocateUninitialized(DTypeOf<T>(), Shape{static_cast<int64_t>(values.size())});
  if (!values.empty()) arena.backend().CopyToDevice(t.address(), values.data(), t.bytes());
  return t;
}

}  // namespace

Candidates SampleCandidates(const HstuBatch& batch, int64_t negatives, int64_t num_items,
                            uint64_t seed, int64_t step) {
  return SampleCandidates(batch, {0, batch.tokens()}, negatives, num_items, seed, step);
}

Candidates SampleCandidates(const HstuBatch& batch, parallel::TokenRange range,
                            int64_t negatives, int64_t num_items, uint64_t seed, int64_t step) {
  Candidates c;
  c.per_token = 1 + negatives;
  const int64_t tokens = range.size();
  c.ids.resize(static_cast<size_t>(tokens * c.per_token));
  c.mask.assign(c.ids.size(), 0.0f);
  const uint64_t key =
      Mix64(Mix64(seed ^ HashName("hstu.negatives")) ^ Mix64(static_cast<uint64_t>(step)));
  for (int64_t t = 0; t < tokens; ++t) {
    const int32_t target = batch.targets[range.begin + t];
    const uint64_t token_key = batch.token_keys[range.begin + t];
    int32_t* row = c.ids.data() + t * c.per_token;
    row[0] = target;
    for (int64_t k = 0; k < negatives; ++k) {
      const uint64_t bits = Mix64(key ^ Mix64(token_key * negatives + k));
      const auto item = static_cast<int32_t>(
          (static_cast<__uint128_t>(bits) * static_cast<uint64_t>(num_items)) >> 64);
      row[1 + k] = item;
      if (item == target) c.mask[t * c.per_token + 1 + k] = kMasked;
    }
  }
  return c;
}

void SampledSoftmax::Forward(Arena& arena, const Tensor& outputs, const Tensor& distinct,
                             const Tensor& slots, const Candidates& candidates, double* loss) {
  Backend& backend = arena.backend();
  tokens_ = outputs.dim(0);
  per_token_ = candidates.per_token;
  if (tokens_ == 0) {
    backend.Memset(loss, 0, sizeof(double));
    return;
  }
  const int64_t rows = tokens_ * per_token_;
  TESSERA_CHECK(slots.numel() == rows && distinct.rank() == 2 && distinct.dim(1) == dim_);
  outputs_ = outputs;
  distinct_ = distinct;
  slots_ = slots;
  targets_ = arena.Allocate(DType::kI32, Shape{tokens_});  // the target is candidate 0
  // Each distinct row normalised once, then gathered into candidate order.
  unit_distinct_ = arena.AllocateUninitialized(DType::kF32, distinct.shape());
  rstd_ = arena.AllocateUninitialized(DType::kF32, Shape{distinct.dim(0)});
  backend.RmsNormForward(distinct.ptr<float>(), nullptr, unit_distinct_.ptr<float>(),
                         rstd_.ptr<float>(), distinct.dim(0), dim_, RowNormEps(dim_));
  // logits[t, c] = u_t . row_tc / (sqrt(D) temperature), each token against
  // its candidates' normalised rows where they lie (no [T (1 + K), D] copy).
  Tensor logits = UploadVector(arena, candidates.mask);  // the mask, then += the scores
  const float alpha = 1.0f / (std::sqrt(static_cast<float>(dim_)) * temperature_);
  backend.GatherDotForward(outputs.ptr<float>(), unit_distinct_.ptr<float>(),
                           slots.ptr<int32_t>(), tokens_, per_token_, dim_, alpha, 1.0f,
                           logits.ptr<float>());
  probs_ = arena.AllocateUninitialized(DType::kF32, Shape{tokens_, per_token_});
  backend.CrossEntropyForward(logits.ptr<float>(), targets_.ptr<int32_t>(), probs_.ptr<float>(),
                              tokens_, per_token_, loss);
}

Tensor SampledSoftmax::Backward(Arena& arena, const Tensor& ddistinct, float scale) {
  Backend& backend = arena.backend();
  Tensor doutputs = arena.Allocate(DType::kF32, Shape{tokens_, dim_});
  if (tokens_ == 0) return doutputs;
  const int64_t distinct = distinct_.dim(0);
  TESSERA_CHECK(ddistinct.numel() == distinct * dim_);
  // dlogits = scale (p - onehot): CrossEntropyBackward divides by the rows.
  Tensor dlogits = arena.AllocateUninitialized(DType::kF32, Shape{tokens_, per_token_});
  backend.CrossEntropyBackward(probs_.ptr<float>(), targets_.ptr<int32_t>(),
                               dlogits.ptr<float>(), tokens_, per_token_,
                               scale * static_cast<float>(tokens_));
  const float alpha = 1.0f / (std::sqrt(static_cast<float>(dim_)) * temperature_);
  // d u_t = alpha sum_c dlogits_tc row_tc; the normalised distinct rows'
  // gradient summed over their candidates (in candidate order), then
  // through their norm.
  Tensor dunit_distinct = arena.Allocate(DType::kF32, Shape{distinct, dim_});
  backend.GatherDotBackward(outputs_.ptr<float>(), unit_distinct_.ptr<float>(),
                            slots_.ptr<int32_t>(), tokens_, per_token_, dim_, alpha,
                            dlogits.ptr<float>(), doutputs.ptr<float>(),
                            dunit_distinct.ptr<float>());
  Tensor d = arena.AllocateUninitialized(DType::kF32, Shape{distinct, dim_});
  backend.RmsNormBackward(dunit_distinct.ptr<float>(), distinct_.ptr<float>(), nullptr,
                          rstd_.ptr<float>(), d.ptr<float>(), nullptr, distinct, dim_);
  backend.AddInPlace(ddistinct.ptr<float>(), d.ptr<float>(), distinct * dim_);
  outputs_ = targets_ = distinct_ = slots_ = unit_distinct_ = rstd_ = probs_ = Tensor();
  return doutputs;
}

}  // namespace tessera::hstu
