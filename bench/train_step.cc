// One DiT-MoE-S/2-8E2A training step (batch 8, 32x32x1 inputs, rectified
// flow): samples/s and achieved FLOP/s as a fraction of the oneDNN sgemm rate
// measured in the same run, and where the time goes: each layer kind timed
// on its own at the model's shapes (forward + backward), times depth.
//
//   bench_train_step [threads] [steps] [fp32|bf16]
//
// bf16: the GEMMs run on bf16-rounded inputs with fp32 accumulation
// (train.precision=bf16); the peak is then oneDNN's bf16 matmul rate.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "models/dit_moe/diffusion.h"
#include "models/dit_moe/model.h"
#include "runtime/kernels/cpu/gemm.h"
#include "runtime/kernels/cpu/layer_norm.h"
#include "runtime/kernels/cpu/loss.h"
#include "runtime/kernels/cpu/modulate.h"
#include "runtime/nn/attention.h"
#include "runtime/nn/moe.h"
#include "runtime/optim/adamw.h"
#include "runtime/optim/clip.h"
#include "runtime/optim/ema.h"
#include "runtime/train/trainer.h"

namespace {
using Clock = std::chrono::steady_clock;
using namespace tessera;

template <typename Fn>
double MedianSeconds(Fn fn, int reps) {
  fn();  // warm up (arena growth, page faults)
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    const auto start = Clock::now();
    fn();
    times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

Tensor Random(Shape shape, uint64_t seed) {
  Tensor t = Tensor::Empty(DType::kF32, shape);
  Rng rng(seed);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = rng.Normal();
  return t;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) cpu::SetNumThreads(std::atoi(argv[1]));
  const int steps = argc > 2 ? std::atoi(argv[2]) : 5;
  const bool bf16 = argc > 3 && std::string(argv[3]) == "bf16";
  if (bf16) {
    std::string note;
    const absl::Status supported = HostBackend().CheckPrecision(MathPrecision::kBf16, &note);
    if (!supported.ok()) {
      std::printf("bf16: %s\n", std::string(supported.message()).c_str());
      return 1;
    }
    if (!note.empty()) std::printf("bf16: %s\n", note.c_str());
    HostBackend().set_gemm_precision(MathPrecision::kBf16);
  }
  constexpr int64_t kBatch = 8;

  const DitMoeConfig config;  // config.proto's defaults are S/2-8E2A at 32x32x1
  ParameterStore store;
  auto model = *dit_moe::DitMoe::Create(config, store);
  store.Finalize(0);
  // Trained-looking weights instead of adaLN-Zero's zeros, so routing spreads.
  {
    Rng rng(1);
    float* v = store.values().data<float>();
    for (int64_t i = 0; i < store.numel(); ++i) v[i] += 0.02f * rng.Normal();
  }
  const dit_moe::DitMoeDims d = model->dims();
  OptimConfig optim;
  AdamW adam(store, optim);
  Backend& backend = store.backend();
  Ema ema(backend, store.values().ptr<float>(), store.numel());
  dit_moe::Diffusion diffusion(config);

  const double peak = Trainer::MeasureGemmPeak();
  std::printf("DiT-MoE-S/2-8E2A: %lld parameters, %d threads, batch %lld, %lld tokens/sample\n",
              static_cast<long long>(store.numel()), cpu::NumThreads(),
              static_cast<long long>(kBatch), static_cast<long long>(d.tokens()));
  std::printf("precision %s; reference: oneDNN %s GEMM n=1024: %.1f GFLOP/s\n",
              bf16 ? "bf16" : "fp32", bf16 ? "bf16" : "fp32", peak / 1e9);

  Tensor images = Random(Shape{kBatch, 1, 32, 32}, 2);
  std::vector<int32_t> labels(kBatch);
  std::vector<int64_t> ids(kBatch);
  for (int64_t b = 0; b < kBatch; ++b) labels[b] = static_cast<int32_t>(b % 10), ids[b] = b;
  // The arenas sized as the trainer sizes them (DitMoeTask): the step arena
  // to the model's prediction, the block-wise scratch reserved up front. An
  // arena that outgrows its block replaces it at the next Reset, and the
  // fresh pages cost a fault each; unreserved, that happened most steps here
  // (the MoE's routed row counts change from step to step).
  Arena arena(backend, model->PlanActivations(kBatch).step_arena);
  model->ReserveScratch(kBatch);
  int64_t step = 0;
  auto train_step = [&] {
    arena.Reset();
    store.ZeroGrads();
    {
      // As Trainer::Step: a bf16 run's GEMMs read weight copies made once here.
      ParameterStore::ScopedBf16Values bf16_weights(store);
      auto ex = diffusion.MakeExample(arena, images, labels.data(), ids.data(), 0.1f, 10, 0, ++step);
      Tensor out = *model->Forward(arena, ex.noisy, ex.t.data(), ex.labels.data());
      Tensor dout = arena.AllocateUninitialized(DType::kF32, out.shape());
      backend.MseBackward(out.ptr<float>(), ex.target.ptr<float>(), dout.ptr<float>(),
                          out.numel(), 1.0f);
      if (!model->Backward(arena, dout, 1.0f).ok()) std::abort();
    }
    double norm_squared = 0;  // host memory: the CPU backend's
    backend.SumSquares(store.grads().ptr<float>(), store.numel(), &norm_squared);
    const float scale = static_cast<float>(ClipScale(std::sqrt(norm_squared), 1.0));
    adam.Step(1e-4f, store.values().data<float>(), store.grads().data<float>(), &scale);
    ema.Update(store.values().data<float>(), 0.9999, &scale);
  };
  const double step_seconds = MedianSeconds(train_step, steps);
  const double flops = 3 * model->ForwardFlops(kBatch);
  std::printf("\ntraining step: %.1f ms, %.2f samples/s, %.1f GFLOP/s = %.1f%% of the GEMM peak "
              "(model FLOPs %.2f GFLOP/step)\n",
              step_seconds * 1e3, kBatch / step_seconds, flops / step_seconds / 1e9,
              100 * flops / step_seconds / peak, flops / 1e9);

  // Where the time goes: each layer kind alone at the model's shapes.
  const int64_t B = kBatch, T = d.tokens(), D = d.hidden, R = B * T;
  std::printf("\n%-34s %10s %8s %10s\n", "per layer kind (fwd+bwd) x count", "ms/step", "share",
              "GFLOP/s");
  double accounted = 0;
  auto report = [&](const char* name, double seconds, double layer_flops) {
    accounted += seconds;
    std::printf("%-34s %10.1f %7.1f%% %10.1f\n", name, seconds * 1e3, 100 * seconds / step_seconds,
                layer_flops > 0 ? layer_flops / seconds / 1e9 : 0.0);
  };
  {
    ParameterStore s;
    MultiHeadAttention attention(s, "attn", D, d.heads);
    s.Finalize(1);
    Tensor x = Random(Shape{R, D}, 3), dy = Random(Shape{R, D}, 4);
    Arena a;
    const double t = MedianSeconds([&] { a.Reset(); attention.Forward(a, x, B, T); attention.Backward(a, dy); }, steps);
    report("attention (qkv, sdpa, proj) x12", 12 * t, 12 * 3 * attention.ForwardFlops(B, T));
  }
  {
    ParameterStore s;
    MoeLayer::Options o;
    o.num_experts = d.num_experts;
    o.top_k = d.top_k;
    o.expert_hidden = d.expert_hidden;
    o.shared_expert_hidden = d.shared_expert_hidden;
    MoeLayer moe(s, "moe", D, o);
    s.Finalize(1);
    Tensor x = Random(Shape{R, D}, 3), dy = Random(Shape{R, D}, 4);
    Arena a;
    const double t = MedianSeconds([&] { a.Reset(); (void)moe.Forward(a, x).value(); moe.Backward(a, dy, 1.0f); }, steps);
    report("MoE FFN (router, 8 experts, shared) x12", 12 * t, 12 * 3 * moe.ForwardFlops(R));
  }
  {
    // Two fused LayerNorm + modulates and two gated residuals, forward and
    // backward (the block's element-wise work besides its GEMMs).
    Tensor x = Random(Shape{R, D}, 3), y = Random(Shape{R, D}, 4), mod = Random(Shape{B, 6 * D}, 5);
    std::vector<float> mean(R), rstd(R), dmod(B * 6 * D);
    Tensor out = Random(Shape{R, D}, 6), dx = Random(Shape{R, D}, 7);
    const double t = MedianSeconds([&] {
      for (int i = 0; i < 2; ++i) {
        cpu::LayerNormModulateForward(x.data<float>(), mod.data<float>(), mod.data<float>() + D, y.data<float>(), mean.data(), rstd.data(), B, T, D, 6 * D, 1e-6f);
        cpu::GatedResidualForward(x.data<float>(), y.data<float>(), mod.data<float>() + 2 * D, B, T, D, 6 * D);
        cpu::GatedResidualBackward(dx.data<float>(), y.data<float>(), mod.data<float>() + 2 * D, out.data<float>(), dmod.data(), B, T, D, 6 * D);
        cpu::LayerNormModulateBackward(out.data<float>(), x.data<float>(), mean.data(), rstd.data(), mod.data<float>() + D, y.data<float>(), dmod.data(), dmod.data() + D, B, T, D, 6 * D);
      }
    }, steps);
    report("norms + adaLN modulate/gate x12", 12 * t, 0);
  }
  {
    const double t = MedianSeconds([&] {
      double norm_squared = 0;
      backend.SumSquares(store.grads().ptr<float>(), store.numel(), &norm_squared);
      adam.Step(1e-4f, store.values().data<float>(), store.grads().data<float>());
      ema.Update(store.values().data<float>(), 0.9999);
    }, steps);
    report("grad norm + AdamW + EMA", t, 0);
  }
  std::printf("%-34s %10.1f %7.1f%%\n", "rest (embedders, final layer, copies)",
              (step_seconds - accounted) * 1e3, 100 * (step_seconds - accounted) / step_seconds);
  return 0;
}
