#include "data/synthetic_tokens.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "data/sequence_writers.h"
#include "runtime/base/errors.h"
#include "runtime/base/random.h"
#include "runtime/base/status.h"

namespace tessera {
namespace {

// Streams of Rng(seed, ·), apart so documents and the grammar never share draws.
constexpr uint64_t kGrammarStream = uint64_t{1} << 62;

// `count` distinct uniform values from [0, n), in draw order: rejection when
// few are wanted (O(count^2), no O(n) table), else a partial Fisher-Yates.
std::vector<int64_t> DistinctBelow(int64_t n, int64_t count, Rng& rng) {
  std::vector<int64_t> values;
  if (count * 8 <= n) {
    while (static_cast<int64_t>(values.size()) < count) {
      const int64_t value = static_cast<int64_t>(rng.Below(static_cast<uint64_t>(n)));
      if (std::find(values.begin(), values.end(), value) == values.end()) values.push_back(value);
    }
    return values;
  }
  values.resize(static_cast<size_t>(n));
  std::iota(values.begin(), values.end(), 0);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t j = i + static_cast<int64_t>(rng.Below(static_cast<uint64_t>(n - i)));
    std::swap(values[i], values[j]);
  }
  values.resize(static_cast<size_t>(count));
  return values;
}

absl::Status CheckMarkov(const MarkovLanguageSpec& spec) {
  if (spec.num_documents < 0 || spec.vocab_size < 2 || spec.branching < 1 ||
      spec.branching > spec.vocab_size - 1 || spec.min_length < 1 ||
      spec.max_length < spec.min_length) {
    return UsageError(absl::StrCat(
        "synthetic tokens: need documents >= 0, vocab_size >= 2, 1 <= branching < vocab_size, "
        "1 <= min_length <= max_length; got ",
        spec.num_documents, ", ", spec.vocab_size, ", ", spec.branching, ", ", spec.min_length,
        ", ", spec.max_length));
  }
  return absl::OkStatus();
}

std::vector<int32_t> MarkovDocument(const MarkovLanguageSpec& spec,
                                    const std::vector<std::vector<int64_t>>& successors,
                                    int64_t index) {
  Rng rng(spec.seed, static_cast<uint64_t>(index));
  const int64_t span = spec.max_length - spec.min_length + 1;
  const int64_t length = spec.min_length + static_cast<int64_t>(rng.Below(span));
  std::vector<int32_t> tokens;
  int64_t token = static_cast<int64_t>(rng.Below(static_cast<uint64_t>(spec.vocab_size - 1)));
  for (int64_t i = 0; i < length; ++i) {
    tokens.push_back(static_cast<int32_t>(token));
    token = successors[token][rng.Below(static_cast<uint64_t>(spec.branching))];
  }
  return tokens;
}

absl::Status CheckRecall(const AssociativeRecallSpec& spec) {
  if (spec.num_documents < 0 || spec.pairs < 1 || spec.queries < 1 || spec.queries > spec.pairs ||
      spec.num_keys < spec.pairs || spec.num_values < 1) {
    return UsageError(absl::StrCat(
        "associative recall: need documents >= 0, 1 <= queries <= pairs <= keys, values >= 1; "
        "got ",
        spec.num_documents, ", ", spec.queries, ", ", spec.pairs, ", ", spec.num_keys, ", ",
        spec.num_values));
  }
  return absl::OkStatus();
}

// One recall document: tokens and the loss mask marking the answers.
void RecallDocument(const AssociativeRecallSpec& spec, int64_t index, std::vector<int32_t>& tokens,
                    std::vector<uint8_t>& mask) {
  Rng rng(spec.seed, static_cast<uint64_t>(index));
  const std::vector<int64_t> keys = DistinctBelow(spec.num_keys, spec.pairs, rng);
  std::vector<int64_t> values;
  tokens.clear();
  mask.clear();
  for (int64_t key : keys) {
    values.push_back(spec.num_keys + static_cast<int64_t>(rng.Below(spec.num_values)));
    tokens.insert(tokens.end(), {static_cast<int32_t>(key), static_cast<int32_t>(values.back())});
    mask.insert(mask.end(), {0, 0});
  }
  for (int64_t pair : DistinctBelow(spec.pairs, spec.queries, rng)) {
    tokens.insert(tokens.end(),
                  {static_cast<int32_t>(keys[pair]), static_cast<int32_t>(values[pair])});
    mask.insert(mask.end(), {0, 1});
  }
}

}  // namespace

absl::Status SynthesizeMarkovLanguage(const std::string& out_dir, const MarkovLanguageSpec& spec) {
  TESSERA_RETURN_IF_ERROR(CheckMarkov(spec));
  std::vector<std::vector<int64_t>> successors;  // [vocab_size - 1][branching]
  for (int64_t token = 0; token < spec.vocab_size - 1; ++token) {
    Rng rng(spec.seed, kGrammarStream + static_cast<uint64_t>(token));
    successors.push_back(DistinctBelow(spec.vocab_size - 1, spec.branching, rng));
  }
  TESSERA_ASSIGN_OR_RETURN(auto builder,
                           TokensDatasetBuilder::Create(out_dir, spec.documents_per_shard, false));
  for (int64_t i = 0; i < spec.num_documents; ++i) {
    TESSERA_RETURN_IF_ERROR(builder.Add(MarkovDocument(spec, successors, i)));
  }
  return builder.Finish({{"vocab_size", absl::StrCat(spec.vocab_size)},
                         {"eod_token", absl::StrCat(spec.vocab_size - 1)},
                         {"task", "markov"},
                         {"branching", absl::StrCat(spec.branching)}},
                        absl::StrCat("synthetic Markov language, seed ", spec.seed));
}

absl::Status SynthesizeAssociativeRecall(const std::string& out_dir,
                                         const AssociativeRecallSpec& spec) {
  TESSERA_RETURN_IF_ERROR(CheckRecall(spec));
  TESSERA_ASSIGN_OR_RETURN(auto builder,
                           TokensDatasetBuilder::Create(out_dir, spec.documents_per_shard, true));
  std::vector<int32_t> tokens;
  std::vector<uint8_t> mask;
  for (int64_t i = 0; i < spec.num_documents; ++i) {
    RecallDocument(spec, i, tokens, mask);
    TESSERA_RETURN_IF_ERROR(builder.Add(tokens, mask));
  }
  const int64_t vocab = spec.num_keys + spec.num_values + 1;
  return builder.Finish({{"vocab_size", absl::StrCat(vocab)},
                         {"eod_token", absl::StrCat(vocab - 1)},
                         {"task", "associative-recall"},
                         {"pairs", absl::StrCat(spec.pairs)},
                         {"queries", absl::StrCat(spec.queries)},
                         {"num_keys", absl::StrCat(spec.num_keys)},
                         {"num_values", absl::StrCat(spec.num_values)},
                         {"seq_len", absl::StrCat(2 * spec.pairs + 2 * spec.queries + 1)}},
                        absl::StrCat("synthetic multi-query associative recall, seed ", spec.seed));
}

}  // namespace tessera
