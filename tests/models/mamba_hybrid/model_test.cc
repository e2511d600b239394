// The Mamba hybrid: each layer kind against finite differences (and the
// Mamba-2 mixer's forward against a naive double-precision transcription of
// mamba_ssm's Mamba2), the whole model's gradients, the reference
// initialization, recomputation, and learning a fixed batch.
#include "models/mamba_hybrid/model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <set>
#include <vector>

#include "models/mamba_hybrid/attention.h"
#include "models/mamba_hybrid/config_rules.h"
#include "models/mamba_hybrid/generation.h"
#include "models/mamba_hybrid/mixer.h"
#include "models/mamba_hybrid/mlp.h"
#include "models/mamba_hybrid/moe.h"
#include "models/mamba_hybrid/rotary.h"
#include "runtime/optim/adamw.h"
#include "tests/testing/gradient_check.h"

namespace tessera::mamba_hybrid {
namespace {
using testing::RandomTensor;

MambaHybridConfig TinyConfig() {
  MambaHybridConfig c;
  c.set_vocab_size(11);
  c.set_hidden_size(16);
  c.set_num_layers(4);
  c.set_pattern("M*-M");
  c.set_state_dim(8);
  c.set_head_dim(8);  // d_inner 32: 4 heads
  c.set_num_groups(2);
  c.set_expand(2);
  c.set_conv_width(4);
  c.set_chunk_size(4);  // does not divide the sequence of 10
  c.set_num_heads(4);
  c.set_num_query_groups(2);
  c.set_ffn_hidden_size(24);
  c.set_seq_len(10);
  return c;
}

LmInputs TinyInputs(int64_t batch, int64_t seq, int64_t vocab, bool every_target) {
  LmInputs in;
  in.batch = batch;
  in.seq = seq;
  Rng rng(3);
  for (int64_t i = 0; i < batch * seq; ++i) {
    in.inputs.push_back(static_cast<int32_t>(rng.Below(vocab)));
    in.targets.push_back(static_cast<int32_t>(rng.Below(vocab)));
    in.mask.push_back(every_target || i % 3 != 1 ? 1 : 0);
  }
  return in;
}

struct Fixture {
  explicit Fixture(const MambaHybridConfig& config) {
    model = *MambaHybrid::Create(config, store);
    store.Finalize(11);
  }
  ParameterStore store;
  std::unique_ptr<MambaHybrid> model;
};

testing::GradientCheckOptions FloatModelOptions() {
  testing::GradientCheckOptions options;
  options.samples = 6;
  options.step = 2e-3f;
  options.tolerance = 5e-2;
  options.floor = 5e-2;
  return options;
}

// Every parameter's gradient against central differences of the fp32 forward
// (with E layers: of the LM loss sum plus the weighted balance losses).
void CheckModelGradients(const MambaHybridConfig& config, bool every_target, float step = 2e-3f) {
  Fixture f(config);
  const LmInputs in = TinyInputs(2, config.seq_len(), config.vocab_size(), every_target);
  Arena arena;
  auto loss = [&] {
    arena.Reset();
    const MambaHybrid::LossSum l = *f.model->ForwardLoss(arena, in, false);
    return l.sum + static_cast<double>(l.balance_weight) * l.balance_loss;
  };
  f.store.ZeroGrads();
  ASSERT_TRUE(f.model->ForwardLoss(arena, in).ok());
  ASSERT_TRUE(f.model->Backward(arena, 1.0f).ok());
  std::vector<float> grads(f.store.grads().data<float>(),
                           f.store.grads().data<float>() + f.store.numel());
  for (const ParamInfo& info : f.store.infos()) {
    testing::GradientCheckOptions options = FloatModelOptions();
    options.step = step;
    testing::CheckGradient(info.name, f.store.values().data<float>() + info.offset,
                           grads.data() + info.offset, info.local_shape.numel(), loss, options);
  }
}

TEST(MambaHybrid, GradientsMatchFiniteDifferencesUntiedSquaredRelu) {
  MambaHybridConfig c = TinyConfig();
  c.set_tie_embeddings(false);
  CheckModelGradients(c, /*every_target=*/false);
}

TEST(MambaHybrid, GradientsMatchFiniteDifferencesTiedSwiglu) {
  MambaHybridConfig c = TinyConfig();
  c.set_mlp_activation(MambaHybridConfig::SWIGLU);
  CheckModelGradients(c, /*every_target=*/true);
}

// One sublayer alone: <r, layer(x)> (+ `extra_loss`() after each forward,
// e.g. a weighted balance loss) against finite differences in every
// parameter and in x.
void CheckSublayer(Sublayer& layer, ParameterStore& store, int64_t batch, int64_t seq,
                   int64_t hidden, std::function<double()> extra_loss = [] { return 0.0; }) {
  Tensor x = RandomTensor(Shape{batch * seq, hidden}, 1);
  Tensor r = RandomTensor(Shape{batch * seq, hidden}, 2);
  Arena arena;
  auto loss = [&] {
    arena.Reset();
    const double weighted = testing::WeightedSum(*layer.Forward(arena, x, batch, seq), r);
    return weighted + extra_loss();
  };
  store.ZeroGrads();
  ASSERT_TRUE(layer.Forward(arena, x, batch, seq).ok());
  absl::StatusOr<Tensor> dx = layer.Backward(arena, r);
  ASSERT_TRUE(dx.ok());
  std::vector<float> dx_copy(dx->data<float>(), dx->data<float>() + dx->numel());
  std::vector<float> grads(store.grads().data<float>(),
                           store.grads().data<float>() + store.numel());
  testing::GradientCheckOptions options = FloatModelOptions();
  options.samples = 12;
  testing::CheckGradient("x", x.data<float>(), dx_copy.data(), x.numel(), loss, options);
  for (const ParamInfo& info : store.infos()) {
    testing::CheckGradient(info.name, store.values().data<float>() + info.offset,
                           grads.data() + info.offset, info.local_shape.numel(), loss, options);
  }
}

TEST(Mamba2Mixer, GradientsMatchFiniteDifferences) {
  ParameterStore store;
  SingleProcessLayout one;
  Mamba2Mixer mixer(store, "mixer", TinyConfig(), one.layout());
  store.Finalize(5);
  CheckSublayer(mixer, store, 2, 10, 16);
}

TEST(CausalSelfAttention, GroupedQueryGradientsMatchFiniteDifferences) {
  ParameterStore store;
  SingleProcessLayout one;
  CausalSelfAttention attention(store, "attn", TinyConfig(), one.layout());
  store.Finalize(5);
  CheckSublayer(attention, store, 2, 10, 16);
}

TEST(HybridMlp, SquaredReluAndSwigluGradientsMatchFiniteDifferences) {
  for (auto activation : {MambaHybridConfig::SQUARED_RELU, MambaHybridConfig::SWIGLU}) {
    MambaHybridConfig c = TinyConfig();
    c.set_mlp_activation(activation);
    ParameterStore store;
    SingleProcessLayout one;
    HybridMlp mlp(store, "mlp", c, one.layout());
    store.Finalize(5);
    CheckSublayer(mlp, store, 2, 10, 16);
  }
}

MambaHybridConfig TinyMoeConfig(MoeConfig::BalanceScope scope = MoeConfig::MICRO_BATCH) {
  MambaHybridConfig c = TinyConfig();
  c.set_num_layers(5);
  c.set_pattern("M*-EM");
  MoeConfig& moe = *c.mutable_moe();
  moe.set_num_experts(4);
  moe.set_experts_per_token(2);
  moe.set_expert_hidden(12);
  moe.set_shared_expert_hidden(8);
  moe.set_balance_loss_coef(0.5f);  // large, so that its gradient is checked, not drowned
  moe.set_balance_scope(scope);
  return c;
}

TEST(HybridMoe, GradientsWithTheBalanceLossMatchFiniteDifferences) {
  const MambaHybridConfig c = TinyMoeConfig();
  ParameterStore store;
  SingleProcessLayout one;
  auto moe = *HybridMoe::Create(store, "moe", 16, one.layout(),
                                MoeLayerOptions(c.moe(), MoeDefaults(c)));
  store.Finalize(5);
  const float scale = 3.0f;
  moe->set_balance_loss_scale(scale);
  CheckSublayer(*moe, store, 2, 10, 16, [&] { return scale * moe->balance_loss(); });
  EXPECT_GT(moe->balance_loss(), 0);
}

// Every expert of every token (top-k = all): the loss is smooth in every
// parameter and input, so central differences hold through the whole model.
// (With top-k < experts a perturbation that flips a routing choice jumps
// the loss; the layer test above covers top-2 and the balance loss.) Step
// 5e-4: an embedding element's gradient of ~7 has curvature enough that the
// difference quotient at 2e-3 is 9% off (7.56, 7.14, 6.98, 6.93 at 2e-3,
// 1e-3, 5e-4, 2.5e-4 against the analytic 6.92).
TEST(MambaHybrid, GradientsWithAMoeLayerMatchFiniteDifferences) {
  MambaHybridConfig c = TinyMoeConfig();
  c.mutable_moe()->set_experts_per_token(4);
  CheckModelGradients(c, /*every_target=*/false, /*step=*/5e-4f);
}

TEST(MambaHybrid, TheBalanceLossIsWeightedByTheMicroBatchsTargets) {
  Fixture f(TinyMoeConfig());
  const LmInputs in = TinyInputs(2, 10, 11, /*every_target=*/false);
  Arena arena;
  const MambaHybrid::LossSum loss = *f.model->ForwardLoss(arena, in);
  EXPECT_EQ(loss.balance_weight, loss.count);
  int64_t targets = 0;
  for (uint8_t m : in.mask) targets += m;
  EXPECT_EQ(loss.count, targets);
  ASSERT_EQ(f.model->moe_layers().size(), 1u);
  EXPECT_EQ(loss.balance_loss, f.model->moe_layers()[0]->balance_loss());
  EXPECT_GT(loss.balance_loss, 0);
  EXPECT_TRUE(f.store.Find("layers.3.moe.router.weight").ok());
  EXPECT_TRUE(f.store.Find("layers.3.moe.experts.3.w_down").ok());
  EXPECT_TRUE(f.store.Find("layers.3.moe.shared_expert.w_gate").ok());
}

TEST(MambaHybrid, MoeLayersWithoutAMoeConfigAreRefused) {
  MambaHybridConfig c = TinyMoeConfig();
  c.clear_moe();
  ParameterStore store;
  absl::StatusOr<std::unique_ptr<MambaHybrid>> model = MambaHybrid::Create(c, store);
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("set model.mamba_hybrid.moe"), std::string::npos)
      << model.status();
}

TEST(Generation, GreedyTokensWithAMoeLayerAreTheSameRecurrentAndReforwarded) {
  Fixture f(TinyMoeConfig());
  testing::FillNormal(f.store.values().data<float>(), f.store.numel(), 23, 0.3f);
  const std::vector<int32_t> prompt = {5, 2, 8};
  const auto recurrent = GenerateGreedy(*f.model, prompt, 12, -1, GenerationMode::kRecurrent);
  const auto reforward = GenerateGreedy(*f.model, prompt, 12, -1, GenerationMode::kReforward);
  ASSERT_TRUE(recurrent.ok() && reforward.ok());
  EXPECT_EQ(*recurrent, *reforward);
}

double Softplus(double v) { return v > 20 ? v : std::log1p(std::exp(v)); }
double Silu(double v) { return v / (1 + std::exp(-v)); }

// mamba_ssm's Mamba2.forward (no conv/SSM state inputs), transcribed loop by
// loop in double from the parameters: in_proj -> [z, x, B, C, dt]; causal
// depthwise conv with bias over [x, B, C]; SiLU; dt = softplus(dt + dt_bias);
// the recurrence h = exp(dt A) h + dt x B^T, y = h C + D x;
// RMSNorm(y * silu(z)) by group times the norm weight; out_proj.
std::vector<double> ReferenceMixer(const ParameterStore& store, const MambaHybridConfig& c,
                                   const Tensor& u, int64_t batch, int64_t seq) {
  const MixerDims d = ResolveMixerDims(c);
  auto p = [&](const char* name) { return store.param(*store.Find(name)).data<float>(); };
  // The blocks of in_proj and conv1d, one parameter each, stacked in order.
  auto stacked = [&](const std::string& name, std::vector<const char*> blocks) {
    std::vector<float> all;
    for (const char* block : blocks) {
      const Tensor t = store.param(*store.Find(name + block));
      all.insert(all.end(), t.data<float>(), t.data<float>() + t.numel());
    }
    return all;
  };
  const std::vector<float> in_weight =
      stacked("mixer.in_proj.weight.", {"z", "x", "B", "C", "dt"});
  const std::vector<float> conv_weight = stacked("mixer.conv1d.weight.", {"x", "B", "C"});
  const std::vector<float> conv_bias = stacked("mixer.conv1d.bias.", {"x", "B", "C"});
  const float *w_in = in_weight.data(), *conv_w = conv_weight.data();
  const float *conv_b = conv_bias.data(), *dt_bias = p("mixer.dt_bias");
  const float *a_log = p("mixer.A_log"), *D = p("mixer.D"), *norm_w = p("mixer.norm.weight");
  const float* w_out = p("mixer.out_proj.weight");
  const int64_t H = d.heads, P = d.head_dim, G = d.groups, N = d.state_dim, K = d.conv_width;
  const int64_t di = d.d_inner, Cc = d.conv_channels(), W = d.in_proj_out(), hid = d.hidden;
  std::vector<double> out(batch * seq * hid);
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<double> proj(seq * W), act(seq * Cc), y(seq * di);
    for (int64_t t = 0; t < seq; ++t)
      for (int64_t o = 0; o < W; ++o) {
        double s = 0;
        for (int64_t i = 0; i < hid; ++i)
          s += double(u.data<float>()[(b * seq + t) * hid + i]) * w_in[o * hid + i];
        proj[t * W + o] = s;
      }
    for (int64_t t = 0; t < seq; ++t)
      for (int64_t ch = 0; ch < Cc; ++ch) {
        double s = conv_b[ch];
        for (int64_t k = 0; k < K; ++k) {
          const int64_t tau = t - (K - 1) + k;
          if (tau >= 0) s += double(conv_w[ch * K + k]) * proj[tau * W + di + ch];
        }
        act[t * Cc + ch] = Silu(s);
      }
    std::vector<double> h(H * P * N, 0.0);
    for (int64_t t = 0; t < seq; ++t)
      for (int64_t hd = 0; hd < H; ++hd) {
        const int64_t g = hd / (H / G);
        const double dt = Softplus(proj[t * W + di + Cc + hd] + dt_bias[hd]);
        const double decay = std::exp(-dt * std::exp(double(a_log[hd])));
        for (int64_t pp = 0; pp < P; ++pp) {
          const double xv = act[t * Cc + hd * P + pp];
          double yv = D[hd] * xv;
          for (int64_t n = 0; n < N; ++n) {
            double& state = h[(hd * P + pp) * N + n];
            state = decay * state + dt * xv * act[t * Cc + di + g * N + n];
            yv += state * act[t * Cc + di + G * N + g * N + n];
          }
          y[t * di + hd * P + pp] = yv;
        }
      }
    const int64_t group = di / G;
    for (int64_t t = 0; t < seq; ++t) {
      std::vector<double> normed(di);
      for (int64_t g = 0; g < G; ++g) {
        double ss = 0;
        for (int64_t j = g * group; j < (g + 1) * group; ++j) {
          normed[j] = y[t * di + j] * Silu(proj[t * W + j]);
          ss += normed[j] * normed[j];
        }
        const double rstd = 1 / std::sqrt(ss / group + c.norm_eps());
        for (int64_t j = g * group; j < (g + 1) * group; ++j) normed[j] *= rstd * norm_w[j];
      }
      for (int64_t o = 0; o < hid; ++o) {
        double s = 0;
        for (int64_t j = 0; j < di; ++j) s += normed[j] * w_out[o * di + j];
        out[(b * seq + t) * hid + o] = s;
      }
    }
  }
  return out;
}

