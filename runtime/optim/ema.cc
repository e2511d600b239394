#include "runtime/optim/ema.h"

#include <algorithm>

namespace tessera {
namespace {
constexpr int64_t kParallelThreshold = 1 << 15;
}  // namespace

Ema::Ema(const float* params, int64_t n) {
  values_ = Tensor::Empty(DType::kF32, Shape{n});  // [n]
  if (n > 0) std::copy(params, params + n, values_.data<float>());
}

void Ema::Update(const float* params, double decay) {
  const float blend = static_cast<float>(1.0 - decay);
  float* ema = values_.data<float>();
  const int64_t n = size();
#pragma omp parallel for simd schedule(static) if (n >= kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) ema[i] += blend * (params[i] - ema[i]);
}

}  // namespace tessera
