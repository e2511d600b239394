// Piece geometry against a naive oracle (enumerating global indices), and
// CRC-32C against published check values.
#include "runtime/checkpoint/piece.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

#include "runtime/checkpoint/crc32c.h"
#include "tests/runtime/checkpoint/test_tensors.h"

namespace tessera {
namespace {

using testing::GlobalIndices;

// Checks ForEachOverlapSegment(a, b) against the naive pairing of elements
// with equal global indices, and that segments are maximal and disjoint.
void ExpectOverlapMatchesNaive(const PieceDesc& a, const PieceDesc& b) {
  const std::vector<int64_t> ga = GlobalIndices(a), gb = GlobalIndices(b);
  std::map<int64_t, int64_t> position_in_b;
  for (size_t j = 0; j < gb.size(); ++j) position_in_b[gb[j]] = static_cast<int64_t>(j);
  std::map<int64_t, int64_t> expected;  // a index -> b index
  for (size_t i = 0; i < ga.size(); ++i) {
    auto it = position_in_b.find(ga[i]);
    if (it != position_in_b.end()) expected[static_cast<int64_t>(i)] = it->second;
  }
  std::map<int64_t, int64_t> got;
  ForEachOverlapSegment(a, b, [&](int64_t ia, int64_t ib, int64_t n) {
    ASSERT_GT(n, 0);
    for (int64_t t = 0; t < n; ++t) {
      EXPECT_TRUE(got.emplace(ia + t, ib + t).second) << "element twice";
    }
  });
  EXPECT_EQ(got, expected) << a.ToString() << " vs " << b.ToString();
  EXPECT_EQ(OverlapElements(a, b), static_cast<int64_t>(expected.size()));
}

TEST(Piece, OverlapSegmentsPairExactlyTheElementsWithEqualGlobalIndex) {
  const std::vector<int64_t> shape = {5, 7};  // odd sizes
  std::vector<PieceDesc> pieces = {
      PieceDesc::Whole("w", "param", shape),
      PieceDesc::Box("w", "param", shape, {0, 0}, {5, 3}),  // column halves
      PieceDesc::Box("w", "param", shape, {0, 3}, {5, 4}),
      PieceDesc::Box("w", "param", shape, {2, 1}, {3, 5}),          // interior box
      PieceDesc::Run("w", "param", shape, {0, 0}, {5, 7}, 4, 23),   // ZeRO run
      PieceDesc::Run("w", "param", shape, {0, 3}, {5, 4}, 3, 17),   // run of a column half
      PieceDesc::Run("w", "param", shape, {0, 0}, {5, 7}, 10, 10),  // empty run
      PieceDesc::Box("w", "param", shape, {5, 0}, {0, 7}),          // zero rows
  };
  for (const PieceDesc& a : pieces) {
    for (const PieceDesc& b : pieces) ExpectOverlapMatchesNaive(a, b);
  }
}

TEST(Piece, OverlapWorksForScalarsOneAndThreeDimensionalTensors) {
  ExpectOverlapMatchesNaive(PieceDesc::Whole("s", "param", {}), PieceDesc::Whole("s", "param", {}));
  ExpectOverlapMatchesNaive(PieceDesc::Run("v", "param", {9}, {0}, {9}, 2, 7),
                            PieceDesc::Box("v", "param", {9}, {5}, {4}));
  const std::vector<int64_t> shape = {3, 4, 5};
  ExpectOverlapMatchesNaive(PieceDesc::Run("t", "param", shape, {1, 0, 2}, {2, 4, 3}, 5, 21),
                            PieceDesc::Run("t", "param", shape, {0, 1, 0}, {3, 3, 5}, 7, 40));
}

TEST(Piece, ValidateRejectsBoxesOutsideTheTensorAndBadRuns) {
  EXPECT_TRUE(ValidatePiece(PieceDesc::Box("w", "param", {4, 4}, {2, 0}, {2, 4})).ok());
  EXPECT_FALSE(ValidatePiece(PieceDesc::Box("w", "param", {4, 4}, {3, 0}, {2, 4})).ok());
  EXPECT_FALSE(ValidatePiece(PieceDesc::Box("w", "param", {4, 4}, {0}, {4})).ok());
  EXPECT_FALSE(ValidatePiece(PieceDesc::Run("w", "param", {4}, {0}, {4}, 3, 5)).ok());
  EXPECT_FALSE(ValidatePiece(PieceDesc::Run("w", "param", {4}, {0}, {4}, 3, 2)).ok());
  EXPECT_FALSE(ValidatePiece(PieceDesc::Whole("a/b", "param", {4})).ok());
  EXPECT_FALSE(ValidatePiece(PieceDesc::Whole("w", "", {4})).ok());
}

TEST(Crc32c, MatchesPublishedCheckValues) {
  // RFC 3720 B.4 and the common "123456789" check value.
  const std::string digits = "123456789";
  EXPECT_EQ(Crc32c(digits.data(), digits.size()), 0xE3069283u);
  EXPECT_EQ(Crc32cPortable(digits.data(), digits.size()), 0xE3069283u);
  const std::string zeros(32, '\0'), ones(32, '\xff');
  EXPECT_EQ(Crc32c(zeros.data(), 32), 0x8A9136AAu);
  EXPECT_EQ(Crc32cPortable(ones.data(), 32), 0x62A8AB43u);
  EXPECT_EQ(Crc32c(nullptr, 0), 0u);
}

TEST(Crc32c, HardwareAndTableAgreeAtEveryLengthAndWhenContinued) {
  std::string bytes;
  for (int i = 0; i < 300; ++i) bytes.push_back(static_cast<char>(i * 37 + 11));
  for (size_t n = 0; n <= bytes.size(); n += 7) {
    EXPECT_EQ(Crc32c(bytes.data(), n), Crc32cPortable(bytes.data(), n)) << n;
    const uint32_t first = Crc32c(bytes.data(), n / 3);
    EXPECT_EQ(Crc32c(bytes.data() + n / 3, n - n / 3, first), Crc32c(bytes.data(), n)) << n;
  }
}

}  // namespace
}  // namespace tessera
