// Sharded checkpoint save and load throughput against plain POSIX I/O of the
// same bytes in the same directory, measured in the same run.
//
// Every rank builds DiT-MoE-S/2-8E2A's ParameterStore (config.proto's
// defaults; 199 M parameters at depth 12), an EMA copy and AdamW moments of
// the same size, and holds all of it: with N ranks this is data parallelism
// without ZeRO, so every piece is replicated N times and SaveCheckpoint
// writes each once (each rank writes about 1/N of the bytes), while every
// rank's load reads everything. Per repetition:
//
//   1. snapshot   SnapshotPieces (params, ema, adam_m, adam_v): the host copy;
//                 then the same copy again into its now-touched buffers
//   2. write      plain reference before the save: each rank writes its even
//                 share of the snapshot's bytes to plain_rank_R.bin with
//                 write() (one call per piece), then fsync() and close()
//   3. save       SaveCheckpoint over the MPI world (collective, commit included)
//   4. write      the same after the save, as many bytes as its rank file holds.
//                 Both are reported: on this project's VM whichever write comes
//                 first after the snapshot pays for touching fresh guest pages;
//                 the ratio is against the faster one
//   5. drop       posix_fadvise(DONTNEED) on every rank file and plain file
//                 (their pages are clean after the fsyncs, so they go),
//                 checked with mincore()
//   6. load       LoadPieces(LoadTargets) into the zeroed live state; each
//                 target's CRC-32C must match the snapshot's
//   7. drop       as 5
//   8. read       each rank read()s every plain file (as many bytes as the
//                 whole checkpoint holds, what load reads at tp = 1)
//
// Times are per rank from a barrier to the rank's return; MB = 10^6 bytes.
// The ratio ckpt/plain is the goal figure (>= 70 %). The best repetition
// (highest throughput) is reported next to the median.
//
//   [mpirun -np N] bench_checkpoint [dir (default /tmp)] [depth (default 12)] [reps (default 1)]
//
// Memory: about 9 x 4 bytes per parameter per rank (values, grads, EMA, two
// moments, the 4-kind snapshot): 7.2 GB per rank at depth 12. The bench
// refuses to start when MemAvailable is smaller than that times the ranks.
#include <fcntl.h>
#include <mpi.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "models/dit_moe/model.h"
#include "parallel/comm/host_group_adapter.h"
#include "parallel/comm/mpi_runtime.h"
#include "parallel/comm/watchdog.h"
#include "runtime/checkpoint/crc32c.h"
#include "runtime/checkpoint/sharded_checkpoint.h"
#include "runtime/kernels/cpu/gemm.h"
#include "runtime/optim/adamw.h"
#include "runtime/train/checkpointing.h"

namespace {

using Clock = std::chrono::steady_clock;
using tessera::parallel::AbortJob;
namespace fs = std::filesystem;

double Since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void Check(const absl::Status& status) {
  if (!status.ok()) AbortJob(status);
}

[[noreturn]] void Fail(const std::string& what) {
  AbortJob(absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno))));
}

int64_t MemAvailableBytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return 0;
}

int64_t FileBytes(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) Fail(absl::StrCat("stat ", path));
  return st.st_size;
}

// Drops the file's pages from the page cache (they are clean after fsync).
void DropFromCache(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) Fail(absl::StrCat("open ", path));
  ::fdatasync(fd);  // no-op for clean pages; makes DONTNEED reliable otherwise
  const int rc = ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  if (rc != 0) {
    errno = rc;
    Fail(absl::StrCat("posix_fadvise ", path));
  }
  ::close(fd);
}

// Fraction of the file's pages in the page cache (mincore over an mmap).
double ResidentFraction(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) Fail(absl::StrCat("open ", path));
  const int64_t bytes = FileBytes(path);
  if (bytes == 0) {
    ::close(fd);
    return 0;
  }
  void* map = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) Fail(absl::StrCat("mmap ", path));
  const int64_t page = ::sysconf(_SC_PAGESIZE);
  std::vector<unsigned char> resident((bytes + page - 1) / page);
  if (::mincore(map, bytes, resident.data()) != 0) Fail(absl::StrCat("mincore ", path));
  int64_t in_cache = 0;
  for (unsigned char r : resident) in_cache += r & 1;
  ::munmap(map, bytes);
  ::close(fd);
  return static_cast<double>(in_cache) / static_cast<double>(resident.size());
}

