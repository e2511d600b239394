#include "runtime/nn/moe.h"

#include <cmath>
#include <vector>

#include "runtime/base/status.h"
#include "runtime/tensor/host_access.h"


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
  expert_index_ = arena.AllocateUninitialized(DType::kI32, Shape{T * k});
  raw_weights_ = arena.AllocateUninitialized(DType::kF32, Shape{T * k});
  backend.TopKForward(probs_.ptr<float>(), expert_index_.ptr<int32_t>(), raw_weights_.ptr<float>(),
                   T, E, k);
  // Routing bookkeeping (counts, capacity) runs on the host.
  Tensor index_host = HostReadable(expert_index_);
  int32_t* index = index_host.data<int32_t>();
  const Tensor probs_host = HostReadable(probs_);
  const float* probs = probs_host.data<float>();

  // Balance loss and load over the greedy top-k choice (before any drop).
  TESSERA_RETURN_IF_ERROR(ComputeLayerBalance(index, probs, T));

  weights_ = CombineWeights(arena, raw_weights_, T, k, options_.renormalize_topk);

  // Capacity: first come, first served in token order.
  dropped_ = 0;
  chosen_index_ = expert_index_;
  if (options_.capacity_factor > 0) {
    chosen_index_ = arena.AllocateUninitialized(DType::kI32, Shape{T * k});
    backend.Copy(chosen_index_.address(), expert_index_.address(), expert_index_.bytes());
    dropped_ = ApplyCapacity(options_.capacity_factor, T, k, E, index);
    WriteBack(index_host, expert_index_);
  }

  // Permute token rows into expert order and run each expert on its rows.
  expert_offsets_ = arena.AllocateUninitialized(DType::kI64, Shape{E + 1});
  row_of_assignment_ = arena.AllocateUninitialized(DType::kI32, Shape{T * k});
  Tensor assignment_of_row = arena.AllocateUninitialized(DType::kI32, Shape{T * k});
  backend.SortByExpert(expert_index_.ptr<int32_t>(), T * k, E, expert_offsets_.ptr<int64_t>(),
                    row_of_assignment_.ptr<int32_t>(), assignment_of_row.ptr<int32_t>());
  expert_offsets_ = HostReadable(expert_offsets_);
  const int64_t* offsets = expert_offsets_.data<int64_t>();
  const int64_t rows = offsets[E];
  Tensor permuted = arena.AllocateUninitialized(DType::kF32, Shape{rows, dim_});  // [rows, dim]
  backend.PermuteForward(x.ptr<float>(), assignment_of_row.ptr<int32_t>(), permuted.ptr<float>(),
                      rows, dim_, k);
  expert_out_ = arena.AllocateUninitialized(DType::kF32, Shape{rows, dim_});
  grouped_->Forward(arena, permuted, std::span<const int64_t>(offsets, E + 1), expert_out_);

  Tensor y = shared_ ? shared_->Forward(arena, x) : arena.Allocate(DType::kF32, Shape{T, dim_});
  backend.UnpermuteCombineForward(expert_out_.ptr<float>(), row_of_assignment_.ptr<int32_t>(),
                               weights_.ptr<float>(), y.ptr<float>(), T, dim_, k);
  return y;
}

absl::Status MoeLayer::ComputeLayerBalance(const int32_t* index, const float* probs, int64_t T) {
  const int64_t E = options_.num_experts, k = options_.top_k;
  std::vector<int64_t> counts(E, 0);
  for (int64_t a = 0; a < T * k; ++a) ++counts[index[a]];
  std::vector<double> prob_sums(E, 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) prob_sums[e] += probs[t * E + e];
  int64_t count_tokens = T;
  GlobalBalanceCounts* global = options_.global_balance;
  if (global != nullptr && global->active()) {
    TESSERA_RETURN_IF_ERROR(global->Accumulate(balance_totals_, counts, count_tokens));
  }
  BalanceStatistics balance =
      ComputeBalance(counts, count_tokens, prob_sums, T, k, options_.balance_loss_coef);
  balance_f_ = std::move(balance.f);
  expert_load_ = std::move(balance.load);
  balance_loss_ = balance.loss;
  return absl::OkStatus();
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
  const int64_t* offsets = expert_offsets_.data<int64_t>();
  const int64_t rows = offsets[E];

  Tensor dexpert_out = arena.AllocateUninitialized(DType::kF32, Shape{rows, dim_});
  Tensor dweights = arena.AllocateUninitialized(DType::kF32, Shape{T * k});
  backend.UnpermuteCombineBackward(dy.ptr<float>(), expert_out_.ptr<float>(),
                                row_of_assignment_.ptr<int32_t>(), weights_.ptr<float>(),
                                dexpert_out.ptr<float>(), dweights.ptr<float>(), T, dim_, k);
  Tensor dpermuted = arena.AllocateUninitialized(DType::kF32, Shape{rows, dim_});
  grouped_->Backward(arena, dexpert_out, dpermuted);
  Tensor dx = arena.AllocateUninitialized(DType::kF32, Shape{T, dim_});
  backend.PermuteBackward(dpermuted.ptr<float>(), row_of_assignment_.ptr<int32_t>(),
                       dx.ptr<float>(), T, dim_, k);
  RouterGradientInputs router{raw_weights_.ptr<float>(), weights_.ptr<float>(),
                              chosen_index_.ptr<int32_t>(), probs_.ptr<float>(), &balance_f_,
                              T, E, k, T, options_.renormalize_topk && k > 1,
                              options_.balance_loss_coef, loss_scale};
  AddSharedAndRouterGradients(arena, dy, shared_.get(), router_, router, dweights.ptr<float>(),
                              dx);
  probs_ = expert_index_ = chosen_index_ = raw_weights_ = weights_ = expert_offsets_ =
      row_of_assignment_ = expert_out_ = Tensor();
  return dx;
}