TEST(Mamba2Mixer, ForwardMatchesTheReferenceTranscribedInDouble) {
  const MambaHybridConfig c = TinyConfig();
  ParameterStore store;
  SingleProcessLayout one;
  Mamba2Mixer mixer(store, "mixer", c, one.layout());
  store.Finalize(9);
  // Larger projections than the initialization's, so every path matters.
  for (const char* block : {"z", "x", "B", "C", "dt"}) {
    const Tensor w = store.param(*store.Find(std::string("mixer.in_proj.weight.") + block));
    testing::FillNormal(w.data<float>(), w.numel(), 4, 0.4f);
  }
  const int64_t batch = 2, seq = 10;
  Tensor u = RandomTensor(Shape{batch * seq, 16}, 1);
  Arena arena;
  Tensor out = *mixer.Forward(arena, u, batch, seq);
  const std::vector<double> want = ReferenceMixer(store, c, u, batch, seq);
  double max_diff = 0, max_want = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    max_diff = std::max(max_diff, std::abs(out.data<float>()[i] - want[i]));
    max_want = std::max(max_want, std::abs(want[i]));
  }
  EXPECT_LT(max_diff / max_want, 1e-5) << "max |want| " << max_want;
}

TEST(MambaHybrid, RegistersTheReferenceNamesAndNoDecayOnALogDAndDtBias) {
  MambaHybridConfig c = TinyConfig();
  c.set_tie_embeddings(false);
  Fixture f(c);
  EXPECT_EQ(f.model->pattern(), "M*-M");
  for (const char* name :
       {"embedding.weight", "layers.0.norm.weight", "layers.0.mixer.in_proj.weight.z",
        "layers.0.mixer.in_proj.weight.x", "layers.0.mixer.in_proj.weight.B",
        "layers.0.mixer.in_proj.weight.C", "layers.0.mixer.in_proj.weight.dt",
        "layers.0.mixer.conv1d.weight.x", "layers.0.mixer.conv1d.weight.B",
        "layers.0.mixer.conv1d.weight.C", "layers.0.mixer.conv1d.bias.x",
        "layers.0.mixer.conv1d.bias.B", "layers.0.mixer.conv1d.bias.C", "layers.3.mixer.dt_bias",
        "layers.3.mixer.A_log", "layers.3.mixer.D", "layers.0.mixer.norm.weight",
        "layers.0.mixer.out_proj.weight", "layers.1.mixer.q_proj.weight",
        "layers.1.mixer.kv_proj.weight", "layers.1.mixer.out_proj.weight",
        "layers.2.mlp.fc1.weight", "layers.2.mlp.fc2.weight", "norm_f.weight",
        "lm_head.weight"}) {
    EXPECT_TRUE(f.store.Find(name).ok()) << name;
  }
  for (const char* name : {"layers.0.mixer.A_log", "layers.0.mixer.D", "layers.0.mixer.dt_bias"})
    EXPECT_FALSE(f.store.info(*f.store.Find(name)).weight_decay) << name;
  EXPECT_TRUE(f.store.info(*f.store.Find("layers.0.mixer.in_proj.weight.x")).weight_decay);
  // in_proj: [z, x, B, C, dt] = 32, 32, 2 * 8, 2 * 8 and 4 rows.
  const struct {
    const char* block;
    int64_t rows;
  } blocks[] = {{"z", 32}, {"x", 32}, {"B", 16}, {"C", 16}, {"dt", 4}};
  for (const auto& b : blocks) {
    EXPECT_EQ(f.store.info(*f.store.Find(std::string("layers.0.mixer.in_proj.weight.") + b.block))
                  .global_shape,
              (Shape{b.rows, 16}))
        << b.block;
  }
}

