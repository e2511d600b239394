// Rows (batch, position) run in parallel and channels are the vector lanes;
// the weights are transposed once to [K, C] so the inner loops are unit
// stride. Parameter gradients go through ForEachColumnBand: each thread owns
// a band of channels and adds every row in order.
#include "runtime/kernels/cpu/causal_conv1d.h"

#include <algorithm>
#include <vector>

#include "runtime/kernels/cpu/parallel_loops.h"

namespace tessera::cpu {
namespace {

// [C, K] -> [K, C]
std::vector<float> TapsByChannel(const float* weight, int64_t channels, int64_t width) {
  std::vector<float> taps(width * channels);
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t k = 0; k < width; ++k) taps[k * channels + c] = weight[c * width + k];
  return taps;
}

// Row tau (may be negative: a halo row) of sample b, or null for zeros.
inline const float* InputRow(const CausalConv1dShape& s, const float* x, const float* halo,
                             int64_t b, int64_t tau) {
  if (tau >= 0) return x + (b * s.seq + tau) * s.channels;
  if (!halo) return nullptr;
  return halo + (b * (s.width - 1) + (s.width - 1 + tau)) * s.channels;
}

}  // namespace

void CausalConv1dForward(const CausalConv1dShape& s, const float* x, const float* weight,
                         const float* bias, const float* halo, float* y, float* halo_out) {
  const int64_t ch = s.channels, k_width = s.width;
  const std::vector<float> taps = TapsByChannel(weight, ch, k_width);
  const int64_t rows = s.batch * s.seq;
#pragma omp parallel for if (ShouldParallelize(rows * ch * k_width))
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / s.seq, t = r % s.seq;
    float* out = y + r * ch;
    if (bias) std::copy(bias, bias + ch, out);
    else std::fill(out, out + ch, 0.0f);
    for (int64_t k = 0; k < k_width; ++k) {
      const float* in = InputRow(s, x, halo, b, t - (k_width - 1) + k);
      if (!in) continue;
      const float* w = taps.data() + k * ch;
#pragma omp simd
      for (int64_t c = 0; c < ch; ++c) out[c] += w[c] * in[c];
    }
  }
  if (!halo_out) return;
  // Ascending j reads halo row L + j >= j before row j is written, so
  // halo_out may alias halo.
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t j = 0; j < k_width - 1; ++j) {
      const float* in = InputRow(s, x, halo, b, s.seq - (k_width - 1) + j);
      float* out = halo_out + (b * (k_width - 1) + j) * ch;
      if (in) std::copy(in, in + ch, out);
      else std::fill(out, out + ch, 0.0f);
    }
}

void CausalConv1dBackward(const CausalConv1dShape& s, const float* x, const float* weight,
                          const float* halo, const float* dy, float* dx, float* dweight,
                          float* dbias, float* dhalo) {
  const int64_t ch = s.channels, k_width = s.width;
  const std::vector<float> taps = TapsByChannel(weight, ch, k_width);
  // d(input row tau) = sum_k w[k] dy[tau + K-1 - k], over the rows of y that exist.
  auto input_grad = [&](int64_t b, int64_t tau, float* out) {
    std::fill(out, out + ch, 0.0f);
    for (int64_t k = 0; k < k_width; ++k) {
      const int64_t t = tau + (k_width - 1) - k;
      if (t < 0 || t >= s.seq) continue;
      const float* g = dy + (b * s.seq + t) * ch;
      const float* w = taps.data() + k * ch;
#pragma omp simd
      for (int64_t c = 0; c < ch; ++c) out[c] += w[c] * g[c];
    }
  };
  const int64_t rows = s.batch * s.seq;
#pragma omp parallel for if (ShouldParallelize(rows * ch * k_width))
  for (int64_t r = 0; r < rows; ++r) input_grad(r / s.seq, r % s.seq, dx + r * ch);
  if (dhalo)
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t j = 0; j < k_width - 1; ++j)
        input_grad(b, j - (k_width - 1), dhalo + (b * (k_width - 1) + j) * ch);

  ForEachColumnBand(ch, rows * ch * k_width, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = r / s.seq, t = r % s.seq;
      const float* g = dy + r * ch;
      if (dbias)
        for (int64_t c = c0; c < c1; ++c) dbias[c] += g[c];
      for (int64_t k = 0; k < k_width; ++k) {
        const float* in = InputRow(s, x, halo, b, t - (k_width - 1) + k);
        if (!in) continue;
        for (int64_t c = c0; c < c1; ++c) dweight[c * k_width + k] += g[c] * in[c];
      }
    }
  });
}

void CausalConv1dStep(const CausalConv1dShape& s, const float* x, const float* weight,
                      const float* bias, float* state, float* y) {
  const int64_t ch = s.channels, k_width = s.width, kept = k_width - 1;
  for (int64_t b = 0; b < s.batch; ++b) {
    const float* xr = x + b * ch;
    float* st = state + b * kept * ch;
    float* out = y + b * ch;
    for (int64_t c = 0; c < ch; ++c) {
      const float* w = weight + c * k_width;
      float acc = bias ? bias[c] : 0.0f;
      for (int64_t k = 0; k < kept; ++k) acc += w[k] * st[k * ch + c];
      out[c] = acc + w[kept] * xr[c];
    }
    for (int64_t k = 0; k + 1 < kept; ++k)
      std::copy(st + (k + 1) * ch, st + (k + 2) * ch, st + k * ch);
    if (kept > 0) std::copy(xr, xr + ch, st + (kept - 1) * ch);
  }
}

}  // namespace tessera::cpu
