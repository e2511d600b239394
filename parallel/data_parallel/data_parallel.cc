#include "parallel/data_parallel/data_parallel.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_format.h"
#include "runtime/base/errors.h"

namespace tessera::parallel {

absl::StatusOr<std::unique_ptr<DataParallel>> DataParallel::Create(
    ParameterStore& store, const OptimConfig& optim, int zero_stage, const GradientGroups& groups,
    bool logging_rank) {
  if (zero_stage != 0 && zero_stage != 1) {
    return UsageError(absl::StrFormat("parallel.zero_stage=%d: only 0 and 1 exist", zero_stage));
  }
  if (groups.dense == nullptr || groups.expert == nullptr || !store.finalized()) {
    return absl::FailedPreconditionError("DataParallel needs both groups and a finalized store");
  }
  for (const GradBucket& bucket : store.buckets()) {
    if (bucket.group == ParallelSpec::ReduceGroup::kTensorDataSequence && !groups.world) {
      return absl::FailedPreconditionError(
          "DataParallel: tp-partial gradients need GradientGroups::world");
    }
  }
  auto dp = std::unique_ptr<DataParallel>(
      new DataParallel(store, optim, zero_stage, groups, logging_rank));
  if (zero_stage == 1) {
    for (const Bucket& bucket : dp->buckets_) {
      if (bucket.range.size() % bucket.comm->size() != 0) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "bucket [%d, %d) does not split into %d ZeRO shards: finalize the store with "
            "ParameterLayout::shard_multiple",
            bucket.range.begin, bucket.range.end, bucket.comm->size()));
      }
    }
    dp->AllocateShards(optim);
  }
  return dp;
}

Communicator* DataParallel::GroupOf(ParallelSpec::ReduceGroup group) const {
  switch (group) {
    case ParallelSpec::ReduceGroup::kExpertData:
      return groups_.expert;
    case ParallelSpec::ReduceGroup::kTensorDataSequence:
      return groups_.world;
    case ParallelSpec::ReduceGroup::kDataSequence:
      break;
  }
  return groups_.dense;
}

DataParallel::DataParallel(ParameterStore& store, const OptimConfig& optim, int zero_stage,
                           const GradientGroups& groups, bool logging_rank)
    : store_(store),
      zero_stage_(zero_stage),
      groups_(groups),
      dense_(groups.dense),
      expert_(groups.expert),
      logging_rank_(logging_rank) {
  if (groups_.divisor <= 0) groups_.divisor = dense_->size();
  bucket_of_param_.assign(store.size(), -1);
  for (const GradBucket& range : store.buckets()) {
    Bucket bucket;
    bucket.range = range;
    bucket.comm = GroupOf(range.group);
    for (int id = range.first_param; id < range.end_param; ++id)
      bucket_of_param_[id] = static_cast<int>(buckets_.size());
    buckets_.push_back(std::move(bucket));
  }
  // How many ranks hold the same piece of each parameter, for the norm.
  const int world = groups_.world ? groups_.world->size() : dense_->size();
  norm_weight_.resize(store.size());
  for (int id = 0; id < store.size(); ++id) {
    const ParallelSpec& spec = store.info(id).spec;
    int copies = world;
    if (spec.kind == ParallelSpec::Kind::kExpert) copies = world / groups_.ep;
    if (spec.kind == ParallelSpec::Kind::kSplit) copies = world / groups_.tp;
    if (!groups_.world) copies = GroupOf(spec.reduce_group)->size();
    norm_weight_[id] = 1.0 / copies;
  }
  if (zero_stage == 0) optimizer_ = std::make_unique<AdamW>(store, optim);
  const int largest = std::max({world, dense_->size(), expert_->size()});
  norm_scratch_ = Tensor::Empty(DType::kI64, Shape{kGathered + largest}, store.backend());
}

void DataParallel::AllocateShards(const OptimConfig& optim) {
  for (Bucket& bucket : buckets_) {
    bucket.shard_grads = Tensor::Empty(DType::kF32, Shape{bucket.shard_size()}, store_.backend());
    bucket.shard_optimizer = std::make_unique<AdamW>(
        store_, optim, bucket.shard_begin(), bucket.shard_begin() + bucket.shard_size());
  }
}

void DataParallel::BeginMicroBatch(bool last) {
  last_micro_batch_ = last;
  if (!last) return;
  for (Bucket& bucket : buckets_) {
    bucket.pending = bucket.range.end_param - bucket.range.first_param;
    bucket.work.reset();
  }
  launch_status_ = absl::OkStatus();
}

absl::Status DataParallel::Launch(Bucket& bucket) {
  float* grads = store_.grads().ptr<float>() + bucket.range.begin;
  // A sum, divided once it arrives (FinishBackward): by the global element
  // count, which is known only after the last micro-batch.
  const ReduceOp op = ReduceOp::kSum;
  absl::StatusOr<std::unique_ptr<Work>> work =
      zero_stage_ == 0
          ? bucket.comm->AllReduce(grads, bucket.range.size(), DType::kF32, op)
          : bucket.comm->ReduceScatter(grads, bucket.shard_grads.ptr<float>(), bucket.shard_size(),
                                       DType::kF32, op);
  if (!work.ok()) return work.status();
  bucket.work = std::move(*work);
  bucket.pending = -1;  // launched
  return absl::OkStatus();
}

