#include "models/mamba_hybrid/pattern.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "runtime/base/errors.h"
#include "runtime/config/config_check.h"

namespace tessera::mamba_hybrid {
namespace {

// Python's round(): half to even (the default floating-point rounding mode).
int RoundHalfEven(double x) { return static_cast<int>(std::nearbyint(x)); }

}  // namespace

std::string AllocateLayers(int num_layers, double attention_ratio, double mlp_ratio) {
  std::string layers(static_cast<size_t>(std::max(0, num_layers)), kMamba);
  const int attention = RoundHalfEven(num_layers * attention_ratio);
  int mamba = num_layers - attention;
  // Attention: evenly spaced, the stack starting and ending with Mamba.
  const double section = static_cast<double>(mamba) / (attention + 1);
  double x = section;
  for (int l = 0; l < num_layers; ++l) {
    if (x < 0.5) {
      layers[l] = kAttention;
      x += section;
    } else {
      x -= 1;
    }
  }
  // MLP: evenly over the Mamba positions left, right-justified.
  const int mlp = RoundHalfEven(num_layers * mlp_ratio);
  if (mlp > 0) {
    mamba -= mlp;
    const double ratio = static_cast<double>(mamba) / mlp;
    x = ratio;
    for (int l = 0; l < num_layers; ++l) {
      if (layers[l] != kMamba) continue;
      if (x < 0.5) {
        layers[l] = kMlp;
        x += ratio;
      } else {
        x -= 1;
      }
    }
  }
  return layers;
}

absl::StatusOr<std::string> ResolvePattern(const MambaHybridConfig& config) {
  const int layers = config.num_layers();
  const double attention = config.attention_ratio(), mlp = config.mlp_ratio();
  if (!(attention >= 0 && attention <= 1 && mlp >= 0 && mlp <= 1 && attention + mlp <= 1)) {
    return UsageError(absl::StrCat(Field("model.mamba_hybrid.attention_ratio", attention), " and ",
                                   Field("model.mamba_hybrid.mlp_ratio", mlp),
                                   " must lie in [0, 1] with a sum <= 1"));
  }
  if (layers < 1) {
    return UsageError(absl::StrCat(Field("model.mamba_hybrid.num_layers", layers),
                                   " must be positive"));
  }
  const std::string allocated = AllocateLayers(layers, attention, mlp);
  const std::string& pattern = config.pattern();
  if (pattern.empty()) return allocated;
  const std::string field = Field("model.mamba_hybrid.pattern", pattern);
  for (char symbol : pattern) {
    if (symbol != kMamba && symbol != kAttention && symbol != kMlp && symbol != kMoe) {
      return UsageError(absl::StrCat(field, ": '", std::string(1, symbol),
                                     "' is not a layer symbol (M Mamba-2, * attention, - MLP, "
                                     "E MoE FFN)"));
    }
  }
  if (static_cast<int>(pattern.size()) != layers) {
    return UsageError(absl::StrCat(field, " has ", pattern.size(), " layers, but ",
                                   Field("model.mamba_hybrid.num_layers", layers)));
  }
  if (attention > 0 || mlp > 0) {
    for (char symbol : {kMamba, kAttention, kMlp, kMoe}) {
      if (std::count(pattern.begin(), pattern.end(), symbol) !=
          std::count(allocated.begin(), allocated.end(), symbol)) {
        return UsageError(absl::StrCat(field, " must have the layer counts of the ratios' "
                                              "allocation ",
                                       allocated, " (or set both ratios to 0)"));
      }
    }
  }
  return pattern;
}

}  // namespace tessera::mamba_hybrid
