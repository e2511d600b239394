// Tensors as views, the arena and dtype conversions.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "runtime/tensor/arena.h"
#include "runtime/tensor/tensor.h"

namespace tessera {
namespace {

TEST(Tensor, SliceAndReshapeAreViewsOfTheSameStorage) {
  Tensor t = Tensor::Empty(DType::kF32, Shape{4, 3});
  for (int i = 0; i < 12; ++i) t.data<float>()[i] = static_cast<float>(i);
  Tensor rows = t.Slice(1, 3);
  EXPECT_EQ(rows.shape(), (Shape{2, 3}));
  EXPECT_EQ(rows.data<float>()[0], 3.0f);
  rows.data<float>()[0] = 42;
  EXPECT_EQ(t.data<float>()[3], 42.0f);
  Tensor flat = t.Reshape(Shape{12});
  EXPECT_EQ(flat.data<float>()[3], 42.0f);
  Tensor view = t.View(5, Shape{2, 2});
  EXPECT_EQ(view.data<float>()[0], 5.0f);
  EXPECT_EQ(t.Slice(2, 2).numel(), 0);
}

TEST(Tensor, ReportsSizesPerDType) {
  EXPECT_EQ(Tensor::Empty(DType::kBF16, Shape{3, 5}).bytes(), 30u);
  EXPECT_EQ(Tensor::Empty(DType::kI64, Shape{3}).bytes(), 24u);
  EXPECT_EQ(Tensor::Empty(DType::kU8, Shape{7}).bytes(), 7u);
  EXPECT_EQ(std::string(DTypeName(DType::kF16)), "f16");
}

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(BF16ToFloat(FloatToBF16(1.0f)), 1.0f);
  // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
  EXPECT_EQ(BF16ToFloat(FloatToBF16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  EXPECT_EQ(BF16ToFloat(FloatToBF16(1.0f + 3 * std::ldexp(1.0f, -9))), 1.0f + std::ldexp(1.0f, -7));
  EXPECT_TRUE(std::isnan(BF16ToFloat(FloatToBF16(std::numeric_limits<float>::quiet_NaN()))));
  for (float v : {-3.5f, 0.15625f, 65504.0f, 1e-20f}) {
    EXPECT_NEAR(BF16ToFloat(FloatToBF16(v)), v, std::fabs(v) * std::ldexp(1.0, -8)) << v;
  }
}

TEST(DType, F16RoundTripsRepresentableValuesAndSaturates) {
  for (float v : {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f /* min normal */,
                  5.960464477539063e-08f /* min subnormal */, 0.333251953125f}) {
    EXPECT_EQ(F16ToFloat(FloatToF16(v)), v) << v;
  }
  EXPECT_TRUE(std::isinf(F16ToFloat(FloatToF16(1e6f))));
  EXPECT_EQ(F16ToFloat(FloatToF16(1e-9f)), 0.0f);
  EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(std::numeric_limits<float>::quiet_NaN()))));
  // Relative error of half precision is at most 2^-11 for normal values.
  for (float v = -1000.0f; v < 1000.0f; v += 13.37f) {
    EXPECT_NEAR(F16ToFloat(FloatToF16(v)), v, std::fabs(v) * std::ldexp(1.0, -11)) << v;
  }
}

TEST(Arena, ReusesMemoryAfterResetAndStopsAllocatingInSteadyState) {
  Arena arena;
  for (int step = 0; step < 3; ++step) {
    arena.Reset();
    for (int i = 0; i < 50; ++i) arena.Allocate(DType::kF32, Shape{100000});  // 20 MB per step
  }
  const int64_t blocks = arena.block_allocations();
  arena.Reset();
  for (int i = 0; i < 50; ++i) arena.Allocate(DType::kF32, Shape{100000});
  EXPECT_EQ(arena.block_allocations(), blocks);
  EXPECT_GE(arena.capacity_bytes(), arena.peak_bytes());
  EXPECT_EQ(arena.used_bytes(), arena.peak_bytes());
}

TEST(Arena, AllocateZeroFillsAndAligns) {
  Arena arena(1024);
  Tensor a = arena.AllocateUninitialized(DType::kU8, Shape{3});
  std::memset(a.raw(), 0xff, 3);
  Tensor b = arena.Allocate(DType::kF32, Shape{5});
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.raw()) % Storage::kAlignment, 0u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(b.data<float>()[i], 0.0f);
  arena.Reset();
  Tensor c = arena.Allocate(DType::kU8, Shape{3});
  EXPECT_EQ(c.data<uint8_t>()[0], 0);
}

}  // namespace
}  // namespace tessera
