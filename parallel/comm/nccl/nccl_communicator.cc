#include "parallel/comm/nccl/nccl_communicator.h"

#include <sched.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "parallel/comm/op_info.h"
#include "runtime/backend/cuda_backend.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"
#include "runtime/kernels/cuda/check.h"

namespace tessera::parallel {
namespace {

using cuda::NcclStatus;

absl::StatusOr<ncclDataType_t> NcclType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kF16:
      return ncclFloat16;
    case DType::kI32:
      return ncclInt32;
    case DType::kI64:
      return ncclInt64;
    case DType::kU8:
      return ncclUint8;
  }
  return absl::InvalidArgumentError("unknown dtype");
}

absl::StatusOr<ncclRedOp_t> NcclOp(ReduceOp op, DType dtype) {
  const bool floating = dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16;
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kAvg:
      if (!floating) {
        return absl::InvalidArgumentError(
            "ReduceOp::kAvg is defined for floating types only (integers would truncate)");
      }
      return ncclAvg;
  }
  return absl::InvalidArgumentError("unknown reduce op");
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

absl::Status CheckUsable(const NcclGroup& group) {
  if (group.aborted.load()) {
    return CommunicationError(absl::StrFormat(
        "NCCL communicator of group '%s' was aborted after an earlier failure", group.name));
  }
  return absl::OkStatus();
}

// Before each operation: the group is usable, no operation the compute
// stream waits for is past its deadline, and the NCCL stream starts after
// what the compute stream has queued.
absl::Status Prepare(NcclGroup& group) {
  TESSERA_RETURN_IF_ERROR(CheckUsable(group));
  TESSERA_RETURN_IF_ERROR(group.CheckPending());
  if (group.compute == nullptr) return absl::OkStatus();
  TESSERA_CUDA(cudaEventRecord(group.ready, group.compute));
  TESSERA_CUDA(cudaStreamWaitEvent(group.stream, group.ready, 0));
  return absl::OkStatus();
}

// An operation the compute stream waits for, as the collective watchdog
// polls it: its event, and the communicator's asynchronous error. Owns the
// event from StreamWait on.
class NcclPendingWork final : public DeviceWork {
 public:
  NcclPendingWork(NcclGroup* group, cudaEvent_t done) : group_(group), done_(done) {}
  ~NcclPendingWork() override { cudaEventDestroy(done_); }

  absl::StatusOr<bool> Poll() override {
    const cudaError_t query = cudaEventQuery(done_);
    if (query == cudaSuccess) return true;
    if (query != cudaErrorNotReady) {
      return cuda::CudaStatus(query, "cudaEventQuery", __FILE__, __LINE__);
    }
    if (group_->aborted.load()) return false;  // its comm is gone; the deadline still runs
    ncclResult_t async = ncclSuccess;
    const ncclResult_t result = ncclCommGetAsyncError(group_->comm, &async);
    if (result != ncclSuccess) {
      return NcclStatus(result, "ncclCommGetAsyncError", __FILE__, __LINE__);
    }
    if (async != ncclSuccess && async != ncclInProgress) {
      return NcclStatus(async, "ncclCommGetAsyncError", __FILE__, __LINE__);
    }
    return false;
  }

 private:
  NcclGroup* group_;  // Forget()s this work before it is destroyed
  cudaEvent_t done_;
};

