// Model parallelism on DiT-MoE-S/2-8E2A: step time and the bytes each
// communicator moves per step, measured by the communicators' own counters
// and set against the closed-form volumes of docs/parallelism.md
// ("Communication per step"). Run under mpirun:
//
//   mpirun -np 4 bench_model_parallel [layouts] [global_batch] [steps] [depth] [zero_stage]
//
// layouts: comma-separated; each a run of tpN, spN (Ulysses), epN and "msp"
// (Megatron SP along tp); dp is what remains of the world. Default
// tp4,tp4msp,sp4,ep4,dp4. A step is what `tessera train` does with one
// micro-batch: ForwardRows + MSE + BackwardRows with overlapped gradient
// reduction (DataParallel over GradientGroups), the global grad norm, clip,
// AdamW. The model uses num_heads = 8 (S/2 has 6, which 4 ranks cannot
// split; the parameters and FLOPs are the same).
//
// Speeds are printed relative to the dp layout of the same run (the
// same-run reference); volumes against the formulas, per group and rank.
#include <mpi.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "models/dit_moe/diffusion.h"
#include "models/dit_moe/model.h"
#include "parallel/comm/mpi_runtime.h"
#include "parallel/data_parallel/data_parallel.h"
#include "parallel/mesh/mesh.h"
#include "runtime/kernels/cpu/gemm.h"
#include "runtime/kernels/cpu/loss.h"
#include "runtime/optim/clip.h"
#include "runtime/train/memory.h"

