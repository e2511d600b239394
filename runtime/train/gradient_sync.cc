#include "runtime/train/gradient_sync.h"

#include "runtime/optim/clip.h"

namespace tessera {

LocalGradientSync::LocalGradientSync(ParameterStore& store, const OptimConfig& optim)
    : store_(store), optimizer_(store, optim) {}

absl::StatusOr<double> LocalGradientSync::GradNormSquared() {
  return GradNormSquaredPartial(store_.grads().data<float>(), store_.numel());
}

absl::Status LocalGradientSync::Step(float lr, float grad_scale) {
  float* grads = store_.grads().data<float>();
  if (grad_scale != 1.0f) ScaleInPlace(grads, store_.numel(), grad_scale);
  optimizer_.Step(lr, store_.values().data<float>(), grads);
  return absl::OkStatus();
}

}  // namespace tessera
