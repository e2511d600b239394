// Fuzz target: the plain-text importer (data/text_import.h) behind
// `tessera data import-text`.
//
// Input: one text file, imported from a folder (so a binary file is skipped,
// as the command does). The first byte picks the held-out fraction and the
// documents per shard; the rest is the file. An import that succeeds must
// account for every document and byte SplitDocuments finds.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

#include "data/text_import.h"
#include "fuzz/scratch_dir.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t control = data[0];
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  const std::string dir = tessera::fuzz::FreshScratchDir();
  const std::string inputs = dir + "/in";
  std::filesystem::create_directories(inputs);
  tessera::fuzz::WriteBytes(inputs + "/file.txt", text);

  tessera::TextImportOptions options;
  options.out_dir = dir + "/out";
  options.inputs = {inputs};
  options.eval_fraction = (control & 3) / 4.0;
  options.documents_per_shard = 1 + (control >> 2);
  absl::StatusOr<tessera::TextImportSummary> summary = tessera::ImportText(options);
  if (!summary.ok()) return 0;

  const bool binary = text.find('\0') != std::string_view::npos;
  int64_t documents = 0, bytes = 0;
  if (!binary) {
    for (const std::string& doc : tessera::SplitDocuments(absl::string_view(text.data(), text.size()))) {
      ++documents;
      bytes += static_cast<int64_t>(doc.size());
    }
  }
  if (summary->skipped_files != (binary ? 1 : 0) ||
      summary->train_documents + summary->eval_documents != documents ||
      summary->bytes != bytes) {
    __builtin_trap();
  }
  return 0;
}
