// tessera debug dump-step: the numerics dump (docs/debugging.md). Builds the
// model and the task of a run config as `tessera train` does, runs step 1's
// micro-batch on every replica (no micro-batching), reduces the gradients as
// training does, and writes the initial parameters, the gradients, the
// recorded inputs and outputs and the loss terms, gathered to global shapes,
// to one HDF5 file.
#include <algorithm>
#include <cstdio>
#include <numeric>

#include "absl/strings/str_format.h"
#include "launch/arguments.h"
#include "launch/commands.h"
#include "launch/distributed.h"
#include "launch/dump_compare.h"
#include "launch/model_parallel.h"
#include "launch/model_setup.h"
#include "launch/rank_agreement.h"
#include "launch/step_dump.h"
#include "parallel/comm/watchdog.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/checkpoint/checkpoint_tools.h"
#include "runtime/checkpoint/sharded_checkpoint.h"
#include "runtime/config/config.h"
#include "runtime/train/checkpointing.h"
#include "runtime/tensor/host_access.h"
#include "runtime/train/gradient_sync.h"

namespace tessera {
namespace {

constexpr char kDebugUsage[] = R"(usage: tessera debug dump-step --config FILE [--set FIELD=VALUE]... --out FILE.h5
       tessera debug compare REFERENCE.h5 OTHER.h5 [--tolerance 1e-6]

Runs one micro-batch of the model a run config describes (step 1, the whole
global batch as one micro-batch per data-parallel replica) and writes to
FILE.h5, under their global names and shapes whatever the layout: the
initial parameters (or checkpoint.load's), every input of the step including
each random draw, the outputs, the loss terms and every parameter's
gradient. Runs on one process or under mpirun with any layout; the schema
is in docs/debugging.md.

  --config FILE        run config, e.g. configs/dit_moe_tiny.textproto
  --set FIELD=VALUE    override one field (repeatable)
  --out FILE.h5        where to write the dump (required)

compare prints, for every dataset of REFERENCE.h5, max |a - b| / max |a|
against the same path in OTHER.h5, and exits 3 naming the datasets that
differ by more than --tolerance (or are missing, or have another shape).
)";

absl::StatusOr<RunConfig> DumpConfig(const ParsedArguments& args) {
  TESSERA_RETURN_IF_ERROR(args.ExpectNoPositional("debug dump-step"));
  if (!args.Has("config")) return UsageError("debug dump-step: --config FILE is required");
  if (!args.Has("out") || args.Get("out").empty()) {
    return UsageError("debug dump-step: --out FILE.h5 is required");
  }
  TESSERA_ASSIGN_OR_RETURN(RunConfig config, LoadRunConfig(args.Get("config")));
  std::vector<std::string> overrides;
  if (args.values.count("set")) overrides = args.values.at("set");
  TESSERA_RETURN_IF_ERROR(ApplyOverrides(&config, overrides));
  // One micro-batch per replica holding its whole share; full gradients on
  // every rank (ZeRO changes where they live, not their values).
  config.mutable_train()->set_micro_batch(0);
  config.mutable_parallel()->set_zero_stage(0);
  return config;
}

std::string LayoutText(const Distributed& d) {
  if (!d.mesh) return "world 1 (one process)";
  const parallel::MeshShape& s = d.mesh->shape();
  return absl::StrFormat("world %d = tp %d x sp %d x dp %d, ep %d x edp %d", s.world, s.tp, s.sp,
                         s.dp, s.ep, s.edp);
}

// checkpoint.load's parameters into this rank's pieces.
absl::Status LoadInitialParameters(const RunConfig& config, ParameterStore& store, int tp_rank) {
  if (config.checkpoint().load().empty()) return absl::OkStatus();
  TESSERA_ASSIGN_OR_RETURN(const std::string dir, ResolveCheckpoint(config.checkpoint().load()));
  TESSERA_ASSIGN_OR_RETURN(const CheckpointManifest manifest, ReadCheckpointManifest(dir));
  TrainingState state{&store, nullptr, {}, tp_rank};
  return LoadPieces(dir, manifest, LoadTargets(state, /*parameters_only=*/true));
}

// The pieces of one rank's run: model, task, gradient reduction.
struct DumpRun {
  std::unique_ptr<ModelParallelGroups> model_parallel;
  BuiltModel built;
  std::unique_ptr<TrainTask> task;
  std::unique_ptr<GradientSync> sync;
};

absl::StatusOr<DumpRun> BuildDumpRun(const RunConfig& config, Distributed& distributed) {
  DumpRun run;
  if (distributed.mesh && NeedsModelParallel(config, distributed.mesh->shape())) {
    TESSERA_ASSIGN_OR_RETURN(run.model_parallel, BuildModelParallelGroups(config, distributed));
  }
  const int world_size = distributed.size();
  ParameterLayout layout;
  if (distributed.dense) {
    layout.bucket_elements = int64_t{1} << 22;
    layout.shard_multiple = std::lcm(distributed.dense->size(),
                                     distributed.expert ? distributed.expert->size() : 1);
    if (run.model_parallel) layout.shard_multiple = std::lcm(layout.shard_multiple, world_size);
  }
  TESSERA_ASSIGN_OR_RETURN(
      run.built, BuildModel(config, layout, run.model_parallel ? &run.model_parallel->view : nullptr));
  ParameterStore& store = run.built.model->store();
  const int tp_rank = distributed.mesh ? distributed.mesh->coordinates().tp : 0;
  TESSERA_RETURN_IF_ERROR(LoadInitialParameters(config, store, tp_rank));
  TaskOptions options;
  options.replica = distributed.mesh ? distributed.mesh->coordinates().dp : 0;
  options.num_replicas = static_cast<int>(DataParallelSize(config, world_size));
  options.micro_batch = MicroBatch(config, world_size);
  TESSERA_ASSIGN_OR_RETURN(run.task, run.built.model->CreateTask(options));
  if (!run.task->RecordsSteps()) {
    return UsageError(absl::StrCat("model.", run.built.family->name,
                                   " has no numerics dump (its task records no steps)"));
  }
  if (!distributed.dense) {
    run.sync = std::make_unique<LocalGradientSync>(store, config.optim());
    return run;
  }
  parallel::GradientGroups groups;
  groups.dense = distributed.dense.get();
  groups.expert = distributed.expert ? distributed.expert.get() : groups.dense;
  if (run.model_parallel) {
    const parallel::MeshShape& shape = distributed.mesh->shape();
    groups.world = distributed.world.get();
    groups.divisor = shape.dp * shape.sp;
    groups.tp = shape.tp;
    groups.ep = shape.ep;
  }
  TESSERA_ASSIGN_OR_RETURN(auto data_parallel,
                           parallel::DataParallel::Create(store, config.optim(), 0, groups,
                                                          distributed.rank() == 0));
  auto* hook = data_parallel.get();
  run.built.model->SetOnGradientsReady([hook](int first, int end) {
    hook->OnGradientsReady(first, end);
  });
  run.sync = std::move(data_parallel);
  return run;
}

// Forward and backward of step 1's micro-batch; the gradients reduced as
// training reduces them. Returns the loss terms of the global batch.
absl::StatusOr<std::vector<std::pair<std::string, double>>> RunOneMicroBatch(DumpRun& run,
                                                                             StepRecorder& rec) {
  ParameterStore& store = run.built.model->store();
  Arena arena(store.backend(), run.task->PredictStepArenaBytes());
  run.task->set_step_recorder(&rec);
  run.sync->BeginMicroBatch(/*last=*/true);
  // The micro-batch's loss, in the store's memory, read as the trainer reads it.
  // [loss | auxiliary losses the task adds on the device], the second from 0.
  const Tensor device_loss = Tensor::Empty(DType::kI64, Shape{2}, store.backend());
  store.backend().Memset(device_loss.address(), 0, device_loss.bytes());
  TESSERA_ASSIGN_OR_RETURN(
      const MicroBatchResult result,
      run.task->RunMicroBatch(arena, /*step=*/1, /*micro=*/0, 1.0f,
                              reinterpret_cast<double*>(device_loss.ptr<int64_t>())));
  run.task->set_step_recorder(nullptr);
  double losses[2] = {0, 0};
  store.backend().CopyToHost(losses, device_loss.address(), sizeof(losses));
  std::vector<double> sums = {result.elements * (losses[0] / result.loss_divisor),
                              result.elements * (result.aux_loss + losses[1]), result.elements};
  TESSERA_RETURN_IF_ERROR(run.sync->SumOverReplicas(&sums));
  if (!(sums[2] > 0)) return DataError("the global batch holds no elements to average over");
  TESSERA_RETURN_IF_ERROR(run.sync->FinishBackward(sums[2]));
  TESSERA_RETURN_IF_ERROR(store.backend().Synchronize());
  return std::vector<std::pair<std::string, double>>{{"loss", sums[0] / sums[2]},
                                                     {"aux_loss", sums[1] / sums[2]},
                                                     {"total", (sums[0] + sums[1]) / sums[2]}};
}

absl::Status DumpStep(const ParsedArguments& args, Distributed& distributed) {
  TESSERA_ASSIGN_OR_RETURN(const RunConfig config, DumpConfig(args));
  const int world_size = distributed.mpi ? distributed.mpi->world_size() : 1;
  if (distributed.mpi) {
    TESSERA_RETURN_IF_ERROR(AgreeOnRunConfig(config, distributed.mpi->world_rank(), world_size));
  }
  TESSERA_RETURN_IF_ERROR(ValidateRun(config, world_size));
  // The dump runs on the host (docs/debugging.md): its groups' device
  // communicators are the MPI groups themselves.
  distributed.backend = &HostBackend();
  if (distributed.mpi) TESSERA_RETURN_IF_ERROR(BuildGroups(config, distributed));
  ConfigureThreads(config, distributed.local_size);
  TESSERA_ASSIGN_OR_RETURN(DumpRun run, BuildDumpRun(config, distributed));
  StepRecorder recorder;
  TESSERA_ASSIGN_OR_RETURN(auto losses, RunOneMicroBatch(run, recorder));
  TESSERA_ASSIGN_OR_RETURN(std::vector<RecordedPiece> pieces,
                           GatherRecordedPieces(distributed.world.get(), recorder.pieces()));
  // Parameters and gradients as whole tensors in a one-process model's store.
  ParameterStore& store = run.built.model->store();
  std::unique_ptr<Model> whole;
  std::vector<float> values, gradients;
  const ParameterStore* target = &store;
  if (run.model_parallel) {
    TESSERA_ASSIGN_OR_RETURN(BuiltModel one_process, BuildModel(config));
    whole = std::move(one_process.model);
    ParameterStore& full = whole->store();
    const parallel::Mesh& mesh = *distributed.mesh;
    TESSERA_RETURN_IF_ERROR(GatherWeights(*distributed.world, mesh, store,
                                          HostReadable(store.values()).data<float>(), &full));
    values.assign(full.values().data<float>(), full.values().data<float>() + full.numel());
    TESSERA_RETURN_IF_ERROR(GatherWeights(*distributed.world, mesh, store,
                                          HostReadable(store.grads()).data<float>(), &full));
    gradients.assign(full.values().data<float>(), full.values().data<float>() + full.numel());
    target = &full;
  } else {
    const Tensor v = HostReadable(store.values()), g = HostReadable(store.grads());
    values.assign(v.data<float>(), v.data<float>() + store.numel());
    gradients.assign(g.data<float>(), g.data<float>() + store.numel());
  }
  if (distributed.rank() != 0) return absl::OkStatus();
  StepDumpContents contents;
  contents.model = run.built.family->name;
  contents.config = RunConfigToText(config);
  contents.layout = LayoutText(distributed);
  contents.parameters = target;
  contents.values = values.data();
  contents.gradients = gradients.data();
  contents.losses = losses;
  TESSERA_ASSIGN_OR_RETURN(contents.tensors, AssemblePieces(pieces));
  const std::string out = args.Get("out");
  TESSERA_RETURN_IF_ERROR(WriteStepDump(out, contents));
  std::printf("wrote %s: %s, %d parameters, %zu recorded tensors, loss %.9g, aux %.9g\n",
              out.c_str(), contents.layout.c_str(), static_cast<int>(target->size()),
              contents.tensors.size(), losses[0].second, losses[1].second);
  return absl::OkStatus();
}

int RunDumpStep(const ParsedArguments& args) {
  if (!LaunchedUnderMpi()) {
    Distributed alone;
    const absl::Status status = DumpStep(args, alone);
    return status.ok() ? 0 : ReportError(status);
  }
  auto distributed = StartMpi();
  if (!distributed.ok()) return ReportError(distributed.status());
  const absl::Status status = DumpStep(args, *distributed);
  if (status.ok()) return 0;
  if (ExitCodeFor(status) == ExitCodeFor(UsageError(""))) {
    std::fprintf(stderr, "[rank %d] ", distributed->mpi->world_rank());
    return ReportError(status);
  }
  parallel::AbortJob(status);
}

absl::Status Compare(const ParsedArguments& args) {
  if (args.positional.size() != 2) {
    return UsageError("debug compare: give two files, REFERENCE.h5 and OTHER.h5");
  }
  TESSERA_ASSIGN_OR_RETURN(const double tolerance, args.GetDouble("tolerance", 1e-6));
  TESSERA_ASSIGN_OR_RETURN(const std::vector<DatasetDifference> differences,
                           CompareDumps(args.positional[0], args.positional[1]));
  std::vector<std::string> bad;
  double worst = 0;
  for (const DatasetDifference& d : differences) {
    const bool ok = !d.missing && d.relative <= tolerance;
    if (!ok) bad.push_back(d.name);
    if (!d.missing) worst = std::max(worst, d.relative);
    std::printf("%s %s\n", d.name.c_str(),
                d.missing ? "missing or of another shape"
                          : absl::StrFormat("%.3g (max |a| %.3g) %s", d.relative,
                                            d.max_abs_reference, ok ? "ok" : "differ")
                                .c_str());
  }
  std::printf("%zu datasets, %zu differ, largest relative difference %.3g\n", differences.size(),
              bad.size(), worst);
  if (bad.empty()) return absl::OkStatus();
  return DataError(absl::StrCat(args.positional[1], " differs from ", args.positional[0],
                                " by more than ", tolerance, " in ", bad.size(), " dataset",
                                bad.size() == 1 ? "" : "s", ", first ", bad.front()));
}

}  // namespace

int DebugCommand(const std::vector<std::string>& raw) {
  if (raw.empty() || raw[0] == "--help" || raw[0] == "-h") {
    std::fputs(kDebugUsage, raw.empty() ? stderr : stdout);
    return raw.empty() ? ExitCodeFor(UsageError("")) : 0;
  }
  if (raw[0] == "compare") {
    auto args = ParseArguments({raw.begin() + 1, raw.end()}, {"tolerance"}, {});
    if (!args.ok()) return ReportError(args.status());
    const absl::Status status = Compare(*args);
    return status.ok() ? 0 : ReportError(status);
  }
  if (raw[0] != "dump-step") {
    std::fprintf(stderr, "tessera: error: debug: unknown subcommand \"%s\"\n\n%s", raw[0].c_str(),
                 kDebugUsage);
    return ExitCodeFor(UsageError(""));
  }
  const std::vector<std::string> rest(raw.begin() + 1, raw.end());
  auto args = ParseArguments(rest, {"config", "set", "out"}, {"help"});
  if (!args.ok()) return ReportError(args.status());
  if (args->flags.count("help")) {
    std::fputs(kDebugUsage, stdout);
    return 0;
  }
  return RunDumpStep(*args);
}

}  // namespace tessera
