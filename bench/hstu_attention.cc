// HSTU pointwise attention (runtime/kernels/cpu/hstu.h) against softmax
// attention of the same shape (runtime/kernels/cpu/attention.h), and jagged
// against padded batches at a MovieLens-like length distribution.
//
// Part 1, lengths 200..8192, every user of the full length, causal, fused
// [tokens, 3, H, Dh] projections; fewer users at long lengths. Reports
// forward + backward tokens/s of softmax attention, of HSTU without and with
// the relative bias (position + time buckets), the HSTU/softmax time ratio,
// and the activations each keeps between forward and backward.
// Part 2, the reference's ML-1M shape (128 users, 1 head, d = 50, max 200):
// lengths min(200, 20 + Exponential(mean 260)), mean ~150. The jagged batch
// against the same histories padded to 200 and run as users of length 200
// (what a padded implementation computes, with our causal block skipping).
// tokens/s counts real tokens for both. Memory: Q, K, V, out and their
// gradients.
//
// Usage: bench_hstu_attention [max_len]   (default 8192)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "bench/timing.h"
#include "absl/strings/str_format.h"
#include "runtime/kernels/cpu/attention.h"
#include "runtime/kernels/cpu/gemm.h"
#include "runtime/kernels/cpu/hstu.h"

namespace {

namespace cpu = tessera::cpu;

using tessera::bench::BestSeconds;

std::vector<float> Random(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> x(n);
  for (float& value : x) value = dist(gen);
  return x;
}

double MiB(double bytes) { return bytes / (1024.0 * 1024.0); }

// A jagged HSTU problem with fused [total, 3, H, d] q | k | v.
struct HstuProblem {
  std::vector<int64_t> offsets, timestamps, query_timestamps;
  int64_t users = 0, total = 0, max_len = 0, heads = 0, dim = 0;
  std::vector<float> qkv, dqkv, out, dout, pos_bias, time_bias, dpos, dtime;
  static constexpr int32_t kBuckets = 128;

