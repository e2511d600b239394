// Synthetic tokens data sets: a learnable toy language, and the multi-query
// associative recall task (docs/data-format.md, "Synthetic data").
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace tessera {

// A first-order Markov language over tokens [0, vocab_size - 1); the end of
// document is vocab_size - 1. Each token has `branching` distinct successors
// fixed by the seed; a document starts at a uniform token and moves to a
// uniform one of its successors, so after the first token the best possible
// cross-entropy is ln(branching) nats. Document lengths are uniform in
// [min_length, max_length]. Document i depends only on (seed, i).
struct MarkovLanguageSpec {
  int64_t num_documents = 1024;
  int64_t vocab_size = 64;
  int64_t branching = 4;
  int64_t min_length = 16, max_length = 256;
  uint64_t seed = 0;
  int64_t documents_per_shard = 10000;
};
absl::Status SynthesizeMarkovLanguage(const std::string& out_dir, const MarkovLanguageSpec& spec);

// Multi-query associative recall. A document is
//   k_1 v_1 k_2 v_2 … k_P v_P   q_1 a_1 … q_Q a_Q
// with P distinct keys from [0, num_keys), values from
// [num_keys, num_keys + num_values), queries Q distinct keys among the P in
// random order, and a_j the value bound to q_j. The shard's `loss_mask` is 1
// exactly at the answers a_j. vocab_size = num_keys + num_values + 1, the end
// of document is the last id. Every document has 2P + 2Q tokens, so with
// seq_len = 2P + 2Q + 1 (stored as the `seq_len` attribute) window w starts
// exactly at document w.
struct AssociativeRecallSpec {
  int64_t num_documents = 1024;
  int64_t pairs = 8;
  int64_t queries = 8;
  int64_t num_keys = 32, num_values = 32;
  uint64_t seed = 0;
  int64_t documents_per_shard = 10000;
};
absl::Status SynthesizeAssociativeRecall(const std::string& out_dir,
                                         const AssociativeRecallSpec& spec);

}  // namespace tessera
