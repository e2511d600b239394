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

struct Term {
  std::string name;
  double bytes;
  std::string why;  // which config values make it
};

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

}  // namespace

absl::Status CheckTrainingMemoryFits(const RunConfig& config, int world_size, int local_ranks) {
  absl::StatusOr<const ModelFamily*> family = FindModelFamily(config);
  if (!family.ok() || !(*family)->estimate) return absl::OkStatus();
  const ModelSizeEstimate e = (*family)->estimate(config);
  // fp32 values, gradients, AdamW m and v (and the EMA), shared over at most
  // the world's ranks.
  const double copies = 4 + (config.optim().ema_decay() > 0 ? 1 : 0);
  const double ranks = std::max(1, world_size);
  const double dp = std::max<int64_t>(1, DataParallelSize(config, world_size));
  const double micro = std::max<double>(
      1, config.train().micro_batch() > 0 ? config.train().micro_batch()
                                          : config.train().global_batch() / dp);
  const std::vector<Term> terms = {
      {"parameters, gradients and optimizer state", 4.0 * copies * e.parameters / ranks,
       e.parameters_why},
      {"activations", micro * e.activation_bytes_per_sample / ranks,
       absl::StrFormat("micro-batch %.0f x %s", micro, e.activations_why)},
      {"prefetched batches", (config.data().prefetch() + 1.0) * micro * e.input_bytes_per_sample,
       absl::StrFormat("(data.prefetch %d + 1) x micro-batch %.0f x %s", config.data().prefetch(),
                       micro, e.input_why)}};
  return CheckFits(terms, std::max(1, local_ranks));
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
