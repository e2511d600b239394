#include "runtime/optim/ema.h"

#include <algorithm>

namespace tessera {

Ema::Ema(Backend& backend, const float* params, int64_t n) : backend_(&backend) {
  values_ = Tensor::Empty(DType::kF32, Shape{n}, backend);  // [n]
  backend.Copy(values_.address(), params, static_cast<size_t>(n) * sizeof(float));
}

void Ema::Update(const float* params, double decay, const float* guard) {
  backend_->EmaUpdate(values_.ptr<float>(), params, size(), static_cast<float>(1.0 - decay), guard);
}

}  // namespace tessera
