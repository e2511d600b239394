#include "models/hstu/config_rules.h"

#include <cstdint>
#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"

namespace tessera::hstu {
namespace {

void CheckSizes(const HstuConfig& m, ConfigChecker& check) {
  // Upper limits far above any model this runtime trains, so that a typo is
  // a message rather than hours of allocation. Item ids are int32 in the
  // kernels: num_items < 2^31.
  const struct {
    const char* name;
    int64_t value;
    int64_t limit;
  } sizes[] = {{"num_items", m.num_items(), (int64_t{1} << 31) - 1},
               {"embedding_dim", m.embedding_dim(), 65536},
               {"num_blocks", m.num_blocks(), 1024},
               {"num_heads", m.num_heads(), 1024},
               {"attention_dim", m.attention_dim(), 65536},
               {"linear_dim", m.linear_dim(), 65536},
               {"max_len", m.max_len(), 1 << 20},
               {"num_negatives", m.num_negatives(), 1 << 16},
               {"num_time_buckets", m.num_time_buckets(), 1 << 16}};
  for (const auto& size : sizes) {
    const std::string field = Field(absl::StrCat("model.hstu.", size.name), size.value);
    check.Expect(size.value > 0, absl::StrCat(field, size.value == 0 && std::string(size.name) ==
                                                             "num_items"
                                                         ? " must be set (the item table's rows: "
                                                           "the data set's num_items or more)"
                                                         : " must be positive"));
    check.Expect(size.value <= size.limit, absl::StrCat(field, " must be <= ", size.limit));
  }
  check.Expect(m.dropout() >= 0 && m.dropout() < 1,
               absl::StrCat(Field("model.hstu.dropout", m.dropout()), " must be in [0, 1)"));
  check.Expect(m.temperature() > 0,
               absl::StrCat(Field("model.hstu.temperature", m.temperature()), " must be > 0"));
  check.Expect(m.holdout() >= 0 && m.holdout() <= 1000,
               absl::StrCat(Field("model.hstu.holdout", m.holdout()), " must be in [0, 1000]"));
}

void CheckTable(const HstuConfig& m, int world_size, ConfigChecker& check) {
  const int shards = m.table_shards();
  // One process holds the whole table whatever the field says (a run may
  // resume on fewer processes).
  check.Expect(shards >= 0 && (shards == 0 || world_size == 1 || world_size % shards == 0),
               absl::StrCat(Field("model.hstu.table_shards", shards),
                            " must be 0 (the whole world) or divide the world size ", world_size));
  check.Expect(m.table_lr() >= 0,
               absl::StrCat(Field("model.hstu.table_lr", m.table_lr()), " must be >= 0"));
}

// Tensor parallelism splits the heads, sequence parallelism the tokens and,
// around attention, each tp rank's heads (layer.h); expert parallelism and
// Megatron's sequence parallelism have nothing to split in HSTU.
void CheckParallel(const HstuConfig& m, const ParallelConfig& p, ConfigChecker& check) {
  check.Expect(p.ep() == 1 && p.etp() == 1 && !p.sequence_parallel(),
               absl::StrCat("model.hstu has no experts and no Megatron sequence parallelism: ",
                            Field("parallel.ep", p.ep()), ", ", Field("parallel.etp", p.etp()),
                            " and parallel.sequence_parallel must keep their defaults (parallel.sp "
                            "splits HSTU's tokens)"));
  if (m.num_heads() <= 0 || p.tp() < 1 || p.sp() < 1) return;
  if (p.tp() > 1) {
    check.Expect(m.num_heads() % p.tp() == 0,
                 absl::StrCat(Field("model.hstu.num_heads", m.num_heads()),
                              " must be divisible by ", Field("parallel.tp", p.tp()),
                              " (tensor parallelism splits the heads)"));
    check.Expect(m.linear_dim() == m.attention_dim(),
                 absl::StrCat(Field("model.hstu.linear_dim", m.linear_dim()), " must equal ",
                              Field("model.hstu.attention_dim", m.attention_dim()), " when ",
                              Field("parallel.tp", p.tp()),
                              " > 1 (the fused U, V, Q, K projection is split over tp as four "
                              "equal blocks)"));
  }
  if (p.sp() > 1 && m.num_heads() % p.tp() == 0) {
    check.Expect((m.num_heads() / p.tp()) % p.sp() == 0,
                 absl::StrCat(Field("model.hstu.num_heads", m.num_heads()), " must be divisible by ",
                              Field("parallel.tp", p.tp()), " * ", Field("parallel.sp", p.sp()),
                              " (Ulysses gives each sp rank a share of every tp rank's heads in "
                              "attention)"));
  }
}

}  // namespace

void CheckConfig(const RunConfig& config, int world_size, ConfigChecker& check) {
  CheckSizes(config.hstu(), check);
  CheckTable(config.hstu(), world_size, check);
  CheckParallel(config.hstu(), config.parallel(), check);
  // Leave-one-out on the training data: the validation target (the
  // second-to-last event) must be one of the events training holds out.
  const std::string& eval_dir = config.data().eval_dir();
  const auto normal = [](const std::string& dir) {  // "a/./b/" and "a/b" are one folder
    std::filesystem::path path = std::filesystem::path(dir).lexically_normal();
    return path.has_filename() || !path.has_parent_path() ? path : path.parent_path();
  };
  const bool same_data = !eval_dir.empty() && normal(eval_dir) == normal(config.data().dir());
  check.Expect(!same_data || config.hstu().holdout() >= 2,
               absl::StrCat(Field("model.hstu.holdout", config.hstu().holdout()),
                            " must be >= 2 when data.eval_dir is data.dir (\"", eval_dir,
                            "\"): the validation split ranks each user's second-to-last event, "
                            "which training would otherwise see"));
  const std::string& schema = config.data().schema();
  check.Expect(schema.empty() || schema == "interactions",
               absl::StrCat(Field("data.schema", schema),
                            " must be \"interactions\" for model.hstu"));
}

}  // namespace tessera::hstu
