// The sub-layers of a DiT-MoE block behind three small interfaces, so that
// one block and one model serve a single process and every parallel layout.
//
// Token layout. Every rank holds, for each of the B samples of its
// micro-batch, a contiguous chunk of the sample's T tokens ("rows" are
// sample-major: [B, T_local, D]):
//   Ulysses (sp):           chunk sp_rank of T/sp tokens
//   + Megatron SP (tp):     chunk tp_rank of those, T/(sp*tp) tokens
// Without Megatron SP the tp ranks of a replica hold the same rows and each
// computes every per-token operation whole, except inside the MoE FFN, which
// splits the rows over tp itself (below).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/comm/communicator.h"
#include "parallel/model_parallel.h"
#include "runtime/nn/moe.h"
#include "runtime/nn/parameter.h"
#include "runtime/tensor/arena.h"

namespace tessera::dit_moe {

using parallel::ModelParallel;  // parallel/model_parallel.h

// adaLN: SiLU(c) [B, D] -> [B, blocks * D] shift/scale/gate vectors.
class ModulationSublayer {
 public:
  virtual ~ModulationSublayer() = default;
  virtual absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& cond_silu) = 0;
  // dmod: [B, blocks * D], summed over this rank's tokens -> its
  // contribution to dSiLU(c) [B, D].
  virtual absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dmod) = 0;
  virtual double ForwardFlops(int64_t batch) const = 0;
};

// Self-attention on this rank's rows [batch * seq, D] (seq = local tokens).
class AttentionSublayer {
 public:
  virtual ~AttentionSublayer() = default;
  virtual absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x, int64_t batch,
                                         int64_t seq) = 0;
  virtual absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy) = 0;
  virtual double ForwardFlops(int64_t batch, int64_t seq) const = 0;
};

// The MoE FFN on this rank's rows [batch * seq, D].
class FfnSublayer {
 public:
  virtual ~FfnSublayer() = default;
  virtual absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x, int64_t batch,
                                         int64_t seq) = 0;
  // loss_scale: the factor the balance loss enters the total loss with.
  virtual absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy, float loss_scale) = 0;
  virtual double balance_loss() const = 0;
  virtual const std::vector<double>& expert_load() const = 0;
  virtual int64_t dropped_assignments() const = 0;
  // MoeLayer::report() of a layer whose routing report stays in the
  // backend's memory; null when the three values above are host values
  // already (the expert-parallel layer reads its routing block anyway).
  virtual const Tensor* device_report() const { return nullptr; }
  virtual double ForwardFlops(int64_t rows) const = 0;
};

// One process: Linear, MultiHeadAttention, MoeLayer.
std::unique_ptr<ModulationSublayer> MakeModulation(ParameterStore& store, const std::string& name,
                                                   int64_t hidden, int64_t blocks);
std::unique_ptr<AttentionSublayer> MakeAttention(ParameterStore& store, const std::string& name,
                                                 int64_t hidden, int64_t heads);
std::unique_ptr<FfnSublayer> MakeMoe(ParameterStore& store, const std::string& name,
                                     int64_t hidden, const MoeLayer::Options& options);

// Model parallelism (sublayers_parallel.cc):
//  - modulation: column-parallel over tp, output gathered; under Megatron
//    SP dmod is first summed over tp (the tp ranks hold different tokens).
//  - attention: q/k/v column-parallel by heads over tp, Ulysses over sp on
//    the local heads (heads % (tp*sp) == 0), output projection row-parallel;
//    Megatron SP gathers the rows before q/k/v and reduce-scatters after the
//    projection.
//  - MoE: expert-parallel over ep with the balance loss over tp x sp. Under
//    tp without Megatron SP each tp rank routes only its chunk of the rows
//    and the outputs are all-gathered over tp: the router and the shared
//    expert then see a tp-shard of the tokens (ParallelSpec::TensorPartial).
//    This splits the shared expert's work over tp as a hidden-size split
//    would, without its two all-reduces per layer.
absl::StatusOr<std::unique_ptr<ModulationSublayer>> MakeParallelModulation(
    ParameterStore& store, const ModelParallel& mp, const std::string& name, int64_t hidden,
    int64_t blocks);
absl::StatusOr<std::unique_ptr<AttentionSublayer>> MakeParallelAttention(
    ParameterStore& store, const ModelParallel& mp, const std::string& name, int64_t hidden,
    int64_t heads);
absl::StatusOr<std::unique_ptr<FfnSublayer>> MakeParallelMoe(ParameterStore& store,
                                                             const ModelParallel& mp,
                                                             const std::string& name,
                                                             int64_t hidden,
                                                             const MoeLayer::Options& options);

// Row reordering between the rank-major result of a gather over `chunks`
// ranks, [chunks, B, S, F], and sample-major rows [B, chunks * S, F] (chunk
// c holds tokens [c*S, (c+1)*S) of each sample); `to_sample_major` picks the
// direction.
void ReorderChunks(Backend& backend, const float* src, float* dst, int64_t chunks,
                   int64_t batch, int64_t seq, int64_t features, bool to_sample_major);
// Chunk `chunk` of every sample of [B, chunks * S, F] -> [B, S, F].
void TakeChunk(Backend& backend, const float* src, float* dst, int64_t chunk, int64_t chunks,
               int64_t batch, int64_t seq, int64_t features);

}  // namespace tessera::dit_moe
