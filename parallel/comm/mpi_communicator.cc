#include "parallel/comm/mpi_communicator.h"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <numeric>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "parallel/comm/mpi_check.h"
#include "parallel/comm/mpi_work.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera::parallel {
namespace {

// Tags every MPI implementation supports (MPI_TAG_UB is at least this).
constexpr int kMaxTag = 32767;

absl::StatusOr<MPI_Datatype> MpiType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return MPI_FLOAT;
    case DType::kI32:
      return MPI_INT32_T;
    case DType::kI64:
      return MPI_INT64_T;
    case DType::kU8:
      return MPI_UINT8_T;
    // Moved as opaque 16-bit words; reductions are rejected in MpiOp.
    case DType::kBF16:
    case DType::kF16:
      return MPI_UINT16_T;
  }
  return absl::InvalidArgumentError("unknown dtype");
}

absl::string_view Name(DType dtype) {
  const std::string_view name = DTypeName(dtype);
  return absl::string_view(name.data(), name.size());
}

absl::StatusOr<MPI_Op> MpiOp(ReduceOp op, DType dtype) {
  if (dtype == DType::kBF16 || dtype == DType::kF16) {
    return absl::InvalidArgumentError(absl::StrCat("the MPI backend cannot reduce ", Name(dtype),
                                                   ": MPI has no 16-bit float "
                                                   "reductions; reduce in f32"));
  }
  if (op == ReduceOp::kAvg && dtype != DType::kF32) {
    return absl::InvalidArgumentError(
        absl::StrCat("ReduceOp::kAvg is defined for f32 only (", Name(dtype),
                     " would truncate); sum and divide where the rounding is known"));
  }
  return op == ReduceOp::kMax ? MPI_MAX : MPI_SUM;
}

absl::StatusOr<int> ToInt(size_t count, const char* what) {
  if (count > static_cast<size_t>(INT_MAX)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s = %d elements exceeds MPI's int limit %d; split the operation", what, count, INT_MAX));
  }
  return static_cast<int>(count);
}

bool Overlap(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  const char* x = static_cast<const char*>(a);
  const char* y = static_cast<const char*>(b);
  return a_bytes > 0 && b_bytes > 0 && x < y + b_bytes && y < x + a_bytes;
}

absl::Status CheckRank(int rank, int size, const char* what) {
  if (rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s %d is not a rank of a group of %d", what, rank, size));
  }
  return absl::OkStatus();
}

// A Work for an MPI call that has just been issued (or failed to be).
absl::StatusOr<std::unique_ptr<Work>> Started(const std::shared_ptr<MpiGroup>& group,
                                              const OpInfo& info, int code, const char* call,
                                              MPI_Request request, MpiFinish finish = {},
                                              std::vector<int> keep_alive = {}) {
  if (code != MPI_SUCCESS) {
    const absl::Status mpi = MpiStatus(code, call, __FILE__, __LINE__);
    return CommunicationError(
        absl::StrCat(DescribeOp(group->name, group->world_ranks, info), ": ", mpi.message()));
  }
  return std::unique_ptr<Work>(new MpiWork(group, info, request, finish, std::move(keep_alive)));
}

}  // namespace

