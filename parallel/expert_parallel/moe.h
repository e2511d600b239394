// Expert-parallel mixture-of-experts FFN (GShard / Megatron-style dispatch)
// over one ep Communicator.
//
// Computes the single-rank tessera::MoeLayer with its E routed experts
// partitioned over the ep group: rank r owns experts [r*E/ep, (r+1)*E/ep) and
// registers only their parameters; the router and the shared expert are
// replicated. Each ep rank brings its OWN tokens (the ep ranks are different
// data-parallel replicas, as in Megatron's folding of ep into dp), so the
// layer computes, on every rank, that rank's rows of the single-rank layer
// applied to the concatenation of all ranks' tokens.
//
// Forward:
//   router (fp32 softmax, top-k) on the local tokens
//   -> stable sort of assignments by expert (rows bound for rank r are then
//      contiguous: experts of r in order)
//   -> all-to-all of the per-expert row counts
//   -> permute rows, all-to-all-v to the owning ranks
//   -> received rows regrouped from (source rank, expert) to (expert, source
//      rank) order, so that each local expert runs one GEMM chain on a
//      contiguous slice
//   -> expert outputs regrouped back, all-to-all-v home
//   -> unpermute and combine with the weights, + shared expert.
// Backward is the exact reverse; router and shared-expert gradients stay
// local (they are summed over the data-parallel group like any dense
// parameter), expert gradients are complete on the owner for the tokens of
// all ep ranks.
//
// The balance loss alpha * sum_i f_i * P_i and the expert load are computed
// over the token set of a `balance` group (assignment counts, probability
// sums and token counts summed over it; the ep group by default), so they
// equal the single-rank values on the concatenation of that group's tokens;
// dP_i/dp[t, i] = 1/T_group. The DiT-MoE model passes the tp x sp group: the
// tokens of one data-parallel micro-batch, which is what one process
// computes the balance loss over (Megatron-Core's aux loss, likewise).
//
// With Options::global_balance (MoeConfig's GLOBAL_BATCH scope) f_i counts
// the group's assignments summed over every data-parallel replica and the
// step's micro-batches so far (GlobalBalanceCounts, runtime/nn/moe.h).
//
// Dropless by default. With capacity_factor c > 0 the drop policy is
// per source rank (GShard's per-group capacity): each rank's assignments to
// an expert beyond ceil(c * T_local * k / E) are dropped, first come, first
// served in its token order (Backend::MoeCapacitySlots, the rule of
// runtime/nn/moe.h's ApplyCapacity), before dispatch; the rows stay in the
// compact layout the all-to-all-v sends. A rank's outputs thus equal the single-rank layer with the same
// c applied to that rank's tokens alone. The balance loss and the load
// count the router's choice before drops, as in the single-rank layer.
//
// A rank with zero tokens and an expert that receives none are normal. Every
// ep rank must call Forward/Backward in the same order (collectives match by
// order).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/comm/communicator.h"
#include "runtime/nn/grouped_experts.h"
#include "runtime/nn/linear.h"
#include "runtime/nn/moe.h"
#include "runtime/nn/swiglu_mlp.h"
#include "runtime/tensor/arena.h"

namespace tessera::parallel {

struct ExpertParallelGroups {
  // Whose tokens the balance loss and load cover; null: the ep group.
  Communicator* balance = nullptr;
  // Spec of the router and the shared expert (ParallelSpec::TensorPartial
  // when each tp rank brings a different shard of the tokens).
  ParallelSpec dense_spec = ParallelSpec::Replicated();
};

class ExpertParallelMoe {
 public:
  using Options = MoeLayer::Options;
  using Groups = ExpertParallelGroups;

  // Fails (UsageError) unless num_experts % ep.size() == 0, 1 <= top_k <=
  // num_experts, expert_hidden > 0 and capacity_factor >= 0. Parameter names
  // are the single-rank MoeLayer's (`name.router.weight`,
  // `name.experts.<global e>.w_gate`, `name.shared_expert.w_up`, ...), so are
  // their initial values. `store`, `ep` and the balance group must outlive
  // the layer.
  static absl::StatusOr<std::unique_ptr<ExpertParallelMoe>> Create(ParameterStore& store,
                                                                   Communicator& ep,
                                                                   const std::string& name,
                                                                   int64_t dim,
                                                                   const Options& options,
                                                                   const Groups& groups = {});

  // x: this rank's tokens [tokens, dim] (any count, 0 included) -> [tokens, dim].
  absl::StatusOr<Tensor> Forward(Arena& arena, const Tensor& x);
  // dy: [tokens, dim] -> dx [tokens, dim]. loss_scale: the factor the balance
  // loss enters the total loss with (as MoeLayer::Backward).
  absl::StatusOr<Tensor> Backward(Arena& arena, const Tensor& dy, float loss_scale);

