// DiT-MoE's config rules: its sizes, their splits over the layout and the
// data schema it reads. The shared sections' rules are runtime/config's;
// docs/config.md lists both with the same wording.
#include "models/dit_moe/config_rules.h"

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"

namespace tessera::dit_moe {
namespace {

void CheckSizes(const DitMoeConfig& m, ConfigChecker& check) {
  // Upper limits far above any model this runtime trains, so that a typo
  // is a message rather than hours of allocation (docs/config.md).
  const struct {
    const char* name;
    int64_t value;
    int64_t limit;
  } sizes[] = {{"input_size", m.input_size(), 4096},
               {"in_channels", m.in_channels(), 1024},
               {"patch_size", m.patch_size(), 4096},
               {"hidden_size", m.hidden_size(), 65536},
               {"depth", m.depth(), 1024},
               {"num_heads", m.num_heads(), 1024},
               {"num_classes", m.num_classes(), 1 << 20},
               {"frequency_embedding_size", m.frequency_embedding_size(), 65536}};
  bool sizes_ok = true;
  for (const auto& size : sizes) {
    const bool ok = size.value > 0;
    sizes_ok = sizes_ok && ok && size.value <= size.limit;
    const std::string field = Field(absl::StrCat("model.dit_moe.", size.name), size.value);
    check.Expect(ok, absl::StrCat(field, " must be positive"));
    check.Expect(size.value <= size.limit, absl::StrCat(field, " must be <= ", size.limit));
  }
  if (sizes_ok) {
    const bool heads_divide = m.hidden_size() % m.num_heads() == 0;
    check.Expect(heads_divide,
                 absl::StrCat(Field("model.dit_moe.num_heads", m.num_heads()), " must divide ",
                              Field("model.dit_moe.hidden_size", m.hidden_size())));
    if (heads_divide) {
      const int head_dim = m.hidden_size() / m.num_heads();
      check.Expect(head_dim % 2 == 0,
                   absl::StrCat("head dim ", Field("model.dit_moe.hidden_size", m.hidden_size()),
                                " / ", Field("model.dit_moe.num_heads", m.num_heads()), " = ",
                                head_dim, " must be even"));
    }
    check.Expect(m.input_size() % m.patch_size() == 0,
                 absl::StrCat(Field("model.dit_moe.patch_size", m.patch_size()), " must divide ",
                              Field("model.dit_moe.input_size", m.input_size())));
  }
  check.Expect(m.class_dropout_prob() >= 0 && m.class_dropout_prob() < 1,
               absl::StrCat(Field("model.dit_moe.class_dropout_prob", m.class_dropout_prob()),
                            " must be in [0, 1)"));
  check.Expect(
      m.sample_steps() >= 1,
      absl::StrCat(Field("model.dit_moe.sample_steps", m.sample_steps()), " must be >= 1"));
  check.Expect(m.cfg_scale() >= 0,
               absl::StrCat(Field("model.dit_moe.cfg_scale", m.cfg_scale()), " must be >= 0"));
  const std::string grid = Field("model.dit_moe.sample_grid_per_class", m.sample_grid_per_class());
  check.Expect(m.sample_grid_per_class() >= 0, absl::StrCat(grid, " must be >= 0"));
  check.Expect(m.sample_grid_per_class() <= 1024, absl::StrCat(grid, " must be <= 1024"));
}

// The model's splits over tp, sp, ep and etp (the layout's own rules are
// runtime/config's).
void CheckSplits(const DitMoeConfig& m, const ParallelConfig& p, ConfigChecker& check) {
  if (p.tp() < 1 || p.sp() < 1 || p.ep() < 1 || p.etp() < 1) return;  // said already
  const int64_t tp_sp = static_cast<int64_t>(p.tp()) * p.sp();
  if (m.num_heads() > 0) {
    check.Expect(m.num_heads() % tp_sp == 0,
                 absl::StrCat(Field("model.dit_moe.num_heads", m.num_heads()),
                              " must be divisible by parallel.tp * parallel.sp = ", tp_sp));
  }
  if (m.input_size() > 0 && m.patch_size() > 0 && m.input_size() % m.patch_size() == 0) {
    const int64_t side = m.input_size() / m.patch_size();
    const int64_t tokens = side * side;
    check.Expect(
        tokens % p.sp() == 0,
        absl::StrCat("tokens per image (", Field("model.dit_moe.input_size", m.input_size()), " / ",
                     Field("model.dit_moe.patch_size", m.patch_size()), ")^2 = ", tokens,
                     " must be divisible by ", Field("parallel.sp", p.sp())));
    // Under tp each sp rank's tokens shard again over tp: everywhere with
    // Megatron SP, inside the MoE layers without it.
    if (tokens % p.sp() == 0 && p.tp() > 1) {
      check.Expect(tokens % tp_sp == 0,
                   absl::StrCat("tokens per image (",
                                Field("model.dit_moe.input_size", m.input_size()), " / ",
                                Field("model.dit_moe.patch_size", m.patch_size()), ")^2 = ",
                                tokens, " must be divisible by parallel.tp * parallel.sp = ",
                                tp_sp, " when parallel.tp > 1"));
    }
  }
  if (m.hidden_size() <= 0) return;
  const int64_t hidden = m.hidden_size();
  // adaLN modulation is column-parallel: its hidden-wide chunks split over tp.
  check.Expect(hidden % p.tp() == 0,
               absl::StrCat(Field("model.dit_moe.hidden_size", hidden), " must be divisible by ",
                            Field("parallel.tp", p.tp())));
}

}  // namespace

MoeWidthDefaults MoeDefaults(const DitMoeConfig& m) {
  MoeWidthDefaults defaults;
  const std::string hidden = Field("model.dit_moe.hidden_size", m.hidden_size());
  defaults.expert_hidden = 4 * static_cast<int64_t>(m.hidden_size());
  defaults.expert_hidden_why = absl::StrCat("4 * ", hidden);
  defaults.shared_expert_hidden = 2 * static_cast<int64_t>(m.hidden_size());
  defaults.shared_expert_hidden_why = absl::StrCat("2 * ", hidden);
  return defaults;
}

void CheckConfig(const RunConfig& config, int /*world_size*/, ConfigChecker& check) {
  const DitMoeConfig& m = config.dit_moe();
  CheckSizes(m, check);
  CheckSplits(m, config.parallel(), check);
  CheckMoeConfig(m.moe(), "model.dit_moe.moe", config.parallel(), MoeDefaults(m), check);
  const std::string& schema = config.data().schema();
  check.Expect(schema.empty() || schema == "images",
               absl::StrCat(Field("data.schema", schema), " must be \"images\" for model.dit_moe"));
}

}  // namespace tessera::dit_moe
