// Error categories and the exit codes `launch/` maps them to (DESIGN.md §7).
//
// A Status produced anywhere in tessera may carry an error category as a
// payload; `launch/` reads it to pick the process exit code. Statuses without
// a category exit with kExitInternal.
#pragma once

#include "absl/strings/string_view.h"

#include "absl/status/status.h"

namespace tessera {

enum class ErrorCategory : int {
  kUsage = 2,          // bad command line or config
  kData = 3,           // missing, truncated or malformed data
  kCheckpoint = 4,     // missing, corrupt or incompatible checkpoint
  kCommunication = 5,  // a collective failed or timed out
  kNumerical = 6,      // NaN/Inf in loss or gradients
  kSavedRequeue = 75,  // stopped by a signal after saving: requeue me (not a failure)
};

inline constexpr int kExitOk = 0;
inline constexpr int kExitInternal = 1;
inline constexpr int kExitSavedRequeue = 75;

// Attaches `category` to `status` (no-op for OK).
absl::Status WithCategory(absl::Status status, ErrorCategory category);

// Constructors for the common cases; the message should name the field, file
// or rank involved.
absl::Status UsageError(absl::string_view message);
absl::Status DataError(absl::string_view message);
absl::Status CheckpointError(absl::string_view message);
absl::Status CommunicationError(absl::string_view message);
absl::Status NumericalError(absl::string_view message);
// SIGTERM/SIGUSR1 stopped training after a committed checkpoint (exit 75).
absl::Status SavedForRequeue(absl::string_view message);

// The exit code for a status: 0 for OK, the category's code when present,
// kExitInternal otherwise.
int ExitCodeFor(const absl::Status& status);

}  // namespace tessera
