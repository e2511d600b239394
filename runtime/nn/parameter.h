// Parameters: registered once with their global name, shape, init and
// parallel spec, then laid out in flat buffers (values, gradients).
//
// The ParamInfo record is the single source of truth about a parameter's
// sharding: gradient reduction, ZeRO partitioning, checkpoint offsets and the
// checkpoint CLI all read it; nothing re-derives it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/tensor/tensor.h"

namespace tessera {

struct ParamInit {
  enum class Kind { kZeros, kOnes, kNormal, kUniform, kLogOfUniform, kInverseSoftplusOfLogUniform };
  Kind kind = Kind::kZeros;
  float scale = 0;  // std for kNormal, bound for kUniform (values in [-scale, scale))
  float low = 0, high = 0;  // the range of the two Mamba-2 kinds below

  static ParamInit Zeros() { return {Kind::kZeros, 0}; }
  static ParamInit Ones() { return {Kind::kOnes, 0}; }
  static ParamInit Normal(float std) { return {Kind::kNormal, std}; }
  static ParamInit Uniform(float bound) { return {Kind::kUniform, bound}; }
  // log(u), u uniform in [low, high): Mamba-2's A_log (A = -exp(A_log) in [-high, -low]).
  static ParamInit LogOfUniform(float low, float high) {
    return {Kind::kLogOfUniform, 0, low, high};
  }
  // Mamba-2's dt_bias: dt = exp(uniform in [log low, log high)), at least
  // `floor`, stored as softplus^-1(dt) = dt + log(-expm1(-dt)), so that
  // softplus(dt_bias) = dt at initialization.
  static ParamInit InverseSoftplusOfLogUniform(float low, float high, float floor) {
    return {Kind::kInverseSoftplusOfLogUniform, floor, low, high};
  }
  // Xavier/Glorot uniform for a [fan_out, fan_in] weight.
  static ParamInit XavierUniform(int64_t fan_in, int64_t fan_out);
};

// How a parameter is spread over the process mesh (DESIGN.md §2-3).
struct ParallelSpec {
  enum class Kind {
    kReplicated,  // every rank of the tp group holds all of it
    kSplit,       // split along `split_dim` over the tp (or etp) group
    kExpert,      // belongs to expert `expert_index`, owned by one ep rank
  };
  // Which group sums its gradient.
  enum class ReduceGroup {
    kDataSequence,  // dp x sp: dense parameters
    kExpertData,    // edp: expert parameters
    // tp x dp x sp (the world): dense parameters replicated over tp whose
    // layer runs on a tp-shard of the tokens (the MoE router and shared
    // expert under tensor parallelism), so each tp rank's gradient is a
    // partial sum (Megatron all-reduces these "sequence-parallel" gradients
    // over tp).
    kTensorDataSequence,
  };
  Kind kind = Kind::kReplicated;
  int split_dim = -1;
  int expert_index = -1;
  ReduceGroup reduce_group = ReduceGroup::kDataSequence;

  static ParallelSpec Replicated() { return {}; }
  static ParallelSpec Expert(int expert) {
    return {Kind::kExpert, -1, expert, ReduceGroup::kExpertData};
  }
  static ParallelSpec TensorPartial() {
    return {Kind::kReplicated, -1, -1, ReduceGroup::kTensorDataSequence};
  }
};

struct ParamInfo {
  std::string name;    // global, e.g. "blocks.3.moe.experts.5.w_up"
  Shape global_shape;  // of the whole parameter over all ranks
  Shape local_shape;   // of this rank's piece
  std::vector<int64_t> local_offset;  // hyperslab start of the piece in the global tensor
  ParamInit init;
  ParallelSpec spec;
  bool weight_decay = true;  // false for norms, biases, embeddings
  int64_t offset = 0;        // elements into the flat buffers
};

// A contiguous range of the flat buffers whose gradients are reduced together
// (data parallelism): parameters [first_param, end_param) of one reduce
// group, padded so its length divides into `shard_multiple` equal shards.
struct GradBucket {
  int64_t begin = 0, end = 0;  // elements of the flat buffers
  int first_param = 0, end_param = 0;
  ParallelSpec::ReduceGroup group = ParallelSpec::ReduceGroup::kDataSequence;
  int64_t size() const { return end - begin; }
};

// How Finalize lays out the flat buffers.
struct ParameterLayout {
  // Target bucket size in elements; 0 puts each run of same-group parameters
  // in one bucket. Buckets are filled from the last parameter backwards (the
  // order in which backward produces gradients) and never mix reduce groups.
  int64_t bucket_elements = 0;
  // Every bucket starts at, and is padded to, a multiple of
  // 16 * shard_multiple elements (ZeRO shards stay 64-byte aligned).
  int64_t shard_multiple = 1;
  // Where a model builds its store (parameters, gradients, optimizer state
  // and the layers' constant buffers): the run's device. Null: host memory.
  Backend* backend = nullptr;
  // Sparse parameters (HSTU's item table) stay in host memory even when
  // `backend` is a device: the run's device memory plan has no room for them.
  bool sparse_on_host = false;
};

// Owns the flat parameter and gradient buffers.
class ParameterStore {
 public:
  using Id = int;

