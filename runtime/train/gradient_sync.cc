#include "runtime/train/gradient_sync.h"

namespace tessera {

LocalGradientSync::LocalGradientSync(ParameterStore& store, const OptimConfig& optim)
    : store_(store), optimizer_(store, optim) {}

absl::Status LocalGradientSync::FinishBackward(double global_elements) {
  if (global_elements > 0 && global_elements != 1) {
    store_.backend().Scale(store_.grads().ptr<float>(), store_.numel(),
                           static_cast<float>(1.0 / global_elements));
  }
  return absl::OkStatus();
}

absl::StatusOr<double> LocalGradientSync::GradNormSquared() {
  return store_.backend().SumSquares(store_.grads().ptr<float>(), store_.numel());
}

absl::Status LocalGradientSync::Step(float lr, float grad_scale) {
  Backend& backend = store_.backend();
  float* grads = store_.grads().ptr<float>();
  if (grad_scale != 1.0f) backend.Scale(grads, store_.numel(), grad_scale);
  optimizer_.Step(lr, store_.values().ptr<float>(), grads);
  return absl::OkStatus();
}

}  // namespace tessera