TEST(MambaHybrid, InitializationFollowsTheReference) {
  MambaHybridConfig c = TinyConfig();
  c.set_hidden_size(64);  // 16 heads per Mamba layer
  c.set_num_groups(1);
  Fixture f(c);
  for (int layer : {0, 3}) {
    const std::string prefix = "layers." + std::to_string(layer) + ".mixer.";
    Tensor a_log = f.store.param(*f.store.Find(prefix + "A_log"));
    Tensor dt_bias = f.store.param(*f.store.Find(prefix + "dt_bias"));
    Tensor d = f.store.param(*f.store.Find(prefix + "D"));
    for (int64_t h = 0; h < a_log.numel(); ++h) {
      const double a = std::exp(a_log.data<float>()[h]);
      EXPECT_GE(a, 1 - 1e-5);
      EXPECT_LE(a, 16 + 1e-4);
      const double dt = Softplus(dt_bias.data<float>()[h]);
      EXPECT_GE(dt, 1e-3 * (1 - 1e-4));
      EXPECT_LE(dt, 1e-1 * (1 + 1e-4));
      EXPECT_EQ(d.data<float>()[h], 1.0f);
    }
  }
}

TEST(MambaHybrid, RecomputeGivesBitIdenticalGradients) {
  MambaHybridConfig with = TinyConfig();
  with.set_recompute(true);
  Fixture a(TinyConfig()), b(with);
  const LmInputs in = TinyInputs(2, 10, 11, false);
  for (Fixture* f : {&a, &b}) {
    Arena arena;
    f->store.ZeroGrads();
    ASSERT_TRUE(f->model->ForwardLoss(arena, in).ok());
    ASSERT_TRUE(f->model->Backward(arena, 0.5f).ok());
  }
  EXPECT_EQ(std::memcmp(a.store.grads().raw(), b.store.grads().raw(), a.store.grads().bytes()), 0);
}

