// Mixture-of-experts FFN as in DiT-MoE (and DeepSeek-MoE): a linear router
// with fp32 softmax and top-k, E routed SwiGLU experts, and an optional shared
// SwiGLU expert applied to every token.
//
//   y = shared(x) + sum_{e in topk(x)} p_e(x) * expert_e(x)
//
// Weights are the raw softmax probabilities of the chosen experts (no
// renormalization unless asked). The expert-level balance loss is
// alpha * sum_i f_i * P_i with f_i = E * (assignments to i) / (tokens * k) and
// P_i the mean router probability of expert i over the forward's tokens;
// f_i carries no gradient (as in the reference code).
//
// Dispatch: assignments are sorted by expert (stable), token rows gathered
// into expert-contiguous order, the experts run their GEMM chains over their
// rows together (GroupedSwigluExperts: one grouped GEMM call per link of the
// chain), and the results are scattered back weighted. With a capacity factor c > 0
// each expert keeps at most ceil(c * tokens * k / E) assignments; the drop
// policy is "first come, first served" in token order, and a dropped
// assignment contributes nothing (its token still gets the shared expert and
// its other experts).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#include "runtime/nn/grouped_experts.h"
#include "runtime/nn/linear.h"
#include "runtime/nn/swiglu_mlp.h"

namespace tessera {

// Balance statistics of tokens routed top-k: from the assignments per expert
// over `count_tokens` tokens, f_i = E * counts_i / (count_tokens * k) and the
// load counts_i / (count_tokens * k); from the sums of router probabilities
// per expert over `prob_tokens` tokens, P_i = prob_sums_i / prob_tokens; the
// loss alpha * sum_i f_i * P_i. The two token sets are the same forward's
// tokens except under MoeConfig's GLOBAL_BATCH scope (GlobalBalanceCounts).
// Shared by MoeLayer (its own tokens) and the expert-parallel layer (a
// group's tokens).
struct BalanceStatistics {
  std::vector<double> f, load;
  double loss = 0;
};
BalanceStatistics ComputeBalance(const std::vector<int64_t>& counts, int64_t count_tokens,
                                 const std::vector<double>& prob_sums, int64_t prob_tokens,
                                 int64_t k, double coef);

// MoeConfig.balance_scope = GLOBAL_BATCH (docs/config.md): the counts f_i is
// formed from (assignments per expert, and tokens) are summed over every
// data-parallel replica and accumulated over the optimizer step's
// micro-batches so far, as Megatron-Core's global aux loss does; P_i and
// its gradient stay the forward's own. One per model, shared by its MoE
// layers; each layer keeps its own running totals. Every replica must run
// the same forwards in the same order while it is active (the sum is a
// collective).
class GlobalBalanceCounts {
 public:
  // Sums a host vector over the data-parallel replicas in place, the same on
  // every rank; null for one replica.
  using SumOverReplicas = std::function<absl::Status(std::vector<int64_t>& values)>;
  explicit GlobalBalanceCounts(SumOverReplicas sum = nullptr) : sum_(std::move(sum)) {}

  // A new optimizer step: the running totals start again.
  void BeginStep() { ++step_; }
  // Off for forwards that are not training's (sampling, evaluation): they
  // count their own tokens only and make no collective call.
  void set_active(bool active) { active_ = active; }
  bool active() const { return active_; }

  // One layer's running totals.
  struct Totals {
    int64_t step = -1;
    std::vector<int64_t> counts;  // [E]
    int64_t tokens = 0;
  };
  // `counts` [E] and `tokens` of one forward's balance token set become the
  // totals over every replica and this step's micro-batches so far.
  absl::Status Accumulate(Totals& totals, std::vector<int64_t>& counts, int64_t& tokens) const;

