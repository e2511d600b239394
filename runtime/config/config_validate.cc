// Validation of a run config against the world size. Every rule is checked
// and every failure reported, so a user fixes a config in one round trip.
// The rules are listed, with the same wording, in docs/config.md.
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/base/errors.h"
#include "runtime/config/config.h"

namespace tessera {
namespace {

// "name=value", the form every message uses to point at a field.
template <typename T>
std::string Field(absl::string_view name, T value) {
  return absl::StrCat(name, "=", value);
}
std::string Field(absl::string_view name, const std::string& value) {
  constexpr size_t kQuoted = 120;  // a 50 MB value stays a one-line message
  if (value.size() <= kQuoted) return absl::StrCat(name, "=\"", value, "\"");
  return absl::StrCat(name, "=\"", value.substr(0, kQuoted), "…\" (", value.size(), " bytes)");
}

class Checker {
 public:
  // Records `message` when `ok` is false. Conditions are written so that NaN
  // fails them.
  void Expect(bool ok, std::string message) {
    if (!ok) failures_.push_back(std::move(message));
  }
  absl::Status Result() const {
    if (failures_.empty()) return absl::OkStatus();
    return UsageError(absl::StrJoin(failures_, "; "));
  }

 private:
  std::vector<std::string> failures_;
};

void CheckCheckpoint(const CheckpointConfig& c, Checker& check) {
  check.Expect(c.every() >= 0,
               absl::StrCat("checkpoint.every=", c.every(), " must be >= 0 (0: never)"));
  check.Expect(c.keep_last() >= 0,
               absl::StrCat("checkpoint.keep_last=", c.keep_last(), " must be >= 0 (0: all)"));
}

// Test-only fault injection: a rank, a step and a phase.
void CheckFault(const FaultConfig& f, int world_size, Checker& check) {
  for (const auto& [name, rank] : {std::pair<const char*, int>{"kill_rank", f.kill_rank()},
                                   {"hang_rank", f.hang_rank()}}) {
    check.Expect(rank >= -1 && rank < world_size,
                 absl::StrCat("fault.", name, "=", rank, " must be -1 (off) or a rank below the "
                              "world size ", world_size));
  }
  check.Expect(f.corrupt_write() >= -1 && f.corrupt_write() < world_size,
               absl::StrCat("fault.corrupt_write=", f.corrupt_write(),
                            " must be -1 (off) or a rank below the world size ", world_size));
  const bool armed = f.kill_rank() >= 0 || f.hang_rank() >= 0 || f.corrupt_write() >= 0;
  check.Expect(!armed || f.at_step() >= 1,
               absl::StrCat("fault.at_step=", f.at_step(),
                            " must be >= 1 when fault.kill_rank, fault.hang_rank or "
                            "fault.corrupt_write is set"));
  const std::string& phase = f.at_phase();
  check.Expect(phase.empty() || phase == "forward" || phase == "backward" ||
                   phase == "reduce" || phase == "optimizer" || phase == "save",
               absl::StrCat("fault.at_phase=\"", phase,
                            "\" must be one of \"forward\" (the default), \"backward\", "
                            "\"reduce\", \"optimizer\", \"save\""));
}

void CheckDitMoe(const DitMoeConfig& m, Checker& check) {
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
               {"num_experts", m.num_experts(), 4096},
               {"frequency_embedding_size", m.frequency_embedding_size(), 65536}};
  bool sizes_ok = true;
  for (const auto& size : sizes) {
    const bool ok = size.value > 0;
    sizes_ok = sizes_ok && ok && size.value <= size.limit;
    const std::string field = Field(absl::StrCat("model.dit_moe.", size.name), size.value);
    check.Expect(ok, absl::StrCat(field, " must be positive"));
    check.Expect(size.value <= size.limit, absl::StrCat(field, " must be <= ", size.limit));
  }
  check.Expect(m.expert_hidden() <= (1 << 20) && m.shared_expert_hidden() <= (1 << 20),
               absl::StrCat(Field("model.dit_moe.expert_hidden", m.expert_hidden()), " and ",
                            Field("model.dit_moe.shared_expert_hidden", m.shared_expert_hidden()),
                            " must be <= 1048576"));
  check.Expect(m.expert_hidden() >= 0,
               absl::StrCat(Field("model.dit_moe.expert_hidden", m.expert_hidden()),
                            " must be >= 0 (0 means 4 * hidden_size)"));
  check.Expect(
      m.shared_expert_hidden() >= -1,
      absl::StrCat(Field("model.dit_moe.shared_expert_hidden", m.shared_expert_hidden()),
                   " must be >= -1 (-1 disables the shared expert, 0 means 2 * hidden_size)"));
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
  check.Expect(
      m.experts_per_token() >= 1 && m.experts_per_token() <= m.num_experts(),
      absl::StrCat(Field("model.dit_moe.experts_per_token", m.experts_per_token()),
                   " must be in [1, ", Field("model.dit_moe.num_experts", m.num_experts()), "]"));
  check.Expect(m.class_dropout_prob() >= 0 && m.class_dropout_prob() < 1,
               absl::StrCat(Field("model.dit_moe.class_dropout_prob", m.class_dropout_prob()),
                            " must be in [0, 1)"));
  check.Expect(m.capacity_factor() >= 0,
               absl::StrCat(Field("model.dit_moe.capacity_factor", m.capacity_factor()),
                            " must be >= 0 (0 means dropless)"));
  check.Expect(m.balance_loss_coef() >= 0,
               absl::StrCat(Field("model.dit_moe.balance_loss_coef", m.balance_loss_coef()),
                            " must be >= 0"));
  check.Expect(
      m.sample_steps() >= 1,
      absl::StrCat(Field("model.dit_moe.sample_steps", m.sample_steps()), " must be >= 1"));
  check.Expect(m.cfg_scale() >= 0,
               absl::StrCat(Field("model.dit_moe.cfg_scale", m.cfg_scale()), " must be >= 0"));
}

void CheckParallel(const RunConfig& config, int world_size, Checker& check) {
  const ParallelConfig& p = config.parallel();
  bool sizes_ok = true;
  for (const auto& [name, value] : {std::pair<const char*, int>{"tp", p.tp()},
                                    {"sp", p.sp()},
                                    {"ep", p.ep()},
                                    {"etp", p.etp()}}) {
    sizes_ok = sizes_ok && value >= 1;
    check.Expect(value >= 1,
                 absl::StrCat(Field(absl::StrCat("parallel.", name), value), " must be >= 1"));
  }
  check.Expect(p.zero_stage() == 0 || p.zero_stage() == 1,
               absl::StrCat(Field("parallel.zero_stage", p.zero_stage()), " must be 0 or 1"));
  check.Expect(p.collective_timeout_s() > 0,
               absl::StrCat(Field("parallel.collective_timeout_s", p.collective_timeout_s()),
                            " must be > 0"));
  if (!sizes_ok) return;

  const int64_t tp_sp = static_cast<int64_t>(p.tp()) * p.sp();
  check.Expect(world_size % tp_sp == 0,
               absl::StrCat(Field("parallel.tp", p.tp()), " * ", Field("parallel.sp", p.sp()),
                            " = ", tp_sp, " must divide the world size ", world_size));
  const int64_t ep_etp = static_cast<int64_t>(p.ep()) * p.etp();
  check.Expect(world_size % ep_etp == 0,
               absl::StrCat(Field("parallel.ep", p.ep()), " * ", Field("parallel.etp", p.etp()),
                            " = ", ep_etp, " must divide the world size ", world_size));
  check.Expect(
      p.etp() == 1 || p.etp() == p.tp(),
      absl::StrCat(Field("parallel.etp", p.etp()), " must be 1 or ", Field("parallel.tp", p.tp())));

  if (!config.has_dit_moe()) return;
  const DitMoeConfig& m = config.dit_moe();
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
  // Routed experts' SwiGLU hidden width splits over etp.
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
  // The shared expert is a dense SwiGLU: its hidden width splits over tp.
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

void CheckTrain(const RunConfig& config, Checker& check) {
  const TrainConfig& t = config.train();
  check.Expect(!t.run_dir().empty(), "train.run_dir must not be empty");
  check.Expect(t.run_dir().size() <= 4096, absl::StrCat(Field("train.run_dir", t.run_dir()),
                                                        " must be at most 4096 bytes"));
  check.Expect(t.global_batch() <= (int64_t{1} << 24),
               absl::StrCat(Field("train.global_batch", t.global_batch()), " must be <= 16777216"));
  check.Expect(t.threads() <= 1024,
               absl::StrCat(Field("train.threads", t.threads()), " must be <= 1024"));
  check.Expect(t.sample_grid_per_class() <= 1024,
               absl::StrCat(Field("train.sample_grid_per_class", t.sample_grid_per_class()),
                            " must be <= 1024"));
  check.Expect(t.steps() >= 1, absl::StrCat(Field("train.steps", t.steps()), " must be >= 1"));
  check.Expect(t.log_every() >= 1,
               absl::StrCat(Field("train.log_every", t.log_every()), " must be >= 1"));
  check.Expect(t.global_batch() >= 1,
               absl::StrCat(Field("train.global_batch", t.global_batch()), " must be >= 1"));
  check.Expect(t.micro_batch() >= 0, absl::StrCat(Field("train.micro_batch", t.micro_batch()),
                                                  " must be >= 0 (0 means global_batch / dp)"));
  check.Expect(t.threads() >= 0, absl::StrCat(Field("train.threads", t.threads()),
                                              " must be >= 0 (0 means all cores)"));
  check.Expect(t.progress() == "auto" || t.progress() == "on" || t.progress() == "off",
               absl::StrCat(Field("train.progress", t.progress()), " must be auto, on or off"));
  check.Expect(t.sample_grid_per_class() >= 0,
               absl::StrCat(Field("train.sample_grid_per_class", t.sample_grid_per_class()),
                            " must be >= 0"));

}

// How the global batch splits over the data-parallel replicas.
void CheckBatchSplit(const RunConfig& config, int world_size, Checker& check) {
  const TrainConfig& t = config.train();
  const ParallelConfig& p = config.parallel();
  if (p.tp() < 1 || p.sp() < 1 || world_size % (static_cast<int64_t>(p.tp()) * p.sp()) != 0 ||
      t.global_batch() < 1) {
    return;  // dp is undefined; the parallel rules already said why
  }
  const int64_t dp = DataParallelSize(config, world_size);
  const bool batch_splits = t.global_batch() % dp == 0;
  check.Expect(batch_splits, absl::StrCat(Field("train.global_batch", t.global_batch()),
                                          " must be divisible by the data-parallel size dp = ",
                                          "world size / (tp * sp) = ", dp));
  if (batch_splits && t.micro_batch() > 0) {
    const int64_t per_replica = t.global_batch() / dp;
    check.Expect(per_replica % t.micro_batch() == 0,
                 absl::StrCat(Field("train.micro_batch", t.micro_batch()),
                              " must divide train.global_batch / dp = ", per_replica));
  }
}

void CheckOptim(const OptimConfig& o, Checker& check) {
  check.Expect(o.lr() > 0, absl::StrCat(Field("optim.lr", o.lr()), " must be > 0"));
  check.Expect(o.min_lr() >= 0 && o.min_lr() <= o.lr(),
               absl::StrCat(Field("optim.min_lr", o.min_lr()), " must be in [0, ",
                            Field("optim.lr", o.lr()), "]"));
  check.Expect(o.warmup_steps() >= 0,
               absl::StrCat(Field("optim.warmup_steps", o.warmup_steps()), " must be >= 0"));
  check.Expect(o.beta1() >= 0 && o.beta1() < 1,
               absl::StrCat(Field("optim.beta1", o.beta1()), " must be in [0, 1)"));
  check.Expect(o.beta2() >= 0 && o.beta2() < 1,
               absl::StrCat(Field("optim.beta2", o.beta2()), " must be in [0, 1)"));
  check.Expect(o.eps() > 0, absl::StrCat(Field("optim.eps", o.eps()), " must be > 0"));
  check.Expect(o.weight_decay() >= 0,
               absl::StrCat(Field("optim.weight_decay", o.weight_decay()), " must be >= 0"));
  check.Expect(o.grad_clip() >= 0, absl::StrCat(Field("optim.grad_clip", o.grad_clip()),
                                                " must be >= 0 (0 disables clipping)"));
  check.Expect(o.ema_decay() >= 0 && o.ema_decay() < 1,
               absl::StrCat(Field("optim.ema_decay", o.ema_decay()),
                            " must be in [0, 1) (0 disables the EMA)"));
}

void CheckData(const RunConfig& config, Checker& check) {
  const DataConfig& d = config.data();
  check.Expect(!d.dir().empty(), "data.dir must not be empty");
  if (config.has_dit_moe()) {
    check.Expect(d.schema() == "images", absl::StrCat(Field("data.schema", d.schema()),
                                                      " must be \"images\" for model.dit_moe"));
  }
  check.Expect(d.prefetch() >= 1,
               absl::StrCat(Field("data.prefetch", d.prefetch()), " must be >= 1"));
  check.Expect(d.prefetch() <= 64,
               absl::StrCat(Field("data.prefetch", d.prefetch()), " must be <= 64"));
}

}  // namespace

absl::Status ValidateRunConfig(const RunConfig& config, int world_size) {
  if (world_size < 1) {
    return UsageError(absl::StrCat("world size ", world_size, " must be >= 1"));
  }
  Checker check;
  check.Expect(config.model_case() != RunConfig::MODEL_NOT_SET,
               "a model must be set (e.g. `dit_moe { }` in the config, or "
               "--set model.dit_moe.depth=12)");
  if (config.has_dit_moe()) CheckDitMoe(config.dit_moe(), check);
  CheckParallel(config, world_size, check);
  CheckTrain(config, check);
  CheckBatchSplit(config, world_size, check);
  CheckOptim(config.optim(), check);
  CheckData(config, check);
  CheckCheckpoint(config.checkpoint(), check);
  CheckFault(config.fault(), world_size, check);
  return check.Result();
}

absl::Status ValidateLayout(const RunConfig& config, int world_size) {
  if (world_size < 1) {
    return UsageError(absl::StrCat("world size ", world_size, " must be >= 1"));
  }
  Checker check;
  CheckParallel(config, world_size, check);
  CheckBatchSplit(config, world_size, check);
  return check.Result();
}

}  // namespace tessera
