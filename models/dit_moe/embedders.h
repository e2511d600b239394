// DiT's input embedders: patches, timesteps and class labels.
#pragma once

#include <string>
#include <vector>

#include "runtime/nn/linear.h"

namespace tessera::dit_moe {

// The permutation between images [B, C, H, W] and patch rows [B*T, cols]
// (T = (H/p)*(W/p) patches in row-major grid order, cols = C*p*p), held as
// an index map in a backend's memory so it runs on the model's device. Each
// patch is flattened (c, py, px) -- a conv weight's order, the patch
// embedding's input -- or, with channel_last, (py, px, c) -- DiT's final
// layer output.
class PatchLayout {
 public:
  PatchLayout(Backend& backend, int64_t channels, int64_t size, int64_t patch,
              bool channel_last);
  // images [B, C, H, W] -> rows [B*T, cols]
  void ToRows(const float* images, float* rows, int64_t batch) const;
  // rows [B*T, cols] -> images [B, C, H, W]: the inverse of ToRows, and
  // (a permutation) also its adjoint.
  void ToImages(const float* rows, float* images, int64_t batch) const;

 private:
  Backend* backend_;
  int64_t pixels_;           // C*H*W, the elements of one image
  Tensor pixel_of_element_;  // i32 [C*H*W]: row element r of an image is its pixel [r]
};

// Fixed 2-D sine-cosine position embedding [grid*grid, dim] (MAE/DiT): the
// first half encodes the column, the second the row; dim % 4 == 0.
std::vector<float> SinCosPositionEmbedding2D(int64_t dim, int64_t grid);

// Sinusoidal timestep features [B, dim] = [cos(t f_k), sin(t f_k)],
// f_k = 10000^(-k/(dim/2)).
void TimestepFrequencies(const float* t, float* out, int64_t batch, int64_t dim);

// Patch embedding: a linear map of each flattened patch plus the fixed
// position embedding.
class PatchEmbed {
 public:
  // `spec`: of the projection (TensorPartial when it runs on a tp shard of
  // the tokens).
  PatchEmbed(ParameterStore& store, const std::string& name, int64_t channels, int64_t size,
             int64_t patch, int64_t hidden, ParallelSpec spec = ParallelSpec::Replicated());
  // images [B, C, H, W] -> tokens [first_token, first_token + count) of each
  // image, [B*count, hidden] (count < 0: to the last token).
  Tensor Forward(Arena& arena, const Tensor& images, int64_t first_token = 0, int64_t count = -1);
  // Accumulates the projection's gradients (inputs are data: no dx).
  void Backward(Arena& arena, const Tensor& dtokens);
  int64_t num_tokens() const { return (size_ / patch_) * (size_ / patch_); }
  double ForwardFlops(int64_t batch) const { return proj_.ForwardFlops(batch * num_tokens()); }

 private:
  static Linear::Options ProjOptions(ParallelSpec spec);
  int64_t channels_, size_, patch_, hidden_;
  Linear proj_;
  PatchLayout layout_;           // images -> (c, py, px) rows
  Tensor position_;             // [T, hidden], on the model's device
};

// t -> MLP(sinusoidal(t)): Linear(freq, D), SiLU, Linear(D, D).
class TimestepEmbedder {
 public:
  TimestepEmbedder(ParameterStore& store, const std::string& name, int64_t hidden,
                   int64_t frequency_dim);
  // t: [B] -> [B, hidden]
  Tensor Forward(Arena& arena, const float* t, int64_t batch);
  void Backward(Arena& arena, const Tensor& demb);
  double ForwardFlops(int64_t batch) const {
    return fc1_.ForwardFlops(batch) + fc2_.ForwardFlops(batch);
  }

 private:
  int64_t frequency_dim_;
  Linear fc1_, fc2_;
  Tensor saved_hidden_;  // pre-activation of fc1
};

// Class label -> row of a table with one extra "null" row (index
// num_classes) used when the label is dropped for classifier-free guidance.
class LabelEmbedder {
 public:
  LabelEmbedder(ParameterStore& store, const std::string& name, int64_t num_classes,
                int64_t hidden);
  // labels: [B] in [0, num_classes] -> [B, hidden]
  Tensor Forward(Arena& arena, const int32_t* labels, int64_t batch);
  void Backward(Arena& arena, const Tensor& demb);
  int64_t null_label() const { return num_classes_; }

 private:
  ParameterStore& store_;
  int64_t num_classes_, hidden_;
  ParameterStore::Id table_;
  Tensor saved_labels_;  // i32 [B], in the arena's memory
};

}  // namespace tessera::dit_moe
