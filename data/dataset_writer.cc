#include "data/dataset_writer.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "data/file_util.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {

DatasetWriter::DatasetWriter(std::string dir, const Schema* schema)
    : dir_(std::move(dir)), schema_(schema) {
  manifest_.set_schema(schema_->name);
  manifest_.set_version(schema_->version);
  manifest_.set_num_samples(0);
}

absl::StatusOr<DatasetWriter> DatasetWriter::Create(const std::string& dir,
                                                    absl::string_view schema_name) {
  TESSERA_ASSIGN_OR_RETURN(const Schema* schema, FindSchema(schema_name));
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) return DataError(absl::StrCat(dir, ": cannot create folder: ", error.message()));
  const std::string manifest = absl::StrCat(dir, "/", kManifestFile);
  if (std::remove(manifest.c_str()) != 0 && errno != ENOENT) {
    return DataError(
        absl::StrCat(manifest, ": cannot remove the old manifest: ", std::strerror(errno)));
  }
  return DatasetWriter(dir, schema);
}

absl::Status DatasetWriter::AddShard(const std::vector<DatasetData>& datasets) {
  const std::string name = absl::StrFormat("shard-%05d.h5", manifest_.shards_size());
  const std::string path = absl::StrCat(dir_, "/", name);
  TESSERA_ASSIGN_OR_RETURN(ShardInfo info, WriteShard(path, schema_->name, datasets));
  TESSERA_ASSIGN_OR_RETURN(FileChecksum checksum, ChecksumFile(path));
  ShardEntry* shard = manifest_.add_shards();
  shard->set_path(name);
  shard->set_num_samples(info.num_samples);
  shard->set_checksum(FormatCrc32(checksum.crc32));
  shard->set_bytes(checksum.bytes);
  if (info.schema == "tokens") shard->set_num_tokens(info.dims.at("tokens")[0]);
  manifest_.set_num_samples(manifest_.num_samples() + info.num_samples);
  return absl::OkStatus();
}

absl::Status DatasetWriter::Finish(const std::map<std::string, std::string>& attributes,
                                   absl::string_view source) {
  for (const auto& [key, value] : attributes) (*manifest_.mutable_attributes())[key] = value;
  manifest_.set_source(std::string(source));
  TESSERA_RETURN_IF_ERROR(ValidateManifest(manifest_, dir_));
  return WriteManifest(dir_, manifest_);
}

absl::Status WriteImagesDataset(const std::string& dir, const ImageArrays& images, int num_classes,
                                int64_t samples_per_shard, absl::string_view source) {
  if (samples_per_shard <= 0) {
    return UsageError(absl::StrCat("samples_per_shard must be positive, got ", samples_per_shard));
  }
  for (int64_t i = 0; i < images.count; ++i) {
    if (images.labels[i] < 0 || images.labels[i] >= num_classes) {
      return DataError(absl::StrCat(dir, ": label ", images.labels[i], " of sample ", i,
                                    " is outside [0, ", num_classes, ")"));
    }
  }
  TESSERA_ASSIGN_OR_RETURN(DatasetWriter writer, DatasetWriter::Create(dir, "images"));
  for (int64_t begin = 0; begin < images.count; begin += samples_per_shard) {
    const ImageArrays shard =
        images.Slice(begin, std::min(images.count, begin + samples_per_shard));
    TESSERA_RETURN_IF_ERROR(writer.AddShard(ImagesDatasets(shard)));
  }
  return writer.Finish({{"channels", absl::StrCat(images.channels)},
                        {"height", absl::StrCat(images.height)},
                        {"width", absl::StrCat(images.width)},
                        {"num_classes", absl::StrCat(num_classes)}},
                       source);
}

}  // namespace tessera