// Writes `bytes` bytes taken from the snapshot's buffers in order (cycling
// if the file must be longer than one snapshot), one write() per piece as
// HDF5 issues one per dataset, then fsync and close.
void PlainWrite(const std::string& path, const tessera::CheckpointSnapshot& snapshot,
                int64_t bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) Fail(absl::StrCat("open ", path));
  int64_t left = bytes;
  while (left > 0) {
    for (const tessera::SavePiece& piece : snapshot.pieces) {
      const char* data = reinterpret_cast<const char*>(piece.data.data());
      int64_t n = std::min<int64_t>(left, piece.data.size() * sizeof(float));
      left -= n;
      while (n > 0) {
        const ssize_t w = ::write(fd, data, n);
        if (w < 0) Fail(absl::StrCat("write ", path));
        data += w;
        n -= w;
      }
      if (left == 0) break;
    }
  }
  if (::fsync(fd) != 0) Fail(absl::StrCat("fsync ", path));
  ::close(fd);
}

// Reads the whole file into `buffer` (reused, 64 MiB at a time); returns bytes.
int64_t PlainRead(const std::string& path, std::vector<char>& buffer) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) Fail(absl::StrCat("open ", path));
  int64_t total = 0;
  for (;;) {
    const ssize_t r = ::read(fd, buffer.data(), buffer.size());
    if (r < 0) Fail(absl::StrCat("read ", path));
    if (r == 0) break;
    total += r;
  }
  ::close(fd);
  return total;
}