void DataParallel::OnGradientsReady(int first_param, int end_param) {
  if (!last_micro_batch_ || !launch_status_.ok()) return;
  for (int id = first_param; id < end_param; ++id) {
    Bucket& bucket = buckets_[bucket_of_param_[id]];
    if (bucket.pending > 0 && --bucket.pending == 0) {
      launch_status_ = Launch(bucket);
      if (!launch_status_.ok()) return;
    }
  }
  // MPI progresses non-blocking collectives only inside MPI calls: poke the
  // ones in flight between layers so they advance during backward.
  for (Bucket& bucket : buckets_) {
    if (bucket.work) bucket.work->Test();
  }
}

absl::Status DataParallel::FinishBackward(double global_elements) {
  TESSERA_RETURN_IF_ERROR(launch_status_);
  const float scale = static_cast<float>(
      1.0 / (global_elements > 0 ? global_elements : static_cast<double>(groups_.divisor)));
  using Clock = std::chrono::steady_clock;
  // Buckets the backward pass did not report (none for a well-formed model)
  // start now, last first, the same on every rank.
  for (auto it = buckets_.rbegin(); it != buckets_.rend(); ++it) {
    if (it->pending >= 0) TESSERA_RETURN_IF_ERROR(Launch(*it));
  }
  // Only the waits count as exposed communication: the scaling below is a
  // pass over the gradients that one process makes as well.
  last_wait_seconds_ = 0;
  for (auto it = buckets_.rbegin(); it != buckets_.rend(); ++it) {
    const auto wait_start = Clock::now();
    TESSERA_RETURN_IF_ERROR(it->work->StreamWait(it->comm->timeout()));
    last_wait_seconds_ += std::chrono::duration<double>(Clock::now() - wait_start).count();
    it->work.reset();
    if (zero_stage_ == 0) {
      store_.backend().Scale(store_.grads().ptr<float>() + it->range.begin, it->range.size(),
                             scale);
    } else {
      store_.backend().Scale(it->shard_grads.ptr<float>(), it->shard_size(), scale);
    }
  }
  return absl::OkStatus();
}

void DataParallel::AccumulateWeightedNormSquared(double* total) {
  Backend& backend = store_.backend();
  double* one = NormScratch(kOneSum);
  const float* grads = store_.grads().ptr<float>();
  for (const Bucket& bucket : buckets_) {
    // Zero 0: the whole bucket; ZeRO-1: this rank's shard, one of the
    // group's size() disjoint parts, so each holds 1/size of the copies.
    const int64_t begin = zero_stage_ == 0 ? bucket.range.begin : bucket.shard_begin();
    const int64_t end = zero_stage_ == 0 ? bucket.range.end : begin + bucket.shard_size();
    const float* base = zero_stage_ == 0 ? grads : bucket.shard_grads.ptr<float>() - begin;
    const double group = zero_stage_ == 0 ? 1.0 : bucket.comm->size();
    for (int id = bucket.range.first_param; id < bucket.range.end_param; ++id) {
      const ParamInfo& info = store_.info(id);
      const int64_t lo = std::max(begin, info.offset);
      const int64_t hi = std::min(end, info.offset + info.local_shape.numel());
      if (lo >= hi) continue;
      backend.SumSquares(base + lo, hi - lo, one);
      backend.AccumulateScalars(one, 1, norm_weight_[id] * group, total);
    }
  }
}

