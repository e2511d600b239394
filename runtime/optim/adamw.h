// AdamW over a range of the flat fp32 parameter buffer.
//
// The optimizer covers elements [begin, end) of the ParameterStore's flat
// layout: the whole buffer on one process, one rank's shard under ZeRO-1.
// Its moments m and v are flat fp32 tensors of that range's size. Which
// elements get weight decay comes from ParamInfo::weight_decay, kept as
// sorted element ranges rather than a per-element mask. Elements that belong
// to no parameter (alignment padding) are updated without decay; their
// gradient is zero, so they stay put.
//
// One Step (PyTorch's AdamW, decoupled weight decay), t = step count after
// increment, g the gradient:
//   p <- p * (1 - lr * weight_decay)          only where decay applies
//   m <- beta1 * m + (1 - beta1) * g
//   v <- beta2 * v + (1 - beta2) * g^2
//   p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// Each element's update depends only on that element, so the result does not
// depend on the thread count.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "runtime/config/config.pb.h"
#include "runtime/nn/parameter.h"
#include "runtime/tensor/tensor.h"

namespace tessera {

class AdamW {
 public:
  // Over the whole flat buffer of a finalized `store`.
  AdamW(const ParameterStore& store, const OptimConfig& config);
  // Over elements [begin, end) of the flat buffer (0 <= begin <= end <= numel).
  AdamW(const ParameterStore& store, const OptimConfig& config, int64_t begin, int64_t end);

  // One update with learning rate `lr`. `params` and `grads` point at the
  // range's first element (flat element `begin()`) and hold size() floats.
  // `grad_scale`: null, or one float in the parameters' memory the
  // gradients are multiplied by (the clip scale, Backend::StepGuard), where
  // 0 leaves the parameters and moments unchanged (a diverged step; the
  // step count still advances, and the trainer stops at its next read).
  void Step(float lr, float* params, const float* grads, const float* grad_scale = nullptr);

  int64_t begin() const { return begin_; }
  int64_t end() const { return end_; }
  int64_t size() const { return end_ - begin_; }

  // Completed steps; bias correction uses step() + 1 on the next Step.
  int64_t step() const { return step_; }
  // For restoring from a checkpoint together with m() and v().
  void set_step(int64_t step) { step_ = step; }
  Tensor m() const { return m_; }  // [size()] fp32, first moment
  Tensor v() const { return v_; }  // [size()] fp32, second moment
  size_t StateBytes() const { return m_.bytes() + v_.bytes(); }

  // Sorted, disjoint, non-adjacent [first, second) element ranges relative to
  // begin() that receive weight decay.
  const std::vector<std::pair<int64_t, int64_t>>& decay_ranges() const { return decay_ranges_; }

 private:
  int64_t begin_;
  int64_t end_;
  double beta1_;
  double beta2_;
  double eps_;
  double weight_decay_;
  int64_t step_ = 0;
  Tensor m_;
  Tensor v_;
  std::vector<std::pair<int64_t, int64_t>> decay_ranges_;
  // [0, size()) cut into alternating decay / no-decay runs, for Step.
  std::vector<AdamWSegment> segments_;
  Backend* backend_;  // of the parameters; the moments live there too
};

}  // namespace tessera
