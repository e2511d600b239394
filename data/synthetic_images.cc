#include "data/synthetic_images.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "data/dataset_writer.h"
#include "runtime/base/errors.h"
#include "runtime/base/random.h"

namespace tessera {
namespace {

constexpr double kPi = 3.141592653589793;
constexpr double kAmplitude = 70.0;   // of the stripes around mid-grey
constexpr double kNoiseSigma = 20.0;  // pixel noise

// One image of class `label` into `out` [channels, height, width].
void DrawImage(int label, int num_classes, int channels, int height, int width, Rng& rng,
               uint8_t* out) {
  const double angle = kPi * label / num_classes;
  const double cycles = 2.0 + label % 3;  // stripes across the image
  const double size = std::max(height, width);
  const double kx = 2 * kPi * cycles * std::cos(angle) / size;
  const double ky = 2 * kPi * cycles * std::sin(angle) / size;
  const int shift_x = static_cast<int>(rng.Below(3)) - 1;
  const int shift_y = static_cast<int>(rng.Below(3)) - 1;
  for (int c = 0; c < channels; ++c) {
    const double phase = 2 * kPi * c / (channels + 1);
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) {
        const double stripes = std::sin(kx * (x + shift_x) + ky * (y + shift_y) + phase);
        const double value = 127.5 + kAmplitude * stripes + kNoiseSigma * rng.Normal();
        *out++ = static_cast<uint8_t>(std::clamp(std::lround(value), 0l, 255l));
      }
    }
  }
}

}  // namespace

absl::Status SynthesizeImages(const std::string& out_dir, int64_t num_samples, int channels,
                              int height, int width, int num_classes, uint64_t seed,
                              int64_t samples_per_shard) {
  if (num_samples < 0 || channels <= 0 || height <= 0 || width <= 0 || num_classes <= 0) {
    return UsageError(
        absl::StrCat("synthetic images: need num_samples >= 0 and positive "
                     "channels, height, width, num_classes; got ",
                     num_samples, ", ", channels, ", ", height, ", ", width, ", ", num_classes));
  }
  const int64_t pixels_per_image = int64_t{channels} * height * width;
  std::vector<uint8_t> pixels(static_cast<size_t>(num_samples * pixels_per_image));
  std::vector<int32_t> labels(static_cast<size_t>(num_samples));
  for (int64_t i = 0; i < num_samples; ++i) {
    Rng rng(seed, static_cast<uint64_t>(i));
    labels[i] = static_cast<int32_t>(rng.Below(static_cast<uint64_t>(num_classes)));
    DrawImage(labels[i], num_classes, channels, height, width, rng,
              &pixels[static_cast<size_t>(i * pixels_per_image)]);
  }
  ImageArrays arrays;
  arrays.pixels = pixels.data();
  arrays.labels = labels.data();
  arrays.count = num_samples;
  arrays.channels = channels;
  arrays.height = height;
  arrays.width = width;
  return WriteImagesDataset(out_dir, arrays, num_classes, samples_per_shard,
                            absl::StrCat("synthetic images, seed ", seed));
}

}  // namespace tessera
