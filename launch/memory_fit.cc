#include "launch/memory_fit.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "models/registry.h"
#include "runtime/base/errors.h"
#include "runtime/base/human_units.h"
#include "runtime/train/memory.h"

namespace tessera {
namespace {

using Term = MemoryTerm;

absl::Status CheckFits(const std::vector<Term>& terms, double processes) {
  const size_t available = AvailableMemoryBytes();
  if (available == 0) return absl::OkStatus();  // nothing known to compare with
  double total = 0;
  for (const Term& t : terms) total += t.bytes * processes;
  if (total <= static_cast<double>(available)) return absl::OkStatus();
  const Term& largest = *std::max_element(
      terms.begin(), terms.end(), [](const Term& a, const Term& b) { return a.bytes < b.bytes; });
  return UsageError(absl::StrFormat(
      "the run cannot fit in memory: at least %s planned%s > %s available; largest term: %s "
      "%s (%s)",
      HumanBytes(total), processes > 1 ? absl::StrFormat(" for %.0f ranks on this host", processes)
                                       : std::string(),
      HumanBytes(static_cast<double>(available)), largest.name, HumanBytes(largest.bytes),
      largest.why));
}

double MicroBatchOf(const RunConfig& config, int world_size) {
  const double dp = std::max<int64_t>(1, DataParallelSize(config, world_size));
  return std::max<double>(1, config.train().micro_batch() > 0 ? config.train().micro_batch()
                                                              : config.train().global_batch() / dp);
}

// The model state and activations of one rank: the same terms for host
// memory (a CPU run) and device memory (a GPU run). A bf16 run adds two:
// the weights' bf16 copy and the activations' bf16 copies (terms 2 and 3).
std::vector<Term> ModelTerms(const RunConfig& config, const ModelSizeEstimate& e, int world_size) {
  // fp32 values, gradients, AdamW m and v (and the EMA), shared over at most
  // the world's ranks.
  const double copies = 4 + (config.optim().ema_decay() > 0 ? 1 : 0);
  const double ranks = std::max(1, world_size);
  const double micro = MicroBatchOf(config, world_size);
  std::vector<Term> terms = {
      {"parameters, gradients and optimizer state", 4.0 * copies * e.parameters / ranks,
       e.parameters_why},
      {"activations", micro * e.activation_bytes_per_sample / ranks,
       absl::StrFormat("micro-batch %.0f x %s", micro, e.activations_why)}};
  if (config.train().precision() == "bf16") {
    terms.push_back({"bf16 weight copy", e.bf16_weight_bytes / ranks,
                     absl::StrCat("train.precision=bf16: ", e.bf16_weight_why)});
    terms.push_back({"bf16 activation copies", micro * e.bf16_activation_bytes_per_sample / ranks,
                     absl::StrFormat("train.precision=bf16: micro-batch %.0f x %s", micro,
                                     e.bf16_activation_why)});
  }
  return terms;
}

}  // namespace

std::vector<MemoryTerm> TrainingMemoryTerms(const RunConfig& config, int world_size) {
  absl::StatusOr<const ModelFamily*> family = FindModelFamily(config);
  if (!family.ok() || !(*family)->estimate) return {};
  const ModelSizeEstimate e = (*family)->estimate(config);
  std::vector<Term> terms = ModelTerms(config, e, world_size);
  const double micro = MicroBatchOf(config, world_size);
  terms.push_back(
      {"prefetched batches", (config.data().prefetch() + 1.0) * micro * e.input_bytes_per_sample,
       absl::StrFormat("(data.prefetch %d + 1) x micro-batch %.0f x %s", config.data().prefetch(),
                       micro, e.input_why)});
  return terms;
}

absl::Status CheckTrainingMemoryFits(const RunConfig& config, int world_size, int local_ranks) {
  const std::vector<Term> terms = TrainingMemoryTerms(config, world_size);
  if (terms.empty()) return absl::OkStatus();
  return CheckFits(terms, std::max(1, local_ranks));
}

DeviceMemoryPlan PlanDeviceMemory(const RunConfig& config, int world_size) {
  DeviceMemoryPlan plan;
  absl::StatusOr<const ModelFamily*> family = FindModelFamily(config);
  if (!family.ok() || !(*family)->estimate) return plan;
  ModelSizeEstimate e = (*family)->estimate(config);
  // The sparse parameters are a term of their own, over the ranks of their
  // table's group (one process: all of them).
  const double sparse = e.sparse_parameters;
  e.parameters -= sparse;
  const std::vector<Term> terms = ModelTerms(config, e, world_size);
  plan.state = terms[0].bytes;
  plan.state_why = terms[0].why;
  if (sparse > 0) {
    const int shards = (*family)->table_shards ? (*family)->table_shards(config, world_size) : 0;
    plan.sparse = sparse * e.sparse_bytes_per_parameter / std::max(1, shards);
    plan.sparse_why =
        shards > 1 ? absl::StrFormat("%s, 1/%d of it", e.sparse_why, shards) : e.sparse_why;
  }
  plan.activations = terms[1].bytes;
  plan.activations_why = terms[1].why;
  if (terms.size() > 3) {
    plan.bf16 = terms[2].bytes + terms[3].bytes;
    plan.bf16_why = absl::StrCat(HumanBytes(terms[2].bytes), " weights (", terms[2].why, ") + ",
                                 HumanBytes(terms[3].bytes), " activations (", terms[3].why, ")");
  }
  // One micro-batch of inputs staged on the device.
  plan.inputs = MicroBatchOf(config, world_size) * e.input_bytes_per_sample;
  return plan;
}

std::string PlaceSparseParameters(const RunConfig& config, DeviceMemoryPlan& plan,
                                  size_t free_bytes) {
  if (plan.sparse <= 0) return std::string();
  const HstuConfig::TablePlacement placement = config.hstu().table_placement();
  if (placement == HstuConfig::HOST) {
    plan.sparse_on_device = false;
    return "the item table stays in host memory (model.hstu.table_placement=HOST)";
  }
  plan.sparse_on_device = true;
  if (placement == HstuConfig::DEVICE) {
    return "the item table lives on the device (model.hstu.table_placement=DEVICE)";
  }
  if (plan.total() <= static_cast<double>(free_bytes)) {
    return "the item table lives on the device (model.hstu.table_placement=AUTO: the plan fits)";
  }
  plan.sparse_on_device = false;
  return absl::StrFormat(
      "the item table stays in host memory (model.hstu.table_placement=AUTO: with its %s the "
      "plan would need %s of the %s free; its rows are copied to the device per micro-batch)",
      HumanBytes(plan.sparse), HumanBytes(plan.total() + plan.sparse),
      HumanBytes(static_cast<double>(free_bytes)));
}

std::string FormatDeviceMemoryPlan(const DeviceMemoryPlan& plan, size_t free_bytes,
                                   size_t total_bytes) {
  const std::string bf16 =
      plan.bf16 > 0 ? absl::StrFormat(" + bf16 copies %s (%s)", HumanBytes(plan.bf16), plan.bf16_why)
                    : std::string();
  std::string sparse;
  if (plan.sparse > 0) {
    sparse =
        plan.sparse_on_device
            ? absl::StrFormat(" + item table %s (%s)", HumanBytes(plan.sparse), plan.sparse_why)
            : absl::StrFormat(" (item table %s in host memory)", HumanBytes(plan.sparse));
  }
  return absl::StrFormat(
      "GPU memory plan: %s = model state %s (%s)%s + activations %s (%s)%s + inputs %s + "
      "workspace %s; the device has %s free of %s",
      HumanBytes(plan.total()), HumanBytes(plan.state), plan.state_why, sparse,
      HumanBytes(plan.activations), plan.activations_why, bf16, HumanBytes(plan.inputs),
      HumanBytes(plan.workspace), HumanBytes(static_cast<double>(free_bytes)),
      HumanBytes(static_cast<double>(total_bytes)));
}

absl::Status CheckDeviceMemoryFits(const DeviceMemoryPlan& plan, size_t free_bytes, int device) {
  if (plan.total() <= static_cast<double>(free_bytes)) return absl::OkStatus();
  const double sparse = plan.sparse_on_device ? plan.sparse : 0;
  std::string name = "parameters, gradients and optimizer state";
  double bytes = plan.state;
  std::string why = plan.state_why;
  if (plan.activations > bytes) {
    name = "activations", bytes = plan.activations, why = plan.activations_why;
  }
  if (sparse > bytes) {
    name = "the item table (model.hstu.table_placement=HOST keeps it in host memory)";
    bytes = sparse, why = plan.sparse_why;
  }
  return UsageError(absl::StrFormat(
      "the run cannot fit on CUDA device %d: at least %s planned > %s free; largest term: %s %s "
      "(%s)",
      device, HumanBytes(plan.total()), HumanBytes(static_cast<double>(free_bytes)), name,
      HumanBytes(bytes), why));
}

absl::Status CheckSamplingMemoryFits(const RunConfig& config, int64_t samples) {
  absl::StatusOr<const ModelFamily*> family = FindModelFamily(config);
  if (!family.ok() || !(*family)->estimate) return absl::OkStatus();
  const ModelSizeEstimate e = (*family)->estimate(config);
  const double n = static_cast<double>(samples);
  const std::vector<Term> terms = {
      {"parameters", 4.0 * e.parameters, e.parameters_why},
      {"samples", n * e.input_bytes_per_sample,
       absl::StrFormat("%.0f samples of %s", n, e.input_why)},
      // Classifier-free guidance doubles the batch.
      {"activations", 2 * n * e.inference_bytes_per_sample,
       absl::StrFormat("2 x %.0f samples x %s", n, e.inference_why)}};
  return CheckFits(terms, 1);
}

}  // namespace tessera
