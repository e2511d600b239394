// The tokens reader: documents packed into windows of seq_len + 1 tokens.
//
// Each shard's documents form one stream, every document followed by the
// data set's end-of-document token:
//   doc 0, EOD, doc 1, EOD, …, doc D-1, EOD      (S = T + D tokens)
// Window w of a shard is stream[w * seq_len, w * seq_len + seq_len + 1): the
// model reads positions 0 … seq_len-1 and predicts 1 … seq_len, so
// consecutive windows overlap by one token and every stream token after the
// first is a target exactly once. A shard holds (S - 1) / seq_len windows
// (0 when S <= seq_len); the tail that does not fill a window is not read.
// Windows are the sampled unit, numbered across shards in manifest order, so
// their count depends only on the shards and seq_len.
//
// A window's tokens are read by one hyperslab of `tokens` (and `loss_mask`
// when the shard has one); the shard's doc_offsets are read whole when the
// shard is first opened. Every token read is checked against vocab_size.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/batch_reader.h"
#include "data/shard_set.h"
#include "runtime/tensor/tensor.h"

namespace tessera {

struct TokenReaderOptions : ReaderOptions {
  int64_t seq_len = 0;     // predicted positions per window; a window holds seq_len + 1 tokens
  int64_t vocab_size = 0;  // the model's vocabulary: 0 or at least the data set's vocab_size
};

struct TokenBatch {
  Tensor tokens;            // i32 [B, seq_len + 1]: inputs tokens[:, :-1], targets tokens[:, 1:]
  Tensor loss_mask;         // f32 [B, seq_len]: 1 where target tokens[:, j + 1] counts, else 0
  int64_t num_targets = 0;  // sum of loss_mask: the elements the loss averages over
  std::vector<int64_t> indices;  // global window indices
  SamplerState state_after;      // sampler state once this batch is consumed
};

// Windows in a shard of `num_tokens` tokens in `num_documents` documents.
int64_t WindowsInShard(int64_t num_tokens, int64_t num_documents, int64_t seq_len);

class TokenReader : public BatchReader<TokenBatch> {
 public:
  // Validates the options (seq_len in [1, 2^24], vocab_size) and the manifest.
  static absl::StatusOr<std::unique_ptr<TokenReader>> Open(const TokenReaderOptions& options);

  absl::StatusOr<TokenBatch> Next() override { return batches_.Next(); }
  int64_t num_samples() const override { return window_begin_.back(); }  // windows
  const DataManifest& manifest() const override { return shards_.manifest(); }

  int64_t seq_len() const { return options_.seq_len; }
  int64_t vocab_size() const { return vocab_size_; }  // the data set's
  int32_t eod_token() const { return eod_token_; }

 private:
  // A shard's documents: where each starts in the shard's stream.
  struct Documents {
    std::vector<int64_t> offsets;  // doc_offsets [D+1]
    std::vector<int64_t> starts;   // [D+1]: doc d starts at stream position offsets[d] + d
    bool has_loss_mask = false;
  };
  TokenReader(const TokenReaderOptions& options, DataManifest manifest,
              std::vector<int64_t> window_begin);
  absl::StatusOr<const Documents*> DocumentsOf(int shard);
  // Runs on the I/O thread.
  absl::StatusOr<TokenBatch> Read(const std::vector<int64_t>& indices);
  // Window `window` of `shard` into tokens [seq_len + 1] and mask [seq_len + 1]
  // (the mask of each stream position, before the shift to targets).
  absl::Status ReadWindow(int shard, int64_t window, int32_t* tokens, uint8_t* mask);

  TokenReaderOptions options_;
  int64_t vocab_size_ = 0;
  int32_t eod_token_ = 0;
  std::vector<int64_t> window_begin_;  // global index of each shard's first window, then the total
  // Owned by the I/O thread once it has started.
  ShardSet shards_;
  std::map<int, Documents> documents_;
  std::vector<int32_t> token_scratch_;
  std::vector<uint8_t> mask_scratch_;
  // Last, so its thread is joined first.
  SampledBatches<TokenBatch> batches_;
};

}  // namespace tessera
