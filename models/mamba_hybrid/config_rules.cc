// The Mamba hybrid's config rules: its sizes, the layer pattern, the
// mixer's and attention's divisibility, the initialization ranges, the MoE
// layers' config, the layout (what tp, sp, Megatron SP and ep must divide)
// and the schema.
#include "models/mamba_hybrid/config_rules.h"

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "models/mamba_hybrid/mlp.h"
#include "models/mamba_hybrid/pattern.h"

namespace tessera::mamba_hybrid {
namespace {

std::string F(const char* name, double value) {
  return Field(absl::StrCat("model.mamba_hybrid.", name), value);
}

// Every size positive and below a limit far above any model trained here.
bool CheckSizes(const MambaHybridConfig& m, ConfigChecker& check) {
  const struct {
    const char* name;
    int64_t value, limit;
  } sizes[] = {{"vocab_size", m.vocab_size(), 1 << 24},  {"hidden_size", m.hidden_size(), 65536},
               {"num_layers", m.num_layers(), 1024},      {"seq_len", m.seq_len(), 1 << 24},
               {"state_dim", m.state_dim(), 4096},        {"head_dim", m.head_dim(), 4096},
               {"num_groups", m.num_groups(), 4096},      {"expand", m.expand(), 64},
               {"conv_width", m.conv_width(), 64},        {"chunk_size", m.chunk_size(), 4096},
               {"num_heads", m.num_heads(), 4096}};
  bool ok = true;
  for (const auto& size : sizes) {
    const bool fine = size.value > 0 && size.value <= size.limit;
    ok = ok && fine;
    check.Expect(fine, absl::StrCat(F(size.name, static_cast<double>(size.value)),
                                    " must be in [1, ", size.limit, "]"));
  }
  check.Expect(m.num_query_groups() >= 0 && m.num_query_groups() <= 4096,
               absl::StrCat(F("num_query_groups", m.num_query_groups()),
                            " must be in [0, 4096] (0 means num_heads)"));
  check.Expect(m.ffn_hidden_size() >= 0 && m.ffn_hidden_size() <= (1 << 20),
               absl::StrCat(F("ffn_hidden_size", m.ffn_hidden_size()),
                            " must be in [0, 1048576] (0 means 4 * hidden_size)"));
  return ok && m.num_query_groups() >= 0;
}

void CheckShapes(const MambaHybridConfig& m, ConfigChecker& check) {
  const int64_t d_inner = static_cast<int64_t>(m.expand()) * m.hidden_size();
  const bool heads_divide = d_inner % m.head_dim() == 0;
  check.Expect(heads_divide, absl::StrCat(F("head_dim", m.head_dim()), " must divide expand * ",
                                          F("hidden_size", m.hidden_size()), " = ", d_inner));
  if (heads_divide) {
    const int64_t heads = d_inner / m.head_dim();
    check.Expect(heads % m.num_groups() == 0,
                 absl::StrCat(F("num_groups", m.num_groups()),
                              " must divide the Mamba heads expand * hidden_size / head_dim = ",
                              heads));
  }
  check.Expect(m.hidden_size() % m.num_heads() == 0,
               absl::StrCat(F("num_heads", m.num_heads()), " must divide ",
                            F("hidden_size", m.hidden_size())));
  const int kv = m.num_query_groups() > 0 ? m.num_query_groups() : m.num_heads();
  check.Expect(m.num_heads() % kv == 0, absl::StrCat(F("num_query_groups", kv), " must divide ",
                                                     F("num_heads", m.num_heads())));
  check.Expect(m.dt_min() > 0 && m.dt_min() <= m.dt_max() && m.dt_init_floor() >= 0,
               absl::StrCat(F("dt_min", m.dt_min()), " and ", F("dt_max", m.dt_max()),
                            " must satisfy 0 < dt_min <= dt_max, and ",
                            F("dt_init_floor", m.dt_init_floor()), " >= 0"));
  check.Expect(m.a_init_min() > 0 && m.a_init_min() <= m.a_init_max(),
               absl::StrCat(F("a_init_min", m.a_init_min()), " and ",
                            F("a_init_max", m.a_init_max()), " must satisfy 0 < min <= max"));
  check.Expect(m.norm_eps() > 0, absl::StrCat(F("norm_eps", m.norm_eps()), " must be positive"));
  check.Expect(m.rope_base() >= 0 && m.rope_base() < 1e300,
               absl::StrCat(F("rope_base", m.rope_base()), " must be >= 0 (0: no RoPE)"));
  if (m.rope_base() > 0 && m.hidden_size() % m.num_heads() == 0) {
    const int64_t head_dim = m.hidden_size() / m.num_heads();
    check.Expect(head_dim % 2 == 0,
                 absl::StrCat("the attention head dim ", F("hidden_size", m.hidden_size()), " / ",
                              F("num_heads", m.num_heads()), " = ", head_dim,
                              " must be even with ", F("rope_base", m.rope_base()),
                              " (RoPE rotates pairs of dims)"));
  }
}

// Tensor parallelism splits whole Mamba heads and groups, attention heads
// and key/value groups, MLP columns and the vocabulary over tp.
void CheckTensorSplits(const MambaHybridConfig& m, const std::string& pattern, int tp,
                       ConfigChecker& check) {
  const std::string by_tp = absl::StrCat(" must be divisible by ", Field("parallel.tp", tp));
  const auto has = [&pattern](char kind) { return pattern.find(kind) != std::string::npos; };
  if (has(kMamba)) {
    const int64_t heads = static_cast<int64_t>(m.expand()) * m.hidden_size() / m.head_dim();
    check.Expect(heads % tp == 0,
                 absl::StrCat("the Mamba heads expand * hidden_size / head_dim = ", heads, by_tp));
    check.Expect(m.num_groups() % tp == 0, F("num_groups", m.num_groups()) + by_tp);
  }
  if (has(kAttention)) {
    const int kv = m.num_query_groups() > 0 ? m.num_query_groups() : m.num_heads();
    check.Expect(m.num_heads() % tp == 0, F("num_heads", m.num_heads()) + by_tp);
    check.Expect(kv % tp == 0, F("num_query_groups", kv) + by_tp);
  }
  if (has('-')) {
    const int64_t ffn = m.ffn_hidden_size() > 0 ? m.ffn_hidden_size() : 4LL * m.hidden_size();
    check.Expect(ffn % tp == 0, absl::StrCat(F("ffn_hidden_size", ffn), by_tp));
  }
  // A vocabulary larger than the data's is allowed (its extra ids are never
  // targets), so the message says which size to pad to, as Megatron pads.
  const int64_t padded = (int64_t{m.vocab_size()} + tp - 1) / tp * tp;
  check.Expect(m.vocab_size() % tp == 0,
               F("vocab_size", m.vocab_size()) + by_tp +
                   absl::StrCat(" (the vocabulary is split over tp; pad it: --set "
                                "model.mamba_hybrid.vocab_size=",
                                padded, " trains the same data)"));
}

// model.mamba_hybrid.mamba_sp_mode=ALL_TO_ALL spreads each tp rank's Mamba
// heads and groups over sp.
void CheckMambaHeadSplits(const MambaHybridConfig& m, int tp, int sp, ConfigChecker& check) {
  const std::string why = absl::StrCat(
      " must be divisible by parallel.tp * parallel.sp = ", tp * sp,
      " (model.mamba_hybrid.mamba_sp_mode=ALL_TO_ALL spreads each tp rank's heads and groups "
      "over sp)");
  const int64_t heads = static_cast<int64_t>(m.expand()) * m.hidden_size() / m.head_dim();
  check.Expect(heads % (tp * sp) == 0,
               absl::StrCat("the Mamba heads expand * hidden_size / head_dim = ", heads, why));
  check.Expect(m.num_groups() % (tp * sp) == 0, F("num_groups", m.num_groups()) + why);
}

// Sequence parallelism cuts every sample into sp shards (of tp chunks under
// Megatron SP); passing the state, each Mamba shard needs conv_width - 1
// positions for the next one's halo; by all-to-all, whole heads and groups
// per sp rank; and Ulysses spreads each tp rank's attention heads over sp.
void CheckSequenceSplits(const MambaHybridConfig& m, const std::string& pattern,
                         const ParallelConfig& p, ConfigChecker& check) {
  const int sp = p.sp(), tp = p.tp();
  const int chunks = sp * (p.sequence_parallel() ? tp : 1);
  const bool divides = m.seq_len() % chunks == 0;
  check.Expect(divides, absl::StrCat(F("seq_len", m.seq_len()), " must be divisible by ",
                                     Field("parallel.sp", sp),
                                     p.sequence_parallel() && tp > 1
                                         ? absl::StrCat(" * parallel.tp = ", chunks,
                                                        " (Megatron SP splits each shard over tp)")
                                         : ""));
  const bool all_to_all = m.mamba_sp_mode() == MambaHybridConfig::ALL_TO_ALL;
  if (sp > 1 && all_to_all && pattern.find(kMamba) != std::string::npos) {
    CheckMambaHeadSplits(m, tp, sp, check);
  }
  if (sp > 1 && !all_to_all && divides && pattern.find(kMamba) != std::string::npos) {
    check.Expect(m.seq_len() / sp >= m.conv_width() - 1,
                 absl::StrCat(F("seq_len", m.seq_len()), " / ", Field("parallel.sp", sp),
                              " must be at least conv_width - 1 = ", m.conv_width() - 1,
                              " (each shard hands its last inputs to the next)"));
  }
  if (divides && tp > 1 && !p.sequence_parallel() && pattern.find(kMoe) != std::string::npos) {
    check.Expect(m.seq_len() % (sp * tp) == 0,
                 absl::StrCat(F("seq_len", m.seq_len()),
                              " must be divisible by parallel.sp * parallel.tp = ", sp * tp,
                              " (each tp rank routes a chunk of the positions in the E layers)"));
  }
  if (sp > 1 && pattern.find(kAttention) != std::string::npos) {
    check.Expect(m.num_heads() % (tp * sp) == 0,
                 absl::StrCat(F("num_heads", m.num_heads()),
                              " must be divisible by parallel.tp * parallel.sp = ", tp * sp,
                              " (Ulysses spreads each tp rank's heads over sp)"));
  }
}

void CheckLayout(const RunConfig& config, const std::string& pattern, ConfigChecker& check) {
  const ParallelConfig& p = config.parallel();
  const MambaHybridConfig& m = config.mamba_hybrid();
  check.Expect(p.ep() == 1 || pattern.find(kMoe) != std::string::npos,
               absl::StrCat(Field("parallel.ep", p.ep()),
                            ": model.mamba_hybrid has no expert layers to split"));
  if (p.tp() >= 1) CheckTensorSplits(m, pattern, p.tp(), check);
  if (p.tp() >= 1 && p.sp() >= 1) CheckSequenceSplits(m, pattern, p, check);
  // The head gathers the selected positions by int32 element index.
  const int64_t micro = config.train().micro_batch() > 0 ? config.train().micro_batch()
                                                         : config.train().global_batch();
  const double elements = static_cast<double>(micro) * m.seq_len() * m.hidden_size();
  check.Expect(elements < 2147483648.0,
               absl::StrCat("train.micro_batch * ", F("seq_len", m.seq_len()), " * ",
                            F("hidden_size", m.hidden_size()), " = ", elements,
                            " must be below 2^31"));
}

// E layers exactly when model.mamba_hybrid.moe is set, and its rules.
void CheckMoeLayers(const RunConfig& config, const std::string& pattern, ConfigChecker& check) {
  const MambaHybridConfig& m = config.mamba_hybrid();
  const bool has_moe_layers = pattern.find(kMoe) != std::string::npos;
  check.Expect(!has_moe_layers || m.has_moe(),
               absl::StrCat(Field("model.mamba_hybrid.pattern", pattern),
                            " has MoE layers (E): set model.mamba_hybrid.moe"));
  check.Expect(has_moe_layers || !m.has_moe(),
               absl::StrCat("model.mamba_hybrid.moe is set, but ",
                            Field("model.mamba_hybrid.pattern", pattern),
                            " has no MoE layer (E) to use it"));
  if (!has_moe_layers || !m.has_moe()) return;
  CheckMoeConfig(m.moe(), "model.mamba_hybrid.moe", config.parallel(), MoeDefaults(m), check);
  // A recomputed forward would count its routing into the step's global
  // totals a second time.
  check.Expect(!(m.recompute() && m.moe().balance_scope() == MoeConfig::GLOBAL_BATCH),
               "model.mamba_hybrid.recompute=true and model.mamba_hybrid.moe.balance_scope="
               "GLOBAL_BATCH cannot be combined (a recomputed E layer would count its "
               "routing twice)");
}

}  // namespace

MoeWidthDefaults MoeDefaults(const MambaHybridConfig& m) {
  MoeWidthDefaults defaults;
  const int64_t ffn = FfnHidden(m);
  const std::string why =
      m.ffn_hidden_size() > 0
          ? Field("model.mamba_hybrid.ffn_hidden_size", m.ffn_hidden_size())
          : absl::StrCat("4 * ", Field("model.mamba_hybrid.hidden_size", m.hidden_size()));
  defaults.expert_hidden = ffn;
  defaults.expert_hidden_why = why;
  defaults.shared_expert_hidden = ffn;
  defaults.shared_expert_hidden_why = why;
  return defaults;
}

void CheckConfig(const RunConfig& config, int /*world_size*/, ConfigChecker& check) {
  const MambaHybridConfig& m = config.mamba_hybrid();
  if (CheckSizes(m, check)) {
    CheckShapes(m, check);
    absl::StatusOr<std::string> pattern = ResolvePattern(m);
    check.Expect(pattern.ok(), std::string(pattern.status().message()));
    if (pattern.ok()) {
      CheckMoeLayers(config, *pattern, check);
      CheckLayout(config, *pattern, check);
    }
  }
  const std::string& schema = config.data().schema();
  check.Expect(schema.empty() || schema == "tokens",
               absl::StrCat(Field("data.schema", schema),
                            " must be \"tokens\" for model.mamba_hybrid"));
}

}  // namespace tessera::mamba_hybrid
