// Attention forward/backward throughput at DiT-MoE shapes, as a fraction of
// oneDNN sgemm throughput measured in the same run (square n = 1024).
//
// FLOP counts (non-causal, multiply-add = 2):
//   forward  4 * B*H*S^2*Dh   (Q K^T and P V)
//   backward 10 * B*H*S^2*Dh  (Q K^T recomputed, dO V^T, P^T dO, dS^T Q, dS K),
//            i.e. 2.5x the forward.
// Softmax exponentials are not counted.
//
// Each shape also times the CPU's bf16 kernel (attention_bf16.h, what a bf16
// run uses) against the fp32 one, in wall time and in CPU time (best of 10;
// run with 1 thread on a shared machine, where wall times of a parallel
// region stretch whenever a core is taken away).
//
// Usage: bench_attention [threads]   (default: OpenMP's default)
//        bench_attention --cuda      (CUDA builds, on a GPU: the bf16 tensor-core
//                                     and the fp32 kernels against the bf16 GEMM rate)
#include "runtime/kernels/cpu/attention.h"
#include "runtime/kernels/cpu/attention_bf16.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "bench/timing.h"
#include "absl/strings/str_format.h"
#include "runtime/kernels/cpu/gemm.h"

#ifdef TESSERA_BENCH_CUDA
#include <cuda_runtime_api.h>

#include "runtime/kernels/cuda/attention.h"
#include "runtime/kernels/cuda/attention_bf16.h"
#include "runtime/kernels/cuda/check.h"
#include "runtime/kernels/cuda/device.h"
#include "runtime/kernels/cuda/gemm.h"
#endif

