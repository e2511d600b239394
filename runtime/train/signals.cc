#include "runtime/train/signals.h"

#include <atomic>
#include <csignal>

namespace tessera {
namespace {
// Written by the handler: lock-free atomics are async-signal-safe.
std::atomic<int> stop_signal{-1};
static_assert(std::atomic<int>::is_always_lock_free);

extern "C" void OnStopSignal(int signal) { stop_signal.store(signal); }
}  // namespace

void InstallStopSignalHandlers() {
  struct sigaction action = {};
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // system calls in flight resume
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGUSR1, &action, nullptr);
  // Past a file size limit, writes fail with EFBIG (a checkpoint error,
  // nothing committed) instead of killing the process.
  std::signal(SIGXFSZ, SIG_IGN);
}

bool StopRequested() { return stop_signal.load() >= 0; }
int StopSignal() { return stop_signal.load() < 0 ? 0 : stop_signal.load(); }
void RequestStop() { stop_signal.store(0); }
void ClearStopRequest() { stop_signal.store(-1); }

}  // namespace tessera
