#include "runtime/nn/parameter.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "runtime/base/random.h"
#include "runtime/base/status.h"

namespace tessera {

ParamInit ParamInit::XavierUniform(int64_t fan_in, int64_t fan_out) {
  return Uniform(static_cast<float>(std::sqrt(6.0 / static_cast<double>(fan_in + fan_out))));
}

ParameterStore::Id ParameterStore::Register(std::string name, Shape global_shape,
                                            ParamInit init, bool weight_decay,
                                            ParallelSpec spec) {
  TESSERA_CHECK(!finalized_);
  for (const ParamInfo& info : infos_) TESSERA_CHECK(info.name != name);
  ParamInfo info;
  info.name = std::move(name);
  info.global_shape = global_shape;
  info.local_shape = global_shape;  // the whole tensor until a parallel layout shards it
  info.local_offset.assign(global_shape.rank(), 0);
  info.init = init;
  info.spec = spec;
  info.weight_decay = weight_decay;
  infos_.push_back(std::move(info));
  return static_cast<Id>(infos_.size() - 1);
}

ParameterStore::Id ParameterStore::RegisterPiece(std::string name, Shape global_shape,
                                                 Shape local_shape,
                                                 std::vector<int64_t> local_offset,
                                                 ParamInit init, bool weight_decay,
                                                 ParallelSpec spec) {
  TESSERA_CHECK(local_shape.rank() == global_shape.rank() &&
                static_cast<int>(local_offset.size()) == global_shape.rank());
  for (int d = 0; d < global_shape.rank(); ++d) {
    TESSERA_CHECK(local_offset[d] >= 0 && local_offset[d] + local_shape[d] <= global_shape[d]);
  }
  const Id id = Register(std::move(name), global_shape, init, weight_decay, spec);
  infos_[id].local_shape = local_shape;
  infos_[id].local_offset = std::move(local_offset);
  return id;
}

namespace {
// Row-major global index of local element `i` of a piece.
int64_t GlobalIndex(const ParamInfo& info, int64_t i) {
  int64_t global = 0;
  int64_t rest = i;
  int64_t stride_local = info.local_shape.numel();
  int64_t stride_global = info.global_shape.numel();
  for (int d = 0; d < info.global_shape.rank(); ++d) {
    stride_local /= info.local_shape[d];
    stride_global /= info.global_shape[d];
    const int64_t coord = rest / stride_local;
    rest %= stride_local;
    global += (coord + info.local_offset[d]) * stride_global;
  }
  return global;
}

// The initial value at `counter` (a global element index) of stream `key`.
float InitialValue(const ParamInit& init, uint64_t key, uint64_t counter) {
  const double u = CounterUniform(key, counter);
  switch (init.kind) {
    case ParamInit::Kind::kZeros: return 0;
    case ParamInit::Kind::kOnes: return 1;
    case ParamInit::Kind::kNormal: return init.scale * CounterNormal(key, counter);
    case ParamInit::Kind::kUniform: return init.scale * static_cast<float>(2 * u - 1);
    case ParamInit::Kind::kLogOfUniform:
      return static_cast<float>(std::log(init.low + (init.high - init.low) * u));
    case ParamInit::Kind::kInverseSoftplusOfLogUniform: {
      const double log_low = std::log(init.low), log_high = std::log(init.high);
      const double dt = std::max<double>(init.scale, std::exp(log_low + (log_high - log_low) * u));
      return static_cast<float>(dt + std::log(-std::expm1(-dt)));
    }
  }
  return 0;
}

}  // namespace

void ParameterStore::Finalize(uint64_t seed, const ParameterLayout& layout) {
  TESSERA_CHECK(!finalized_);
  Backend& backend = *backend_;
  constexpr int64_t kAlignElements = 16;  // 64-byte aligned views
  auto round_up = [](int64_t n, int64_t m) { return (n + m - 1) / m * m; };
  const int n_params = static_cast<int>(infos_.size());
  // Bucket boundaries, walking backwards from the last parameter.
  std::vector<std::pair<int, int>> ranges;  // [first, end) parameter ids, descending
  for (int end = n_params; end > 0;) {
    int first = end - 1;
    int64_t elements = infos_[first].local_shape.numel();
    while (first > 0 && infos_[first - 1].spec.reduce_group == infos_[end - 1].spec.reduce_group &&
           (layout.bucket_elements == 0 ||
            elements + infos_[first - 1].local_shape.numel() <= layout.bucket_elements)) {
      --first;
      elements += infos_[first].local_shape.numel();
    }
    ranges.emplace_back(first, end);
    end = first;
  }
  const int64_t bucket_align = kAlignElements * std::max<int64_t>(1, layout.shard_multiple);
  numel_ = 0;
  buckets_.clear();
  for (auto it = ranges.rbegin(); it != ranges.rend(); ++it) {
    GradBucket bucket;
    bucket.first_param = it->first;
    bucket.end_param = it->second;
    bucket.group = infos_[it->first].spec.reduce_group;
    bucket.begin = numel_;
    for (int id = it->first; id < it->second; ++id) {
      infos_[id].offset = numel_;
      numel_ += round_up(infos_[id].local_shape.numel(), kAlignElements);
    }
    numel_ = round_up(numel_, bucket_align);
    bucket.end = numel_;
    buckets_.push_back(bucket);
  }
  values_ = Tensor::Empty(DType::kF32, Shape{numel_}, backend);
  grads_ = Tensor::Empty(DType::kF32, Shape{numel_}, backend);
  // Initial values are made on the host, then copied to the run's device.
  Tensor host_values = backend.host_accessible() ? values_ : Tensor::Empty(DType::kF32, Shape{numel_});
  for (const ParamInfo& info : infos_) {
    float* out = host_values.data<float>() + info.offset;
    const int64_t n = info.local_shape.numel();
    const uint64_t key = Mix64(seed) ^ HashName(info.name);
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t counter = static_cast<uint64_t>(GlobalIndex(info, i));
      out[i] = InitialValue(info.init, key, counter);
    }
  }
  if (!backend.host_accessible()) {
    backend.CopyToDevice(values_.address(), host_values.data<float>(), values_.bytes());
  }
  finalized_ = true;
}

