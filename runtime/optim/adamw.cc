#include "runtime/optim/adamw.h"

#include <algorithm>
#include <cmath>

#include "runtime/base/status.h"

namespace tessera {
namespace {
// Below this many elements a step is cheaper than waking the thread team.
constexpr int64_t kParallelThreshold = 1 << 15;
}  // namespace

AdamW::AdamW(const ParameterStore& store, const OptimConfig& config)
    : AdamW(store, config, 0, store.numel()) {}

AdamW::AdamW(const ParameterStore& store, const OptimConfig& config, int64_t begin, int64_t end)
    : begin_(begin),
      end_(end),
      beta1_(config.beta1()),
      beta2_(config.beta2()),
      eps_(config.eps()),
      weight_decay_(config.weight_decay()) {
  TESSERA_CHECK(store.finalized());
  TESSERA_CHECK(0 <= begin && begin <= end && end <= store.numel());
  m_ = Tensor::Empty(DType::kF32, Shape{size()});  // [size()] zeros
  v_ = Tensor::Empty(DType::kF32, Shape{size()});  // [size()] zeros

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

void AdamW::Step(float lr, float* params, const float* grads) {
  ++step_;
  // Scalars in double, then rounded once: the per-element loop stays fp32.
  const double t = static_cast<double>(step_);
  const float step_size = static_cast<float>(lr / (1.0 - std::pow(beta1_, t)));
  const float inv_sqrt_bias2 = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(beta2_, t)));
  const float b1 = static_cast<float>(beta1_);
  const float b2 = static_cast<float>(beta2_);
  const float one_minus_b1 = static_cast<float>(1.0 - beta1_);
  const float one_minus_b2 = static_cast<float>(1.0 - beta2_);
  const float eps = static_cast<float>(eps_);
  const float decay_keep = static_cast<float>(1.0 - static_cast<double>(lr) * weight_decay_);
  float* m = m_.data<float>();
  float* v = v_.data<float>();

  // Segments are disjoint, so the threads need no barrier between them.
#pragma omp parallel if (size() >= kParallelThreshold)
  for (const Segment& segment : segments_) {
    const float keep = segment.decay ? decay_keep : 1.0f;
#pragma omp for simd schedule(static) nowait
    for (int64_t i = segment.begin; i < segment.end; ++i) {
      const float g = grads[i];
      const float mi = b1 * m[i] + one_minus_b1 * g;
      const float vi = b2 * v[i] + one_minus_b2 * (g * g);
      m[i] = mi;
      v[i] = vi;
      params[i] = params[i] * keep - step_size * mi / (std::sqrt(vi) * inv_sqrt_bias2 + eps);
    }
  }
}

}  // namespace tessera
