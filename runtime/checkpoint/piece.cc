#include "runtime/checkpoint/piece.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/base/errors.h"

namespace tessera {

PieceDesc PieceDesc::Whole(std::string name, std::string kind, std::vector<int64_t> global_shape) {
  std::vector<int64_t> offset(global_shape.size(), 0);
  std::vector<int64_t> shape = global_shape;
  return Box(std::move(name), std::move(kind), std::move(global_shape), std::move(offset),
             std::move(shape));
}

PieceDesc PieceDesc::Box(std::string name, std::string kind, std::vector<int64_t> global_shape,
                         std::vector<int64_t> box_offset, std::vector<int64_t> box_shape) {
  const int64_t n = NumElements(box_shape);
  return Run(std::move(name), std::move(kind), std::move(global_shape), std::move(box_offset),
             std::move(box_shape), 0, n);
}

PieceDesc PieceDesc::Run(std::string name, std::string kind, std::vector<int64_t> global_shape,
                         std::vector<int64_t> box_offset, std::vector<int64_t> box_shape,
                         int64_t run_begin, int64_t run_end) {
  PieceDesc piece;
  piece.name = std::move(name);
  piece.kind = std::move(kind);
  piece.global_shape = std::move(global_shape);
  piece.box_offset = std::move(box_offset);
  piece.box_shape = std::move(box_shape);
  piece.run_begin = run_begin;
  piece.run_end = run_end;
  return piece;
}

int64_t PieceDesc::BoxElements() const { return NumElements(box_shape); }

std::string PieceDesc::ToString() const {
  return absl::StrCat(name, " (", kind, ") box ", ShapeString(box_offset), "+",
                      ShapeString(box_shape), " run [", run_begin, ", ", run_end, ")");
}

int64_t NumElements(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

std::optional<int64_t> CheckedNumElements(const std::vector<int64_t>& dims) {
  constexpr int64_t kMaxElements = std::numeric_limits<int64_t>::max() / 4;
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n) || n > kMaxElements) return std::nullopt;
  }
  return n;
}

std::string ShapeString(const std::vector<int64_t>& dims) {
  return absl::StrCat("[", absl::StrJoin(dims, ", "), "]");
}

absl::Status ValidatePiece(const PieceDesc& p) {
  auto bad = [&](absl::string_view why) {
    return CheckpointError(absl::StrCat("invalid checkpoint piece ", p.ToString(), " of global ",
                                        ShapeString(p.global_shape), ": ", why));
  };
  if (p.name.empty() || p.kind.empty()) return bad("empty name or kind");
  if (p.name.find('/') != std::string::npos || p.kind.find('/') != std::string::npos) {
    return bad("names and kinds may not contain '/'");
  }
  if (p.box_offset.size() != p.global_shape.size() || p.box_shape.size() != p.global_shape.size()) {
    return bad("box and global shape have different ranks");
  }
  if (!CheckedNumElements(p.global_shape)) {
    return bad("the global shape has a negative dimension or more elements than int64 holds");
  }
  for (size_t k = 0; k < p.global_shape.size(); ++k) {
    if (p.box_offset[k] < 0 || p.box_shape[k] < 0 || p.box_shape[k] > p.global_shape[k] ||
        p.box_offset[k] > p.global_shape[k] - p.box_shape[k]) {
      return bad(absl::StrCat("box leaves the tensor in dimension ", k));
    }
  }
  if (p.run_begin < 0 || p.run_begin > p.run_end || p.run_end > p.BoxElements()) {
    return bad(absl::StrCat("run outside the box's ", p.BoxElements(), " elements"));
  }
  return absl::OkStatus();
}

void ForEachOverlapSegment(const PieceDesc& a, const PieceDesc& b,
                           absl::FunctionRef<void(int64_t, int64_t, int64_t)> fn) {
  const size_t rank = a.global_shape.size();
  if (b.global_shape.size() != rank || a.size() <= 0 || b.size() <= 0) return;
  // Intersection of the two boxes, [lo, hi) per dimension.
  std::vector<int64_t> lo(rank), hi(rank);
  for (size_t k = 0; k < rank; ++k) {
    lo[k] = std::max(a.box_offset[k], b.box_offset[k]);
    hi[k] = std::min(a.box_offset[k] + a.box_shape[k], b.box_offset[k] + b.box_shape[k]);
    if (hi[k] <= lo[k]) return;
  }
  // Row-major strides of each box.
  std::vector<int64_t> stride_a(rank, 1), stride_b(rank, 1);
  for (size_t k = rank; k-- > 1;) {
    stride_a[k - 1] = stride_a[k] * a.box_shape[k];
    stride_b[k - 1] = stride_b[k] * b.box_shape[k];
  }
  // One segment per index of the leading dimensions, along the last one; a
  // scalar is one segment of one element.
  const int64_t length = rank == 0 ? 1 : hi[rank - 1] - lo[rank - 1];
  std::vector<int64_t> index(lo);  // global coordinates of the segment start
  while (true) {
    int64_t la = 0, lb = 0;  // linear indices in each box
    for (size_t k = 0; k < rank; ++k) {
      la += (index[k] - a.box_offset[k]) * stride_a[k];
      lb += (index[k] - b.box_offset[k]) * stride_b[k];
    }
    // Elements t of the segment with la + t in a's run and lb + t in b's.
    const int64_t t0 = std::max({int64_t{0}, a.run_begin - la, b.run_begin - lb});
    const int64_t t1 = std::min({length, a.run_end - la, b.run_end - lb});
    if (t0 < t1) fn(la + t0 - a.run_begin, lb + t0 - b.run_begin, t1 - t0);
    // Advance the leading dimensions like an odometer.
    if (rank <= 1) return;
    size_t k = rank - 1;
    while (k-- > 0) {
      if (++index[k] < hi[k]) break;
      index[k] = lo[k];
      if (k == 0) return;
    }
  }
}

int64_t OverlapElements(const PieceDesc& a, const PieceDesc& b) {
  int64_t total = 0;
  ForEachOverlapSegment(a, b, [&](int64_t, int64_t, int64_t n) { total += n; });
  return total;
}

}  // namespace tessera
