#include "runtime/hdf5/hdf5_util.h"

#include <algorithm>
#include <cstring>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {
namespace {

std::recursive_mutex& Hdf5Mutex() {
  static std::recursive_mutex mutex;
  return mutex;
}

// "…/data/reader.cc" → "data/reader.cc": the last two path components.
absl::string_view ShortSourcePath(absl::string_view path) {
  size_t slash = path.rfind('/');
  if (slash == absl::string_view::npos || slash == 0) return path;
  slash = path.rfind('/', slash - 1);
  return slash == absl::string_view::npos ? path : path.substr(slash + 1);
}

// The call's name without its arguments: "H5Dread(a, b)" → "H5Dread".
absl::string_view CallName(absl::string_view expression) {
  const size_t paren = expression.find('(');
  return paren == absl::string_view::npos ? expression : expression.substr(0, paren);
}

herr_t CollectDescription(unsigned n, const H5E_error2_t* error, void* data) {
  auto* descriptions = static_cast<std::vector<std::string>*>(data);
  (void)n;
  if (error->desc != nullptr && error->desc[0] != '\0') descriptions->push_back(error->desc);
  return 0;
}

}  // namespace

H5Lock::H5Lock() {
  Hdf5Mutex().lock();
  static bool atexit_off = false;
  if (!atexit_off) {
    // No library shutdown at exit: a file whose write failed (a full disk)
    // cannot be closed, and HDF5 1.10 crashes retrying that at exit. tessera
    // closes every file it writes successfully itself.
    H5dont_atexit();
    atexit_off = true;
  }
  // A thread-safe HDF5 keeps the automatic error printing per thread: turn
  // it off on every thread that calls HDF5 (errors reach the user as one
  // Status line naming the file instead of HDF5-DIAG stack dumps).
  thread_local bool silenced = false;
  if (!silenced) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    silenced = true;
  }
}

H5Lock::~H5Lock() { Hdf5Mutex().unlock(); }

void H5Id::Reset() {
  if (id_ < 0) return;
  H5Lock lock;
  switch (H5Iget_type(id_)) {
    case H5I_FILE:
      H5Fclose(id_);
      break;
    case H5I_DATASET:
      H5Dclose(id_);
      break;
    case H5I_DATASPACE:
      H5Sclose(id_);
      break;
    case H5I_DATATYPE:
      H5Tclose(id_);
      break;
    case H5I_ATTR:
      H5Aclose(id_);
      break;
    case H5I_GENPROP_LST:
      H5Pclose(id_);
      break;
    default:
      H5Idec_ref(id_);
      break;
  }
  id_ = -1;
}

namespace h5 {

absl::Status Failure(absl::string_view expression, const char* file, int line) {
  // The outermost entry says what was attempted, the innermost why it failed
  // (e.g. "unable to open file" … "truncated file: eof = …").
  std::vector<std::string> descriptions;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, CollectDescription, &descriptions);
  H5Eclear2(H5E_DEFAULT);
  std::string detail;
  if (!descriptions.empty()) {
    detail = descriptions.front();
    if (descriptions.size() > 1) absl::StrAppend(&detail, ": ", descriptions.back());
  } else {
    detail = "no HDF5 error description";
  }
  return DataError(absl::StrFormat("%s failed (%s:%d): %s", CallName(expression),
                                   ShortSourcePath(file), line, detail));
}

absl::Status InFile(absl::string_view path, const absl::Status& status) {
  if (status.ok()) return status;
  absl::Status annotated(status.code(), absl::StrCat(path, ": ", status.message()));
  status.ForEachPayload([&](absl::string_view url, const absl::Cord& payload) {
    annotated.SetPayload(url, payload);
  });
  return annotated;
}

