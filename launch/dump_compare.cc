#include "launch/dump_compare.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "runtime/base/status.h"
#include "runtime/hdf5/hdf5_util.h"

namespace tessera {
namespace {

herr_t CollectDataset(hid_t, const char* name, const H5O_info_t* info, void* names) {
  if (info->type == H5O_TYPE_DATASET) {
    static_cast<std::vector<std::string>*>(names)->push_back(name);
  }
  return 0;
}

// The dataset at `path` as doubles (HDF5 converts), with its dimensions.
absl::StatusOr<std::vector<double>> ReadAsDoubles(hid_t file, const std::string& path,
                                                  std::vector<int64_t>* dims) {
  TESSERA_ASSIGN_OR_RETURN(H5Id dataset,
                           TESSERA_H5_ID(H5Dopen2(file, path.c_str(), H5P_DEFAULT)));
  TESSERA_ASSIGN_OR_RETURN(*dims, h5::DatasetDims(dataset.get()));
  int64_t count = 1;
  for (int64_t d : *dims) count *= d;
  std::vector<double> values(static_cast<size_t>(count));
  if (count > 0) {
    TESSERA_RETURN_IF_ERROR(TESSERA_H5(H5Dread(dataset.get(), H5T_NATIVE_DOUBLE, H5S_ALL,
                                               H5S_ALL, H5P_DEFAULT, values.data())));
  }
  return values;
}

DatasetDifference Difference(const std::string& name, const std::vector<double>& a,
                             const std::vector<double>& b) {
  DatasetDifference d;
  d.name = name;
  double max_diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d.max_abs_reference = std::max(d.max_abs_reference, std::fabs(a[i]));
    const double diff = std::fabs(a[i] - b[i]);
    max_diff = std::isnan(diff) ? INFINITY : std::max(max_diff, diff);
  }
  d.relative = d.max_abs_reference > 0 ? max_diff / d.max_abs_reference : max_diff;
  return d;
}

}  // namespace

absl::StatusOr<std::vector<DatasetDifference>> CompareDumps(const std::string& reference,
                                                            const std::string& other) {
  H5Lock lock;
  TESSERA_ASSIGN_OR_RETURN(H5Id a, h5::OpenFileReadOnly(reference));
  TESSERA_ASSIGN_OR_RETURN(H5Id b, h5::OpenFileReadOnly(other));
  std::vector<std::string> names;
  TESSERA_RETURN_IF_ERROR(h5::InFile(
      reference, TESSERA_H5(H5Ovisit(a.get(), H5_INDEX_NAME, H5_ITER_INC, CollectDataset,
                                     &names))));
  std::vector<DatasetDifference> out;
  for (const std::string& name : names) {
    std::vector<int64_t> dims_a, dims_b;
    auto values_a = ReadAsDoubles(a.get(), name, &dims_a);
    if (!values_a.ok()) return h5::InFile(reference, values_a.status());
    DatasetDifference missing;
    missing.name = name;
    missing.missing = true;
    if (H5Lexists(b.get(), name.c_str(), H5P_DEFAULT) <= 0) {
      out.push_back(missing);
      continue;
    }
    auto values_b = ReadAsDoubles(b.get(), name, &dims_b);
    if (!values_b.ok()) return h5::InFile(other, values_b.status());
    out.push_back(dims_a == dims_b ? Difference(name, *values_a, *values_b) : missing);
  }
  return out;
}

}  // namespace tessera
