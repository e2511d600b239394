// The process groups a model's layers use under model parallelism, handed
// to a model when it is built. Any model reuses it: launch/ builds it from
// the mesh, and a model whose layout is pure data parallelism gets none.
#pragma once

#include "parallel/comm/communicator.h"

namespace tessera::parallel {

// The communicators here carry device buffers (activations, tokens); a
// layer sends host values (losses, counts, per-row statistics) through each
// one's host() (parallel/comm/communicator.h).
struct ModelParallel {
  Communicator* tp = nullptr;     // tensor parallelism: heads, columns, vocabulary
  Communicator* sp = nullptr;     // sequence shards (Ulysses, Mamba state passing)
  Communicator* ep = nullptr;     // experts
  Communicator* tp_sp = nullptr;  // one replica's ranks (tp x sp): a replica's whole token set
  bool sequence_parallel = false;  // Megatron SP along tp
  // The data-parallel replicas: the ranks with this rank's tp and sp
  // coordinates (MoE balance counts over the global batch).
  Communicator* dp = nullptr;
  // A row-sharded embedding table (HSTU's items): the ranks its rows are
  // split over, and the ranks that own the same rows in the other copies of
  // the table (size 1 when one copy spans the world). Null: none.
  Communicator* table = nullptr;
  Communicator* table_replicas = nullptr;
  int tp_size() const { return tp->size(); }
  int sp_size() const { return sp->size(); }
  // Whether the layout splits the model (tp, sp or ep > 1); a ModelParallel
  // may also be handed to a data-parallel-only model for its dp group.
  bool splits_model() const { return tp_size() > 1 || sp_size() > 1 || ep->size() > 1; }
};

}  // namespace tessera::parallel
