// The rules and the layer options of a MoeConfig (runtime/config/config.proto),
// shared by every model that embeds one (model.dit_moe.moe, the hybrid
// models' MoE layers). A model passes the prefix its users write and its own
// defaults for the two widths whose 0 means "the model's default".
#pragma once

#include <cstdint>
#include <string>

#include "runtime/config/config.pb.h"
#include "runtime/config/config_check.h"
#include "runtime/nn/moe.h"

namespace tessera {

// What expert_hidden = 0 and shared_expert_hidden = 0 mean for one model,
// and how to say so in a message (e.g. "4 * model.dit_moe.hidden_size=384").
struct MoeWidthDefaults {
  int64_t expert_hidden = 0;
  std::string expert_hidden_why;
  int64_t shared_expert_hidden = 0;
  std::string shared_expert_hidden_why;
};

// Every failed rule of `moe` (written at `prefix`, e.g. "model.dit_moe.moe")
// into `check`: sizes and ranges, and the splits over the layout (ep divides
// the experts, etp the routed experts' width, tp the shared expert's width).
void CheckMoeConfig(const MoeConfig& moe, const std::string& prefix,
                    const ParallelConfig& parallel, const MoeWidthDefaults& defaults,
                    ConfigChecker& check);

// The routed experts' width after the model's default (0 -> default).
int64_t ResolvedExpertHidden(const MoeConfig& moe, const MoeWidthDefaults& defaults);
// The shared expert's width after the default; 0 when it is disabled (-1).
int64_t ResolvedSharedExpertHidden(const MoeConfig& moe, const MoeWidthDefaults& defaults);

// The layer options (runtime/nn/moe.h) `moe` asks for, widths resolved.
MoeLayer::Options MoeLayerOptions(const MoeConfig& moe, const MoeWidthDefaults& defaults);

}  // namespace tessera
