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

absl::Status WriteTensor(hid_t file, const std::string& name, const Shape& shape,
                         const float* data) {
  // Parameter names contain dots, never slashes: one flat namespace.
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  TESSERA_ASSIGN_OR_RETURN(H5Id dataset, h5::CreateDataset(file, name, H5T_IEEE_F32LE, dims));
  return TESSERA_H5(
      H5Dwrite(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data));
}

absl::Status Write(const std::string& path, const ParameterStore& store, const float* flat,
                   const std::vector<WholeTensor>& extra) {
  H5Lock lock;
  TESSERA_ASSIGN_OR_RETURN(H5Id file,
                           TESSERA_H5_ID(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT,
                                                   H5P_DEFAULT)));
  TESSERA_RETURN_IF_ERROR(h5::WriteStringAttribute(file.get(), "format", kFormat));
  TESSERA_RETURN_IF_ERROR(h5::WriteIntAttribute(file.get(), "version", kVersion));
  for (const ParamInfo& info : store.infos()) {
    TESSERA_RETURN_IF_ERROR(WriteTensor(file.get(), info.name, info.global_shape, flat + info.offset));
  }
  for (const WholeTensor& tensor : extra) {
    TESSERA_RETURN_IF_ERROR(WriteTensor(file.get(), tensor.name, tensor.shape, tensor.data));
  }
  return TESSERA_H5(H5Fflush(file.get(), H5F_SCOPE_GLOBAL));
}

// What reading the weights file found wrong, by tensor.
struct ReadProblems {
  std::vector<std::string> missing, mismatched, nonfinite;
};

// Reads dataset `name` of `shape` into `out`; a missing, mismatched or
// non-finite tensor is noted in `problems`.
absl::Status ReadTensor(const std::string& path, hid_t file, const std::string& name,
                        const Shape& shape, float* out, ReadProblems& problems) {
  if (H5Lexists(file, name.c_str(), H5P_DEFAULT) <= 0) {
    problems.missing.push_back(name);
    return absl::OkStatus();
  }
  auto dataset = TESSERA_H5_ID(H5Dopen2(file, name.c_str(), H5P_DEFAULT));
  if (!dataset.ok()) return AsCheckpointError(path, dataset.status());
  auto dims = h5::DatasetDims(dataset->get());
  if (!dims.ok()) return AsCheckpointError(path, dims.status());
  const Shape stored = Shape::FromRange(*dims);
  if (stored != shape) {
    problems.mismatched.push_back(
        absl::StrCat(name, " (file ", stored.ToString(), ", model ", shape.ToString(), ")"));
    return absl::OkStatus();
  }
  absl::Status read =
      TESSERA_H5(H5Dread(dataset->get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out));
  if (!read.ok()) return AsCheckpointError(path, read);
  const int64_t count = shape.numel();
  if (!std::all_of(out, out + count, [](float v) { return std::isfinite(v); })) {
    problems.nonfinite.push_back(name);
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status SaveWeights(const std::string& path, const ParameterStore& store, const float* flat,
                         const std::vector<WholeTensor>& extra) {
  for (const ParamInfo& info : store.infos()) {
    if (info.local_shape != info.global_shape) {
      return absl::FailedPreconditionError(absl::StrCat(
          "SaveWeights writes whole tensors; ", info.name, " is a shard ",
          info.local_shape.ToString(), " of ", info.global_shape.ToString()));
    }
  }
  const std::string temporary = path + ".tmp";
  absl::Status status = Write(temporary, store, flat, extra);
  if (status.ok()) {
    std::error_code error;
    std::filesystem::rename(temporary, path, error);
    if (error) status = absl::InternalError(absl::StrCat("rename: ", error.message()));
  }
  if (!status.ok()) std::remove(temporary.c_str());
  return AsCheckpointError(path, status);
}

absl::Status LoadWeights(const std::string& path, ParameterStore& store,
                         const std::vector<WholeTensor>& extra) {
  H5Lock lock;
  auto file = h5::OpenFileReadOnly(path);
  if (!file.ok()) return AsCheckpointError(path, file.status());
  auto format = h5::ReadStringAttribute(file->get(), "format");
  if (!format.ok() || *format != kFormat) {
    return CheckpointError(absl::StrCat(path, ": not a tessera weights file (attribute format is ",
                                        format.ok() ? "\"" + *format + "\"" : "missing", ")"));
  }
  ReadProblems problems;
  for (const ParamInfo& info : store.infos()) {
    TESSERA_RETURN_IF_ERROR(ReadTensor(path, file->get(), info.name, info.global_shape,
                                       store.values().data<float>() + info.offset, problems));
  }
  for (const WholeTensor& tensor : extra) {
    TESSERA_RETURN_IF_ERROR(
        ReadTensor(path, file->get(), tensor.name, tensor.shape, tensor.data, problems));
  }
  const auto& [missing, mismatched, nonfinite] = problems;
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
    const bool extra_tensor = std::any_of(extra.begin(), extra.end(),
                                          [&](const WholeTensor& t) { return t.name == name; });
    if (!store.Find(name).ok() && !extra_tensor) unexpected.push_back(name);
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
