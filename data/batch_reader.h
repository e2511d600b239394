// The reader interface every schema shares (docs/data-format.md, "Readers").
//
// A reader turns a data set into this replica's share of each global batch:
//
//   Sampler (global indices of sampled units, by (seed, epoch))
//     -> ReplicaShare (entries j % num_replicas == replica)
//     -> the schema's read of those units, on one I/O thread
//     -> a bounded prefetch queue -> Next()
//
// The sampled unit is an image (images), a window of seq_len + 1 tokens
// (tokens) or one user's history (interactions). Every batch type carries the
// global `indices` it holds and `state_after`, the sampler state once the
// batch is consumed, which a checkpoint stores so a run resumes exactly (also
// with another number of replicas).
//
// Concrete readers: ImageReader (data/reader.h), TokenReader
// (data/token_reader.h), InteractionReader (data/interaction_reader.h). Each
// has a static Open(options) that validates its options and the manifest
// before anything is read, and implements BatchReader<its batch>.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "data/manifest.h"
#include "data/prefetcher.h"
#include "data/sampler.h"
#include "runtime/base/errors.h"

namespace tessera {

// What every reader needs; each schema's options add their own fields.
struct ReaderOptions {
  std::string dir;           // folder with manifest.textproto (data.dir)
  int64_t global_batch = 0;  // sampled units per optimizer step over all replicas
  int replica = 0, num_replicas = 1;
  uint64_t seed = 0;
  int prefetch = 4;     // batches the I/O thread may read ahead
  SamplerState start;   // resume point
  bool shuffle = true;  // false: every epoch in index order (evaluation)
  // The config field `dir` came from, for error messages (data.eval_dir for
  // a held-out split).
  std::string field = "data.dir";
};

// The common options' rules; errors name the config field (exit 2).
absl::Status ValidateReaderOptions(const ReaderOptions& options);

// Reads `options.dir`'s manifest and checks it is a non-empty data set of
// `schema`. `make_hint` is appended to a missing-manifest error (how to make
// such a data set).
absl::StatusOr<DataManifest> ReadReaderManifest(const ReaderOptions& options,
                                                absl::string_view schema,
                                                absl::string_view make_hint);

template <typename Batch>
class BatchReader {
 public:
  virtual ~BatchReader() = default;
  // This replica's share of the next global batch: global_batch /
  // num_replicas units. After an error every later call fails the same way.
  virtual absl::StatusOr<Batch> Next() = 0;
  // Sampled units in one epoch (images, windows or users).
  virtual int64_t num_samples() const = 0;
  virtual const DataManifest& manifest() const = 0;
};

// The sampling half of every reader: draws the global indices, keeps this
// replica's share, and calls `read(indices)` on the I/O thread, then stamps
// the batch's `indices` and `state_after`. `finish` runs on the I/O thread
// when it stops (close HDF5 handles there). Declare it as a reader's last
// member, so its thread is joined before what `read` uses is destroyed.
template <typename Batch>
class SampledBatches {
 public:
  using Read = std::function<absl::StatusOr<Batch>(const std::vector<int64_t>& indices)>;

  SampledBatches(const ReaderOptions& options, int64_t num_units, Read read,
                 std::function<void()> finish)
      : global_batch_(options.global_batch),
        replica_(options.replica),
        num_replicas_(options.num_replicas),
        sampler_(num_units, options.seed, options.shuffle),
        read_(std::move(read)),
        prefetcher_(
            options.prefetch, [this] { return Produce(); }, std::move(finish)) {}

  // Before the first Next(): continue from `state` (UsageError naming `dir`
  // when it lies outside the data set).
  absl::Status Resume(const SamplerState& state, const std::string& dir) {
    absl::Status status = sampler_.SetState(state);
    if (status.ok()) return status;
    return UsageError(absl::StrCat("resuming ", dir, ": ", status.message()));
  }

  absl::StatusOr<Batch> Next() { return prefetcher_.Next(); }
  int64_t num_units() const { return sampler_.num_samples(); }

 private:
  absl::StatusOr<Batch> Produce() {
    std::vector<int64_t> indices =
        Sampler::ReplicaShare(sampler_.NextGlobalBatch(global_batch_), replica_, num_replicas_);
    absl::StatusOr<Batch> batch = read_(indices);
    if (!batch.ok()) return batch;
    batch->indices = std::move(indices);
    batch->state_after = sampler_.state();
    return batch;
  }

  int64_t global_batch_;
  int replica_, num_replicas_;
  Sampler sampler_;
  Read read_;
  Prefetcher<Batch> prefetcher_;  // last: its thread stops first
};

}  // namespace tessera
