// Writes a grid of images to a PNG file.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "runtime/tensor/tensor.h"

namespace tessera {

// images: f32 [N, C, H, W] with values in [-1, 1] (clamped), C = 1 (gray) or
// 3 (RGB); N = rows * cols, row-major. `upscale` repeats each pixel.
absl::Status WritePngGrid(const std::string& path, const Tensor& images, int rows, int cols,
                          int upscale = 2);

}  // namespace tessera