MpiGroup::~MpiGroup() {
  collective_thread.reset();  // every posted call has returned (see its header)
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  if (thread_comm != MPI_COMM_NULL) MPI_Comm_free(&thread_comm);
  if (comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
}

absl::StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::Create(
    MPI_Comm parent, const std::vector<int>& world_ranks_of_group, std::string name,
    absl::Duration timeout, std::shared_ptr<Watchdog> watchdog) {
  TESSERA_CHECK(watchdog != nullptr);
  int world_rank = 0, world_size = 0;
  TESSERA_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank));
  TESSERA_MPI(MPI_Comm_size(MPI_COMM_WORLD, &world_size));
  const std::set<int> unique(world_ranks_of_group.begin(), world_ranks_of_group.end());
  if (world_ranks_of_group.empty() || unique.size() != world_ranks_of_group.size() ||
      *unique.begin() < 0 || *unique.rbegin() >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("group '%s': world ranks [%s] must be distinct ranks of a world of %d",
                        name, absl::StrJoin(world_ranks_of_group, ","), world_size));
  }
  auto position = std::find(world_ranks_of_group.begin(), world_ranks_of_group.end(), world_rank);
  const bool member = position != world_ranks_of_group.end();
  // The smallest member names the group, so disjoint groups split apart.
  const int color = member ? *unique.begin() : MPI_UNDEFINED;
  const int key = member ? static_cast<int>(position - world_ranks_of_group.begin()) : 0;
  auto group = std::make_shared<MpiGroup>();
  TESSERA_MPI(MPI_Comm_split(parent, color, key, &group->comm));
  if (!member) return std::unique_ptr<MpiCommunicator>();
  TESSERA_RETURN_IF_ERROR(SetErrorsReturn(group->comm));

  // The members must have passed the same list: compare with what MPI formed.
  int size = 0;
  TESSERA_MPI(MPI_Comm_size(group->comm, &size));
  std::vector<int> formed(static_cast<size_t>(size)), indices(static_cast<size_t>(size));
  std::iota(indices.begin(), indices.end(), 0);
  MPI_Group local, world;
  TESSERA_MPI(MPI_Comm_group(group->comm, &local));
  TESSERA_MPI(MPI_Comm_group(MPI_COMM_WORLD, &world));
  const int translated =
      MPI_Group_translate_ranks(local, size, indices.data(), world, formed.data());
  MPI_Group_free(&local);
  MPI_Group_free(&world);
  TESSERA_MPI(translated);
  if (formed != world_ranks_of_group) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "group '%s': members disagree on its ranks: world rank %d passed [%s], MPI formed [%s]",
        name, world_rank, absl::StrJoin(world_ranks_of_group, ","), absl::StrJoin(formed, ",")));
  }
  TESSERA_MPI(MPI_Comm_rank(group->comm, &group->rank));
  int thread_level = MPI_THREAD_SINGLE;
  TESSERA_MPI(MPI_Query_thread(&thread_level));
  const char* disable = std::getenv("TESSERA_MPI_COLLECTIVE_THREAD");
  // Agreed by the members, so that all of them reduce on the same communicator.
  int threaded = thread_level == MPI_THREAD_MULTIPLE && !(disable && std::string(disable) == "0");
  TESSERA_MPI(MPI_Allreduce(MPI_IN_PLACE, &threaded, 1, MPI_INT, MPI_MIN, group->comm));
  if (threaded) {
    TESSERA_MPI(MPI_Comm_dup(group->comm, &group->thread_comm));
    TESSERA_RETURN_IF_ERROR(SetErrorsReturn(group->thread_comm));
    group->collective_thread = std::make_unique<MpiCollectiveThread>(group->thread_comm);
  }
  group->name = std::move(name);
  group->world_ranks = world_ranks_of_group;
  group->timeout = timeout;
  group->counter = watchdog->Register(group->name, group->world_ranks);
  group->watchdog = std::move(watchdog);
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(std::move(group)));
}

absl::StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::CreateWorld(
    absl::Duration timeout, std::shared_ptr<Watchdog> watchdog) {
  int world_size = 0;
  TESSERA_MPI(MPI_Comm_size(MPI_COMM_WORLD, &world_size));
  std::vector<int> all(static_cast<size_t>(world_size));
  std::iota(all.begin(), all.end(), 0);
  return Create(MPI_COMM_WORLD, all, "world", timeout, std::move(watchdog));
}

absl::StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::CreateSubgroup(
    const std::vector<int>& world_ranks_of_group, std::string name) const {
  return Create(group_->comm, world_ranks_of_group, std::move(name), group_->timeout,
                group_->watchdog);
}

void MpiCommunicator::Count(size_t bytes) {
  ++calls_;
  if (size() > 1) bytes_sent_ += static_cast<int64_t>(bytes);
}

