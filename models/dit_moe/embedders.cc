#include "models/dit_moe/embedders.h"

#include <cmath>
#include <cstring>

#include "runtime/kernels/cpu/activation.h"
#include "runtime/kernels/cpu/embedding.h"

namespace tessera::dit_moe {

namespace {
// Calls visit(image_index, row_index) for every pixel: image_index into
// [B, C, H, W], row_index into patch rows [B*T, C*p*p] flattened (c, py, px)
// or, with channel_last, (py, px, c).
template <typename Visit>
void ForEachPatchPixel(int64_t batch, int64_t channels, int64_t size, int64_t patch,
                       bool channel_last, Visit visit) {
  const int64_t grid = size / patch, cols = channels * patch * patch;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t gy = 0; gy < grid; ++gy)
      for (int64_t gx = 0; gx < grid; ++gx) {
        const int64_t row = ((b * grid + gy) * grid + gx) * cols;
        for (int64_t c = 0; c < channels; ++c)
          for (int64_t py = 0; py < patch; ++py)
            for (int64_t px = 0; px < patch; ++px) {
              const int64_t column = channel_last ? (py * patch + px) * channels + c
                                                  : (c * patch + py) * patch + px;
              visit(((b * channels + c) * size + gy * patch + py) * size + gx * patch + px,
                    row + column);
            }
      }
}
}  // namespace

void Patchify(const float* images, float* patches, int64_t batch, int64_t channels, int64_t size,
              int64_t patch) {
  ForEachPatchPixel(batch, channels, size, patch, false,
                    [&](int64_t i, int64_t r) { patches[r] = images[i]; });
}

void PatchifyBackward(const float* dpatches, float* dimages, int64_t batch, int64_t channels,
                      int64_t size, int64_t patch) {
  // Patchify is a permutation, so its adjoint is the inverse permutation.
  ForEachPatchPixel(batch, channels, size, patch, false,
                    [&](int64_t i, int64_t r) { dimages[i] = dpatches[r]; });
}

void Unpatchify(const float* rows, float* images, int64_t batch, int64_t channels, int64_t size,
                int64_t patch) {
  ForEachPatchPixel(batch, channels, size, patch, true,
                    [&](int64_t i, int64_t r) { images[i] = rows[r]; });
}

void UnpatchifyBackward(const float* dimages, float* drows, int64_t batch, int64_t channels,
                        int64_t size, int64_t patch) {
  ForEachPatchPixel(batch, channels, size, patch, true,
                    [&](int64_t i, int64_t r) { drows[r] = dimages[i]; });
}

namespace {
// [sin(pos * w_k) for k < dim/2] ++ [cos(pos * w_k)], w_k = 10000^(-k/(dim/2)).
void SinCos1D(int64_t dim, double pos, float* out) {
  const int64_t half = dim / 2;
  for (int64_t k = 0; k < half; ++k) {
    const double omega = std::pow(10000.0, -static_cast<double>(k) / static_cast<double>(half));
    out[k] = static_cast<float>(std::sin(pos * omega));
    out[half + k] = static_cast<float>(std::cos(pos * omega));
  }
}
}  // namespace

std::vector<float> SinCosPositionEmbedding2D(int64_t dim, int64_t grid) {
  std::vector<float> out(grid * grid * dim);
  for (int64_t row = 0; row < grid; ++row)
    for (int64_t col = 0; col < grid; ++col) {
      float* e = out.data() + (row * grid + col) * dim;
      SinCos1D(dim / 2, static_cast<double>(col), e);
      SinCos1D(dim / 2, static_cast<double>(row), e + dim / 2);
    }
  return out;
}

void TimestepFrequencies(const float* t, float* out, int64_t batch, int64_t dim) {
  const int64_t half = dim / 2;
  for (int64_t b = 0; b < batch; ++b) {
    float* row = out + b * dim;
    for (int64_t k = 0; k < half; ++k) {
      const double freq = std::exp(-std::log(10000.0) * static_cast<double>(k) / half);
      const double arg = static_cast<double>(t[b]) * freq;
      row[k] = static_cast<float>(std::cos(arg));
      row[half + k] = static_cast<float>(std::sin(arg));
    }
    if (dim % 2) row[dim - 1] = 0;
  }
}

PatchEmbed::PatchEmbed(ParameterStore& store, const std::string& name, int64_t channels,
                       int64_t size, int64_t patch, int64_t hidden, ParallelSpec spec)
    : channels_(channels),
      size_(size),
      patch_(patch),
      hidden_(hidden),
      proj_(store, name + ".proj", channels * patch * patch, hidden, ProjOptions(spec)),
      position_(SinCosPositionEmbedding2D(hidden, size / patch)) {}

