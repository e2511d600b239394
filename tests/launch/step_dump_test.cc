// The numerics dump's assembly of recorded pieces into global tensors
// (launch/step_dump.h): rows placed by their global sample index, columns by
// offset, copies from several ranks landing on the same elements.
#include "launch/step_dump.h"

#include <gtest/gtest.h>

#include <cstring>

namespace tessera {
namespace {

RecordedPiece Piece(const std::string& name, std::vector<int64_t> global, std::vector<int64_t> shape,
                    std::vector<int64_t> offset, std::vector<int64_t> rows,
                    const std::vector<float>& values) {
  RecordedPiece p;
  p.name = name;
  p.global_shape = std::move(global);
  p.shape = std::move(shape);
  p.offset = std::move(offset);
  p.rows = std::move(rows);
  p.bytes.resize(values.size() * sizeof(float));
  std::memcpy(p.bytes.data(), values.data(), p.bytes.size());
  return p;
}

std::vector<float> Floats(const RecordedPiece& p) {
  std::vector<float> out(p.bytes.size() / sizeof(float));
  std::memcpy(out.data(), p.bytes.data(), p.bytes.size());
  return out;
}

TEST(StepDump, AssemblesReplicaRowsAndTokenShardsIntoGlobalTensors) {
  // Two replicas' samples (every other row), and two sequence shards of one
  // replica's tokens (columns), one of them recorded twice (tp peers).
  const std::vector<RecordedPiece> pieces = {
      Piece("inputs/x", {4, 2}, {2, 2}, {0, 0}, {0, 2}, {0, 1, 2, 3}),
      Piece("inputs/x", {4, 2}, {2, 2}, {0, 0}, {1, 3}, {4, 5, 6, 7}),
      Piece("outputs/y", {2, 4}, {2, 2}, {0, 2}, {}, {10, 11, 12, 13}),
      Piece("outputs/y", {2, 4}, {2, 2}, {0, 0}, {}, {20, 21, 22, 23}),
      Piece("outputs/y", {2, 4}, {2, 2}, {0, 0}, {}, {20, 21, 22, 23}),
  };
  auto whole = AssemblePieces(pieces);
  ASSERT_TRUE(whole.ok()) << whole.status();
  ASSERT_EQ(whole->size(), 2u);
  EXPECT_EQ((*whole)[0].name, "inputs/x");
  EXPECT_EQ(Floats((*whole)[0]), (std::vector<float>{0, 1, 4, 5, 2, 3, 6, 7}));
  EXPECT_EQ((*whole)[1].global_shape, (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(Floats((*whole)[1]), (std::vector<float>{20, 21, 10, 11, 22, 23, 12, 13}));
}

TEST(StepDump, RefusesAPieceOutsideItsGlobalShapeOrOfAnotherShape) {
  auto outside = AssemblePieces({Piece("inputs/x", {4, 2}, {1, 2}, {0, 0}, {4}, {1, 2})});
  ASSERT_FALSE(outside.ok());
  EXPECT_NE(outside.status().message().find("inputs/x"), std::string::npos);
  auto two_shapes = AssemblePieces({Piece("inputs/x", {2}, {2}, {0}, {}, {1, 2}),
                                    Piece("inputs/x", {3}, {2}, {0}, {}, {1, 2})});
  ASSERT_FALSE(two_shapes.ok());
  EXPECT_NE(two_shapes.status().message().find("two global shapes"), std::string::npos);
}

}  // namespace
}  // namespace tessera
