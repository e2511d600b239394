// Pieces: the unit every rank saves and loads (docs/checkpoints.md).
//
// A piece is a run [run_begin, run_end) of the row-major elements of a box
// (hyperslab) [box_offset, box_offset + box_shape) of one global fp32 tensor,
// named by (name, kind). Tensor-parallel shards are whole boxes; ZeRO-1
// optimizer shards cut a flat buffer at arbitrary element boundaries and are
// partial runs of a box (usually the whole tensor). A piece's data holds its
// run_end - run_begin elements in that order.
//
// Any two pieces of the same tensor overlap in a set of elements that is a
// union of contiguous segments of each piece's data; ForEachOverlapSegment
// enumerates them, which is all resharding needs.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"

namespace tessera {

struct PieceDesc {
  std::string name;  // global tensor name, e.g. "blocks.0.attn.qkv.weight"
  std::string kind;  // "param", "adam_m", "adam_v", "ema", ...
  std::vector<int64_t> global_shape;
  std::vector<int64_t> box_offset;
  std::vector<int64_t> box_shape;
  int64_t run_begin = 0;
  int64_t run_end = 0;

  // The whole tensor; a whole box; a run of a box.
  static PieceDesc Whole(std::string name, std::string kind, std::vector<int64_t> global_shape);
  static PieceDesc Box(std::string name, std::string kind, std::vector<int64_t> global_shape,
                       std::vector<int64_t> box_offset, std::vector<int64_t> box_shape);
  static PieceDesc Run(std::string name, std::string kind, std::vector<int64_t> global_shape,
                       std::vector<int64_t> box_offset, std::vector<int64_t> box_shape,
                       int64_t run_begin, int64_t run_end);

  int64_t size() const { return run_end - run_begin; }  // elements held
  int64_t BoxElements() const;
  bool IsFullBox() const { return run_begin == 0 && run_end == BoxElements(); }
  // "blocks.0.w (adam_m) box [0, 4]+[3, 8] run [0, 24)" for messages.
  std::string ToString() const;
};

// Product of dims (1 for a scalar). Callers pass validated shapes.
int64_t NumElements(const std::vector<int64_t>& dims);
// Product of dims, for shapes not yet trusted: nullopt when a dimension is
// negative or the product's bytes as fp32 (4 per element) overflow int64.
std::optional<int64_t> CheckedNumElements(const std::vector<int64_t>& dims);
// "[3, 8]"
std::string ShapeString(const std::vector<int64_t>& dims);

// The piece is well formed: non-empty name and kind without '/', ranks agree,
// box inside the global shape, 0 <= run_begin <= run_end <= box elements;
// no product or sum overflows, whatever the numbers.
absl::Status ValidatePiece(const PieceDesc& piece);

// Calls fn(a_index, b_index, length) for each maximal contiguous segment of
// elements held by both `a` and `b` (pieces of the same global shape):
// elements a_data[a_index, a_index + length) are b_data[b_index, ...).
void ForEachOverlapSegment(const PieceDesc& a, const PieceDesc& b,
                           absl::FunctionRef<void(int64_t, int64_t, int64_t)> fn);

// The number of elements `a` and `b` both hold.
int64_t OverlapElements(const PieceDesc& a, const PieceDesc& b);

}  // namespace tessera