Linear::Options PatchEmbed::ProjOptions(ParallelSpec spec) {
  Linear::Options options;
  options.spec = spec;
  return options;
}

Tensor PatchEmbed::Forward(Arena& arena, const Tensor& images, int64_t first_token,
                           int64_t count) {
  const int64_t batch = images.dim(0), tokens = num_tokens(), width = channels_ * patch_ * patch_;
  if (count < 0) count = tokens - first_token;
  TESSERA_CHECK(first_token >= 0 && first_token + count <= tokens);
  Tensor patches = arena.AllocateUninitialized(
      DType::kF32, Shape{batch * tokens, width});  // [B*T, C*p*p]
  Patchify(images.data<float>(), patches.data<float>(), batch, channels_, size_, patch_);
  if (count < tokens) {
    // This rank's tokens of each sample: [B*count, C*p*p].
    Tensor mine = arena.AllocateUninitialized(DType::kF32, Shape{batch * count, width});
    for (int64_t b = 0; b < batch; ++b) {
      std::memcpy(mine.data<float>() + b * count * width,
                  patches.data<float>() + (b * tokens + first_token) * width,
                  static_cast<size_t>(count * width) * sizeof(float));
    }
    patches = mine;
  }
  Tensor out = proj_.Forward(arena, patches);  // [B*count, hidden]
  float* o = out.data<float>();
  for (int64_t b = 0; b < batch; ++b) {
    cpu::AddInPlace(o + b * count * hidden_, position_.data() + first_token * hidden_,
                    count * hidden_);
  }
  return out;
}

void PatchEmbed::Backward(Arena& arena, const Tensor& dtokens) {
  proj_.Backward(arena, dtokens, /*need_dx=*/false);
}

TimestepEmbedder::TimestepEmbedder(ParameterStore& store, const std::string& name,
                                   int64_t hidden, int64_t frequency_dim)
    : frequency_dim_(frequency_dim),
      fc1_(store, name + ".mlp.0", frequency_dim, hidden,
           Linear::Options{.weight_init = ParamInit::Normal(0.02f)}),
      fc2_(store, name + ".mlp.2", hidden, hidden,
           Linear::Options{.weight_init = ParamInit::Normal(0.02f)}) {}

Tensor TimestepEmbedder::Forward(Arena& arena, const float* t, int64_t batch) {
  Tensor freq = arena.AllocateUninitialized(DType::kF32, Shape{batch, frequency_dim_});
  TimestepFrequencies(t, freq.data<float>(), batch, frequency_dim_);
  saved_hidden_ = fc1_.Forward(arena, freq);  // [B, hidden]
  Tensor act = arena.AllocateUninitialized(DType::kF32, saved_hidden_.shape());
  cpu::SiluForward(saved_hidden_.data<float>(), act.data<float>(), act.numel());
  return fc2_.Forward(arena, act);
}

void TimestepEmbedder::Backward(Arena& arena, const Tensor& demb) {
  Tensor dact = fc2_.Backward(arena, demb);
  Tensor dhidden = arena.AllocateUninitialized(DType::kF32, dact.shape());
  cpu::SiluBackward(dact.data<float>(), saved_hidden_.data<float>(), dhidden.data<float>(),
                    dact.numel());
  fc1_.Backward(arena, dhidden, /*need_dx=*/false);
  saved_hidden_ = Tensor();
}

LabelEmbedder::LabelEmbedder(ParameterStore& store, const std::string& name,
                             int64_t num_classes, int64_t hidden)
    : store_(store), num_classes_(num_classes), hidden_(hidden) {
  table_ = store.Register(name + ".embedding_table", Shape{num_classes + 1, hidden},
                          ParamInit::Normal(0.02f), /*weight_decay=*/false);
}

Tensor LabelEmbedder::Forward(Arena& arena, const int32_t* labels, int64_t batch) {
  for (int64_t b = 0; b < batch; ++b) TESSERA_CHECK(labels[b] >= 0 && labels[b] <= num_classes_);
  saved_labels_.assign(labels, labels + batch);
  Tensor out = arena.AllocateUninitialized(DType::kF32, Shape{batch, hidden_});
  cpu::EmbeddingForward(labels, store_.param(table_).data<float>(), out.data<float>(), batch,
                        hidden_);
  return out;
}

void LabelEmbedder::Backward(const Tensor& demb) {
  cpu::EmbeddingBackward(saved_labels_.data(), demb.data<float>(),
                         store_.grad(table_).data<float>(),
                         static_cast<int64_t>(saved_labels_.size()), hidden_);
}

}  // namespace tessera::dit_moe
