#include "launch/memory_fit.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/base/errors.h"
#include "runtime/train/memory.h"

namespace tessera {
namespace {

struct Term {
  std::string name;
  double bytes;
  std::string why;  // which config values make it
};

std::string HumanBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (bytes >= 1024 && u < 6) {
    bytes /= 1024;
    ++u;
  }
  return absl::StrFormat("%.1f %s", bytes, units[u]);
}

// Routed expert hidden width as the model uses it (0 means 4 * hidden).
double ExpertHidden(const DitMoeConfig& m) {
  return m.expert_hidden() > 0 ? m.expert_hidden() : 4.0 * m.hidden_size();
}

// A lower bound on DiT-MoE's parameter count: per block attention (4 D^2),
// adaLN (6 D^2) and the routed SwiGLU experts (E * 3 * D * H); the label
// and timestep embeddings.
double DitMoeParameters(const DitMoeConfig& m) {
  const double d = m.hidden_size();
  const double block = 10.0 * d * d + m.num_experts() * 3.0 * d * ExpertHidden(m);
  return m.depth() * block + (m.num_classes() + 1.0) * d + m.frequency_embedding_size() * d;
}

std::string ParameterWhy(const DitMoeConfig& m, double parameters) {
  return absl::StrFormat(
      "%.3g parameters: hidden_size %d, depth %d, num_experts %d, expert hidden %.0f, "
      "num_classes %d, frequency_embedding_size %d",
      parameters, m.hidden_size(), m.depth(), m.num_experts(), ExpertHidden(m), m.num_classes(),
      m.frequency_embedding_size());
}

double TokensPerImage(const DitMoeConfig& m) {
  const double side = static_cast<double>(m.input_size()) / std::max(1, m.patch_size());
  return side * side;
}

double ImageBytes(const DitMoeConfig& m) {
  return 4.0 * m.in_channels() * m.input_size() * static_cast<double>(m.input_size());
}

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
  if (!config.has_dit_moe()) return absl::OkStatus();
  const DitMoeConfig& m = config.dit_moe();
  const double parameters = DitMoeParameters(m);
  // fp32 values, gradients, AdamW m and v (and the EMA), shared over at most
  // the world's ranks.
  const double copies = 4 + (config.optim().ema_decay() > 0 ? 1 : 0);
  const double ranks = std::max(1, world_size);
  const double dp = std::max<int64_t>(1, DataParallelSize(config, world_size));
  const double micro = std::max<double>(
      1, config.train().micro_batch() > 0 ? config.train().micro_batch()
                                          : config.train().global_batch() / dp);
  const std::vector<Term> terms = {
      {"parameters, gradients and optimizer state", 4.0 * copies * parameters / ranks,
       ParameterWhy(m, parameters)},
      // At least one [tokens, hidden] activation per block kept for backward.
      {"activations", 4.0 * micro * TokensPerImage(m) * m.hidden_size() * m.depth() / ranks,
       absl::StrFormat("micro-batch %.0f x %.0f tokens x hidden_size %d x depth %d", micro,
                       TokensPerImage(m), m.hidden_size(), m.depth())},
      {"prefetched batches", (config.data().prefetch() + 1.0) * micro * ImageBytes(m),
       absl::StrFormat("(data.prefetch %d + 1) x micro-batch %.0f x %d x %d x %d fp32",
                       config.data().prefetch(), micro, m.in_channels(), m.input_size(),
                       m.input_size())}};
  return CheckFits(terms, std::max(1, local_ranks));
}

absl::Status CheckSamplingMemoryFits(const RunConfig& config, int64_t per_class) {
  if (!config.has_dit_moe()) return absl::OkStatus();
  const DitMoeConfig& m = config.dit_moe();
  const double parameters = DitMoeParameters(m);
  const double images = static_cast<double>(per_class) * m.num_classes();
  const std::vector<Term> terms = {
      {"parameters", 4.0 * parameters, ParameterWhy(m, parameters)},
      {"sample grid", images * ImageBytes(m),
       absl::StrFormat("--per-class %d x num_classes %d images of %d x %d x %d fp32", per_class,
                       m.num_classes(), m.in_channels(), m.input_size(), m.input_size())},
      // Classifier-free guidance doubles each class's batch.
      {"activations", 4.0 * 2 * per_class * TokensPerImage(m) * m.hidden_size(),
       absl::StrFormat("2 x --per-class %d x %.0f tokens x hidden_size %d", per_class,
                       TokensPerImage(m), m.hidden_size())}};
  return CheckFits(terms, 1);
}

}  // namespace tessera
