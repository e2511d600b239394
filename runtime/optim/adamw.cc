#include "runtime/optim/adamw.h"

#include <algorithm>
#include <cmath>

#include "runtime/base/status.h"

namespace tessera {

AdamW::AdamW(const ParameterStore& store, const OptimConfig& config)
    : AdamW(store, config, 0, store.numel()) {}

AdamW::AdamW(const ParameterStore& store, const OptimConfig& config, int64_t begin, int64_t end)
    : begin_(begin),
      end_(end),
      beta1_(config.beta1()),
      beta2_(config.beta2()),
      eps_(config.eps()),
      weight_decay_(config.weight_decay()),
      backend_(&store.backend()) {
  TESSERA_CHECK(store.finalized());
  TESSERA_CHECK(0 <= begin && begin <= end && end <= store.numel());
  m_ = Tensor::Empty(DType::kF32, Shape{size()}, *backend_);  // [size()] zeros
  v_ = Tensor::Empty(DType::kF32, Shape{size()}, *backend_);  // [size()] zeros

  // Decayed parameters clipped to the range, then merged where they touch.
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (const ParamInfo& info : store.infos()) {
    if (!info.weight_decay) continue;
    const int64_t first = std::max(info.offset, begin);
    const int64_t last = std::min(info.offset + info.local_shape.numel(), end);
    if (first < last) ranges.emplace_back(first - begin, last - begin);
  }
  std::sort(ranges.begin(), ranges.end());
  for (const auto& range : ranges) {
    if (!decay_ranges_.empty() && range.first <= decay_ranges_.back().second) {
      decay_ranges_.back().second = std::max(decay_ranges_.back().second, range.second);
    } else {
      decay_ranges_.push_back(range);
    }
  }

  int64_t position = 0;
  for (const auto& [first, last] : decay_ranges_) {
    if (position < first) segments_.push_back({position, first, false});
    segments_.push_back({first, last, true});
    position = last;
  }
  if (position < size()) segments_.push_back({position, size(), false});
}

void AdamW::Step(float lr, float* params, const float* grads, const float* grad_scale) {
  ++step_;
  // Scalars in double, then rounded once: the per-element loop stays fp32.
  const double t = static_cast<double>(step_);
  AdamWScalars scalars;
  scalars.step_size = static_cast<float>(lr / (1.0 - std::pow(beta1_, t)));
  scalars.inv_sqrt_bias2 = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(beta2_, t)));
  scalars.beta1 = static_cast<float>(beta1_);
  scalars.beta2 = static_cast<float>(beta2_);
  scalars.one_minus_beta1 = static_cast<float>(1.0 - beta1_);
  scalars.one_minus_beta2 = static_cast<float>(1.0 - beta2_);
  scalars.eps = static_cast<float>(eps_);
  scalars.decay_keep = static_cast<float>(1.0 - static_cast<double>(lr) * weight_decay_);
  backend_->AdamWUpdate(scalars, segments_, params, grads, m_.ptr<float>(), v_.ptr<float>(),
                        grad_scale);
}

}  // namespace tessera
