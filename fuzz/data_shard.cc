// Fuzz target: data sets as `tessera data verify` and the readers see them
// (data/manifest.h VerifyDataset, data/reader.h, data/token_reader.h,
// data/interaction_reader.h).
//
// Input: a manifest.textproto, then a line "####", then bytes that describe
// the shards. The shard files are well-formed HDF5 written here (fuzzing
// libhdf5's own file parser is not the point): their schema and version
// attributes, which datasets exist, their types, shapes and values, and
// whether the manifest's sizes, checksums and counts are corrected to match
// the files, all come from the input. Then VerifyDataset runs, and the
// schema's reader opens the data set and reads two batches. Nothing may
// crash, leak or allocate what the files do not hold.
#include <fuzzer/FuzzedDataProvider.h>
#include <hdf5.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "data/file_util.h"
#include "data/interaction_reader.h"
#include "data/manifest.h"
#include "data/reader.h"
#include "data/schema.h"
#include "data/token_reader.h"
#include "fuzz/scratch_dir.h"
#include "google/protobuf/stubs/logging.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"

namespace tessera {
namespace {

constexpr int64_t kMaxStoredElements = 1 << 16;  // beyond this a dataset is declared, not written

hid_t FileTypeOf(DType dtype) {
  switch (dtype) {
    case DType::kU8: return H5T_STD_U8LE;
    case DType::kI32: return H5T_STD_I32LE;
    case DType::kI64: return H5T_STD_I64LE;
    case DType::kF32: return H5T_IEEE_F32LE;
    default: return H5T_STD_U16LE;
  }
}

void WriteIntAttr(hid_t object, const char* name, int64_t value) {
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attr = H5Acreate2(object, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(attr, H5T_NATIVE_INT64, &value);
  H5Aclose(attr);
  H5Sclose(space);
}

void WriteStringAttr(hid_t object, const char* name, const std::string& value) {
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, std::max<size_t>(1, value.size()));
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attr = H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  std::string padded = value;
  padded.resize(std::max<size_t>(1, value.size()));
  H5Awrite(attr, type, padded.data());
  H5Aclose(attr);
  H5Sclose(space);
  H5Tclose(type);
}

int64_t AttributeOr(const DataManifest& manifest, const char* key, int64_t fallback) {
  auto it = manifest.attributes().find(key);
  if (it == manifest.attributes().end()) return fallback;
  char* end = nullptr;
  const long long value = std::strtoll(it->second.c_str(), &end, 10);
  return (end && *end == '\0') ? value : fallback;
}

// Element counts of one schema's row counts ("N", "T", "D", "U", "E").
struct Counts {
  int64_t samples = 0;  // N, D or U
  std::vector<int64_t> lengths;  // per document / user, for offsets
  int64_t total = 0;             // T or E
};

int64_t RowsFor(const char* rows, const Counts& counts) {
  const std::string r(rows);
  if (r == "T" || r == "E") return counts.total;
  if (r.size() == 3 && r[1] == '+') return counts.samples + 1;
  return counts.samples;
}

// Writes one shard of `schema` at `path`; returns the sample count it holds
// (as the consistent-mode manifest would state it) and its token count.
std::pair<int64_t, int64_t> WriteShard(const std::string& path, const Schema& schema,
                                       const DataManifest& manifest, FuzzedDataProvider& in) {
  const uint8_t mode = in.ConsumeIntegral<uint8_t>();
  const bool consistent = (mode & 1) == 0;
  hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file < 0) return {0, 0};
  WriteStringAttr(file, kSchemaAttribute,
                  (mode & 2) ? in.ConsumeRandomLengthString(16) : std::string(schema.name));
  WriteIntAttr(file, kVersionAttribute,
               (mode & 4) ? in.ConsumeIntegral<int64_t>() : schema.version);

