// Data parallelism with overlapped, bucketed gradient reduction and ZeRO-1.
//
// The ParameterStore lays parameters out in buckets (ParameterLayout): each a
// contiguous range of the flat buffers, filled in the order backward produces
// gradients and never mixing reduce groups. As the model's backward pass
// reports parameters complete (GradientSync::OnGradientsReady), a bucket whose
// last gradient arrived starts its reduction at once, on the bucket's group
// (dense parameters over dp x sp, expert parameters over edp, as each
// parameter's ParallelSpec says), and the rest of backward runs meanwhile.
//
//   zero_stage 0: all-reduce (average) each bucket; every rank runs AdamW on
//                 the whole buffer.
//   zero_stage 1: reduce-scatter (average) each bucket; rank r keeps shard r
//                 of every bucket with its fp32 AdamW moments, updates it, and
//                 all-gathers the updated parameters.
//
// Reductions are issued in the same order on every rank (bucket order is a
// function of the model alone), as the Communicator contract requires.
//
// The groups are the run's device communicators: gradient buckets, ZeRO
// shards and the gathered parameters live on the store's backend, and the
// compute stream (not the host) waits for their collectives (StreamWait).
// So do the gradient norm's partials: computed, gathered over the groups and
// summed in rank order on the device (nothing read by the host in a step).
// The replica sums and averages are host values and go over each group's
// host().
#pragma once

#include <memory>
#include <vector>

#include "parallel/comm/communicator.h"
#include "runtime/train/gradient_sync.h"

namespace tessera::parallel {

// The groups gradients are reduced over, one per ParallelSpec::ReduceGroup,
// and what the sums are divided by.
//
// Each rank contributes the gradient of its losses' per-element sums (the
// trainer's per-element weighting, runtime/train/train_task.h), and the
// global loss is the mean over the elements of the dp x sp ranks, so every
// gradient is a sum of per-rank contributions divided by the global element
// count (FinishBackward's argument; or by `divisor` = dp * sp, a mean of
// per-rank means, when none is given): for dense parameters that sum runs
// over dp x sp; for expert parameters over edp (each owner already holds the
// contributions of its ep group's tokens); for tp-partial parameters over
// the world.
struct GradientGroups {
  Communicator* dense = nullptr;   // dp x sp
  Communicator* expert = nullptr;  // edp; may be `dense`
  // The world: tp-partial gradients and the global gradient norm. Null when
  // there is no model parallelism (tp = ep = 1): the norm is then dense's.
  Communicator* world = nullptr;
  int divisor = 0;  // dp * sp; 0: dense->size()
  int tp = 1, ep = 1;  // to count the copies of a parameter in the world
};

class DataParallel : public GradientSync {
 public:
  // The store must have been finalized with shard_multiple = a multiple of
  // every group's size under ZeRO-1.
  static absl::StatusOr<std::unique_ptr<DataParallel>> Create(ParameterStore& store,
                                                              const OptimConfig& optim,
                                                              int zero_stage,
                                                              const GradientGroups& groups,
                                                              bool logging_rank);
  // Data parallelism alone: dense over dp x sp, experts over edp, averaged.
  static absl::StatusOr<std::unique_ptr<DataParallel>> Create(ParameterStore& store,
                                                              const OptimConfig& optim,
                                                              int zero_stage, Communicator* dense,
                                                              Communicator* expert,
                                                              bool logging_rank) {
    return Create(store, optim, zero_stage, GradientGroups{dense, expert}, logging_rank);
  }

  int replica() const override { return dense_->rank(); }
  int num_replicas() const override { return dense_->size(); }
  bool is_logging_rank() const override { return logging_rank_; }
  void BeginMicroBatch(bool last) override;
  void OnGradientsReady(int first_param, int end_param) override;
  using GradientSync::FinishBackward;
  absl::Status FinishBackward(double global_elements) override;
  absl::Status GradNormSquared(const double* losses, int64_t count,
                               double* norm_squared) override;
  absl::Status Step(float lr, const float* grad_scale) override;
  absl::Status AverageOverReplicas(std::vector<double>* values) override;
  absl::Status SumOverReplicas(std::vector<double>* values) override;
  size_t OptimizerStateBytes() const override;
  std::vector<AdamW*> optimizers() override;
  size_t CommunicationBufferBytes() const override;

  // Seconds the last FinishBackward spent waiting for reductions (the part
  // of communication that backward did not hide).
  double last_wait_seconds() const { return last_wait_seconds_; }

 private:
  struct Bucket {
    GradBucket range;
    Communicator* comm = nullptr;
    int pending = 0;                       // gradients not yet complete this step
    std::unique_ptr<Work> work;            // the bucket's reduction in flight
    Tensor shard_grads;                    // ZeRO-1: [size / group size]
    std::unique_ptr<AdamW> shard_optimizer;  // ZeRO-1: over this rank's shard
    int64_t shard_begin() const { return range.begin + comm->rank() * shard_size(); }
    int64_t shard_size() const { return range.size() / comm->size(); }
  };

  DataParallel(ParameterStore& store, const OptimConfig& optim, int zero_stage,
               const GradientGroups& groups, bool logging_rank);
  Communicator* GroupOf(ParallelSpec::ReduceGroup group) const;
  void AllocateShards(const OptimConfig& optim);
  absl::Status Launch(Bucket& bucket);
  // Adds to *total (device) the squared norm of this rank's (shard of the)
  // reduced gradients, each parameter weighted by 1 / (its copies among the
  // ranks that sum it).
  void AccumulateWeightedNormSquared(double* total);
  // The gradient norm's device doubles (norm_scratch_): one SumSquares, the
  // dense and expert partials, and a group's gathered partials.
  double* NormScratch(int index) {
    return reinterpret_cast<double*>(norm_scratch_.ptr<int64_t>()) + index;
  }
  static constexpr int kOneSum = 0, kPartials = 1, kGathered = 3;

  ParameterStore& store_;
  int zero_stage_;
  GradientGroups groups_;
  Communicator* dense_;
  Communicator* expert_;
  std::vector<double> norm_weight_;  // per parameter
  bool logging_rank_;
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_param_;
  std::unique_ptr<AdamW> optimizer_;  // zero_stage 0: the whole buffer
  Tensor norm_scratch_;  // doubles as i64, in the store's backend memory
  bool last_micro_batch_ = false;
  absl::Status launch_status_;
  double last_wait_seconds_ = 0;
};

}  // namespace tessera::parallel