class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<NcclGroup> group, const OpInfo& info, cudaEvent_t event)
      : group_(std::move(group)), info_(info), event_(event) {}
  ~NcclWork() override {
    if (event_ != nullptr) cudaEventDestroy(event_);  // deferred by CUDA if pending
  }

  bool Test() override { return Poll(); }

  // The compute stream waits for the event, which the group then watches.
  absl::Status StreamWait(absl::Duration timeout) override {
    if (group_->compute == nullptr) return Wait(timeout);
    if (done_) return error_;
    TESSERA_RETURN_IF_ERROR(CheckUsable(*group_));
    done_ = true;
    error_ = cuda::CudaStatus(cudaStreamWaitEvent(group_->compute, event_, 0),
                              "cudaStreamWaitEvent", __FILE__, __LINE__);
    if (!error_.ok()) return error_;
    CollectiveWatchdog::Process().Watch(*group_, Describe(), info_.seq, info_.peer, timeout,
                                        std::make_unique<NcclPendingWork>(group_.get(), event_));
    event_ = nullptr;
    return absl::OkStatus();
  }

  absl::Status Wait(absl::Duration timeout) override {
    TESSERA_RETURN_IF_ERROR(group_->CheckPending());
    const absl::Time start = absl::Now();
    while (!Poll()) {
      const absl::Time now = absl::Now();
      if (now - start >= timeout) {
        error_ = CommunicationError(absl::StrCat(
            "watchdog: ", Describe(), " did not complete within ", absl::FormatDuration(timeout),
            "; ", Late(), "; the NCCL communicator was aborted"));
        group_->Abort().IgnoreError();  // the timeout is the error to report
        done_ = true;
        break;
      }
      // The GPU progresses on its own: after a short spin, poll gently.
      if (now - start > absl::Milliseconds(1)) {
        absl::SleepFor(absl::Microseconds(20));
      } else {
        sched_yield();
      }
    }
    return error_;
  }

 private:
  std::string Describe() const { return DescribeOp(group_->name, group_->world_ranks, info_); }
  std::string Late() const {
    return info_.peer >= 0
               ? group_->watchdog->DescribePeer(*group_->counter, group_->world_ranks[info_.peer])
               : group_->watchdog->DescribeLateRanks(*group_->counter, group_->world_ranks,
                                                     info_.seq);
  }
  void Fail(const absl::Status& cause) {
    error_ = CommunicationError(absl::StrCat(Describe(), " failed: ", cause.message(), "; ", Late(),
                                             "; the NCCL communicator was aborted"));
    group_->Abort().IgnoreError();
    done_ = true;
  }

  bool Poll() {
    if (done_) return true;
    if (group_->aborted.load()) {
      error_ = CommunicationError(absl::StrCat(Describe(), ": ", CheckUsable(*group_).message()));
      done_ = true;
      return true;
    }
    const cudaError_t query = cudaEventQuery(event_);
    if (query == cudaSuccess) {
      done_ = true;
      return true;
    }
    if (query != cudaErrorNotReady) {
      Fail(cuda::CudaStatus(query, "cudaEventQuery", __FILE__, __LINE__));
      return true;
    }
    ncclResult_t async = ncclSuccess;
    const ncclResult_t result = ncclCommGetAsyncError(group_->comm, &async);
    if (result != ncclSuccess || (async != ncclSuccess && async != ncclInProgress)) {
      Fail(NcclStatus(result != ncclSuccess ? result : async, "ncclCommGetAsyncError", __FILE__,
                      __LINE__));
      return true;
    }
    return false;
  }

  std::shared_ptr<NcclGroup> group_;
  OpInfo info_;
  cudaEvent_t event_;
  bool done_ = false;
  absl::Status error_;
};

// A Work for an operation just enqueued on the group's stream (or not).
absl::StatusOr<std::unique_ptr<Work>> Enqueued(const std::shared_ptr<NcclGroup>& group,
                                               const OpInfo& info, const absl::Status& enqueue) {
  const auto failed = [&](const absl::Status& cause) {
    return CommunicationError(absl::StrCat(DescribeOp(group->name, group->world_ranks, info),
                                           " on world rank ", group->world_ranks[group->rank], ": ",
                                           cause.message()));
  };
  if (!enqueue.ok()) return failed(enqueue);
  cudaEvent_t event = nullptr;
  const absl::Status created =
      cuda::CudaStatus(cudaEventCreateWithFlags(&event, cudaEventDisableTiming),
                       "cudaEventCreateWithFlags", __FILE__, __LINE__);
  if (!created.ok()) return failed(created);
  const absl::Status recorded = cuda::CudaStatus(cudaEventRecord(event, group->stream),
                                                 "cudaEventRecord", __FILE__, __LINE__);
  if (!recorded.ok()) {
    cudaEventDestroy(event);
    return failed(recorded);
  }
  return std::unique_ptr<Work>(new NcclWork(group, info, event));
}

#define NCCL_CALL(expr) NcclStatus((expr), #expr, __FILE__, __LINE__)

