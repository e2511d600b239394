// Checked HDF5 calls, owned handles and the process-wide HDF5 lock.
//
// Debian's HDF5 is the serial, non-thread-safe build, so every HDF5 call in
// tessera happens while holding the one process-wide H5Lock (a recursive
// mutex: a locked function may call another). Readers make their calls from
// their own I/O thread under this lock; importers and validators from the
// caller's thread.
//
// Every call is checked: TESSERA_H5(H5Dread(...)) yields a DataError naming the
// HDF5 function, our file:line and HDF5's own description of the failure.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/tensor/dtype.h"

namespace tessera {

// Holds the process-wide HDF5 lock for its lifetime. The first lock on each
// thread also turns off HDF5's automatic printing of its error stack to
// stderr (per thread in a thread-safe HDF5): errors reach the user through
// our Status messages instead.
class H5Lock {
 public:
  H5Lock();
  ~H5Lock();
  H5Lock(const H5Lock&) = delete;
  H5Lock& operator=(const H5Lock&) = delete;
};

// Owns one HDF5 identifier (file, dataset, dataspace, datatype, attribute or
// property list) and closes it with the matching H5?close.
class H5Id {
 public:
  H5Id() = default;
  explicit H5Id(hid_t id) : id_(id) {}
  ~H5Id() { Reset(); }
  H5Id(H5Id&& other) noexcept : id_(other.id_) { other.id_ = -1; }
  H5Id& operator=(H5Id&& other) noexcept {
    if (this != &other) {
      Reset();
      id_ = other.id_;
      other.id_ = -1;
    }
    return *this;
  }
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void Reset();

 private:
  hid_t id_ = -1;
};

namespace h5 {

// A DataError for a failed HDF5 call `expression` made at file:line, with the
// description HDF5 left on its error stack (which this clears).
absl::Status Failure(absl::string_view expression, const char* file, int line);

// HDF5 reports failure as a negative herr_t, hid_t or htri_t.
template <typename T>
absl::Status Check(T result, absl::string_view expression, const char* file, int line) {
  if (result < 0) return Failure(expression, file, line);
  return absl::OkStatus();
}
inline absl::StatusOr<H5Id> CheckId(hid_t id, absl::string_view expression, const char* file,
                                    int line) {
  if (id < 0) return Failure(expression, file, line);
  return H5Id(id);
}

// Prefixes a status message with "<path>: " so the user learns which file.
absl::Status InFile(absl::string_view path, const absl::Status& status);

// Opens `path` read-only (DataError naming the path if it is missing or not
// HDF5, truncated files included).
absl::StatusOr<H5Id> OpenFileReadOnly(const std::string& path);

// Creates dataset `path` in `file` (any groups on the path too) of
// `file_type` and shape `dims` (a scalar when empty), contiguous.
absl::StatusOr<H5Id> CreateDataset(hid_t file, const std::string& path, hid_t file_type,
                                   const std::vector<hsize_t>& dims);

// Root attributes. Strings are stored as fixed-length ASCII, integers as i64.
absl::Status WriteStringAttribute(hid_t object, const char* name, absl::string_view value);
absl::Status WriteIntAttribute(hid_t object, const char* name, int64_t value);
// NotFound (plain status) when the attribute is absent; DataError when unreadable.
absl::StatusOr<std::string> ReadStringAttribute(hid_t object, const char* name);
absl::StatusOr<int64_t> ReadIntAttribute(hid_t object, const char* name);

// The HDF5 types a DType is stored as (little-endian standard types) and read
// into (native types). Only u8, i32, i64 and f32 occur in shards.
hid_t FileType(DType dtype);
hid_t MemoryType(DType dtype);
// "uint8", "int32", "float32", … for a DType or an HDF5 datatype.
std::string TypeName(DType dtype);
std::string TypeName(hid_t type);
// True when an HDF5 datatype stores exactly `dtype` (class, size and sign).
bool TypeMatches(hid_t type, DType dtype);

// The dimensions of an open dataset.
absl::StatusOr<std::vector<int64_t>> DatasetDims(hid_t dataset);

}  // namespace h5
}  // namespace tessera

// Status of one HDF5 call that returns herr_t / htri_t / hid_t (not owned).
#define TESSERA_H5(expr) ::tessera::h5::Check((expr), #expr, __FILE__, __LINE__)
// StatusOr<H5Id> owning the identifier an HDF5 call returns.
#define TESSERA_H5_ID(expr) ::tessera::h5::CheckId((expr), #expr, __FILE__, __LINE__)
