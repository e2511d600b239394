// SIGTERM and SIGUSR1 ask a run to stop: the handler only sets a flag; the
// step loop reads it at the next step boundary, the ranks agree on it, save
// a checkpoint and exit 75 ("saved, requeue me": Slurm's --signal and
// preemption send these).
#pragma once

namespace tessera {

// Installs the handlers (idempotent).
void InstallStopSignalHandlers();
// True once SIGTERM or SIGUSR1 arrived (or RequestStop was called).
bool StopRequested();
// The signal that asked, for messages (0 when RequestStop was called).
int StopSignal();
// For tests and for the fault injector: as if a signal arrived.
void RequestStop();
void ClearStopRequest();

}  // namespace tessera
