// ResolveMesh: every divisibility rule the parallel layers rely on, checked
// before any work. Messages depend on the config and the world size only, so
// every rank reports the same text. Rules that ValidateRunConfig also checks
// use its exact wording; docs/parallelism.md lists them all with the reason
// each split needs them.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "parallel/mesh/mesh.h"
#include "runtime/base/errors.h"

namespace tessera::parallel {
namespace {

std::string Field(absl::string_view name, int64_t value) { return absl::StrCat(name, "=", value); }

class Checker {
 public:
  void Expect(bool ok, std::string message) {
    if (!ok) failures_.push_back(std::move(message));
  }
  bool ok() const { return failures_.empty(); }
  absl::Status Result() const {
    if (failures_.empty()) return absl::OkStatus();
    return UsageError(absl::StrJoin(failures_, "; "));
  }

 private:
  std::vector<std::string> failures_;
};

// Splits of DiT-MoE's sizes: attention heads over tp x sp, the sequence over
// sp (and tp under Megatron SP), hidden widths over tp or etp. Sizes that are
// not positive are ValidateRunConfig's to report; their rules are skipped.
void CheckDitMoe(const DitMoeConfig& m, const ParallelConfig& p, Checker& check) {
  const int64_t tp_sp = static_cast<int64_t>(p.tp()) * p.sp();
  if (m.num_experts() > 0) {
    check.Expect(m.num_experts() % p.ep() == 0,
                 absl::StrCat(Field("parallel.ep", p.ep()), " must divide ",
                              Field("model.dit_moe.num_experts", m.num_experts())));
  }
  if (m.num_heads() > 0) {
    check.Expect(m.num_heads() % tp_sp == 0,
                 absl::StrCat(Field("model.dit_moe.num_heads", m.num_heads()),
                              " must be divisible by parallel.tp * parallel.sp = ", tp_sp));
  }
  if (m.input_size() > 0 && m.patch_size() > 0 && m.input_size() % m.patch_size() == 0) {
    const int64_t side = m.input_size() / m.patch_size();
    const int64_t tokens = side * side;
    const std::string tokens_text =
        absl::StrCat("tokens per image (", Field("model.dit_moe.input_size", m.input_size()), " / ",
                     Field("model.dit_moe.patch_size", m.patch_size()), ")^2 = ", tokens);
    const bool sp_ok = tokens % p.sp() == 0;
    check.Expect(sp_ok,
                 absl::StrCat(tokens_text, " must be divisible by ", Field("parallel.sp", p.sp())));
    // Megatron SP shards each sp rank's tokens / sp again over tp.
    if (sp_ok && p.sequence_parallel() && p.tp() > 1) {
      check.Expect(tokens % tp_sp == 0,
                   absl::StrCat(tokens_text, " must be divisible by parallel.tp * parallel.sp = ",
                                tp_sp, " when parallel.sequence_parallel is on"));
    }
  }
  if (m.hidden_size() <= 0) return;
  const int64_t hidden = m.hidden_size();
  // adaLN modulation is column-parallel: each of its hidden-wide chunks
  // (shift, scale, gate) is split over tp.
  check.Expect(hidden % p.tp() == 0,
               absl::StrCat(Field("model.dit_moe.hidden_size", hidden), " must be divisible by ",
                            Field("parallel.tp", p.tp())));
  // Routed experts' SwiGLU hidden width is split over etp.
  if (m.expert_hidden() >= 0) {
    const int64_t width = m.expert_hidden() > 0 ? m.expert_hidden() : 4 * hidden;
    const std::string name =
        m.expert_hidden() > 0
            ? Field("model.dit_moe.expert_hidden", width)
            : absl::StrCat("expert hidden width 4 * ", Field("model.dit_moe.hidden_size", hidden),
                           " = ", width, " (model.dit_moe.expert_hidden=0)");
    check.Expect(width % p.etp() == 0,
                 absl::StrCat(name, " must be divisible by ", Field("parallel.etp", p.etp())));
  }
  // The shared expert is a dense SwiGLU: its hidden width is split over tp.
  if (m.shared_expert_hidden() >= 0) {
    const int64_t width = m.shared_expert_hidden() > 0 ? m.shared_expert_hidden() : 2 * hidden;
    const std::string name = m.shared_expert_hidden() > 0
                                 ? Field("model.dit_moe.shared_expert_hidden", width)
                                 : absl::StrCat("shared expert hidden width 2 * ",
                                                Field("model.dit_moe.hidden_size", hidden), " = ",
                                                width, " (model.dit_moe.shared_expert_hidden=0)");
    check.Expect(width % p.tp() == 0,
                 absl::StrCat(name, " must be divisible by ", Field("parallel.tp", p.tp())));
  }
}

}  // namespace

absl::StatusOr<MeshShape> ResolveMesh(const RunConfig& config, int world_size) {
  if (world_size < 1) {
    return UsageError(absl::StrCat("world size ", world_size, " must be >= 1"));
  }
  const ParallelConfig& p = config.parallel();
  Checker check;
  for (const auto& [name, value] : {std::pair<const char*, int>{"tp", p.tp()},
                                    {"sp", p.sp()},
                                    {"ep", p.ep()},
                                    {"etp", p.etp()}}) {
    check.Expect(value >= 1,
                 absl::StrCat(Field(absl::StrCat("parallel.", name), value), " must be >= 1"));
  }
  if (!check.ok()) return check.Result();  // nothing below is defined without positive sizes

  const int64_t tp_sp = static_cast<int64_t>(p.tp()) * p.sp();
  const bool dense_fits = world_size % tp_sp == 0;
  check.Expect(dense_fits,
               absl::StrCat(Field("parallel.tp", p.tp()), " * ", Field("parallel.sp", p.sp()),
                            " = ", tp_sp, " must divide the world size ", world_size));
  const int64_t ep_etp = static_cast<int64_t>(p.ep()) * p.etp();
  check.Expect(world_size % ep_etp == 0,
               absl::StrCat(Field("parallel.ep", p.ep()), " * ", Field("parallel.etp", p.etp()),
                            " = ", ep_etp, " must divide the world size ", world_size));
  check.Expect(
      p.etp() == 1 || p.etp() == p.tp(),
      absl::StrCat(Field("parallel.etp", p.etp()), " must be 1 or ", Field("parallel.tp", p.tp())));
  if (config.has_dit_moe()) CheckDitMoe(config.dit_moe(), p, check);

  const int64_t global_batch = config.train().global_batch();
  if (dense_fits && global_batch >= 1) {
    const int64_t dp = world_size / tp_sp;
    check.Expect(global_batch % dp == 0,
                 absl::StrCat(Field("train.global_batch", global_batch),
                              " must be divisible by the data-parallel size dp = ",
                              "world size / (tp * sp) = ", dp));
  }
  if (!check.ok()) return check.Result();

  MeshShape shape;
  shape.world = world_size;
  shape.tp = p.tp();
  shape.sp = p.sp();
  shape.dp = static_cast<int>(world_size / tp_sp);
  shape.ep = p.ep();
  shape.etp = p.etp();
  shape.edp = static_cast<int>(world_size / ep_etp);
  return shape;
}

}  // namespace tessera::parallel
