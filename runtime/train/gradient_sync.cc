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

absl::Status LocalGradientSync::GradNormSquared(const double* losses, int64_t count,
                                                double* norm_squared) {
  Backend& backend = store_.backend();
  backend.SumSquares(store_.grads().ptr<float>(), store_.numel(), norm_squared);
  backend.AccumulateScalars(losses, count, 0.0, norm_squared);
  return absl::OkStatus();
}

absl::Status LocalGradientSync::Step(float lr, const float* grad_scale) {
  optimizer_.Step(lr, store_.values().ptr<float>(), store_.grads().ptr<float>(), grad_scale);
  return absl::OkStatus();
}

}  // namespace tessera
