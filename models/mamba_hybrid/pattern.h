// The layer pattern of a Mamba hybrid: one symbol per layer, as Megatron's
// hybrid models write it (M = Mamba-2 mixer, * = self-attention, - = MLP,
// E = MoE FFN), given as a string or allocated from ratios.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "runtime/config/config.pb.h"

namespace tessera::mamba_hybrid {

inline constexpr char kMamba = 'M';
inline constexpr char kAttention = '*';
inline constexpr char kMlp = '-';
inline constexpr char kMoe = 'E';

// Megatron's allocation rule (mamba_hybrid_layer_allocation.py): round(L *
// attention_ratio) attention layers spread evenly so that the stack starts
// and ends with Mamba layers, then round(L * mlp_ratio) MLP layers spread
// evenly, right-justified, over the remaining Mamba positions. Rounding is
// half to even, as Python's round. 56 layers at 0.08 / 0.5 give the 8B
// model's 24 M, 4 *, 28 -. Ratios must lie in [0, 1] with a sum <= 1.
std::string AllocateLayers(int num_layers, double attention_ratio, double mlp_ratio);

// The pattern a config describes: `pattern` when set (then its length must
// be num_layers, and its counts must match the ratios when those are set,
// as Megatron requires), else AllocateLayers. A UsageError names the field.
absl::StatusOr<std::string> ResolvePattern(const MambaHybridConfig& config);

}  // namespace tessera::mamba_hybrid
