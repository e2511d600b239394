#include "runtime/kernels/cuda/nccl_info.h"

#include <nccl.h>

#include "absl/strings/str_format.h"

namespace tessera::cuda {

std::string NcclVersionString() {
  int code = 0;
  if (ncclGetVersion(&code) != ncclSuccess) return "unknown";
  // Since NCCL 2.9 the code is major*10000 + minor*100 + patch (NCCL_VERSION).
  return absl::StrFormat("%d.%d.%d", code / 10000, (code / 100) % 100, code % 100);
}

int NcclHeaderVersionCode() { return NCCL_VERSION_CODE; }

}  // namespace tessera::cuda
