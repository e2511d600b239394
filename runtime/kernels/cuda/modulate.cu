// adaLN modulation. The per-sample parameter gradients sum over the sequence
// in one thread per (sample, column), in sequence order: coalesced over
// columns, deterministic, no atomics.
#include "runtime/kernels/cuda/check.h"
#include "runtime/kernels/cuda/common.cuh"
#include "runtime/kernels/cuda/modulate.h"

namespace tessera::cuda {
namespace {

using internal::LaunchFlat;

struct Geometry {
  int64_t batch, seq, dim, cond_stride;
  // The condition row offset of element i of [B, S, D].
  __device__ int64_t Cond(int64_t i) const { return (i / (seq * dim)) * cond_stride + i % dim; }
};

__global__ void ModulateForwardKernel(const float* __restrict__ x, const float* __restrict__ shift,
                                      const float* __restrict__ scale, float* __restrict__ y,
                                      Geometry g) {
  TESSERA_CUDA_FOR(i, g.batch * g.seq * g.dim) {
    const int64_t c = g.Cond(i);
    y[i] = x[i] * (1.0f + scale[c]) + shift[c];
  }
}

__global__ void ModulateDxKernel(const float* __restrict__ dy, const float* __restrict__ scale,
                                 float* __restrict__ dx, Geometry g) {
  TESSERA_CUDA_FOR(i, g.batch * g.seq * g.dim) { dx[i] = dy[i] * (1.0f + scale[g.Cond(i)]); }
}

// dshift[b, d] += sum_s dy; dscale[b, d] += sum_s dy * x   (one thread per (b, d))
__global__ void ModulateParamsKernel(const float* __restrict__ dy, const float* __restrict__ x,
                                     float* __restrict__ dshift, float* __restrict__ dscale,
                                     Geometry g) {
  TESSERA_CUDA_FOR(i, g.batch * g.dim) {
    const int64_t b = i / g.dim, d = i % g.dim;
    const int64_t base = b * g.seq * g.dim + d;
    float sum_dy = 0.0f, sum_dy_x = 0.0f;
    for (int64_t s = 0; s < g.seq; ++s) {
      const float v = dy[base + s * g.dim];
      sum_dy += v;
      sum_dy_x += v * x[base + s * g.dim];
    }
    dshift[b * g.cond_stride + d] += sum_dy;
    dscale[b * g.cond_stride + d] += sum_dy_x;
  }
}

__global__ void GatedResidualForwardKernel(float* __restrict__ residual,
                                           const float* __restrict__ y,
                                           const float* __restrict__ gate, Geometry g) {
  TESSERA_CUDA_FOR(i, g.batch * g.seq * g.dim) { residual[i] += gate[g.Cond(i)] * y[i]; }
}

__global__ void GatedResidualDyKernel(const float* __restrict__ dresidual,
                                      const float* __restrict__ gate, float* __restrict__ dy,
                                      Geometry g) {
  TESSERA_CUDA_FOR(i, g.batch * g.seq * g.dim) { dy[i] = dresidual[i] * gate[g.Cond(i)]; }
}

__global__ void GatedResidualGateKernel(const float* __restrict__ dresidual,
                                        const float* __restrict__ y, float* __restrict__ dgate,
                                        Geometry g) {
  TESSERA_CUDA_FOR(i, g.batch * g.dim) {
    const int64_t b = i / g.dim, d = i % g.dim;
    const int64_t base = b * g.seq * g.dim + d;
    float sum = 0.0f;
    for (int64_t s = 0; s < g.seq; ++s) sum += dresidual[base + s * g.dim] * y[base + s * g.dim];
    dgate[b * g.cond_stride + d] += sum;
  }
}

absl::Status CheckGeometry(const char* name, const Geometry& g) {
  TESSERA_RETURN_IF_ERROR(internal::CheckNonNegative(name, g.batch, g.seq));
  return internal::CheckNonNegative(name, g.dim, g.cond_stride);
}

}  // namespace

absl::Status ModulateForward(const float* x, const float* shift, const float* scale, float* y,
                             int64_t batch, int64_t seq, int64_t dim, int64_t cond_stride,
                             cudaStream_t stream) {
  const Geometry g{batch, seq, dim, cond_stride};
  TESSERA_RETURN_IF_ERROR(CheckGeometry("ModulateForward", g));
  return LaunchFlat("ModulateForward", batch * seq * dim, stream, ModulateForwardKernel, x, shift,
                    scale, y, g);
}

absl::Status ModulateBackward(const float* dy, const float* x, const float* scale, float* dx,
                              float* dshift, float* dscale, int64_t batch, int64_t seq,
                              int64_t dim, int64_t cond_stride, cudaStream_t stream) {
  const Geometry g{batch, seq, dim, cond_stride};
  TESSERA_RETURN_IF_ERROR(CheckGeometry("ModulateBackward", g));
  // Parameters first: dx may alias dy.
  TESSERA_RETURN_IF_ERROR(LaunchFlat("ModulateBackward(params)", batch * dim, stream,
                                     ModulateParamsKernel, dy, x, dshift, dscale, g));
  return LaunchFlat("ModulateBackward", batch * seq * dim, stream, ModulateDxKernel, dy, scale, dx,
                    g);
}

absl::Status GatedResidualForward(float* residual, const float* y, const float* gate,
                                  int64_t batch, int64_t seq, int64_t dim, int64_t cond_stride,
                                  cudaStream_t stream) {
  const Geometry g{batch, seq, dim, cond_stride};
  TESSERA_RETURN_IF_ERROR(CheckGeometry("GatedResidualForward", g));
  return LaunchFlat("GatedResidualForward", batch * seq * dim, stream, GatedResidualForwardKernel,
                    residual, y, gate, g);
}

absl::Status GatedResidualBackward(const float* dresidual, const float* y, const float* gate,
                                   float* dy, float* dgate, int64_t batch, int64_t seq,
                                   int64_t dim, int64_t cond_stride, cudaStream_t stream) {
  const Geometry g{batch, seq, dim, cond_stride};
  TESSERA_RETURN_IF_ERROR(CheckGeometry("GatedResidualBackward", g));
  // The gate first: dy may alias y.
  TESSERA_RETURN_IF_ERROR(LaunchFlat("GatedResidualBackward(gate)", batch * dim, stream,
                                     GatedResidualGateKernel, dresidual, y, dgate, g));
  return LaunchFlat("GatedResidualBackward", batch * seq * dim, stream, GatedResidualDyKernel,
                    dresidual, gate, dy, g);
}

}  // namespace tessera::cuda
