#include "runtime/train/checkpointing.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <memory>
#include <new>
#include <string>

namespace tessera {
namespace {

std::vector<int64_t> Dims(const Shape& shape) {
  std::vector<int64_t> dims(shape.rank());
  for (int d = 0; d < shape.rank(); ++d) dims[d] = shape[d];
  return dims;
}

PieceDesc BoxOf(const ParamInfo& info, const std::string& kind) {
  return PieceDesc::Box(info.name, kind, Dims(info.global_shape), info.local_offset,
                        Dims(info.local_shape));
}

// Parameters whose gradients every tp rank reduces over dp x sp only: each
// tp rank holds the same values but shards its optimizer state its own way.
bool TensorReplicated(const ParamInfo& info) {
  return info.spec.kind == ParallelSpec::Kind::kReplicated &&
         info.spec.reduce_group == ParallelSpec::ReduceGroup::kDataSequence;
}

// Calls fn(desc, flat_begin) for every piece this rank has: `kind` over the
// whole local piece of each parameter (flat_begin: its offset), or, for
// optimizer kinds, each parameter's run inside each optimizer's range
// (flat_begin: the run's first element in the flat buffer).
void ForEachPiece(const TrainingState& state, bool with_optimizer, bool all_tp_ranks,
                  const std::function<void(PieceDesc, const AdamW*, int64_t)>& fn) {
  for (const ParamInfo& info : state.store->infos()) {
    fn(BoxOf(info, "param"), nullptr, info.offset);
    if (state.ema) fn(BoxOf(info, "ema"), nullptr, info.offset);
  }
  if (!with_optimizer) return;
  for (const AdamW* adam : state.optimizers) {
    for (const ParamInfo& info : state.store->infos()) {
      const int64_t n = info.local_shape.numel();
      const int64_t lo = std::max(adam->begin(), info.offset);
      const int64_t hi = std::min(adam->end(), info.offset + n);
      if (lo >= hi) continue;
      if (!all_tp_ranks && state.tp_rank != 0 && TensorReplicated(info)) continue;
      PieceDesc box = BoxOf(info, "");
      for (const char* kind : {"adam_m", "adam_v"}) {
        fn(PieceDesc::Run(info.name, kind, box.global_shape, box.box_offset, box.box_shape,
                          lo - info.offset, hi - info.offset),
           adam, lo);
      }
    }
  }
}

float* HostFloats(const TrainingState& state, const Tensor& buffer) {
  return state.mirror != nullptr ? state.mirror->Host(buffer, /*refresh=*/false)
                                 : buffer.data<float>();
}

float* Source(const TrainingState& state, const PieceDesc& desc, const AdamW* adam,
              int64_t flat_begin) {
  if (desc.kind == "param") return HostFloats(state, state.store->values()) + flat_begin;
  if (desc.kind == "ema") return state.ema + flat_begin;
  Tensor moments = desc.kind == "adam_m" ? adam->m() : adam->v();
  return HostFloats(state, moments) + (flat_begin - adam->begin());
}

}  // namespace

HostStateMirror::~HostStateMirror() {
  for (Copy& copy : copies_) copy.device.backend().FreePinnedHost(copy.host);
}

HostStateMirror::Copy* HostStateMirror::Find(const Tensor& buffer) {
  for (Copy& copy : copies_) {
    if (copy.device.address() == buffer.address()) return &copy;
  }
  return nullptr;
}

void HostStateMirror::WaitForCopies(const std::vector<Backend*>& backends) {
  for (Backend* backend : backends) {
    std::unique_ptr<Event> done = backend->CreateEvent();
    backend->Record(*done);
    backend->HostWait(*done);
  }
}

void HostStateMirror::Fetch(const std::vector<Tensor>& buffers, bool refresh) {
  std::vector<Backend*> queued;
  for (const Tensor& buffer : buffers) {
    if (buffer.on_host()) continue;
    Copy* copy = Find(buffer);
    if (copy == nullptr) {
      void* host = nullptr;
      // The host being out of memory: reported as Storage::Allocate does.
      if (const absl::Status status = buffer.backend().AllocatePinnedHost(buffer.bytes(), &host);
          !status.ok()) {
        std::fprintf(stderr, "tessera: checkpoint host copy: %s\n",
                     std::string(status.message()).c_str());
        throw std::bad_alloc();
      }
      copies_.push_back(Copy{buffer, host});
      copy = &copies_.back();
    } else if (!refresh) {
      continue;
    }
    Backend& backend = buffer.backend();
    backend.CopyToHostAsync(copy->host, buffer.address(), buffer.bytes());
    if (std::find(queued.begin(), queued.end(), &backend) == queued.end()) {
      queued.push_back(&backend);
    }
  }
  WaitForCopies(queued);
}

float* HostStateMirror::Host(const Tensor& buffer, bool refresh) {
  if (buffer.on_host()) return buffer.data<float>();
  Fetch({buffer}, refresh);
  return static_cast<float*>(Find(buffer)->host);
}

void HostStateMirror::WriteBack() {
  std::vector<Backend*> queued;
  for (Copy& copy : copies_) {
    Backend& backend = copy.device.backend();
    backend.CopyToDeviceAsync(copy.device.address(), copy.host, copy.device.bytes());
    if (std::find(queued.begin(), queued.end(), &backend) == queued.end()) {
      queued.push_back(&backend);
    }
  }
  WaitForCopies(queued);
}

void SnapshotPieces(const TrainingState& state, std::vector<SavePiece>* pieces) {
  size_t next = 0;
  ForEachPiece(state, /*with_optimizer=*/true, /*all_tp_ranks=*/false,
               [&](PieceDesc desc, const AdamW* adam, int64_t flat_begin) {
                 const float* data = Source(state, desc, adam, flat_begin);
                 if (next == pieces->size()) pieces->emplace_back();
                 SavePiece& piece = (*pieces)[next++];
                 if (piece.data.size() == static_cast<size_t>(desc.size())) {
                   std::copy(data, data + desc.size(), piece.data.begin());
                 } else {
                   piece.data.assign(data, data + desc.size());
                 }
                 piece.desc = std::move(desc);
               });
  pieces->resize(next);
}

std::vector<LoadPiece> LoadTargets(const TrainingState& state, bool parameters_only) {
  std::vector<LoadPiece> targets;
  ForEachPiece(state, !parameters_only, /*all_tp_ranks=*/true,
               [&](PieceDesc desc, const AdamW* adam, int64_t flat_begin) {
                 if (parameters_only && desc.kind != "param") return;
                 LoadPiece piece;
                 piece.data = Source(state, desc, adam, flat_begin);
                 piece.desc = std::move(desc);
                 targets.push_back(std::move(piece));
               });
  return targets;
}

}  // namespace tessera