TEST(MambaHybrid, LearnsAFixedBatch) {
  Fixture f(TinyConfig());
  const LmInputs in = TinyInputs(2, 10, 11, true);
  OptimConfig optim;
  optim.set_grad_clip(0);
  AdamW adamw(f.store, optim);
  Arena arena;
  double first = 0, last = 0;
  for (int step = 0; step < 60; ++step) {
    arena.Reset();
    f.store.ZeroGrads();
    MambaHybrid::LossSum loss = *f.model->ForwardLoss(arena, in);
    ASSERT_TRUE(f.model->Backward(arena, 1.0f / loss.count).ok());
    adamw.Step(1e-2f, f.store.values().data<float>(), f.store.grads().data<float>());
    (step == 0 ? first : last) = loss.sum / loss.count;
  }
  EXPECT_NEAR(first, std::log(11.0), 0.3);  // near uniform at initialization
  EXPECT_LT(last, 0.2 * first);
}

TEST(Generation, RecurrentStepLogitsEqualTheFullForwardsLastRows) {
  Fixture f(TinyConfig());
  testing::FillNormal(f.store.values().data<float>(), f.store.numel(), 21, 0.3f);
  const std::vector<int32_t> tokens = {3, 7, 1, 9, 4, 4, 0, 10, 2};
  const int64_t length = static_cast<int64_t>(tokens.size());
  Arena arena;
  Tensor ids = Tensor::Empty(DType::kI32, Shape{length});
  std::memcpy(ids.raw(), tokens.data(), ids.bytes());
  const Tensor full = f.model->Logits(arena, *f.model->ForwardHidden(arena, ids, 1, length, false));
  ASSERT_TRUE(f.model->StartGeneration(1, length).ok());
  Arena step_arena;
  for (int64_t t = 0; t < length; ++t) {
    step_arena.Reset();
    const Tensor step = *f.model->StepLogits(step_arena, {tokens[t]});
    for (int64_t v = 0; v < 11; ++v) {
      const float want = full.data<float>()[t * 11 + v];
      ASSERT_NEAR(step.data<float>()[v], want, 1e-4 * std::max(1.0f, std::abs(want)))
          << "position " << t << ", token " << v;
    }
  }
}

