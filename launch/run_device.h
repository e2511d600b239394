// The device a run trains on (train.device, docs/cuda.md): resolved once per
// process, before MPI binds a GPU, and turned into the Backend that the
// model's parameter store, the trainer and the step's arena use.
#pragma once

#include <memory>

#include "absl/status/status.h"
#include "launch/distributed.h"
#include "runtime/backend/backend.h"
#include "runtime/config/config.pb.h"

namespace tessera {

// Whether `config` asks for, or under "auto" gets, the GPU in this build on
// this machine. False for a config whose device is invalid (validation says
// why later).
bool RunUsesGpu(const RunConfig& config);

// Sets distributed.backend (unless the caller already chose one, as tests
// do): the host backend for "cpu", a CudaBackend on this rank's device for
// "cuda". Under MPI, BuildGroups then gives the run's groups their device
// communicators (launch/device_comm.h).
absl::Status SelectRunBackend(const RunConfig& config, Distributed& distributed);

// After BuildGroups: sparse parameters (HSTU's item table) stay in host
// memory on every rank if SelectRunBackend's plan kept them there on any
// (the table's collectives need one placement). A no-op without MPI and
// on a CPU run.
absl::Status AgreeOnSparsePlacement(Distributed& distributed);

}  // namespace tessera