absl::StatusOr<std::unique_ptr<Work>> MpiCommunicator::AllReduce(void* data, size_t count,
                                                                 DType dtype, ReduceOp op) {
  TESSERA_ASSIGN_OR_RETURN(MPI_Datatype type, MpiType(dtype));
  TESSERA_ASSIGN_OR_RETURN(MPI_Op mpi_op, MpiOp(op, dtype));
  TESSERA_ASSIGN_OR_RETURN(int n, ToInt(count, "AllReduce count"));
  OpInfo info{"AllReduce", ReduceOpName(op), count, count * DTypeSize(dtype), dtype};
  Count(info.bytes);
  info.seq = group_->counter->Enter();
  MpiFinish finish;
  if (op == ReduceOp::kAvg) finish = {static_cast<float*>(data), count};
  if (Threaded(info.bytes)) {
    return OnThread(info, "MPI_Allreduce", finish, [=](MPI_Comm comm) {
      return MPI_Allreduce(MPI_IN_PLACE, data, n, type, mpi_op, comm);
    });
  }
  MPI_Request request = MPI_REQUEST_NULL;
  const int code = MPI_Iallreduce(MPI_IN_PLACE, data, n, type, mpi_op, group_->comm, &request);
  return Started(group_, info, code, "MPI_Iallreduce", request, finish);
}

bool MpiCommunicator::Threaded(size_t bytes) const {
  return group_->collective_thread != nullptr && bytes >= kThreadedAllReduceBytes;
}

std::unique_ptr<Work> MpiCommunicator::OnThread(const OpInfo& info, const char* call,
                                                const MpiFinish& finish,
                                                std::function<int(MPI_Comm)> run) {
  const size_t group_size = static_cast<size_t>(size());
  auto completion = group_->collective_thread->Post([=, run = std::move(run)](MPI_Comm comm) {
    const int code = run(comm);
    if (code == MPI_SUCCESS) ApplyFinish(finish, group_size);
    return code;
  });
  return std::unique_ptr<Work>(new MpiThreadWork(group_, info, call, std::move(completion)));
}

absl::StatusOr<std::unique_ptr<Work>> MpiCommunicator::ReduceScatter(const void* send, void* recv,
                                                                     size_t recv_count, DType dtype,
                                                                     ReduceOp op) {
  TESSERA_ASSIGN_OR_RETURN(MPI_Datatype type, MpiType(dtype));
  TESSERA_ASSIGN_OR_RETURN(MPI_Op mpi_op, MpiOp(op, dtype));
  TESSERA_ASSIGN_OR_RETURN(int n, ToInt(recv_count, "ReduceScatter recv_count"));
  const size_t block_bytes = recv_count * DTypeSize(dtype);
  const size_t send_bytes = block_bytes * static_cast<size_t>(size());
  // NCCL's in-place form: this rank's block of the input is the output.
  char* own_block = static_cast<char*>(const_cast<void*>(send)) + block_bytes * rank();
  const bool in_place = block_bytes > 0 && recv == own_block;
  if (!in_place && Overlap(send, send_bytes, recv, block_bytes)) {
    return absl::InvalidArgumentError(
        "ReduceScatter: recv overlaps send other than as send + rank() * recv_count");
  }
  OpInfo info{"ReduceScatter", ReduceOpName(op), recv_count, send_bytes, dtype};
  Count(send_bytes);
  info.seq = group_->counter->Enter();
  MpiFinish finish;
  // MPI's in-place form leaves the result at the start of the buffer.
  const void* source = in_place ? MPI_IN_PLACE : send;
  void* target = in_place ? const_cast<void*>(send) : recv;
  if (in_place) {
    finish.move_from = static_cast<char*>(target);
    finish.move_to = own_block;
    finish.move_bytes = rank() == 0 ? 0 : block_bytes;
  }
  if (op == ReduceOp::kAvg) {
    finish.average = static_cast<float*>(recv);
    finish.average_count = recv_count;
  }
  if (Threaded(send_bytes)) {
    return OnThread(info, "MPI_Reduce_scatter_block", finish, [=](MPI_Comm comm) {
      return MPI_Reduce_scatter_block(source, target, n, type, mpi_op, comm);
    });
  }
  MPI_Request request = MPI_REQUEST_NULL;
  const int code =
      MPI_Ireduce_scatter_block(source, target, n, type, mpi_op, group_->comm, &request);
  return Started(group_, info, code, "MPI_Ireduce_scatter_block", request, finish);
}

