// DiT-MoE's config rules (model.dit_moe and its splits over the layout),
// checked through the model registry after the shared sections' rules.
#pragma once

#include "models/common/moe_config.h"
#include "runtime/config/config.pb.h"
#include "runtime/config/config_check.h"

namespace tessera::dit_moe {

// Every failed rule of config.dit_moe() for a run over `world_size` processes.
// DiT-MoE's meaning of the MoE widths' 0: routed experts 4 * hidden_size,
// the shared expert 2 * hidden_size (the reference's).
MoeWidthDefaults MoeDefaults(const DitMoeConfig& m);

void CheckConfig(const RunConfig& config, int world_size, ConfigChecker& check);

}  // namespace tessera::dit_moe
