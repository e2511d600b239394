// Diffusion objectives and samplers for DiT-MoE.
//
// Rectified flow (the default): t = sigmoid(n), n ~ N(0, 1);
//   z_t = (1 - t) x + t eps, the model predicts v = eps - x (MSE).
//   The model sees t * 1000 so the sinusoidal embedder's frequencies cover
//   the unit interval as they cover DDPM's 1000 steps. Sampling integrates
//   dz/dt = v from t = 1 (noise) to t = 0 with Euler steps.
// DDPM: linear betas 1e-4 .. 2e-2 over 1000 steps, eps-prediction (MSE);
//   sampling uses deterministic DDIM steps over `sample_steps` evenly spaced
//   timesteps (x0 clipped to [-1, 1]).
// Both samplers apply classifier-free guidance: v = v_null + s (v_cond - v_null).
#pragma once

#include <vector>

#include "models/dit_moe/model.h"
#include "runtime/base/random.h"

namespace tessera::dit_moe {

struct DiffusionExample {
  Tensor noisy;                 // [B, C, H, W] model input
  Tensor target;                // [B, C, H, W] regression target
  std::vector<float> t;         // [B] model time units
  std::vector<int32_t> labels;  // [B] after label dropout (null label = num_classes)
  // [B, C, H, W] the noise drawn, on the host; only when MakeExample is asked
  // to keep it (the numerics dump).
  Tensor noise;
};

class Diffusion {
 public:
  explicit Diffusion(const DitMoeConfig& config);

  // Draws timesteps, noise and label drops for clean images [B, C, H, W] in
  // [-1, 1]. Sample b's draws come from a stream keyed by (seed, step,
  // sample_ids[b]) alone, so any split of the batch over micro-batches or
  // ranks draws the same numbers for the same sample. The draws are made on
  // the host: pass host `images` (the batch as read), or a device run reads
  // them back, waiting for the device.
  DiffusionExample MakeExample(Arena& arena, const Tensor& images, const int32_t* labels,
                               const int64_t* sample_ids, float class_dropout,
                               int32_t null_label, uint64_t seed, int64_t step,
                               bool keep_noise = false) const;

  // Generates images [n, C, H, W] for `labels` (one per image), starting from
  // noise drawn from `rng`. Runs the model without recording.
  // The images are host memory whatever the model's device.
  absl::StatusOr<Tensor> Sample(DitMoe& model, Arena& arena, const std::vector<int32_t>& labels,
                                int steps, float cfg_scale, Rng& rng) const;

  static constexpr int kDdpmSteps = 1000;

 private:
  // The guided prediction for z at model time t (same for the whole batch).
  // z is host memory; so is the result.
  absl::StatusOr<Tensor> GuidedPrediction(DitMoe& model, Arena& arena, const Tensor& z,
                                          const std::vector<int32_t>& labels, float t,
                                          float cfg_scale) const;

  DitMoeConfig::Objective objective_;
  std::vector<double> alpha_bar_;  // DDPM cumulative products, [1000]
};

}  // namespace tessera::dit_moe
