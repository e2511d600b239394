// What a communication operation was, for error and timeout messages; shared
// by the MPI and NCCL backends and formatted only when something fails.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "parallel/comm/communicator.h"
#include "runtime/tensor/dtype.h"

namespace tessera::parallel {

struct OpInfo {
  const char* op = "";           // "AllReduce", "Send", ...
  const char* reduce = nullptr;  // "sum", "avg", "max" for reductions
  size_t count = 0;              // elements as passed by the caller
  size_t bytes = 0;              // bytes this rank contributes
  DType dtype = DType::kF32;
  int64_t seq = 0;  // the group's sequence number; 0 for Send/Recv
  int peer = -1;    // Send/Recv: group rank of the other side
  int tag = -1;
};

const char* ReduceOpName(ReduceOp op);

// "AllReduce(sum) of 1024 x f32 (4096 bytes) on group 'dp' (4 ranks), sequence #42"
std::string DescribeOp(const std::string& group_name, const std::vector<int>& world_ranks,
                       const OpInfo& info);

}  // namespace tessera::parallel
