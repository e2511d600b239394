// Status helpers shared by every library in tessera.
//
// Library code returns absl::Status / absl::StatusOr and never exits. These
// macros keep the propagation short; Abseil 20220623 has no
// ABSL_RETURN_IF_ERROR, so we carry our own.
#pragma once

#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define TESSERA_CONCAT_INNER(a, b) a##b
#define TESSERA_CONCAT(a, b) TESSERA_CONCAT_INNER(a, b)

// Returns from the enclosing function if `expr` yields a non-OK status.
#define TESSERA_RETURN_IF_ERROR(expr)              \
  do {                                             \
    ::absl::Status tessera_status_ = (expr);       \
    if (!tessera_status_.ok()) return tessera_status_; \
  } while (0)

// `lhs = value of expr` or return its error.
#define TESSERA_ASSIGN_OR_RETURN(lhs, expr) \
  TESSERA_ASSIGN_OR_RETURN_IMPL(TESSERA_CONCAT(tessera_statusor_, __LINE__), lhs, expr)
#define TESSERA_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return tmp.status();                 \
  lhs = std::move(tmp).value()

// A programmer error: an impossible state. Aborts with file:line.
#define TESSERA_CHECK(cond)                                                         \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "tessera: check failed at %s:%d: %s\n", __FILE__, __LINE__, \
                   #cond);                                                          \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)
