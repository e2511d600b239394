#include "models/mamba_hybrid/mixer.h"

#include <algorithm>
#include <cmath>

#include "runtime/tensor/host_access.h"

namespace tessera::mamba_hybrid {
namespace {

Linear::Options NoBias(float bound) {
  Linear::Options options;
  options.bias = false;
  options.weight_init = ParamInit::Uniform(bound);
  return options;
}

// Columns [column, column + width) of every row of `src` ([rows, src_width])
// into a contiguous [rows, width] tensor, or back (`to_src`).
void CopyColumns(Backend& backend, const Tensor& src, int64_t column, const Tensor& block,
                 bool to_src) {
  const int64_t rows = src.dim(0), src_width = src.dim(1), width = block.dim(1);
  float* wide = src.ptr<float>() + column;
  const size_t wide_pitch = src_width * sizeof(float), pitch = width * sizeof(float);
  if (to_src) {
    backend.Copy2D(wide, wide_pitch, block.ptr<float>(), pitch, pitch, rows);
  } else {
    backend.Copy2D(block.ptr<float>(), pitch, wide, wide_pitch, pitch, rows);
  }
}

Tensor TakeColumns(Arena& arena, const Tensor& src, int64_t column, int64_t width) {
  Tensor block = arena.AllocateUninitialized(DType::kF32, Shape{src.dim(0), width});
  CopyColumns(arena.backend(), src, column, block, /*to_src=*/false);
  return block;
}

}  // namespace

MixerDims ResolveMixerDims(const MambaHybridConfig& c) {
  MixerDims d;
  d.hidden = c.hidden_size();
  d.d_inner = static_cast<int64_t>(c.expand()) * c.hidden_size();
  d.head_dim = c.head_dim();
  d.heads = d.d_inner / std::max(1, c.head_dim());
  d.groups = c.num_groups();
  d.state_dim = c.state_dim();
  d.conv_width = c.conv_width();
  d.chunk = c.chunk_size();
  return d;
}

Mamba2Mixer::Mamba2Mixer(ParameterStore& store, const std::string& name,
                         const MambaHybridConfig& config)
    : store_(store),
      dims_(ResolveMixerDims(config)),
      norm_eps_(config.norm_eps()),
      in_proj_(store, name + ".in_proj", dims_.hidden, dims_.in_proj_out(),
               NoBias(static_cast<float>(1 / std::sqrt(static_cast<double>(dims_.hidden))))),
      out_proj_(store, name + ".out_proj", dims_.d_inner, dims_.hidden,
                NoBias(static_cast<float>(
                    1 / std::sqrt(static_cast<double>(dims_.d_inner) * config.num_layers())))) {
  const int64_t channels = dims_.conv_channels(), H = dims_.heads;
  const float conv_bound = static_cast<float>(1 / std::sqrt(static_cast<double>(dims_.conv_width)));
  conv_weight_ = store.Register(name + ".conv1d.weight", Shape{channels, dims_.conv_width},
                                ParamInit::Uniform(conv_bound), /*weight_decay=*/true);
  conv_bias_ = store.Register(name + ".conv1d.bias", Shape{channels},
                              ParamInit::Uniform(conv_bound), /*weight_decay=*/false);
  dt_bias_ = store.Register(name + ".dt_bias", Shape{H},
                            ParamInit::InverseSoftplusOfLogUniform(
                                config.dt_min(), config.dt_max(), config.dt_init_floor()),
                            /*weight_decay=*/false);
  a_log_ = store.Register(name + ".A_log", Shape{H},
                          ParamInit::LogOfUniform(config.a_init_min(), config.a_init_max()),
                          /*weight_decay=*/false);
  d_ = store.Register(name + ".D", Shape{H}, ParamInit::Ones(), /*weight_decay=*/false);
  norm_weight_ = store.Register(name + ".norm.weight", Shape{dims_.d_inner}, ParamInit::Ones(),
                                /*weight_decay=*/false);
}

SsdShape Mamba2Mixer::ScanShape() const {
  return SsdShape{batch_, seq_, dims_.heads, dims_.head_dim, dims_.groups, dims_.state_dim,
                  dims_.chunk};
}

Tensor Mamba2Mixer::DecayRates(Arena& arena) const {
  Tensor a = arena.AllocateUninitialized(DType::kF32, Shape{dims_.heads});
  const Tensor a_log = HostReadable(store_.param(a_log_));
  Tensor host = HostReadable(a);
  for (int64_t h = 0; h < dims_.heads; ++h)
    host.data<float>()[h] = -std::exp(a_log.data<float>()[h]);
  WriteBack(host, a);
  return a;
}

void Mamba2Mixer::AccumulateDecayGradient(const Tensor& dA, const Tensor& A) const {
  const Tensor da = HostReadable(dA), a = HostReadable(A);
  const Tensor grad = store_.grad(a_log_);
  Tensor host = HostReadable(grad);
  // d A / d A_log = -exp(A_log) = A.
  for (int64_t h = 0; h < dims_.heads; ++h)
    host.data<float>()[h] += da.data<float>()[h] * a.data<float>()[h];
  WriteBack(host, grad);
}

absl::StatusOr<Tensor> Mamba2Mixer::Forward(Arena& arena, const Tensor& u, int64_t batch,
                                            int64_t seq) {
  batch_ = batch;
  seq_ = seq;
  Backend& backend = arena.backend();
  const int64_t rows = batch * seq, GN = dims_.groups * dims_.state_dim;
  zxbcdt_ = in_proj_.Forward(arena, u);  // [rows, 2 d_inner + 2 G N + H]
  xbc_ = TakeColumns(arena, zxbcdt_, x_column(), dims_.conv_channels());
  xbc_conv_ = arena.AllocateUninitialized(DType::kF32, xbc_.shape());
  const CausalConv1dShape conv{batch, seq, dims_.conv_channels(), dims_.conv_width};
  backend.CausalConv1dForward(conv, xbc_.ptr<float>(), store_.param(conv_weight_).ptr<float>(),
                              store_.param(conv_bias_).ptr<float>(), nullptr,
                              xbc_conv_.ptr<float>(), nullptr);
  Tensor xbc_act = arena.AllocateUninitialized(DType::kF32, xbc_.shape());
  backend.SiluForward(xbc_conv_.ptr<float>(), xbc_act.ptr<float>(), xbc_act.numel());
  x_ = TakeColumns(arena, xbc_act, 0, dims_.d_inner);
  b_ = TakeColumns(arena, xbc_act, dims_.d_inner, GN);
  c_ = TakeColumns(arena, xbc_act, dims_.d_inner + GN, GN);
  dt_ = arena.AllocateUninitialized(DType::kF32, Shape{rows, dims_.heads});
  backend.DtSoftplusForward(zxbcdt_.ptr<float>() + dt_column(), dims_.in_proj_out(),
                            store_.param(dt_bias_).ptr<float>(), dt_.ptr<float>(), rows,
                            dims_.heads);
  a_ = DecayRates(arena);
  y_ = arena.AllocateUninitialized(DType::kF32, Shape{rows, dims_.d_inner});
  backend.SsdScanForward(ScanShape(), x_.ptr<float>(), dt_.ptr<float>(), a_.ptr<float>(),
                         b_.ptr<float>(), c_.ptr<float>(), store_.param(d_).ptr<float>(),
                         nullptr, y_.ptr<float>(), nullptr);
  rstd_ = arena.AllocateUninitialized(DType::kF32, Shape{rows, dims_.groups});
  Tensor normed = arena.AllocateUninitialized(DType::kF32, Shape{rows, dims_.d_inner});
  backend.GatedRmsNormForward(y_.ptr<float>(), zxbcdt_.ptr<float>(), dims_.in_proj_out(),
                              store_.param(norm_weight_).ptr<float>(), normed.ptr<float>(),
                              rstd_.ptr<float>(), rows, dims_.d_inner,
                              dims_.d_inner / dims_.groups, norm_eps_);
  return out_proj_.Forward(arena, normed);
}

absl::StatusOr<Tensor> Mamba2Mixer::Backward(Arena& arena, const Tensor& dout) {
  Backend& backend = arena.backend();
  const int64_t rows = batch_ * seq_, GN = dims_.groups * dims_.state_dim;
  const Tensor dnormed = out_proj_.Backward(arena, dout);
  // Every column of dzxbcdt is written below: z, then x/B/C, then dt.
  Tensor dzxbcdt = arena.AllocateUninitialized(DType::kF32, zxbcdt_.shape());
  Tensor dy = arena.AllocateUninitialized(DType::kF32, y_.shape());
  backend.GatedRmsNormBackward(dnormed.ptr<float>(), y_.ptr<float>(), zxbcdt_.ptr<float>(),
                               dims_.in_proj_out(), store_.param(norm_weight_).ptr<float>(),
                               rstd_.ptr<float>(), dy.ptr<float>(), dzxbcdt.ptr<float>(),
                               store_.grad(norm_weight_).ptr<float>(), rows, dims_.d_inner,
                               dims_.d_inner / dims_.groups);
  // The scan: dA into a zeroed [H] buffer for A_log's chain rule.
  Tensor dxbc_act = arena.AllocateUninitialized(DType::kF32, xbc_.shape());
  Tensor dx = arena.AllocateUninitialized(DType::kF32, x_.shape());
  Tensor db = arena.AllocateUninitialized(DType::kF32, b_.shape());
  Tensor dc = arena.AllocateUninitialized(DType::kF32, c_.shape());
  Tensor ddt = arena.AllocateUninitialized(DType::kF32, dt_.shape());
  Tensor da = arena.Allocate(DType::kF32, a_.shape());
  backend.SsdScanBackward(ScanShape(), x_.ptr<float>(), dt_.ptr<float>(), a_.ptr<float>(),
                          b_.ptr<float>(), c_.ptr<float>(), store_.param(d_).ptr<float>(),
                          nullptr, dy.ptr<float>(), nullptr, dx.ptr<float>(), ddt.ptr<float>(),
                          da.ptr<float>(), db.ptr<float>(), dc.ptr<float>(),
                          store_.grad(d_).ptr<float>(), nullptr);
  AccumulateDecayGradient(da, a_);
  backend.DtSoftplusBackward(ddt.ptr<float>(), zxbcdt_.ptr<float>() + dt_column(),
                             dims_.in_proj_out(), store_.param(dt_bias_).ptr<float>(),
                             dzxbcdt.ptr<float>() + dt_column(),
                             store_.grad(dt_bias_).ptr<float>(), rows, dims_.heads);
  CopyColumns(backend, dxbc_act, 0, dx, /*to_src=*/true);
  CopyColumns(backend, dxbc_act, dims_.d_inner, db, /*to_src=*/true);
  CopyColumns(backend, dxbc_act, dims_.d_inner + GN, dc, /*to_src=*/true);
  // SiLU, then the conv (whose input gradient lands in x/B/C's columns).
  Tensor dxbc_conv = arena.AllocateUninitialized(DType::kF32, xbc_.shape());
  backend.SiluBackward(dxbc_act.ptr<float>(), xbc_conv_.ptr<float>(), dxbc_conv.ptr<float>(),
                       dxbc_conv.numel());
  Tensor dxbc = arena.AllocateUninitialized(DType::kF32, xbc_.shape());
  const CausalConv1dShape conv{batch_, seq_, dims_.conv_channels(), dims_.conv_width};
  backend.CausalConv1dBackward(conv, xbc_.ptr<float>(), store_.param(conv_weight_).ptr<float>(),
                               nullptr, dxbc_conv.ptr<float>(), dxbc.ptr<float>(),
                               store_.grad(conv_weight_).ptr<float>(),
                               store_.grad(conv_bias_).ptr<float>(), nullptr);
  CopyColumns(backend, dzxbcdt, x_column(), dxbc, /*to_src=*/true);
  Tensor du = in_proj_.Backward(arena, dzxbcdt);
  zxbcdt_ = xbc_ = xbc_conv_ = x_ = b_ = c_ = dt_ = a_ = y_ = rstd_ = Tensor();
  return du;
}

absl::Status Mamba2Mixer::StartGeneration(Backend& backend, int64_t batch, int64_t /*max_len*/) {
  conv_state_ = Tensor::Empty(
      DType::kF32, Shape{batch, dims_.conv_width - 1, dims_.conv_channels()}, backend);
  ssm_state_ = Tensor::Empty(
      DType::kF32, Shape{batch, dims_.heads, dims_.head_dim, dims_.state_dim}, backend);
  backend.Memset(conv_state_.address(), 0, conv_state_.bytes());
  backend.Memset(ssm_state_.address(), 0, ssm_state_.bytes());
  return absl::OkStatus();
}

absl::StatusOr<Tensor> Mamba2Mixer::Step(Arena& arena, const Tensor& u) {
  Backend& backend = arena.backend();
  const int64_t batch = u.dim(0), GN = dims_.groups * dims_.state_dim;
  const Tensor zxbcdt = in_proj_.Forward(arena, u);  // [B, in_proj_out]
  const Tensor xbc = TakeColumns(arena, zxbcdt, x_column(), dims_.conv_channels());
  Tensor xbc_conv = arena.AllocateUninitialized(DType::kF32, xbc.shape());
  const CausalConv1dShape conv{batch, 1, dims_.conv_channels(), dims_.conv_width};
  backend.CausalConv1dStep(conv, xbc.ptr<float>(), store_.param(conv_weight_).ptr<float>(),
                           store_.param(conv_bias_).ptr<float>(), conv_state_.ptr<float>(),
                           xbc_conv.ptr<float>());
  Tensor xbc_act = arena.AllocateUninitialized(DType::kF32, xbc.shape());
  backend.SiluForward(xbc_conv.ptr<float>(), xbc_act.ptr<float>(), xbc_act.numel());
  const Tensor x = TakeColumns(arena, xbc_act, 0, dims_.d_inner);
  const Tensor b = TakeColumns(arena, xbc_act, dims_.d_inner, GN);
  const Tensor c = TakeColumns(arena, xbc_act, dims_.d_inner + GN, GN);
  Tensor dt = arena.AllocateUninitialized(DType::kF32, Shape{batch, dims_.heads});
  backend.DtSoftplusForward(zxbcdt.ptr<float>() + dt_column(), dims_.in_proj_out(),
                            store_.param(dt_bias_).ptr<float>(), dt.ptr<float>(), batch,
                            dims_.heads);
  const Tensor a = DecayRates(arena);
  Tensor y = arena.AllocateUninitialized(DType::kF32, Shape{batch, dims_.d_inner});
  SsdShape shape = ScanShape();
  shape.batch = batch;
  backend.SsdStep(shape, x.ptr<float>(), dt.ptr<float>(), a.ptr<float>(), b.ptr<float>(),
                  c.ptr<float>(), store_.param(d_).ptr<float>(), ssm_state_.ptr<float>(),
                  y.ptr<float>());
  Tensor rstd = arena.AllocateUninitialized(DType::kF32, Shape{batch, dims_.groups});
  Tensor normed = arena.AllocateUninitialized(DType::kF32, Shape{batch, dims_.d_inner});
  backend.GatedRmsNormForward(y.ptr<float>(), zxbcdt.ptr<float>(), dims_.in_proj_out(),
                              store_.param(norm_weight_).ptr<float>(), normed.ptr<float>(),
                              rstd.ptr<float>(), batch, dims_.d_inner,
                              dims_.d_inner / dims_.groups, norm_eps_);
  return out_proj_.Forward(arena, normed);
}

double Mamba2Mixer::ForwardFlops(int64_t batch, int64_t seq) const {
  const double rows = static_cast<double>(batch) * seq;
  const double P = dims_.head_dim, N = dims_.state_dim;
  // The SSD scan per (batch, head): per chunk of l tokens 2 l^2 N (C B^T) +
  // 2 l^2 P (masked product) + 4 l P N (state to output, chunk state);
  // docs/mamba.md.
  double scan = 0;
  for (int64_t start = 0; start < seq; start += dims_.chunk) {
    const double l = static_cast<double>(std::min(dims_.chunk, seq - start));
    scan += 2 * l * l * (N + P) + 4 * l * P * N;
  }
  scan *= static_cast<double>(batch) * dims_.heads;
  const double conv = 2.0 * dims_.conv_width * rows * dims_.conv_channels();
  return in_proj_.ForwardFlops(static_cast<int64_t>(rows)) +
         out_proj_.ForwardFlops(static_cast<int64_t>(rows)) + scan + conv;
}

double Mamba2Mixer::SavedFloatsPerToken() const {
  // zxbcdt, xbc, xbc_conv, its SiLU, x/B/C, dt, y, rstd, the out_proj input.
  return static_cast<double>(dims_.in_proj_out() + 4 * dims_.conv_channels() + dims_.heads +
                             2 * dims_.d_inner + dims_.groups);
}

}  // namespace tessera::mamba_hybrid
