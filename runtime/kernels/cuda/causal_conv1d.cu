// Causal conv1d: one thread per output element (coalesced over channels);
// the weight and bias gradients sum over (batch, time) in one thread per
// (channel, tap), in a fixed order, without atomics.
#include "runtime/kernels/cuda/causal_conv1d.h"
#include "runtime/kernels/cuda/check.h"
#include "runtime/kernels/cuda/common.cuh"

namespace tessera::cuda {
namespace {

using internal::LaunchFlat;

// in[b, tau, c]: x for tau >= 0, the halo (or zero) for -(K-1) <= tau < 0.
__device__ __forceinline__ float Input(const CausalConv1dShape& s, const float* x,
                                       const float* halo, int64_t b, int64_t tau, int64_t c) {
  if (tau >= 0) return x[(b * s.seq + tau) * s.channels + c];
  if (halo == nullptr) return 0.0f;
  return halo[(b * (s.width - 1) + (s.width - 1 + tau)) * s.channels + c];
}

__global__ void ForwardKernel(CausalConv1dShape s, const float* __restrict__ x,
                              const float* __restrict__ weight, const float* __restrict__ bias,
                              const float* halo, float* __restrict__ y) {
  TESSERA_CUDA_FOR(i, s.batch * s.seq * s.channels) {
    const int64_t c = i % s.channels, t = (i / s.channels) % s.seq, b = i / (s.channels * s.seq);
    float acc = bias != nullptr ? bias[c] : 0.0f;
    for (int64_t k = 0; k < s.width; ++k) {
      acc += weight[c * s.width + k] * Input(s, x, halo, b, t - (s.width - 1) + k, c);
    }
    y[i] = acc;
  }
}

// halo_out[b, j, c] = in[b, L - (K-1) + j, c]; j ascending, so halo_out may alias halo.
__global__ void HaloOutKernel(CausalConv1dShape s, const float* x, const float* halo,
                              float* halo_out) {
  TESSERA_CUDA_FOR(i, s.batch * s.channels) {
    const int64_t b = i / s.channels, c = i % s.channels;
    for (int64_t j = 0; j < s.width - 1; ++j) {
      halo_out[(b * (s.width - 1) + j) * s.channels + c] =
          Input(s, x, halo, b, s.seq - (s.width - 1) + j, c);
    }
  }
}

// d in[b, tau, c] = sum_k w[c, k] dy[b, tau + K-1 - k, c] over outputs inside [0, L).
__device__ float InputGrad(const CausalConv1dShape& s, const float* weight, const float* dy,
                           int64_t b, int64_t tau, int64_t c) {
  float acc = 0.0f;
  for (int64_t k = 0; k < s.width; ++k) {
    const int64_t t = tau + s.width - 1 - k;
    if (t >= 0 && t < s.seq) acc += weight[c * s.width + k] * dy[(b * s.seq + t) * s.channels + c];
  }
  return acc;
}

__global__ void InputGradKernel(CausalConv1dShape s, const float* __restrict__ weight,
                                const float* __restrict__ dy, float* __restrict__ dx) {
  TESSERA_CUDA_FOR(i, s.batch * s.seq * s.channels) {
    const int64_t c = i % s.channels, t = (i / s.channels) % s.seq, b = i / (s.channels * s.seq);
    dx[i] = InputGrad(s, weight, dy, b, t, c);
  }
}

__global__ void HaloGradKernel(CausalConv1dShape s, const float* __restrict__ weight,
                               const float* __restrict__ dy, float* __restrict__ dhalo) {
  TESSERA_CUDA_FOR(i, s.batch * (s.width - 1) * s.channels) {
    const int64_t c = i % s.channels, j = (i / s.channels) % (s.width - 1);
    const int64_t b = i / (s.channels * (s.width - 1));
    dhalo[i] = InputGrad(s, weight, dy, b, j - (s.width - 1), c);
  }
}

// One thread per (tap k, channel c); k == K is the bias.
__global__ void ParamGradKernel(CausalConv1dShape s, const float* __restrict__ x,
                                const float* halo, const float* __restrict__ dy,
                                float* __restrict__ dweight, float* __restrict__ dbias) {
  TESSERA_CUDA_FOR(i, (s.width + 1) * s.channels) {
    const int64_t k = i / s.channels, c = i % s.channels;
    if (k == s.width && dbias == nullptr) continue;
    if (k < s.width && dweight == nullptr) continue;
    float acc = 0.0f;
    for (int64_t b = 0; b < s.batch; ++b) {
      for (int64_t t = 0; t < s.seq; ++t) {
        const float g = dy[(b * s.seq + t) * s.channels + c];
        acc += k == s.width ? g : g * Input(s, x, halo, b, t - (s.width - 1) + k, c);
      }
    }
    if (k == s.width) {
      dbias[c] += acc;
    } else {
      dweight[c * s.width + k] += acc;
    }
  }
}

__global__ void StepKernel(CausalConv1dShape s, const float* __restrict__ x,
                           const float* __restrict__ weight, const float* __restrict__ bias,
                           float* __restrict__ state, float* __restrict__ y) {
  TESSERA_CUDA_FOR(i, s.batch * s.channels) {
    const int64_t b = i / s.channels, c = i % s.channels, kept = s.width - 1;
    float* st = state + b * kept * s.channels + c;
    const float* w = weight + c * s.width;
    float acc = bias != nullptr ? bias[c] : 0.0f;
    for (int64_t k = 0; k < kept; ++k) acc += w[k] * st[k * s.channels];
    y[i] = acc + w[kept] * x[i];
    for (int64_t k = 0; k + 1 < kept; ++k) st[k * s.channels] = st[(k + 1) * s.channels];
    if (kept > 0) st[(kept - 1) * s.channels] = x[i];
  }
}

absl::Status CheckShape(const char* name, const CausalConv1dShape& s) {
  if (s.batch < 0 || s.seq < 0 || s.channels < 0 || s.width < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("cuda::%s: bad shape batch=%d seq=%d channels=%d width=%d", name, s.batch,
                        s.seq, s.channels, s.width));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CausalConv1dForward(const CausalConv1dShape& s, const float* x, const float* weight,
                                 const float* bias, const float* halo, float* y, float* halo_out,
                                 cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(CheckShape("CausalConv1dForward", s));
  TESSERA_RETURN_IF_ERROR(LaunchFlat("CausalConv1dForward", s.batch * s.seq * s.channels, stream,
                                     ForwardKernel, s, x, weight, bias, halo, y));
  if (halo_out == nullptr || s.width == 1) return absl::OkStatus();
  return LaunchFlat("CausalConv1dForward(halo)", s.batch * s.channels, stream, HaloOutKernel, s, x,
                    halo, halo_out);
}

absl::Status CausalConv1dBackward(const CausalConv1dShape& s, const float* x, const float* weight,
                                  const float* halo, const float* dy, float* dx, float* dweight,
                                  float* dbias, float* dhalo, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(CheckShape("CausalConv1dBackward", s));
  TESSERA_RETURN_IF_ERROR(LaunchFlat("CausalConv1dBackward(params)", (s.width + 1) * s.channels,
                                     stream, ParamGradKernel, s, x, halo, dy, dweight, dbias));
  TESSERA_RETURN_IF_ERROR(LaunchFlat("CausalConv1dBackward", s.batch * s.seq * s.channels, stream,
                                     InputGradKernel, s, weight, dy, dx));
  if (dhalo == nullptr || s.width == 1) return absl::OkStatus();
  return LaunchFlat("CausalConv1dBackward(halo)", s.batch * (s.width - 1) * s.channels, stream,
                    HaloGradKernel, s, weight, dy, dhalo);
}

absl::Status CausalConv1dStep(const CausalConv1dShape& s, const float* x, const float* weight,
                              const float* bias, float* state, float* y, cudaStream_t stream) {
  TESSERA_RETURN_IF_ERROR(CheckShape("CausalConv1dStep", s));
  return LaunchFlat("CausalConv1dStep", s.batch * s.channels, stream, StepKernel, s, x, weight,
                    bias, state, y);
}

}  // namespace tessera::cuda