namespace {
using namespace tessera;
using parallel::GroupKind;
using parallel::MpiCommunicator;
using Clock = std::chrono::steady_clock;

struct Layout {
  std::string name;
  int tp = 1, sp = 1, ep = 1;
  bool msp = false;  // Megatron sequence parallelism along tp
};

bool ParseLayout(const std::string& name, Layout* layout) {
  layout->name = name;
  size_t at = 0;
  while (at < name.size()) {
    if (name.compare(at, 3, "msp") == 0) {
      layout->msp = true;
      at += 3;
      continue;
    }
    const std::string axis = name.substr(at, 2);
    at += 2;
    size_t digits = 0;
    while (at + digits < name.size() && std::isdigit(name[at + digits])) ++digits;
    if (digits == 0) return false;
    const int size = std::atoi(name.substr(at, digits).c_str());
    at += digits;
    if (axis == "tp")
      layout->tp = size;
    else if (axis == "sp")
      layout->sp = size;
    else if (axis == "ep")
      layout->ep = size;
    else if (axis != "dp")
      return false;  // dp: what remains; the size is informative
  }
  return true;
}

// The groups a step's traffic is counted on.
enum Group { kTp, kSp, kEp, kTpSp, kDpSp, kEdp, kWorld, kGroups };
constexpr const char* kGroupNames[kGroups] = {"tp",      "sp",  "ep",   "tp x sp",
                                              "dp x sp", "edp", "world"};
constexpr GroupKind kGroupKinds[kGroups] = {GroupKind::kTensor,       GroupKind::kSequence,
                                            GroupKind::kExpert,       GroupKind::kTensorSequence,
                                            GroupKind::kDataSequence, GroupKind::kExpertData,
                                            GroupKind::kWorld};

// Parameters per rank by the group that reduces their gradients, from the
// model's shapes (docs/parallelism.md, "Memory per rank").
struct ParameterCounts {
  double dense = 0, expert = 0, partial = 0;
  double total() const { return dense + expert + partial; }
};

ParameterCounts CountParameters(const dit_moe::DitMoeDims& d, const Layout& l) {
  const double D = d.hidden, L = d.depth, E = d.num_experts, tp = l.tp;
  const bool token_shard = l.msp && l.tp > 1;  // patch embed and final linear: tp-partial
  const double patch_embed = d.patch_dim() * D + D;
  const double final_linear = D * d.patch_dim() + d.patch_dim();
  const double embedders = (d.frequency_dim * D + D + D * D + D) + (d.num_classes + 1) * D;
  // adaLN (6D), qkv (3D) and proj weight split over tp; proj bias replicated.
  const double split = (6 * D * D + 6 * D + 3 * D * D + 3 * D + D * D) / tp + D;
  const double router_shared = E * D + 3.0 * d.shared_expert_hidden * D;
  ParameterCounts c;
  c.dense = embedders + L * split + (2 * D * D + 2 * D) / tp +
            (token_shard ? 0 : patch_embed + final_linear) + (l.tp > 1 ? 0 : L * router_shared);
  c.partial = (token_shard ? patch_embed + final_linear : 0) + (l.tp > 1 ? L * router_shared : 0);
  c.expert = L * (E / l.ep) * 3.0 * d.expert_hidden * D;
  return c;
}

// Expert rows this rank sends to / receives from other ep ranks in one
// MoE layer, from the routing: load[q][l][e] = share of rank q's
// assignments in layer l that went to expert e (exact when the balance
// group is the rank itself, tp * sp = 1; the replica's share otherwise).
struct ExpertRows {
  double sent = 0, received = 0;
};

ExpertRows CountExpertRows(const std::vector<std::vector<double>>& load_of_rank,
                           const std::vector<int>& ep_members, int me, int64_t experts,
                           double assignments) {
  const int ep = static_cast<int>(ep_members.size());
  const int64_t per_rank = experts / ep;
  int my_index = 0;
  for (int j = 0; j < ep; ++j)
    if (ep_members[j] == me) my_index = j;
  ExpertRows rows;
  for (int j = 0; j < ep; ++j) {
    if (j == my_index) continue;
    for (int64_t e = 0; e < experts; ++e) {
      const int owner = static_cast<int>(e / per_rank);
      if (owner == j) rows.sent += std::round(load_of_rank[me][e] * assignments);
      if (owner == my_index)
        rows.received += std::round(load_of_rank[ep_members[j]][e] * assignments);
    }
  }
  return rows;
}

struct Prediction {
  double bytes[kGroups] = {};
};

// Bytes per step and rank under the accounting of mpi_communicator.h
// (all-reduce: the buffer; all-gather: the receive buffer; reduce-scatter:
// the send buffer; all-to-all(v): what goes to other ranks). B: samples per
// micro-batch of this replica. ep_rows: per MoE layer, this rank's routed
// rows to and from other ep ranks.
Prediction Predict(const dit_moe::DitMoeDims& d, const Layout& l, const parallel::MeshShape& s,
                   double B, int zero_stage, const std::vector<ExpertRows>& ep_rows) {
  const double F = 4, D = d.hidden, L = d.depth, E = d.num_experts, T = d.tokens();
  const double tp = l.tp, sp = l.sp;
  const bool model_parallel = l.tp > 1 || l.sp > 1 || l.ep > 1;
  const double R = B * T / sp;  // rows of this sp rank (gathered over tp under Megatron SP)
  Prediction p;
  if (l.tp > 1) {
    // Per block: adaLN all-gather of [B, 6D] and all-reduce of dc [B, D];
    // then either qkv's dx all-reduce + proj's y all-reduce + the MoE's
    // all-gathers of y and dx (rows split over tp), each [R, D]; or, under
    // Megatron SP, qkv's all-gather / reduce-scatter and proj's
    // reduce-scatter / all-gather of [R, D], plus the all-reduce of dmod
    // [B, 6D]. Final layer: adaLN [B, 2D] (+ dmod under SP) and dc.
    const double block = l.msp ? 13 * B * D + 4 * R * D : 7 * B * D + 4 * R * D;
    const double final_layer = l.msp ? 5 * B * D : 3 * B * D;
    p.bytes[kTp] = F * (L * block + final_layer) + (l.msp ? 8 * tp : 0);  // + loss all-gather
  }
  if (l.sp > 1) {
    // Ulysses: q,k,v (3 w) and out (w) forward, dout and dq,dk,dv backward,
    // w = D / tp, each all-to-all keeping 1/sp of its buffer at home.
    p.bytes[kSp] = F * L * 8 * (sp - 1) / sp * R * D / tp;
  }
  if (model_parallel && l.tp * l.sp > 1) {
    p.bytes[kTpSp] = L * tp * sp * (2 * E + 1) * 8;  // balance statistics, i64
  }
  if (l.ep > 1) {
    // Per MoE layer: all-gather of [E counts | 2E + 1 balance stats] i64,
    // then dispatch + combine forward and their adjoints backward: every
    // routed row this rank sends or receives crosses twice.
    double rows = 0;
    for (const ExpertRows& layer : ep_rows) rows += layer.sent + layer.received;
    p.bytes[kEp] = L * l.ep * (3 * E + 1) * 8 + F * 2 * D * rows;
  }
  const ParameterCounts c = CountParameters(d, l);
  const double passes = zero_stage == 1 ? 2 : 1;  // ZeRO-1: reduce-scatter + all-gather
  const double norm = 8;                          // one double per rank
  if (s.dp * s.sp > 1) {
    p.bytes[kDpSp] =
        F * passes * c.dense + (zero_stage == 1 && !model_parallel ? norm * s.dp * s.sp : 0);
  }
  if (s.edp > 1) {
    p.bytes[kEdp] = F * passes * c.expert + (zero_stage == 1 && !model_parallel ? norm * s.edp : 0);
  }
  if (model_parallel && s.world > 1) p.bytes[kWorld] = F * passes * c.partial + norm * s.world;
  return p;
}

// Uniform routing: each rank sends and receives k * rows * (ep - 1) / ep.
double BalancedExpertBytes(const dit_moe::DitMoeDims& d, const Layout& l, double rows_routed) {
  if (l.ep <= 1) return 0;
  const double E = d.num_experts;
  return d.depth * (l.ep * (3 * E + 1) * 8 +
                    4.0 * 2 * d.hidden * 2 * d.top_k * rows_routed * (l.ep - 1) / l.ep);
}

struct Result {
  std::string name;
  double step_seconds = 0;
  double samples_per_second = 0;
};

double MaxOverRanks(double value) {
  MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return value;
}

absl::StatusOr<Result> RunLayout(parallel::MpiRuntime& mpi, const Layout& l, int64_t global_batch,
                                 int steps, int depth, int zero_stage) {
  const int world_size = mpi.world_size(), rank = mpi.world_rank();
  RunConfig config;
  DitMoeConfig& m = *config.mutable_dit_moe();
  m.set_num_heads(8);
  m.set_depth(depth);
  config.mutable_parallel()->set_tp(l.tp);
  config.mutable_parallel()->set_sp(l.sp);
  config.mutable_parallel()->set_ep(l.ep);
  config.mutable_parallel()->set_sequence_parallel(l.msp);
  config.mutable_parallel()->set_zero_stage(zero_stage);
  config.mutable_train()->set_global_batch(global_batch);
  TESSERA_ASSIGN_OR_RETURN(parallel::Mesh mesh, parallel::Mesh::Create(config, world_size, rank));
  const parallel::MeshShape& s = mesh.shape();
  const bool model_parallel = l.tp > 1 || l.sp > 1 || l.ep > 1;

  // One communicator per group, as launch/distributed.cc and
  // launch/model_parallel.cc make them (edp gets its own even where its
  // ranks equal dp x sp's, so that the two are counted apart).
  TESSERA_ASSIGN_OR_RETURN(auto world, mpi.CreateWorld(absl::Seconds(600)));
  std::unique_ptr<MpiCommunicator> groups[kGroups];
  for (int g = 0; g < kGroups; ++g) {
    if (g == kWorld) continue;
    TESSERA_ASSIGN_OR_RETURN(groups[g], world->CreateSubgroup(mesh.Group(kGroupKinds[g]),
                                                              mesh.GroupName(kGroupKinds[g])));
  }
  MpiCommunicator* comm[kGroups];
  for (int g = 0; g < kGroups; ++g) comm[g] = g == kWorld ? world.get() : groups[g].get();
  parallel::ModelParallel view{comm[kTp], comm[kSp], comm[kEp], comm[kTpSp], l.msp};

  ParameterLayout layout;
  layout.bucket_elements = int64_t{1} << 22;  // as tessera train
  layout.shard_multiple = std::lcm(std::lcm(s.dp * s.sp, s.edp), model_parallel ? s.world : 1);
  ParameterStore store;
  TESSERA_ASSIGN_OR_RETURN(auto model,
                           dit_moe::DitMoe::Create(m, store, model_parallel ? &view : nullptr));
  store.Finalize(config.train().seed(), layout);
  {
    // Trained-looking weights instead of adaLN-Zero's zeros (as bench_train_step).
    Rng rng(1, static_cast<uint64_t>(rank));
    float* v = store.values().data<float>();
    for (int64_t i = 0; i < store.numel(); ++i) v[i] += 0.02f * rng.Normal();
  }
  parallel::GradientGroups gradient_groups;
  gradient_groups.dense = comm[kDpSp];
  gradient_groups.expert = comm[kEdp];
  if (model_parallel) {
    gradient_groups.world = world.get();
    gradient_groups.divisor = s.dp * s.sp;
    gradient_groups.tp = s.tp;
    gradient_groups.ep = s.ep;
  }
  OptimConfig optim;
  TESSERA_ASSIGN_OR_RETURN(
      auto data_parallel,
      parallel::DataParallel::Create(store, optim, zero_stage, gradient_groups, rank == 0));
  model->set_on_gradients_ready(
      [sync = data_parallel.get()](int first, int end) { sync->OnGradientsReady(first, end); });

  const dit_moe::DitMoeDims d = model->dims();
  const int64_t B = global_batch / s.dp;  // this replica's micro-batch
  const int replica = mesh.coordinates().dp;
  dit_moe::Diffusion diffusion(m);
  Tensor images = Tensor::Empty(DType::kF32, Shape{B, d.channels, d.input_size, d.input_size});
  {
    Rng rng(7, static_cast<uint64_t>(replica));  // the same on the ranks of a replica
    for (int64_t i = 0; i < images.numel(); ++i) images.data<float>()[i] = rng.Normal();
  }
  std::vector<int32_t> labels(B);
  std::vector<int64_t> positions(B);
  for (int64_t b = 0; b < B; ++b) {
    positions[b] = b * s.dp + replica;
    labels[b] = static_cast<int32_t>(positions[b] % d.num_classes);
  }
  const ParameterCounts counts = CountParameters(d, l);
  // The model reports expert loads over the balance group (tp x sp): they
  // are this rank's own only when that group is the rank itself; otherwise
  // the ep volume below is an estimate from the replica's routing.
  const bool routing_exact = l.ep == 1 || l.tp * l.sp == 1;
  int64_t parameters = 0;  // store.numel() also counts the buckets' padding
  for (const ParamInfo& info : store.infos()) parameters += info.local_shape.numel();
  if (rank == 0) {
    std::printf(
        "\n== %s: tp %d x sp %d x dp %d, experts ep %d x edp %d, Megatron SP %s, ZeRO %d; "
        "micro-batch %lld per replica; %.2f M parameters on rank 0 (formula %.2f M)\n",
        l.name.c_str(), s.tp, s.sp, s.dp, s.ep, s.edp, l.msp ? "on" : "off", zero_stage,
        static_cast<long long>(B), parameters / 1e6, counts.total() / 1e6);
  }
  if (std::abs(parameters - counts.total()) > 0.5) {
    return absl::InternalError(absl::StrFormat("rank %d: %d parameters, the formula says %.0f",
                                               rank, parameters, counts.total()));
  }

  Arena arena;
  model->ReserveScratch(B);
  std::vector<double> times;
  double worst_deviation = 0;
  double measured[kGroups] = {}, predicted[kGroups] = {}, balanced_ep = 0;
  int64_t calls[kGroups] = {};
  for (int step = 0; step <= steps; ++step) {
    for (MpiCommunicator* c : comm) c->ResetCounters();
    MPI_Barrier(MPI_COMM_WORLD);
    const auto start = Clock::now();
    arena.Reset();
    store.ZeroGrads();
    data_parallel->BeginMicroBatch(true);
    auto ex = diffusion.MakeExample(arena, images, labels.data(), positions.data(),
                                    m.class_dropout_prob(), static_cast<int32_t>(d.num_classes),
                                    config.train().seed(), step);
    TESSERA_ASSIGN_OR_RETURN(Tensor prediction,
                             model->ForwardRows(arena, ex.noisy, ex.t.data(), ex.labels.data()));
    const Tensor target = model->LocalRows(arena, ex.target);
    double loss = model->loss_share() * cpu::MseForward(prediction.data<float>(),
                                                        target.data<float>(), prediction.numel());
    TESSERA_RETURN_IF_ERROR(model->SumLossOverTensorGroup(&loss));
    const auto load = model->expert_load();  // of this forward: [depth][experts]
    Tensor dprediction = arena.AllocateUninitialized(DType::kF32, prediction.shape());
    cpu::MseBackward(prediction.data<float>(), target.data<float>(), dprediction.data<float>(),
                     prediction.numel(), static_cast<float>(model->loss_share()));
    TESSERA_RETURN_IF_ERROR(model->BackwardRows(arena, dprediction, 1.0f));
    TESSERA_RETURN_IF_ERROR(data_parallel->FinishBackward());
    double norm_squared = 0;  // host memory: the CPU backend's
    TESSERA_RETURN_IF_ERROR(data_parallel->GradNormSquared(&loss, 1, &norm_squared));
    const float clip = static_cast<float>(ClipScale(std::sqrt(norm_squared), 1.0));
    TESSERA_RETURN_IF_ERROR(data_parallel->Step(1e-4f, &clip));
    const double seconds =
        MaxOverRanks(std::chrono::duration<double>(Clock::now() - start).count());
    if (step > 0) times.push_back(seconds);  // step 0 warms up arenas and caches

    // The formulas, with this step's routing: every rank's expert loads.
    const int64_t E = d.num_experts;
    std::vector<double> mine;
    for (const auto& layer : load) mine.insert(mine.end(), layer.begin(), layer.end());
    std::vector<double> all(mine.size() * world_size);
    MPI_Allgather(mine.data(), static_cast<int>(mine.size()), MPI_DOUBLE, all.data(),
                  static_cast<int>(mine.size()), MPI_DOUBLE, MPI_COMM_WORLD);
    const double rows_routed = static_cast<double>(B * d.tokens() / (s.sp * s.tp));
    std::vector<ExpertRows> ep_rows;
    for (int64_t layer = 0; layer < d.depth; ++layer) {
      std::vector<std::vector<double>> load_of_rank(world_size);
      for (int q = 0; q < world_size; ++q) {
        const double* at = all.data() + q * mine.size() + layer * E;
        load_of_rank[q].assign(at, at + E);
      }
      ep_rows.push_back(l.ep > 1 ? CountExpertRows(load_of_rank, mesh.Group(GroupKind::kExpert),
                                                   rank, E, rows_routed * d.top_k)
                                 : ExpertRows{});
    }
    const Prediction p = Predict(d, l, s, static_cast<double>(B), zero_stage, ep_rows);
    for (int g = 0; g < kGroups; ++g) {
      measured[g] = static_cast<double>(comm[g]->bytes_sent());
      predicted[g] = p.bytes[g];
      calls[g] = comm[g]->calls();
      const double scale = std::max(measured[g], predicted[g]);
      if (scale > 0 && (g != kEp || routing_exact)) {
        worst_deviation = std::max(worst_deviation, std::abs(measured[g] - predicted[g]) / scale);
      }
    }
    balanced_ep = BalancedExpertBytes(d, l, rows_routed);
  }
  worst_deviation = MaxOverRanks(worst_deviation);
  const double peak_rss = MaxOverRanks(static_cast<double>(PeakRssBytes()));
  std::sort(times.begin(), times.end());
  Result result{l.name, times[times.size() / 2], 0};
  result.samples_per_second = static_cast<double>(global_batch) / result.step_seconds;
  if (rank == 0) {
    std::printf(
        "step %.2f s (median of %d, slowest rank), %.2f samples/s; peak RSS %.2f GiB "
        "(largest rank); optimizer state %.0f MB on rank 0\n",
        result.step_seconds, steps, result.samples_per_second, peak_rss / (1 << 30),
        data_parallel->OptimizerStateBytes() / 1e6);
    const dit_moe::DitMoe::ActivationPlan plan = model->PlanActivations(B);
    std::printf(
        "activations on rank 0: step arena peak %.0f MB, block scratch peak %.0f MB; "
        "DitMoe::PlanActivations predicts %.0f MB and %.0f MB\n",
        arena.peak_bytes() / 1e6, model->scratch_peak_bytes() / 1e6, plan.step_arena / 1e6,
        plan.scratch_arena / 1e6);
    std::printf("%-8s %6s %6s %14s %14s %8s\n", "group", "ranks", "calls", "measured MB",
                "formula MB", "dev");
    for (int g = 0; g < kGroups; ++g) {
      const double dev = predicted[g] > 0 ? measured[g] / predicted[g] - 1 : 0;
      std::printf("%-8s %6d %6lld %14.3f %14.3f %+7.2f%%%s\n", kGroupNames[g], comm[g]->size(),
                  static_cast<long long>(calls[g]), measured[g] / 1e6, predicted[g] / 1e6,
                  100 * dev,
                  g == kEp && l.ep > 1 && !routing_exact ? " (estimate: replica's routing)" : "");
    }
    if (l.ep > 1) {
      std::printf("ep with uniform routing (k rows (ep-1)/ep out and in): %.3f MB\n",
                  balanced_ep / 1e6);
    }
    std::printf("largest deviation from the formulas over all ranks, groups and steps%s: %.3f%%\n",
                routing_exact ? "" : " (ep estimate left out)", 100 * worst_deviation);
  }
  return result;
}
}  // namespace

