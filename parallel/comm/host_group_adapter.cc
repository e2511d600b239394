#include "parallel/comm/host_group_adapter.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "runtime/base/status.h"

namespace tessera::parallel {

absl::Status CommunicatorHostGroup::Barrier() { return comm_->Complete(comm_->Barrier()); }

absl::Status CommunicatorHostGroup::Broadcast(std::string* bytes, int root) {
  if (root < 0 || root >= size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("HostGroup broadcast root ", root, " outside group ", comm_->name()));
  }
  int64_t length = rank() == root ? static_cast<int64_t>(bytes->size()) : 0;
  TESSERA_RETURN_IF_ERROR(comm_->Complete(comm_->Broadcast(&length, 1, DType::kI64, root)));
  bytes->resize(static_cast<size_t>(length));
  if (length == 0) return absl::OkStatus();
  return comm_->Complete(
      comm_->Broadcast(bytes->data(), static_cast<size_t>(length), DType::kU8, root));
}

absl::StatusOr<std::vector<std::string>> CommunicatorHostGroup::AllGather(
    const std::string& bytes) {
  const size_t n = static_cast<size_t>(size());
  const int64_t mine = static_cast<int64_t>(bytes.size());
  std::vector<int64_t> lengths(n, 0);
  TESSERA_RETURN_IF_ERROR(comm_->Complete(comm_->AllGather(&mine, lengths.data(), 1, DType::kI64)));
  const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  std::vector<std::string> result(n);
  if (longest > 0) {
    std::string padded = bytes;
    padded.resize(static_cast<size_t>(longest), '\0');
    std::string gathered(n * static_cast<size_t>(longest), '\0');
    TESSERA_RETURN_IF_ERROR(comm_->Complete(comm_->AllGather(
        padded.data(), gathered.data(), static_cast<size_t>(longest), DType::kU8)));
    for (size_t r = 0; r < n; ++r) {
      result[r] =
          gathered.substr(r * static_cast<size_t>(longest), static_cast<size_t>(lengths[r]));
    }
  }
  return result;
}

absl::StatusOr<int64_t> CommunicatorHostGroup::AllReduceMax(int64_t value) {
  TESSERA_RETURN_IF_ERROR(
      comm_->Complete(comm_->AllReduce(&value, 1, DType::kI64, ReduceOp::kMax)));
  return value;
}

}  // namespace tessera::parallel