// Point-to-point exchanges with every peer as one NCCL group. Counts and
// displacements are in elements; pairs with nothing to move are skipped on
// both sides (the counts agree by contract).
absl::Status ExchangeAll(const NcclGroup& group, const char* send, const size_t* send_counts,
                         const size_t* send_offsets, char* recv, const size_t* recv_counts,
                         const size_t* recv_offsets, size_t element, ncclDataType_t type) {
  TESSERA_NCCL(ncclGroupStart());
  absl::Status status;
  const int n = static_cast<int>(group.world_ranks.size());
  for (int r = 0; r < n && status.ok(); ++r) {
    if (send_counts[r] > 0) {
      status = NCCL_CALL(ncclSend(send + send_offsets[r] * element, send_counts[r], type, r,
                                  group.comm, group.stream));
    }
    if (status.ok() && recv_counts[r] > 0) {
      status = NCCL_CALL(ncclRecv(recv + recv_offsets[r] * element, recv_counts[r], type, r,
                                  group.comm, group.stream));
    }
  }
  const absl::Status end = NCCL_CALL(ncclGroupEnd());  // always close the group
  return status.ok() ? end : status;
}

}  // namespace

absl::Status NcclGroup::Abort() {
  if (aborted.exchange(true) || comm == nullptr) return absl::OkStatus();
  TESSERA_NCCL(ncclCommAbort(comm));
  return absl::OkStatus();
}

absl::Status NcclGroup::AbortGroup() { return Abort(); }

std::string NcclGroup::DescribeOthers(int64_t seq, int peer) const {
  return peer >= 0 ? watchdog->DescribePeer(*counter, world_ranks[static_cast<size_t>(peer)])
                   : watchdog->DescribeLateRanks(*counter, world_ranks, seq);
}

NcclGroup::~NcclGroup() {
  CollectiveWatchdog::Process().Forget(*this);  // destroys the pending events
  if (ready != nullptr) cudaEventDestroy(ready);
  if (comm != nullptr && !aborted.load()) ncclCommDestroy(comm);
  if (barrier_word != nullptr) cudaFree(barrier_word);
  if (stream != nullptr) cudaStreamDestroy(stream);
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(MpiCommunicator& group,
                                                                           Backend* compute) {
  auto nccl = std::make_shared<NcclGroup>();
  if (compute != nullptr) {
    if (compute->device() != Device::kCuda) {
      return absl::InvalidArgumentError(absl::StrCat("NCCL group '", group.name(),
                                                     "' ordered with a ",
                                                     DeviceName(compute->device()), " backend"));
    }
    nccl->compute = static_cast<CudaBackend*>(compute)->stream();
    TESSERA_CUDA(cudaEventCreateWithFlags(&nccl->ready, cudaEventDisableTiming));
  }
  TESSERA_CUDA(cudaGetDevice(&nccl->device));
  ncclUniqueId id{};
  if (group.rank() == 0) TESSERA_NCCL(ncclGetUniqueId(&id));
  // Over MPI, with its deadline: once this completes every member is here.
  TESSERA_RETURN_IF_ERROR(group.Complete(group.Broadcast(&id, sizeof(id), DType::kU8, 0)));
  TESSERA_NCCL(ncclCommInitRank(&nccl->comm, group.size(), id, group.rank()));
  TESSERA_CUDA(cudaStreamCreateWithFlags(&nccl->stream, cudaStreamNonBlocking));
  TESSERA_CUDA(cudaMalloc(reinterpret_cast<void**>(&nccl->barrier_word), sizeof(int)));
  TESSERA_CUDA(cudaMemset(nccl->barrier_word, 0, sizeof(int)));
  nccl->name = group.name();
  nccl->world_ranks = group.world_ranks();
  nccl->rank = group.rank();
  nccl->timeout = group.timeout();
  nccl->watchdog = group.watchdog();
  nccl->counter = nccl->watchdog->Register("nccl:" + nccl->name, nccl->world_ranks);
  return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(std::move(nccl), group));
}