  // Of the last Forward, over the balance group's tokens.
  double balance_loss() const { return balance_loss_; }
  const std::vector<double>& expert_load() const { return expert_load_; }
  // Assignments of this rank's tokens that capacity dropped.
  int64_t dropped_assignments() const { return dropped_; }
  // The router's assignments to each expert [E] over the balance group's
  // tokens of the last Forward (before capacity drops; this forward's
  // alone under GLOBAL_BATCH too), and how many tokens those are: the
  // counts sum to balance_tokens() * top_k.
  const std::vector<int64_t>& assignment_counts() const { return assignment_counts_; }
  int64_t balance_tokens() const { return global_tokens_; }
  // Seconds the last Forward + Backward spent in the token all-to-all-v
  // exchanges and in the expert FFNs (benchmarks).
  double exchange_seconds() const { return exchange_seconds_; }
  double expert_seconds() const { return expert_seconds_; }

  int64_t num_experts() const { return options_.num_experts; }
  int64_t local_experts() const { return local_experts_; }
  int64_t first_expert() const { return first_expert_; }  // global index of local expert 0

 private:
  ExpertParallelMoe(ParameterStore& store, Communicator& ep, const std::string& name,
                    int64_t dim, const Options& options, const Groups& groups);

  // Moves rows between the (source rank, local expert) order of the
  // all-to-all-v buffers and the (local expert, source rank) order the
  // experts run in. to_expert_order: true for the former -> the latter.
  void Regroup(const Tensor& from, const Tensor& to, bool to_expert_order) const;
  // Sends `rows` ([sum send_rows, dim], blocks in rank order) and returns
  // the received [sum recv_rows, dim].
  // The steps of Forward, in order.
  void Route(Arena& arena, const Tensor& x);
  // Balance statistics, capacity drops and the sort by expert on the
  // backend, then one read: [offsets E+1 | counts E | probability sums E
  // (double bits) | tokens | dropped]. Sets expert_index_,
  // row_of_assignment_ and assignment_of_row_.
  std::vector<int64_t> Sort(Arena& arena);
  absl::StatusOr<std::vector<int64_t>> ExchangeCounts(const std::vector<int64_t>& sorted,
                                                      const std::vector<int64_t>& stats);
  absl::Status ComputeGroupBalance(const std::vector<int64_t>& stats,
                                   const std::vector<int64_t>& all_rows);
  absl::StatusOr<Tensor> Dispatch(Arena& arena, const Tensor& x,
                                  const std::vector<int64_t>& sorted,
                                  const std::vector<int64_t>& all_rows);
  absl::StatusOr<Tensor> RunRemoteExperts(Arena& arena, const Tensor& permuted);

  absl::StatusOr<Tensor> ExchangeRows(Arena& arena, const Tensor& rows,
                                      const std::vector<int64_t>& send_rows,
                                      const std::vector<int64_t>& recv_rows);

  Communicator& ep_;
  Communicator* balance_;  // null: ep_
  int64_t dim_;
  Options options_;
  int64_t local_experts_, first_expert_;
  Linear router_;
  std::vector<std::unique_ptr<SwigluMlp>> experts_;  // the local ones
  std::unique_ptr<GroupedSwigluExperts> grouped_;    // runs experts_ together
  std::unique_ptr<SwigluMlp> shared_;

  // Saved by Forward for Backward.
  int64_t tokens_ = 0, global_tokens_ = 0;
  Tensor probs_;              // [T, E]
  Tensor chosen_index_;       // i32 [T*k] the router's top-k
  Tensor expert_index_;       // i32 [T*k] the same, -1 where capacity dropped it
  Tensor raw_weights_;        // [T*k]
  Tensor weights_;            // [T*k]
  Tensor row_of_assignment_;  // i32 [T*k]
  Tensor assignment_of_row_;  // i32 [T*k], until Dispatch
  Tensor returned_out_;       // [T*k, dim] expert outputs, back home, in expert order
  std::vector<int64_t> send_rows_, recv_rows_;  // per ep rank
  // recv_counts_[q * local + e]: rows from rank q for local expert e.
  std::vector<int64_t> recv_counts_;
  std::vector<double> balance_f_;
  GlobalBalanceCounts::Totals balance_totals_;  // GLOBAL_BATCH scope
  double balance_loss_ = 0;
  std::vector<double> expert_load_;
  std::vector<int64_t> assignment_counts_;
  int64_t dropped_ = 0;
  double exchange_seconds_ = 0, expert_seconds_ = 0;
};

}  // namespace tessera::parallel
