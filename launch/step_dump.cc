#include "launch/step_dump.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/hdf5/hdf5_util.h"

namespace tessera {
namespace {

constexpr char kFormat[] = "tessera.step_dump";
constexpr int64_t kVersion = 1;

void PutInts(std::string& out, const std::vector<int64_t>& values) {
  const int64_t n = static_cast<int64_t>(values.size());
  out.append(reinterpret_cast<const char*>(&n), sizeof(n));
  out.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(int64_t));
}

bool GetBytes(const std::string& in, size_t& at, void* out, size_t size) {
  if (at + size > in.size()) return false;
  std::memcpy(out, in.data() + at, size);
  at += size;
  return true;
}

bool GetInts(const std::string& in, size_t& at, std::vector<int64_t>& values) {
  int64_t n = 0;
  if (!GetBytes(in, at, &n, sizeof(n)) || n < 0 || n > (1 << 20)) return false;
  values.resize(static_cast<size_t>(n));
  return GetBytes(in, at, values.data(), values.size() * sizeof(int64_t));
}

std::string Serialize(const std::vector<RecordedPiece>& pieces) {
  std::string out;
  for (const RecordedPiece& p : pieces) {
    PutInts(out, {static_cast<int64_t>(p.name.size()), static_cast<int64_t>(p.dtype),
                  static_cast<int64_t>(p.bytes.size())});
    out.append(p.name);
    PutInts(out, p.global_shape);
    PutInts(out, p.shape);
    PutInts(out, p.offset);
    PutInts(out, p.rows);
    out.append(p.bytes.data(), p.bytes.size());
  }
  return out;
}

absl::Status Deserialize(const std::string& in, int from, std::vector<RecordedPiece>& out) {
  size_t at = 0;
  while (at < in.size()) {
    RecordedPiece p;
    std::vector<int64_t> head;
    bool ok = GetInts(in, at, head) && head.size() == 3 && head[0] >= 0 && head[2] >= 0;
    if (ok) {
      p.name.resize(static_cast<size_t>(head[0]));
      p.dtype = static_cast<DType>(head[1]);
      p.bytes.resize(static_cast<size_t>(head[2]));
      ok = GetBytes(in, at, p.name.data(), p.name.size()) && GetInts(in, at, p.global_shape) &&
           GetInts(in, at, p.shape) && GetInts(in, at, p.offset) && GetInts(in, at, p.rows) &&
           GetBytes(in, at, p.bytes.data(), p.bytes.size());
    }
    if (!ok) return absl::InternalError(absl::StrCat("recorded tensors from rank ", from,
                                                     " are malformed"));
    out.push_back(std::move(p));
  }
  return absl::OkStatus();
}

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Copies piece `p` into the whole tensor `whole` (same name, global shape).
absl::Status Place(const RecordedPiece& p, RecordedPiece& whole) {
  const size_t rank = p.global_shape.size();
  const size_t element = DTypeSize(p.dtype);
  const int64_t count = Numel(p.shape);
  bool fits = p.shape.size() == rank && p.offset.size() == rank && rank > 0 &&
              p.bytes.size() == static_cast<size_t>(count) * element &&
              (p.rows.empty() || static_cast<int64_t>(p.rows.size()) == p.shape[0]);
  std::vector<int64_t> index(rank, 0);
  for (int64_t i = 0; fits && i < count; ++i) {
    int64_t flat = 0;
    for (size_t d = 0; d < rank; ++d) {
      const int64_t at = (d == 0 && !p.rows.empty()) ? p.rows[index[0]] : p.offset[d] + index[d];
      fits = fits && at >= 0 && at < p.global_shape[d];
      flat = flat * p.global_shape[d] + at;
    }
    if (!fits) break;
    std::memcpy(whole.bytes.data() + flat * element, p.bytes.data() + i * element, element);
    for (size_t d = rank; d-- > 0;) {
      if (++index[d] < p.shape[d]) break;
      index[d] = 0;
    }
  }
  if (!fits) return absl::InternalError(absl::StrCat("recorded piece of ", p.name,
                                                     " does not fit its global shape"));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<RecordedPiece>> GatherRecordedPieces(
    parallel::Communicator* world, const std::vector<RecordedPiece>& mine) {
  if (world == nullptr) return mine;
  constexpr int kSizeTag = 81, kDataTag = 82;
  const std::string bytes = Serialize(mine);
  if (world->rank() != 0) {
    int64_t size = static_cast<int64_t>(bytes.size());
    TESSERA_RETURN_IF_ERROR(world->Complete(world->Send(&size, 1, DType::kI64, 0, kSizeTag)));
    if (size > 0) {
      TESSERA_RETURN_IF_ERROR(
          world->Complete(world->Send(bytes.data(), bytes.size(), DType::kU8, 0, kDataTag)));
    }
    return std::vector<RecordedPiece>();
  }
  std::vector<RecordedPiece> all = mine;
  for (int r = 1; r < world->size(); ++r) {
    int64_t size = 0;
    TESSERA_RETURN_IF_ERROR(world->Complete(world->Recv(&size, 1, DType::kI64, r, kSizeTag)));
    if (size == 0) continue;
    std::string in(static_cast<size_t>(size), '\0');
    TESSERA_RETURN_IF_ERROR(
        world->Complete(world->Recv(in.data(), in.size(), DType::kU8, r, kDataTag)));
    TESSERA_RETURN_IF_ERROR(Deserialize(in, r, all));
  }
  return all;
}

absl::StatusOr<std::vector<RecordedPiece>> AssemblePieces(
    const std::vector<RecordedPiece>& pieces) {
  std::map<std::string, RecordedPiece> whole;
  for (const RecordedPiece& p : pieces) {
    auto [it, fresh] = whole.try_emplace(p.name);
    RecordedPiece& w = it->second;
    if (fresh) {
      w.name = p.name;
      w.dtype = p.dtype;
      w.global_shape = w.shape = p.global_shape;
      w.offset.assign(p.global_shape.size(), 0);
      w.bytes.assign(static_cast<size_t>(Numel(p.global_shape)) * DTypeSize(p.dtype), 0);
    } else if (w.global_shape != p.global_shape || w.dtype != p.dtype) {
      return absl::InternalError(absl::StrCat(p.name, " was recorded with two global shapes"));
    }
    TESSERA_RETURN_IF_ERROR(Place(p, w));
  }
  std::vector<RecordedPiece> out;
  for (auto& [name, tensor] : whole) out.push_back(std::move(tensor));
  return out;
}

namespace {

absl::Status WriteDataset(hid_t file, const std::string& path, DType dtype,
                          const std::vector<int64_t>& shape, const void* data) {
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  TESSERA_ASSIGN_OR_RETURN(H5Id dataset,
                           h5::CreateDataset(file, path, h5::FileType(dtype), dims));
  return TESSERA_H5(
      H5Dwrite(dataset.get(), h5::MemoryType(dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, data));
}

absl::Status WriteContents(const std::string& path, const StepDumpContents& c) {
  H5Lock lock;
  TESSERA_ASSIGN_OR_RETURN(H5Id file, TESSERA_H5_ID(H5Fcreate(path.c_str(), H5F_ACC_TRUNC,
                                                              H5P_DEFAULT, H5P_DEFAULT)));
  TESSERA_RETURN_IF_ERROR(h5::WriteStringAttribute(file.get(), "format", kFormat));
  TESSERA_RETURN_IF_ERROR(h5::WriteIntAttribute(file.get(), "version", kVersion));
  TESSERA_RETURN_IF_ERROR(h5::WriteStringAttribute(file.get(), "model", c.model));
  TESSERA_RETURN_IF_ERROR(h5::WriteStringAttribute(file.get(), "layout", c.layout));
  TESSERA_RETURN_IF_ERROR(h5::WriteStringAttribute(file.get(), "config", c.config));
  TESSERA_RETURN_IF_ERROR(h5::WriteIntAttribute(file.get(), "step", c.step));
  for (const ParamInfo& info : c.parameters->infos()) {
    const std::vector<int64_t> shape(info.global_shape.begin(), info.global_shape.end());
    TESSERA_RETURN_IF_ERROR(WriteDataset(file.get(), "parameters/" + info.name, DType::kF32,
                                         shape, c.values + info.offset));
    TESSERA_RETURN_IF_ERROR(WriteDataset(file.get(), "gradients/" + info.name, DType::kF32,
                                         shape, c.gradients + info.offset));
  }
  for (const RecordedPiece& t : c.tensors) {
    TESSERA_RETURN_IF_ERROR(
        WriteDataset(file.get(), t.name, t.dtype, t.global_shape, t.bytes.data()));
  }
  for (const auto& [name, value] : c.losses) {
    TESSERA_ASSIGN_OR_RETURN(H5Id dataset, h5::CreateDataset(file.get(), "losses/" + name,
                                                             H5T_IEEE_F64LE, {}));
    TESSERA_RETURN_IF_ERROR(TESSERA_H5(
        H5Dwrite(dataset.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, &value)));
  }
  return TESSERA_H5(H5Fflush(file.get(), H5F_SCOPE_GLOBAL));
}

}  // namespace

absl::Status WriteStepDump(const std::string& path, const StepDumpContents& contents) {
  const std::string temporary = path + ".tmp";
  absl::Status status = WriteContents(temporary, contents);
  if (status.ok()) {
    std::error_code error;
    std::filesystem::rename(temporary, path, error);
    if (error) status = absl::InternalError(absl::StrCat("rename: ", error.message()));
  }
  if (status.ok()) return status;
  std::remove(temporary.c_str());
  return UsageError(absl::StrCat("--out \"", path, "\": cannot write the dump: ",
                                 status.message()));
}

}  // namespace tessera
