#include "runtime/checkpoint/weights_file.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/base/errors.h"
#include "runtime/hdf5/hdf5_util.h"

namespace tessera {
namespace {
constexpr char kFormat[] = "tessera.weights";
constexpr int64_t kVersion = 1;

absl::Status AsCheckpointError(const std::string& path, absl::Status status) {
  if (status.ok()) return status;
  return WithCategory(h5::InFile(path, status), ErrorCategory::kCheckpoint);
}

absl::Status Write(const std::string& path, const ParameterStore& store, const float* flat) {
  H5Lock lock;
  TESSERA_ASSIGN_OR_RETURN(H5Id file,
                           TESSERA_H5_ID(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT,
                                                   H5P_DEFAULT)));
  TESSERA_RETURN_IF_ERROR(h5::WriteStringAttribute(file.get(), "format", kFormat));
  TESSERA_RETURN_IF_ERROR(h5::WriteIntAttribute(file.get(), "version", kVersion));
  for (const ParamInfo& info : store.infos()) {
    // Parameter names contain dots, never slashes: one flat namespace.
    std::vector<hsize_t> dims(info.global_shape.begin(), info.global_shape.end());
    TESSERA_ASSIGN_OR_RETURN(H5Id dataset,
                             h5::CreateDataset(file.get(), info.name, H5T_IEEE_F32LE, dims));
    TESSERA_RETURN_IF_ERROR(TESSERA_H5(H5Dwrite(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL,
                                                H5S_ALL, H5P_DEFAULT, flat + info.offset)));
  }
  return TESSERA_H5(H5Fflush(file.get(), H5F_SCOPE_GLOBAL));
}
}  // namespace

absl::Status SaveWeights(const std::string& path, const ParameterStore& store, const float* flat) {
  for (const ParamInfo& info : store.infos()) {
    if (info.local_shape != info.global_shape) {
      return absl::FailedPreconditionError(absl::StrCat(
          "SaveWeights writes whole tensors; ", info.name, " is a shard ",
          info.local_shape.ToString(), " of ", info.global_shape.ToString()));
    }
  }
  const std::string temporary = path + ".tmp";
  absl::Status status = Write(temporary, store, flat);
  if (status.ok()) {
    std::error_code error;
    std::filesystem::rename(temporary, path, error);
    if (error) status = absl::InternalError(absl::StrCat("rename: ", error.message()));
  }
  if (!status.ok()) std::remove(temporary.c_str());
  return AsCheckpointError(path, status);
}

absl::Status LoadWeights(const std::string& path, ParameterStore& store) {
  H5Lock lock;
  auto file = h5::OpenFileReadOnly(path);
  if (!file.ok()) return AsCheckpointError(path, file.status());
  auto format = h5::ReadStringAttribute(file->get(), "format");
  if (!format.ok() || *format != kFormat) {
    return CheckpointError(absl::StrCat(path, ": not a tessera weights file (attribute format is ",
                                        format.ok() ? "\"" + *format + "\"" : "missing", ")"));
  }
  std::vector<std::string> missing, mismatched, nonfinite;
  for (const ParamInfo& info : store.infos()) {
    if (H5Lexists(file->get(), info.name.c_str(), H5P_DEFAULT) <= 0) {
      missing.push_back(info.name);
      continue;
    }
    auto dataset = TESSERA_H5_ID(H5Dopen2(file->get(), info.name.c_str(), H5P_DEFAULT));
    if (!dataset.ok()) return AsCheckpointError(path, dataset.status());
    auto dims = h5::DatasetDims(dataset->get());
    if (!dims.ok()) return AsCheckpointError(path, dims.status());
    const Shape stored = Shape::FromRange(*dims);
    if (stored != info.global_shape) {
      mismatched.push_back(absl::StrCat(info.name, " (file ", stored.ToString(), ", model ",
                                        info.global_shape.ToString(), ")"));
      continue;
    }
    float* out = store.values().data<float>() + info.offset;
    absl::Status read = TESSERA_H5(
        H5Dread(dataset->get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out));
    if (!read.ok()) return AsCheckpointError(path, read);
    const int64_t count = info.global_shape.numel();
    if (!std::all_of(out, out + count, [](float v) { return std::isfinite(v); })) {
      nonfinite.push_back(info.name);
    }
  }
  if (!nonfinite.empty()) {
    return CheckpointError(absl::StrCat(path, ": NaN or Inf in [", absl::StrJoin(nonfinite, ", "),
                                        "] (weights of a diverged run?)"));
  }
  // Tensors in the file that the model does not have.
  std::vector<std::string> unexpected;
  hsize_t count = 0;
  H5G_info_t group_info;
  if (H5Gget_info(file->get(), &group_info) >= 0) count = group_info.nlinks;
  for (hsize_t i = 0; i < count; ++i) {
    char name[1024];
    if (H5Lget_name_by_idx(file->get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof(name),
                           H5P_DEFAULT) < 0)
      continue;
    if (!store.Find(name).ok()) unexpected.push_back(name);
  }
  if (!missing.empty() || !mismatched.empty() || !unexpected.empty()) {
    return CheckpointError(absl::StrCat(
        path, ": does not match the model: missing [", absl::StrJoin(missing, ", "),
        "], unexpected [", absl::StrJoin(unexpected, ", "), "], mismatched [",
        absl::StrJoin(mismatched, ", "), "]"));
  }
  return absl::OkStatus();
}

}  // namespace tessera
