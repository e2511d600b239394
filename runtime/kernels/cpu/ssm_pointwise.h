// The pointwise pieces of the Mamba-2 mixer around the SSD scan
// (docs/mamba.md): the time step dt = softplus(dt_raw + dt_bias), and the
// gated RMSNorm by group, RMSNorm(x * silu(z)) * weight, of mamba_ssm's
// RMSNormGated with norm_before_gate=False.
//
// dt_raw and z are read from the in_proj output in place: their rows are
// `*_stride` floats apart. Backward kernels overwrite the gradients of
// inputs (at the strided positions only) and accumulate those of parameters.
#pragma once

#include <cstdint>

namespace tessera::cpu {

// dt[r, h] = softplus(dt_raw[r * raw_stride + h] + bias[h]) for r < rows,
// h < heads; softplus(v) = log(1 + exp(v)), and v itself above 20 (PyTorch's
// threshold).
void DtSoftplusForward(const float* dt_raw, int64_t raw_stride, const float* bias, float* dt,
                       int64_t rows, int64_t heads);
// ddt_raw[r * raw_stride + h] = ddt[r, h] * sigmoid(v) (overwritten);
// dbias[h] += sum_r of the same.
void DtSoftplusBackward(const float* ddt, const float* dt_raw, int64_t raw_stride,
                        const float* bias, float* ddt_raw, float* dbias, int64_t rows,
                        int64_t heads);

// Per row r and group g of `group_size` columns (dim % group_size == 0):
//   u = x * silu(z),  rstd[r, g] = 1 / sqrt(mean_g(u^2) + eps),
//   y = u * rstd * weight.
// x, y: [rows, dim]; z rows z_stride apart; weight [dim]; rstd [rows, dim / group_size].
void GatedRmsNormForward(const float* x, const float* z, int64_t z_stride, const float* weight,
                         float* y, float* rstd, int64_t rows, int64_t dim, int64_t group_size,
                         float eps);
// dx [rows, dim] and dz (rows z_stride apart) overwritten; dweight accumulates.
void GatedRmsNormBackward(const float* dy, const float* x, const float* z, int64_t z_stride,
                          const float* weight, const float* rstd, float* dx, float* dz,
                          float* dweight, int64_t rows, int64_t dim, int64_t group_size);

// The decay rates a[h] = -exp(a_log[h]); backward: da_log[h] += da[h] * a[h]
// (d a / d a_log = a).
void SsmDecayRatesForward(const float* a_log, float* a, int64_t heads);
void SsmDecayRatesBackward(const float* da, const float* a, float* da_log, int64_t heads);
// decay[b, h] = exp(A[h] * sum_t dt[b, t, h]) over t < seq (dt [batch, seq,
// heads]), the sum and the product in double: a sequence shard's decay of
// the state it receives.
void SsdShardDecay(const float* dt, const float* A, float* decay, int64_t batch, int64_t seq,
                   int64_t heads);

}  // namespace tessera::cpu
