// Oracle tensors for the checkpoint tests: every element's value is a known
// function of (name, kind, global row-major index), so any piece can be
// filled, and any loaded piece checked, without trusting the code under test.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runtime/checkpoint/piece.h"

namespace tessera::testing {

inline float OracleValue(const std::string& name, const std::string& kind, int64_t global_index) {
  const size_t h = std::hash<std::string>()(name + "/" + kind);
  return static_cast<float>(h % 1000) * 0.25f + static_cast<float>(global_index) * 0.5f + 0.125f;
}

// Global row-major indices of the elements a piece holds, in its order,
// enumerated naively (odometer over the box, then the run).
inline std::vector<int64_t> GlobalIndices(const PieceDesc& p) {
  const size_t rank = p.global_shape.size();
  std::vector<int64_t> result;
  const int64_t n = NumElements(p.box_shape);
  std::vector<int64_t> coord(rank + 1, 0);  // +1: never empty (quiets a GCC 12 false warning)
  for (int64_t e = 0; e < n; ++e) {
    int64_t rem = e;
    for (size_t k = rank; k-- > 0;) {
      coord[k] = rem % p.box_shape[k];
      rem /= p.box_shape[k];
    }
    int64_t g = 0;
    for (size_t k = 0; k < rank; ++k) g = g * p.global_shape[k] + p.box_offset[k] + coord[k];
    if (e >= p.run_begin && e < p.run_end) result.push_back(g);
  }
  return result;
}

inline std::vector<float> OracleData(const PieceDesc& p) {
  std::vector<float> data;
  for (int64_t g : GlobalIndices(p)) data.push_back(OracleValue(p.name, p.kind, g));
  return data;
}

}  // namespace tessera::testing