absl::Status DataParallel::GradNormSquared(const double* losses, int64_t count,
                                           double* norm_squared) {
  Backend& backend = store_.backend();
  double* gathered = NormScratch(kGathered);
  // Sums every rank's double (gathered over `comm` on the device) in rank
  // order into *norm_squared: exact and the same everywhere.
  const auto sum_over = [&](Communicator* comm, const double* partial) -> absl::Status {
    TESSERA_RETURN_IF_ERROR(comm->CompleteOnDevice(
        comm->AllGather(partial, gathered, sizeof(double), DType::kU8)));
    backend.AccumulateScalars(gathered, comm->size(), 1.0, norm_squared);
    return absl::OkStatus();
  };
  if (groups_.world) {
    // Model parallelism: every rank's weighted part, summed over the world.
    double* partial = NormScratch(kPartials);
    backend.Memset(partial, 0, sizeof(double));
    AccumulateWeightedNormSquared(partial);
    backend.AccumulateScalars(losses, count, 0.0, partial);
    backend.Memset(norm_squared, 0, sizeof(double));
    return sum_over(groups_.world, partial);
  }
  if (zero_stage_ == 0) {
    // Every rank holds the same averaged gradient, but only its own losses:
    // they join over the dense group (the replicas), adding zeros in rank
    // order, or NaN on every rank.
    backend.SumSquares(store_.grads().ptr<float>(), store_.numel(), norm_squared);
    double* partial = NormScratch(kPartials);
    backend.Memset(partial, 0, sizeof(double));
    backend.AccumulateScalars(losses, count, 0.0, partial);
    if (dense_->size() == 1) {
      backend.AccumulateScalars(partial, 1, 1.0, norm_squared);
      return absl::OkStatus();
    }
    return sum_over(dense_, partial);
  }
  // Shards partition each group's buckets: sum the partial norms per group.
  double* partial = NormScratch(kPartials);  // dense, expert
  double* one = NormScratch(kOneSum);
  backend.Memset(partial, 0, 2 * sizeof(double));
  for (const Bucket& bucket : buckets_) {
    backend.SumSquares(bucket.shard_grads.ptr<float>(), bucket.shard_size(), one);
    backend.AccumulateScalars(one, 1, 1.0, partial + (bucket.comm == dense_ ? 0 : 1));
  }
  if (expert_ == dense_) backend.AccumulateScalars(partial + 1, 1, 1.0, partial);
  // The dense group holds every replica: its partial carries the losses.
  backend.AccumulateScalars(losses, count, 0.0, partial);
  backend.Memset(norm_squared, 0, sizeof(double));
  TESSERA_RETURN_IF_ERROR(sum_over(dense_, partial));
  if (expert_ != dense_) TESSERA_RETURN_IF_ERROR(sum_over(expert_, partial + 1));
  return absl::OkStatus();
}

absl::Status DataParallel::Step(float lr, const float* grad_scale) {
  if (zero_stage_ == 0) {
    optimizer_->Step(lr, store_.values().ptr<float>(), store_.grads().ptr<float>(), grad_scale);
    return absl::OkStatus();
  }
  std::vector<std::unique_ptr<Work>> gathers;
  for (Bucket& bucket : buckets_) {
    float* shard_values = store_.values().ptr<float>() + bucket.shard_begin();
    bucket.shard_optimizer->Step(lr, shard_values, bucket.shard_grads.ptr<float>(), grad_scale);
    // In place: this rank's shard already sits at its block of the bucket.
    TESSERA_ASSIGN_OR_RETURN(
        auto work,
        bucket.comm->AllGather(shard_values, store_.values().ptr<float>() + bucket.range.begin,
                               bucket.shard_size(), DType::kF32));
    gathers.push_back(std::move(work));
  }
  for (size_t i = 0; i < gathers.size(); ++i) {
    TESSERA_RETURN_IF_ERROR(gathers[i]->StreamWait(buckets_[i].comm->timeout()));
  }
  return absl::OkStatus();
}

absl::Status DataParallel::SumOverReplicas(std::vector<double>* values) {
  const size_t n = values->size();
  Communicator& dense = dense_->host();
  std::vector<double> all(n * dense.size());
  TESSERA_RETURN_IF_ERROR(
      dense.Complete(dense.AllGather(values->data(), all.data(), n * sizeof(double), DType::kU8)));
  for (size_t i = 0; i < n; ++i) {
    double sum = 0;  // in rank order: exact and the same on every rank
    for (int r = 0; r < dense.size(); ++r) sum += all[r * n + i];
    (*values)[i] = sum;
  }
  return absl::OkStatus();
}

absl::Status DataParallel::AverageOverReplicas(std::vector<double>* values) {
  const size_t n = values->size();
  Communicator& dense = dense_->host();
  std::vector<double> all(n * dense.size());
  TESSERA_RETURN_IF_ERROR(
      dense.Complete(dense.AllGather(values->data(), all.data(), n * sizeof(double), DType::kU8)));
  for (size_t i = 0; i < n; ++i) {
    double sum = 0;
    for (int r = 0; r < dense.size(); ++r) sum += all[r * n + i];
    (*values)[i] = sum / dense.size();
  }
  return absl::OkStatus();
}

size_t DataParallel::CommunicationBufferBytes() const {
  if (zero_stage_ == 0) return 0;  // all-reduce works in place
  // ZeRO-1: the reduced gradient shards (the parameter all-gather is in place).
  size_t bytes = 0;
  for (const Bucket& bucket : buckets_) bytes += bucket.shard_grads.bytes();
  return bytes;
}

std::vector<AdamW*> DataParallel::optimizers() {
  if (optimizer_) return {optimizer_.get()};
  std::vector<AdamW*> shards;
  for (Bucket& bucket : buckets_) shards.push_back(bucket.shard_optimizer.get());
  return shards;
}

size_t DataParallel::OptimizerStateBytes() const {
  if (optimizer_) return optimizer_->StateBytes();
  size_t bytes = 0;
  for (const Bucket& bucket : buckets_) bytes += bucket.shard_optimizer->StateBytes();
  return bytes;
}

}  // namespace tessera::parallel
