// ResolveMesh: the mesh's shape once every layout rule holds. The rules live
// in runtime/config (ValidateLayout, part of ValidateRunConfig), so messages
// depend on the config and the world size only and every rank reports the
// same text; docs/parallelism.md lists them with the reason for each split.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "parallel/mesh/mesh.h"
#include "runtime/base/status.h"
#include "runtime/config/config.h"

namespace tessera::parallel {

absl::StatusOr<MeshShape> ResolveMesh(const RunConfig& config, int world_size) {
  // One set of rules, one wording: the config's layout validation.
  TESSERA_RETURN_IF_ERROR(ValidateLayout(config, world_size));
  const ParallelConfig& p = config.parallel();
  const int64_t tp_sp = static_cast<int64_t>(p.tp()) * p.sp();
  const int64_t ep_etp = static_cast<int64_t>(p.ep()) * p.etp();
  MeshShape shape;
  shape.world = world_size;
  shape.tp = p.tp();
  shape.sp = p.sp();
  shape.dp = static_cast<int>(world_size / tp_sp);
  shape.ep = p.ep();
  shape.etp = p.etp();
  shape.edp = static_cast<int>(world_size / ep_etp);
  return shape;
}

}  // namespace tessera::parallel