namespace {

using tessera::cpu::AttentionShape;

using tessera::bench::BestSeconds;

std::vector<float> Random(int64_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> x(n);
  for (float& value : x) value = dist(gen);
  return x;
}

// Runs one shape with fused QKV [B, S, 3, H, Dh] as the DiT block produces it.
void BenchShape(int64_t batch, int64_t seq, int64_t heads, int64_t head_dim, double gemm_gflops) {
  const int64_t width = heads * head_dim;
  const AttentionShape shape{batch, seq, heads, head_dim, 3 * width, false};
  const std::vector<float> qkv = Random(batch * seq * 3 * width, 3);
  const std::vector<float> dout = Random(batch * seq * width, 4);
  std::vector<float> out(batch * seq * width), lse(batch * heads * seq);
  std::vector<float> dqkv(qkv.size());
  const float* q = qkv.data();
  const float* k = q + width;
  const float* v = q + 2 * width;

  const double forward_s = BestSeconds(
      20, [&] { tessera::cpu::AttentionForward(shape, q, k, v, out.data(), lse.data()); });
  const double backward_s = BestSeconds(20, [&] {
    tessera::cpu::AttentionBackward(shape, q, k, v, out.data(), dout.data(), lse.data(),
                                    dqkv.data(), dqkv.data() + width, dqkv.data() + 2 * width);
  });
  // The bf16 kernel (attention_bf16.h) of a bf16 run, same shape; and both
  // kernels' CPU time (BestCpuSeconds: what compares on a loaded machine).
  auto forward32 = [&] { tessera::cpu::AttentionForward(shape, q, k, v, out.data(), lse.data()); };
  auto backward32 = [&] {
    tessera::cpu::AttentionBackward(shape, q, k, v, out.data(), dout.data(), lse.data(),
                                    dqkv.data(), dqkv.data() + width, dqkv.data() + 2 * width);
  };
  auto forward16 = [&] {
    tessera::cpu::AttentionForwardBf16(shape, q, k, v, out.data(), lse.data());
  };
  auto backward16 = [&] {
    tessera::cpu::AttentionBackwardBf16(shape, q, k, v, out.data(), dout.data(), lse.data(),
                                        dqkv.data(), dqkv.data() + width, dqkv.data() + 2 * width);
  };
  const double forward16_s = BestSeconds(20, forward16);
  const double backward16_s = BestSeconds(20, backward16);
  const double cpu_forward32 = tessera::bench::BestCpuSeconds(10, forward32);
  const double cpu_forward16 = tessera::bench::BestCpuSeconds(10, forward16);
  const double cpu_backward32 = tessera::bench::BestCpuSeconds(10, backward32);
  const double cpu_backward16 = tessera::bench::BestCpuSeconds(10, backward16);
  const double core = static_cast<double>(batch * heads) * seq * seq * head_dim;
  const double forward_gflops = 4.0 * core / forward_s * 1e-9;
  const double backward_gflops = 10.0 * core / backward_s * 1e-9;
  absl::PrintF(
      "B=%d S=%d H=%d Dh=%d  forward %7.3f ms %6.1f GFLOP/s (%.2f of sgemm)  "
      "backward %7.3f ms %6.1f GFLOP/s (%.2f of sgemm)\n",
      batch, seq, heads, head_dim, forward_s * 1e3, forward_gflops, forward_gflops / gemm_gflops,
      backward_s * 1e3, backward_gflops, backward_gflops / gemm_gflops);
  absl::PrintF("  bf16 (%s)  forward %7.3f ms (%.2fx fp32)  backward %7.3f ms (%.2fx fp32)\n",
               tessera::cpu::Bf16AttentionUsesDotInstructions() ? "avx512_bf16" : "portable",
               forward16_s * 1e3, forward_s / forward16_s, backward16_s * 1e3,
               backward_s / backward16_s);
  absl::PrintF("  CPU time, fp32 -> bf16: forward %.3f -> %.3f ms (%.2fx)  backward %.3f -> %.3f ms "
               "(%.2fx)\n",
               cpu_forward32 * 1e3, cpu_forward16 * 1e3, cpu_forward32 / cpu_forward16,
               cpu_backward32 * 1e3, cpu_backward16 * 1e3, cpu_backward32 / cpu_backward16);
}


#ifdef TESSERA_BENCH_CUDA
namespace cuda = tessera::cuda;

void OrDie(const absl::Status& status) {
  if (status.ok()) return;
  std::fprintf(stderr, "bench_attention: %s\n", status.ToString().c_str());
  std::exit(1);
}

// Best of `reps` timings (CUDA events on `stream`) of fn(), seconds, after a warm-up.
template <typename Fn>
double GpuBestSeconds(cudaStream_t stream, int reps, Fn&& fn) {
  OrDie(fn());
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    cudaEventRecord(start, stream);
    OrDie(fn());
    cudaEventRecord(stop, stream);
    OrDie(cuda::CudaStatus(cudaEventSynchronize(stop), "cudaEventSynchronize", __FILE__, __LINE__));
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, start, stop);
    best = std::min(best, ms * 1e-3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return best;
}

cuda::DeviceBuffer DeviceRandom(int64_t n, uint32_t seed) {
  absl::StatusOr<cuda::DeviceBuffer> buffer = cuda::DeviceBuffer::Create(sizeof(float) * n);
  OrDie(buffer.status());
  std::vector<float> host(n);
  uint32_t state = seed * 2654435761u + 1;  // a cheap generator: 10^8 values in well under 1 s
  for (float& x : host) {
    state = state * 1664525u + 1013904223u;
    x = static_cast<float>(state >> 8) * (2.0f / 16777216.0f) - 1.0f;
  }
  OrDie(buffer->CopyFromHost(host.data(), sizeof(float) * n));
  return *std::move(buffer);
}

// The rate a bf16 run's GEMMs get: cuda::Gemm with bf16 inputs (their
// rounding into scratch included) on square n = 8192 matrices, TFLOP/s.
double CudaGemmBf16Tflops(cudaStream_t stream) {
  constexpr int64_t n = 8192;
  absl::StatusOr<std::unique_ptr<cuda::GemmContext>> context = cuda::GemmContext::Create();
  OrDie(context.status());
  cuda::DeviceBuffer a = DeviceRandom(n * n, 1), b = DeviceRandom(n * n, 2), c = DeviceRandom(n * n, 3);
  const double seconds = GpuBestSeconds(stream, 5, [&] {
    return cuda::Gemm(**context, false, false, n, n, n, 1.0f, a.as<float>(), n, b.as<float>(), n,
                      0.0f, c.as<float>(), n, stream, cuda::GemmInputs::kBf16);
  });
  return 2.0 * n * n * n / seconds * 1e-12;
}

// Forward + backward of one non-causal shape (fused QKV, 16384 tokens of
// width 1024) with the bf16 tensor-core kernels and the fp32 kernels.
void BenchCudaShape(cudaStream_t stream, int64_t seq, int64_t head_dim, double gemm_tflops) {
  constexpr int64_t kTokens = 16384, kWidth = 1024;
  const int64_t batch = kTokens / seq, heads = kWidth / head_dim;
  const AttentionShape shape{batch, seq, heads, head_dim, 3 * kWidth, false};
  cuda::DeviceBuffer qkv = DeviceRandom(kTokens * 3 * kWidth, 5);
  cuda::DeviceBuffer dqkv = DeviceRandom(kTokens * 3 * kWidth, 6);
  cuda::DeviceBuffer dout = DeviceRandom(kTokens * kWidth, 7);
  cuda::DeviceBuffer out = DeviceRandom(kTokens * kWidth, 8);
  cuda::DeviceBuffer lse = DeviceRandom(batch * heads * seq, 9);
  cuda::DeviceBuffer scratch = DeviceRandom(batch * heads * seq, 10);
  const float* q = qkv.as<float>();
  float* dq = dqkv.as<float>();
  struct Times {
    double forward, backward;
  };
  auto time = [&](bool bf16) {
    Times t;
    const int reps = bf16 ? 10 : 3;
    t.forward = GpuBestSeconds(stream, reps, [&] {
      return bf16 ? cuda::AttentionForwardBf16(shape, q, q + kWidth, q + 2 * kWidth,
                                               out.as<float>(), lse.as<float>(), stream)
                  : cuda::AttentionForward(shape, q, q + kWidth, q + 2 * kWidth, out.as<float>(),
                                           lse.as<float>(), stream);
    });
    t.backward = GpuBestSeconds(stream, reps, [&] {
      return bf16 ? cuda::AttentionBackwardBf16(shape, q, q + kWidth, q + 2 * kWidth,
                                                out.as<float>(), dout.as<float>(), lse.as<float>(),
                                                dq, dq + kWidth, dq + 2 * kWidth,
                                                scratch.as<float>(), stream)
                  : cuda::AttentionBackward(shape, q, q + kWidth, q + 2 * kWidth, out.as<float>(),
                                            dout.as<float>(), lse.as<float>(), dq, dq + kWidth,
                                            dq + 2 * kWidth, scratch.as<float>(), stream);
    });
    return t;
  };
  const Times bf16 = time(true), fp32 = time(false);
  const double core = static_cast<double>(batch * heads) * seq * seq * head_dim;
  auto tflops = [&](const Times& t) { return 14.0 * core / (t.forward + t.backward) * 1e-12; };
  absl::PrintF(
      "cuda attention S=%d Dh=%d B=%d H=%d: bf16 forward %.3f ms backward %.3f ms, "
      "fwd+bwd %.1f TFLOP/s = %.1f%% of the bf16 GEMM; fp32 kernel fwd+bwd %.2f TFLOP/s "
      "(%.1fx slower)\n",
      seq, head_dim, batch, heads, bf16.forward * 1e3, bf16.backward * 1e3, tflops(bf16),
      100.0 * tflops(bf16) / gemm_tflops, tflops(fp32), tflops(bf16) / tflops(fp32));
}

int RunCuda() {
  if (cuda::DeviceCount() == 0) {
    std::fprintf(stderr, "bench_attention --cuda: no CUDA device\n");
    return 1;
  }
  OrDie(cuda::SetDevice(0));
  cudaStream_t stream = nullptr;
  OrDie(cuda::CudaStatus(cudaStreamCreate(&stream), "cudaStreamCreate", __FILE__, __LINE__));
  const double gemm_tflops = CudaGemmBf16Tflops(stream);
  absl::PrintF("cuda bf16 GEMM n=8192 (cuda::Gemm, bf16 inputs): %.1f TFLOP/s\n", gemm_tflops);
  for (int64_t head_dim : {64, 128}) {
    for (int64_t seq : {256, 1024, 4096}) BenchCudaShape(stream, seq, head_dim, gemm_tflops);
  }
  cudaStreamDestroy(stream);
  return 0;
}
#endif  // TESSERA_BENCH_CUDA

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--cuda") == 0) {
#ifdef TESSERA_BENCH_CUDA
    return RunCuda();
#else
    std::fprintf(stderr, "bench_attention --cuda: this build has no CUDA\n");
    return 2;
#endif
  }
  if (argc > 1) tessera::cpu::SetNumThreads(std::atoi(argv[1]));
  const double gemm_gflops = tessera::bench::GemmGflops(10);
  absl::PrintF("threads %d, oneDNN sgemm n=1024: %.1f GFLOP/s\n", tessera::cpu::NumThreads(),
               gemm_gflops);
  BenchShape(8, 256, 6, 64, gemm_gflops);  // DiT-MoE-S/2 at 256x256 latents
  BenchShape(2, 1024, 6, 64, gemm_gflops);  // a long sequence: four key blocks
  BenchShape(8, 196, 6, 64, gemm_gflops);
  BenchShape(8, 64, 6, 32, gemm_gflops);
  BenchShape(8, 196, 6, 32, gemm_gflops);
  return 0;
}