int main(int argc, char** argv) {
  auto mpi = parallel::MpiRuntime::Init(&argc, &argv);
  if (!mpi.ok()) {
    std::fprintf(stderr, "%s\n", std::string(mpi.status().message()).c_str());
    return 1;
  }
  const std::string names = argc > 1 ? argv[1] : "tp4,tp4msp,sp4,ep4,dp4";
  const int64_t global_batch = argc > 2 ? std::atoll(argv[2]) : 8;
  const int steps = argc > 3 ? std::max(1, std::atoi(argv[3])) : 2;
  const int depth = argc > 4 ? std::atoi(argv[4]) : 12;
  const int zero_stage = argc > 5 ? std::atoi(argv[5]) : 0;
  const int rank = (*mpi)->world_rank();
  int local = 1;
  if (const char* s = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) local = std::atoi(s);
  cpu::SetNumThreads(std::max(1, 2 / local));
  if (rank == 0) {
    std::printf(
        "DiT-MoE-S/2-8E2A (8 heads), depth %d, global batch %lld, %d ranks, %d thread%s "
        "per rank; bytes per step and rank, as counted by the communicators\n",
        depth, static_cast<long long>(global_batch), (*mpi)->world_size(), cpu::NumThreads(),
        cpu::NumThreads() == 1 ? "" : "s");
  }
  std::vector<Result> results;
  for (absl::string_view name : absl::StrSplit(names, ',')) {
    Layout layout;
    if (!ParseLayout(std::string(name), &layout)) {
      if (rank == 0) std::fprintf(stderr, "bad layout '%s'\n", std::string(name).c_str());
      return 2;
    }
    auto result = RunLayout(**mpi, layout, global_batch, steps, depth, zero_stage);
    if (!result.ok()) {
      std::fprintf(stderr, "[rank %d] %s: %s\n", rank, layout.name.c_str(),
                   std::string(result.status().message()).c_str());
      return 1;
    }
    results.push_back(*result);
  }
  if (rank == 0) {
    const Result* reference = nullptr;
    for (const Result& r : results)
      if (r.name.rfind("dp", 0) == 0) reference = &r;
    std::printf("\n%-10s %10s %12s %12s\n", "layout", "step s", "samples/s",
                reference ? ("vs " + reference->name).c_str() : "");
    for (const Result& r : results) {
      std::printf("%-10s %10.2f %12.2f", r.name.c_str(), r.step_seconds, r.samples_per_second);
      if (reference) std::printf(" %11.2fx", reference->step_seconds / r.step_seconds);
      std::printf("\n");
    }
  }
  return 0;
}
