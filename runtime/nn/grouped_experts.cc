#include "runtime/nn/grouped_experts.h"

#include "runtime/base/status.h"

namespace tessera {
namespace {
// Element `offset` of a bf16 copy, or null without one.
const uint16_t* Offset(const uint16_t* copy, int64_t offset) {
  return copy == nullptr ? nullptr : copy + offset;
}
}  // namespace

GroupedSwigluExperts::GroupedSwigluExperts(std::vector<SwigluMlp*> experts)
    : experts_(std::move(experts)) {
  TESSERA_CHECK(!experts_.empty());
  dim_ = experts_[0]->dim();
  hidden_ = experts_[0]->hidden();
  for (const SwigluMlp* e : experts_) TESSERA_CHECK(e->dim() == dim_ && e->hidden() == hidden_);
}

void GroupedSwigluExperts::Forward(Arena& arena, const Tensor& x, std::span<const int64_t> offsets,
                                   const Tensor& y) {
  const int64_t G = static_cast<int64_t>(experts_.size());
  TESSERA_CHECK(static_cast<int64_t>(offsets.size()) == G + 1 && offsets[0] == 0);
  const int64_t rows = offsets[G];
  TESSERA_CHECK(x.dim(0) == rows && x.dim(1) == dim_ && y.dim(0) == rows && y.dim(1) == dim_);
  offsets_.assign(offsets.begin(), offsets.end());
  saved_x_ = x;
  saved_gate_up_ = arena.AllocateUninitialized(DType::kF32, Shape{rows, 2 * hidden_});
  saved_act_ = arena.AllocateUninitialized(DType::kF32, Shape{rows, hidden_});
  saved_x_bf16_ = saved_act_bf16_ = Tensor();
  if (rows == 0) return;
  Backend& backend = arena.backend();
  const int64_t D = dim_, H = hidden_;
  const float* in = x.ptr<float>();
  // In a bf16 run x and act are rounded once (each feeds a forward GEMM and
  // a weight-gradient GEMM, x two of each) and the weights' copies come
  // from the store, so no GEMM below rounds anything.
  saved_x_bf16_ = Bf16Copy(arena, x);
  const uint16_t* in16 = Bf16Data(saved_x_bf16_);
  float* gate_up = saved_gate_up_.ptr<float>();
  float* act = saved_act_.ptr<float>();
  float* out = y.ptr<float>();
  std::vector<GemmProblem> gemms;
  gemms.reserve(2 * G);
  // [gate | up] = x [W_gate | W_up]^T, both halves of every expert in one call.
  for (int64_t e = 0; e < G; ++e) {
    const int64_t r0 = offsets_[e], m = offsets_[e + 1] - r0;
    if (m == 0) continue;
    const SwigluMlp::Weights w = experts_[e]->weights();
    gemms.push_back({m, H, D, in + r0 * D, D, w.gate, D, gate_up + r0 * 2 * H, 2 * H,
                     Offset(in16, r0 * D), w.gate16});
    gemms.push_back({m, H, D, in + r0 * D, D, w.up, D, gate_up + r0 * 2 * H + H, 2 * H,
                     Offset(in16, r0 * D), w.up16});
  }
  backend.GemmGrouped(false, true, 1.0f, 0.0f, gemms);
  backend.SwigluForward(gate_up, act, rows, H);
  saved_act_bf16_ = Bf16Copy(arena, saved_act_);
  const uint16_t* act16 = Bf16Data(saved_act_bf16_);
  gemms.clear();
  for (int64_t e = 0; e < G; ++e) {
    const int64_t r0 = offsets_[e], m = offsets_[e + 1] - r0;
    if (m == 0) continue;
    const SwigluMlp::Weights w = experts_[e]->weights();
    gemms.push_back({m, D, H, act + r0 * H, H, w.down, H, out + r0 * D, D, Offset(act16, r0 * H),
                     w.down16});
  }
  backend.GemmGrouped(false, true, 1.0f, 0.0f, gemms);
}

void GroupedSwigluExperts::Backward(Arena& arena, const Tensor& dy, const Tensor& dx) {
  const int64_t G = static_cast<int64_t>(experts_.size());
  TESSERA_CHECK(static_cast<int64_t>(offsets_.size()) == G + 1);  // after a Forward
  const int64_t rows = offsets_[G];
  TESSERA_CHECK(dy.dim(0) == rows && dx.dim(0) == rows);
  if (rows > 0) {
    Backend& backend = arena.backend();
    const int64_t D = dim_, H = hidden_;
    const float* x = saved_x_.ptr<float>();
    const float* act = saved_act_.ptr<float>();
    const float* g = dy.ptr<float>();
    const uint16_t* x16 = Bf16Data(saved_x_bf16_);
    const uint16_t* act16 = Bf16Data(saved_act_bf16_);
    // dy and dgate_up each feed two GEMMs: rounded once in a bf16 run.
    const Tensor dy_bf16 = Bf16Copy(arena, dy);
    const uint16_t* g16 = Bf16Data(dy_bf16);
    std::vector<SwigluMlp::Weights> w(static_cast<size_t>(G));
    for (int64_t e = 0; e < G; ++e) w[e] = experts_[e]->weights();
    std::vector<GemmProblem> gemms;
    gemms.reserve(2 * G);
    auto each = [&](auto&& add) {
      gemms.clear();
      for (int64_t e = 0; e < G; ++e) {
        const int64_t r0 = offsets_[e], m = offsets_[e + 1] - r0;
        if (m > 0) add(e, r0, m);
      }
    };
    // dW_down[dim, hidden] += dy^T act
    each([&](int64_t e, int64_t r0, int64_t m) {
      gemms.push_back({D, H, m, g + r0 * D, D, act + r0 * H, H, w[e].ddown, H,
                       Offset(g16, r0 * D), Offset(act16, r0 * H)});
    });
    backend.GemmGrouped(true, false, 1.0f, 1.0f, gemms);
    // dact = dy W_down
    Tensor dact = arena.AllocateUninitialized(DType::kF32, Shape{rows, H});
    float* da = dact.ptr<float>();
    each([&](int64_t e, int64_t r0, int64_t m) {
      gemms.push_back({m, H, D, g + r0 * D, D, w[e].down, H, da + r0 * H, H, Offset(g16, r0 * D),
                       w[e].down16});
    });
    backend.GemmGrouped(false, false, 1.0f, 0.0f, gemms);
    Tensor dgate_up = arena.AllocateUninitialized(DType::kF32, Shape{rows, 2 * H});
    float* dgu = dgate_up.ptr<float>();
    backend.SwigluBackward(da, saved_gate_up_.ptr<float>(), dgu, rows, H);
    const Tensor dgu_bf16 = Bf16Copy(arena, dgate_up);
    const uint16_t* dgu16 = Bf16Data(dgu_bf16);
    // dW_gate += dgate^T x, dW_up += dup^T x
    each([&](int64_t e, int64_t r0, int64_t m) {
      gemms.push_back({H, D, m, dgu + r0 * 2 * H, 2 * H, x + r0 * D, D, w[e].dgate, D,
                       Offset(dgu16, r0 * 2 * H), Offset(x16, r0 * D)});
      gemms.push_back({H, D, m, dgu + r0 * 2 * H + H, 2 * H, x + r0 * D, D, w[e].dup, D,
                       Offset(dgu16, r0 * 2 * H + H), Offset(x16, r0 * D)});
    });
    backend.GemmGrouped(true, false, 1.0f, 1.0f, gemms);
    // dx = dgate W_gate, then += dup W_up
    float* out = dx.ptr<float>();
    each([&](int64_t e, int64_t r0, int64_t m) {
      gemms.push_back({m, D, H, dgu + r0 * 2 * H, 2 * H, w[e].gate, D, out + r0 * D, D,
                       Offset(dgu16, r0 * 2 * H), w[e].gate16});
    });
    backend.GemmGrouped(false, false, 1.0f, 0.0f, gemms);
    each([&](int64_t e, int64_t r0, int64_t m) {
      gemms.push_back({m, D, H, dgu + r0 * 2 * H + H, 2 * H, w[e].up, D, out + r0 * D, D,
                       Offset(dgu16, r0 * 2 * H + H), w[e].up16});
    });
    backend.GemmGrouped(false, false, 1.0f, 1.0f, gemms);
  }
  saved_x_ = saved_gate_up_ = saved_act_ = saved_x_bf16_ = saved_act_bf16_ = Tensor();
  offsets_.clear();
}

}  // namespace tessera
