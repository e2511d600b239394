#include "runtime/train/signals.h"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>

namespace tessera {
namespace {
// Written by the handler: lock-free atomics are async-signal-safe.
std::atomic<int> stop_signal{-1};
static_assert(std::atomic<int>::is_always_lock_free);

extern "C" void OnStopSignal(int signal) { stop_signal.store(signal); }

// Only async-signal-safe calls: write(2) and _exit(2).
extern "C" void OnStartupSignal(int signal) {
  const char* message =
      signal == SIGINT    ? "tessera: interrupted (SIGINT) during start-up: nothing to save yet\n"
      : signal == SIGUSR1 ? "tessera: stopped by SIGUSR1 during start-up: nothing to save yet\n"
                          : "tessera: stopped by SIGTERM during start-up: nothing to save yet\n";
  ssize_t ignored = ::write(STDERR_FILENO, message, std::strlen(message));
  (void)ignored;
  ::_exit(signal == SIGINT ? 130 : 75);
}

// SIGINT while training: a person at the terminal wants it to end now;
// the last committed checkpoint stays what --resume continues from.
extern "C" void OnInterrupt(int) {
  const char message[] =
      "tessera: interrupted (SIGINT): not saved; --resume continues from the last checkpoint\n";
  ssize_t ignored = ::write(STDERR_FILENO, message, sizeof(message) - 1);
  (void)ignored;
  ::_exit(130);
}

void Handle(int signal, void (*handler)(int)) {
  struct sigaction action = {};
  action.sa_handler = handler;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // system calls in flight resume
  sigaction(signal, &action, nullptr);
}
}  // namespace

void InstallStartupSignalHandlers() {
  Handle(SIGTERM, OnStartupSignal);
  Handle(SIGUSR1, OnStartupSignal);
  Handle(SIGINT, OnStartupSignal);
  std::signal(SIGXFSZ, SIG_IGN);
}

void InstallStopSignalHandlers() {
  Handle(SIGTERM, OnStopSignal);
  Handle(SIGUSR1, OnStopSignal);
  Handle(SIGINT, OnInterrupt);
  // Past a file size limit, writes fail with EFBIG (a checkpoint error,
  // nothing committed) instead of killing the process.
  std::signal(SIGXFSZ, SIG_IGN);
}

bool StopRequested() { return stop_signal.load() >= 0; }
int StopSignal() { return stop_signal.load() < 0 ? 0 : stop_signal.load(); }
void RequestStop() { stop_signal.store(0); }
void ClearStopRequest() { stop_signal.store(-1); }

}  // namespace tessera
