#include "launch/model_parallel.h"

#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "models/registry.h"

namespace tessera {
namespace {

using parallel::GroupKind;

// Whether this rank is the one that sends piece `info` (its copies live on
// every rank that differs only in the coordinates the piece is not split
// over; the one with those coordinates at 0 sends it).
bool SendsPiece(const ParamInfo& info, const parallel::Coordinates& c) {
  switch (info.spec.kind) {
    case ParallelSpec::Kind::kExpert:
      return c.edp == 0 && c.etp == 0;
    case ParallelSpec::Kind::kSplit:
      return c.sp == 0 && c.dp == 0;
    case ParallelSpec::Kind::kReplicated:
      break;
  }
  return c.tp == 0 && c.sp == 0 && c.dp == 0;
}

template <typename T>
void Put(std::string& out, const T& value) {
  out.append(reinterpret_cast<const char*>(&value), sizeof(T));
}

template <typename T>
bool Get(const std::string& in, size_t& at, T* value) {
  if (at + sizeof(T) > in.size()) return false;
  std::memcpy(value, in.data() + at, sizeof(T));
  at += sizeof(T);
  return true;
}

// One piece: name, rank, offset[], shape[], then the floats.
void AppendPiece(std::string& out, const ParamInfo& info, const float* values) {
  Put<int32_t>(out, static_cast<int32_t>(info.name.size()));
  out.append(info.name);
  Put<int32_t>(out, static_cast<int32_t>(info.local_shape.rank()));
  for (int d = 0; d < info.local_shape.rank(); ++d) Put<int64_t>(out, info.local_offset[d]);
  for (int d = 0; d < info.local_shape.rank(); ++d) Put<int64_t>(out, info.local_shape[d]);
  out.append(reinterpret_cast<const char*>(values + info.offset),
             static_cast<size_t>(info.local_shape.numel()) * sizeof(float));
}

// Copies a [shape] block at `offset` into the whole tensor `dst` [global].
void CopyBlock(const float* src, const std::vector<int64_t>& offset,
               const std::vector<int64_t>& shape, const Shape& global, float* dst) {
  const int rank = static_cast<int>(shape.size());
  if (rank == 0) {
    dst[0] = src[0];
    return;
  }
  const int64_t run = shape[rank - 1];
  int64_t blocks = 1;
  for (int d = 0; d + 1 < rank; ++d) blocks *= shape[d];
  std::vector<int64_t> index(rank, 0);
  for (int64_t b = 0; b < blocks; ++b) {
    int64_t flat = 0;
    for (int d = 0; d < rank; ++d) flat = flat * global[d] + offset[d] + index[d];
    std::memcpy(dst + flat, src + b * run, static_cast<size_t>(run) * sizeof(float));
    for (int d = rank - 2; d >= 0; --d) {
      if (++index[d] < shape[d]) break;
      index[d] = 0;
    }
  }
}

absl::Status ApplyPieces(const std::string& bytes, int from_rank, ParameterStore& full) {
  size_t at = 0;
  const auto corrupt = [from_rank] {
    return absl::InternalError(absl::StrCat("weights from rank ", from_rank, " are malformed"));
  };
  while (at < bytes.size()) {
    int32_t name_size = 0, rank = 0;
    if (!Get(bytes, at, &name_size) || at + name_size > bytes.size()) return corrupt();
    const std::string name = bytes.substr(at, name_size);
    at += name_size;
    if (!Get(bytes, at, &rank)) return corrupt();
    std::vector<int64_t> offset(rank), shape(rank);
    for (auto& v : offset)
      if (!Get(bytes, at, &v)) return corrupt();
    for (auto& v : shape)
      if (!Get(bytes, at, &v)) return corrupt();
    int64_t count = 1;
    for (int64_t v : shape) count *= v;
    TESSERA_ASSIGN_OR_RETURN(ParameterStore::Id id, full.Find(name));
    const ParamInfo& info = full.info(id);
    bool fits = info.global_shape.rank() == rank;
    for (int d = 0; fits && d < rank; ++d) {
      fits = offset[d] >= 0 && offset[d] + shape[d] <= info.global_shape[d];
    }
    if (!fits || at + count * sizeof(float) > bytes.size()) return corrupt();
    CopyBlock(reinterpret_cast<const float*>(bytes.data() + at), offset, shape,
              info.global_shape, full.param(id).data<float>());
    at += count * sizeof(float);
  }
  return absl::OkStatus();
}

}  // namespace

namespace {
// Whether `message` or any message inside it is a MoeConfig with the
// GLOBAL_BATCH balance scope (by reflection: launch/ names no model).
bool AsksGlobalBalance(const google::protobuf::Message& message) {
  if (const auto* moe = dynamic_cast<const MoeConfig*>(&message)) {
    return moe->balance_scope() == MoeConfig::GLOBAL_BATCH;
  }
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  const google::protobuf::Reflection* reflection = message.GetReflection();
  reflection->ListFields(message, &fields);
  for (const auto* field : fields) {
    if (field->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (field->is_repeated()) {
      for (int i = 0; i < reflection->FieldSize(message, field); ++i) {
        if (AsksGlobalBalance(reflection->GetRepeatedMessage(message, field, i))) return true;
      }
    } else if (AsksGlobalBalance(reflection->GetMessage(message, field))) {
      return true;
    }
  }
  return false;
}

// The ranks a row-sharded table of the model is split over (0: none).
int TableShards(const RunConfig& config, int world_size) {
  const absl::StatusOr<const ModelFamily*> family = FindModelFamily(config);
  if (!family.ok() || !(*family)->table_shards) return 0;
  return (*family)->table_shards(config, world_size);
}

// The communicator for device buffers over `group`'s ranks: `group` itself
// on the CPU, else one made for the run's device (kept in groups.on_device).
absl::StatusOr<parallel::Communicator*> OnDevice(
    const Distributed& d, const std::unique_ptr<parallel::MpiCommunicator>& group,
    ModelParallelGroups& groups) {
  TESSERA_ASSIGN_OR_RETURN(auto device,
                           CreateDeviceCommunicator(d.device_comm, *group, *d.backend));
  if (!device) return group.get();
  groups.on_device.push_back(std::move(device));
  return groups.on_device.back().get();
}

// The table's groups: `shards` consecutive world ranks hold one copy of the
// table; the ranks at the same index of every copy own the same rows.
absl::Status BuildTableGroups(const Distributed& d, int shards, ModelParallelGroups& groups) {
  const int world = d.world->size(), me = d.world->rank();
  std::vector<int> copy, replicas;
  for (int r = me / shards * shards; r < (me / shards + 1) * shards; ++r) copy.push_back(r);
  for (int r = me % shards; r < world; r += shards) replicas.push_back(r);
  TESSERA_ASSIGN_OR_RETURN(groups.table, d.world->CreateSubgroup(copy, "table"));
  TESSERA_ASSIGN_OR_RETURN(groups.table_replicas,
                           d.world->CreateSubgroup(replicas, "table_replicas"));
  // The table lives in host memory (row_sharded_table.h): its MPI groups.
  groups.view.table = groups.table.get();
  groups.view.table_replicas = groups.table_replicas.get();
  return absl::OkStatus();
}

absl::Status MaybeBuildTableGroups(const RunConfig& config, const Distributed& d,
                                   ModelParallelGroups& groups) {
  const int shards = TableShards(config, d.world->size());
  if (shards <= 0) return absl::OkStatus();
  return BuildTableGroups(d, shards, groups);
}
}  // namespace

bool NeedsModelParallel(const RunConfig& config, const parallel::MeshShape& shape) {
  if (shape.tp > 1 || shape.sp > 1 || shape.ep > 1) return true;
  if (shape.world > 1 && TableShards(config, shape.world) > 0) return true;
  return shape.dp > 1 && AsksGlobalBalance(config);
}


absl::StatusOr<std::unique_ptr<ModelParallelGroups>> BuildModelParallelGroups(
    const RunConfig& config, const Distributed& d) {
  if (config.parallel().etp() != 1) {
    return UsageError(absl::StrCat("parallel.etp=", config.parallel().etp(),
                                   ": tensor parallelism inside the experts is not implemented; "
                                   "set parallel.etp=1 (experts are split over ep only)"));
  }
  auto groups = std::make_unique<ModelParallelGroups>();
  const parallel::Mesh& mesh = *d.mesh;
  const auto make = [&](GroupKind kind) {
    return d.world->CreateSubgroup(mesh.Group(kind), mesh.GroupName(kind));
  };
  TESSERA_ASSIGN_OR_RETURN(groups->tp, make(GroupKind::kTensor));
  TESSERA_ASSIGN_OR_RETURN(groups->sp, make(GroupKind::kSequence));
  TESSERA_ASSIGN_OR_RETURN(groups->ep, make(GroupKind::kExpert));
  TESSERA_ASSIGN_OR_RETURN(groups->tp_sp, make(GroupKind::kTensorSequence));
  TESSERA_ASSIGN_OR_RETURN(groups->dp, make(GroupKind::kData));
  // In the same order on every rank (creating NCCL communicators is collective).
  TESSERA_ASSIGN_OR_RETURN(groups->view.tp, OnDevice(d, groups->tp, *groups));
  TESSERA_ASSIGN_OR_RETURN(groups->view.sp, OnDevice(d, groups->sp, *groups));
  TESSERA_ASSIGN_OR_RETURN(groups->view.ep, OnDevice(d, groups->ep, *groups));
  TESSERA_ASSIGN_OR_RETURN(groups->view.tp_sp, OnDevice(d, groups->tp_sp, *groups));
  TESSERA_ASSIGN_OR_RETURN(groups->view.dp, OnDevice(d, groups->dp, *groups));
  groups->view.sequence_parallel = config.parallel().sequence_parallel();
  TESSERA_RETURN_IF_ERROR(MaybeBuildTableGroups(config, d, *groups));
  return groups;
}

absl::Status GatherWeights(parallel::Communicator& world, const parallel::Mesh& mesh,
                           const ParameterStore& local, const float* values,
                           ParameterStore* full) {
  constexpr int kSizeTag = 71, kDataTag = 72;
  const parallel::Coordinates coordinates = mesh.coordinates();
  std::string mine;
  for (const ParamInfo& info : local.infos()) {
    if (SendsPiece(info, coordinates)) AppendPiece(mine, info, values);
  }
  if (world.rank() != 0) {
    int64_t size = static_cast<int64_t>(mine.size());
    TESSERA_RETURN_IF_ERROR(world.Complete(world.Send(&size, 1, DType::kI64, 0, kSizeTag)));
    if (size > 0) {
      TESSERA_RETURN_IF_ERROR(
          world.Complete(world.Send(mine.data(), mine.size(), DType::kU8, 0, kDataTag)));
    }
    return absl::OkStatus();
  }
  TESSERA_RETURN_IF_ERROR(ApplyPieces(mine, 0, *full));
  for (int r = 1; r < world.size(); ++r) {
    int64_t size = 0;
    TESSERA_RETURN_IF_ERROR(world.Complete(world.Recv(&size, 1, DType::kI64, r, kSizeTag)));
    if (size == 0) continue;
    std::string bytes(static_cast<size_t>(size), '\0');
    TESSERA_RETURN_IF_ERROR(
        world.Complete(world.Recv(bytes.data(), bytes.size(), DType::kU8, r, kDataTag)));
    TESSERA_RETURN_IF_ERROR(ApplyPieces(bytes, r, *full));
  }
  return absl::OkStatus();
}

}  // namespace tessera