Tensor ParameterStore::param(Id id) const {
  TESSERA_CHECK(finalized_);
  const ParamInfo& info = infos_[id];
  return values_.View(info.offset, info.local_shape);
}

Tensor ParameterStore::grad(Id id) const {
  TESSERA_CHECK(finalized_);
  const ParamInfo& info = infos_[id];
  return grads_.View(info.offset, info.local_shape);
}

absl::StatusOr<ParameterStore::Id> ParameterStore::Find(absl::string_view name) const {
  for (size_t i = 0; i < infos_.size(); ++i)
    if (infos_[i].name == name) return static_cast<Id>(i);
  return absl::NotFoundError(absl::StrCat("no parameter named '", name, "'"));
}

void ParameterStore::ZeroGrads() { backend_->Memset(grads_.address(), 0, grads_.bytes()); }

ParameterStore::ScopedBf16Values::ScopedBf16Values(ParameterStore& store) : store_(store) {
  TESSERA_CHECK(store.finalized_);
  if (store.bf16_scopes_++ > 0) return;
  Backend& backend = *store.backend_;
  if (backend.gemm_precision() != MathPrecision::kBf16) return;
  if (!store.values_bf16_.defined()) {
    store.values_bf16_ = Tensor::Empty(DType::kBF16, Shape{store.numel_}, backend);
  }
  backend.RoundToBf16(store.values_.ptr<float>(),
                      static_cast<uint16_t*>(store.values_bf16_.address()), store.numel_);
  store.bf16_valid_ = true;
}

ParameterStore::ScopedBf16Values::~ScopedBf16Values() {
  if (--store_.bf16_scopes_ == 0) store_.bf16_valid_ = false;
}

const uint16_t* ParameterStore::param_bf16(Id id) const {
  if (!bf16_valid_) return nullptr;
  return static_cast<const uint16_t*>(values_bf16_.address()) + infos_[id].offset;
}

}  // namespace tessera
