#include "runtime/nn/moe.h"

#include <cmath>
#include <vector>

#include "runtime/base/status.h"


namespace tessera {
namespace {
Linear::Options RouterOptions(int64_t dim) {
  Linear::Options options;
  options.bias = false;
  options.fp32_gemm = true;  // routing decisions are not made on bf16-rounded logits
  // kaiming_uniform(a=sqrt(5)) as the reference router: bound 1/sqrt(fan_in).
  options.weight_init = ParamInit::Uniform(1.0f / std::sqrt(static_cast<float>(dim)));
  return options;
}
}  // namespace

MoeLayer::MoeLayer(ParameterStore& store, const std::string& name, int64_t dim,
                   const Options& options)
    : dim_(dim), options_(options), router_(store, name + ".router", dim, options.num_experts,
                                            RouterOptions(dim)) {
  TESSERA_CHECK(options.top_k >= 1 && options.top_k <= options.num_experts);
  for (int64_t e = 0; e < options.num_experts; ++e) {
    experts_.push_back(std::make_unique<SwigluMlp>(
        store, name + ".experts." + std::to_string(e), dim, options.expert_hidden,
        ParallelSpec::Expert(static_cast<int>(e))));
  }
  std::vector<SwigluMlp*> experts;
  for (const auto& e : experts_) experts.push_back(e.get());
  grouped_ = std::make_unique<GroupedSwigluExperts>(std::move(experts));
  if (options.shared_expert_hidden > 0) {
    shared_ = std::make_unique<SwigluMlp>(store, name + ".shared_expert", dim,
                                          options.shared_expert_hidden);
  }
}

absl::StatusOr<Tensor> MoeLayer::Forward(Arena& arena, const Tensor& x) {
  const int64_t T = x.dim(0), E = options_.num_experts, k = options_.top_k;
  tokens_ = T;
  Backend& backend = arena.backend();
  // Router in fp32: logits [T, E] -> probs -> top-k.
  Tensor logits = router_.Forward(arena, x);
  probs_ = arena.AllocateUninitialized(DType::kF32, Shape{T, E});
  backend.SoftmaxForward(logits.ptr<float>(), probs_.ptr<float>(), T, E);
  chosen_index_ = arena.AllocateUninitialized(DType::kI32, Shape{T * k});
  raw_weights_ = arena.AllocateUninitialized(DType::kF32, Shape{T * k});
  backend.TopKForward(probs_.ptr<float>(), chosen_index_.ptr<int32_t>(), raw_weights_.ptr<float>(),
                      T, E, k);
  // Balance loss and load over the greedy top-k choice (before any drop).
  TESSERA_RETURN_IF_ERROR(ComputeLayerBalance(arena, T));
  weights_ = CombineWeights(arena, raw_weights_, T, k, options_.renormalize_topk);

  // Permute token rows into expert order and run each expert on its rows.
  Tensor assignment_of_row = LayOutRows(arena, T);
  const int64_t rows = offsets_[E];
  Tensor permuted = arena.AllocateUninitialized(DType::kF32, Shape{rows, dim_});  // [rows, dim]
  backend.PermuteForward(x.ptr<float>(), assignment_of_row.ptr<int32_t>(), permuted.ptr<float>(),
                         rows, dim_, k);
  expert_out_ = arena.AllocateUninitialized(DType::kF32, Shape{rows, dim_});
  grouped_->Forward(arena, permuted, offsets_, expert_out_);

  Tensor y = shared_ ? shared_->Forward(arena, x) : arena.Allocate(DType::kF32, Shape{T, dim_});
  backend.UnpermuteCombineForward(expert_out_.ptr<float>(), row_of_assignment_.ptr<int32_t>(),
                                  weights_.ptr<float>(), y.ptr<float>(), T, dim_, k);

  // [loss | load | dropped] into memory that outlives the arena, for the
  // accessors (read only when one asks).
  if (!report_.defined() || &report_.backend() != &backend) {
    report_ = Tensor::Empty(DType::kI64, Shape{E + 2}, backend);
  }
  backend.Copy(report_.address(), bookkeeping_.ptr<int64_t>() + 3 * E, report_.bytes());
  report_read_ = false;
  return y;
}

absl::Status MoeLayer::ComputeLayerBalance(Arena& arena, int64_t T) {
  const int64_t E = options_.num_experts, k = options_.top_k;
  Backend& backend = arena.backend();
  // Zero-filled: the dropped count (last) stays 0 unless capacity drops some.
  bookkeeping_ = arena.Allocate(DType::kI64, Shape{4 * E + 2});
  int64_t* counts = bookkeeping_.ptr<int64_t>();
  double* prob_sums = reinterpret_cast<double*>(counts + E);
  double* balance = reinterpret_cast<double*>(counts + 2 * E);  // [f | loss | load]
  backend.MoeRoutingStatistics(chosen_index_.ptr<int32_t>(), probs_.ptr<float>(), T, E, k, counts,
                               prob_sums);
  int64_t count_tokens = T;
  GlobalBalanceCounts* global = options_.global_balance;
  if (global != nullptr && global->active()) {
    // The sum over replicas is a host collective: the E counts go to the
    // host and their running totals come back.
    std::vector<int64_t> host_counts(E);
    backend.CopyToHost(host_counts.data(), counts, sizeof(int64_t) * static_cast<size_t>(E));
    TESSERA_RETURN_IF_ERROR(global->Accumulate(balance_totals_, host_counts, count_tokens));
    backend.CopyToDevice(counts, host_counts.data(), sizeof(int64_t) * static_cast<size_t>(E));
  }
  backend.MoeBalance(counts, count_tokens, prob_sums, T, E, k, options_.balance_loss_coef,
                     balance);
  return absl::OkStatus();
}

Tensor MoeLayer::LayOutRows(Arena& arena, int64_t T) {
  const int64_t E = options_.num_experts, k = options_.top_k;
  Backend& backend = arena.backend();
  row_of_assignment_ = arena.AllocateUninitialized(DType::kI32, Shape{T * k});
  offsets_.assign(E + 1, 0);
  if (options_.capacity_factor > 0) {
    // Fixed slots: expert e owns rows [e * capacity, (e + 1) * capacity),
    // sizes the host knows without reading the routing.
    const int64_t capacity = ExpertCapacity(options_.capacity_factor, T, k, E);
    for (int64_t e = 0; e <= E; ++e) offsets_[e] = e * capacity;
    expert_index_ = arena.AllocateUninitialized(DType::kI32, Shape{T * k});
    Tensor assignment_of_row = arena.AllocateUninitialized(DType::kI32, Shape{E * capacity});
    backend.MoeCapacitySlots(chosen_index_.ptr<int32_t>(), T * k, E, capacity,
                             expert_index_.ptr<int32_t>(), row_of_assignment_.ptr<int32_t>(),
                             assignment_of_row.ptr<int32_t>(),
                             bookkeeping_.ptr<int64_t>() + 4 * E + 1);
    return assignment_of_row;
  }
  // Dropless: each expert's row count is the routing's, read on the host
  // (the grouped GEMM's sizes), as Megatron-Core's dropless dispatcher does.
  expert_index_ = chosen_index_;
  Tensor expert_offsets = arena.AllocateUninitialized(DType::kI64, Shape{E + 1});
  Tensor assignment_of_row = arena.AllocateUninitialized(DType::kI32, Shape{T * k});
  backend.SortByExpert(expert_index_.ptr<int32_t>(), T * k, E, expert_offsets.ptr<int64_t>(),
                       row_of_assignment_.ptr<int32_t>(), assignment_of_row.ptr<int32_t>());
  backend.CopyToHost(offsets_.data(), expert_offsets.address(), expert_offsets.bytes());
  return assignment_of_row;
}

void MoeLayer::ReadReport() const {
  if (report_read_) return;
  const int64_t E = options_.num_experts;
  std::vector<int64_t> values(E + 2);
  report_.backend().CopyToHost(values.data(), report_.address(), report_.bytes());
  const double* doubles = reinterpret_cast<const double*>(values.data());
  balance_loss_ = doubles[0];
  expert_load_.assign(doubles + 1, doubles + 1 + E);
  dropped_ = values[E + 1];
  report_read_ = true;
}

absl::Status GlobalBalanceCounts::Accumulate(Totals& totals, std::vector<int64_t>& counts,
                                             int64_t& tokens) const {
  // One vector [counts | tokens] per forward: one collective.
  std::vector<int64_t> values(counts);
  values.push_back(tokens);
  if (sum_) TESSERA_RETURN_IF_ERROR(sum_(values));
  if (totals.step != step_) {
    totals.step = step_;
    totals.counts.assign(counts.size(), 0);
    totals.tokens = 0;
  }
  for (size_t e = 0; e < counts.size(); ++e) counts[e] = totals.counts[e] += values[e];
  tokens = totals.tokens += values.back();
  return absl::OkStatus();
}

Tensor MoeLayer::Backward(Arena& arena, const Tensor& dy, float loss_scale) {
  const int64_t T = tokens_, E = options_.num_experts, k = options_.top_k;
  Backend& backend = arena.backend();
  const int64_t rows = offsets_[E];

  // Unused capacity slots get no gradient from the combine: zero, so that
  // they add nothing to the experts' weight gradients.
  Tensor dexpert_out = options_.capacity_factor > 0
                           ? arena.Allocate(DType::kF32, Shape{rows, dim_})
                           : arena.AllocateUninitialized(DType::kF32, Shape{rows, dim_});
  Tensor dweights = arena.AllocateUninitialized(DType::kF32, Shape{T * k});
  backend.UnpermuteCombineBackward(dy.ptr<float>(), expert_out_.ptr<float>(),
                                   row_of_assignment_.ptr<int32_t>(), weights_.ptr<float>(),
                                   dexpert_out.ptr<float>(), dweights.ptr<float>(), T, dim_, k);
  Tensor dpermuted = arena.AllocateUninitialized(DType::kF32, Shape{rows, dim_});
  grouped_->Backward(arena, dexpert_out, dpermuted);
  Tensor dx = arena.AllocateUninitialized(DType::kF32, Shape{T, dim_});
  backend.PermuteBackward(dpermuted.ptr<float>(), row_of_assignment_.ptr<int32_t>(),
                          dx.ptr<float>(), T, dim_, k);
  const double* balance_f = reinterpret_cast<const double*>(bookkeeping_.ptr<int64_t>() + 2 * E);
  RouterGradientInputs router{raw_weights_.ptr<float>(), weights_.ptr<float>(),
                              chosen_index_.ptr<int32_t>(), probs_.ptr<float>(), balance_f,
                              T, E, k, T, options_.renormalize_topk && k > 1,
                              options_.balance_loss_coef, loss_scale};
  AddSharedAndRouterGradients(arena, dy, shared_.get(), router_, router, dweights.ptr<float>(),
                              dx);
  probs_ = expert_index_ = chosen_index_ = raw_weights_ = weights_ = row_of_assignment_ =
      expert_out_ = bookkeeping_ = Tensor();
  return dx;
}

int64_t ExpertCapacity(float capacity_factor, int64_t tokens, int64_t k, int64_t experts) {
  return static_cast<int64_t>(std::ceil(capacity_factor * static_cast<double>(tokens * k) /
                                        static_cast<double>(experts)));
}

int64_t ApplyCapacity(float capacity_factor, int64_t tokens, int64_t k, int64_t experts,
                      int32_t* index) {
  const int64_t capacity = ExpertCapacity(capacity_factor, tokens, k, experts);
  std::vector<int64_t> taken(experts, 0);
  int64_t dropped = 0;
  for (int64_t a = 0; a < tokens * k; ++a) {
    if (taken[index[a]] >= capacity) {
      index[a] = -1;
      ++dropped;
    } else {
      ++taken[index[a]];
    }
  }
  return dropped;
}

BalanceStatistics ComputeBalance(const std::vector<int64_t>& counts, int64_t count_tokens,
                                 const std::vector<double>& prob_sums, int64_t prob_tokens,
                                 int64_t k, double coef) {
  const int64_t E = static_cast<int64_t>(counts.size());
  BalanceStatistics out;
  out.f.assign(E, 0.0);
  out.load.assign(E, 0.0);
  for (int64_t e = 0; e < E; ++e) {
    const double share = count_tokens == 0 ? 0.0
                                           : static_cast<double>(counts[e]) /
                                                 static_cast<double>(count_tokens * k);
    out.load[e] = share;
    out.f[e] = share * static_cast<double>(E);
    const double mean_prob =
        prob_tokens > 0 ? prob_sums[e] / static_cast<double>(prob_tokens) : prob_sums[e];
    out.loss += coef * out.f[e] * mean_prob;
  }
  return out;
}

Tensor CombineWeights(Arena& arena, const Tensor& raw_weights, int64_t tokens, int64_t k,
                      bool renormalize) {
  if (!renormalize || k <= 1) return raw_weights;
  Tensor weights = arena.AllocateUninitialized(DType::kF32, Shape{tokens * k});
  arena.backend().MoeRenormalizeForward(raw_weights.ptr<float>(), weights.ptr<float>(), tokens, k);
  return weights;
}

Tensor RouterLogitsGradient(Arena& arena, const RouterGradientInputs& in, float* dw) {
  const int64_t T = in.tokens, E = in.experts, k = in.top_k;
  Backend& backend = arena.backend();
  // Through the renormalization: w = r / s  =>  dr = (dw - sum(dw * w)) / s.
  if (in.renormalize) backend.MoeRenormalizeBackward(in.raw_weights, in.weights, dw, T, k);
  // Top-k weights were read from the probabilities of the router's choice
  // (dropped assignments included: their weight got zero gradient before).
  Tensor dprobs = arena.Allocate(DType::kF32, Shape{T, E});
  backend.TopKBackward(dw, in.chosen, dprobs.ptr<float>(), T, E, k);
  // Balance loss: d/dp[t, i] of alpha * sum_i f_i * mean_t p[t, i] = alpha f_i / T.
  if (in.balance_coef > 0 && in.balance_tokens > 0) {
    backend.MoeBalanceGradient(in.balance_f, in.loss_scale * in.balance_coef,
                               static_cast<double>(in.balance_tokens), dprobs.ptr<float>(), T, E);
  }
  Tensor dlogits = arena.AllocateUninitialized(DType::kF32, Shape{T, E});
  backend.SoftmaxBackward(dprobs.ptr<float>(), in.probs, dlogits.ptr<float>(), T, E);
  return dlogits;
}

void AddSharedAndRouterGradients(Arena& arena, const Tensor& dy, SwigluMlp* shared,
                                 Linear& router, const RouterGradientInputs& in, float* dweights,
                                 const Tensor& dx) {
  const int64_t n = dx.numel();
  Backend& backend = arena.backend();
  if (shared != nullptr) {
    Tensor dshared = shared->Backward(arena, dy);
    backend.AddInPlace(dx.ptr<float>(), dshared.ptr<float>(), n);
  }
  Tensor dlogits = RouterLogitsGradient(arena, in, dweights);
  Tensor drouter = router.Backward(arena, dlogits);
  backend.AddInPlace(dx.ptr<float>(), drouter.ptr<float>(), n);
}

double MoeLayer::ForwardFlops(int64_t tokens) const {
  double flops = router_.ForwardFlops(tokens);
  if (!experts_.empty()) flops += experts_[0]->ForwardFlops(tokens * options_.top_k);
  if (shared_) flops += shared_->ForwardFlops(tokens);
  return flops;
}

}  // namespace tessera
