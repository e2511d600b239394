// What the Mamba hybrid's task records for the numerics dump
// (docs/debugging.md): one micro-batch's tokens, targets and loss mask, the
// residual stream around every layer, the final hidden states and the
// logits, under global names at global shapes.
#pragma once

#include <cstdint>
#include <vector>

#include "models/mamba_hybrid/model.h"
#include "runtime/train/step_recorder.h"

namespace tessera::mamba_hybrid {

// `in` the micro-batch (whole windows, host), `positions` [in.batch] their
// indices in the global batch of `global_batch` windows; the model ran
// ForwardLoss on `in` keeping its activations.
void RecordLanguageModelStep(StepRecorder& recorder, MambaHybrid& model, Arena& arena,
                             int64_t global_batch, const LmInputs& in,
                             const std::vector<int64_t>& positions);

}  // namespace tessera::mamba_hybrid