absl::StatusOr<std::unique_ptr<Work>> NcclCommunicator::AllReduce(void* data, size_t count,
                                                                  DType dtype, ReduceOp op) {
  TESSERA_RETURN_IF_ERROR(Prepare(*group_));
  TESSERA_ASSIGN_OR_RETURN(ncclDataType_t type, NcclType(dtype));
  TESSERA_ASSIGN_OR_RETURN(ncclRedOp_t nccl_op, NcclOp(op, dtype));
  OpInfo info{"AllReduce", ReduceOpName(op), count, count * DTypeSize(dtype), dtype};
  info.seq = group_->counter->Enter();
  return Enqueued(
      group_, info,
      NCCL_CALL(ncclAllReduce(data, data, count, type, nccl_op, group_->comm, group_->stream)));
}

absl::StatusOr<std::unique_ptr<Work>> NcclCommunicator::ReduceScatter(const void* send, void* recv,
                                                                      size_t recv_count,
                                                                      DType dtype, ReduceOp op) {
  TESSERA_RETURN_IF_ERROR(Prepare(*group_));
  TESSERA_ASSIGN_OR_RETURN(ncclDataType_t type, NcclType(dtype));
  TESSERA_ASSIGN_OR_RETURN(ncclRedOp_t nccl_op, NcclOp(op, dtype));
  const size_t block = recv_count * DTypeSize(dtype);
  const bool in_place = recv == static_cast<const char*>(send) + block * rank();
  if (!in_place && Overlap(send, block * size(), recv, block)) {
    return absl::InvalidArgumentError(
        "ReduceScatter: recv overlaps send other than as send + rank() * recv_count");
  }
  OpInfo info{"ReduceScatter", ReduceOpName(op), recv_count, block * size(), dtype};
  info.seq = group_->counter->Enter();
  return Enqueued(group_, info,
                  NCCL_CALL(ncclReduceScatter(send, recv, recv_count, type, nccl_op, group_->comm,
                                              group_->stream)));
}

absl::StatusOr<std::unique_ptr<Work>> NcclCommunicator::AllGather(const void* send, void* recv,
                                                                  size_t send_count, DType dtype) {
  TESSERA_RETURN_IF_ERROR(Prepare(*group_));
  TESSERA_ASSIGN_OR_RETURN(ncclDataType_t type, NcclType(dtype));
  const size_t block = send_count * DTypeSize(dtype);
  const bool in_place = send == static_cast<const char*>(recv) + block * rank();
  if (!in_place && Overlap(send, block, recv, block * size())) {
    return absl::InvalidArgumentError(
        "AllGather: send overlaps recv other than as recv + rank() * send_count");
  }
  OpInfo info{"AllGather", nullptr, send_count, block, dtype};
  info.seq = group_->counter->Enter();
  return Enqueued(
      group_, info,
      NCCL_CALL(ncclAllGather(send, recv, send_count, type, group_->comm, group_->stream)));
}

absl::StatusOr<std::unique_ptr<Work>> NcclCommunicator::AllToAll(const void* send, void* recv,
                                                                 size_t count_per_rank,
                                                                 DType dtype) {
  TESSERA_RETURN_IF_ERROR(Prepare(*group_));
  TESSERA_ASSIGN_OR_RETURN(ncclDataType_t type, NcclType(dtype));
  const size_t n = static_cast<size_t>(size());
  const size_t bytes = count_per_rank * DTypeSize(dtype) * n;
  if (Overlap(send, bytes, recv, bytes)) {
    return absl::InvalidArgumentError("AllToAll: send and recv must not overlap");
  }
  std::vector<size_t> counts(n, count_per_rank), offsets(n);
  for (size_t r = 0; r < n; ++r) offsets[r] = r * count_per_rank;
  OpInfo info{"AllToAll", nullptr, count_per_rank, bytes, dtype};
  info.seq = group_->counter->Enter();
  return Enqueued(
      group_, info,
      ExchangeAll(*group_, static_cast<const char*>(send), counts.data(), offsets.data(),
                  static_cast<char*>(recv), counts.data(), offsets.data(), DTypeSize(dtype), type));
}

