// Which attention kernel the CPU backend runs: in a bf16 run the bf16 kernel
// (runtime/kernels/cpu/attention_bf16.h) for the shapes the GPU's bf16
// kernels take, the fp32 kernel for the others and in fp32 runs, as the CUDA
// backend chooses (so both backends round a bf16 run's attention alike).
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "runtime/backend/backend.h"
#include "runtime/kernels/cpu/attention.h"
#include "runtime/kernels/cpu/attention_bf16.h"

namespace tessera {
namespace {

struct Outputs {
  std::vector<float> out, lse, grads;
  bool operator==(const Outputs&) const = default;
};

Outputs RunAttention(const AttentionShape& s, const std::vector<float>& qkv,
                     const std::vector<float>& dout, bool backend, bool bf16_kernel) {
  const int64_t width = s.heads * s.head_dim;
  const float* q = qkv.data();
  Outputs o;
  o.out.assign(s.batch * s.seq * width, 0.0f);
  o.lse.assign(s.batch * s.heads * s.seq, 0.0f);
  o.grads.assign(qkv.size(), 0.0f);
  float* g = o.grads.data();
  if (backend) {
    HostBackend().AttentionForward(s, q, q + width, q + 2 * width, o.out.data(), o.lse.data());
    HostBackend().AttentionBackward(s, q, q + width, q + 2 * width, o.out.data(), dout.data(),
                                    o.lse.data(), g, g + width, g + 2 * width);
  } else if (bf16_kernel) {
    cpu::AttentionForwardBf16(s, q, q + width, q + 2 * width, o.out.data(), o.lse.data());
    cpu::AttentionBackwardBf16(s, q, q + width, q + 2 * width, o.out.data(), dout.data(),
                               o.lse.data(), g, g + width, g + 2 * width);
  } else {
    cpu::AttentionForward(s, q, q + width, q + 2 * width, o.out.data(), o.lse.data());
    cpu::AttentionBackward(s, q, q + width, q + 2 * width, o.out.data(), dout.data(),
                           o.lse.data(), g, g + width, g + 2 * width);
  }
  return o;
}

TEST(BackendAttention, Bf16RunsUseTheBf16KernelForTheShapesTheGpuTakes) {
  for (const int64_t head_dim : {int64_t{64}, int64_t{8}}) {
    SCOPED_TRACE(head_dim);
    const int64_t heads = 2, width = heads * head_dim;
    const AttentionShape s{2, 40, heads, head_dim, 3 * width, true};
    std::mt19937 gen(5);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> qkv(s.batch * s.seq * 3 * width), dout(s.batch * s.seq * width);
    for (float& x : qkv) x = dist(gen);
    for (float& x : dout) x = dist(gen);
    const Outputs fp32 = RunAttention(s, qkv, dout, false, false);
    const Outputs bf16 = RunAttention(s, qkv, dout, false, true);
    ASSERT_FALSE(fp32 == bf16);  // the kernels differ, so the comparisons below can tell
    EXPECT_TRUE(RunAttention(s, qkv, dout, true, false) == fp32) << "an fp32 run takes the fp32 kernel";
    ScopedGemmPrecision precision(HostBackend(), MathPrecision::kBf16);
    const bool takes = cpu::Bf16AttentionTakes(s);
    EXPECT_EQ(takes, head_dim == 64);
    EXPECT_TRUE(RunAttention(s, qkv, dout, true, false) == (takes ? bf16 : fp32));
  }
}

}  // namespace
}  // namespace tessera