  Counts counts;
  counts.samples = in.ConsumeIntegralInRange<int64_t>(0, 8);
  for (int64_t i = 0; i < counts.samples; ++i) {
    counts.lengths.push_back(in.ConsumeIntegralInRange<int64_t>(0, 12));
    counts.total += counts.lengths.back();
  }
  const DType kTypes[] = {DType::kU8, DType::kI32, DType::kI64, DType::kF32, DType::kBF16};
  for (const DatasetSpec& spec : schema.datasets) {
    if (!consistent && in.ConsumeBool()) continue;  // missing
    DType dtype = consistent ? spec.dtype : kTypes[in.ConsumeIntegralInRange(0, 4)];
    int rank = consistent ? spec.rank : in.ConsumeIntegralInRange(0, 4);
    std::vector<hsize_t> dims;
    for (int d = 0; d < rank; ++d) {
      int64_t extent = 0;
      if (d == 0) {
        extent = RowsFor(spec.rows, counts);
        if (!consistent && in.ConsumeBool()) extent = in.ConsumeIntegral<uint8_t>();
        if (!consistent && in.ConsumeProbability<float>() < 0.05f) extent = int64_t{1} << 40;
      } else {
        const char* keys[] = {"channels", "height", "width"};
        extent = std::clamp<int64_t>(AttributeOr(manifest, keys[(d - 1) % 3], 1), 0, 32);
        if (!consistent && in.ConsumeBool()) extent = in.ConsumeIntegralInRange<int64_t>(0, 40);
      }
      dims.push_back(static_cast<hsize_t>(extent));
    }
    hid_t space = H5Screate_simple(rank, dims.data(), nullptr);
    hid_t dataset = H5Dcreate2(file, spec.name, FileTypeOf(dtype), space, H5P_DEFAULT,
                               H5P_DEFAULT, H5P_DEFAULT);
    int64_t elements = 1;
    for (hsize_t d : dims) elements = std::min<int64_t>(elements * static_cast<int64_t>(d), 1 << 30);
    if (dataset >= 0 && elements <= kMaxStoredElements) {
      const size_t width = DTypeSize(dtype);
      std::vector<uint8_t> bytes(static_cast<size_t>(elements) * width);
      if (spec.offsets_into != nullptr && consistent && dtype == DType::kI64) {
        int64_t offset = 0;
        auto* out = reinterpret_cast<int64_t*>(bytes.data());
        for (int64_t i = 0; i < elements; ++i) {
          out[i] = offset;
          if (i < static_cast<int64_t>(counts.lengths.size())) offset += counts.lengths[i];
        }
      } else {
        std::vector<uint8_t> given = in.ConsumeBytes<uint8_t>(bytes.size());
        std::copy(given.begin(), given.end(), bytes.begin());
        if (consistent && std::string(spec.name) == "loss_mask") {
          for (uint8_t& b : bytes) b &= 1;
        }
      }
      if (!(mode & 8) || !consistent) {  // mode 8: declared but never stored
        H5Dwrite(dataset, FileTypeOf(dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes.data());
      }
    }
    if (dataset >= 0) H5Dclose(dataset);
    H5Sclose(space);
  }
  H5Fclose(file);
  const bool tokens = std::string(schema.name) == "tokens";
  return {counts.samples, tokens ? counts.total : 0};
}

void ReadTwoBatches(const DataManifest& manifest, const std::string& dir, FuzzedDataProvider& in) {
  auto configure = [&](ReaderOptions& options) {
    options.dir = dir;
    options.global_batch = in.ConsumeIntegralInRange<int64_t>(1, 4);
    options.num_replicas = in.ConsumeBool() ? 2 : 1;
    options.global_batch *= options.num_replicas;
    options.seed = in.ConsumeIntegral<uint8_t>();
    options.prefetch = 1;
  };
  if (manifest.schema() == "images") {
    ImageReaderOptions options;
    configure(options);
    options.pad_to = in.ConsumeBool() ? 32 : 0;
    auto reader = ImageReader::Open(options);
    if (reader.ok()) {
      (void)(*reader)->Next();
      (void)(*reader)->Next();
    }
  } else if (manifest.schema() == "tokens") {
    TokenReaderOptions options;
    configure(options);
    options.seq_len = in.ConsumeIntegralInRange<int64_t>(1, 16);
    auto reader = TokenReader::Open(options);
    if (reader.ok()) {
      (void)(*reader)->Next();
      (void)(*reader)->Next();
    }
  } else if (manifest.schema() == "interactions") {
    InteractionReaderOptions options;
    configure(options);
    options.max_len = in.ConsumeIntegralInRange<int64_t>(0, 8);
    auto reader = InteractionReader::Open(options);
    if (reader.ok()) {
      (void)(*reader)->Next();
      (void)(*reader)->Next();
    }
  }
}

}  // namespace
}  // namespace tessera

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  // Invalid UTF-8 in a string field is logged by protobuf on every input.
  google::protobuf::SetLogHandler([](google::protobuf::LogLevel, const char*, int,
                                     const std::string&) {});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t cut = input.find("\n####\n");
  const std::string_view text = input.substr(0, cut);
  const std::string_view rest =
      cut == std::string_view::npos ? std::string_view() : input.substr(cut + 6);
  FuzzedDataProvider in(reinterpret_cast<const uint8_t*>(rest.data()), rest.size());
  const std::string dir = fuzz::FreshScratchDir();

  DataManifest manifest;
  google::protobuf::TextFormat::Parser parser;
  parser.AllowPartialMessage(true);
  struct Quiet : google::protobuf::io::ErrorCollector {
    void AddError(int, int, const std::string&) override {}
  } quiet;
  parser.RecordErrorsTo(&quiet);
  if (!parser.ParseFromString(std::string(text), &manifest)) {
    fuzz::WriteBytes(dir + "/" + kManifestFile, text);  // the reader's own parse errors
    (void)VerifyDataset(dir);
    return 0;
  }
  const auto schema = FindSchema(manifest.schema());
  const bool fix_manifest = in.ConsumeBool();
  int64_t total = 0;
  for (int i = 0; i < std::min(manifest.shards_size(), 3); ++i) {
    ShardEntry& shard = *manifest.mutable_shards(i);
    const std::string& name = shard.path();
    const bool plain = !name.empty() && name.size() < 64 && name.find('/') == std::string::npos &&
                       name[0] != '.';
    if (!plain || !schema.ok()) continue;
    const std::string path = dir + "/" + name;
    auto [samples, tokens] = WriteShard(path, **schema, manifest, in);
    if (fix_manifest) {
      auto checksum = ChecksumFile(path);
      if (checksum.ok()) {
        shard.set_checksum(FormatCrc32(checksum->crc32));
        shard.set_bytes(checksum->bytes);
      }
      shard.set_num_samples(samples);
      if (manifest.schema() == "tokens") shard.set_num_tokens(tokens);
      total += samples;
    }
  }
  if (fix_manifest) manifest.set_num_samples(total);
  std::string manifest_text;
  google::protobuf::TextFormat::PrintToString(manifest, &manifest_text);
  fuzz::WriteBytes(dir + "/" + kManifestFile, manifest_text);
  (void)VerifyDataset(dir);
  ReadTwoBatches(manifest, dir, in);
  return 0;
}
