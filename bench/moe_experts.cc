// The routed experts of an MoE layer, forward + backward, run two ways on
// the same experts, inputs and routing: one SwiGLU GEMM chain per expert
// (SwigluMlp::ForwardInto / BackwardInto, what MoeLayer did before the
// grouped GEMM) and GroupedSwigluExperts (one Backend::GemmGrouped call per
// link of the chain over all experts, what MoeLayer and ExpertParallelMoe
// run now). Then the whole MoeLayer (router, permutation, experts, shared
// expert) forward + backward, for scale.
//
//   bench_moe_experts [threads] [reps]
//
// Shapes: DiT-MoE-S/2-8E2A's layer (dim 384, 8 experts of hidden 1536,
// 4096 assignments = batch 8 x 256 tokens x top-2, uneven as a router
// leaves them), the quickstart's (dim 128, 4 experts of hidden 256, 4096
// assignments), and many small experts (dim 256, 32 experts of hidden 512,
// 2048 assignments, three experts empty). Median of `reps` after a warm-up;
// the two ways alternate so that a busy machine slows both alike.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "runtime/base/random.h"
#include "runtime/kernels/cpu/gemm.h"
#include "runtime/nn/grouped_experts.h"
#include "runtime/nn/moe.h"
#include "runtime/nn/swiglu_mlp.h"

namespace {
using namespace tessera;
using Clock = std::chrono::steady_clock;

Tensor Random(Shape shape, uint64_t seed) {
  Tensor t = Tensor::Empty(DType::kF32, shape);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i)
    p[i] = CounterUniform(seed, static_cast<uint64_t>(i)) - 0.5f;
  return t;
}

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Case {
  const char* name;
  int64_t dim, hidden;
  std::vector<int64_t> rows;  // per expert
  int64_t top_k, shared_hidden;
};

void Run(const Case& c, int reps) {
  const int64_t E = static_cast<int64_t>(c.rows.size());
  std::vector<int64_t> offsets(E + 1, 0);
  for (int64_t e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + c.rows[e];
  const int64_t R = offsets[E];
  ParameterStore store;
  std::vector<std::unique_ptr<SwigluMlp>> experts;
  std::vector<SwigluMlp*> raw;
  for (int64_t e = 0; e < E; ++e) {
    experts.push_back(std::make_unique<SwigluMlp>(store, "e" + std::to_string(e), c.dim, c.hidden));
    raw.push_back(experts.back().get());
  }
  store.Finalize(1);
  GroupedSwigluExperts grouped(raw);
  Tensor x = Random(Shape{R, c.dim}, 1), dy = Random(Shape{R, c.dim}, 2);
  Tensor y = Tensor::Empty(DType::kF32, Shape{R, c.dim});
  Tensor dx = Tensor::Empty(DType::kF32, Shape{R, c.dim});
  Arena arena;
  auto per_expert = [&] {
    arena.Reset();
    for (int64_t e = 0; e < E; ++e) {
      experts[e]->ForwardInto(arena, x.Slice(offsets[e], offsets[e + 1]),
                              y.Slice(offsets[e], offsets[e + 1]));
    }
    for (int64_t e = 0; e < E; ++e) {
      experts[e]->BackwardInto(arena, dy.Slice(offsets[e], offsets[e + 1]),
                               dx.Slice(offsets[e], offsets[e + 1]));
    }
  };
  auto together = [&] {
    arena.Reset();
    grouped.Forward(arena, x, offsets, y);
    grouped.Backward(arena, dy, dx);
  };
  per_expert();
  together();
  std::vector<double> a, b;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    per_expert();
    auto t1 = Clock::now();
    together();
    auto t2 = Clock::now();
    a.push_back(Seconds(t0, t1));
    b.push_back(Seconds(t1, t2));
  }
  // 3 GEMMs forward, 6 backward, 2 * rows * dim * hidden flops each.
  const double flops = 9.0 * 2.0 * static_cast<double>(R) * c.dim * c.hidden;
  const double ta = Median(a), tb = Median(b);
  std::printf(
      "%-44s per-expert %8.2f ms (%6.1f GFLOP/s)  grouped %8.2f ms (%6.1f GFLOP/s)  "
      "speed-up %.2fx\n",
      c.name, ta * 1e3, flops / ta / 1e9, tb * 1e3, flops / tb / 1e9, ta / tb);

  // The whole layer (grouped experts), for the experts' share of it:
  // dropless, and with capacity factors, whose fixed expert slots (E
  // ceil(c T k / E) rows, docs/architecture.md) cost rows the routing leaves
  // unused.
  for (const float capacity_factor : {0.0f, 1.0f, 1.25f, 2.0f}) {
    ParameterStore layer_store;
    MoeLayer::Options o;
    o.num_experts = E;
    o.top_k = c.top_k;
    o.expert_hidden = c.hidden;
    o.shared_expert_hidden = c.shared_hidden;
    o.capacity_factor = capacity_factor;
    MoeLayer moe(layer_store, "moe", c.dim, o);
    layer_store.Finalize(1);
    const int64_t tokens = R / c.top_k;
    Tensor lx = Random(Shape{tokens, c.dim}, 3), ldy = Random(Shape{tokens, c.dim}, 4);
    auto layer = [&] {
      arena.Reset();
      (void)moe.Forward(arena, lx).value();
      moe.Backward(arena, ldy, 1.0f);
    };
    layer();
    std::vector<double> l;
    for (int r = 0; r < reps; ++r) {
      auto t0 = Clock::now();
      layer();
      l.push_back(Seconds(t0, Clock::now()));
    }
    const int64_t expert_rows =
        capacity_factor > 0 ? E * ExpertCapacity(capacity_factor, tokens, c.top_k, E) : R;
    std::printf(
        "%-44s whole MoeLayer fwd+bwd (%lld tokens, router + shared expert), capacity %.2f: "
        "%8.2f ms, %lld expert rows (%lld dropped)\n",
        "", static_cast<long long>(tokens), capacity_factor, Median(l) * 1e3,
        static_cast<long long>(expert_rows), static_cast<long long>(moe.dropped_assignments()));
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 9;
  cpu::SetNumThreads(threads);
  std::printf("bench_moe_experts: %d threads, median of %d\n", threads, reps);
  const std::vector<Case> cases = {
      {"S/2-8E2A: dim 384, 8 x hidden 1536, 4096 rows",
       384,
       1536,
       {700, 450, 610, 380, 520, 560, 430, 446},
       2,
       768},
      {"quickstart: dim 128, 4 x hidden 256, 4096 rows", 128, 256, {1180, 870, 1106, 940}, 2, 128},
      {"32 small: dim 256, 32 x hidden 512, 2048 rows",
       256,
       512,
       {90, 40, 0,   75, 130, 64, 12, 55, 81, 0,  66, 70, 48, 95, 33, 61,
        77, 52, 110, 29, 0,   84, 69, 58, 44, 73, 91, 38, 62, 57, 49, 235},
       2,
       0},
  };
  for (const Case& c : cases) Run(c, reps);
  return 0;
}
