// Plain text -> tokens data sets of bytes (docs/data-format.md, "Importers").
//
// Every byte is a token (0-255); the end-of-document token is 256, so the
// vocabulary has 257 ids. A file is cut into documents at lines holding only
// "%" when it has such a line (the fortune format), otherwise at blank lines
// (empty or whitespace only). A document keeps its inner newlines and loses
// the newline that ends its last line; empty documents are dropped.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tessera {

inline constexpr int32_t kByteVocabSize = 257;
inline constexpr int32_t kByteEndOfDocument = 256;

struct TextImportOptions {
  std::string out_dir;              // gets train/ and eval/
  std::vector<std::string> inputs;  // files, or folders (every regular file below, sorted)
  double eval_fraction = 0.05;      // each document goes to eval with this probability
  uint64_t seed = 0;                // of that draw: document i uses Rng(seed, i)
  int64_t documents_per_shard = 10000;
};

struct TextImportSummary {
  int64_t files = 0;
  int64_t skipped_files = 0;  // in folders, holding a NUL byte (binary)
  int64_t bytes = 0;          // document bytes written
  int64_t train_documents = 0, eval_documents = 0;
};

absl::StatusOr<TextImportSummary> ImportText(const TextImportOptions& options);

// The documents of one file's text, by the rules above.
std::vector<std::string> SplitDocuments(absl::string_view text);

}  // namespace tessera
