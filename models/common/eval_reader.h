// The reader options every model's evaluation shares: the held-out split of
// data.eval_dir, read in index order, one reader batch per forward on every
// replica.
#pragma once

#include "data/batch_reader.h"
#include "models/registry.h"
#include "runtime/config/config.pb.h"

namespace tessera {

inline void SetEvalReaderOptions(const RunConfig& config, const TaskOptions& task,
                                 ReaderOptions* options) {
  options->dir = config.data().eval_dir();
  options->field = "data.eval_dir";
  options->global_batch = task.micro_batch * task.num_replicas;
  options->replica = task.replica;
  options->num_replicas = task.num_replicas;
  options->prefetch = config.data().prefetch();
  options->shuffle = false;
}

}  // namespace tessera
