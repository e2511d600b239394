#include "data/value_checks.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "data/hyperslab.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/hdf5/hdf5_util.h"

namespace tessera {
namespace {

constexpr int64_t kChunkElements = int64_t{1} << 20;  // verify's read size

absl::Status ValueError(const ValueSource& source, int64_t i, absl::string_view problem) {
  return DataError(absl::StrCat(source.path, ": dataset \"", source.dataset, "\" entry ",
                                source.first + i, " ", problem));
}

template <typename T>
absl::Status CheckBelow(const T* values, int64_t n, int64_t limit, const char* limit_name,
                        const ValueSource& source) {
  for (int64_t i = 0; i < n; ++i) {
    if (values[i] < 0 || values[i] >= limit) {
      return ValueError(
          source, i, absl::StrCat("is ", values[i], ", outside [0, ", limit_name, " ", limit, ")"));
    }
  }
  return absl::OkStatus();
}

// Calls `check(values, n, first)` on consecutive chunks of the rank-1 dataset
// `name` read as T.
template <typename T>
absl::Status ForEachChunk(hid_t file, const char* name, DType dtype,
                          const std::function<absl::Status(const T*, int64_t, int64_t)>& check) {
  TESSERA_ASSIGN_OR_RETURN(H5Id dataset, TESSERA_H5_ID(H5Dopen2(file, name, H5P_DEFAULT)));
  TESSERA_ASSIGN_OR_RETURN(std::vector<int64_t> dims, h5::DatasetDims(dataset.get()));
  std::vector<T> chunk;
  for (int64_t first = 0; first < dims[0]; first += kChunkElements) {
    const int64_t n = std::min(kChunkElements, dims[0] - first);
    chunk.resize(static_cast<size_t>(n));
    TESSERA_RETURN_IF_ERROR(ReadRange1D(dataset.get(), name, dtype, first, n, chunk.data()));
    TESSERA_RETURN_IF_ERROR(check(chunk.data(), n, first));
  }
  return absl::OkStatus();
}

absl::Status VerifyTimestamps(hid_t file, const std::string& path) {
  TESSERA_ASSIGN_OR_RETURN(H5Id dataset, TESSERA_H5_ID(H5Dopen2(file, "offsets", H5P_DEFAULT)));
  TESSERA_ASSIGN_OR_RETURN(std::vector<int64_t> dims, h5::DatasetDims(dataset.get()));
  std::vector<int64_t> offsets(static_cast<size_t>(dims[0]));  // [U+1], validated monotone
  TESSERA_RETURN_IF_ERROR(
      ReadRange1D(dataset.get(), "offsets", DType::kI64, 0, dims[0], offsets.data()));
  size_t user = 0;
  int64_t previous = 0;
  return ForEachChunk<int64_t>(
      file, "timestamps", DType::kI64,
      [&](const int64_t* values, int64_t n, int64_t first) -> absl::Status {
        for (int64_t i = 0; i < n; ++i) {
          const int64_t event = first + i;
          while (offsets[user + 1] <= event) ++user;
          if (event > offsets[user] && values[i] < previous) {
            return ValueError(
                {path, "timestamps", first}, i,
                absl::StrCat("is ", values[i], ", before the user's previous event (", previous,
                             ") at row ", user, ": timestamps must not decrease within a user"));
          }
          previous = values[i];
        }
        return absl::OkStatus();
      });
}

absl::Status VerifyValues(hid_t file, const std::string& path, const ShardInfo& info,
                          const ValueLimits& limits) {
  if (info.schema == "images") {
    return ForEachChunk<int32_t>(
        file, "labels", DType::kI32, [&](const int32_t* v, int64_t n, int64_t first) {
          return CheckIdsBelow(v, n, limits.num_classes, "num_classes", {path, "labels", first});
        });
  }
  if (info.schema == "tokens") {
    TESSERA_RETURN_IF_ERROR(ForEachChunk<int32_t>(
        file, "tokens", DType::kI32, [&](const int32_t* v, int64_t n, int64_t first) {
          return CheckIdsBelow(v, n, limits.vocab_size, "vocab_size", {path, "tokens", first});
        }));
    if (!info.dims.count("loss_mask")) return absl::OkStatus();
    return ForEachChunk<uint8_t>(file, "loss_mask", DType::kU8,
                                 [&](const uint8_t* v, int64_t n, int64_t first) {
                                   return CheckLossMask(v, n, {path, "loss_mask", first});
                                 });
  }
  TESSERA_RETURN_IF_ERROR(ForEachChunk<int64_t>(
      file, "item_ids", DType::kI64, [&](const int64_t* v, int64_t n, int64_t first) {
        return CheckIdsBelow(v, n, limits.num_items, "num_items", {path, "item_ids", first});
      }));
  TESSERA_RETURN_IF_ERROR(VerifyTimestamps(file, path));
  if (!info.dims.count("ratings")) return absl::OkStatus();
  return ForEachChunk<float>(file, "ratings", DType::kF32,
                             [&](const float* v, int64_t n, int64_t first) {
                               return CheckRatings(v, n, {path, "ratings", first});
                             });
}

}  // namespace

absl::StatusOr<ValueLimits> ValueLimitsOf(const DataManifest& manifest, const std::string& dir) {
  ValueLimits limits;
  if (manifest.schema() == "images") {
    TESSERA_ASSIGN_OR_RETURN(limits.num_classes, IntAttribute(manifest, "num_classes", dir));
  } else if (manifest.schema() == "tokens") {
    TESSERA_ASSIGN_OR_RETURN(limits.vocab_size, IntAttribute(manifest, "vocab_size", dir));
  } else if (manifest.schema() == "interactions") {
    TESSERA_ASSIGN_OR_RETURN(limits.num_items, IntAttribute(manifest, "num_items", dir));
  }
  return limits;
}

absl::Status CheckIdsBelow(const int32_t* values, int64_t n, int64_t limit, const char* limit_name,
                           const ValueSource& source) {
  return CheckBelow(values, n, limit, limit_name, source);
}

absl::Status CheckIdsBelow(const int64_t* values, int64_t n, int64_t limit, const char* limit_name,
                           const ValueSource& source) {
  return CheckBelow(values, n, limit, limit_name, source);
}

absl::Status CheckLossMask(const uint8_t* values, int64_t n, const ValueSource& source) {
  for (int64_t i = 0; i < n; ++i) {
    if (values[i] > 1) return ValueError(source, i, absl::StrCat("is ", values[i], ", not 0 or 1"));
  }
  return absl::OkStatus();
}

absl::Status CheckRatings(const float* values, int64_t n, const ValueSource& source) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(values[i])) {
      return ValueError(source, i, absl::StrCat("is ", values[i], ", not a finite number"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckTimestampsOrdered(const int64_t* values, int64_t n, int64_t user,
                                    const ValueSource& source) {
  for (int64_t i = 1; i < n; ++i) {
    if (values[i] < values[i - 1]) {
      return ValueError(
          source, i,
          absl::StrCat("is ", values[i], ", before the user's previous event (", values[i - 1],
                       ") at row ", user, ": timestamps must not decrease within a user"));
    }
  }
  return absl::OkStatus();
}

absl::Status VerifyShardValues(const std::string& path, const ShardInfo& info,
                               const ValueLimits& limits) {
  H5Lock lock;
  TESSERA_ASSIGN_OR_RETURN(H5Id file, h5::OpenFileReadOnly(path));
  absl::Status status = VerifyValues(file.get(), path, info, limits);
  if (!status.ok() && !absl::StartsWith(status.message(), path)) return h5::InFile(path, status);
  return status;
}

}  // namespace tessera