std::string Key(const tessera::PieceDesc& d) {
  return absl::StrCat(d.name, "|", d.kind, "|", d.run_begin, "|", d.run_end);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  auto runtime = tessera::parallel::MpiRuntime::Init(&argc, &argv);
  if (!runtime.ok()) {
    std::fprintf(stderr, "%s\n", std::string(runtime.status().message()).c_str());
    return 5;
  }
  const std::string dir = argc > 1 ? argv[1] : "/tmp";
  const int depth = argc > 2 ? std::atoi(argv[2]) : 12;
  const int reps = argc > 3 ? std::max(1, std::atoi(argv[3])) : 1;
  auto world_or = (*runtime)->CreateWorld(absl::Seconds(1800));
  if (!world_or.ok()) AbortJob(world_or.status());
  tessera::parallel::CommunicatorHostGroup group(world_or->get());
  const int rank = group.rank(), ranks = group.size();
  tessera::cpu::SetNumThreads(1);

  // The model's parameters, registered but not yet allocated.
  tessera::DitMoeConfig config;  // config.proto's defaults are S/2-8E2A at 32x32x1
  config.set_depth(depth);
  tessera::ParameterStore store;
  auto model = tessera::dit_moe::DitMoe::Create(config, store);
  Check(model.status());
  int64_t params = 0;
  for (const tessera::ParamInfo& info : store.infos()) params += info.local_shape.numel();
  const int64_t need = 9 * 4 * params;
  {
    // Every rank reads MemAvailable before anyone allocates.
    Check(group.Barrier());
    const int64_t available = MemAvailableBytes();
    auto min_available = group.AllReduceMin(available);
    Check(min_available.status());
    if (need * ranks > *min_available) {
      if (rank == 0) {
        std::fprintf(stderr,
                     "bench_checkpoint: needs about %.1f GB (%d ranks x %.2f GB) but %.1f GB is "
                     "available; pass a smaller depth\n",
                     need * ranks / 1e9, ranks, need / 1e9, *min_available / 1e9);
      }
      return 1;
    }
  }
  store.Finalize(0);
  // EMA and moments with values of their own (only their sizes matter: no
  // compression), so a load that fills the wrong buffer fails the check.
  std::vector<float> ema(store.values().data<float>(), store.values().data<float>() + params);
  tessera::OptimConfig optim;
  tessera::AdamW adam(store, optim);
  for (int64_t i = 0; i < params; ++i) {
    ema[i] *= 0.5f;
    adam.m().data<float>()[i] = 1e-3f * static_cast<float>(i % 1009);
    adam.v().data<float>()[i] = 1e-6f * static_cast<float>(i % 997);
  }
  tessera::TrainingState state{&store, ema.data(), {&adam}, /*tp_rank=*/0};

  const std::string run_dir = absl::StrCat(dir, "/bench_checkpoint_run");
  if (rank == 0) {
    std::error_code ignored;
    fs::remove_all(run_dir, ignored);
    fs::create_directories(run_dir, ignored);
    std::printf("bench_checkpoint: DiT-MoE-S/2-8E2A depth %d, %lld parameters, %d rank(s) "
                "(data parallel, every piece replicated %d times), dir %s, %d repetition(s)\n",
                depth, static_cast<long long>(params), ranks, ranks, run_dir.c_str(), reps);
  }
  Check(group.Barrier());
  auto plain_path = [&](int r) { return absl::StrFormat("%s/plain_rank_%05d.bin", run_dir, r); };

  struct Rep {
    double snapshot, warm_copy, save, write_before, write, load, read, resident_ckpt, resident_plain;
  };
  std::vector<Rep> results;
  int64_t snapshot_bytes = 0, written = 0, payload = 0, total_file_bytes = 0, load_bytes = 0;
  std::vector<char> read_buffer(64 << 20);
  for (int rep = 0; rep < reps; ++rep) {
    Rep r{};
    const int64_t step = rep + 1;
    Check(group.Barrier());
    auto start = Clock::now();
    tessera::CheckpointSnapshot snapshot;
    snapshot.meta.step = step;
    snapshot.meta.rng_state = "bench";
    snapshot.meta.mesh.set_world(ranks);
    snapshot.meta.mesh.set_dp(ranks);
    tessera::SnapshotPieces(state, &snapshot.pieces);
    r.snapshot = Since(start);
    {
      // The same copy into the snapshot's buffers, now touched: what a saver
      // that kept its buffers between saves would pay.
      std::map<std::string, const float*> sources;
      for (const tessera::LoadPiece& t : tessera::LoadTargets(state, false)) {
        sources[Key(t.desc)] = t.data;
      }
      start = Clock::now();
      for (tessera::SavePiece& p : snapshot.pieces) {
        std::memcpy(p.data.data(), sources.at(Key(p.desc)), p.data.size() * sizeof(float));
      }
      r.warm_copy = Since(start);
    }
    snapshot_bytes = 0;
    std::map<std::string, uint32_t> crcs;
    for (const tessera::SavePiece& p : snapshot.pieces) {
      snapshot_bytes += p.data.size() * sizeof(float);
      crcs[Key(p.desc)] = tessera::Crc32c(p.data.data(), p.data.size() * sizeof(float));
    }

    // Plain write before and after the save: their order matters on a VM
    // (fresh guest pages are slow to touch), so both are reported.
    auto plain_write = [&](int64_t bytes) {
      ::unlink(plain_path(rank).c_str());  // a truncate would be timed (discard)
      Check(group.Barrier());
      const auto t0 = Clock::now();
      PlainWrite(plain_path(rank), snapshot, bytes);
      return Since(t0);
    };
    // Before the save the exact file size is not known yet: an even share.
    const int64_t share = snapshot_bytes / ranks;
    r.write_before = plain_write(share);

    tessera::SaveOptions save;  // keep_last = 0: the previous step is removed untimed below
    Check(group.Barrier());
    start = Clock::now();
    Check(tessera::SaveCheckpoint(group, run_dir, snapshot, save));
    r.save = Since(start);

    const std::string ckpt_dir =
        absl::StrCat(tessera::CheckpointsRoot(run_dir), "/", tessera::CheckpointDirName(step));
    auto manifest = tessera::ReadCheckpointManifest(ckpt_dir);
    Check(manifest.status());
    written = FileBytes(absl::StrCat(ckpt_dir, "/", tessera::RankFileName(rank)));
    payload = 0;
    for (const auto& tensor : manifest->tensors()) {
      for (const auto& piece : tensor.pieces()) {
        if (piece.rank() == rank) payload += 4 * (piece.run_end() - piece.run_begin());
      }
    }
    total_file_bytes = 0;
    for (int q = 0; q < ranks; ++q) {
      total_file_bytes += FileBytes(absl::StrCat(ckpt_dir, "/", tessera::RankFileName(q)));
    }

    r.write = plain_write(written);
    snapshot = tessera::CheckpointSnapshot();  // frees the copy before loading

    // Returns the larger resident fraction of this rank's two files.
    auto drop = [&] {
      Check(group.Barrier());
      for (int q = 0; q < ranks; ++q) {
        DropFromCache(absl::StrCat(ckpt_dir, "/", tessera::RankFileName(q)));
        DropFromCache(plain_path(q));
      }
      Check(group.Barrier());
      r.resident_ckpt = std::max(
          r.resident_ckpt,
          ResidentFraction(absl::StrCat(ckpt_dir, "/", tessera::RankFileName(rank))));
      r.resident_plain = std::max(r.resident_plain, ResidentFraction(plain_path(rank)));
    };
    drop();

    const std::vector<tessera::LoadPiece> targets = tessera::LoadTargets(state, false);
    load_bytes = 0;
    for (const tessera::LoadPiece& t : targets) {
      load_bytes += t.desc.size() * sizeof(float);
      std::memset(t.data, 0, t.desc.size() * sizeof(float));
    }
    tessera::LoadOptions load;
    load.require_all_tensors = true;  // every rank holds the whole model
    Check(group.Barrier());
    start = Clock::now();
    Check(tessera::LoadPieces(ckpt_dir, *manifest, targets, load));
    r.load = Since(start);
    for (const tessera::LoadPiece& t : targets) {
      auto it = crcs.find(Key(t.desc));
      if (it == crcs.end() ||
          tessera::Crc32c(t.data, t.desc.size() * sizeof(float)) != it->second) {
        AbortJob(absl::DataLossError(
            absl::StrCat("rank ", rank, ": loaded ", t.desc.ToString(), " differs from what was saved")));
      }
    }

    drop();
    Check(group.Barrier());
    start = Clock::now();
    int64_t read_bytes = 0;
    // Every rank reads the files in the same order, as every rank's load does.
    for (int q = 0; q < ranks; ++q) read_bytes += PlainRead(plain_path(q), read_buffer);
    r.read = Since(start);
    if (read_bytes != total_file_bytes) {
      AbortJob(absl::InternalError(absl::StrCat("plain read ", read_bytes, " bytes, expected ",
                                                total_file_bytes)));
    }
    results.push_back(r);
    Check(group.Barrier());
    if (rank == 0) {
      std::error_code ignored;
      fs::remove_all(ckpt_dir, ignored);
    }
  }

  // Per-rank lines, gathered to rank 0 in rank order. Rates are per rank;
  // "best" is the fastest repetition.
  auto mbps = [](int64_t bytes, double s) { return bytes / s / 1e6; };
  std::vector<double> save_bw, before_bw, after_bw, load_bw, read_bw;
  double max_snapshot = 0, max_warm = 0, resident_ckpt = 0, resident_plain = 0;
  for (const Rep& r : results) {
    max_warm = std::max(max_warm, r.warm_copy);
    save_bw.push_back(mbps(written, r.save));
    before_bw.push_back(mbps(snapshot_bytes / ranks, r.write_before));
    after_bw.push_back(mbps(written, r.write));
    load_bw.push_back(mbps(load_bytes, r.load));
    read_bw.push_back(mbps(total_file_bytes, r.read));
    max_snapshot = std::max(max_snapshot, r.snapshot);
    resident_ckpt = std::max(resident_ckpt, r.resident_ckpt);
    resident_plain = std::max(resident_plain, r.resident_plain);
  }
  auto best = [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); };
  const double plain_write = std::max(best(before_bw), best(after_bw));
  std::string line = absl::StrFormat(
      "rank %d: snapshot %.0f MB (host copy %.2f s = %.0f MB/s; into reused buffers %.2f s); wrote %.0f MB (payload %.0f MB, "
      "HDF5 overhead %.3f%%)\n"
      "  save %7.1f MB/s (median %7.1f) | plain write+fsync %7.1f before, %7.1f after the save "
      "(medians %.1f, %.1f) | save / faster plain %5.1f%%\n"
      "  load %7.1f MB/s (median %7.1f) | plain read %7.1f (median %7.1f) | load/plain %5.1f%% "
      "| load reads %.0f MB; after each drop at most %.1f%% (ckpt) / %.1f%% (plain) of this "
      "rank's file was cached\n",
      rank, snapshot_bytes / 1e6, max_snapshot, snapshot_bytes / max_snapshot / 1e6, max_warm,
      written / 1e6, payload / 1e6, 100.0 * (written - payload) / std::max<int64_t>(payload, 1),
      best(save_bw), Median(save_bw), best(before_bw), best(after_bw), Median(before_bw),
      Median(after_bw), 100 * best(save_bw) / plain_write, best(load_bw), Median(load_bw),
      best(read_bw), Median(read_bw), 100 * best(load_bw) / best(read_bw), load_bytes / 1e6,
      100 * resident_ckpt, 100 * resident_plain);
  auto lines = group.AllGather(line);
  Check(lines.status());
  // Job-level figures: the slowest rank's time per repetition, best repetition.
  // The plain reference is the faster of the writes before and after.
  double slowest_save = 1e300, slowest_write = 1e300;
  for (const Rep& r : results) {
    auto s = group.AllReduceMax(static_cast<int64_t>(r.save * 1e6));
    auto w = group.AllReduceMax(static_cast<int64_t>(
        std::min(r.write, r.write_before * written / (snapshot_bytes / ranks)) * 1e6));
    Check(s.status());
    Check(w.status());
    slowest_save = std::min(slowest_save, *s / 1e6);
    slowest_write = std::min(slowest_write, *w / 1e6);
  }
  if (rank == 0) {
    for (const std::string& l : *lines) std::fputs(l.c_str(), stdout);
    std::printf("job: checkpoint of %.0f MB in %.2f s (%.1f MB/s aggregate) vs plain %.2f s "
                "(%.1f MB/s): %.1f%% (best repetition)\n",
                total_file_bytes / 1e6, slowest_save, total_file_bytes / slowest_save / 1e6,
                slowest_write, total_file_bytes / slowest_write / 1e6,
                100 * slowest_write / slowest_save);
    std::error_code ignored;
    fs::remove_all(run_dir, ignored);
  }
  Check(group.Barrier());
  return 0;
}
