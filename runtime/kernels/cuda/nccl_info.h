// Which NCCL this binary runs with. Needs no device: it proves NCCL is linked
// and lets the startup log name the version.
#pragma once

#include <string>

namespace tessera::cuda {

// "2.28.9", from ncclGetVersion (the library loaded at run time, which may be
// newer than the header compiled against). "unknown" if the call fails.
std::string NcclVersionString();

// NCCL_VERSION_CODE of the header compiled against, e.g. 22809.
int NcclHeaderVersionCode();

}  // namespace tessera::cuda
