// Signals, from the first instruction to the last.
//
// Start-up (InstallStartupSignalHandlers, first thing in main): SIGTERM and
// SIGUSR1 end the process at once with exit 75 and SIGINT with exit 130,
// saying on stderr that there is nothing to save yet. Nothing is left
// half-written under its final name: every file tessera writes goes to a
// temporary name first, and the run directory is only touched once the
// step loop can honour a stop.
//
// Training (InstallStopSignalHandlers, once the model is built and the data
// open): SIGTERM and SIGUSR1 only set a flag; the step loop reads it at the
// next step boundary, the ranks agree on it, save a checkpoint and exit 75
// ("saved, requeue me": Slurm's --signal and preemption send these).
// SIGINT (Ctrl-C) ends the process at once with exit 130.
#pragma once

namespace tessera {

// SIGTERM/SIGUSR1 -> exit 75, SIGINT -> exit 130, each with one line on
// stderr; SIGXFSZ ignored (a write past a file size limit fails with EFBIG
// and is reported as an error instead of killing the process).
void InstallStartupSignalHandlers();
// Switches SIGTERM/SIGUSR1 to setting the stop flag, and SIGINT to exit 130
// at once saying nothing was saved (idempotent).
void InstallStopSignalHandlers();
// True once SIGTERM or SIGUSR1 arrived (or RequestStop was called).
bool StopRequested();
// The signal that asked, for messages (0 when RequestStop was called).
int StopSignal();
// For tests and for the fault injector: as if a signal arrived.
void RequestStop();
void ClearStopRequest();

}  // namespace tessera
