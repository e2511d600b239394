// Exponential moving average of the weights (optim.ema_decay), kept in a flat
// fp32 copy of the parameter buffer (or of one rank's range of it).
//
// Update: ema <- decay * ema + (1 - decay) * p, computed as
// ema += (1 - decay) * (p - ema), which is the same value but loses less to
// rounding when decay is close to 1. The EMA starts equal to the parameters
// it was constructed from.
#pragma once

#include <cstdint>

#include "runtime/tensor/tensor.h"

namespace tessera {

class Ema {
 public:
  // Copies params[0, n), which live in `backend`'s memory (the EMA is kept
  // there too).
  Ema(Backend& backend, const float* params, int64_t n);

  // Blends `params` (n floats, the same layout as at construction) in;
  // nothing when `guard` (null, or one float in the backend's memory: the
  // step's clip scale, Backend::StepGuard) is 0.
  void Update(const float* params, double decay, const float* guard = nullptr);

  Tensor values() const { return values_; }  // [n] fp32
  int64_t size() const { return values_.numel(); }

 private:
  Tensor values_;
  Backend* backend_;
};

}  // namespace tessera