 private:
  SumOverReplicas sum_;
  int64_t step_ = 0;
  bool active_ = true;
};

// The combine weights [T*k]: the raw top-k probabilities, or (renormalize,
// k > 1) those divided by their sum per token (Backend::MoeRenormalizeForward).
Tensor CombineWeights(Arena& arena, const Tensor& raw_weights, int64_t tokens, int64_t k,
                      bool renormalize);

// The router's backward pass, shared by MoeLayer and the expert-parallel
// layer: from the gradient of the combine weights (dweights [T*k], modified
// in place) through the optional top-k renormalization, the top-k selection
// of `chosen` [T*k] and the balance loss (averaged over `balance_tokens`
// tokens, alpha * f_i each, scaled by loss_scale) to the gradient of the
// router logits [T, E], allocated in `arena`.
// Pointers into the arena's backend memory (device memory on a GPU).
struct RouterGradientInputs {
  const float* raw_weights;  // [T*k] top-k probabilities
  const float* weights;      // [T*k] combine weights (renormalized or raw)
  const int32_t* chosen;     // [T*k] the router's top-k experts
  const float* probs;        // [T, E] router softmax
  const double* balance_f;   // [E] f_i (backend memory: Backend::MoeBalance's output)
  int64_t tokens, experts, top_k, balance_tokens;
  bool renormalize;
  double balance_coef;
  float loss_scale;
};
Tensor RouterLogitsGradient(Arena& arena, const RouterGradientInputs& in, float* dweights);

// The end of both MoE layers' backward pass: dx [tokens, dim] += the shared
// expert's input gradient for dy (when there is one) and the router's, from
// the combine weights' gradient through RouterLogitsGradient.
void AddSharedAndRouterGradients(Arena& arena, const Tensor& dy, SwigluMlp* shared,
                                 Linear& router, const RouterGradientInputs& in, float* dweights,
                                 const Tensor& dx);

// The capacity of each expert under capacity_factor c > 0:
// ceil(c * tokens * k / E) assignments.
int64_t ExpertCapacity(float capacity_factor, int64_t tokens, int64_t k, int64_t experts);

// The capacity drop policy (capacity_factor c > 0) on host memory: each
// expert takes at most ExpertCapacity of these tokens' assignments, first
// come, first served in token order (then in top-k rank); the others are set
// to -1 in `index` [tokens * k]. Returns how many were dropped. (MoeLayer
// applies the same rule on the backend, Backend::MoeCapacitySlots.)
int64_t ApplyCapacity(float capacity_factor, int64_t tokens, int64_t k, int64_t experts,
                      int32_t* index);

class MoeLayer {
 public:
  struct Options {
    int64_t num_experts = 8;
    int64_t top_k = 2;
    int64_t expert_hidden = 0;         // per routed expert
    int64_t shared_expert_hidden = 0;  // 0: no shared expert
    float balance_loss_coef = 0.01f;
    bool renormalize_topk = false;
    float capacity_factor = 0;         // 0: dropless
    // GLOBAL_BATCH balance scope (not owned; must outlive the layer); null:
    // the forward's own tokens (MICRO_BATCH).
    GlobalBalanceCounts* global_balance = nullptr;
  };

  MoeLayer(ParameterStore& store, const std::string& name, int64_t dim, const Options& options);

  // x: [tokens, dim] -> [tokens, dim]. Computes the balance loss of these
  // tokens (f_i over the global batch with Options::global_balance, whose
  // collective is the only way this fails).
  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x);
  // loss_scale: the factor this forward's losses enter the total loss with
  // (1/micro-batches); applied to the balance loss gradient.
  Tensor Backward(Arena& arena, const Tensor& dy, float loss_scale);

  // Of the last Forward; the first of these calls after a Forward reads
  // the values from the backend's memory (E + 2 of them, once).
  double balance_loss() const {
    ReadReport();
    return balance_loss_;
  }
  // Fraction of assignments routed to each expert (sums to 1), before drops.
  const std::vector<double>& expert_load() const {
    ReadReport();
    return expert_load_;
  }
  int64_t dropped_assignments() const {
    ReadReport();
    return dropped_;
  }
  // The same values of the last Forward where they lie, in the backend's
  // memory, without a read: i64 [E + 2] holding [balance loss (double bits) |
  // load E (double bits) | dropped]. Rewritten by the next Forward; a caller
  // that keeps them copies them (DitMoe::KeepReports).
  const Tensor& report() const { return report_; }

  double ForwardFlops(int64_t tokens) const;
  int64_t num_experts() const { return options_.num_experts; }

 private:
  // The balance statistics of the router's choice (before drops) into
  // bookkeeping_ (backend memory).
  absl::Status ComputeLayerBalance(Arena& arena, int64_t T);
  // The rows in expert order: dropless (SortByExpert; reads the offsets) or
  // in capacity slots (no read). Sets offsets_, row_of_assignment_ and
  // returns assignment_of_row.
  Tensor LayOutRows(Arena& arena, int64_t T);
  void ReadReport() const;

  int64_t dim_;
  Options options_;
  GlobalBalanceCounts::Totals balance_totals_;
  Linear router_;
  std::vector<std::unique_ptr<SwigluMlp>> experts_;
  std::unique_ptr<GroupedSwigluExperts> grouped_;  // runs experts_ together
  std::unique_ptr<SwigluMlp> shared_;

  // Saved by Forward for Backward.
  int64_t tokens_ = 0;
  Tensor probs_;             // [T, E] router softmax
  Tensor chosen_index_;      // i32 [T*k] the router's top-k
  Tensor expert_index_;      // i32 [T*k] the same, -1 where capacity dropped it
  Tensor raw_weights_;       // [T*k] top-k probabilities
  Tensor weights_;           // [T*k] combine weights (renormalized if asked)
  std::vector<int64_t> offsets_;  // [E+1] host: rows of expert e
  Tensor row_of_assignment_; // i32 [T*k]
  Tensor expert_out_;        // [rows, dim]
  // i64 [4E + 2] in backend memory: [counts E | probability sums E (double)
  // | f E (double) | loss (double) | load E (double) | dropped].
  Tensor bookkeeping_;
  // i64 [E + 2] in backend memory that outlives the step's arena: the
  // [loss | load | dropped] of the last Forward, read on demand.
  Tensor report_;
  mutable bool report_read_ = true;
  mutable double balance_loss_ = 0;
  mutable std::vector<double> expert_load_;
  mutable int64_t dropped_ = 0;
};

}  // namespace tessera
