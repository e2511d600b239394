// The model registry: one small record per model family. launch/ looks a
// run's model up by the config field that names it (the `model` oneof of
// RunConfig, or an extension of it) and knows no model by name.
//
// A family says how to check its config, estimate its size before anything
// is allocated, and build one rank's model; the built model hands the trainer
// its parameter store, a training task (runtime/train/train_task.h) and the
// gradient-ready hook, and has an end-of-run hook and an evaluation hook
// (named metrics on a held-out split, runtime/train/eval_task.h). Adding a
// model: its folder models/<name>/, its config message (a member of
// RunConfig's `model` oneof), one line in models/registry.cc, its configs,
// tests and docs
// (docs/architecture.md, "How to add a model").
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "data/sampler.h"
#include "parallel/model_parallel.h"
#include "runtime/config/config.pb.h"
#include "runtime/checkpoint/weights_file.h"
#include "runtime/config/config_check.h"
#include "runtime/nn/parameter.h"
#include "runtime/train/eval_task.h"
#include "runtime/train/sparse_parameters.h"
#include "runtime/train/train_task.h"

namespace tessera {

// Where one rank's share of the training data comes from.
struct TaskOptions {
  int replica = 0;       // data-parallel replica of this rank
  int num_replicas = 1;  // dp
  int64_t micro_batch = 1;  // samples per forward on this replica
  SamplerState start;    // where the data stream resumes
};

// One rank's built model.
class Model {
 public:
  virtual ~Model() = default;
  // The parameters, registered and finalized (buckets, initial values).
  virtual ParameterStore& store() = 0;
  // The training task over this model: its data, objective, forward and backward.
  virtual absl::StatusOr<std::unique_ptr<TrainTask>> CreateTask(const TaskOptions& options) = 0;
  // The evaluation on data.eval_dir (runtime/train/eval_task.h), opened and
  // checked against the training data before the first step: this replica's
  // share of each evaluation batch (options.replica of num_replicas, forwards
  // of options.micro_batch samples; options.start is unused). Called only when
  // data.eval_dir is set; null: the model has no evaluation (a usage error).
  virtual absl::StatusOr<std::unique_ptr<EvalTask>> CreateEvalTask(const TaskOptions& /*options*/) {
    return std::unique_ptr<EvalTask>();
  }
  // Parameters outside the store (a row-sharded embedding table with its
  // own sparse optimizer, runtime/train/sparse_parameters.h); null: none.
  virtual SparseParameters* sparse_parameters() { return nullptr; }
  // Views of the whole sparse tensors of a single-process model: weights.h5
  // saves and loads them with the store's parameters.
  virtual std::vector<WholeTensor> SparseWeights() { return {}; }
  // Every rank's sparse tensors gathered whole on every rank, concatenated
  // in SparseWeights() order (the weights a run ends with, under layouts
  // that shard them). Collective over the model's groups.
  virtual absl::StatusOr<std::vector<float>> GatherSparse() { return std::vector<float>(); }
  // Backward calls `callback(first, end)` as the gradients of parameter ids
  // [first, end) become complete (data parallelism starts reducing them).
  virtual void SetOnGradientsReady(std::function<void(int, int)> callback) = 0;
  // The end-of-run hook, on the logging rank only, after weights.h5 is
  // written: the single-process model holding the final inference weights.
  // DiT-MoE writes its sample grid to `run_dir`.
  virtual absl::Status FinishRun(const std::string& /*run_dir*/) { return absl::OkStatus(); }
};

// A model's size from its config alone (double precision: absurd sizes must
// not overflow), for the memory check before anything is built. Each `why`
// names the config values that make the term.
struct ModelSizeEstimate {
  double parameters = 0;
  std::string parameters_why;
  // A lower bound on activation bytes kept for backward, per sample.
  double activation_bytes_per_sample = 0;
  std::string activations_why;
  // Activation bytes of one inference forward (no backward), per sample.
  double inference_bytes_per_sample = 0;
  std::string inference_why;
  // One sample as the data reader delivers it (prefetched batches).
  double input_bytes_per_sample = 0;
  std::string input_why;
  // A bf16 run's (train.precision=bf16) extra memory, lower bounds too: the
  // bf16 copy of the dense weights the GEMMs read (ParameterStore::
  // ScopedBf16Values, 2 bytes per parameter), and per sample the bf16 copies
  // of the activations the GEMMs read again in backward (Bf16Copy,
  // runtime/nn/linear.h).
  double bf16_weight_bytes = 0;
  std::string bf16_weight_why;
  double bf16_activation_bytes_per_sample = 0;
  std::string bf16_activation_why;
  // Of `parameters`, the elements of sparse parameters (HSTU's item table),
  // which a GPU run keeps on the device or in host memory as a whole
  // (launch/memory_fit.h), and the bytes each takes there with its
  // optimizer state and, at most, its gradient.
  double sparse_parameters = 0;
  double sparse_bytes_per_parameter = 0;
  std::string sparse_why;
};

struct ModelFamily {
  std::string name;   // the RunConfig field that selects it, e.g. "dit_moe"
  std::string title;  // for log lines, e.g. "DiT-MoE"
  // The model's own rules (the shared sections' are runtime/config's):
  // every failure into `check`, worded "model.<name>.<field>=<value> must ...".
  std::function<void(const RunConfig& config, int world_size, ConfigChecker& check)> validate;
  std::function<ModelSizeEstimate(const RunConfig& config)> estimate;
  // Registers the parameters, finalizes the store with `layout` and
  // initializes them from train.seed. `model_parallel`: the groups of a
  // tp/sp/ep layout; null for one process or data parallelism alone.
  std::function<absl::StatusOr<std::unique_ptr<Model>>(
      const RunConfig& config, const ParameterLayout& layout,
      const parallel::ModelParallel* model_parallel)>
      build;
  // The ranks a row-sharded embedding table is split over when the run has
  // `world_size` processes (ModelParallel::table); null or 0: none.
  std::function<int(const RunConfig& config, int world_size)> table_shards;
};

// The families models/registry.cc lists, and any registered since.
const std::vector<ModelFamily>& ModelFamilies();
// Adds a family (a test's model, an out-of-tree model); false if its name is
// taken. Call before any lookup, e.g. from a static initializer.
bool RegisterModelFamily(ModelFamily family);
// The family `config` names; a UsageError naming the known ones otherwise.
absl::StatusOr<const ModelFamily*> FindModelFamily(const RunConfig& config);

// Every rule for a run over `world_size` processes: the shared sections'
// (runtime/config) and the model's, all failures in one UsageError.
absl::Status ValidateRun(const RunConfig& config, int world_size);

}  // namespace tessera