TEST(Generation, GreedyTokensOfTheRecurrentFormEqualAFullReforward) {
  MambaHybridConfig c = TinyConfig();
  c.set_tie_embeddings(false);
  Fixture f(c);
  testing::FillNormal(f.store.values().data<float>(), f.store.numel(), 22, 0.3f);
  const std::vector<int32_t> prompt = {5, 2, 8};
  const auto recurrent = GenerateGreedy(*f.model, prompt, 16, -1, GenerationMode::kRecurrent);
  const auto reforward = GenerateGreedy(*f.model, prompt, 16, -1, GenerationMode::kReforward);
  ASSERT_TRUE(recurrent.ok() && reforward.ok());
  EXPECT_EQ(*recurrent, *reforward);
  ASSERT_EQ(recurrent->size(), 16u);
  // Not a constant sequence: the comparison exercises many different tokens.
  EXPECT_GT(std::set<int32_t>(recurrent->begin(), recurrent->end()).size(), 2u);
}

// RoPE as the rotate-half formula in double, position first + t for row t.
TEST(RotaryEmbedding, RotatesHeadsAtTheirPositionsAndTheInverseUndoesIt) {
  const int64_t batch = 2, seq = 5, heads = 3, head_dim = 6, stride = 23, first = 7;
  const double base = 50;
  Tensor x = RandomTensor(Shape{batch * seq, stride}, 4);
  std::vector<float> original(x.data<float>(), x.data<float>() + x.numel());
  RotaryEmbedding rope(base, head_dim);
  Arena arena;
  rope.Apply(arena, x.data<float>(), stride, batch, seq, heads, first, /*inverse=*/false);
  double max_diff = 0;
  for (int64_t r = 0; r < batch * seq; ++r) {
    const double p = static_cast<double>(first + r % seq);
    for (int64_t c = heads * head_dim; c < stride; ++c) {  // past the heads: untouched
      ASSERT_EQ(x.data<float>()[r * stride + c], original[r * stride + c]);
    }
    for (int64_t h = 0; h < heads; ++h) {
      const float* in = &original[r * stride + h * head_dim];
      const float* out = x.data<float>() + r * stride + h * head_dim;
      for (int64_t i = 0; i < head_dim / 2; ++i) {
        const double angle = p * std::pow(base, -2.0 * i / head_dim);
        const double a = in[i], b = in[i + head_dim / 2];
        max_diff = std::max(max_diff, std::abs(out[i] - (a * std::cos(angle) - b * std::sin(angle))));
        max_diff = std::max(max_diff, std::abs(out[i + head_dim / 2] -
                                               (b * std::cos(angle) + a * std::sin(angle))));
      }
    }
  }
  EXPECT_LT(max_diff, 1e-5);
  rope.Apply(arena, x.data<float>(), stride, batch, seq, heads, first, /*inverse=*/true);
  for (int64_t i = 0; i < x.numel(); ++i) {
    ASSERT_NEAR(x.data<float>()[i], original[i], 1e-5) << i;
  }
}

