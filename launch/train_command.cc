// tessera train: one process trains the model a run config describes.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <numeric>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "launch/arguments.h"
#include "launch/distributed.h"
#include "parallel/comm/watchdog.h"
#include "launch/commands.h"
#include "launch/memory_fit.h"
#include "launch/rank_agreement.h"
#include "launch/model_parallel.h"
#include "parallel/comm/host_group_adapter.h"
#include "runtime/checkpoint/checkpoint_tools.h"
#include "runtime/checkpoint/sharded_checkpoint.h"
#include "runtime/train/signals.h"
#include "launch/model_setup.h"
#include "launch/run_device.h"
#include "launch/train_command.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/checkpoint/weights_file.h"
#include "runtime/config/config.h"
#include "runtime/train/memory.h"
#include "runtime/tensor/host_access.h"
#include "runtime/train/trainer.h"

namespace tessera {
namespace {
constexpr char kTrainUsage[] = R"(usage: tessera train --config FILE [--set FIELD=VALUE]... [--resume]

Trains the model described by a run config (text-format tessera.RunConfig,
see docs/config.md) on this process.

  --config FILE        run config, e.g. configs/quickstart.textproto
  --set FIELD=VALUE    override one field, e.g. --set train.steps=100 (repeatable)
  --resume             continue from the latest checkpoint (checkpoint.resume=latest)

Writes to train.run_dir: config.textproto (the effective config), metrics.jsonl
(one JSON object per logged step), weights.h5 (final EMA weights) and what the
model writes when the run ends (DiT-MoE: samples.png, a class-conditional
sample grid).
)";

// Gradient bucket size for data parallelism: 4 Mi elements (16 MiB in fp32),
// the order of PyTorch DDP's 25 MB default.
constexpr int64_t kBucketElements = int64_t{1} << 22;

double Gib(size_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0); }

// The checkpoint to continue from (checkpoint.resume), or "" to start fresh:
// "latest" with no committed checkpoint yet starts fresh, so a job script
// can always pass --resume. With checkpoint.fallback, a checkpoint that
// fails verification gives way to the newest older one that passes.
absl::StatusOr<std::string> ResolveResume(const RunConfig& config, bool leader) {
  const CheckpointConfig& c = config.checkpoint();
  if (c.resume().empty()) return std::string();
  std::vector<std::string> candidates;
  if (c.resume() == "latest") {
    absl::StatusOr<std::string> latest = FindLatest(config.train().run_dir());
    if (!latest.ok()) {
      if (leader) {
        std::printf("checkpoint.resume=latest: no committed checkpoint in %s yet, starting at "
                    "step 1\n",
                    CheckpointsRoot(config.train().run_dir()).c_str());
      }
      return std::string();
    }
    candidates.push_back(*latest);
    if (c.fallback()) {
      TESSERA_ASSIGN_OR_RETURN(auto listing, ListCheckpoints(config.train().run_dir()));
      for (auto it = listing.rbegin(); it != listing.rend(); ++it) {
        if (it->committed && it->path != *latest) candidates.push_back(it->path);
      }
    }
  } else {
    TESSERA_ASSIGN_OR_RETURN(std::string dir, ResolveCheckpoint(c.resume()));
    candidates.push_back(dir);
  }
  if (!c.fallback()) return candidates.front();
  for (const std::string& dir : candidates) {
    // An inconsistent manifest fails verification like a bad piece does.
    absl::StatusOr<VerifyReport> report = VerifyCheckpoint(dir);
    if (report.ok() && report->problems.empty()) return dir;
    if (leader) {
      std::printf("checkpoint.fallback: %s fails verification (%s); trying an older one\n",
                  dir.c_str(),
                  report.ok() ? report->problems.front().c_str()
                              : std::string(report.status().message()).c_str());
    }
  }
  return CheckpointError(absl::StrCat("checkpoint.resume=", c.resume(),
                                      ": no committed checkpoint passes verification"));
}

absl::StatusOr<RunConfig> ConfigFromArguments(const ParsedArguments& args) {
  TESSERA_RETURN_IF_ERROR(args.ExpectNoPositional("train"));
  if (!args.Has("config")) return UsageError("train: --config FILE is required (see --help)");
  TESSERA_ASSIGN_OR_RETURN(RunConfig config, LoadRunConfig(args.Get("config")));
  std::vector<std::string> overrides;
  if (args.values.count("set")) overrides = args.values.at("set");
  if (args.flags.count("resume")) overrides.push_back("checkpoint.resume=latest");
  TESSERA_RETURN_IF_ERROR(ApplyOverrides(&config, overrides));
  return config;
}

