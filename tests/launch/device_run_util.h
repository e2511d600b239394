// Helpers of the tests that train on the pretend device against the CPU
// (device_run_test.cc, hstu_device_run_test.cc, mamba_device_run_test.cc,
// mpi/device_collectives_test.cc).
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

#include "data/synthetic_interactions.h"
#include "data/synthetic_tokens.h"
#include "launch/distributed.h"
#include "launch/train_command.h"
#include "runtime/checkpoint/checkpoint_tools.h"
#include "runtime/checkpoint/sharded_checkpoint.h"
#include "runtime/config/config.h"

namespace tessera::testing {

// The "name":value pairs of each metrics.jsonl line whose name starts with
// one of `prefixes` (e.g. "\"loss\":", "\"val_"), in line order, as written;
// what differs between processes anyway (timings, memory) is left out by
// not naming it.
inline std::vector<std::string> LoggedFields(const std::string& path,
                                             std::initializer_list<const char*> prefixes) {
  std::ifstream in(path);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) {
    std::string kept;
    for (const char* prefix : prefixes) {
      for (size_t at = line.find(prefix); at != std::string::npos; at = line.find(prefix, at + 1)) {
        const size_t end = line.find_first_of(",}", at);
        kept += line.substr(at, end - at) + " ";
      }
    }
    out.push_back(kept);
  }
  return out;
}

// The tiny Mamba-2 hybrid's language in `dir`: a Markov language of 64
// tokens (about 3800 tokens in 64 documents).
inline absl::Status SynthesizeTinyLanguage(const std::string& dir) {
  MarkovLanguageSpec language;
  language.num_documents = 64;
  language.vocab_size = 64;
  language.min_length = 24;
  language.max_length = 96;
  language.seed = 3;
  return SynthesizeMarkovLanguage(dir, language);
}

// Tiny HSTU interactions in `dir`: `users` users over 200 items, histories
// of min_length to max_length events.
inline absl::Status SynthesizeTinyInteractions(const std::string& dir, int users, int min_length,
                                               int max_length) {
  ClusteredInteractionsSpec spec;
  spec.num_users = users;
  spec.num_items = 200;
  spec.min_length = min_length;
  spec.max_length = max_length;
  spec.seed = 3;
  return SynthesizeInteractions(dir, spec);
}

// `config` as one process on `backend`.
inline absl::Status TrainAlone(const RunConfig& config, Backend& backend) {
  Distributed alone;
  alone.backend = &backend;
  return TrainRun(config, alone);
}

// `config` resuming from run `from`'s checkpoint `step_dir` (e.g.
// "step_00000002"), copied into the checkpoints of config's run directory.
inline RunConfig ResumingFrom(RunConfig config, const std::string& from,
                              const std::string& step_dir) {
  const std::string into = config.train().run_dir() + "/checkpoints";
  std::filesystem::create_directories(into);
  std::filesystem::copy(from + "/checkpoints/" + step_dir, into + "/" + step_dir,
                        std::filesystem::copy_options::recursive);
  config.mutable_checkpoint()->set_resume(into + "/" + step_dir);
  return config;
}

// Every tensor of two checkpoint directories (parameters, optimizer
// moments, EMA) equal bit for bit.
inline void ExpectSameCheckpoint(const std::string& want_dir, const std::string& got_dir) {
  const absl::StatusOr<CheckpointManifest> want = ReadCheckpointManifest(want_dir);
  const absl::StatusOr<CheckpointManifest> got = ReadCheckpointManifest(got_dir);
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(want->tensors_size(), got->tensors_size()) << got_dir;
  ASSERT_GT(want->tensors_size(), 0) << want_dir;
  for (int i = 0; i < want->tensors_size(); ++i) {
    const CheckpointTensor& tensor = want->tensors(i);
    ASSERT_EQ(got->tensors(i).name(), tensor.name());
    ASSERT_EQ(got->tensors(i).kind(), tensor.kind());
    const absl::StatusOr<std::vector<float>> a = ReadGlobalTensor(want_dir, *want, tensor);
    const absl::StatusOr<std::vector<float>> b = ReadGlobalTensor(got_dir, *got, got->tensors(i));
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    ASSERT_EQ(a->size(), b->size()) << tensor.name();
    EXPECT_EQ(std::memcmp(a->data(), b->data(), a->size() * sizeof(float)), 0)
        << tensor.name() << " (" << tensor.kind() << ") of " << got_dir << " differs from "
        << want_dir;
  }
}

}  // namespace tessera::testing