absl::StatusOr<H5Id> OpenFileReadOnly(const std::string& path) {
  H5Lock lock;
  // A small sieve buffer: samples are read at random offsets, and the default
  // 64 KiB sieve would copy 64 KiB to deliver each few-KiB sample.
  TESSERA_ASSIGN_OR_RETURN(H5Id fapl, TESSERA_H5_ID(H5Pcreate(H5P_FILE_ACCESS)));
  TESSERA_RETURN_IF_ERROR(TESSERA_H5(H5Pset_sieve_buf_size(fapl.get(), 4096)));
  auto file = TESSERA_H5_ID(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()));
  if (!file.ok()) return InFile(path, file.status());
  return file;
}

absl::StatusOr<H5Id> CreateDataset(hid_t file, const std::string& path, hid_t file_type,
                                   const std::vector<hsize_t>& dims) {
  TESSERA_ASSIGN_OR_RETURN(
      H5Id space, dims.empty() ? TESSERA_H5_ID(H5Screate(H5S_SCALAR))
                               : TESSERA_H5_ID(H5Screate_simple(static_cast<int>(dims.size()),
                                                                dims.data(), nullptr)));
  TESSERA_ASSIGN_OR_RETURN(H5Id link_props, TESSERA_H5_ID(H5Pcreate(H5P_LINK_CREATE)));
  TESSERA_RETURN_IF_ERROR(TESSERA_H5(H5Pset_create_intermediate_group(link_props.get(), 1)));
  return TESSERA_H5_ID(H5Dcreate2(file, path.c_str(), file_type, space.get(), link_props.get(),
                                  H5P_DEFAULT, H5P_DEFAULT));
}

absl::Status WriteStringAttribute(hid_t object, const char* name, absl::string_view value) {
  H5Lock lock;
  TESSERA_ASSIGN_OR_RETURN(H5Id type, TESSERA_H5_ID(H5Tcopy(H5T_C_S1)));
  TESSERA_RETURN_IF_ERROR(TESSERA_H5(H5Tset_size(type.get(), std::max<size_t>(value.size(), 1))));
  TESSERA_RETURN_IF_ERROR(TESSERA_H5(H5Tset_strpad(type.get(), H5T_STR_NULLPAD)));
  TESSERA_ASSIGN_OR_RETURN(H5Id space, TESSERA_H5_ID(H5Screate(H5S_SCALAR)));
  TESSERA_ASSIGN_OR_RETURN(
      H5Id attribute,
      TESSERA_H5_ID(H5Acreate2(object, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT)));
  std::string buffer(value);
  buffer.resize(std::max<size_t>(value.size(), 1), '\0');
  return TESSERA_H5(H5Awrite(attribute.get(), type.get(), buffer.data()));
}

absl::Status WriteIntAttribute(hid_t object, const char* name, int64_t value) {
  H5Lock lock;
  TESSERA_ASSIGN_OR_RETURN(H5Id space, TESSERA_H5_ID(H5Screate(H5S_SCALAR)));
  TESSERA_ASSIGN_OR_RETURN(H5Id attribute,
                           TESSERA_H5_ID(H5Acreate2(object, name, H5T_STD_I64LE, space.get(),
                                                    H5P_DEFAULT, H5P_DEFAULT)));
  return TESSERA_H5(H5Awrite(attribute.get(), H5T_NATIVE_INT64, &value));
}

absl::StatusOr<std::string> ReadStringAttribute(hid_t object, const char* name) {
  H5Lock lock;
  htri_t exists = H5Aexists(object, name);
  TESSERA_RETURN_IF_ERROR(TESSERA_H5(exists));
  if (exists == 0) return absl::NotFoundError(absl::StrCat("no attribute \"", name, "\""));
  TESSERA_ASSIGN_OR_RETURN(H5Id attribute, TESSERA_H5_ID(H5Aopen(object, name, H5P_DEFAULT)));
  TESSERA_ASSIGN_OR_RETURN(H5Id type, TESSERA_H5_ID(H5Aget_type(attribute.get())));
  if (H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) > 0) {
    return DataError(absl::StrCat("attribute \"", name, "\" is not a fixed-length string"));
  }
  const size_t size = H5Tget_size(type.get());
  std::string value(size, '\0');
  TESSERA_RETURN_IF_ERROR(TESSERA_H5(H5Aread(attribute.get(), type.get(), value.data())));
  value.resize(std::strlen(value.c_str()));  // drop null padding
  return value;
}