// A model that builds its store in host memory cannot train on a device.
absl::Status CheckModelDevice(const BuiltModel& built, const Backend& backend) {
  const Device device = built.model->store().backend().device();
  if (device == backend.device()) return absl::OkStatus();
  return UsageError(absl::StrFormat(
      "train.device: the %s model does not build on %s yet (its parameters are in %s memory); "
      "use --set train.device=%s",
      built.family->title, DeviceName(backend.device()), DeviceName(device), DeviceName(device)));
}

absl::Status Train(const ParsedArguments& args, Distributed& distributed) {
  TESSERA_ASSIGN_OR_RETURN(const RunConfig config, ConfigFromArguments(args));
  return TrainRun(config, distributed);
}

// What TrainRun builds before the step loop. Members are declared so that
// each is destroyed before what it points into.
struct TrainSetup {
  int world_size = 1;
  bool leader = true;  // world rank 0, known once CheckAndConnect built the mesh
  std::unique_ptr<ModelParallelGroups> model_parallel;
  std::string resume_dir;
  SamplerState start;
  Trainer::Options options;
  BuiltModel built;
  std::unique_ptr<TrainTask> task;
  std::unique_ptr<EvalTask> eval;
  std::unique_ptr<parallel::DataParallel> data_parallel;
  std::unique_ptr<parallel::MpiCommunicator> async_world;
  std::unique_ptr<HostGroup> group, async_group;
  int micro_batches = 1;
  int64_t dp = 1, micro_batch = 1;
};

// Every rank agrees on the config and validates it against the same world
// size, so every rank fails with the same message before any data is read;
// then the memory check and the communicators.
absl::Status CheckAndConnect(const RunConfig& config, Distributed& distributed,
                             TrainSetup& setup) {
  if (distributed.mpi) {
    TESSERA_RETURN_IF_ERROR(
        AgreeOnRunConfig(config, distributed.mpi->world_rank(), setup.world_size));
  }
  TESSERA_RETURN_IF_ERROR(ValidateRun(config, setup.world_size));
  TESSERA_RETURN_IF_ERROR(SelectRunBackend(config, distributed));
  TESSERA_RETURN_IF_ERROR(
      CheckTrainingMemoryFits(config, setup.world_size, distributed.local_size));
  if (distributed.mpi) TESSERA_RETURN_IF_ERROR(BuildGroups(config, distributed));
  TESSERA_RETURN_IF_ERROR(AgreeOnSparsePlacement(distributed));
  if (distributed.mesh && NeedsModelParallel(config, distributed.mesh->shape())) {
    TESSERA_ASSIGN_OR_RETURN(setup.model_parallel,
                             BuildModelParallelGroups(config, distributed));
  }
  return absl::OkStatus();
}

// The checkpoint to continue from and the data stream's position in it.
// Every rank reads the same manifest, so all resume from the same step.
absl::Status FindResumePoint(const RunConfig& config, TrainSetup& setup) {
  TESSERA_ASSIGN_OR_RETURN(setup.resume_dir, ResolveResume(config, setup.leader));
  setup.options.resume_dir = setup.resume_dir;
  if (!setup.resume_dir.empty()) {
    TESSERA_ASSIGN_OR_RETURN(CheckpointManifest manifest,
                             ReadCheckpointManifest(setup.resume_dir));
    setup.start.epoch = manifest.sampler_epoch();
    setup.start.position = manifest.sampler_position();
  } else if (!config.checkpoint().load().empty()) {
    TESSERA_ASSIGN_OR_RETURN(setup.options.init_dir,
                             ResolveCheckpoint(config.checkpoint().load()));
  }
  return absl::OkStatus();
}

// The GEMM reference first, so its buffers count in the memory baseline;
// likewise a first collective, which maps the MPI transport's shared memory.
absl::Status MeasureBaseline(Distributed& distributed, Trainer::Options& options) {
  options.gemm_peak = Trainer::MeasureGemmPeak(*distributed.backend);
  if (distributed.dense) {
    std::vector<float> warm_up(size_t{1} << 20);
    TESSERA_RETURN_IF_ERROR(distributed.dense->Complete(distributed.dense->AllReduce(
        warm_up.data(), warm_up.size(), DType::kF32, parallel::ReduceOp::kSum)));
  }
  options.baseline_rss = CurrentRssBytes();
  return absl::OkStatus();
}

