// The layer pattern: Megatron's ratio allocation rule and the pattern string's checks.
#include "models/mamba_hybrid/pattern.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace tessera::mamba_hybrid {
namespace {

int64_t Count(const std::string& s, char c) { return std::count(s.begin(), s.end(), c); }

TEST(LayerAllocation, ReproducesThe8BHybridPattern) {
  // The 8B Mamba-2-Hybrid of "An Empirical Study of Mamba-based Language
  // Models": 56 layers, 24 Mamba, 4 attention, 28 MLP; the pattern as
  // Megatron-LM's example script for that model writes it.
  const std::string pattern = AllocateLayers(56, 0.08, 0.5);
  EXPECT_EQ(Count(pattern, kMamba), 24);
  EXPECT_EQ(Count(pattern, kAttention), 4);
  EXPECT_EQ(Count(pattern, kMlp), 28);
  EXPECT_EQ(pattern, "M-M-M--M-M*-M-M-M-M--M*-M-M-M-M-M*--M-M-M-M-M*-M--M-M-M-");
}

TEST(LayerAllocation, AttentionIsSpreadEvenlyBetweenMambaLayers) {
  EXPECT_EQ(AllocateLayers(10, 0.2, 0), "MMM*MM*MMM");
  EXPECT_EQ(AllocateLayers(4, 0, 0), "MMMM");
  EXPECT_EQ(AllocateLayers(4, 0, 0.5), "M-M-");
}

MambaHybridConfig WithPattern(const std::string& pattern, int layers) {
  MambaHybridConfig c;
  c.set_pattern(pattern);
  c.set_num_layers(layers);
  return c;
}

TEST(ResolvePattern, AnExplicitPatternIsUsedAsWritten) {
  EXPECT_EQ(*ResolvePattern(WithPattern("M*-M", 4)), "M*-M");
}

TEST(ResolvePattern, RejectsAnUnknownSymbolNamingIt) {
  absl::StatusOr<std::string> p = ResolvePattern(WithPattern("M*xM", 4));
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("model.mamba_hybrid.pattern=\"M*xM\": 'x' is not a layer"),
            std::string::npos)
      << p.status();
}

TEST(ResolvePattern, RejectsALengthOtherThanNumLayers) {
  absl::StatusOr<std::string> p = ResolvePattern(WithPattern("M*-", 4));
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("has 3 layers, but model.mamba_hybrid.num_layers=4"),
            std::string::npos)
      << p.status();
}

TEST(ResolvePattern, PatternCountsMustMatchTheRatiosWhenBothAreGiven) {
  MambaHybridConfig c = WithPattern("M*-M", 4);
  c.set_attention_ratio(0.5);
  EXPECT_FALSE(ResolvePattern(c).ok());
  c.set_attention_ratio(0.25);
  c.set_mlp_ratio(0.25);
  EXPECT_EQ(*ResolvePattern(c), "M*-M");
}

TEST(ResolvePattern, RatiosOutsideTheUnitIntervalAreRejected) {
  MambaHybridConfig c = WithPattern("", 4);
  c.set_attention_ratio(0.7);
  c.set_mlp_ratio(0.6);
  EXPECT_FALSE(ResolvePattern(c).ok());
}

}  // namespace
}  // namespace tessera::mamba_hybrid
