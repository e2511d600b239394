#include "parallel/expert_parallel/moe.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera::parallel {
namespace {

// Wall-clock laps, for the exchange / expert time split.
class Stopwatch {
 public:
  double Lap() {
    const auto now = std::chrono::steady_clock::now();
    const double seconds = std::chrono::duration<double>(now - last_).count();
    last_ = now;
    return seconds;
  }

 private:
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

// As MoeLayer's router: no bias, kaiming_uniform(a=sqrt(5)), bound 1/sqrt(fan_in).
Linear::Options RouterOptions(int64_t dim, const ParallelSpec& spec) {
  Linear::Options options;
  options.spec = spec;
  options.bias = false;
  options.weight_init = ParamInit::Uniform(1.0f / std::sqrt(static_cast<float>(dim)));
  return options;
}

absl::Status CheckRows(absl::string_view what, const Tensor& t, int64_t cols) {
  if (t.defined() && t.dtype() == DType::kF32 && t.rank() == 2 && t.dim(1) == cols) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(what, " must be f32 [tokens, ", cols, "], got ",
                                                 t.defined() ? t.DebugString() : "undefined"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<ExpertParallelMoe>> ExpertParallelMoe::Create(
    ParameterStore& store, Communicator& ep, const std::string& name, int64_t dim,
    const Options& options, const Groups& groups) {
  if (options.num_experts < 1 || ep.size() < 1 || options.num_experts % ep.size() != 0) {
    return UsageError(absl::StrCat("num_experts (", options.num_experts,
                                   ") must be a positive multiple of parallel.ep (", ep.size(),
                                   ", group ", ep.name(), ") for ", name));
  }
  if (options.top_k < 1 || options.top_k > options.num_experts) {
    return UsageError(absl::StrCat("top_k (", options.top_k, ") must be in [1, num_experts = ",
                                   options.num_experts, "] for ", name));
  }
  if (options.expert_hidden < 1 || dim < 1) {
    return UsageError(absl::StrCat("dim (", dim, ") and expert_hidden (", options.expert_hidden,
                                   ") must be positive for ", name));
  }
  if (options.capacity_factor < 0) {
    return UsageError(absl::StrCat("capacity_factor ", options.capacity_factor, " of ", name,
                                   " must be >= 0 (0: dropless)"));
  }
  return std::unique_ptr<ExpertParallelMoe>(
      new ExpertParallelMoe(store, ep, name, dim, options, groups));
}

ExpertParallelMoe::ExpertParallelMoe(ParameterStore& store, Communicator& ep,
                                     const std::string& name, int64_t dim, const Options& options,
                                     const Groups& groups)
    : ep_(ep),
      balance_(groups.balance),
      dim_(dim),
      options_(options),
      local_experts_(options.num_experts / ep.size()),
      first_expert_(ep.rank() * local_experts_),
      router_(store, name + ".router", dim, options.num_experts,
              RouterOptions(dim, groups.dense_spec)) {
  // Whole parameters under their global names: the store initializes by
  // (seed, name, index), so they equal the single-rank layer's.
  for (int64_t e = first_expert_; e < first_expert_ + local_experts_; ++e) {
    experts_.push_back(std::make_unique<SwigluMlp>(store, name + ".experts." + std::to_string(e),
                                                   dim, options.expert_hidden,
                                                   ParallelSpec::Expert(static_cast<int>(e))));
  }
  std::vector<SwigluMlp*> local;
  for (const auto& e : experts_) local.push_back(e.get());
  grouped_ = std::make_unique<GroupedSwigluExperts>(std::move(local));
  if (options.shared_expert_hidden > 0) {
    shared_ = std::make_unique<SwigluMlp>(store, name + ".shared_expert", dim,
                                          options.shared_expert_hidden, groups.dense_spec);
  }
}

void ExpertParallelMoe::Regroup(const Tensor& from, const Tensor& to, bool to_expert_order) const {
  const int64_t P = ep_.size(), L = local_experts_;
  Backend& backend = to.backend();
  // Start row of (q, e) in source order and in expert order.
  std::vector<int64_t> source_start(P * L), expert_start(P * L);
  int64_t row = 0;
  for (int64_t q = 0; q < P; ++q)
    for (int64_t e = 0; e < L; ++e) {
      source_start[q * L + e] = row;
      row += recv_counts_[q * L + e];
    }
  row = 0;
  for (int64_t e = 0; e < L; ++e)
    for (int64_t q = 0; q < P; ++q) {
      expert_start[q * L + e] = row;
      row += recv_counts_[q * L + e];
    }
  const float* src = from.ptr<float>();
  float* dst = to.ptr<float>();
  for (int64_t i = 0; i < P * L; ++i) {
    const int64_t from_row = to_expert_order ? source_start[i] : expert_start[i];
    const int64_t to_row = to_expert_order ? expert_start[i] : source_start[i];
    backend.Copy(dst + to_row * dim_, src + from_row * dim_,
                 static_cast<size_t>(recv_counts_[i] * dim_) * sizeof(float));
  }
}

absl::StatusOr<Tensor> ExpertParallelMoe::ExchangeRows(Arena& arena, const Tensor& rows,
                                                       const std::vector<int64_t>& send_rows,
                                                       const std::vector<int64_t>& recv_rows) {
  std::vector<size_t> send_counts(send_rows.size()), recv_counts(recv_rows.size());
  int64_t total = 0;
  for (size_t r = 0; r < send_rows.size(); ++r) {
    send_counts[r] = static_cast<size_t>(send_rows[r] * dim_);
    recv_counts[r] = static_cast<size_t>(recv_rows[r] * dim_);
    total += recv_rows[r];
  }
  Tensor out = arena.AllocateUninitialized(DType::kF32, Shape{total, dim_});  // [received, dim]
  TESSERA_RETURN_IF_ERROR(ep_.CompleteOnDevice(
      ep_.AllToAllV(rows.ptr<float>(), send_counts, out.ptr<float>(), recv_counts, DType::kF32)));
  return out;
}

absl::StatusOr<Tensor> ExpertParallelMoe::Forward(Arena& arena, const Tensor& x) {
  TESSERA_RETURN_IF_ERROR(CheckRows("ExpertParallelMoe input", x, dim_));
  const int64_t T = x.dim(0), k = options_.top_k;
  tokens_ = T;
  Route(arena, x);
  // The routing bookkeeping runs on the backend; what sizes the all-to-all
  // and the balance statistics come to the host in one read (Sort).
  const std::vector<int64_t> sorted = Sort(arena);
  const int64_t E = options_.num_experts;
  const std::vector<int64_t> stats(sorted.begin() + E + 1, sorted.end() - 1);
  dropped_ = sorted.back();
  TESSERA_ASSIGN_OR_RETURN(const std::vector<int64_t> all_rows, ExchangeCounts(sorted, stats));
  TESSERA_RETURN_IF_ERROR(ComputeGroupBalance(stats, all_rows));
  weights_ = CombineWeights(arena, raw_weights_, T, k, options_.renormalize_topk);
  TESSERA_ASSIGN_OR_RETURN(Tensor permuted, Dispatch(arena, x, sorted, all_rows));
  TESSERA_ASSIGN_OR_RETURN(returned_out_, RunRemoteExperts(arena, permuted));  // [kept, dim]

  Tensor y = shared_ ? shared_->Forward(arena, x) : arena.Allocate(DType::kF32, Shape{T, dim_});
  arena.backend().UnpermuteCombineForward(returned_out_.ptr<float>(),
                                          row_of_assignment_.ptr<int32_t>(), weights_.ptr<float>(),
                                          y.ptr<float>(), T, dim_, k);
  return y;
}

void ExpertParallelMoe::Route(Arena& arena, const Tensor& x) {
  const int64_t T = x.dim(0), E = options_.num_experts, k = options_.top_k;
  Backend& backend = arena.backend();
  // Router in fp32 on the local tokens: logits [T, E] -> probs -> top-k.
  Tensor logits = router_.Forward(arena, x);
  probs_ = arena.AllocateUninitialized(DType::kF32, Shape{T, E});
  backend.SoftmaxForward(logits.ptr<float>(), probs_.ptr<float>(), T, E);
  expert_index_ = arena.AllocateUninitialized(DType::kI32, Shape{T * k});
  raw_weights_ = arena.AllocateUninitialized(DType::kF32, Shape{T * k});
  backend.TopKForward(probs_.ptr<float>(), expert_index_.ptr<int32_t>(), raw_weights_.ptr<float>(),
                      T, E, k);
  chosen_index_ = expert_index_;
}

std::vector<int64_t> ExpertParallelMoe::Sort(Arena& arena) {
  const int64_t T = tokens_, E = options_.num_experts, k = options_.top_k;
  Backend& backend = arena.backend();
  // [offsets E+1 | assignment counts E | probability sums E (double,
  // bit-copied) | tokens | dropped]: one block, one read.
  Tensor block = arena.Allocate(DType::kI64, Shape{3 * E + 3});
  int64_t* values = block.ptr<int64_t>();
  // Over the router's choice before drops.
  backend.MoeRoutingStatistics(chosen_index_.ptr<int32_t>(), probs_.ptr<float>(), T, E, k,
                               values + E + 1, reinterpret_cast<double*>(values + 2 * E + 1));
  // Per source rank, first come first served in token order.
  if (options_.capacity_factor > 0) {
    const int64_t capacity = ExpertCapacity(options_.capacity_factor, T, k, E);
    expert_index_ = arena.AllocateUninitialized(DType::kI32, Shape{T * k});
    // The slots themselves are not used here: the rows are exchanged compact.
    Tensor slot_of = arena.AllocateUninitialized(DType::kI32, Shape{T * k});
    Tensor assignment_of_slot = arena.AllocateUninitialized(DType::kI32, Shape{E * capacity});
    backend.MoeCapacitySlots(chosen_index_.ptr<int32_t>(), T * k, E, capacity,
                             expert_index_.ptr<int32_t>(), slot_of.ptr<int32_t>(),
                             assignment_of_slot.ptr<int32_t>(), values + 3 * E + 2);
  }
  // Expert order: the rows bound for rank r (its experts) are contiguous.
  row_of_assignment_ = arena.AllocateUninitialized(DType::kI32, Shape{T * k});
  assignment_of_row_ = arena.AllocateUninitialized(DType::kI32, Shape{T * k});
  backend.SortByExpert(expert_index_.ptr<int32_t>(), T * k, E, values,
                       row_of_assignment_.ptr<int32_t>(), assignment_of_row_.ptr<int32_t>());
  std::vector<int64_t> host(3 * E + 3);
  backend.CopyToHost(host.data(), values, block.bytes());
  host[3 * E + 1] = T;
  return host;
}

absl::StatusOr<std::vector<int64_t>> ExpertParallelMoe::ExchangeCounts(
    const std::vector<int64_t>& sorted, const std::vector<int64_t>& stats) {
  // One all-gather over ep of [rows this rank sends to each expert | balance
  // stats] tells every owner what it receives and, when the balance group is
  // ep, gives the balance statistics too.
  const int64_t E = options_.num_experts, P = ep_.size();
  const int64_t row_width = E + static_cast<int64_t>(stats.size());
  std::vector<int64_t> row(row_width, 0), all_rows(P * row_width);
  for (int64_t e = 0; e < E; ++e) row[e] = sorted[e + 1] - sorted[e];  // kept, from the offsets
  std::copy(stats.begin(), stats.end(), row.begin() + E);
  Communicator& ep = ep_.host();  // counts on the host
  TESSERA_RETURN_IF_ERROR(ep.Complete(
      ep.AllGather(row.data(), all_rows.data(), static_cast<size_t>(row_width), DType::kI64)));
  return all_rows;
}

absl::Status ExpertParallelMoe::ComputeGroupBalance(const std::vector<int64_t>& stats,
                                                    const std::vector<int64_t>& all_rows) {
  // Balance statistics summed in group-rank order, identically on every rank.
  const int64_t E = options_.num_experts, k = options_.top_k, P = ep_.size();
  const int64_t width = static_cast<int64_t>(stats.size()), row_width = E + width;
  std::vector<int64_t> group_stats;
  int64_t group_size = P;
  if (balance_ == nullptr) {
    group_stats.resize(P * width);
    for (int64_t q = 0; q < P; ++q)
      std::copy_n(all_rows.begin() + q * row_width + E, width, group_stats.begin() + q * width);
  } else {
    group_size = balance_->size();
    group_stats.resize(group_size * width);
    Communicator& balance = balance_->host();
    TESSERA_RETURN_IF_ERROR(balance.Complete(balance.AllGather(
        stats.data(), group_stats.data(), static_cast<size_t>(width), DType::kI64)));
  }
  std::vector<int64_t> global_counts(E, 0);
  std::vector<double> prob_sums(E, 0.0);
  global_tokens_ = 0;
  for (int64_t q = 0; q < group_size; ++q) {
    const int64_t* st = group_stats.data() + q * width;
    for (int64_t e = 0; e < E; ++e) {
      global_counts[e] += st[e];
      double sum;
      std::memcpy(&sum, &st[E + e], sizeof(double));
      prob_sums[e] += sum;
    }
    global_tokens_ += st[2 * E];
  }
  assignment_counts_ = global_counts;
  // GLOBAL_BATCH: f_i over every replica's tokens (P_i stays the group's).
  int64_t count_tokens = global_tokens_;
  GlobalBalanceCounts* global = options_.global_balance;
  if (global != nullptr && global->active()) {
    TESSERA_RETURN_IF_ERROR(global->Accumulate(balance_totals_, global_counts, count_tokens));
  }
  BalanceStatistics balance = ComputeBalance(global_counts, count_tokens, prob_sums,
                                             global_tokens_, k, options_.balance_loss_coef);
  balance_f_ = std::move(balance.f);
  expert_load_ = std::move(balance.load);
  balance_loss_ = balance.loss;
  return absl::OkStatus();
}

absl::StatusOr<Tensor> ExpertParallelMoe::Dispatch(Arena& arena, const Tensor& x,
                                                   const std::vector<int64_t>& sorted,
                                                   const std::vector<int64_t>& all_rows) {
  const int64_t E = options_.num_experts, k = options_.top_k;
  const int64_t P = ep_.size(), L = local_experts_,
                row_width = static_cast<int64_t>(all_rows.size()) / P;
  Backend& backend = arena.backend();
  const int64_t* offsets = sorted.data();  // the expert offsets [E + 1]
  send_rows_.assign(P, 0);
  recv_rows_.assign(P, 0);
  recv_counts_.assign(P * L, 0);
  for (int64_t r = 0; r < P; ++r) send_rows_[r] = offsets[(r + 1) * L] - offsets[r * L];
  for (int64_t q = 0; q < P; ++q)
    for (int64_t e = 0; e < L; ++e) {
      recv_counts_[q * L + e] = all_rows[q * row_width + first_expert_ + e];
      recv_rows_[q] += recv_counts_[q * L + e];
    }
  const int64_t kept = offsets[E];  // T*k less the dropped assignments
  Tensor permuted = arena.AllocateUninitialized(DType::kF32, Shape{kept, dim_});  // [kept, dim]
  backend.PermuteForward(x.ptr<float>(), assignment_of_row_.ptr<int32_t>(), permuted.ptr<float>(),
                         kept, dim_, k);
  assignment_of_row_ = Tensor();
  return permuted;
}

absl::StatusOr<Tensor> ExpertParallelMoe::RunRemoteExperts(Arena& arena, const Tensor& permuted) {
  // To the owners, through their experts, and back home in the same order.
  const int64_t P = ep_.size(), L = local_experts_;
  Stopwatch watch;
  TESSERA_ASSIGN_OR_RETURN(Tensor received,
                           ExchangeRows(arena, permuted, send_rows_, recv_rows_));  // [R, dim]
  exchange_seconds_ = watch.Lap();
  const int64_t R = received.dim(0);
  Tensor expert_in = arena.AllocateUninitialized(DType::kF32, Shape{R, dim_});
  Regroup(received, expert_in, /*to_expert_order=*/true);
  watch.Lap();
  Tensor expert_out = arena.AllocateUninitialized(DType::kF32, Shape{R, dim_});
  // Local expert e owns the rows every rank sent it, contiguous after Regroup.
  std::vector<int64_t> offsets(L + 1, 0);
  for (int64_t e = 0; e < L; ++e) {
    offsets[e + 1] = offsets[e];
    for (int64_t q = 0; q < P; ++q) offsets[e + 1] += recv_counts_[q * L + e];
  }
  grouped_->Forward(arena, expert_in, offsets, expert_out);
  expert_seconds_ = watch.Lap();
  Tensor back = arena.AllocateUninitialized(DType::kF32, Shape{R, dim_});
  Regroup(expert_out, back, /*to_expert_order=*/false);
  watch.Lap();
  TESSERA_ASSIGN_OR_RETURN(Tensor returned, ExchangeRows(arena, back, recv_rows_, send_rows_));
  exchange_seconds_ += watch.Lap();
  return returned;
}

absl::StatusOr<Tensor> ExpertParallelMoe::Backward(Arena& arena, const Tensor& dy,
                                                   float loss_scale) {
  TESSERA_RETURN_IF_ERROR(CheckRows("ExpertParallelMoe output gradient", dy, dim_));
  if (!probs_.defined() || dy.dim(0) != tokens_) {
    return absl::FailedPreconditionError(
        absl::StrCat("ExpertParallelMoe::Backward needs a Forward of ", dy.dim(0),
                     " tokens before it (last Forward: ",
                     probs_.defined() ? absl::StrCat(tokens_, " tokens") : "none", ")"));
  }
  const int64_t T = tokens_, E = options_.num_experts, k = options_.top_k;
  Backend& backend = arena.backend();

  // Adjoint of combine: gradients of the returned expert outputs (home,
  // expert order) and of the weights.
  const int64_t kept = returned_out_.dim(0);
  Tensor dreturned = arena.AllocateUninitialized(DType::kF32, Shape{kept, dim_});
  Tensor dweights = arena.AllocateUninitialized(DType::kF32, Shape{T * k});
  backend.UnpermuteCombineBackward(dy.ptr<float>(), returned_out_.ptr<float>(),
                                   row_of_assignment_.ptr<int32_t>(), weights_.ptr<float>(),
                                   dreturned.ptr<float>(), dweights.ptr<float>(), T, dim_, k);
  // To the owners, through the experts, and back.
  Stopwatch watch;
  TESSERA_ASSIGN_OR_RETURN(Tensor dreceived,
                           ExchangeRows(arena, dreturned, send_rows_, recv_rows_));  // [R, dim]
  exchange_seconds_ += watch.Lap();
  const int64_t R = dreceived.dim(0);
  Tensor dexpert_out = arena.AllocateUninitialized(DType::kF32, Shape{R, dim_});
  Regroup(dreceived, dexpert_out, /*to_expert_order=*/true);
  Tensor dexpert_in = arena.AllocateUninitialized(DType::kF32, Shape{R, dim_});
  grouped_->Backward(arena, dexpert_out, dexpert_in);
  Tensor dback = arena.AllocateUninitialized(DType::kF32, Shape{R, dim_});
  Regroup(dexpert_in, dback, /*to_expert_order=*/false);
  expert_seconds_ += watch.Lap();
  TESSERA_ASSIGN_OR_RETURN(Tensor dpermuted,
                           ExchangeRows(arena, dback, recv_rows_, send_rows_));  // [kept, dim]
  exchange_seconds_ += watch.Lap();
  Tensor dx = arena.AllocateUninitialized(DType::kF32, Shape{T, dim_});
  backend.PermuteBackward(dpermuted.ptr<float>(), row_of_assignment_.ptr<int32_t>(),
                          dx.ptr<float>(), T, dim_, k);
  // Balance loss over the group's tokens: d/dp[t, i] = alpha * f_i / T_group
  // (f_i, formed on the host from the exchanged counts, uploaded).
  Tensor balance_f = arena.AllocateUninitialized(DType::kI64, Shape{E});
  backend.CopyToDevice(balance_f.address(), balance_f_.data(), balance_f.bytes());
  RouterGradientInputs router{raw_weights_.ptr<float>(),
                              weights_.ptr<float>(),
                              chosen_index_.ptr<int32_t>(),
                              probs_.ptr<float>(),
                              reinterpret_cast<const double*>(balance_f.ptr<int64_t>()),
                              T,
                              E,
                              k,
                              global_tokens_,
                              options_.renormalize_topk && k > 1,
                              options_.balance_loss_coef,
                              loss_scale};
  AddSharedAndRouterGradients(arena, dy, shared_.get(), router_, router, dweights.ptr<float>(),
                              dx);
  probs_ = chosen_index_ = expert_index_ = raw_weights_ = weights_ = row_of_assignment_ =
      returned_out_ = Tensor();
  return dx;
}

}  // namespace tessera::parallel