// Gradient buckets and the ZeRO shard multiple for data parallelism.
ParameterLayout GradientLayout(const Distributed& distributed, const TrainSetup& setup) {
  ParameterLayout layout;
  layout.backend = distributed.backend;
  layout.sparse_on_host = distributed.sparse_on_host;
  if (!distributed.dense) return layout;
  layout.bucket_elements = kBucketElements;
  // ZeRO shards of dense and expert buckets must both come out even.
  layout.shard_multiple =
      std::lcm(distributed.dense->size(), distributed.expert ? distributed.expert->size() : 1);
  // tp-partial gradients reduce (and shard) over the world.
  if (setup.model_parallel) layout.shard_multiple = std::lcm(layout.shard_multiple, setup.world_size);
  return layout;
}

// This rank's model, its training task and (with data.eval_dir) its evaluation.
absl::Status BuildModelAndTasks(const RunConfig& config, const Distributed& distributed,
                                TrainSetup& setup) {
  TESSERA_ASSIGN_OR_RETURN(
      setup.built,
      BuildModel(config, GradientLayout(distributed, setup),
                 setup.model_parallel ? &setup.model_parallel->view : nullptr));
  TESSERA_RETURN_IF_ERROR(CheckModelDevice(setup.built, *distributed.backend));
  setup.micro_batch = MicroBatch(config, setup.world_size);
  setup.dp = DataParallelSize(config, setup.world_size);
  setup.micro_batches =
      static_cast<int>(config.train().global_batch() / setup.dp / setup.micro_batch);
  setup.options.micro_batches = setup.micro_batches;
  setup.options.sparse = setup.built.model->sparse_parameters();
  TaskOptions task_options;
  task_options.replica = distributed.mesh ? distributed.mesh->coordinates().dp : 0;
  task_options.num_replicas = static_cast<int>(setup.dp);
  task_options.micro_batch = setup.micro_batch;
  task_options.start = setup.start;
  TESSERA_ASSIGN_OR_RETURN(setup.task, setup.built.model->CreateTask(task_options));
  if (config.data().eval_dir().empty()) return absl::OkStatus();
  TESSERA_ASSIGN_OR_RETURN(setup.eval, setup.built.model->CreateEvalTask(task_options));
  if (!setup.eval) {
    return UsageError(absl::StrFormat(
        "data.eval_dir \"%s\": model.%s (%s) has no evaluation; leave data.eval_dir empty",
        config.data().eval_dir(), setup.built.family->name, setup.built.family->title));
  }
  setup.options.eval = setup.eval.get();
  const std::string& watched = config.train().early_stop_metric();
  const std::vector<std::string> names = setup.eval->metric_names();
  if (config.train().early_stop_patience() > 0 && !names.empty() &&
      std::find(names.begin(), names.end(), watched) == names.end()) {
    return UsageError(absl::StrFormat(
        "train.early_stop_metric=\"%s\": model.%s's evaluation reports %s", watched,
        setup.built.family->name, absl::StrJoin(names, ", ")));
  }
  return absl::OkStatus();
}

// Data parallelism: the gradient reduction, fed by the model's
// gradient-ready hook.
absl::Status ConnectDataParallel(const RunConfig& config, const Distributed& distributed,
                                 TrainSetup& setup) {
  if (!distributed.dense) return absl::OkStatus();
  parallel::GradientGroups groups;
  groups.dense = Distributed::OnDevice(distributed.dense, distributed.dense_device);
  groups.expert = distributed.expert
                      ? Distributed::OnDevice(distributed.expert, distributed.expert_device)
                      : groups.dense;
  if (setup.model_parallel) {
    const parallel::MeshShape& shape = distributed.mesh->shape();
    groups.world = Distributed::OnDevice(distributed.world, distributed.world_device);
    groups.divisor = shape.dp * shape.sp;
    groups.tp = shape.tp;
    groups.ep = shape.ep;
  }
  TESSERA_ASSIGN_OR_RETURN(setup.data_parallel,
                           parallel::DataParallel::Create(setup.built.model->store(),
                                                          config.optim(),
                                                          config.parallel().zero_stage(), groups,
                                                          setup.leader));
  setup.built.model->SetOnGradientsReady([sync = setup.data_parallel.get()](int first, int end) {
    sync->OnGradientsReady(first, end);
  });
  setup.options.sync = setup.data_parallel.get();
  return absl::OkStatus();
}

