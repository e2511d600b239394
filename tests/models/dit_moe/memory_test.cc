// The activation memory the model predicts at start-up against what its
// arenas actually reach in a training step, across shapes, in fp32 and in
// bf16 (whose layers also keep bf16 copies of GEMM inputs, Bf16Copy).
#include <gtest/gtest.h>

#include <cstdio>
#include <optional>
#include <vector>

#include "models/dit_moe/diffusion.h"
#include "models/dit_moe/model.h"

namespace tessera::dit_moe {
namespace {

struct Case {
  const char* name;
  int64_t input_size, patch, hidden, depth, heads, experts, expert_hidden, batch;
  bool recompute;
  bool bf16 = false;
};

class ActivationMemory : public ::testing::TestWithParam<Case> {};

TEST_P(ActivationMemory, PredictionIsWithinTenPercentOfTheMeasuredPeak) {
  const Case& k = GetParam();
  DitMoeConfig c;
  c.set_input_size(k.input_size);
  c.set_patch_size(k.patch);
  c.set_hidden_size(k.hidden);
  c.set_depth(k.depth);
  c.set_num_heads(k.heads);
  c.mutable_moe()->set_num_experts(k.experts);
  c.mutable_moe()->set_expert_hidden(k.expert_hidden);
  c.set_recompute(k.recompute);
  ParameterStore store;
  std::optional<ScopedGemmPrecision> precision;
  if (k.bf16) precision.emplace(store.backend(), MathPrecision::kBf16);
  auto model = *DitMoe::Create(c, store);
  store.Finalize(0);
  Diffusion diffusion(c);
  const DitMoeDims& d = model->dims();
  Tensor images = Tensor::Empty(DType::kF32, Shape{k.batch, d.channels, d.input_size, d.input_size});
  std::vector<int32_t> labels(k.batch, 1);
  std::vector<int64_t> ids(k.batch);
  for (int64_t b = 0; b < k.batch; ++b) ids[b] = b;
  Arena arena;
  for (int step = 0; step < 2; ++step) {
    arena.Reset();
    DiffusionExample ex =
        diffusion.MakeExample(arena, images, labels.data(), ids.data(), 0.1f, 10, 0, step);
    Tensor out = *model->Forward(arena, ex.noisy, ex.t.data(), ex.labels.data());
    ASSERT_TRUE(model->Backward(arena, out, 1.0f).ok());
  }
  const double measured = static_cast<double>(arena.peak_bytes() + model->scratch_peak_bytes());
  const double predicted = static_cast<double>(model->PredictActivationBytes(k.batch));
  std::printf("%s: measured %.2f MB (step arena %.2f, scratch %.2f), predicted %.2f MB\n", k.name,
              measured / 1e6, arena.peak_bytes() / 1e6, model->scratch_peak_bytes() / 1e6,
              predicted / 1e6);
  EXPECT_NEAR(predicted / measured, 1.0, 0.10);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ActivationMemory,
    ::testing::Values(Case{"quickstart", 32, 4, 128, 4, 4, 4, 256, 32, false},
                      Case{"quickstart_recompute", 32, 4, 128, 4, 4, 4, 256, 32, true},
                      Case{"s2_8e2a_depth4_batch2", 32, 2, 384, 4, 6, 8, 1536, 2, false},
                      Case{"tiny", 8, 2, 32, 2, 4, 4, 64, 8, false},
                      Case{"quickstart_bf16", 32, 4, 128, 4, 4, 4, 256, 32, false, true},
                      Case{"quickstart_recompute_bf16", 32, 4, 128, 4, 4, 4, 256, 32, true, true},
                      Case{"s2_8e2a_depth4_batch2_bf16", 32, 2, 384, 4, 6, 8, 1536, 2, false,
                           true}),
    [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace tessera::dit_moe