  HstuProblem(const std::vector<int64_t>& lengths, int64_t n, int64_t h, int64_t d)
      : users(lengths.size()), max_len(n), heads(h), dim(d) {
    offsets = {0};
    for (int64_t len : lengths) offsets.push_back(offsets.back() + len);
    total = offsets.back();
    qkv = Random(total * 3 * h * d, 3, 0.3f);
    dqkv.resize(qkv.size());
    out.resize(total * h * d);
    dout = Random(total * h * d, 4);
    pos_bias = Random(2 * n - 1, 5, 0.02f);
    time_bias = Random(kBuckets + 1, 6, 0.02f);
    dpos.assign(pos_bias.size(), 0.0f);
    dtime.assign(time_bias.size(), 0.0f);
    std::mt19937 gen(7);
    std::exponential_distribution<double> gap(1.0 / 3600.0);
    int64_t now = 1'000'000'000;
    for (int64_t t = 0; t < total; ++t) timestamps.push_back(now += int64_t(gap(gen)));
    query_timestamps.resize(total);
    cpu::HstuQueryTimestamps(offsets.data(), users, timestamps.data(), nullptr,
                             query_timestamps.data());
  }
  void Step(bool bias) {
    const int64_t stride = 3 * heads * dim;
    const float* q = qkv.data();
    const float* pos = bias ? pos_bias.data() : nullptr;
    const float* time = bias ? time_bias.data() : nullptr;
    cpu::HstuAttentionForward(offsets.data(), users, max_len, heads, dim, dim, q, q + heads * dim,
                              stride, q + 2 * heads * dim, stride, pos, time, kBuckets,
                              timestamps.data(), query_timestamps.data(), out.data());
    float* dq = dqkv.data();
    cpu::HstuAttentionBackward(offsets.data(), users, max_len, heads, dim, dim, q,
                               q + heads * dim, stride, q + 2 * heads * dim, stride, pos, time,
                               kBuckets, timestamps.data(), query_timestamps.data(), dout.data(),
                               dq, dq + heads * dim, dq + 2 * heads * dim, dpos.data(),
                               dtime.data());
  }
};

void CompareWithSoftmax(int64_t max_len, double gemm_gflops) {
  constexpr int64_t kHeads = 2, kDim = 64;
  absl::PrintF("\n## HSTU vs softmax attention (causal, H=%d, d=%d, fused QKV, fwd+bwd)\n", kHeads,
               kDim);
  absl::PrintF("%6s %5s | %12s %12s %12s | %9s %9s | %8s %8s | %9s\n", "len", "users",
               "softmax tok/s", "hstu tok/s", "hstu+rab", "hstu/sm", "rab/sm", "sm GF/s",
               "hs GF/s", "saved MiB");
  for (int64_t len : {200, 512, 1024, 2048, 4096, 8192}) {
    if (len > max_len) break;
    const int64_t users = std::max<int64_t>(2, 12800 / len);
    const int64_t tokens = users * len;
    const int reps = len >= 4096 ? 1 : 3;
    // Softmax: [B, S, 3, H, Dh] fused, out [B, S, H*Dh], lse [B, H, S].
    const std::vector<float> qkv = Random(tokens * 3 * kHeads * kDim, 8, 0.3f);
    std::vector<float> dqkv(qkv.size()), out(tokens * kHeads * kDim), lse(users * kHeads * len);
    const std::vector<float> dout = Random(out.size(), 9);
    const tessera::AttentionShape shape{users, len, kHeads, kDim, 3 * kHeads * kDim, true};
    const float* q = qkv.data();
    float* dq = dqkv.data();
    const double softmax_s = BestSeconds(reps, [&] {
      cpu::AttentionForward(shape, q, q + kHeads * kDim, q + 2 * kHeads * kDim, out.data(),
                            lse.data());
      cpu::AttentionBackward(shape, q, q + kHeads * kDim, q + 2 * kHeads * kDim, out.data(),
                             dout.data(), lse.data(), dq, dq + kHeads * kDim,
                             dq + 2 * kHeads * kDim);
    });
    HstuProblem hstu(std::vector<int64_t>(users, len), len, kHeads, kDim);
    const double plain_s = BestSeconds(reps, [&] { hstu.Step(false); });
    const double rab_s = BestSeconds(reps, [&] { hstu.Step(true); });
    // Causal: half the score matrix; fwd 2 GEMMs, bwd 5 GEMMs of 2*L*L/2*d each.
    const double flops = 7.0 * users * kHeads * double(len) * len * kDim;
    // Between forward and backward: softmax keeps out + lse, HSTU keeps out.
    const double softmax_saved = 4.0 * (out.size() + lse.size());
    absl::PrintF("%6d %5d | %12.0f %12.0f %12.0f | %9.2f %9.2f | %8.1f %8.1f | %4.1f/%4.1f\n", len,
                 users, tokens / softmax_s, tokens / plain_s, tokens / rab_s, plain_s / softmax_s,
                 rab_s / softmax_s, flops / softmax_s * 1e-9, flops / plain_s * 1e-9,
                 MiB(softmax_saved), MiB(4.0 * out.size()));
  }
  absl::PrintF("(hstu/sm, rab/sm: time ratios, < 1 is faster than softmax; sgemm peak in this run "
               "%.0f GFLOP/s; saved = softmax/hstu activations kept for backward)\n",
               gemm_gflops);
}

void JaggedVersusPadded(double gemm_gflops) {
  constexpr int64_t kUsers = 128, kMaxLen = 200, kHeads = 1, kDim = 50;
  std::mt19937 gen(11);
  std::exponential_distribution<double> tail(1.0 / 260.0);
  std::vector<int64_t> lengths(kUsers);
  int64_t real = 0, longest = 0;
  for (int64_t& len : lengths) {
    len = std::min<int64_t>(kMaxLen, 20 + int64_t(tail(gen)));
    real += len;
    longest = std::max(longest, len);
  }
  HstuProblem jagged(lengths, kMaxLen, kHeads, kDim);
  HstuProblem padded(std::vector<int64_t>(kUsers, kMaxLen), kMaxLen, kHeads, kDim);
  const double jagged_s = BestSeconds(5, [&] { jagged.Step(true); });
  const double padded_s = BestSeconds(5, [&] { padded.Step(true); });
  // q, k, v, out and their gradients: 8 floats per head-dim per token.
  auto bytes = [&](int64_t tokens) { return 8.0 * 4.0 * tokens * kHeads * kDim; };
  absl::PrintF("\n## Jagged vs padded (ML-1M shape: %d users, H=%d, d=%d, max %d, rab on, "
               "fwd+bwd)\n",
               kUsers, kHeads, kDim, kMaxLen);
  absl::PrintF("lengths: mean %.1f, max %d, %d real tokens of %d padded (%.0f%% padding)\n",
               double(real) / kUsers, longest, real, kUsers * kMaxLen,
               100.0 * (1.0 - double(real) / (kUsers * kMaxLen)));
  absl::PrintF("%8s | %12s %10s | %14s\n", "layout", "real tok/s", "ms/step", "q,k,v,out+grads");
  absl::PrintF("%8s | %12.0f %10.2f | %10.2f MiB\n", "jagged", real / jagged_s, 1e3 * jagged_s,
               MiB(bytes(real)));
  absl::PrintF("%8s | %12.0f %10.2f | %10.2f MiB\n", "padded", real / padded_s, 1e3 * padded_s,
               MiB(bytes(kUsers * kMaxLen)));
  absl::PrintF("jagged/padded speed-up %.2fx, memory %.2fx less (sgemm peak %.0f GFLOP/s)\n",
               padded_s / jagged_s, bytes(kUsers * kMaxLen) / bytes(real), gemm_gflops);
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t max_len = argc > 1 ? std::atoll(argv[1]) : 8192;
  const double gemm_gflops = tessera::bench::GemmGflops(5);
  absl::PrintF("threads: %d, sgemm (n = 1024): %.0f GFLOP/s\n", cpu::NumThreads(), gemm_gflops);
  JaggedVersusPadded(gemm_gflops);
  CompareWithSoftmax(max_len, gemm_gflops);
  return 0;
}
