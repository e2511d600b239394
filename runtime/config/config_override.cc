// `--set a.b.c=value` overrides, applied through protobuf reflection so every
// field of config.proto is reachable without a hand-written table.
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/config/config.h"

namespace tessera {
namespace {

namespace pb = ::google::protobuf;

// "a, b, c": the names usable at one level of a path (fields, and oneofs by
// their own name).
std::string ValidNames(const pb::Descriptor* descriptor) {
  std::vector<std::string> names;
  for (int i = 0; i < descriptor->oneof_decl_count(); ++i) {
    const pb::OneofDescriptor* oneof = descriptor->oneof_decl(i);
    std::vector<std::string> members;
    for (int j = 0; j < oneof->field_count(); ++j) members.push_back(oneof->field(j)->name());
    names.push_back(absl::StrCat(oneof->name(), " (", absl::StrJoin(members, " | "), ")"));
  }
  for (int i = 0; i < descriptor->field_count(); ++i) {
    if (descriptor->field(i)->containing_oneof() == nullptr) {
      names.push_back(descriptor->field(i)->name());
    }
  }
  return absl::StrJoin(names, ", ");
}

std::string EnumNames(const pb::EnumDescriptor* descriptor) {
  std::vector<std::string> names;
  for (int i = 0; i < descriptor->value_count(); ++i) names.push_back(descriptor->value(i)->name());
  return absl::StrJoin(names, ", ");
}

absl::Status BadValue(absl::string_view path, absl::string_view value, absl::string_view expected) {
  constexpr size_t kQuoted = 120;  // the message stays one readable line
  const absl::string_view shown = value.substr(0, kQuoted);
  return UsageError(absl::StrCat("override ", path, ": cannot use '", shown,
                                 value.size() > kQuoted ? "…" : "", "' as ", expected));
}

// Parses `value` for the scalar `field` and stores it in `message`.
absl::Status SetScalar(pb::Message* message, const pb::FieldDescriptor* field,
                       absl::string_view path, absl::string_view value) {
  const pb::Reflection* reflection = message->GetReflection();
  switch (field->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32: {
      int32_t parsed = 0;
      if (!absl::SimpleAtoi(value, &parsed)) return BadValue(path, value, "a 32-bit integer");
      reflection->SetInt32(message, field, parsed);
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_INT64: {
      int64_t parsed = 0;
      if (!absl::SimpleAtoi(value, &parsed)) return BadValue(path, value, "a 64-bit integer");
      reflection->SetInt64(message, field, parsed);
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_UINT32: {
      uint32_t parsed = 0;
      if (absl::StartsWith(value, "-") || !absl::SimpleAtoi(value, &parsed)) {
        return BadValue(path, value, "an unsigned 32-bit integer");
      }
      reflection->SetUInt32(message, field, parsed);
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_UINT64: {
      uint64_t parsed = 0;
      if (absl::StartsWith(value, "-") || !absl::SimpleAtoi(value, &parsed)) {
        return BadValue(path, value, "an unsigned 64-bit integer");
      }
      reflection->SetUInt64(message, field, parsed);
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_FLOAT: {
      float parsed = 0;
      if (!absl::SimpleAtof(value, &parsed) || std::isnan(parsed)) {
        return BadValue(path, value, "a number");
      }
      reflection->SetFloat(message, field, parsed);
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_DOUBLE: {
      double parsed = 0;
      if (!absl::SimpleAtod(value, &parsed) || std::isnan(parsed)) {
        return BadValue(path, value, "a number");
      }
      reflection->SetDouble(message, field, parsed);
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_BOOL: {
      // Only the four spellings below: "yes" or "2" are more likely typos than intent.
      if (value == "true" || value == "1") {
        reflection->SetBool(message, field, true);
      } else if (value == "false" || value == "0") {
        reflection->SetBool(message, field, false);
      } else {
        return BadValue(path, value, "a bool (true, false, 1 or 0)");
      }
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_ENUM: {
      const pb::EnumDescriptor* type = field->enum_type();
      for (int i = 0; i < type->value_count(); ++i) {
        if (absl::EqualsIgnoreCase(type->value(i)->name(), value)) {
          reflection->SetEnum(message, field, type->value(i));
          return absl::OkStatus();
        }
      }
      return BadValue(path, value, absl::StrCat("one of ", EnumNames(type)));
    }
    case pb::FieldDescriptor::CPPTYPE_STRING: {
      absl::string_view text = value;
      if (text.size() >= 2 && text.front() == '"' && text.back() == '"') {
        text = text.substr(1, text.size() - 2);
      }
      reflection->SetString(message, field, std::string(text));
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_MESSAGE:
      break;
  }
  return UsageError(absl::StrCat("override ", path, ": is a message, not a value"));
}

}  // namespace

absl::Status ApplyOverride(RunConfig* config, absl::string_view assignment) {
  const size_t equals = assignment.find('=');
  if (equals == absl::string_view::npos) {
    return UsageError(absl::StrCat("override '", assignment, "' is not of the form path=value"));
  }
  const absl::string_view path = absl::StripAsciiWhitespace(assignment.substr(0, equals));
  const absl::string_view value = assignment.substr(equals + 1);
  if (path.empty()) {
    return UsageError(absl::StrCat("override '", assignment, "' has an empty path"));
  }
  const std::vector<absl::string_view> parts = absl::StrSplit(path, '.');

  // Walking a path selects oneof members and creates sections as it goes;
  // work on a copy so a failed override leaves `config` as it was.
  RunConfig updated = *config;
  pb::Message* message = &updated;
  const pb::OneofDescriptor* pending_oneof = nullptr;  // named in the path, member next
  std::string walked;                                  // the path up to `message`
  for (size_t i = 0; i < parts.size(); ++i) {
    const pb::Descriptor* descriptor = message->GetDescriptor();
    const std::string name(parts[i]);
    const std::string level = walked.empty() ? "the top level" : walked;
    walked = walked.empty() ? name : absl::StrCat(walked, ".", name);

    if (pending_oneof == nullptr) {
      if (const pb::OneofDescriptor* oneof = descriptor->FindOneofByName(name)) {
        if (i + 1 == parts.size()) {
          std::vector<std::string> members;
          for (int j = 0; j < oneof->field_count(); ++j) members.push_back(oneof->field(j)->name());
          return UsageError(absl::StrCat("override ", path, ": ", name,
                                         " is a choice; name one of ", absl::StrJoin(members, ", "),
                                         " and a field of it"));
        }
        pending_oneof = oneof;
        continue;
      }
    }
    const pb::FieldDescriptor* field = descriptor->FindFieldByName(name);
    if (pending_oneof != nullptr &&
        (field == nullptr || field->containing_oneof() != pending_oneof)) {
      std::vector<std::string> members;
      for (int j = 0; j < pending_oneof->field_count(); ++j) {
        members.push_back(pending_oneof->field(j)->name());
      }
      return UsageError(absl::StrCat("override ", path, ": unknown field '", name, "' in ",
                                     pending_oneof->name(),
                                     "; valid: ", absl::StrJoin(members, ", ")));
    }
    pending_oneof = nullptr;
    if (field == nullptr) {
      return UsageError(absl::StrCat("override ", path, ": unknown field '", name, "' at ", level,
                                     "; valid fields: ", ValidNames(descriptor)));
    }
    if (field->is_repeated()) {
      return UsageError(
          absl::StrCat("override ", path, ": repeated fields cannot be overridden with --set"));
    }
    const bool last = i + 1 == parts.size();
    if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      if (last) {
        return UsageError(absl::StrCat(
            "override ", path, ": ", walked,
            " is a message; set one of its fields: ", ValidNames(field->message_type())));
      }
      // For a oneof member this also selects it and clears the other members.
      message = message->GetReflection()->MutableMessage(message, field);
      continue;
    }
    if (!last) {
      return UsageError(absl::StrCat("override ", path, ": ", walked,
                                     " is a value and has no field '", parts[i + 1], "'"));
    }
    TESSERA_RETURN_IF_ERROR(SetScalar(message, field, path, value));
    *config = std::move(updated);
    return absl::OkStatus();
  }
  return absl::OkStatus();  // unreachable: the last part always returns
}

absl::Status ApplyOverrides(RunConfig* config, const std::vector<std::string>& assignments) {
  for (const std::string& assignment : assignments) {
    TESSERA_RETURN_IF_ERROR(ApplyOverride(config, assignment));
  }
  return absl::OkStatus();
}

}  // namespace tessera
