#include "models/dit_moe/image_grid.h"

#include <png.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/base/errors.h"

namespace tessera {

absl::Status WritePngGrid(const std::string& path, const Tensor& images, int rows, int cols,
                          int upscale) {
  const int64_t n = images.dim(0), channels = images.dim(1), h = images.dim(2), w = images.dim(3);
  if (n != static_cast<int64_t>(rows) * cols || (channels != 1 && channels != 3)) {
    return absl::InvalidArgumentError(
        absl::StrCat("WritePngGrid: ", images.DebugString(), " does not fill ", rows, "x", cols));
  }
  constexpr int kGap = 2;  // pixels between tiles
  const int64_t tile_h = h * upscale, tile_w = w * upscale;
  const int64_t height = rows * tile_h + (rows + 1) * kGap;
  const int64_t width = cols * tile_w + (cols + 1) * kGap;
  std::vector<uint8_t> pixels(height * width * channels, 255);
  const float* data = images.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t top = (i / cols) * tile_h + (i / cols + 1) * kGap;
    const int64_t left = (i % cols) * tile_w + (i % cols + 1) * kGap;
    for (int64_t y = 0; y < tile_h; ++y)
      for (int64_t x = 0; x < tile_w; ++x)
        for (int64_t c = 0; c < channels; ++c) {
          const float v = data[((i * channels + c) * h + y / upscale) * w + x / upscale];
          const float level = std::clamp((v + 1.0f) * 127.5f, 0.0f, 255.0f);
          pixels[((top + y) * width + left + x) * channels + c] =
              static_cast<uint8_t>(std::lround(level));
        }
  }

  const std::string temporary = path + ".tmp";
  std::FILE* file = std::fopen(temporary.c_str(), "wb");
  if (file == nullptr) {
    return UsageError(absl::StrCat("cannot write ", temporary, ": ", std::strerror(errno)));
  }
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (png == nullptr || info == nullptr || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    std::fclose(file);
    std::remove(temporary.c_str());
    // libpng's writer stops here on a short write (a full disk, a file size limit).
    return UsageError(absl::StrCat("cannot write ", path, " (libpng: write failed)"));
  }
  png_init_io(png, file);
  png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8,
               channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int64_t y = 0; y < height; ++y) png_write_row(png, pixels.data() + y * width * channels);
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  const bool flushed = std::fflush(file) == 0;
  if (std::fclose(file) != 0 || !flushed || std::rename(temporary.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    std::remove(temporary.c_str());
    return UsageError(absl::StrCat("cannot write ", path, ": ", reason));
  }
  return absl::OkStatus();
}

}  // namespace tessera
