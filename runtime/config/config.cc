// Parsing, loading and printing the run config. Overrides live in
// config_override.cc, validation in config_validate.cc.
#include "runtime/config/config.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/message.h"
#include "google/protobuf/text_format.h"
#include "runtime/base/errors.h"

namespace tessera {
namespace {

namespace pb = ::google::protobuf;

// Collects parser errors as "file:line:column: message (at `line text`)"
// with 1-based positions (protobuf reports them 0-based). Protobuf's message
// for a bad value does not name the field, so the quoted line does.
class LocatedErrors : public pb::io::ErrorCollector {
 public:
  LocatedErrors(absl::string_view text, absl::string_view filename)
      : lines_(absl::StrSplit(text, '\n')), filename_(filename) {}

  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    std::string error = absl::StrCat(filename_, ":", line + 1, ":", column + 1, ": ", message);
    if (line >= 0 && line < static_cast<int>(lines_.size())) {
      absl::string_view source = absl::StripAsciiWhitespace(lines_[line]);
      // A quoted line stays one readable line, however long the source's.
      constexpr size_t kQuoted = 120;
      const bool cut = source.size() > kQuoted;
      if (cut) source = source.substr(0, kQuoted);
      if (!source.empty()) absl::StrAppend(&error, " (at `", source, cut ? "…" : "", "`)");
    }
    errors_.push_back(std::move(error));
  }

  const std::vector<std::string>& errors() const { return errors_; }

 private:
  std::vector<absl::string_view> lines_;
  std::string filename_;
  std::vector<std::string> errors_;
};

// Sets every unset singular field of `message` (recursively) to its default,
// so the printed text shows every value the run used. A oneof is left alone
// unless one member is chosen; then only that member is filled.
void FillDefaults(pb::Message* message) {
  const pb::Descriptor* descriptor = message->GetDescriptor();
  const pb::Reflection* reflection = message->GetReflection();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const pb::FieldDescriptor* field = descriptor->field(i);
    if (field->is_repeated()) continue;
    if (field->containing_oneof() != nullptr && !reflection->HasField(*message, field)) continue;
    if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      FillDefaults(reflection->MutableMessage(message, field));
      continue;
    }
    if (reflection->HasField(*message, field)) continue;
    switch (field->cpp_type()) {
      case pb::FieldDescriptor::CPPTYPE_INT32:
        reflection->SetInt32(message, field, field->default_value_int32());
        break;
      case pb::FieldDescriptor::CPPTYPE_INT64:
        reflection->SetInt64(message, field, field->default_value_int64());
        break;
      case pb::FieldDescriptor::CPPTYPE_UINT32:
        reflection->SetUInt32(message, field, field->default_value_uint32());
        break;
      case pb::FieldDescriptor::CPPTYPE_UINT64:
        reflection->SetUInt64(message, field, field->default_value_uint64());
        break;
      case pb::FieldDescriptor::CPPTYPE_FLOAT:
        reflection->SetFloat(message, field, field->default_value_float());
        break;
      case pb::FieldDescriptor::CPPTYPE_DOUBLE:
        reflection->SetDouble(message, field, field->default_value_double());
        break;
      case pb::FieldDescriptor::CPPTYPE_BOOL:
        reflection->SetBool(message, field, field->default_value_bool());
        break;
      case pb::FieldDescriptor::CPPTYPE_ENUM:
        reflection->SetEnum(message, field, field->default_value_enum());
        break;
      case pb::FieldDescriptor::CPPTYPE_STRING:
        reflection->SetString(message, field, field->default_value_string());
        break;
      case pb::FieldDescriptor::CPPTYPE_MESSAGE:
        break;  // handled above
    }
  }
}

}  // namespace

absl::StatusOr<RunConfig> ParseRunConfig(absl::string_view text, absl::string_view filename) {
  RunConfig config;
  LocatedErrors errors(text, filename);
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  const bool ok = parser.ParseFromString(std::string(text), &config);
  if (!ok || !errors.errors().empty()) {
    if (errors.errors().empty()) return UsageError(absl::StrCat(filename, ": cannot parse config"));
    return UsageError(absl::StrJoin(errors.errors(), "; "));
  }
  return config;
}

absl::StatusOr<RunConfig> LoadRunConfig(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    return UsageError(absl::StrCat("cannot open config file '", path, "': ", std::strerror(errno)));
  }
  // A run config is a few kilobytes; a file past kMaxConfigBytes is not one
  // (and parsing it would cost many times its size).
  constexpr size_t kMaxConfigBytes = size_t{1} << 20;
  std::string text;
  char buffer[1 << 14];
  size_t got = 0;
  while (text.size() <= kMaxConfigBytes &&
         (got = std::fread(buffer, 1, sizeof(buffer), file)) > 0) {
    text.append(buffer, got);
  }
  if (text.size() > kMaxConfigBytes) {
    std::fclose(file);
    return UsageError(absl::StrCat("config file '", path, "' is larger than ",
                                   kMaxConfigBytes >> 20, " MiB: not a run config"));
  }
  const bool failed = std::ferror(file) != 0;
  const int read_errno = errno;
  std::fclose(file);
  if (failed) {
    return UsageError(
        absl::StrCat("cannot read config file '", path, "': ", std::strerror(read_errno)));
  }
  return ParseRunConfig(text, path);
}

std::string RunConfigToText(const RunConfig& config) {
  RunConfig filled = config;
  FillDefaults(&filled);
  std::string text;
  pb::TextFormat::Printer printer;
  printer.PrintToString(filled, &text);
  return text;
}

int64_t DataParallelSize(const RunConfig& config, int world_size) {
  const int64_t model_parallel =
      static_cast<int64_t>(config.parallel().tp()) * config.parallel().sp();
  if (model_parallel <= 0) return 0;
  return world_size / model_parallel;
}

int64_t MicroBatch(const RunConfig& config, int world_size) {
  if (config.train().micro_batch() > 0) return config.train().micro_batch();
  const int64_t dp = DataParallelSize(config, world_size);
  return dp > 0 ? config.train().global_batch() / dp : 0;
}

}  // namespace tessera