// The run's first lines: the model and batch, and the layout under MPI.
void PrintRunHeader(const RunConfig& config, const Distributed& distributed,
                    const TrainSetup& setup) {
  if (!setup.leader) return;
  const ParameterStore& store = setup.built.model->store();
  const long long dp = setup.dp;
  std::printf("tessera train: %s, %lld parameters, "
              "global batch %lld over %lld replica%s (%d micro-batch%s of %lld each), "
              "%lld steps -> %s\n",
              setup.built.family->title.c_str(), static_cast<long long>(store.numel()),
              static_cast<long long>(config.train().global_batch()), dp, dp == 1 ? "" : "s",
              setup.micro_batches, setup.micro_batches == 1 ? "" : "es",
              static_cast<long long>(setup.micro_batch),
              static_cast<long long>(config.train().steps()), config.train().run_dir().c_str());
  const Backend& backend = *distributed.backend;
  if (backend.device() != Device::kCpu) {
    std::printf("device: %s %d (train.device=%s)%s\n", DeviceName(backend.device()),
                distributed.device, config.train().device().c_str(),
                distributed.mpi ? absl::StrFormat("; device collectives: %s",
                                                  DeviceCommName(distributed.device_comm))
                                      .c_str()
                                : "");
  }
  if (setup.eval) {
    std::printf("evaluation: %lld held-out samples of %s after %s\n",
                static_cast<long long>(setup.eval->num_samples()),
                config.data().eval_dir().c_str(),
                config.train().eval_every() > 0
                    ? absl::StrFormat("every %d steps and the last", config.train().eval_every())
                          .c_str()
                    : "the last step");
  }
  if (!distributed.dense) return;
  const parallel::MeshShape& shape = distributed.mesh->shape();
  std::printf("layout: %d ranks = tp %d x sp %d x dp %d (experts: ep %d x edp %d), "
              "Megatron SP %s, ZeRO stage %d, %zu gradient buckets, %lld parameters on "
              "rank 0\n",
              setup.world_size, shape.tp, shape.sp, shape.dp, shape.ep, shape.edp,
              config.parallel().sequence_parallel() && shape.tp > 1 ? "on" : "off",
              config.parallel().zero_stage(), store.buckets().size(),
              static_cast<long long>(store.numel()));
}

// Checkpoints commit over the world; a background save commits over a second
// world communicator of its own (MPI_THREAD_MULTIPLE).
absl::Status ConnectCheckpointGroups(const RunConfig& config, const Distributed& distributed,
                                     TrainSetup& setup) {
  if (distributed.world) {
    setup.group = std::make_unique<parallel::CommunicatorHostGroup>(distributed.world.get());
    if (config.checkpoint().async()) {
      if (distributed.mpi->multithreaded()) {
        TESSERA_ASSIGN_OR_RETURN(setup.async_world,
                                 distributed.mpi->CreateWorld(absl::Seconds(
                                     config.parallel().collective_timeout_s())));
        setup.async_group =
            std::make_unique<parallel::CommunicatorHostGroup>(setup.async_world.get());
      } else if (setup.leader) {
        std::printf("checkpoint.async: this MPI has no MPI_THREAD_MULTIPLE; saving "
                    "synchronously\n");
      }
    }
  } else if (config.checkpoint().async()) {
    setup.async_group = std::make_unique<LocalHostGroup>();
  }
  setup.options.group = setup.group.get();
  setup.options.async_group = setup.async_group.get();
  return absl::OkStatus();
}

// The mesh a checkpoint records, and this rank's share of fault.*.
void DescribeRank(const RunConfig& config, const Distributed& distributed,
                  Trainer::Options& options) {
  if (distributed.mesh) {
    const parallel::MeshShape& shape = distributed.mesh->shape();
    options.mesh.set_world(shape.world);
    options.mesh.set_tp(shape.tp);
    options.mesh.set_sp(shape.sp);
    options.mesh.set_dp(shape.dp);
    options.mesh.set_ep(shape.ep);
    options.mesh.set_etp(shape.etp);
    options.mesh.set_edp(shape.edp);
    options.tp_rank = distributed.mesh->coordinates().tp;
  }
  options.mesh.set_zero_stage(config.parallel().zero_stage());
  const FaultConfig& fault = config.fault();
  const int rank = distributed.rank();
  if (fault.kill_rank() == rank || fault.hang_rank() == rank) {
    options.fault.action = fault.kill_rank() == rank ? Trainer::Options::Fault::Action::kKill
                                                     : Trainer::Options::Fault::Action::kHang;
    options.fault.step = fault.at_step();
    if (!fault.at_phase().empty()) options.fault.phase = fault.at_phase();
  }
  if (fault.corrupt_write() == rank) options.fault.corrupt_step = fault.at_step();
}

