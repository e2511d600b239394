#include "data/text_import.h"

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "data/manifest.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/base/errors.h"
#include "tests/data/test_util.h"

namespace tessera {
namespace {

using ::testing::ElementsAre;
using testing_util::FreshDir;

void WriteText(const std::string& path, const std::string& text) {
  testing_util::WriteBytes(path, std::vector<uint8_t>(text.begin(), text.end()));
}

TEST(TextImport, FortuneFilesSplitAtPercentLines) {
  EXPECT_THAT(SplitDocuments("one\nline two\n%\n\nthree\n\nfour\n%\n%\nfive"),
              ElementsAre("one\nline two", "\nthree\n\nfour", "five"));
}

TEST(TextImport, PlainFilesSplitAtBlankLines) {
  EXPECT_THAT(SplitDocuments("a b\nc\n\n  \n\td\n\n\ne\n"), ElementsAre("a b\nc", "\td", "e"));
  EXPECT_THAT(SplitDocuments(""), ElementsAre());
  EXPECT_THAT(SplitDocuments("\n\n \n"), ElementsAre());
}

// Every document of a data set, read with the raw HDF5 API: tokens split at doc_offsets.
std::vector<std::string> ReadDocuments(const std::string& dir) {
  auto manifest = ReadManifest(dir);
  EXPECT_TRUE(manifest.ok()) << manifest.status();
  std::vector<std::string> documents;
  H5Lock lock;
  for (const ShardEntry& shard : manifest->shards()) {
    hid_t file = H5Fopen((dir + "/" + shard.path()).c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    std::vector<int32_t> tokens(static_cast<size_t>(shard.num_tokens()));
    std::vector<int64_t> offsets(static_cast<size_t>(shard.num_samples() + 1));
    hid_t t = H5Dopen2(file, "tokens", H5P_DEFAULT), o = H5Dopen2(file, "doc_offsets", H5P_DEFAULT);
    if (!tokens.empty()) H5Dread(t, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, tokens.data());
    H5Dread(o, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, offsets.data());
    H5Dclose(t);
    H5Dclose(o);
    H5Fclose(file);
    for (size_t d = 0; d + 1 < offsets.size(); ++d) {
      std::string text;
      for (int64_t i = offsets[d]; i < offsets[d + 1]; ++i) {
        EXPECT_TRUE(tokens[i] >= 0 && tokens[i] < 256);
        text.push_back(static_cast<char>(tokens[i]));
      }
      documents.push_back(text);
    }
  }
  return documents;
}

TEST(TextImport, FilesAndFoldersBecomeByteDocumentsSplitIntoTrainAndEval) {
  const std::string in = FreshDir("in"), out = FreshDir("out");
  std::filesystem::create_directories(in + "/sub");
  WriteText(in + "/fortunes", "Fortune one.\n%\nFortune \xc3\xa9two,\n  indented.\n%\n");
  WriteText(in + "/sub/essay.txt", "Para one.\n\nPara two\nstill two.\n");
  testing_util::WriteBytes(in + "/sub/fortunes.dat", {1, 0, 2, 0});  // binary: skipped
  WriteText(out + "/../tessera_extra.txt", "Extra file.\n");
  TextImportOptions options;
  options.out_dir = out;
  options.inputs = {in, out + "/../tessera_extra.txt"};
  options.eval_fraction = 0.5;
  options.seed = 11;
  options.documents_per_shard = 2;
  auto summary = ImportText(options);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->files, 3);
  EXPECT_EQ(summary->skipped_files, 1);
  EXPECT_EQ(summary->train_documents + summary->eval_documents, 5);
  EXPECT_GT(summary->eval_documents, 0);
  EXPECT_GT(summary->train_documents, 0);
  ASSERT_TRUE(VerifyDataset(out + "/train").ok());
  ASSERT_TRUE(VerifyDataset(out + "/eval").ok());
  std::vector<std::string> all = ReadDocuments(out + "/train");
  EXPECT_EQ(static_cast<int64_t>(all.size()), summary->train_documents);
  for (const std::string& d : ReadDocuments(out + "/eval")) all.push_back(d);
  std::vector<std::string> expected = {"Fortune one.", "Fortune \xc3\xa9two,\n  indented.",
                                       "Para one.", "Para two\nstill two.", "Extra file."};
  std::sort(all.begin(), all.end());
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(all, expected);
  auto manifest = ReadManifest(out + "/train");
  EXPECT_EQ(manifest->attributes().at("vocab_size"), "257");
  EXPECT_EQ(manifest->attributes().at("eod_token"), "256");
}

TEST(TextImport, MissingInputsAndNamedBinaryFilesAreDataErrors) {
  const std::string out = FreshDir("out");
  TextImportOptions options;
  options.out_dir = out;
  options.inputs = {out + "/nowhere"};
  EXPECT_EQ(ExitCodeFor(ImportText(options).status()), 3);
  testing_util::WriteBytes(out + "/binary", {1, 0, 2});
  options.inputs = {out + "/binary"};
  const absl::Status status = ImportText(options).status();
  EXPECT_EQ(ExitCodeFor(status), 3);
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("binary: holds a NUL byte"));
}

}  // namespace
}  // namespace tessera
