#include "parallel/comm/op_info.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tessera::parallel {

const char* ReduceOpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kAvg:
      return "avg";
    case ReduceOp::kMax:
      return "max";
  }
  return "?";
}

std::string DescribeOp(const std::string& group_name, const std::vector<int>& world_ranks,
                       const OpInfo& info) {
  std::string text = info.op;
  if (info.reduce != nullptr) absl::StrAppend(&text, "(", info.reduce, ")");
  const std::string_view dtype = DTypeName(info.dtype);
  absl::StrAppendFormat(&text, " of %d x %s (%d bytes)", info.count,
                        absl::string_view(dtype.data(), dtype.size()), info.bytes);
  if (info.peer >= 0) {
    absl::StrAppendFormat(&text, " %s group rank %d (world rank %d), tag %d",
                          std::strcmp(info.op, "Send") == 0 ? "to" : "from", info.peer,
                          world_ranks[info.peer], info.tag);
  }
  absl::StrAppendFormat(&text, " on group '%s' (%d ranks)", group_name, world_ranks.size());
  if (info.seq > 0) absl::StrAppend(&text, ", sequence #", info.seq);
  return text;
}

}  // namespace tessera::parallel
