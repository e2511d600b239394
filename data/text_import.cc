#include "data/text_import.h"

#include <algorithm>
#include <filesystem>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "data/file_util.h"
#include "data/sequence_writers.h"
#include "runtime/base/errors.h"
#include "runtime/base/random.h"
#include "runtime/base/status.h"

namespace tessera {
namespace {

constexpr int64_t kMaxFileBytes = int64_t{1} << 30;  // one text file

// The files named by `inputs`: files as given, folders expanded to the
// regular files below them (symbolic links not followed), sorted.
absl::StatusOr<std::vector<std::pair<std::string, bool>>> ListFiles(
    const std::vector<std::string>& inputs) {
  std::vector<std::pair<std::string, bool>> files;  // (path, from a folder)
  for (const std::string& input : inputs) {
    std::error_code error;
    if (std::filesystem::is_directory(input, error)) {
      std::vector<std::string> found;
      for (auto it = std::filesystem::recursive_directory_iterator(input, error);
           !error && it != std::filesystem::recursive_directory_iterator(); it.increment(error)) {
        if (it->is_regular_file(error) && !it->is_symlink(error)) found.push_back(it->path());
      }
      if (error) return DataError(absl::StrCat(input, ": cannot list folder: ", error.message()));
      std::sort(found.begin(), found.end());
      for (std::string& path : found) files.emplace_back(std::move(path), true);
    } else if (std::filesystem::is_regular_file(input, error)) {
      files.emplace_back(input, false);
    } else {
      return DataError(absl::StrCat(input, ": no such file or folder"));
    }
  }
  return files;
}

struct Builders {
  TokensDatasetBuilder train, eval;
};

absl::Status AddDocument(const std::string& text, int64_t index, const TextImportOptions& options,
                         Builders& builders, TextImportSummary& summary) {
  std::vector<int32_t> tokens(text.begin(), text.end());
  for (int32_t& token : tokens) token &= 0xff;  // bytes, not signed chars
  summary.bytes += static_cast<int64_t>(tokens.size());
  Rng rng(options.seed, static_cast<uint64_t>(index));
  if (rng.Uniform() < options.eval_fraction) {
    ++summary.eval_documents;
    return builders.eval.Add(tokens);
  }
  ++summary.train_documents;
  return builders.train.Add(tokens);
}

bool IsFortuneSeparator(absl::string_view line) { return absl::StripAsciiWhitespace(line) == "%"; }

}  // namespace

std::vector<std::string> SplitDocuments(absl::string_view text) {
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();  // the final newline
  const bool fortune = std::any_of(lines.begin(), lines.end(), IsFortuneSeparator);
  std::vector<std::string> documents;
  std::vector<absl::string_view> current;
  const auto flush = [&] {
    if (!current.empty()) documents.push_back(absl::StrJoin(current, "\n"));
    current.clear();
  };
  for (absl::string_view line : lines) {
    const bool separator =
        fortune ? IsFortuneSeparator(line) : absl::StripAsciiWhitespace(line).empty();
    if (separator) {
      flush();
    } else {
      current.push_back(line);
    }
  }
  flush();
  // A fortune document may hold blank lines; drop documents that are only those.
  documents.erase(
      std::remove_if(documents.begin(), documents.end(),
                     [](const std::string& d) { return absl::StripAsciiWhitespace(d).empty(); }),
      documents.end());
  return documents;
}

absl::StatusOr<TextImportSummary> ImportText(const TextImportOptions& options) {
  TESSERA_ASSIGN_OR_RETURN(auto files, ListFiles(options.inputs));
  TESSERA_ASSIGN_OR_RETURN(
      auto train,
      TokensDatasetBuilder::Create(options.out_dir + "/train", options.documents_per_shard, false));
  TESSERA_ASSIGN_OR_RETURN(
      auto eval,
      TokensDatasetBuilder::Create(options.out_dir + "/eval", options.documents_per_shard, false));
  Builders builders{std::move(train), std::move(eval)};
  TextImportSummary summary;
  int64_t index = 0;
  for (const auto& [path, from_folder] : files) {
    std::error_code error;
    const auto size = std::filesystem::file_size(path, error);
    if (error || size > static_cast<uintmax_t>(kMaxFileBytes)) {
      return DataError(
          absl::StrCat(path, error ? ": cannot read its size" : ": larger than 1 GiB"));
    }
    TESSERA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
    if (text.find('\0') != std::string::npos) {
      if (!from_folder) return DataError(absl::StrCat(path, ": holds a NUL byte, not plain text"));
      ++summary.skipped_files;
      continue;
    }
    ++summary.files;
    for (const std::string& document : SplitDocuments(text)) {
      TESSERA_RETURN_IF_ERROR(AddDocument(document, index++, options, builders, summary));
    }
  }
  const std::map<std::string, std::string> attributes = {
      {"vocab_size", absl::StrCat(kByteVocabSize)},
      {"eod_token", absl::StrCat(kByteEndOfDocument)},
      {"task", "bytes"}};
  const std::string source = absl::StrCat("text import of ", absl::StrJoin(options.inputs, ", "));
  TESSERA_RETURN_IF_ERROR(builders.train.Finish(attributes, source));
  TESSERA_RETURN_IF_ERROR(builders.eval.Finish(attributes, source));
  return summary;
}

}  // namespace tessera
