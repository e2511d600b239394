#include "data/fashion_mnist.h"

#include <sys/stat.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "data/dataset_writer.h"
#include "data/idx.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {
namespace {

constexpr int kNumClasses = 10;

bool IsFile(const std::string& path) {
  struct stat info;
  return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

// `dir`/`name`.gz if present, else `dir`/`name`.
absl::StatusOr<std::string> FindIdxFile(const std::string& dir, const std::string& name) {
  const std::string plain = absl::StrCat(dir, "/", name);
  const std::string gz = plain + ".gz";
  if (IsFile(gz)) return gz;
  if (IsFile(plain)) return plain;
  return DataError(absl::StrCat(dir, ": neither ", name, ".gz nor ", name,
                                " found (Fashion-MNIST IDX files; Debian installs them with "
                                "the dataset-fashion-mnist package in ",
                                kFashionMnistSystemDir, ")"));
}

absl::Status ImportSplit(const std::string& source_dir, const std::string& prefix,
                         const std::string& out_dir, int64_t samples_per_shard) {
  TESSERA_ASSIGN_OR_RETURN(std::string images_path,
                           FindIdxFile(source_dir, prefix + "-images-idx3-ubyte"));
  TESSERA_ASSIGN_OR_RETURN(std::string labels_path,
                           FindIdxFile(source_dir, prefix + "-labels-idx1-ubyte"));
  TESSERA_ASSIGN_OR_RETURN(IdxArray images, ReadIdxU8(images_path, 3));  // [N, H, W]
  TESSERA_ASSIGN_OR_RETURN(IdxArray labels, ReadIdxU8(labels_path, 1));  // [N]
  if (images.dims[0] != labels.dims[0]) {
    return DataError(absl::StrCat(images_path, " holds ", images.dims[0], " images but ",
                                  labels_path, " holds ", labels.dims[0], " labels"));
  }
  if (images.dims[1] == 0 || images.dims[2] == 0) {
    return DataError(
        absl::StrCat(images_path, ": images of size ", images.dims[1], "x", images.dims[2]));
  }
  std::vector<int32_t> labels32(labels.data.begin(), labels.data.end());
  for (size_t i = 0; i < labels32.size(); ++i) {
    if (labels32[i] >= kNumClasses) {
      return DataError(absl::StrCat(labels_path, ": label ", labels32[i], " of sample ", i,
                                    " is not below ", kNumClasses));
    }
  }
  ImageArrays arrays;
  arrays.pixels = images.data.data();
  arrays.labels = labels32.data();
  arrays.count = images.dims[0];
  arrays.channels = 1;
  arrays.height = static_cast<int>(images.dims[1]);
  arrays.width = static_cast<int>(images.dims[2]);
  return WriteImagesDataset(out_dir, arrays, kNumClasses, samples_per_shard,
                            absl::StrCat("fashion-mnist IDX: ", images_path, ", ", labels_path));
}

}  // namespace

absl::Status ImportFashionMnist(const std::string& source_dir, const std::string& out_dir,
                                int64_t samples_per_shard) {
  if (samples_per_shard <= 0) {
    return UsageError(absl::StrCat("samples_per_shard must be positive, got ", samples_per_shard));
  }
  TESSERA_RETURN_IF_ERROR(ImportSplit(source_dir, "train", out_dir + "/train", samples_per_shard));
  return ImportSplit(source_dir, "t10k", out_dir + "/test", samples_per_shard);
}

}  // namespace tessera
