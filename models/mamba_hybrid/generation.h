// Greedy text generation with a trained Mamba hybrid, in two forms that
// must agree: the recurrent form (Mamba layers step their conv and SSM
// states, attention layers keep a key/value cache: memory constant per
// generated token for the Mamba layers) and a full re-forward of the growing
// sequence (the training forward pass, as the oracle).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "models/mamba_hybrid/model.h"

namespace tessera::mamba_hybrid {

enum class GenerationMode { kRecurrent, kReforward };

// The `count` tokens that follow `prompt` (non-empty, ids below the
// vocabulary), each the most likely one; stops early after emitting `stop`
// (when >= 0).
absl::StatusOr<std::vector<int32_t>> GenerateGreedy(MambaHybrid& model,
                                                    const std::vector<int32_t>& prompt,
                                                    int64_t count, int32_t stop,
                                                    GenerationMode mode);

}  // namespace tessera::mamba_hybrid