// <run_dir>/config.textproto: the effective config. Only now, with everything
// validated and the data open, is the run directory touched.
absl::Status WriteRunConfig(const RunConfig& config) {
  const std::string& run_dir = config.train().run_dir();
  std::error_code error;
  std::filesystem::create_directories(run_dir, error);
  const std::string config_path = run_dir + "/config.textproto";
  std::FILE* file = error ? nullptr : std::fopen(config_path.c_str(), "w");
  if (file == nullptr) {
    return UsageError(absl::StrFormat("train.run_dir \"%s\": cannot write %s", run_dir,
                                      config_path));
  }
  const std::string text = RunConfigToText(config);
  const bool written = std::fwrite(text.data(), 1, text.size(), file) == text.size();
  if (std::fclose(file) != 0 || !written) {  // a full disk or a file size limit
    return UsageError(absl::StrFormat("train.run_dir \"%s\": cannot write %s: %s", run_dir,
                                      config_path, std::strerror(errno)));
  }
  return absl::OkStatus();
}

void PrintSummary(const TrainSummary& summary) {
  std::printf("done: %lld steps, loss %.4f -> %.4f, %.1f samples/s, %.1f%% of the GEMM peak\n",
              static_cast<long long>(summary.steps), summary.first_loss, summary.last_loss,
              summary.mean_samples_per_s, 100 * summary.peak_fraction);
  std::printf("memory: peak RSS %.3f GiB, predicted %.3f GiB (%+.1f%%)\n",
              Gib(summary.peak_rss_bytes), Gib(summary.plan.total()),
              100.0 * (static_cast<double>(summary.peak_rss_bytes) /
                           static_cast<double>(summary.plan.total()) - 1));
}

// The EMA weights where host code can read them (GatherWeights packs them
// on the host): the trainer's own buffer on the CPU, a copy off a device.
const float* HostInferenceWeights(const ParameterStore& store, const Trainer& trainer,
                                  std::vector<float>& copy) {
  if (store.backend().host_accessible()) return trainer.inference_weights();
  copy.resize(static_cast<size_t>(store.numel()));
  store.backend().CopyToHost(copy.data(), trainer.inference_weights(), copy.size() * sizeof(float));
  return copy.data();
}

// Saves the EMA weights, assembled from every rank's pieces into the
// single-process model under model parallelism, then runs the model's own
// end-of-run hook (DiT-MoE: the sample grid) on that model. Rank 0 writes;
// the other ranks only send their pieces.
absl::Status SaveFinalModel(const RunConfig& config, const Distributed& distributed,
                            TrainSetup& setup, const Trainer& trainer) {
  ParameterStore& store = setup.built.model->store();
  // Sparse parameters (a row-sharded table) come whole to every rank.
  std::vector<float> sparse;
  if (setup.model_parallel && setup.options.sparse) {
    TESSERA_ASSIGN_OR_RETURN(sparse, setup.built.model->GatherSparse());
  }
  std::vector<float> copy;
  if (!setup.leader) {
    if (!setup.model_parallel) return absl::OkStatus();
    return GatherWeights(*distributed.world, *distributed.mesh, store,
                         HostInferenceWeights(store, trainer, copy), nullptr);
  }
  std::unique_ptr<Model> whole;
  if (setup.model_parallel) {
    TESSERA_ASSIGN_OR_RETURN(BuiltModel one_process, BuildModel(config));
    whole = std::move(one_process.model);
    TESSERA_RETURN_IF_ERROR(GatherWeights(*distributed.world, *distributed.mesh, store,
                                          HostInferenceWeights(store, trainer, copy),
                                          &whole->store()));
    size_t at = 0;
    for (const WholeTensor& tensor : whole->SparseWeights()) {
      const size_t n = static_cast<size_t>(tensor.shape.numel());
      std::copy_n(sparse.data() + at, n, tensor.data);
      at += n;
    }
  } else {
    store.backend().Copy(store.values().address(), trainer.inference_weights(),
                         store.values().bytes());
  }
  Model& final_model = whole ? *whole : *setup.built.model;
  const std::string& run_dir = config.train().run_dir();
  const std::string weights_path = run_dir + "/weights.h5";
  const Tensor final_weights = HostReadable(final_model.store().values());
  TESSERA_RETURN_IF_ERROR(SaveWeights(weights_path, final_model.store(),
                                      final_weights.data<float>(), final_model.SparseWeights()));
  std::printf("wrote %s\n", weights_path.c_str());
  return final_model.FinishRun(run_dir);
}
}  // namespace

