// Synthetic images data sets for tests and quick starts.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace tessera {

// Writes an images data set to `out_dir` of `num_samples` images
// [channels, height, width] whose class is visible in them: class k is a
// sinusoidal stripe pattern with its own orientation and frequency (and a
// per-channel phase), shifted by up to one pixel and overlaid with Gaussian
// noise, so a model can learn the classes but has to generalise. Sample i
// depends only on (seed, i), so the data are the same for any shard size.
absl::Status SynthesizeImages(const std::string& out_dir, int64_t num_samples, int channels,
                              int height, int width, int num_classes, uint64_t seed,
                              int64_t samples_per_shard);

}  // namespace tessera
