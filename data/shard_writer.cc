#include "data/shard_writer.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "data/file_util.h"
#include "runtime/hdf5/hdf5_util.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {
namespace {

absl::Status CheckAgainstSchema(const Schema& schema, const std::vector<DatasetData>& datasets) {
  for (const DatasetData& dataset : datasets) {
    const DatasetSpec* spec = schema.FindDataset(dataset.name);
    if (spec == nullptr) {
      return UsageError(
          absl::StrCat("schema ", schema.name, " has no dataset \"", dataset.name, "\""));
    }
    if (static_cast<int>(dataset.dims.size()) != spec->rank) {
      return UsageError(absl::StrCat("dataset \"", dataset.name, "\" given rank ",
                                     dataset.dims.size(), ", schema ", schema.name, " says ",
                                     spec->rank));
    }
    for (int64_t d : dataset.dims) {
      if (d < 0) return UsageError(absl::StrCat("dataset \"", dataset.name, "\": negative size"));
    }
  }
  return absl::OkStatus();
}

absl::Status WriteDataset(hid_t file, const DatasetSpec& spec, const DatasetData& dataset) {
  std::vector<hsize_t> dims(dataset.dims.begin(), dataset.dims.end());
  // Contiguous layout (the default): samples are read back by hyperslab at
  // random offsets, which chunking and compression would only slow down.
  TESSERA_ASSIGN_OR_RETURN(H5Id handle,
                           h5::CreateDataset(file, spec.name, h5::FileType(spec.dtype), dims));
  int64_t numel = 1;
  for (int64_t d : dataset.dims) numel *= d;
  if (numel == 0) return absl::OkStatus();
  if (dataset.data == nullptr) {
    return UsageError(absl::StrCat("dataset \"", dataset.name, "\": no data given"));
  }
  return TESSERA_H5(H5Dwrite(handle.get(), h5::MemoryType(spec.dtype), H5S_ALL, H5S_ALL,
                             H5P_DEFAULT, dataset.data));
}

absl::Status WriteShardFile(const std::string& path, const Schema& schema,
                            const std::vector<DatasetData>& datasets) {
  TESSERA_ASSIGN_OR_RETURN(
      H5Id file, TESSERA_H5_ID(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT)));
  TESSERA_RETURN_IF_ERROR(h5::WriteStringAttribute(file.get(), kSchemaAttribute, schema.name));
  TESSERA_RETURN_IF_ERROR(h5::WriteIntAttribute(file.get(), kVersionAttribute, schema.version));
  for (const DatasetData& dataset : datasets) {
    TESSERA_RETURN_IF_ERROR(WriteDataset(file.get(), *schema.FindDataset(dataset.name), dataset));
  }
  return TESSERA_H5(H5Fflush(file.get(), H5F_SCOPE_GLOBAL));
}

}  // namespace

absl::StatusOr<ShardInfo> WriteShard(const std::string& path, absl::string_view schema_name,
                                     const std::vector<DatasetData>& datasets) {
  TESSERA_ASSIGN_OR_RETURN(const Schema* schema, FindSchema(schema_name));
  TESSERA_RETURN_IF_ERROR(h5::InFile(path, CheckAgainstSchema(*schema, datasets)));
  H5Lock lock;
  const std::string temp = TempPathFor(path);
  absl::Status written = h5::InFile(temp, WriteShardFile(temp, *schema, datasets));
  absl::StatusOr<ShardInfo> info =
      written.ok() ? ValidateShard(temp, schema->name) : absl::StatusOr<ShardInfo>(written);
  if (info.ok()) {
    TESSERA_RETURN_IF_ERROR(CommitFile(temp, path));
  } else {
    std::remove(temp.c_str());
  }
  return info;
}

ImageArrays ImageArrays::Slice(int64_t begin, int64_t end) const {
  TESSERA_CHECK(0 <= begin && begin <= end && end <= count);
  ImageArrays slice = *this;
  slice.pixels = pixels + begin * pixels_per_image();
  slice.labels = labels + begin;
  slice.count = end - begin;
  return slice;
}

std::vector<DatasetData> ImagesDatasets(const ImageArrays& images) {
  return {{"images", images.pixels, {images.count, images.channels, images.height, images.width}},
          {"labels", images.labels, {images.count}}};
}

absl::StatusOr<ShardInfo> WriteImagesShard(const std::string& path, const ImageArrays& images) {
  return WriteShard(path, "images", ImagesDatasets(images));
}

}  // namespace tessera
