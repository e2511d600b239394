#include "models/mamba_hybrid/mixer.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "runtime/base/status.h"
#include "runtime/nn/linear.h"

namespace tessera::mamba_hybrid {
namespace {

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

namespace {

// Tags of the sequence-parallel exchanges (ShardChain).
constexpr int kHaloTag = 41, kStateTag = 42, kStateGradTag = 43, kHaloGradTag = 44;

float Bound(double fan_in) { return static_cast<float>(1 / std::sqrt(fan_in)); }

bool AllToAll(const MambaHybridConfig& config) {
  return config.mamba_sp_mode() == MambaHybridConfig::ALL_TO_ALL;
}

}  // namespace

Mamba2Mixer::Mamba2Mixer(ParameterStore& store, const std::string& name,
                         const MambaHybridConfig& config, const HybridLayout& layout)
    : store_(store),
      layout_(layout),
      one_rank_(store.backend(), "mixer"),
      chain_(AllToAll(config) ? one_rank_ : *layout.sp),
      head_exchange_(AllToAll(config) ? layout.sp : &one_rank_),
      dims_(ResolveMixerDims(config)),
      norm_eps_(config.norm_eps()) {
  const MixerDims g = dims_;  // the whole layer's sizes
  const int tp = layout.tp_size();
  // The config rules made heads and groups divisible by tp (and sp).
  const int split = tp * head_exchange_->size();
  dims_.d_inner /= split;
  dims_.heads /= split;
  dims_.groups /= split;
  first_head_ = head_exchange_->rank() * dims_.heads;
  first_group_ = head_exchange_->rank() * dims_.groups;
  const int64_t GN = g.groups * g.state_dim;
  const struct {
    const char* block;
    int64_t width;
  } in_blocks[] = {{"z", g.d_inner}, {"x", g.d_inner}, {"B", GN}, {"C", GN}, {"dt", g.heads}};
  for (const auto& b : in_blocks) {
    const ParameterStore::Id id =
        RegisterTpSplit(store, layout, absl::StrCat(name, ".in_proj.weight.", b.block),
                        Shape{b.width, g.hidden}, 0, ParamInit::Uniform(Bound(g.hidden)), true);
    in_proj_.push_back({id, b.width / tp});
  }
  const ParamInit conv_init = ParamInit::Uniform(Bound(g.conv_width));
  for (const auto& b : {in_blocks[1], in_blocks[2], in_blocks[3]}) {  // x, B, C
    conv_weight_.push_back(RegisterTpSplit(store, layout,
                                           absl::StrCat(name, ".conv1d.weight.", b.block),
                                           Shape{b.width, g.conv_width}, 0, conv_init, true));
    conv_bias_.push_back(RegisterTpSplit(store, layout,
                                         absl::StrCat(name, ".conv1d.bias.", b.block),
                                         Shape{b.width}, 0, conv_init, false));
  }
  dt_bias_ = RegisterTpSplit(store, layout, name + ".dt_bias", Shape{g.heads}, 0,
                             ParamInit::InverseSoftplusOfLogUniform(
                                 config.dt_min(), config.dt_max(), config.dt_init_floor()),
                             /*weight_decay=*/false);
  a_log_ = RegisterTpSplit(store, layout, name + ".A_log", Shape{g.heads}, 0,
                           ParamInit::LogOfUniform(config.a_init_min(), config.a_init_max()),
                           /*weight_decay=*/false);
  d_ = RegisterTpSplit(store, layout, name + ".D", Shape{g.heads}, 0, ParamInit::Ones(),
                       /*weight_decay=*/false);
  norm_weight_ = RegisterTpSplit(store, layout, name + ".norm.weight", Shape{g.d_inner}, 0,
                                 ParamInit::Ones(), /*weight_decay=*/false);
  out_proj_ = RegisterTpSplit(
      store, layout, name + ".out_proj.weight", Shape{g.hidden, g.d_inner}, 1,
      ParamInit::Uniform(Bound(static_cast<double>(g.d_inner) * config.num_layers())), true);
}

SsdShape Mamba2Mixer::ScanShape() const {
  return SsdShape{batch_, seq_, dims_.heads, dims_.head_dim, dims_.groups, dims_.state_dim,
                  dims_.chunk};
}

Tensor Mamba2Mixer::DecayRates(Arena& arena) const {
  Tensor a = arena.AllocateUninitialized(DType::kF32, Shape{dims_.heads});
  arena.backend().SsmDecayRatesForward(Heads(store_.param(a_log_)), a.ptr<float>(), dims_.heads);
  return a;
}

void Mamba2Mixer::AccumulateDecayGradient(const Tensor& dA, const Tensor& A) const {
  // d A / d A_log = -exp(A_log) = A.
  store_.backend().SsmDecayRatesBackward(dA.ptr<float>(), A.ptr<float>(),
                                         Heads(store_.grad(a_log_)), dims_.heads);
}

std::vector<std::pair<int64_t, int64_t>> Mamba2Mixer::ConvChannels() const {
  const int64_t GN = dims_.groups * dims_.state_dim;
  return {{first_head_ * dims_.head_dim, dims_.d_inner},
          {first_group_ * dims_.state_dim, GN},
          {first_group_ * dims_.state_dim, GN}};
}

std::vector<int64_t> Mamba2Mixer::InProjWidths() const {
  std::vector<int64_t> widths;
  for (const ProjectionPiece& piece : in_proj_) widths.push_back(piece.rows);
  return widths;
}

std::pair<Tensor, Tensor> Mamba2Mixer::ConvWeights(Arena& arena) const {
  const int64_t K = dims_.conv_width;
  Tensor weight = arena.AllocateUninitialized(DType::kF32, Shape{dims_.conv_channels(), K});
  Tensor bias = arena.AllocateUninitialized(DType::kF32, Shape{dims_.conv_channels()});
  const auto pieces = ConvChannels();
  int64_t channel = 0;
  for (size_t i = 0; i < pieces.size(); ++i) {
    const auto [first, count] = pieces[i];
    const Tensor w = store_.param(conv_weight_[i]), b = store_.param(conv_bias_[i]);
    arena.backend().Copy(weight.ptr<float>() + channel * K, w.ptr<float>() + first * K,
                         count * K * sizeof(float));
    arena.backend().Copy(bias.ptr<float>() + channel, b.ptr<float>() + first,
                         count * sizeof(float));
    channel += count;
  }
  return {weight, bias};
}

void Mamba2Mixer::AccumulateConvGradients(const Tensor& dweight, const Tensor& dbias) const {
  const int64_t K = dims_.conv_width;
  const auto pieces = ConvChannels();
  int64_t channel = 0;
  for (size_t i = 0; i < pieces.size(); ++i) {
    const auto [first, count] = pieces[i];
    const Tensor dw = store_.grad(conv_weight_[i]), db = store_.grad(conv_bias_[i]);
    store_.backend().AddInPlace(dw.ptr<float>() + first * K, dweight.ptr<float>() + channel * K,
                                count * K);
    store_.backend().AddInPlace(db.ptr<float>() + first, dbias.ptr<float>() + channel, count);
    channel += count;
  }
}

absl::Status Mamba2Mixer::ExchangeHalo(Arena& arena) {
  const int64_t K1 = dims_.conv_width - 1, channels = dims_.conv_channels();
  if (chain_.group().size() == 1 || K1 == 0) return absl::OkStatus();
  // This shard's last K-1 inputs of every sample go to the next shard.
  Tensor tail = arena.AllocateUninitialized(DType::kF32, Shape{batch_, K1, channels});
  const size_t bytes = static_cast<size_t>(K1 * channels) * sizeof(float);
  arena.backend().Copy2D(tail.ptr<float>(), bytes, xbc_.ptr<float>() + (seq_ - K1) * channels,
                         seq_ * channels * sizeof(float), bytes, batch_);
  if (!chain_.first()) halo_ = arena.AllocateUninitialized(DType::kF32, tail.shape());
  return chain_.ShiftForward(tail.ptr<float>(), halo_.defined() ? halo_.ptr<float>() : nullptr,
                             tail.numel(), kHaloTag);
}

absl::Status Mamba2Mixer::ReturnHaloGradient(Arena& arena, const Tensor& dhalo, Tensor& dxbc) {
  const int64_t K1 = dims_.conv_width - 1, channels = dims_.conv_channels();
  if (chain_.group().size() == 1 || K1 == 0) return absl::OkStatus();
  Tensor from_next;
  if (!chain_.last()) {
    from_next = arena.AllocateUninitialized(DType::kF32, Shape{batch_, K1, channels});
  }
  TESSERA_RETURN_IF_ERROR(chain_.ShiftBackward(
      dhalo.defined() ? dhalo.ptr<float>() : nullptr,
      from_next.defined() ? from_next.ptr<float>() : nullptr,
      static_cast<size_t>(batch_ * K1 * channels), kHaloGradTag));
  if (!from_next.defined()) return absl::OkStatus();
  // The next shard's conv read our last K-1 inputs: add its gradient of them.
  for (int64_t b = 0; b < batch_; ++b) {
    arena.backend().AddInPlace(dxbc.ptr<float>() + ((b + 1) * seq_ - K1) * channels,
                               from_next.ptr<float>() + b * K1 * channels, K1 * channels);
  }
  return absl::OkStatus();
}

Tensor Mamba2Mixer::ShardDecay(Arena& arena) const {
  Tensor decay = arena.AllocateUninitialized(DType::kF32, Shape{batch_, dims_.heads});
  arena.backend().SsdShardDecay(dt_.ptr<float>(), a_.ptr<float>(), decay.ptr<float>(), batch_,
                                seq_, dims_.heads);
  return decay;
}

void Mamba2Mixer::AddDecayed(const Tensor& target, const Tensor& decay, const Tensor& state) const {
  // target[b, h] += decay[b, h] * state[b, h]: rows of P x N.
  store_.backend().AddScaledRows(target.ptr<float>(), decay.ptr<float>(), state.ptr<float>(),
                                 batch_ * dims_.heads, dims_.head_dim * dims_.state_dim);
}

absl::Status Mamba2Mixer::Scan(Arena& arena) {
  Backend& backend = arena.backend();
  const Shape state{batch_, dims_.heads, dims_.head_dim, dims_.state_dim};
  const size_t count = static_cast<size_t>(state.numel());
  const auto ptr = [](const Tensor& t) { return t.defined() ? t.ptr<float>() : nullptr; };
  // 1. Every shard at once, from a zero state.
  Tensor final_state;
  if (!chain_.last()) final_state = arena.AllocateUninitialized(DType::kF32, state);
  y_ = arena.AllocateUninitialized(DType::kF32, Shape{batch_ * seq_, dims_.d_inner});
  backend.SsdScanForward(ScanShape(), x_.ptr<float>(), dt_.ptr<float>(), a_.ptr<float>(),
                         b_.ptr<float>(), c_.ptr<float>(), Heads(store_.param(d_)), nullptr,
                         y_.ptr<float>(), ptr(final_state));
  initial_state_ = decay_ = Tensor();
  if (chain_.first()) return chain_.SendToNext(ptr(final_state), count, kStateTag);
  // 2. The chain: the previous shard's true final state S_in; ours is
  // S_final(from zero) + exp(sum dt A) S_in, passed on at once.
  initial_state_ = arena.AllocateUninitialized(DType::kF32, state);
  TESSERA_RETURN_IF_ERROR(
      chain_.ReceiveFromPrevious(initial_state_.ptr<float>(), count, kStateTag));
  decay_ = ShardDecay(arena);
  if (!chain_.last()) {
    AddDecayed(final_state, decay_, initial_state_);
    TESSERA_RETURN_IF_ERROR(chain_.SendToNext(final_state.ptr<float>(), count, kStateTag));
  }
  // 3. The correction: S_in's state-to-output term, a scan of zero inputs
  // from S_in (the scan is linear in (x, initial state)).
  const Tensor zeros = arena.Allocate(DType::kF32, x_.shape());
  Tensor correction = arena.AllocateUninitialized(DType::kF32, y_.shape());
  backend.SsdScanForward(ScanShape(), zeros.ptr<float>(), dt_.ptr<float>(), a_.ptr<float>(),
                         b_.ptr<float>(), c_.ptr<float>(), nullptr, initial_state_.ptr<float>(),
                         correction.ptr<float>(), nullptr);
  backend.AddInPlace(y_.ptr<float>(), correction.ptr<float>(), y_.numel());
  return absl::OkStatus();
}

absl::StatusOr<Tensor> Mamba2Mixer::Forward(Arena& arena, const Tensor& u_local, int64_t batch,
                                            int64_t /*seq: this rank's rows per sample*/) {
  Backend& backend = arena.backend();
  TESSERA_ASSIGN_OR_RETURN(u_, EnterTpRegion(arena, layout_, u_local, batch));
  batch_ = batch;
  // [sp shard's rows, in_proj_out / tp] -> this rank's heads (ALL_TO_ALL).
  const Tensor zxbcdt_shard = ProjectForward(arena, store_, in_proj_, u_);
  TESSERA_ASSIGN_OR_RETURN(
      zxbcdt_, SequenceToHeads(arena, *head_exchange_, zxbcdt_shard, InProjWidths(), batch));
  seq_ = zxbcdt_.dim(0) / batch;  // the positions scanned: the sp shard's, or all (ALL_TO_ALL)
  const int64_t rows = batch_ * seq_, GN = dims_.groups * dims_.state_dim;
  xbc_ = TakeColumns(arena, zxbcdt_, x_column(), dims_.conv_channels());
  TESSERA_RETURN_IF_ERROR(ExchangeHalo(arena));
  xbc_conv_ = arena.AllocateUninitialized(DType::kF32, xbc_.shape());
  const CausalConv1dShape conv{batch_, seq_, dims_.conv_channels(), dims_.conv_width};
  const auto [conv_weight, conv_bias] = ConvWeights(arena);
  backend.CausalConv1dForward(conv, xbc_.ptr<float>(), conv_weight.ptr<float>(),
                              conv_bias.ptr<float>(),
                              halo_.defined() ? halo_.ptr<float>() : nullptr,
                              xbc_conv_.ptr<float>(), nullptr);
  Tensor xbc_act = arena.AllocateUninitialized(DType::kF32, xbc_.shape());
  backend.SiluForward(xbc_conv_.ptr<float>(), xbc_act.ptr<float>(), xbc_act.numel());
  x_ = TakeColumns(arena, xbc_act, 0, dims_.d_inner);
  b_ = TakeColumns(arena, xbc_act, dims_.d_inner, GN);
  c_ = TakeColumns(arena, xbc_act, dims_.d_inner + GN, GN);
  dt_ = arena.AllocateUninitialized(DType::kF32, Shape{rows, dims_.heads});
  backend.DtSoftplusForward(zxbcdt_.ptr<float>() + dt_column(), dims_.in_proj_out(),
                            Heads(store_.param(dt_bias_)), dt_.ptr<float>(), rows, dims_.heads);
  a_ = DecayRates(arena);
  TESSERA_RETURN_IF_ERROR(Scan(arena));
  rstd_ = arena.AllocateUninitialized(DType::kF32, Shape{rows, dims_.groups});
  Tensor normed = arena.AllocateUninitialized(DType::kF32, Shape{rows, dims_.d_inner});
  backend.GatedRmsNormForward(y_.ptr<float>(), zxbcdt_.ptr<float>(), dims_.in_proj_out(),
                              Heads(store_.param(norm_weight_), dims_.head_dim),
                              normed.ptr<float>(), rstd_.ptr<float>(), rows, dims_.d_inner,
                              dims_.d_inner / dims_.groups, norm_eps_);
  TESSERA_ASSIGN_OR_RETURN(normed_, HeadsToSequence(arena, *head_exchange_, normed,
                                                    {dims_.d_inner * head_exchange_->size()},
                                                    batch_));
  Tensor partial = arena.AllocateUninitialized(DType::kF32, Shape{normed_.dim(0), dims_.hidden});
  LinearForward(backend, normed_, store_.param(out_proj_).ptr<float>(), nullptr, partial);
  return ExitTpRegion(arena, layout_, partial, batch_);  // out_proj is row-parallel
}

absl::StatusOr<Tensor> Mamba2Mixer::Backward(Arena& arena, const Tensor& dout_local) {
  Backend& backend = arena.backend();
  const int64_t rows = batch_ * seq_;
  TESSERA_ASSIGN_OR_RETURN(const Tensor dout,
                           ExitTpRegionBackward(arena, layout_, dout_local, batch_));
  Tensor dnormed_shard = arena.AllocateUninitialized(DType::kF32, normed_.shape());
  LinearBackward(backend, dout, normed_, store_.param(out_proj_).ptr<float>(),
                 store_.grad(out_proj_).ptr<float>(), nullptr, dnormed_shard);
  TESSERA_ASSIGN_OR_RETURN(const Tensor dnormed,
                           SequenceToHeads(arena, *head_exchange_, dnormed_shard,
                                           {normed_.dim(1)}, batch_));
  // Every column of dzxbcdt is written below: z, then x/B/C, then dt.
  Tensor dzxbcdt = arena.AllocateUninitialized(DType::kF32, zxbcdt_.shape());
  Tensor dy = arena.AllocateUninitialized(DType::kF32, y_.shape());
  backend.GatedRmsNormBackward(dnormed.ptr<float>(), y_.ptr<float>(), zxbcdt_.ptr<float>(),
                               dims_.in_proj_out(),
                               Heads(store_.param(norm_weight_), dims_.head_dim),
                               rstd_.ptr<float>(), dy.ptr<float>(), dzxbcdt.ptr<float>(),
                               Heads(store_.grad(norm_weight_), dims_.head_dim), rows,
                               dims_.d_inner, dims_.d_inner / dims_.groups);
  TESSERA_ASSIGN_OR_RETURN(Tensor dxbc_act, ScanBackward(arena, dy, dzxbcdt));
  // SiLU, then the conv (whose input gradient lands in x/B/C's columns).
  Tensor dxbc_conv = arena.AllocateUninitialized(DType::kF32, xbc_.shape());
  backend.SiluBackward(dxbc_act.ptr<float>(), xbc_conv_.ptr<float>(), dxbc_conv.ptr<float>(),
                       dxbc_conv.numel());
  Tensor dxbc = arena.AllocateUninitialized(DType::kF32, xbc_.shape());
  Tensor dconv_weight = arena.Allocate(DType::kF32, Shape{dims_.conv_channels(), dims_.conv_width});
  Tensor dconv_bias = arena.Allocate(DType::kF32, Shape{dims_.conv_channels()});
  Tensor dhalo;
  if (halo_.defined()) dhalo = arena.AllocateUninitialized(DType::kF32, halo_.shape());
  const CausalConv1dShape conv{batch_, seq_, dims_.conv_channels(), dims_.conv_width};
  const auto [conv_weight, conv_bias] = ConvWeights(arena);
  (void)conv_bias;
  backend.CausalConv1dBackward(conv, xbc_.ptr<float>(), conv_weight.ptr<float>(),
                               halo_.defined() ? halo_.ptr<float>() : nullptr,
                               dxbc_conv.ptr<float>(), dxbc.ptr<float>(),
                               dconv_weight.ptr<float>(), dconv_bias.ptr<float>(),
                               dhalo.defined() ? dhalo.ptr<float>() : nullptr);
  AccumulateConvGradients(dconv_weight, dconv_bias);
  TESSERA_RETURN_IF_ERROR(ReturnHaloGradient(arena, dhalo, dxbc));
  CopyColumns(backend, dzxbcdt, x_column(), dxbc, /*to_src=*/true);
  TESSERA_ASSIGN_OR_RETURN(
      const Tensor dzxbcdt_shard,
      HeadsToSequence(arena, *head_exchange_, dzxbcdt, InProjWidths(), batch_));
  const Tensor du = ProjectBackward(arena, store_, in_proj_, dzxbcdt_shard, u_);
  u_ = zxbcdt_ = xbc_ = halo_ = xbc_conv_ = x_ = b_ = c_ = dt_ = a_ = Tensor();
  initial_state_ = decay_ = y_ = rstd_ = normed_ = Tensor();
  return EnterTpRegionBackward(arena, layout_, du, batch_);
}

absl::StatusOr<Tensor> Mamba2Mixer::ScanBackward(Arena& arena, const Tensor& dy,
                                                 Tensor& dzxbcdt) {
  Backend& backend = arena.backend();
  const int64_t rows = batch_ * seq_, GN = dims_.groups * dims_.state_dim;
  const Shape state{batch_, dims_.heads, dims_.head_dim, dims_.state_dim};
  const size_t count = static_cast<size_t>(state.numel());
  const auto ptr = [](const Tensor& t) { return t.defined() ? t.ptr<float>() : nullptr; };
  // 1. Every shard at once: the gradient of <dy, y>, y from S_in (dA into a
  // zeroed [H] buffer for A_log's chain rule).
  Tensor dx = arena.AllocateUninitialized(DType::kF32, x_.shape());
  Tensor db = arena.AllocateUninitialized(DType::kF32, b_.shape());
  Tensor dc = arena.AllocateUninitialized(DType::kF32, c_.shape());
  Tensor ddt = arena.AllocateUninitialized(DType::kF32, dt_.shape());
  Tensor da = arena.Allocate(DType::kF32, a_.shape());
  Tensor d_initial;
  if (!chain_.first()) d_initial = arena.AllocateUninitialized(DType::kF32, state);
  backend.SsdScanBackward(ScanShape(), x_.ptr<float>(), dt_.ptr<float>(), a_.ptr<float>(),
                          b_.ptr<float>(), c_.ptr<float>(), Heads(store_.param(d_)),
                          ptr(initial_state_), dy.ptr<float>(), nullptr, dx.ptr<float>(),
                          ddt.ptr<float>(), da.ptr<float>(), db.ptr<float>(), dc.ptr<float>(),
                          Heads(store_.grad(d_)), ptr(d_initial));
  // 2. The chain in reverse: d(final state) from the next shard; d(S_in) =
  // the above + exp(sum dt A) d(final state), passed back at once.
  Tensor d_final;
  if (!chain_.last()) {
    d_final = arena.AllocateUninitialized(DType::kF32, state);
    TESSERA_RETURN_IF_ERROR(chain_.ReceiveFromNext(d_final.ptr<float>(), count, kStateGradTag));
  }
  if (!chain_.first()) {
    if (d_final.defined()) AddDecayed(d_initial, decay_, d_final);
    TESSERA_RETURN_IF_ERROR(chain_.SendToPrevious(d_initial.ptr<float>(), count, kStateGradTag));
  }
  // 3. d(final state)'s own gradient in x, dt, A, B, C: a backward pass with dy = 0.
  if (d_final.defined()) {
    const Tensor no_dy = arena.Allocate(DType::kF32, dy.shape());
    Tensor dx2 = arena.AllocateUninitialized(DType::kF32, x_.shape());
    Tensor db2 = arena.AllocateUninitialized(DType::kF32, b_.shape());
    Tensor dc2 = arena.AllocateUninitialized(DType::kF32, c_.shape());
    Tensor ddt2 = arena.AllocateUninitialized(DType::kF32, dt_.shape());
    backend.SsdScanBackward(ScanShape(), x_.ptr<float>(), dt_.ptr<float>(), a_.ptr<float>(),
                            b_.ptr<float>(), c_.ptr<float>(), nullptr, ptr(initial_state_),
                            no_dy.ptr<float>(), d_final.ptr<float>(), dx2.ptr<float>(),
                            ddt2.ptr<float>(), da.ptr<float>(), db2.ptr<float>(),
                            dc2.ptr<float>(), nullptr, nullptr);
    for (auto [sum, part] : {std::pair{&dx, &dx2}, {&db, &db2}, {&dc, &dc2}, {&ddt, &ddt2}}) {
      backend.AddInPlace(sum->ptr<float>(), part->ptr<float>(), sum->numel());
    }
  }
  AccumulateDecayGradient(da, a_);
  backend.DtSoftplusBackward(ddt.ptr<float>(), zxbcdt_.ptr<float>() + dt_column(),
                             dims_.in_proj_out(), Heads(store_.param(dt_bias_)),
                             dzxbcdt.ptr<float>() + dt_column(), Heads(store_.grad(dt_bias_)),
                             rows, dims_.heads);
  Tensor dxbc_act = arena.AllocateUninitialized(DType::kF32, xbc_.shape());
  CopyColumns(backend, dxbc_act, 0, dx, /*to_src=*/true);
  CopyColumns(backend, dxbc_act, dims_.d_inner, db, /*to_src=*/true);
  CopyColumns(backend, dxbc_act, dims_.d_inner + GN, dc, /*to_src=*/true);
  return dxbc_act;
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
  const Tensor zxbcdt = ProjectForward(arena, store_, in_proj_, u);  // [B, in_proj_out]
  const Tensor xbc = TakeColumns(arena, zxbcdt, x_column(), dims_.conv_channels());
  Tensor xbc_conv = arena.AllocateUninitialized(DType::kF32, xbc.shape());
  const CausalConv1dShape conv{batch, 1, dims_.conv_channels(), dims_.conv_width};
  const auto [conv_weight, conv_bias] = ConvWeights(arena);
  backend.CausalConv1dStep(conv, xbc.ptr<float>(), conv_weight.ptr<float>(),
                           conv_bias.ptr<float>(), conv_state_.ptr<float>(),
                           xbc_conv.ptr<float>());
  Tensor xbc_act = arena.AllocateUninitialized(DType::kF32, xbc.shape());
  backend.SiluForward(xbc_conv.ptr<float>(), xbc_act.ptr<float>(), xbc_act.numel());
  const Tensor x = TakeColumns(arena, xbc_act, 0, dims_.d_inner);
  const Tensor b = TakeColumns(arena, xbc_act, dims_.d_inner, GN);
  const Tensor c = TakeColumns(arena, xbc_act, dims_.d_inner + GN, GN);
  Tensor dt = arena.AllocateUninitialized(DType::kF32, Shape{batch, dims_.heads});
  backend.DtSoftplusForward(zxbcdt.ptr<float>() + dt_column(), dims_.in_proj_out(),
                            Heads(store_.param(dt_bias_)), dt.ptr<float>(), batch,
                            dims_.heads);
  const Tensor a = DecayRates(arena);
  Tensor y = arena.AllocateUninitialized(DType::kF32, Shape{batch, dims_.d_inner});
  SsdShape shape = ScanShape();
  shape.batch = batch;
  backend.SsdStep(shape, x.ptr<float>(), dt.ptr<float>(), a.ptr<float>(), b.ptr<float>(),
                  c.ptr<float>(), Heads(store_.param(d_)), ssm_state_.ptr<float>(),
                  y.ptr<float>());
  Tensor rstd = arena.AllocateUninitialized(DType::kF32, Shape{batch, dims_.groups});
  Tensor normed = arena.AllocateUninitialized(DType::kF32, Shape{batch, dims_.d_inner});
  backend.GatedRmsNormForward(y.ptr<float>(), zxbcdt.ptr<float>(), dims_.in_proj_out(),
                              Heads(store_.param(norm_weight_), dims_.head_dim), normed.ptr<float>(),
                              rstd.ptr<float>(), batch, dims_.d_inner,
                              dims_.d_inner / dims_.groups, norm_eps_);
  Tensor partial = arena.AllocateUninitialized(DType::kF32, Shape{batch, dims_.hidden});
  LinearForward(backend, normed, store_.param(out_proj_).ptr<float>(), nullptr, partial);
  return ExitTpRegion(arena, layout_, partial, batch);
}

double Mamba2Mixer::ForwardFlops(int64_t batch, int64_t seq) const {
  // `seq`: this rank's positions. Under ALL_TO_ALL it projects those with
  // all of the tp rank's columns (sp times this rank's heads), and convolves
  // and scans all sp * seq positions of its heads.
  const int64_t split = head_exchange_->size(), scan_seq = seq * split;
  const double P = dims_.head_dim, N = dims_.state_dim;
  // The SSD scan per (batch, head): per chunk of l tokens 2 l^2 N (C B^T) +
  // 2 l^2 P (masked product) + 4 l P N (state to output, chunk state);
  // docs/mamba.md.
  double scan = 0;
  for (int64_t start = 0; start < scan_seq; start += dims_.chunk) {
    const double l = static_cast<double>(std::min(dims_.chunk, scan_seq - start));
    scan += 2 * l * l * (N + P) + 4 * l * P * N;
  }
  scan *= static_cast<double>(batch) * dims_.heads;
  const double conv =
      2.0 * dims_.conv_width * static_cast<double>(batch) * scan_seq * dims_.conv_channels();
  // in_proj and out_proj over this rank's positions and the tp rank's columns.
  const double projections = 2.0 * static_cast<double>(batch) * seq * dims_.hidden *
                             (dims_.in_proj_out() + dims_.d_inner) * split;
  return projections + scan + conv;
}

double Mamba2Mixer::SavedFloatsPerToken() const {
  // u, zxbcdt, xbc, xbc_conv, its SiLU, x/B/C, dt, y, rstd, the out_proj
  // input; under ALL_TO_ALL a 1/sp share of the tp rank's heads at sp times
  // the positions.
  const int64_t per_head_floats = dims_.in_proj_out() + 4 * dims_.conv_channels() +
                                  dims_.heads + 2 * dims_.d_inner + dims_.groups;
  return static_cast<double>(dims_.hidden + per_head_floats * head_exchange_->size());
}

}  // namespace tessera::mamba_hybrid