int64_t ApplyCapacity(float capacity_factor, int64_t tokens, int64_t k, int64_t experts,
                      int32_t* index) {
  const int64_t capacity = static_cast<int64_t>(std::ceil(
      capacity_factor * static_cast<double>(tokens * k) / static_cast<double>(experts)));
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
  // A few values per token, on the host.
  const Tensor raw_host = HostReadable(raw_weights);
  Tensor host = HostReadable(weights);
  const float* raw = raw_host.data<float>();
  float* w = host.data<float>();
  for (int64_t t = 0; t < tokens; ++t) {
    float sum = 1e-20f;
    for (int64_t s = 0; s < k; ++s) sum += raw[t * k + s];
    for (int64_t s = 0; s < k; ++s) w[t * k + s] = raw[t * k + s] / sum;
  }
  WriteBack(host, weights);
  return weights;
}

namespace {
// dw (backend memory) through w = r / sum(r) per token, on host copies.
void RenormalizationGradient(Backend& backend, const RouterGradientInputs& in, float* dw) {
  const int64_t T = in.tokens, k = in.top_k;
  const size_t bytes = sizeof(float) * static_cast<size_t>(T * k);
  std::vector<float> raw(T * k), w(T * k), g(T * k);
  backend.CopyToHost(raw.data(), in.raw_weights, bytes);
  backend.CopyToHost(w.data(), in.weights, bytes);
  backend.CopyToHost(g.data(), dw, bytes);
  for (int64_t t = 0; t < T; ++t) {
    float sum = 1e-20f, dot = 0;
    for (int64_t s = 0; s < k; ++s) {
      sum += raw[t * k + s];
      dot += g[t * k + s] * w[t * k + s];
    }
    for (int64_t s = 0; s < k; ++s) g[t * k + s] = (g[t * k + s] - dot) / sum;
  }
  backend.CopyToDevice(dw, g.data(), bytes);
}
}  // namespace

Tensor RouterLogitsGradient(Arena& arena, const RouterGradientInputs& in, float* dw) {
  const int64_t T = in.tokens, E = in.experts, k = in.top_k;
  Backend& backend = arena.backend();
  // Through the renormalization: w = r / s  =>  dr = (dw - sum(dw * w)) / s.
  if (in.renormalize) RenormalizationGradient(backend, in, dw);
  // Top-k weights were read from the probabilities of the router's choice
  // (dropped assignments included: their weight got zero gradient before).
  Tensor dprobs = arena.Allocate(DType::kF32, Shape{T, E});
  backend.TopKBackward(dw, in.chosen, dprobs.ptr<float>(), T, E, k);
  // Balance loss: d/dp[t, i] of alpha * sum_i f_i * mean_t p[t, i] = alpha f_i / T.
  if (in.balance_coef > 0 && in.balance_tokens > 0) {
    std::vector<float> g(E);
    for (int64_t e = 0; e < E; ++e) {
      g[e] = static_cast<float>(in.loss_scale * in.balance_coef * (*in.balance_f)[e] /
                                static_cast<double>(in.balance_tokens));
    }
    Tensor bias = arena.AllocateUninitialized(DType::kF32, Shape{E});
    backend.CopyToDevice(bias.address(), g.data(), bias.bytes());
    backend.AddBiasRows(dprobs.ptr<float>(), bias.ptr<float>(), T, E);
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
