#include "runtime/kernels/cpu/ssm_pointwise.h"

#include <cmath>

#include "runtime/kernels/cpu/parallel_loops.h"
#include "runtime/kernels/cpu/vector_math.h"

namespace tessera::cpu {
namespace {

constexpr float kSoftplusThreshold = 20.0f;

inline float Softplus(float v) { return v > kSoftplusThreshold ? v : std::log1p(std::exp(v)); }

}  // namespace

void DtSoftplusForward(const float* dt_raw, int64_t raw_stride, const float* bias, float* dt,
                       int64_t rows, int64_t heads) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * heads * 8))
  for (int64_t r = 0; r < rows; ++r) {
    const float* raw = dt_raw + r * raw_stride;
    for (int64_t h = 0; h < heads; ++h) dt[r * heads + h] = Softplus(raw[h] + bias[h]);
  }
}

void DtSoftplusBackward(const float* ddt, const float* dt_raw, int64_t raw_stride,
                        const float* bias, float* ddt_raw, float* dbias, int64_t rows,
                        int64_t heads) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * heads * 8))
  for (int64_t r = 0; r < rows; ++r) {
    const float* raw = dt_raw + r * raw_stride;
    float* draw = ddt_raw + r * raw_stride;
    for (int64_t h = 0; h < heads; ++h) {
      const float v = raw[h] + bias[h];
      const float slope = v > kSoftplusThreshold ? 1.0f : 1.0f / (1.0f + std::exp(-v));
      draw[h] = ddt[r * heads + h] * slope;
    }
  }
  // Rows in order per head: the same sum for any thread count.
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < heads; ++h) dbias[h] += ddt_raw[r * raw_stride + h];
}

void GatedRmsNormForward(const float* x, const float* z, int64_t z_stride, const float* weight,
                         float* y, float* rstd, int64_t rows, int64_t dim, int64_t group_size,
                         float eps) {
  const int64_t groups = dim / group_size;
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c0 = g * group_size;
      const float* xr = x + r * dim + c0;
      const float* zr = z + r * z_stride + c0;
      float* yr = y + r * dim + c0;
      double sum = 0;
      for (int64_t j = 0; j < group_size; ++j) {
        const float u = xr[j] * zr[j] * FastSigmoid(zr[j]);
        yr[j] = u;
        sum += static_cast<double>(u) * u;
      }
      const float s = static_cast<float>(1.0 / std::sqrt(sum / group_size + eps));
      rstd[r * groups + g] = s;
#pragma omp simd
      for (int64_t j = 0; j < group_size; ++j) yr[j] = yr[j] * s * weight[c0 + j];
    }
  }
}

// With u = x silu(z), uhat = u rstd and g = dy weight:
//   du = rstd (g - uhat mean_group(g uhat)),  dx = du silu(z),
//   dz = du x silu'(z),  dweight += dy uhat.
void GatedRmsNormBackward(const float* dy, const float* x, const float* z, int64_t z_stride,
                          const float* weight, const float* rstd, float* dx, float* dz,
                          float* dweight, int64_t rows, int64_t dim, int64_t group_size) {
  const int64_t groups = dim / group_size;
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c0 = g * group_size;
      const float* xr = x + r * dim + c0;
      const float* zr = z + r * z_stride + c0;
      const float* dyr = dy + r * dim + c0;
      const float s = rstd[r * groups + g];
      float sum_g_uhat = 0.0f;
      for (int64_t j = 0; j < group_size; ++j) {
        const float uhat = xr[j] * zr[j] * FastSigmoid(zr[j]) * s;
        sum_g_uhat += dyr[j] * weight[c0 + j] * uhat;
      }
      const float mean_g_uhat = sum_g_uhat / static_cast<float>(group_size);
      float* dxr = dx + r * dim + c0;
      float* dzr = dz + r * z_stride + c0;
      for (int64_t j = 0; j < group_size; ++j) {
        const float sig = FastSigmoid(zr[j]);
        const float silu = zr[j] * sig;
        const float uhat = xr[j] * silu * s;
        const float du = s * (dyr[j] * weight[c0 + j] - uhat * mean_g_uhat);
        dxr[j] = du * silu;
        dzr[j] = du * xr[j] * sig * (1.0f + zr[j] * (1.0f - sig));
      }
    }
  }
  ForEachColumnBand(dim, rows * dim, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = c0; j < c1; ++j) {
        const float zj = z[r * z_stride + j];
        const float uhat = x[r * dim + j] * zj * FastSigmoid(zj) * rstd[r * groups + j / group_size];
        dweight[j] += dy[r * dim + j] * uhat;
      }
    }
  });
}

void SsmDecayRatesForward(const float* a_log, float* a, int64_t heads) {
  for (int64_t h = 0; h < heads; ++h) a[h] = -std::exp(a_log[h]);
}

void SsmDecayRatesBackward(const float* da, const float* a, float* da_log, int64_t heads) {
  for (int64_t h = 0; h < heads; ++h) da_log[h] += da[h] * a[h];
}

void SsdShardDecay(const float* dt, const float* A, float* decay, int64_t batch, int64_t seq,
                   int64_t heads) {
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      double sum = 0;
      for (int64_t t = 0; t < seq; ++t) sum += dt[(b * seq + t) * heads + h];
      decay[b * heads + h] = static_cast<float>(std::exp(sum * A[h]));
    }
  }
}

}  // namespace tessera::cpu
