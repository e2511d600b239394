#include "runtime/base/errors.h"

#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"

namespace tessera {
namespace {
constexpr char kCategoryUrl[] = "tessera/error_category";

absl::Status Make(absl::StatusCode code, absl::string_view message, ErrorCategory category) {
  return WithCategory(absl::Status(code, message), category);
}
}  // namespace

absl::Status WithCategory(absl::Status status, ErrorCategory category) {
  if (status.ok()) return status;
  status.SetPayload(kCategoryUrl, absl::Cord(std::to_string(static_cast<int>(category))));
  return status;
}

absl::Status UsageError(absl::string_view m) {
  return Make(absl::StatusCode::kInvalidArgument, m, ErrorCategory::kUsage);
}
absl::Status DataError(absl::string_view m) {
  return Make(absl::StatusCode::kDataLoss, m, ErrorCategory::kData);
}
absl::Status CheckpointError(absl::string_view m) {
  return Make(absl::StatusCode::kDataLoss, m, ErrorCategory::kCheckpoint);
}
absl::Status CommunicationError(absl::string_view m) {
  return Make(absl::StatusCode::kUnavailable, m, ErrorCategory::kCommunication);
}
absl::Status NumericalError(absl::string_view m) {
  return Make(absl::StatusCode::kOutOfRange, m, ErrorCategory::kNumerical);
}

absl::Status SavedForRequeue(absl::string_view m) {
  return Make(absl::StatusCode::kAborted, m, ErrorCategory::kSavedRequeue);
}

int ExitCodeFor(const absl::Status& status) {
  if (status.ok()) return kExitOk;
  auto payload = status.GetPayload(kCategoryUrl);
  int code = 0;
  if (payload.has_value() && absl::SimpleAtoi(std::string(*payload), &code)) return code;
  return kExitInternal;
}

}  // namespace tessera