  explicit ParameterStore(Backend& backend = HostBackend()) : backend_(&backend) {}

  // Registration, before Finalize(). Names must be unique.
  Id Register(std::string name, Shape global_shape, ParamInit init, bool weight_decay,
              ParallelSpec spec = ParallelSpec::Replicated());

  // Registers this rank's piece [local_offset, local_offset + local_shape) of
  // a parameter whose whole shape is global_shape (tensor parallelism).
  Id RegisterPiece(std::string name, Shape global_shape, Shape local_shape,
                   std::vector<int64_t> local_offset, ParamInit init, bool weight_decay,
                   ParallelSpec spec);

  // Lays out and allocates the buffers, and fills values from `seed`. Each
  // element's initial value depends only on (seed, name, global index), so
  // every layout starts from the same weights.
  void Finalize(uint64_t seed, const ParameterLayout& layout = {});

  // Where the parameters, gradients (and, following them, optimizer state,
  // EMA and the layers' constant buffers) live: the run's device.
  Backend& backend() const { return *backend_; }
  bool finalized() const { return finalized_; }

  Tensor param(Id id) const;
  Tensor grad(Id id) const;
  const ParamInfo& info(Id id) const { return infos_[id]; }
  const std::vector<ParamInfo>& infos() const { return infos_; }
  int size() const { return static_cast<int>(infos_.size()); }
  absl::StatusOr<Id> Find(absl::string_view name) const;

  // In ascending order of `begin`; together they cover the flat buffers.
  const std::vector<GradBucket>& buckets() const { return buckets_; }

  Tensor values() const { return values_; }     // [numel] flat
  Tensor grads() const { return grads_; }       // [numel] flat
  int64_t numel() const { return numel_; }
  void ZeroGrads();

  // bf16 copies of the values for the GEMMs of a bf16 run
  // (train.precision=bf16), made once per optimizer step instead of once per
  // GEMM call: a ScopedBf16Values around a step's forward and backward
  // passes rounds every value once (Backend::RoundToBf16) and the layers
  // hand param_bf16 to their GEMMs with the fp32 weight (GemmOperand). The
  // copies are valid only inside the scope, where nothing writes the values;
  // outside it (optimizer, checkpoints, sampling) and in an fp32 run
  // param_bf16 is null and the GEMMs round the fp32 weights themselves.
  // Scopes nest; the outermost one makes and drops the copies.
  class ScopedBf16Values {
   public:
    explicit ScopedBf16Values(ParameterStore& store);
    ~ScopedBf16Values();
    ScopedBf16Values(const ScopedBf16Values&) = delete;
    ScopedBf16Values& operator=(const ScopedBf16Values&) = delete;

   private:
    ParameterStore& store_;
  };
  // Parameter `id`'s bf16 copy (bf16 bit patterns, its layout), or null.
  const uint16_t* param_bf16(Id id) const;

 private:
  std::vector<ParamInfo> infos_;
  std::vector<GradBucket> buckets_;
  Tensor values_;
  Tensor grads_;
  Tensor values_bf16_;  // [numel] bf16, allocated by the first bf16 scope
  int bf16_scopes_ = 0;
  bool bf16_valid_ = false;
  int64_t numel_ = 0;
  bool finalized_ = false;
  Backend* backend_;
};

}  // namespace tessera