absl::StatusOr<std::unique_ptr<Work>> MpiCommunicator::AllGather(const void* send, void* recv,
                                                                 size_t send_count, DType dtype) {
  TESSERA_ASSIGN_OR_RETURN(MPI_Datatype type, MpiType(dtype));
  TESSERA_ASSIGN_OR_RETURN(int n, ToInt(send_count, "AllGather send_count"));
  const size_t block_bytes = send_count * DTypeSize(dtype);
  const bool in_place = block_bytes > 0 && send == static_cast<char*>(recv) + block_bytes * rank();
  if (!in_place && Overlap(send, block_bytes, recv, block_bytes * size())) {
    return absl::InvalidArgumentError(
        "AllGather: send overlaps recv other than as recv + rank() * send_count");
  }
  OpInfo info{"AllGather", nullptr, send_count, block_bytes, dtype};
  Count(block_bytes * size());
  info.seq = group_->counter->Enter();
  // Non-blocking at every size: libnbc's all-gather keeps up with the
  // blocking call (bench_comm), and the thread's hand-over would cost more.
  MPI_Request request = MPI_REQUEST_NULL;
  const int code = MPI_Iallgather(in_place ? MPI_IN_PLACE : send, n, type, recv, n, type,
                                  group_->comm, &request);
  return Started(group_, info, code, "MPI_Iallgather", request);
}

absl::StatusOr<std::unique_ptr<Work>> MpiCommunicator::AllToAll(const void* send, void* recv,
                                                                size_t count_per_rank,
                                                                DType dtype) {
  TESSERA_ASSIGN_OR_RETURN(MPI_Datatype type, MpiType(dtype));
  TESSERA_ASSIGN_OR_RETURN(int n, ToInt(count_per_rank, "AllToAll count_per_rank"));
  const size_t bytes = count_per_rank * DTypeSize(dtype) * size();
  if (Overlap(send, bytes, recv, bytes)) {
    return absl::InvalidArgumentError("AllToAll: send and recv must not overlap");
  }
  OpInfo info{"AllToAll", nullptr, count_per_rank, bytes, dtype};
  Count(count_per_rank * DTypeSize(dtype) * static_cast<size_t>(size() - 1));
  info.seq = group_->counter->Enter();
  MPI_Request request = MPI_REQUEST_NULL;
  const int code = MPI_Ialltoall(send, n, type, recv, n, type, group_->comm, &request);
  return Started(group_, info, code, "MPI_Ialltoall", request);
}

absl::StatusOr<std::unique_ptr<Work>> MpiCommunicator::AllToAllV(
    const void* send, const std::vector<size_t>& send_counts, void* recv,
    const std::vector<size_t>& recv_counts, DType dtype) {
  TESSERA_ASSIGN_OR_RETURN(MPI_Datatype type, MpiType(dtype));
  const size_t n = static_cast<size_t>(size());
  if (send_counts.size() != n || recv_counts.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrFormat("AllToAllV on group '%s': %d send and %d recv counts for %d ranks", name(),
                        send_counts.size(), recv_counts.size(), n));
  }
  // MPI reads these arrays until the operation completes: the Work keeps them.
  // Layout: send counts, send displacements, recv counts, recv displacements.
  std::vector<int> arrays(4 * n);
  size_t send_total = 0, recv_total = 0;
  for (size_t r = 0; r < n; ++r) {
    TESSERA_ASSIGN_OR_RETURN(arrays[r], ToInt(send_counts[r], "AllToAllV send count"));
    TESSERA_ASSIGN_OR_RETURN(arrays[n + r], ToInt(send_total, "AllToAllV send displacement"));
    TESSERA_ASSIGN_OR_RETURN(arrays[2 * n + r], ToInt(recv_counts[r], "AllToAllV recv count"));
    TESSERA_ASSIGN_OR_RETURN(arrays[3 * n + r], ToInt(recv_total, "AllToAllV recv displacement"));
    send_total += send_counts[r];
    recv_total += recv_counts[r];
  }
  const size_t element = DTypeSize(dtype);
  if (Overlap(send, send_total * element, recv, recv_total * element)) {
    return absl::InvalidArgumentError("AllToAllV: send and recv must not overlap");
  }
  OpInfo info{"AllToAllV", nullptr, send_total, send_total * element, dtype};
  Count((send_total - send_counts[static_cast<size_t>(rank())]) * element);
  info.seq = group_->counter->Enter();
  MPI_Request request = MPI_REQUEST_NULL;
  const int code =
      MPI_Ialltoallv(send, arrays.data(), arrays.data() + n, type, recv, arrays.data() + 2 * n,
                     arrays.data() + 3 * n, type, group_->comm, &request);
  return Started(group_, info, code, "MPI_Ialltoallv", request, {}, std::move(arrays));
}

