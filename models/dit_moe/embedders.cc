#include "models/dit_moe/embedders.h"

#include <algorithm>
#include <cmath>

namespace tessera::dit_moe {

namespace {
// Calls visit(image_index, row_index) for every pixel of one image:
// image_index into [C, H, W], row_index into its patch rows [T, C*p*p]
// flattened (c, py, px) or, with channel_last, (py, px, c).
template <typename Visit>
void ForEachPatchPixel(int64_t channels, int64_t size, int64_t patch, bool channel_last,
                       Visit visit) {
  const int64_t grid = size / patch, cols = channels * patch * patch;
  for (int64_t gy = 0; gy < grid; ++gy)
    for (int64_t gx = 0; gx < grid; ++gx) {
      const int64_t row = (gy * grid + gx) * cols;
      for (int64_t c = 0; c < channels; ++c)
        for (int64_t py = 0; py < patch; ++py)
          for (int64_t px = 0; px < patch; ++px) {
            const int64_t column = channel_last ? (py * patch + px) * channels + c
                                                : (c * patch + py) * patch + px;
            visit((c * size + gy * patch + py) * size + gx * patch + px, row + column);
          }
    }
}

// `host` copied into a new tensor of `backend`'s memory.
Tensor OnBackend(Backend& backend, const Tensor& host) {
  Tensor out = Tensor::Empty(host.dtype(), host.shape(), backend);
  backend.CopyToDevice(out.address(), host.raw(), host.bytes());
  return out;
}
}  // namespace

PatchLayout::PatchLayout(Backend& backend, int64_t channels, int64_t size, int64_t patch,
                         bool channel_last)
    : backend_(&backend), pixels_(channels * size * size) {
  Tensor map = Tensor::Empty(DType::kI32, Shape{pixels_});
  int32_t* pixel_of_element = map.data<int32_t>();
  ForEachPatchPixel(channels, size, patch, channel_last, [&](int64_t pixel, int64_t element) {
    pixel_of_element[element] = static_cast<int32_t>(pixel);
  });
  pixel_of_element_ = OnBackend(backend, map);
}

void PatchLayout::ToRows(const float* images, float* rows, int64_t batch) const {
  for (int64_t b = 0; b < batch; ++b) {
    backend_->GatherElements(images + b * pixels_, pixel_of_element_.ptr<int32_t>(),
                             rows + b * pixels_, pixels_);
  }
}

void PatchLayout::ToImages(const float* rows, float* images, int64_t batch) const {
  for (int64_t b = 0; b < batch; ++b) {
    backend_->ScatterElements(rows + b * pixels_, pixel_of_element_.ptr<int32_t>(),
                              images + b * pixels_, pixels_);
  }
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
      layout_(store.backend(), channels, size, patch, /*channel_last=*/false) {
  const std::vector<float> position = SinCosPositionEmbedding2D(hidden, size / patch);
  Tensor host = Tensor::Empty(DType::kF32, Shape{num_tokens(), hidden});
  std::copy(position.begin(), position.end(), host.data<float>());
  position_ = OnBackend(store.backend(), host);
}

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
  Backend& backend = arena.backend();
  Tensor patches = arena.AllocateUninitialized(
      DType::kF32, Shape{batch * tokens, width});  // [B*T, C*p*p]
  layout_.ToRows(images.ptr<float>(), patches.ptr<float>(), batch);
  if (count < tokens) {
    // This rank's tokens of each sample: [B*count, C*p*p].
    Tensor mine = arena.AllocateUninitialized(DType::kF32, Shape{batch * count, width});
    const size_t bytes = static_cast<size_t>(count * width) * sizeof(float);
    backend.Copy2D(mine.ptr<float>(), bytes, patches.ptr<float>() + first_token * width,
                   tokens * width * sizeof(float), bytes, batch);
    patches = mine;
  }
  Tensor out = proj_.Forward(arena, patches);  // [B*count, hidden]
  float* o = out.ptr<float>();
  for (int64_t b = 0; b < batch; ++b) {
    backend.AddInPlace(o + b * count * hidden_, position_.ptr<float>() + first_token * hidden_,
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
  Backend& backend = arena.backend();
  // The features of host timesteps are made on the host, then moved.
  Tensor host_freq = Tensor::Empty(DType::kF32, Shape{batch, frequency_dim_});
  TimestepFrequencies(t, host_freq.data<float>(), batch, frequency_dim_);
  Tensor freq = arena.AllocateUninitialized(DType::kF32, host_freq.shape());
  backend.CopyToDevice(freq.address(), host_freq.raw(), host_freq.bytes());
  saved_hidden_ = fc1_.Forward(arena, freq);  // [B, hidden]
  Tensor act = arena.AllocateUninitialized(DType::kF32, saved_hidden_.shape());
  backend.SiluForward(saved_hidden_.ptr<float>(), act.ptr<float>(), act.numel());
  return fc2_.Forward(arena, act);
}

void TimestepEmbedder::Backward(Arena& arena, const Tensor& demb) {
  Backend& backend = arena.backend();
  Tensor dact = fc2_.Backward(arena, demb);
  Tensor dhidden = arena.AllocateUninitialized(DType::kF32, dact.shape());
  backend.SiluBackward(dact.ptr<float>(), saved_hidden_.ptr<float>(), dhidden.ptr<float>(),
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
  Backend& backend = arena.backend();
  saved_labels_ = arena.AllocateUninitialized(DType::kI32, Shape{batch});  // host labels, moved
  backend.CopyToDevice(saved_labels_.address(), labels, saved_labels_.bytes());
  Tensor out = arena.AllocateUninitialized(DType::kF32, Shape{batch, hidden_});
  backend.EmbeddingForward(saved_labels_.ptr<int32_t>(), store_.param(table_).ptr<float>(),
                           out.ptr<float>(), batch, hidden_);
  return out;
}

void LabelEmbedder::Backward(Arena& arena, const Tensor& demb) {
  arena.backend().EmbeddingBackward(saved_labels_.ptr<int32_t>(), demb.ptr<float>(),
                                    store_.grad(table_).ptr<float>(), saved_labels_.numel(),
                                    hidden_);
  saved_labels_ = Tensor();
}

}  // namespace tessera::dit_moe
