// The shipped configs and docs/config.md stay in step with config.proto.
#include <dirent.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "gtest/gtest.h"
#include "runtime/config/config.h"
#include "tests/runtime/config/contains.h"

namespace tessera {
namespace {

namespace pb = ::google::protobuf;

std::vector<std::string> ConfigFiles() {
  std::vector<std::string> files;
  const std::string dir = TESSERA_SOURCE_DIR "/configs";
  DIR* handle = opendir(dir.c_str());
  if (handle == nullptr) return files;
  while (dirent* entry = readdir(handle)) {
    const std::string name = entry->d_name;
    if (absl::EndsWith(name, ".textproto")) files.push_back(dir + "/" + name);
  }
  closedir(handle);
  return files;
}

TEST(Configs, EveryShippedConfigLoadsAndValidatesOnOneProcess) {
  const std::vector<std::string> files = ConfigFiles();
  EXPECT_GE(files.size(), 3u);
  for (const std::string& file : files) {
    absl::StatusOr<RunConfig> config = LoadRunConfig(file);
    ASSERT_TRUE(config.ok()) << config.status();
    const absl::Status status = ValidateRunConfig(*config, 1);
    EXPECT_TRUE(status.ok()) << file << ": " << status;
  }
}

TEST(Configs, EveryShippedConfigStartsWithACommentHeader) {
  for (const std::string& file : ConfigFiles()) {
    std::ifstream in(file);
    std::string first_line;
    std::getline(in, first_line);
    EXPECT_TRUE(absl::StartsWith(first_line, "#")) << file;
  }
}

TEST(Configs, QuickstartHasTheDocumentedShape) {
  absl::StatusOr<RunConfig> config =
      LoadRunConfig(TESSERA_SOURCE_DIR "/configs/quickstart.textproto");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->train().run_dir(), "runs/quickstart");
  EXPECT_EQ(config->data().dir(), "data/fashion-mnist/train");
  EXPECT_EQ(config->dit_moe().input_size(), 32);
}

TEST(Configs, TinyConfigTakesADataDirOverride) {
  absl::StatusOr<RunConfig> config =
      LoadRunConfig(TESSERA_SOURCE_DIR "/configs/dit_moe_tiny.textproto");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(ApplyOverride(&*config, "data.dir=/tmp/tiny").ok());
  EXPECT_TRUE(ValidateRunConfig(*config, 1).ok());
  EXPECT_EQ(config->data().dir(), "/tmp/tiny");
}

// Full paths of every field, as --set and the docs spell them: members of a
// oneof are reached through the oneof's name (model.dit_moe.depth).
void CollectPaths(const pb::Descriptor* descriptor, const std::string& prefix,
                  std::vector<std::string>& paths) {
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const pb::FieldDescriptor* field = descriptor->field(i);
    std::string path = prefix;
    if (field->containing_oneof() != nullptr) {
      path = absl::StrCat(path, field->containing_oneof()->name(), ".");
    }
    path = absl::StrCat(path, field->name());
    paths.push_back(path);
    if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      CollectPaths(field->message_type(), path + ".", paths);
    }
  }
}

TEST(ConfigDocs, EveryFieldPathAndEnumValueAppearsInDocsConfigMd) {
  std::ifstream in(TESSERA_SOURCE_DIR "/docs/config.md");
  ASSERT_TRUE(in.good()) << "docs/config.md is missing";
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string docs = buffer.str();
  std::vector<std::string> paths;
  CollectPaths(RunConfig::descriptor(), "", paths);
  EXPECT_GT(paths.size(), 50u);
  for (const std::string& path : paths) {
    // As a code span, so `train.steps` does not pass by appearing in `train.steps_x`.
    EXPECT_TRUE(Contains(docs, absl::StrCat("`", path, "`"))) << "undocumented field";
  }
  for (const pb::EnumDescriptor* type :
       {DitMoeConfig::Objective_descriptor(), OptimConfig::Schedule_descriptor(),
        MambaHybridConfig::MlpActivation_descriptor()}) {
    for (int i = 0; i < type->value_count(); ++i) {
      EXPECT_TRUE(Contains(docs, absl::StrCat("`", type->value(i)->name(), "`")))
          << "undocumented enum value";
    }
  }
}

}  // namespace
}  // namespace tessera