absl::StatusOr<int64_t> ReadIntAttribute(hid_t object, const char* name) {
  H5Lock lock;
  htri_t exists = H5Aexists(object, name);
  TESSERA_RETURN_IF_ERROR(TESSERA_H5(exists));
  if (exists == 0) return absl::NotFoundError(absl::StrCat("no attribute \"", name, "\""));
  TESSERA_ASSIGN_OR_RETURN(H5Id attribute, TESSERA_H5_ID(H5Aopen(object, name, H5P_DEFAULT)));
  TESSERA_ASSIGN_OR_RETURN(H5Id type, TESSERA_H5_ID(H5Aget_type(attribute.get())));
  if (H5Tget_class(type.get()) != H5T_INTEGER) {
    return DataError(absl::StrCat("attribute \"", name, "\" is not an integer"));
  }
  int64_t value = 0;
  TESSERA_RETURN_IF_ERROR(TESSERA_H5(H5Aread(attribute.get(), H5T_NATIVE_INT64, &value)));
  return value;
}

hid_t FileType(DType dtype) {
  switch (dtype) {
    case DType::kU8:
      return H5T_STD_U8LE;
    case DType::kI32:
      return H5T_STD_I32LE;
    case DType::kI64:
      return H5T_STD_I64LE;
    default:
      return H5T_IEEE_F32LE;
  }
}

hid_t MemoryType(DType dtype) {
  switch (dtype) {
    case DType::kU8:
      return H5T_NATIVE_UINT8;
    case DType::kI32:
      return H5T_NATIVE_INT32;
    case DType::kI64:
      return H5T_NATIVE_INT64;
    default:
      return H5T_NATIVE_FLOAT;
  }
}

std::string TypeName(DType dtype) {
  switch (dtype) {
    case DType::kU8:
      return "uint8";
    case DType::kI32:
      return "int32";
    case DType::kI64:
      return "int64";
    case DType::kF32:
      return "float32";
    default:
      return std::string(DTypeName(dtype));
  }
}

std::string TypeName(hid_t type) {
  H5Lock lock;
  const size_t bits = H5Tget_size(type) * 8;
  switch (H5Tget_class(type)) {
    case H5T_INTEGER:
      return absl::StrCat(H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int", bits);
    case H5T_FLOAT:
      return absl::StrCat("float", bits);
    case H5T_STRING:
      return "string";
    default:
      return "a non-numeric type";
  }
}

bool TypeMatches(hid_t type, DType dtype) {
  H5Lock lock;
  const H5T_class_t type_class = H5Tget_class(type);
  if (H5Tget_size(type) != DTypeSize(dtype)) return false;
  if (dtype == DType::kF32) return type_class == H5T_FLOAT;
  if (type_class != H5T_INTEGER) return false;
  return (H5Tget_sign(type) == H5T_SGN_NONE) == (dtype == DType::kU8);
}

absl::StatusOr<std::vector<int64_t>> DatasetDims(hid_t dataset) {
  H5Lock lock;
  TESSERA_ASSIGN_OR_RETURN(H5Id space, TESSERA_H5_ID(H5Dget_space(dataset)));
  const int rank = H5Sget_simple_extent_ndims(space.get());
  TESSERA_RETURN_IF_ERROR(TESSERA_H5(rank));
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  TESSERA_RETURN_IF_ERROR(TESSERA_H5(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr)));
  return std::vector<int64_t>(dims.begin(), dims.end());
}

}  // namespace h5
}  // namespace tessera