absl::StatusOr<std::unique_ptr<Work>> MpiCommunicator::Broadcast(void* data, size_t count,
                                                                 DType dtype, int root) {
  TESSERA_ASSIGN_OR_RETURN(MPI_Datatype type, MpiType(dtype));
  TESSERA_ASSIGN_OR_RETURN(int n, ToInt(count, "Broadcast count"));
  TESSERA_RETURN_IF_ERROR(CheckRank(root, size(), "Broadcast root"));
  OpInfo info{"Broadcast", nullptr, count, count * DTypeSize(dtype), dtype};
  Count(info.bytes);
  info.seq = group_->counter->Enter();
  MPI_Request request = MPI_REQUEST_NULL;
  const int code = MPI_Ibcast(data, n, type, root, group_->comm, &request);
  return Started(group_, info, code, "MPI_Ibcast", request);
}

absl::StatusOr<std::unique_ptr<Work>> MpiCommunicator::Send(const void* data, size_t count,
                                                            DType dtype, int peer, int tag) {
  TESSERA_ASSIGN_OR_RETURN(MPI_Datatype type, MpiType(dtype));
  TESSERA_ASSIGN_OR_RETURN(int n, ToInt(count, "Send count"));
  TESSERA_RETURN_IF_ERROR(CheckRank(peer, size(), "Send peer"));
  if (tag < 0 || tag > kMaxTag) {
    return absl::InvalidArgumentError(absl::StrFormat("Send tag %d not in [0, %d]", tag, kMaxTag));
  }
  OpInfo info{"Send", nullptr, count, count * DTypeSize(dtype), dtype};
  Count(info.bytes);
  info.peer = peer;
  info.tag = tag;
  MPI_Request request = MPI_REQUEST_NULL;
  const int code = MPI_Isend(data, n, type, peer, tag, group_->comm, &request);
  return Started(group_, info, code, "MPI_Isend", request);
}

absl::StatusOr<std::unique_ptr<Work>> MpiCommunicator::Recv(void* data, size_t count, DType dtype,
                                                            int peer, int tag) {
  TESSERA_ASSIGN_OR_RETURN(MPI_Datatype type, MpiType(dtype));
  TESSERA_ASSIGN_OR_RETURN(int n, ToInt(count, "Recv count"));
  TESSERA_RETURN_IF_ERROR(CheckRank(peer, size(), "Recv peer"));
  if (tag < 0 || tag > kMaxTag) {
    return absl::InvalidArgumentError(absl::StrFormat("Recv tag %d not in [0, %d]", tag, kMaxTag));
  }
  OpInfo info{"Recv", nullptr, count, count * DTypeSize(dtype), dtype};
  Count(0);
  info.peer = peer;
  info.tag = tag;
  MPI_Request request = MPI_REQUEST_NULL;
  const int code = MPI_Irecv(data, n, type, peer, tag, group_->comm, &request);
  return Started(group_, info, code, "MPI_Irecv", request);
}

absl::StatusOr<std::unique_ptr<Work>> MpiCommunicator::Barrier() {
  OpInfo info{"Barrier", nullptr, 0, 0, DType::kU8};
  Count(0);
  info.seq = group_->counter->Enter();
  MPI_Request request = MPI_REQUEST_NULL;
  const int code = MPI_Ibarrier(group_->comm, &request);
  return Started(group_, info, code, "MPI_Ibarrier", request);
}

}  // namespace tessera::parallel
