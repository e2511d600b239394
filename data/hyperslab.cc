#include "data/hyperslab.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {

absl::Status ReadRange1D(hid_t dataset, const char* name, DType dtype, int64_t begin, int64_t count,
                         void* out) {
  TESSERA_ASSIGN_OR_RETURN(std::vector<int64_t> dims, h5::DatasetDims(dataset));
  if (dims.size() != 1 || begin < 0 || count < 0 || begin > dims[0] - count) {
    return DataError(absl::StrCat("dataset \"", name, "\": range [", begin, ", ", begin + count,
                                  ") is outside its ", dims.empty() ? 0 : dims[0], " entries"));
  }
  if (count == 0) return absl::OkStatus();
  TESSERA_ASSIGN_OR_RETURN(H5Id file_space, TESSERA_H5_ID(H5Dget_space(dataset)));
  const hsize_t start = static_cast<hsize_t>(begin), extent = static_cast<hsize_t>(count);
  TESSERA_RETURN_IF_ERROR(TESSERA_H5(
      H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, &start, nullptr, &extent, nullptr)));
  TESSERA_ASSIGN_OR_RETURN(H5Id memory_space, TESSERA_H5_ID(H5Screate_simple(1, &extent, nullptr)));
  return TESSERA_H5(H5Dread(dataset, h5::MemoryType(dtype), memory_space.get(), file_space.get(),
                            H5P_DEFAULT, out));
}

}  // namespace tessera
