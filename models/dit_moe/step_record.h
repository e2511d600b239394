// What DiT-MoE's task records for the numerics dump (docs/debugging.md):
// one micro-batch's inputs, random draws and prediction under global names.
#pragma once

#include <cstdint>
#include <vector>

#include "models/dit_moe/diffusion.h"
#include "models/dit_moe/model.h"
#include "runtime/train/step_recorder.h"

namespace tessera::dit_moe {

// `images` [B, C, H, W] in [-1, 1] and `labels` [B] as read, `positions` [B]
// their indices in the global batch of `global_batch` samples, `example` the
// draws made for them (with the noise kept), `prediction` this rank's output
// rows [B * local_tokens, patch_dim].
void RecordDiffusionStep(StepRecorder& recorder, const DitMoe& model, int64_t global_batch,
                         const Tensor& images, const std::vector<int32_t>& labels,
                         const std::vector<int64_t>& positions, const DiffusionExample& example,
                         const Tensor& prediction);

}  // namespace tessera::dit_moe
