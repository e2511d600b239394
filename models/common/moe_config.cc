#include "models/common/moe_config.h"

#include "absl/strings/str_cat.h"

namespace tessera {
namespace {

// Upper limits far above any model this runtime trains, so that a typo is a
// message rather than hours of allocation (docs/config.md).
constexpr int64_t kMaxExperts = 4096;
constexpr int64_t kMaxWidth = 1 << 20;

void CheckSizes(const MoeConfig& moe, const std::string& prefix, ConfigChecker& check) {
  const auto field = [&prefix](const char* name, auto value) {
    return Field(absl::StrCat(prefix, ".", name), value);
  };
  check.Expect(moe.num_experts() > 0,
               absl::StrCat(field("num_experts", moe.num_experts()), " must be positive"));
  check.Expect(moe.num_experts() <= kMaxExperts,
               absl::StrCat(field("num_experts", moe.num_experts()), " must be <= ",
                            kMaxExperts));
  check.Expect(moe.experts_per_token() >= 1 && moe.experts_per_token() <= moe.num_experts(),
               absl::StrCat(field("experts_per_token", moe.experts_per_token()),
                            " must be in [1, ", field("num_experts", moe.num_experts()), "]"));
  check.Expect(moe.expert_hidden() <= kMaxWidth && moe.shared_expert_hidden() <= kMaxWidth,
               absl::StrCat(field("expert_hidden", moe.expert_hidden()), " and ",
                            field("shared_expert_hidden", moe.shared_expert_hidden()),
                            " must be <= ", kMaxWidth));
  check.Expect(moe.expert_hidden() >= 0,
               absl::StrCat(field("expert_hidden", moe.expert_hidden()),
                            " must be >= 0 (0 means the model's default)"));
  check.Expect(moe.shared_expert_hidden() >= -1,
               absl::StrCat(field("shared_expert_hidden", moe.shared_expert_hidden()),
                            " must be >= -1 (-1 disables the shared expert, 0 means the "
                            "model's default)"));
  check.Expect(moe.capacity_factor() >= 0,
               absl::StrCat(field("capacity_factor", moe.capacity_factor()),
                            " must be >= 0 (0 means dropless)"));
  check.Expect(moe.balance_loss_coef() >= 0,
               absl::StrCat(field("balance_loss_coef", moe.balance_loss_coef()),
                            " must be >= 0"));
}

// A width as the user meets it: the field, or the default it stands for.
std::string WidthName(const std::string& prefix, const char* name, const char* label,
                      int32_t value, int64_t resolved, const std::string& why) {
  if (value > 0) return Field(absl::StrCat(prefix, ".", name), value);
  return absl::StrCat(label, " ", why, " = ", resolved, " (", prefix, ".", name, "=0)");
}

void CheckSplits(const MoeConfig& moe, const std::string& prefix, const ParallelConfig& p,
                 const MoeWidthDefaults& defaults, ConfigChecker& check) {
  if (p.tp() < 1 || p.ep() < 1 || p.etp() < 1) return;  // the layout's rules said so
  if (moe.num_experts() > 0) {
    check.Expect(moe.num_experts() % p.ep() == 0,
                 absl::StrCat(Field("parallel.ep", p.ep()), " must divide ",
                              Field(absl::StrCat(prefix, ".num_experts"), moe.num_experts())));
  }
  // Routed experts' SwiGLU hidden width splits over etp.
  const int64_t expert = ResolvedExpertHidden(moe, defaults);
  if (moe.expert_hidden() >= 0 && expert > 0) {
    check.Expect(expert % p.etp() == 0,
                 absl::StrCat(WidthName(prefix, "expert_hidden", "expert hidden width", moe.expert_hidden(), expert,
                                        defaults.expert_hidden_why),
                              " must be divisible by ", Field("parallel.etp", p.etp())));
  }
  // The shared expert is a dense SwiGLU: its hidden width splits over tp.
  const int64_t shared = ResolvedSharedExpertHidden(moe, defaults);
  if (shared > 0) {
    check.Expect(shared % p.tp() == 0,
                 absl::StrCat(WidthName(prefix, "shared_expert_hidden", "shared expert hidden width",
                                        moe.shared_expert_hidden(), shared,
                                        defaults.shared_expert_hidden_why),
                              " must be divisible by ", Field("parallel.tp", p.tp())));
  }
}

}  // namespace

void CheckMoeConfig(const MoeConfig& moe, const std::string& prefix,
                    const ParallelConfig& parallel, const MoeWidthDefaults& defaults,
                    ConfigChecker& check) {
  CheckSizes(moe, prefix, check);
  CheckSplits(moe, prefix, parallel, defaults, check);
}

int64_t ResolvedExpertHidden(const MoeConfig& moe, const MoeWidthDefaults& defaults) {
  return moe.expert_hidden() > 0 ? moe.expert_hidden() : defaults.expert_hidden;
}

int64_t ResolvedSharedExpertHidden(const MoeConfig& moe, const MoeWidthDefaults& defaults) {
  if (moe.shared_expert_hidden() < 0) return 0;
  return moe.shared_expert_hidden() > 0 ? moe.shared_expert_hidden()
                                        : defaults.shared_expert_hidden;
}

MoeLayer::Options MoeLayerOptions(const MoeConfig& moe, const MoeWidthDefaults& defaults) {
  MoeLayer::Options options;
  options.num_experts = moe.num_experts();
  options.top_k = moe.experts_per_token();
  options.expert_hidden = ResolvedExpertHidden(moe, defaults);
  options.shared_expert_hidden = ResolvedSharedExpertHidden(moe, defaults);
  options.balance_loss_coef = moe.balance_loss_coef();
  options.renormalize_topk = moe.renormalize_topk();
  options.capacity_factor = moe.capacity_factor();
  return options;
}

}  // namespace tessera