MambaHybridConfig TinyRopeConfig() {
  MambaHybridConfig c = TinyConfig();
  c.set_rope_base(100);  // angles up to ~9 rad over 10 positions in the fast pair
  c.set_hidden_size(32);  // attention head dim 8: two rotation frequencies and more
  c.set_head_dim(16);
  return c;
}

TEST(CausalSelfAttention, RopeGradientsMatchFiniteDifferences) {
  ParameterStore store;
  SingleProcessLayout one;
  CausalSelfAttention attention(store, "attn", TinyRopeConfig(), one.layout());
  store.Finalize(5);
  CheckSublayer(attention, store, 2, 10, 32);
}

TEST(CausalSelfAttention, RopeChangesTheOutputAndNotTheFirstPosition) {
  MambaHybridConfig with = TinyRopeConfig(), without = TinyRopeConfig();
  without.set_rope_base(0);
  ParameterStore a, b;
  SingleProcessLayout one;
  CausalSelfAttention rope(a, "attn", with, one.layout()), plain(b, "attn", without, one.layout());
  a.Finalize(5);
  b.Finalize(5);
  const Tensor x = RandomTensor(Shape{10, 32}, 1);
  Arena arena;
  const Tensor y_rope = *rope.Forward(arena, x, 1, 10), y_plain = *plain.Forward(arena, x, 1, 10);
  // Position 0 is rotated by angle 0 and attends to itself only.
  for (int64_t c = 0; c < 32; ++c) {
    EXPECT_NEAR(y_rope.data<float>()[c], y_plain.data<float>()[c], 1e-6);
  }
  double diff = 0;
  for (int64_t i = 32; i < y_rope.numel(); ++i) {
    diff = std::max(diff, double(std::abs(y_rope.data<float>()[i] - y_plain.data<float>()[i])));
  }
  EXPECT_GT(diff, 1e-3);
}

