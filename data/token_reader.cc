#include "data/token_reader.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "data/value_checks.h"
#include "runtime/base/errors.h"
#include "runtime/base/status.h"

namespace tessera {
namespace {

constexpr int64_t kMaxSeqLen = int64_t{1} << 24;

absl::Status ValidateTokenOptions(const TokenReaderOptions& options) {
  TESSERA_RETURN_IF_ERROR(ValidateReaderOptions(options));
  if (options.seq_len < 1 || options.seq_len > kMaxSeqLen) {
    return UsageError(
        absl::StrCat("seq_len must be in [1, ", kMaxSeqLen, "], got ", options.seq_len));
  }
  if (options.vocab_size < 0) {
    return UsageError(absl::StrCat("vocab_size must not be negative, got ", options.vocab_size));
  }
  return absl::OkStatus();
}

// One contiguous run of a window: `count` tokens from token index `first`
// placed at window position `at`, or (count == 0) one end-of-document token.
struct Piece {
  int64_t at;
  int64_t first;
  int64_t count;
};

}  // namespace

int64_t WindowsInShard(int64_t num_tokens, int64_t num_documents, int64_t seq_len) {
  const int64_t stream = num_tokens + num_documents;
  return stream > seq_len ? (stream - 1) / seq_len : 0;
}

absl::StatusOr<std::unique_ptr<TokenReader>> TokenReader::Open(const TokenReaderOptions& options) {
  TESSERA_RETURN_IF_ERROR(ValidateTokenOptions(options));
  TESSERA_ASSIGN_OR_RETURN(
      DataManifest manifest,
      ReadReaderManifest(options, "tokens",
                         "run `tessera data import-text` or `tessera data synth --schema "
                         "tokens` to make a data set"));
  TESSERA_ASSIGN_OR_RETURN(int64_t vocab, IntAttribute(manifest, "vocab_size", options.dir));
  if (options.vocab_size != 0 && options.vocab_size < vocab) {
    return UsageError(absl::StrCat("the model's vocab_size (", options.vocab_size,
                                   ") is smaller than ", options.field, " \"", options.dir,
                                   "\"'s (", vocab, ")"));
  }
  std::vector<int64_t> window_begin = {0};
  for (const ShardEntry& shard : manifest.shards()) {
    window_begin.push_back(window_begin.back() + WindowsInShard(shard.num_tokens(),
                                                                shard.num_samples(),
                                                                options.seq_len));
  }
  if (window_begin.back() == 0) {
    return DataError(
        absl::StrCat(options.field, " \"", options.dir,
                     "\": no shard holds a window of seq_len + 1 = ",
                     options.seq_len + 1, " tokens (documents and end-of-document tokens)"));
  }
  auto reader = std::unique_ptr<TokenReader>(
      new TokenReader(options, std::move(manifest), std::move(window_begin)));
  TESSERA_RETURN_IF_ERROR(reader->batches_.Resume(options.start, options.dir));
  return reader;
}

TokenReader::TokenReader(const TokenReaderOptions& options, DataManifest manifest,
                         std::vector<int64_t> window_begin)
    : options_(options),
      window_begin_(std::move(window_begin)),
      shards_(options.dir, manifest),
      batches_(
          options, window_begin_.back(),
          [this](const std::vector<int64_t>& indices) { return Read(indices); },
          [this] {
            shards_.CloseAll();
            documents_.clear();
          }) {
  // ReadManifest checked both.
  vocab_size_ = *IntAttribute(manifest, "vocab_size", options.dir);
  eod_token_ = static_cast<int32_t>(*IntAttribute(manifest, "eod_token", options.dir));
}

absl::StatusOr<const TokenReader::Documents*> TokenReader::DocumentsOf(int shard) {
  auto it = documents_.find(shard);
  if (it != documents_.end()) return &it->second;
  TESSERA_ASSIGN_OR_RETURN(const ShardInfo* info, shards_.Info(shard));
  Documents documents;
  const int64_t rows = info->dims.at("doc_offsets")[0];  // validated: starts at 0, monotone
  documents.offsets.resize(static_cast<size_t>(rows));
  TESSERA_RETURN_IF_ERROR(
      shards_.ReadRange(shard, "doc_offsets", DType::kI64, 0, rows, documents.offsets.data()));
  for (int64_t d = 0; d < rows; ++d) documents.starts.push_back(documents.offsets[d] + d);
  documents.has_loss_mask = info->dims.count("loss_mask") > 0;
  return &documents_.emplace(shard, std::move(documents)).first->second;
}

absl::Status TokenReader::ReadWindow(int shard, int64_t window, int32_t* tokens, uint8_t* mask) {
  TESSERA_ASSIGN_OR_RETURN(const Documents* docs, DocumentsOf(shard));
  const int64_t begin = window * options_.seq_len, end = begin + options_.seq_len + 1;
  // The document holding stream position `begin`.
  size_t d = static_cast<size_t>(std::upper_bound(docs->starts.begin(), docs->starts.end(), begin) -
                                 docs->starts.begin() - 1);
  std::vector<Piece> pieces;
  for (int64_t position = begin; position < end;) {
    const int64_t length = docs->offsets[d + 1] - docs->offsets[d];
    const int64_t inside = position - docs->starts[d];
    if (inside < length) {
      const int64_t count = std::min(length - inside, end - position);
      pieces.push_back({position - begin, docs->offsets[d] + inside, count});
      position += count;
    } else {
      pieces.push_back({position - begin, 0, 0});
      ++position;
      ++d;
    }
  }
  // The window's tokens are one contiguous range of `tokens`.
  int64_t first = -1, last = -1;
  for (const Piece& piece : pieces) {
    if (piece.count == 0) continue;
    if (first < 0) first = piece.first;
    last = piece.first + piece.count;
  }
  const int64_t count = first < 0 ? 0 : last - first;
  const std::string path = shards_.ShardFile(shard);
  token_scratch_.resize(static_cast<size_t>(count));
  mask_scratch_.assign(static_cast<size_t>(count), 1);
  if (count == 0) first = 0;  // a window of end-of-document tokens only
  TESSERA_RETURN_IF_ERROR(
      shards_.ReadRange(shard, "tokens", DType::kI32, first, count, token_scratch_.data()));
  TESSERA_RETURN_IF_ERROR(CheckIdsBelow(token_scratch_.data(), count, vocab_size_, "vocab_size",
                                        {path, "tokens", first}));
  if (docs->has_loss_mask) {
    TESSERA_RETURN_IF_ERROR(
        shards_.ReadRange(shard, "loss_mask", DType::kU8, first, count, mask_scratch_.data()));
    TESSERA_RETURN_IF_ERROR(CheckLossMask(mask_scratch_.data(), count, {path, "loss_mask", first}));
  }
  for (const Piece& piece : pieces) {
    if (piece.count == 0) {
      tokens[piece.at] = eod_token_;
      mask[piece.at] = docs->has_loss_mask ? 0 : 1;  // with a mask, only marked tokens count
      continue;
    }
    std::copy_n(token_scratch_.begin() + (piece.first - first), piece.count, tokens + piece.at);
    std::copy_n(mask_scratch_.begin() + (piece.first - first), piece.count, mask + piece.at);
  }
  return absl::OkStatus();
}

absl::StatusOr<TokenBatch> TokenReader::Read(const std::vector<int64_t>& indices) {
  TokenBatch batch;
  const int64_t b = static_cast<int64_t>(indices.size()), width = options_.seq_len + 1;
  batch.tokens = Tensor::Empty(DType::kI32, Shape{b, width});                // [B, seq_len + 1]
  batch.loss_mask = Tensor::Empty(DType::kF32, Shape{b, options_.seq_len});  // [B, seq_len]
  std::vector<uint8_t> mask(static_cast<size_t>(width));
  for (int64_t i = 0; i < b; ++i) {
    const int shard =
        static_cast<int>(std::upper_bound(window_begin_.begin(), window_begin_.end(), indices[i]) -
                         window_begin_.begin() - 1);
    TESSERA_RETURN_IF_ERROR(ReadWindow(shard, indices[i] - window_begin_[shard],
                                       batch.tokens.data<int32_t>() + i * width, mask.data()));
    float* targets = batch.loss_mask.data<float>() + i * options_.seq_len;
    for (int64_t j = 0; j < options_.seq_len; ++j) {
      targets[j] = mask[j + 1];
      batch.num_targets += mask[j + 1];
    }
  }
  return batch;
}

}  // namespace tessera