absl::Status TrainRun(const RunConfig& config, Distributed& distributed) {
  TrainSetup setup;
  setup.world_size = distributed.mpi ? distributed.mpi->world_size() : 1;
  TESSERA_RETURN_IF_ERROR(CheckAndConnect(config, distributed, setup));
  setup.leader = distributed.rank() == 0;  // the mesh exists from here
  ConfigureThreads(config, distributed.local_size);
  TESSERA_RETURN_IF_ERROR(ConfigurePrecision(config, *distributed.backend, setup.leader));
  TESSERA_RETURN_IF_ERROR(FindResumePoint(config, setup));
  TESSERA_RETURN_IF_ERROR(MeasureBaseline(distributed, setup.options));
  TESSERA_RETURN_IF_ERROR(BuildModelAndTasks(config, distributed, setup));
  TESSERA_RETURN_IF_ERROR(ConnectDataParallel(config, distributed, setup));
  PrintRunHeader(config, distributed, setup);
  TESSERA_RETURN_IF_ERROR(ConnectCheckpointGroups(config, distributed, setup));
  DescribeRank(config, distributed, setup.options);
  // From here a stop signal is honoured at a step boundary (with a save).
  InstallStopSignalHandlers();
  // Only rank 0 writes into the run directory.
  if (setup.leader) TESSERA_RETURN_IF_ERROR(WriteRunConfig(config));
  Trainer trainer(config, setup.built.model->store(), *setup.task, setup.options);
  TESSERA_RETURN_IF_ERROR(trainer.Run());
  if (setup.leader) PrintSummary(trainer.summary());
  return SaveFinalModel(config, distributed, setup, trainer);
}

int ReportError(const absl::Status& status) {
  std::fprintf(stderr, "tessera: error: %s\n", std::string(status.message()).c_str());
  return ExitCodeFor(status);
}

// A stop after a signal is not an error: say so once and exit 75.
int ReportStop(const absl::Status& status, bool leader) {
  if (leader) std::printf("tessera: %s\n", std::string(status.message()).c_str());
  std::fflush(stdout);
  return kExitSavedRequeue;
}

int TrainCommand(const std::vector<std::string>& raw) {
  auto args = ParseArguments(raw, {"config", "set"}, {"resume", "help"});
  if (!args.ok()) return ReportError(args.status());
  if (args->flags.count("help")) {
    std::fputs(kTrainUsage, stdout);
    return 0;
  }
  if (!LaunchedUnderMpi()) {
    Distributed alone;
    const absl::Status status = Train(*args, alone);
    if (ExitCodeFor(status) == kExitSavedRequeue) return ReportStop(status, true);
    return status.ok() ? 0 : ReportError(status);
  }
  // The device decides whether ranks bind GPUs; a config that does not
  // parse binds none and fails below with its own message.
  const absl::StatusOr<RunConfig> peek = ConfigFromArguments(*args);
  auto distributed = StartMpi(peek.ok() && RunUsesGpu(*peek));
  if (!distributed.ok()) return ReportError(distributed.status());
  const absl::Status status = Train(*args, *distributed);
  if (status.ok()) return 0;
  // Every rank agreed to stop and the checkpoint is committed.
  if (ExitCodeFor(status) == kExitSavedRequeue) {
    return ReportStop(status, distributed->mpi->world_rank() == 0);
  }
  // A config error is the same on every rank: each says so and exits 2. Any
  // other error may be this rank's alone; end the whole job with its code so
  // that no rank is left waiting in a collective.
  if (ExitCodeFor(status) == ExitCodeFor(UsageError(""))) {
    std::fprintf(stderr, "[rank %d] ", distributed->mpi->world_rank());
    return ReportError(status);
  }
  parallel::AbortJob(status);
}

}  // namespace tessera
