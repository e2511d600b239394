// HSTU's config rules (docs/config.md lists them with the same wording).
#pragma once

#include "runtime/config/config_check.h"

namespace tessera::hstu {

void CheckConfig(const RunConfig& config, int world_size, ConfigChecker& check);

}  // namespace tessera::hstu
