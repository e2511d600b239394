// One process: the sub-layers are the runtime's layers.
#include "models/dit_moe/sublayers.h"
#include "runtime/nn/attention.h"
#include "runtime/nn/linear.h"

namespace tessera::dit_moe {
namespace {

class LocalModulation : public ModulationSublayer {
 public:
  LocalModulation(ParameterStore& store, const std::string& name, int64_t hidden, int64_t blocks)
      : linear_(store, name, hidden, blocks * hidden, ZeroInit()) {}
  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& cond_silu) override {
    return linear_.Forward(arena, cond_silu);
  }
  absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dmod) override {
    return linear_.Backward(arena, dmod);
  }
  double ForwardFlops(int64_t batch) const override { return linear_.ForwardFlops(batch); }

 private:
  // adaLN-Zero: every block starts as the identity.
  static Linear::Options ZeroInit() {
    Linear::Options options;
    options.weight_init = ParamInit::Zeros();
    return options;
  }
  Linear linear_;
};

class LocalAttention : public AttentionSublayer {
 public:
  LocalAttention(ParameterStore& store, const std::string& name, int64_t hidden, int64_t heads)
      : attn_(store, name, hidden, heads) {}
  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x, int64_t batch,
                                 int64_t seq) override {
    return attn_.Forward(arena, x, batch, seq);
  }
  absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy) override {
    return attn_.Backward(arena, dy);
  }
  double ForwardFlops(int64_t batch, int64_t seq) const override {
    return attn_.ForwardFlops(batch, seq);
  }

 private:
  MultiHeadAttention attn_;
};

class LocalMoe : public FfnSublayer {
 public:
  LocalMoe(ParameterStore& store, const std::string& name, int64_t hidden,
           const MoeLayer::Options& options)
      : moe_(store, name, hidden, options) {}
  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x, int64_t, int64_t) override {
    return moe_.Forward(arena, x);
  }
  absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy, float loss_scale) override {
    return moe_.Backward(arena, dy, loss_scale);
  }
  double balance_loss() const override { return moe_.balance_loss(); }
  const std::vector<double>& expert_load() const override { return moe_.expert_load(); }
  int64_t dropped_assignments() const override { return moe_.dropped_assignments(); }
  const Tensor* device_report() const override { return &moe_.report(); }
  double ForwardFlops(int64_t rows) const override { return moe_.ForwardFlops(rows); }

 private:
  MoeLayer moe_;
};

}  // namespace

std::unique_ptr<ModulationSublayer> MakeModulation(ParameterStore& store, const std::string& name,
                                                   int64_t hidden, int64_t blocks) {
  return std::make_unique<LocalModulation>(store, name, hidden, blocks);
}

std::unique_ptr<AttentionSublayer> MakeAttention(ParameterStore& store, const std::string& name,
                                                 int64_t hidden, int64_t heads) {
  return std::make_unique<LocalAttention>(store, name, hidden, heads);
}

std::unique_ptr<FfnSublayer> MakeMoe(ParameterStore& store, const std::string& name,
                                     int64_t hidden, const MoeLayer::Options& options) {
  return std::make_unique<LocalMoe>(store, name, hidden, options);
}

void ReorderChunks(Backend& backend, const float* src, float* dst, int64_t chunks,
                   int64_t batch, int64_t seq, int64_t features, bool to_sample_major) {
  const int64_t block = seq * features;
  const size_t block_bytes = static_cast<size_t>(block) * sizeof(float);
  for (int64_t c = 0; c < chunks; ++c) {
    // Chunk c of every sample: rows `block` apart chunk-major, `chunks * block`
    // apart sample-major.
    const int64_t chunk_major = c * batch * block, sample_major = c * block;
    if (to_sample_major) {
      backend.Copy2D(dst + sample_major, chunks * block_bytes, src + chunk_major, block_bytes,
                     block_bytes, batch);
    } else {
      backend.Copy2D(dst + chunk_major, block_bytes, src + sample_major, chunks * block_bytes,
                     block_bytes, batch);
    }
  }
}

void TakeChunk(Backend& backend, const float* src, float* dst, int64_t chunk, int64_t chunks,
               int64_t batch, int64_t seq, int64_t features) {
  const size_t block_bytes = static_cast<size_t>(seq * features) * sizeof(float);
  backend.Copy2D(dst, block_bytes, src + chunk * seq * features, chunks * block_bytes,
                 block_bytes, batch);
}

}  // namespace tessera::dit_moe
