#include "models/mamba_hybrid/rotary.h"

#include <cmath>
#include <vector>

namespace tessera::mamba_hybrid {

RotaryEmbedding::RotaryEmbedding(double base, int64_t head_dim)
    : base_(base), head_dim_(head_dim) {}

void RotaryEmbedding::Reserve(Backend& backend, int64_t positions) {
  if (positions <= positions_) return;
  const int64_t half = head_dim_ / 2;
  std::vector<float> cos_host(positions * head_dim_), sin_host(positions * head_dim_),
      inverse_host(positions * head_dim_);
  for (int64_t p = 0; p < positions; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const double theta = std::pow(base_, -2.0 * static_cast<double>(i) / head_dim_);
      const double angle = static_cast<double>(p) * theta;
      const float c = static_cast<float>(std::cos(angle)), s = static_cast<float>(std::sin(angle));
      float* cos_row = &cos_host[p * head_dim_];
      cos_row[i] = cos_row[i + half] = c;
      sin_host[p * head_dim_ + i] = -s;  // y_i takes -x_{i+half} sin
      sin_host[p * head_dim_ + i + half] = s;
      inverse_host[p * head_dim_ + i] = s;
      inverse_host[p * head_dim_ + i + half] = -s;
    }
  }
  const auto upload = [&backend, positions, this](const std::vector<float>& host) {
    Tensor t = Tensor::Empty(DType::kF32, Shape{positions, head_dim_}, backend);
    backend.CopyToDevice(t.address(), host.data(), t.bytes());
    return t;
  };
  cos_ = upload(cos_host);
  sin_ = upload(sin_host);
  inverse_sin_ = upload(inverse_host);
  positions_ = positions;
}

void RotaryEmbedding::Apply(Arena& arena, float* x, int64_t row_stride, int64_t batch,
                            int64_t seq, int64_t heads, int64_t first_position, bool inverse) {
  Backend& backend = arena.backend();
  Reserve(backend, first_position + seq);
  const int64_t rows = batch * seq, width = heads * head_dim_, half = head_dim_ / 2;
  const size_t row_bytes = width * sizeof(float), half_bytes = half * sizeof(float);
  const size_t head_bytes = head_dim_ * sizeof(float);
  // x's heads, contiguous [rows, heads, Dh], and the same with the halves of
  // every head swapped.
  Tensor heads_in = arena.AllocateUninitialized(DType::kF32, Shape{rows, width});
  backend.Copy2D(heads_in.ptr<float>(), row_bytes, x, row_stride * sizeof(float), row_bytes, rows);
  Tensor swapped = arena.AllocateUninitialized(DType::kF32, Shape{rows, width});
  backend.Copy2D(swapped.ptr<float>(), head_bytes, heads_in.ptr<float>() + half, head_bytes,
                 half_bytes, rows * heads);
  backend.Copy2D(swapped.ptr<float>() + half, head_bytes, heads_in.ptr<float>(), head_bytes,
                 half_bytes, rows * heads);
  // out = cos * x + signed sin * swapped(x), each table row broadcast over
  // the heads of its position: per sample, positions are the "batch" and
  // heads the "sequence" of the per-row multiply-add.
  Tensor out = arena.Allocate(DType::kF32, Shape{rows, width});
  const float* cos = cos_.ptr<float>() + first_position * head_dim_;
  const float* sin = (inverse ? inverse_sin_ : sin_).ptr<float>() + first_position * head_dim_;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t offset = b * seq * width;
    backend.GatedResidualForward(out.ptr<float>() + offset, heads_in.ptr<float>() + offset, cos,
                                 seq, heads, head_dim_, head_dim_);
    backend.GatedResidualForward(out.ptr<float>() + offset, swapped.ptr<float>() + offset, sin,
                                 seq, heads, head_dim_, head_dim_);
  }
  backend.Copy2D(x, row_stride * sizeof(float), out.ptr<float>(), row_bytes, row_bytes, rows);
}

}  // namespace tessera::mamba_hybrid
