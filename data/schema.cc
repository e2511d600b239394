#include "data/schema.h"

#include <type_traits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/hdf5/hdf5_util.h"

namespace tessera {

static_assert(std::is_same_v<hid_t, int64_t>, "ValidateOpenShard passes hid_t as int64_t");

const DatasetSpec* Schema::FindDataset(absl::string_view dataset) const {
  for (const DatasetSpec& spec : datasets) {
    if (dataset == spec.name) return &spec;
  }
  return nullptr;
}

const std::vector<Schema>& AllSchemas() {
  static const auto* schemas = new std::vector<Schema>{
      {"images",
       1,
       "N",
       {{"images", DType::kU8, 4, "N"},  // [N, C, H, W]
        {"labels", DType::kI32, 1, "N"}}},
      {"tokens",
       1,
       "D",
       {{"tokens", DType::kI32, 1, "T"},  // documents concatenated
        {"doc_offsets", DType::kI64, 1, "D+1", false, "T"},
        {"loss_mask", DType::kU8, 1, "T", true}}},  // 1 where a token is a target that counts
      {"interactions",
       1,
       "U",
       {{"user_ids", DType::kI64, 1, "U"},
        {"offsets", DType::kI64, 1, "U+1", false, "E"},  // user u owns [offsets[u], offsets[u+1])
        {"item_ids", DType::kI64, 1, "E"},
        {"timestamps", DType::kI64, 1, "E"},
        {"ratings", DType::kF32, 1, "E", true}}},
  };
  return *schemas;
}

absl::StatusOr<const Schema*> FindSchema(absl::string_view name) {
  std::vector<std::string> known;
  for (const Schema& schema : AllSchemas()) {
    if (name == schema.name) return &schema;
    known.push_back(schema.name);
  }
  return DataError(
      absl::StrCat("unknown schema \"", name, "\" (known: ", absl::StrJoin(known, ", "), ")"));
}

namespace {

// "D+1" → {"D", 1}; "N" → {"N", 0}.
std::pair<std::string, int64_t> ParseRows(absl::string_view rows) {
  const size_t plus = rows.find('+');
  if (plus == absl::string_view::npos) return {std::string(rows), 0};
  int64_t extra = 0;
  TESSERA_CHECK(absl::SimpleAtoi(rows.substr(plus + 1), &extra));
  return {std::string(rows.substr(0, plus)), extra};
}

// A dataset may not declare more bytes than the file can hold: its element
// count times element size must not overflow, a contiguous dataset must have
// all its bytes stored, and no layout may declare more than
// kMaxDeclaredToFileRatio times the file's size (compression ratios beyond
// that are not data, they are a forged header). Checked before anything is
// read or allocated.
constexpr int64_t kMaxDeclaredToFileRatio = 1024;

absl::Status CheckDeclaredSize(hid_t file, hid_t dataset, const DatasetSpec& spec,
                               const std::vector<int64_t>& dims) {
  int64_t bytes = static_cast<int64_t>(DTypeSize(spec.dtype));
  for (int64_t d : dims) {
    if (d < 0 || __builtin_mul_overflow(bytes, d, &bytes)) {
      return DataError(absl::StrCat("dataset \"", spec.name, "\" declares a shape [",
                                    absl::StrJoin(dims, ", "), "] whose size overflows 64 bits"));
    }
  }
  hsize_t file_size = 0;
  TESSERA_RETURN_IF_ERROR(TESSERA_H5(H5Fget_filesize(file, &file_size)));
  const auto declared = absl::StrCat("dataset \"", spec.name, "\" declares [",
                                     absl::StrJoin(dims, ", "), "] = ", bytes, " bytes");
  if (static_cast<uint64_t>(bytes) / kMaxDeclaredToFileRatio > file_size) {
    return DataError(absl::StrCat(declared, ", but the file has only ", file_size, " bytes"));
  }
  TESSERA_ASSIGN_OR_RETURN(H5Id plist, TESSERA_H5_ID(H5Dget_create_plist(dataset)));
  const H5D_layout_t layout = H5Pget_layout(plist.get());
  TESSERA_RETURN_IF_ERROR(TESSERA_H5(layout));
  const hsize_t stored = H5Dget_storage_size(dataset);
  if (layout == H5D_CONTIGUOUS && stored != static_cast<hsize_t>(bytes)) {
    return DataError(absl::StrCat(declared, ", but the file stores ", stored, " for it"));
  }
  return absl::OkStatus();
}

struct CountSource {
  int64_t count;
  std::string dataset;
  int64_t extra;
};

// Checks that `offsets` starts at 0, never decreases and ends at `total`.
absl::Status CheckOffsets(hid_t dataset, const DatasetSpec& spec, int64_t rows, int64_t total,
                          const std::string& total_dataset) {
  std::vector<int64_t> offsets(static_cast<size_t>(rows));
  TESSERA_RETURN_IF_ERROR(TESSERA_H5(
      H5Dread(dataset, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, offsets.data())));
  if (offsets.front() != 0) {
    return DataError(
        absl::StrCat("dataset \"", spec.name, "\" starts at ", offsets.front(), ", expected 0"));
  }
  for (size_t i = 1; i < offsets.size(); ++i) {
    if (offsets[i] < offsets[i - 1]) {
      return DataError(absl::StrCat("dataset \"", spec.name, "\" decreases at entry ", i, " (",
                                    offsets[i - 1], " then ", offsets[i], ")"));
    }
  }
  if (offsets.back() != total) {
    return DataError(absl::StrCat("dataset \"", spec.name, "\" ends at ", offsets.back(), ", \"",
                                  total_dataset, "\" has ", total, " rows"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ShardInfo> ValidateOpenShardImpl(hid_t file, absl::string_view expected_schema) {
  ShardInfo info;
  auto schema_name = h5::ReadStringAttribute(file, kSchemaAttribute);
  if (absl::IsNotFound(schema_name.status())) {
    return DataError(absl::StrCat("no \"", kSchemaAttribute, "\" attribute (not a tessera shard)"));
  }
  TESSERA_RETURN_IF_ERROR(schema_name.status());
  info.schema = *schema_name;
  if (info.schema != expected_schema) {
    return DataError(
        absl::StrCat("schema is \"", info.schema, "\", expected \"", expected_schema, "\""));
  }
  TESSERA_ASSIGN_OR_RETURN(const Schema* schema, FindSchema(info.schema));

  auto version = h5::ReadIntAttribute(file, kVersionAttribute);
  if (absl::IsNotFound(version.status())) {
    return DataError(absl::StrCat("no \"", kVersionAttribute, "\" attribute"));
  }
  TESSERA_RETURN_IF_ERROR(version.status());
  info.version = *version;
  if (info.version != schema->version) {
    return DataError(absl::StrCat("version is ", info.version, ", this build reads ", schema->name,
                                  " version ", schema->version));
  }

  std::map<std::string, CountSource> counts;
  std::vector<std::pair<const DatasetSpec*, H5Id>> offsets_datasets;
  for (const DatasetSpec& spec : schema->datasets) {
    const htri_t exists = H5Lexists(file, spec.name, H5P_DEFAULT);
    TESSERA_RETURN_IF_ERROR(TESSERA_H5(exists));
    if (exists == 0) {
      if (spec.optional) continue;
      return DataError(
          absl::StrCat("missing dataset \"", spec.name, "\" (schema ", schema->name, ")"));
    }
    TESSERA_ASSIGN_OR_RETURN(H5Id dataset, TESSERA_H5_ID(H5Dopen2(file, spec.name, H5P_DEFAULT)));
    TESSERA_ASSIGN_OR_RETURN(H5Id type, TESSERA_H5_ID(H5Dget_type(dataset.get())));
    if (!h5::TypeMatches(type.get(), spec.dtype)) {
      return DataError(absl::StrCat("dataset \"", spec.name, "\" has type ",
                                    h5::TypeName(type.get()), ", expected ",
                                    h5::TypeName(spec.dtype)));
    }
    TESSERA_ASSIGN_OR_RETURN(std::vector<int64_t> dims, h5::DatasetDims(dataset.get()));
    if (static_cast<int>(dims.size()) != spec.rank) {
      return DataError(absl::StrCat("dataset \"", spec.name, "\" has rank ", dims.size(),
                                    ", expected ", spec.rank));
    }
    TESSERA_RETURN_IF_ERROR(CheckDeclaredSize(file, dataset.get(), spec, dims));
    const auto [symbol, extra] = ParseRows(spec.rows);
    const int64_t count = dims[0] - extra;
    if (count < 0) {
      return DataError(absl::StrCat("dataset \"", spec.name, "\" has ", dims[0],
                                    " rows, needs at least ", extra));
    }
    auto [it, inserted] = counts.try_emplace(symbol, CountSource{count, spec.name, extra});
    if (!inserted && it->second.count != count) {
      const CountSource& first = it->second;
      if (first.extra == extra) {
        return DataError(absl::StrCat("dataset \"", spec.name, "\" has ", dims[0], " rows, \"",
                                      first.dataset, "\" has ", first.count + first.extra));
      }
      return DataError(absl::StrCat("dataset \"", spec.name, "\" has ", dims[0], " rows, expected ",
                                    first.count + extra, " (", symbol,
                                    extra > 0 ? absl::StrCat("+", extra) : "", " where \"",
                                    first.dataset, "\" has ", symbol, " = ", first.count, ")"));
    }
    info.dims[spec.name] = dims;
    if (spec.offsets_into != nullptr) offsets_datasets.emplace_back(&spec, std::move(dataset));
  }

  for (const auto& [spec, dataset] : offsets_datasets) {
    const auto total = counts.find(spec->offsets_into);
    TESSERA_CHECK(total != counts.end());  // the table always names a required dataset
    TESSERA_RETURN_IF_ERROR(CheckOffsets(dataset.get(), *spec, info.dims[spec->name][0],
                                         total->second.count, total->second.dataset));
  }
  info.num_samples = counts.at(schema->sample_rows).count;
  return info;
}

}  // namespace

absl::StatusOr<ShardInfo> ValidateOpenShard(int64_t file, const std::string& path,
                                            absl::string_view expected_schema) {
  H5Lock lock;
  auto info = ValidateOpenShardImpl(file, expected_schema);
  if (!info.ok()) return h5::InFile(path, info.status());
  return info;
}

absl::StatusOr<ShardInfo> ValidateShard(const std::string& path,
                                        absl::string_view expected_schema) {
  H5Lock lock;
  TESSERA_ASSIGN_OR_RETURN(H5Id file, h5::OpenFileReadOnly(path));
  return ValidateOpenShard(file.get(), path, expected_schema);
}

}  // namespace tessera
