// DiT-MoE end to end: gradients of the whole model against finite
// differences, the patch/position helpers against their definitions,
// recomputation, and a fixed batch that the model must overfit.
#include "models/dit_moe/model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "models/dit_moe/diffusion.h"
#include "runtime/config/config.h"
#include "runtime/kernels/cpu/loss.h"
#include "runtime/optim/adamw.h"
#include "tests/testing/gradient_check.h"

namespace tessera::dit_moe {
namespace {
using testing::RandomTensor;

DitMoeConfig TinyConfig() {
  DitMoeConfig c;
  c.set_input_size(8);
  c.set_in_channels(1);
  c.set_patch_size(2);
  c.set_hidden_size(16);
  c.set_depth(2);
  c.set_num_heads(2);
  c.set_num_classes(3);
  c.mutable_moe()->set_num_experts(4);
  c.mutable_moe()->set_experts_per_token(2);
  c.mutable_moe()->set_expert_hidden(16);
  c.mutable_moe()->set_shared_expert_hidden(8);
  c.set_frequency_embedding_size(16);
  c.mutable_moe()->set_balance_loss_coef(0.5f);
  return c;
}

struct Fixture {
  explicit Fixture(const DitMoeConfig& config) {
    model = *DitMoe::Create(config, store);
    store.Finalize(11);
  }
  ParameterStore store;
  std::unique_ptr<DitMoe> model;
};

TEST(DitMoe, RejectsHiddenSizeThatIsNotAMultipleOfFour) {
  DitMoeConfig c = TinyConfig();
  c.set_hidden_size(18);
  c.set_num_heads(2);
  ParameterStore store;
  auto model = DitMoe::Create(c, store);
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("model.dit_moe.hidden_size=18"), std::string::npos);
}

TEST(DitMoe, RegistersTheReferenceParameterNames) {
  Fixture f(TinyConfig());
  for (const char* name :
       {"x_embedder.proj.weight", "t_embedder.mlp.0.weight", "t_embedder.mlp.2.bias",
        "y_embedder.embedding_table", "blocks.0.adaLN_modulation.weight", "blocks.1.attn.qkv.weight",
        "blocks.1.attn.proj.bias", "blocks.0.moe.router.weight", "blocks.0.moe.experts.3.w_up",
        "blocks.1.moe.shared_expert.w_down", "final_layer.linear.weight",
        "final_layer.adaLN_modulation.bias"}) {
    EXPECT_TRUE(f.store.Find(name).ok()) << name;
  }
  const ParamInfo& table = f.store.info(*f.store.Find("y_embedder.embedding_table"));
  EXPECT_EQ(table.global_shape, (Shape{4, 16}));  // 3 classes + the null label
  EXPECT_FALSE(table.weight_decay);
  const ParamInfo& expert = f.store.info(*f.store.Find("blocks.0.moe.experts.2.w_gate"));
  EXPECT_EQ(expert.spec.kind, ParallelSpec::Kind::kExpert);
  EXPECT_EQ(expert.spec.expert_index, 2);
}

TEST(DitMoe, AdaLnZeroMakesTheInitialModelOutputZero) {
  Fixture f(TinyConfig());
  Tensor x = RandomTensor(Shape{2, 1, 8, 8}, 1);
  std::vector<float> t = {100, 900};
  std::vector<int32_t> labels = {0, 3};
  Arena arena;
  Tensor out = *f.model->Forward(arena, x, t.data(), labels.data(), false);
  for (int64_t i = 0; i < out.numel(); ++i) ASSERT_EQ(out.data<float>()[i], 0.0f);
}

TEST(DitMoe, GradientsMatchFiniteDifferences) {
  // Every expert chosen for every token: the loss is smooth, so finite
  // differences never straddle a routing change. (Top-k selection itself is
  // checked at the layer level, tests/runtime/nn.)
  DitMoeConfig c = TinyConfig();
  c.mutable_moe()->set_experts_per_token(4);
  Fixture f(c);
  testing::FillNormal(f.store.values().data<float>(), f.store.numel(), 5, 0.3f);
  Tensor x = RandomTensor(Shape{2, 1, 8, 8}, 1);
  Tensor r = RandomTensor(Shape{2, 1, 8, 8}, 2);
  std::vector<float> t = {100, 900};
  std::vector<int32_t> labels = {0, 3};
  Arena arena;
  auto loss = [&] {
    arena.Reset();
    Tensor out = *f.model->Forward(arena, x, t.data(), labels.data(), false);
    return testing::WeightedSum(out, r) + f.model->balance_loss();
  };
  f.store.ZeroGrads();
  ASSERT_TRUE(f.model->Forward(arena, x, t.data(), labels.data()).ok());
  ASSERT_TRUE(f.model->Backward(arena, r, 1.0f).ok());
  std::vector<float> grads(f.store.grads().data<float>(),
                           f.store.grads().data<float>() + f.store.numel());
  testing::GradientCheckOptions options;
  options.samples = 6;
  options.step = 2e-3f;
  options.tolerance = 5e-2;
  options.floor = 5e-2;
  for (const ParamInfo& info : f.store.infos()) {
    testing::CheckGradient(info.name, f.store.values().data<float>() + info.offset,
                           grads.data() + info.offset, info.local_shape.numel(), loss, options);
  }
}

TEST(DitMoe, RecomputeGivesBitIdenticalGradients) {
  DitMoeConfig with = TinyConfig();
  with.set_recompute(true);
  Fixture a(TinyConfig()), b(with), c(TinyConfig());
  c.model->set_recompute(1, true);  // only the second block
  testing::FillNormal(a.store.values().data<float>(), a.store.numel(), 5, 0.3f);
  std::memcpy(b.store.values().raw(), a.store.values().raw(), a.store.values().bytes());
  std::memcpy(c.store.values().raw(), a.store.values().raw(), a.store.values().bytes());
  Tensor x = RandomTensor(Shape{3, 1, 8, 8}, 1), r = RandomTensor(Shape{3, 1, 8, 8}, 2);
  std::vector<float> t = {1, 500, 999};
  std::vector<int32_t> labels = {0, 1, 2};
  for (Fixture* f : {&a, &b, &c}) {
    Arena arena;
    f->store.ZeroGrads();
    ASSERT_TRUE(f->model->Forward(arena, x, t.data(), labels.data()).ok());
    ASSERT_TRUE(f->model->Backward(arena, r, 1.0f).ok());
  }
  ASSERT_EQ(std::memcmp(a.store.grads().raw(), b.store.grads().raw(), a.store.grads().bytes()), 0);
  ASSERT_EQ(std::memcmp(a.store.grads().raw(), c.store.grads().raw(), a.store.grads().bytes()), 0);
}

TEST(DitMoe, SteadyStateStepsAllocateNoNewArenaBlocks) {
  Fixture f(TinyConfig());
  Tensor x = RandomTensor(Shape{2, 1, 8, 8}, 1), r = RandomTensor(Shape{2, 1, 8, 8}, 2);
  std::vector<float> t = {1, 2};
  std::vector<int32_t> labels = {0, 1};
  Arena arena;
  int64_t after_warmup = 0;
  for (int step = 0; step < 4; ++step) {
    arena.Reset();
    ASSERT_TRUE(f.model->Forward(arena, x, t.data(), labels.data()).ok());
    ASSERT_TRUE(f.model->Backward(arena, r, 1.0f).ok());
    if (step == 1) after_warmup = arena.block_allocations();
  }
  EXPECT_EQ(arena.block_allocations(), after_warmup);
}

TEST(Patchify, UnpatchifyOfPatchifyIsTheIdentityUpToChannelOrder) {
  // With one channel the (c, py, px) and (py, px, c) orders coincide.
  Tensor images = RandomTensor(Shape{2, 1, 6, 6}, 3);
  std::vector<float> rows(72), back(72);
  PatchLayout(HostBackend(), 1, 6, 3, false).ToRows(images.data<float>(), rows.data(), 2);
  PatchLayout(HostBackend(), 1, 6, 3, true).ToImages(rows.data(), back.data(), 2);
  for (int i = 0; i < 72; ++i) EXPECT_EQ(back[i], images.data<float>()[i]);
}

TEST(Patchify, BackwardIsTheAdjoint) {
  // <ToRows(x), y> == <x, ToImages(y)> for both layouts.
  constexpr int64_t B = 2, C = 3, S = 4, P = 2, N = B * C * S * S;
  Tensor x = RandomTensor(Shape{N}, 1), y = RandomTensor(Shape{N}, 2);
  std::vector<float> px(N), by(N);
  const PatchLayout input(HostBackend(), C, S, P, false), output(HostBackend(), C, S, P, true);
  input.ToRows(x.data<float>(), px.data(), B);
  input.ToImages(y.data<float>(), by.data(), B);
  double lhs = 0, rhs = 0;
  for (int64_t i = 0; i < N; ++i) {
    lhs += static_cast<double>(px[i]) * y.data<float>()[i];
    rhs += static_cast<double>(x.data<float>()[i]) * by[i];
  }
  EXPECT_NEAR(lhs, rhs, 1e-4);
  output.ToImages(x.data<float>(), px.data(), B);
  output.ToRows(y.data<float>(), by.data(), B);
  lhs = rhs = 0;
  for (int64_t i = 0; i < N; ++i) {
    lhs += static_cast<double>(px[i]) * y.data<float>()[i];
    rhs += static_cast<double>(x.data<float>()[i]) * by[i];
  }
  EXPECT_NEAR(lhs, rhs, 1e-4);
}

TEST(Patchify, PatchRowsFollowConvWeightOrder) {
  // Pixel (c, y, x) of a 1x2x4x4 image lands in patch (y/2, x/2) at column
  // (c*2 + y%2)*2 + x%2.
  std::vector<float> image(32);
  for (int i = 0; i < 32; ++i) image[i] = static_cast<float>(i);
  std::vector<float> rows(32);
  PatchLayout(HostBackend(), 2, 4, 2, false).ToRows(image.data(), rows.data(), 1);
  for (int c = 0; c < 2; ++c)
    for (int y = 0; y < 4; ++y)
      for (int x = 0; x < 4; ++x) {
        const int patch = (y / 2) * 2 + x / 2, column = (c * 2 + y % 2) * 2 + x % 2;
        EXPECT_EQ(rows[patch * 8 + column], image[(c * 4 + y) * 4 + x]);
      }
}

TEST(PositionEmbedding, MatchesTheSinCosDefinition) {
  constexpr int64_t D = 8, G = 3;
  std::vector<float> e = SinCosPositionEmbedding2D(D, G);
  for (int64_t row = 0; row < G; ++row)
    for (int64_t col = 0; col < G; ++col)
      for (int64_t k = 0; k < 2; ++k) {
        const double omega = std::pow(10000.0, -k / 2.0);
        const float* v = e.data() + (row * G + col) * D;
        EXPECT_NEAR(v[k], std::sin(col * omega), 1e-6);
        EXPECT_NEAR(v[2 + k], std::cos(col * omega), 1e-6);
        EXPECT_NEAR(v[4 + k], std::sin(row * omega), 1e-6);
        EXPECT_NEAR(v[6 + k], std::cos(row * omega), 1e-6);
      }
}

TEST(TimestepFrequencies, MatchTheDefinition) {
  const float t[2] = {0.0f, 250.0f};
  std::vector<float> out(2 * 6);
  TimestepFrequencies(t, out.data(), 2, 6);
  for (int k = 0; k < 3; ++k) {
    const double freq = std::exp(-std::log(10000.0) * k / 3);
    EXPECT_NEAR(out[6 + k], std::cos(250.0 * freq), 1e-5);
    EXPECT_NEAR(out[6 + 3 + k], std::sin(250.0 * freq), 1e-5);
    EXPECT_EQ(out[k], 1.0f);
  }
}

TEST(Diffusion, RectifiedFlowExampleInterpolatesDataAndNoise) {
  DitMoeConfig c = TinyConfig();
  Diffusion diffusion(c);
  Arena arena;
  Tensor x = RandomTensor(Shape{3, 1, 8, 8}, 4);
  const int32_t labels[3] = {0, 1, 2};
  const int64_t ids[3] = {0, 1, 2};
  DiffusionExample ex = diffusion.MakeExample(arena, x, labels, ids, 0.0f, 3, 1, 1);
  for (int64_t b = 0; b < 3; ++b) {
    const double t = ex.t[b] / 1000.0;
    ASSERT_GT(t, 0.0);
    ASSERT_LT(t, 1.0);
    for (int64_t i = 0; i < 64; ++i) {
      // z = (1-t) x + t eps and target = eps - x  =>  x = z - t * target.
      const int64_t j = b * 64 + i;
      EXPECT_NEAR(ex.noisy.data<float>()[j] - t * ex.target.data<float>()[j],
                  x.data<float>()[j], 1e-4);
    }
    EXPECT_EQ(ex.labels[b], labels[b]);
  }
}

TEST(Diffusion, DrawsDependOnlyOnSeedStepAndSampleId) {
  Diffusion diffusion(TinyConfig());
  Arena arena;
  Tensor x = RandomTensor(Shape{2, 1, 8, 8}, 4);
  const int32_t labels[2] = {0, 1};
  const int64_t ids[2] = {5, 9};
  DiffusionExample both = diffusion.MakeExample(arena, x, labels, ids, 0.1f, 3, 7, 3);
  // The second sample alone, as another micro-batch or rank would see it.
  DiffusionExample second =
      diffusion.MakeExample(arena, x.Slice(1, 2), labels + 1, ids + 1, 0.1f, 3, 7, 3);
  EXPECT_EQ(both.t[1], second.t[0]);
  EXPECT_EQ(std::memcmp(both.noisy.data<float>() + 64, second.noisy.data<float>(), 64 * 4), 0);
}

TEST(DitMoe, OverfitsAFixedBatch) {
  DitMoeConfig c = TinyConfig();
  c.mutable_moe()->set_balance_loss_coef(0.01f);
  Fixture f(c);
  Diffusion diffusion(c);
  OptimConfig optim;
  optim.set_lr(3e-3);
  AdamW adam(f.store, optim);
  Tensor x = RandomTensor(Shape{4, 1, 8, 8}, 4, 0.5f);
  const int32_t labels[4] = {0, 1, 2, 0};
  const int64_t ids[4] = {0, 1, 2, 3};
  Arena arena;
  double first = 0, last = 0;
  for (int step = 0; step < 150; ++step) {
    arena.Reset();
    f.store.ZeroGrads();
    // The same noise and timesteps every step: a fixed regression problem.
    DiffusionExample ex = diffusion.MakeExample(arena, x, labels, ids, 0.0f, 3, 1, 0);
    Tensor out = *f.model->Forward(arena, ex.noisy, ex.t.data(), ex.labels.data());
    const double loss = cpu::MseForward(out.data<float>(), ex.target.data<float>(), out.numel());
    Tensor dout = arena.AllocateUninitialized(DType::kF32, out.shape());
    cpu::MseBackward(out.data<float>(), ex.target.data<float>(), dout.data<float>(), out.numel(),
                     1.0f);
    ASSERT_TRUE(f.model->Backward(arena, dout, 1.0f).ok());
    adam.Step(3e-3f, f.store.values().data<float>(), f.store.grads().data<float>());
    if (step == 0) first = loss;
    last = loss;
  }
  EXPECT_LT(last, 0.2 * first) << "loss " << first << " -> " << last;
}

}  // namespace
}  // namespace tessera::dit_moe
