// The Mamba hybrid's config rules (model.mamba_hybrid and its layout),
// checked through the model registry after the shared sections' rules.
#pragma once

#include "models/common/moe_config.h"
#include "runtime/config/config.pb.h"
#include "runtime/config/config_check.h"

namespace tessera::mamba_hybrid {

void CheckConfig(const RunConfig& config, int world_size, ConfigChecker& check);

// What model.mamba_hybrid.moe's widths 0 mean: ffn_hidden_size (resolved).
MoeWidthDefaults MoeDefaults(const MambaHybridConfig& config);

}  // namespace tessera::mamba_hybrid