TEST(Generation, WithRopeTheRecurrentFormEqualsAFullReforward) {
  MambaHybridConfig c = TinyRopeConfig();
  c.set_tie_embeddings(false);
  Fixture f(c);
  testing::FillNormal(f.store.values().data<float>(), f.store.numel(), 24, 0.3f);
  const std::vector<int32_t> tokens = {3, 7, 1, 9, 4, 4, 0, 10, 2};
  const int64_t length = static_cast<int64_t>(tokens.size());
  Arena arena;
  Tensor ids = Tensor::Empty(DType::kI32, Shape{length});
  std::memcpy(ids.raw(), tokens.data(), ids.bytes());
  const Tensor full = f.model->Logits(arena, *f.model->ForwardHidden(arena, ids, 1, length, false));
  ASSERT_TRUE(f.model->StartGeneration(1, length).ok());
  Arena step_arena;
  for (int64_t t = 0; t < length; ++t) {
    step_arena.Reset();
    const Tensor step = *f.model->StepLogits(step_arena, {tokens[t]});
    for (int64_t v = 0; v < 11; ++v) {
      const float want = full.data<float>()[t * 11 + v];
      ASSERT_NEAR(step.data<float>()[v], want, 1e-4 * std::max(1.0f, std::abs(want)))
          << "position " << t << ", token " << v;
    }
  }
  const std::vector<int32_t> prompt = {5, 2, 8};
  const auto recurrent = GenerateGreedy(*f.model, prompt, 16, -1, GenerationMode::kRecurrent);
  const auto reforward = GenerateGreedy(*f.model, prompt, 16, -1, GenerationMode::kReforward);
  ASSERT_TRUE(recurrent.ok() && reforward.ok());
  EXPECT_EQ(*recurrent, *reforward);
  EXPECT_GT(std::set<int32_t>(recurrent->begin(), recurrent->end()).size(), 2u);
}

TEST(MambaHybrid, GradientsWithRopeMatchFiniteDifferences) {
  CheckModelGradients(TinyRopeConfig(), /*every_target=*/true);
}

}  // namespace
}  // namespace tessera::mamba_hybrid
