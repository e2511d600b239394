// How the compute threads wait between parallel regions.
//
// tessera's kernels and oneDNN run on GNU OpenMP (libgomp), whose threads
// spin at the end of every parallel region (up to GOMP_SPINCOUNT = 300 000
// iterations) waiting for the slowest thread. When another process shares the
// cores, the slowest thread is often descheduled, and the others burn their
// time slices spinning for it: the quickstart beside one busy `nice -n 19`
// process fell from 264 to under 11 samples/s. Sleeping at once
// (OMP_WAIT_POLICY=passive) fixes that but pays a futex wake-up at every
// region, ~10-18 % of the quickstart alone. tessera therefore bounds the spin:
// GOMP_SPINCOUNT=20000 (a few microseconds, then sleep) keeps the solo speed
// and gives up the cores quickly when another process wants them. The user's
// own choice -- OMP_WAIT_POLICY or GOMP_SPINCOUNT set in the environment --
// is left alone (OMP_WAIT_POLICY=active restores the long spin).
// docs/launching.md, "Threads", has the measurements.
//
// libgomp reads its environment when it is loaded, before main(), so the
// variable only takes effect in a process started with it: EnsureThreadWaitPolicy
// sets it and re-executes the program once.
#pragma once

#include <functional>
#include <optional>
#include <string>

namespace tessera {

struct EnvironmentSetting {
  std::string name, value;
};

// What to set, given the environment (`getenv`), or nothing when the user
// already chose.
std::optional<EnvironmentSetting> ChooseThreadWaitPolicy(
    const std::function<const char*(const char*)>& getenv);

// Call first thing in main(): when ChooseThreadWaitPolicy picks a setting,
// sets it and execv()s /proc/self/exe with the same arguments (the process
// id, and so an MPI launcher's view of it, stays the same). Returns only when
// nothing had to change, or when the exec failed (then the run goes on with
// OpenMP's defaults, after a warning on stderr).
void EnsureThreadWaitPolicy(char** argv);

}  // namespace tessera
