// GradientSync: what the step loop asks of data parallelism.
//
// runtime/ knows no ranks: one process uses LocalGradientSync (below);
// parallel/data_parallel implements the same interface over communicators
// (bucketed, overlapped reduction; ZeRO-1). The trainer drives either the
// same way, so the single process is the parallel case with one replica.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/config/config.pb.h"
#include "runtime/nn/parameter.h"
#include "runtime/optim/adamw.h"

namespace tessera {

class GradientSync {
 public:
  virtual ~GradientSync() = default;

  virtual int replica() const = 0;
  virtual int num_replicas() const = 0;
  // The rank that prints and writes metrics.
  virtual bool is_logging_rank() const = 0;

  // Before each micro-batch of a step; `last` marks the one whose backward
  // pass produces the step's final gradients (and may start reductions).
  virtual void BeginMicroBatch(bool last) = 0;
  // From the backward pass: the gradients of parameters [first, end) are
  // complete for this micro-batch.
  virtual void OnGradientsReady(int first_param, int end_param) = 0;
  // After the last backward: every gradient this rank needs (all of them,
  // or this rank's ZeRO shard) is summed over the replicas and divided by
  // `global_elements`, the elements the step's losses average over on every
  // replica (SumOverReplicas of the micro-batches' counts): each micro-batch
  // contributed the gradient of its per-element loss sum (TrainTask).
  // `global_elements` = 0: divide by the number of replicas (a mean of
  // per-replica means).
  virtual absl::Status FinishBackward(double global_elements) = 0;
  absl::Status FinishBackward() { return FinishBackward(0.0); }
  // Writes the squared L2 norm of the averaged gradient, the same on every
  // rank, to *norm_squared (one double in the store's backend memory): the
  // partials are combined over the groups with the device communicators, so
  // nothing is read by the host. `losses` (`count` doubles, device memory:
  // this rank's micro-batch losses) join the partials times 0, so the norm
  // is NaN on every rank when any rank's loss is not finite (and exact
  // otherwise: x + 0 = x) without a collective of its own.
  virtual absl::Status GradNormSquared(const double* losses, int64_t count,
                                       double* norm_squared) = 0;
  // Applies AdamW with `lr` to the gradients times *grad_scale (one float in
  // the store's backend memory, Backend::StepGuard's clip scale; 0 leaves
  // the parameters and the optimizer state unchanged), and leaves every rank
  // with the full updated parameters.
  virtual absl::Status Step(float lr, const float* grad_scale) = 0;
  // Replaces each value by its mean over the replicas.
  virtual absl::Status AverageOverReplicas(std::vector<double>* values) = 0;
  // Replaces each value by its sum over the replicas (the same on every rank).
  virtual absl::Status SumOverReplicas(std::vector<double>* values) = 0;
  virtual size_t OptimizerStateBytes() const = 0;
  // The AdamW instances holding this rank's optimizer state (each over a
  // range of the flat buffer), for checkpoints.
  virtual std::vector<AdamW*> optimizers() = 0;
  // Buffers the reductions keep besides the gradients (e.g. ZeRO shards).
  virtual size_t CommunicationBufferBytes() const { return 0; }
};

// One process: no communication, AdamW over the whole flat buffer.
class LocalGradientSync : public GradientSync {
 public:
  LocalGradientSync(ParameterStore& store, const OptimConfig& optim);

  int replica() const override { return 0; }
  int num_replicas() const override { return 1; }
  bool is_logging_rank() const override { return true; }
  void BeginMicroBatch(bool) override {}
  void OnGradientsReady(int, int) override {}
  using GradientSync::FinishBackward;
  absl::Status FinishBackward(double global_elements) override;
  absl::Status GradNormSquared(const double* losses, int64_t count,
                               double* norm_squared) override;
  absl::Status Step(float lr, const float* grad_scale) override;
  absl::Status AverageOverReplicas(std::vector<double>*) override { return absl::OkStatus(); }
  absl::Status SumOverReplicas(std::vector<double>*) override { return absl::OkStatus(); }
  size_t OptimizerStateBytes() const override { return optimizer_.StateBytes(); }
  std::vector<AdamW*> optimizers() override { return {&optimizer_}; }

 private:
  ParameterStore& store_;
  AdamW optimizer_;
};

}  // namespace tessera
