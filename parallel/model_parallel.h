// The process groups a model's layers use under model parallelism, handed
// to a model when it is built. Any model reuses it: launch/ builds it from
// the mesh, and a model whose layout is pure data parallelism gets none.
#pragma once

#include "parallel/comm/communicator.h"

namespace tessera::parallel {

struct ModelParallel {
  Communicator* tp = nullptr;     // tensor parallelism: heads, columns, vocabulary
  Communicator* sp = nullptr;     // sequence shards (Ulysses, Mamba state passing)
  Communicator* ep = nullptr;     // experts
  Communicator* tp_sp = nullptr;  // one replica's ranks (tp x sp): a replica's whole token set
  bool sequence_parallel = false;  // Megatron SP along tp
  int tp_size() const { return tp->size(); }
  int sp_size() const { return sp->size(); }
};

}  // namespace tessera::parallel
