// Helpers of the tests that train on the pretend device against the CPU
// (device_run_test.cc, hstu_device_run_test.cc).
#pragma once

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

#include "launch/distributed.h"
#include "launch/train_command.h"
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

}  // namespace tessera::testing
