// DiT-MoE's evaluation (runtime/train/eval_task.h): the validation diffusion
// loss on data.eval_dir.
//
// The first train.eval_samples images of the split (all when 0), in index
// order, each with its timestep and noise drawn from the counter-based RNG
// keyed by the image's index in the split and a fixed evaluation key (not
// train.seed, not the step, not the rank), and no label dropout. Every
// evaluation of every run therefore sees the same noisy inputs, and the loss
// (the training objective's MSE, as a mean over the images) is comparable
// across steps, runs and layouts.
#pragma once

#include <memory>
#include <vector>

#include "data/reader.h"
#include "models/dit_moe/diffusion.h"
#include "models/dit_moe/model.h"
#include "models/registry.h"
#include "runtime/train/eval_task.h"

namespace tessera::dit_moe {

class DitMoeEvaluation : public EvalTask {
 public:
  // Opens data.eval_dir for `options.replica` of `options.num_replicas`
  // (forwards of options.micro_batch images) and checks it against the
  // training data (schema, image shape) and the model (classes).
  static absl::StatusOr<std::unique_ptr<DitMoeEvaluation>> Create(const RunConfig& config,
                                                                  DitMoe& model,
                                                                  const TaskOptions& options);

  // {"val_loss": per-image loss sum, images}.
  absl::StatusOr<std::vector<EvalMetric>> Evaluate(Arena& arena) override;
  int64_t num_samples() const override { return samples_; }
  std::vector<std::string> metric_names() const override { return {"val_loss"}; }

  // The draws' key: Diffusion::MakeExample's seed and step for every evaluation.
  static constexpr uint64_t kSeed = 0x6576616c5f6c6f73;  // "eval_los"
  static constexpr int64_t kStep = -1;                    // never a training step

 private:
  DitMoeEvaluation(const RunConfig& config, DitMoe& model, const ImageReaderOptions& options,
                   std::unique_ptr<ImageReader> reader);
  // The loss sum over the valid images of this replica's share of evaluation
  // batch `batch` (the split's positions first + k * R + replica); adds
  // their number to `*count`. Positions past the evaluated images are
  // padding: they run (model parallelism's collectives need every rank's
  // forward) but count for nothing.
  absl::StatusOr<double> BatchLossSum(Arena& arena, const ImageBatch& batch, int64_t first,
                                      double* count);

  DitMoe& model_;
  Diffusion diffusion_;
  ImageReaderOptions options_;
  std::unique_ptr<ImageReader> reader_;  // open between evaluations only before the first
  int64_t samples_ = 0;
};

}  // namespace tessera::dit_moe
