#include "models/dit_moe/diffusion.h"

#include <algorithm>
#include <cmath>

#include "runtime/tensor/host_access.h"

namespace tessera::dit_moe {

Diffusion::Diffusion(const DitMoeConfig& config) : objective_(config.objective()) {
  alpha_bar_.resize(kDdpmSteps);
  double product = 1;
  for (int i = 0; i < kDdpmSteps; ++i) {
    const double beta = 1e-4 + (2e-2 - 1e-4) * i / (kDdpmSteps - 1);
    product *= 1 - beta;
    alpha_bar_[i] = product;
  }
}

DiffusionExample Diffusion::MakeExample(Arena& arena, const Tensor& images, const int32_t* labels,
                                        const int64_t* sample_ids, float class_dropout,
                                        int32_t null_label, uint64_t seed, int64_t step,
                                        bool keep_noise) const {
  const int64_t B = images.dim(0), per_image = images.numel() / B;
  DiffusionExample ex;
  ex.noisy = arena.AllocateUninitialized(DType::kF32, images.shape());
  ex.target = arena.AllocateUninitialized(DType::kF32, images.shape());
  ex.t.resize(B);
  ex.labels.resize(B);
  // Inputs are made on the host (counter-based draws), then moved to the
  // arena's memory (no copy when that is host memory; on a device two
  // CopyToDevice calls, which do not wait for the device).
  const Tensor host_images = HostReadable(images);
  const Tensor host_noisy = HostWritable(ex.noisy), host_target = HostWritable(ex.target);
  const float* x = host_images.data<float>();
  float* z = host_noisy.data<float>();
  float* target = host_target.data<float>();
  if (keep_noise) ex.noise = Tensor::Empty(DType::kF32, images.shape());
  float* noise = keep_noise ? ex.noise.data<float>() : nullptr;
  for (int64_t b = 0; b < B; ++b) {
    Rng rng(seed, Mix64(static_cast<uint64_t>(step)) ^ Mix64(~static_cast<uint64_t>(sample_ids[b])));
    ex.labels[b] = rng.Uniform() < class_dropout ? null_label : labels[b];
    const int64_t base = b * per_image;
    if (objective_ == DitMoeConfig::RECTIFIED_FLOW) {
      const double t = 1.0 / (1.0 + std::exp(-static_cast<double>(rng.Normal())));
      ex.t[b] = static_cast<float>(t * 1000.0);
      for (int64_t i = 0; i < per_image; ++i) {
        const float eps = rng.Normal();
        if (noise) noise[base + i] = eps;
        z[base + i] = static_cast<float>((1 - t) * x[base + i] + t * eps);
        target[base + i] = eps - x[base + i];
      }
    } else {
      const int64_t step = static_cast<int64_t>(rng.Below(kDdpmSteps));
      ex.t[b] = static_cast<float>(step);
      const double a = std::sqrt(alpha_bar_[step]), s = std::sqrt(1 - alpha_bar_[step]);
      for (int64_t i = 0; i < per_image; ++i) {
        const float eps = rng.Normal();
        if (noise) noise[base + i] = eps;
        z[base + i] = static_cast<float>(a * x[base + i] + s * eps);
        target[base + i] = eps;
      }
    }
  }
  WriteBack(host_noisy, ex.noisy);
  WriteBack(host_target, ex.target);
  return ex;
}

absl::StatusOr<Tensor> Diffusion::GuidedPrediction(DitMoe& model, Arena& arena, const Tensor& z,
                                   const std::vector<int32_t>& labels, float t,
                                   float cfg_scale) const {
  const int64_t n = z.dim(0), per_image = z.numel() / n;
  // One forward over [conditional; unconditional].
  Shape doubled = z.shape();
  doubled[0] = 2 * n;
  Tensor input = arena.AllocateUninitialized(DType::kF32, doubled);  // z is host memory
  Backend& backend = arena.backend();
  backend.CopyToDevice(input.address(), z.raw(), z.bytes());
  backend.CopyToDevice(static_cast<char*>(input.address()) + z.bytes(), z.raw(), z.bytes());
  std::vector<int32_t> all_labels(labels);
  all_labels.resize(2 * n, static_cast<int32_t>(model.null_label()));
  std::vector<float> times(2 * n, t);
  TESSERA_ASSIGN_OR_RETURN(
      Tensor out, model.Forward(arena, input, times.data(), all_labels.data(), /*record=*/false));
  const Tensor host_out = HostReadable(out);
  Tensor guided = Tensor::Empty(DType::kF32, z.shape());  // host
  const float* cond = host_out.data<float>();
  const float* uncond = cond + n * per_image;
  float* g = guided.data<float>();
  for (int64_t i = 0; i < n * per_image; ++i) g[i] = uncond[i] + cfg_scale * (cond[i] - uncond[i]);
  return guided;
}

absl::StatusOr<Tensor> Diffusion::Sample(DitMoe& model, Arena& arena, const std::vector<int32_t>& labels,
                         int steps, float cfg_scale, Rng& rng) const {
  const DitMoeDims& d = model.dims();
  const int64_t n = static_cast<int64_t>(labels.size());
  const int64_t numel = n * d.channels * d.input_size * d.input_size;
  // z lives outside the arena, which is reset after every model call.
  Tensor z = Tensor::Empty(DType::kF32, Shape{n, d.channels, d.input_size, d.input_size});
  float* zp = z.data<float>();
  for (int64_t i = 0; i < numel; ++i) zp[i] = rng.Normal();
  for (int i = 0; i < steps; ++i) {
    if (objective_ == DitMoeConfig::RECTIFIED_FLOW) {
      const double t = 1.0 - static_cast<double>(i) / steps, dt = 1.0 / steps;
      TESSERA_ASSIGN_OR_RETURN(Tensor v, GuidedPrediction(model, arena, z, labels,
                                                          static_cast<float>(t * 1000),
                                                          cfg_scale));
      const float* vp = v.data<float>();
      for (int64_t j = 0; j < numel; ++j) zp[j] -= static_cast<float>(dt) * vp[j];
    } else {
      // Evenly spaced timesteps from 999 down to 0.
      const int step = (kDdpmSteps - 1) - static_cast<int>(
          static_cast<int64_t>(i) * (kDdpmSteps - 1) / std::max(1, steps - 1));
      const int prev = i + 1 < steps ? (kDdpmSteps - 1) - static_cast<int>(
          static_cast<int64_t>(i + 1) * (kDdpmSteps - 1) / std::max(1, steps - 1)) : -1;
      TESSERA_ASSIGN_OR_RETURN(
          Tensor eps,
          GuidedPrediction(model, arena, z, labels, static_cast<float>(step), cfg_scale));
      const float* ep = eps.data<float>();
      const double ab = alpha_bar_[step], ab_prev = prev >= 0 ? alpha_bar_[prev] : 1.0;
      for (int64_t j = 0; j < numel; ++j) {
        double x0 = (zp[j] - std::sqrt(1 - ab) * ep[j]) / std::sqrt(ab);
        x0 = std::clamp(x0, -1.0, 1.0);
        const double e = (zp[j] - std::sqrt(ab) * x0) / std::sqrt(1 - ab);
        zp[j] = static_cast<float>(std::sqrt(ab_prev) * x0 + std::sqrt(1 - ab_prev) * e);
      }
    }
    arena.Reset();
  }
  return z;
}

}  // namespace tessera::dit_moe