absl::StatusOr<std::unique_ptr<Work>> NcclCommunicator::AllToAllV(
    const void* send, const std::vector<size_t>& send_counts, void* recv,
    const std::vector<size_t>& recv_counts, DType dtype) {
  TESSERA_RETURN_IF_ERROR(Prepare(*group_));
  TESSERA_ASSIGN_OR_RETURN(ncclDataType_t type, NcclType(dtype));
  const size_t n = static_cast<size_t>(size());
  if (send_counts.size() != n || recv_counts.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrFormat("AllToAllV on group '%s': %d send and %d recv counts for %d ranks", name(),
                        send_counts.size(), recv_counts.size(), n));
  }
  std::vector<size_t> send_offsets(n), recv_offsets(n);
  size_t send_total = 0, recv_total = 0;
  for (size_t r = 0; r < n; ++r) {
    send_offsets[r] = send_total;
    recv_offsets[r] = recv_total;
    send_total += send_counts[r];
    recv_total += recv_counts[r];
  }
  const size_t element = DTypeSize(dtype);
  if (Overlap(send, send_total * element, recv, recv_total * element)) {
    return absl::InvalidArgumentError("AllToAllV: send and recv must not overlap");
  }
  OpInfo info{"AllToAllV", nullptr, send_total, send_total * element, dtype};
  info.seq = group_->counter->Enter();
  return Enqueued(group_, info,
                  ExchangeAll(*group_, static_cast<const char*>(send), send_counts.data(),
                              send_offsets.data(), static_cast<char*>(recv), recv_counts.data(),
                              recv_offsets.data(), element, type));
}

absl::StatusOr<std::unique_ptr<Work>> NcclCommunicator::Broadcast(void* data, size_t count,
                                                                  DType dtype, int root) {
  TESSERA_RETURN_IF_ERROR(Prepare(*group_));
  TESSERA_ASSIGN_OR_RETURN(ncclDataType_t type, NcclType(dtype));
  TESSERA_RETURN_IF_ERROR(CheckRank(root, size(), "Broadcast root"));
  OpInfo info{"Broadcast", nullptr, count, count * DTypeSize(dtype), dtype};
  info.seq = group_->counter->Enter();
  return Enqueued(
      group_, info,
      NCCL_CALL(ncclBroadcast(data, data, count, type, root, group_->comm, group_->stream)));
}

absl::StatusOr<std::unique_ptr<Work>> NcclCommunicator::Send(const void* data, size_t count,
                                                             DType dtype, int peer, int tag) {
  TESSERA_RETURN_IF_ERROR(Prepare(*group_));
  TESSERA_ASSIGN_OR_RETURN(ncclDataType_t type, NcclType(dtype));
  TESSERA_RETURN_IF_ERROR(CheckRank(peer, size(), "Send peer"));
  if (tag < 0) return absl::InvalidArgumentError(absl::StrCat("Send tag ", tag, " < 0"));
  OpInfo info{"Send", nullptr, count, count * DTypeSize(dtype), dtype};
  info.peer = peer;
  info.tag = tag;
  return Enqueued(group_, info,
                  NCCL_CALL(ncclSend(data, count, type, peer, group_->comm, group_->stream)));
}

absl::StatusOr<std::unique_ptr<Work>> NcclCommunicator::Recv(void* data, size_t count, DType dtype,
                                                             int peer, int tag) {
  TESSERA_RETURN_IF_ERROR(Prepare(*group_));
  TESSERA_ASSIGN_OR_RETURN(ncclDataType_t type, NcclType(dtype));
  TESSERA_RETURN_IF_ERROR(CheckRank(peer, size(), "Recv peer"));
  if (tag < 0) return absl::InvalidArgumentError(absl::StrCat("Recv tag ", tag, " < 0"));
  OpInfo info{"Recv", nullptr, count, count * DTypeSize(dtype), dtype};
  info.peer = peer;
  info.tag = tag;
  return Enqueued(group_, info,
                  NCCL_CALL(ncclRecv(data, count, type, peer, group_->comm, group_->stream)));
}

absl::StatusOr<std::unique_ptr<Work>> NcclCommunicator::Barrier() {
  TESSERA_RETURN_IF_ERROR(Prepare(*group_));
  OpInfo info{"Barrier", nullptr, 0, 0, DType::kI32};
  info.seq = group_->counter->Enter();
  return Enqueued(group_, info,
                  NCCL_CALL(ncclAllReduce(group_->barrier_word, group_->barrier_word, 1, ncclInt32,
                                          ncclSum, group_->comm, group_->stream)));
}

}  // namespace tessera::parallel
