// Validation of a run config's shared sections against the world size. Every
// rule is checked and every failure reported, so a user fixes a config in one
// round trip. A model's own rules live with it (models/<name>/, through
// models/registry.h). The rules are listed, with the same wording, in
// docs/config.md.
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/base/errors.h"
#include "runtime/config/config.h"
#include "runtime/config/config_check.h"

namespace tessera {

std::string Field(absl::string_view name, const std::string& value) {
  constexpr size_t kQuoted = 120;  // a 50 MB value stays a one-line message
  if (value.size() <= kQuoted) return absl::StrCat(name, "=\"", value, "\"");
  return absl::StrCat(name, "=\"", value.substr(0, kQuoted), "…\" (", value.size(), " bytes)");
}

absl::Status ConfigChecker::Result() const {
  if (failures_.empty()) return absl::OkStatus();
  return UsageError(absl::StrJoin(failures_, "; "));
}

std::string ModelFieldName(const RunConfig& config) {
  const auto* oneof = RunConfig::descriptor()->FindOneofByName("model");
  const auto* reflection = config.GetReflection();
  if (const auto* field = reflection->GetOneofFieldDescriptor(config, oneof)) return field->name();
  std::vector<const google::protobuf::FieldDescriptor*> set;
  reflection->ListFields(config, &set);
  for (const auto* field : set) {
    if (field->is_extension()) return field->name();
  }
  return "";
}

namespace {
using Checker = ConfigChecker;

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
  check.Expect(t.precision() == "fp32" || t.precision() == "bf16",
               absl::StrCat(Field("train.precision", t.precision()), " must be fp32 or bf16"));
  check.Expect(t.device() == "auto" || t.device() == "cpu" || t.device() == "cuda",
               absl::StrCat(Field("train.device", t.device()), " must be auto, cpu or cuda"));
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

void CheckEvaluation(const RunConfig& config, Checker& check) {
  const std::string& eval_dir = config.data().eval_dir();
  const TrainConfig& t = config.train();
  check.Expect(eval_dir.size() <= 4096,
               absl::StrCat(Field("data.eval_dir", eval_dir), " must be at most 4096 bytes"));
  check.Expect(t.eval_every() >= 0,
               absl::StrCat(Field("train.eval_every", t.eval_every()),
                            " must be >= 0 (0 evaluates after the last step only)"));
  check.Expect(t.eval_every() == 0 || !eval_dir.empty(),
               absl::StrCat(Field("train.eval_every", t.eval_every()),
                            " needs data.eval_dir (a held-out split to evaluate on)"));
  check.Expect(t.eval_samples() >= 0, absl::StrCat(Field("train.eval_samples", t.eval_samples()),
                                                   " must be >= 0 (0 means the whole split)"));
  check.Expect(t.eval_samples() <= (int64_t{1} << 31),
               absl::StrCat(Field("train.eval_samples", t.eval_samples()),
                            " must be <= 2147483648"));
  check.Expect(t.early_stop_patience() >= 0,
               absl::StrCat(Field("train.early_stop_patience", t.early_stop_patience()),
                            " must be >= 0 (0: no early stopping)"));
  if (t.early_stop_patience() > 0) {
    check.Expect(t.eval_every() > 0,
                 absl::StrCat(Field("train.early_stop_patience", t.early_stop_patience()),
                              " needs train.eval_every > 0 (evaluations during training)"));
    check.Expect(!t.early_stop_metric().empty(),
                 absl::StrCat(Field("train.early_stop_patience", t.early_stop_patience()),
                              " needs train.early_stop_metric (e.g. \"val_ndcg@10\", "
                              "\"val_loss\")"));
  }
  check.Expect(t.early_stop_mode() == "max" || t.early_stop_mode() == "min",
               absl::StrCat(Field("train.early_stop_mode", t.early_stop_mode()),
                            " must be \"max\" (higher is better) or \"min\""));
}

void CheckData(const RunConfig& config, Checker& check) {
  const DataConfig& d = config.data();
  check.Expect(!d.dir().empty(), "data.dir must not be empty");
  check.Expect(d.prefetch() >= 1,
               absl::StrCat(Field("data.prefetch", d.prefetch()), " must be >= 1"));
  check.Expect(d.prefetch() <= 64,
               absl::StrCat(Field("data.prefetch", d.prefetch()), " must be <= 64"));
  CheckEvaluation(config, check);
}

}  // namespace

void CheckSharedSections(const RunConfig& config, int world_size, ConfigChecker& check) {
  check.Expect(!ModelFieldName(config).empty(),
               "a model must be set (e.g. `dit_moe { }` in the config, or "
               "--set model.dit_moe.depth=12)");
  CheckParallel(config, world_size, check);
  CheckTrain(config, check);
  CheckBatchSplit(config, world_size, check);
  CheckOptim(config.optim(), check);
  CheckData(config, check);
  CheckCheckpoint(config.checkpoint(), check);
  CheckFault(config.fault(), world_size, check);
}

void CheckSharedLayout(const RunConfig& config, int world_size, ConfigChecker& check) {
  CheckParallel(config, world_size, check);
  CheckBatchSplit(config, world_size, check);
}

absl::Status ValidateRunConfig(const RunConfig& config, int world_size) {
  if (world_size < 1) {
    return UsageError(absl::StrCat("world size ", world_size, " must be >= 1"));
  }
  Checker check;
  CheckSharedSections(config, world_size, check);
  return check.Result();
}

absl::Status ValidateLayout(const RunConfig& config, int world_size) {
  if (world_size < 1) {
    return UsageError(absl::StrCat("world size ", world_size, " must be >= 1"));
  }
  Checker check;
  CheckSharedLayout(config, world_size, check);
  return check.Result();
}

}  // namespace tessera
