#include "models/mamba_hybrid/generation.h"

#include <vector>

#include "runtime/base/status.h"

namespace tessera::mamba_hybrid {
namespace {

// The index of the largest of the last row's logits (the first on ties);
// only that row is copied to the host.
int32_t ArgmaxOfLastRow(const Tensor& logits) {
  const int64_t vocab = logits.dim(1);
  std::vector<float> last(static_cast<size_t>(vocab));
  logits.backend().CopyToHost(last.data(), logits.ptr<float>() + (logits.dim(0) - 1) * vocab,
                              last.size() * sizeof(float));
  const float* row = last.data();
  int64_t best = 0;
  for (int64_t v = 1; v < vocab; ++v)
    if (row[v] > row[best]) best = v;
  return static_cast<int32_t>(best);
}

absl::StatusOr<std::vector<int32_t>> Recurrent(MambaHybrid& model, std::vector<int32_t> tokens,
                                               int64_t count, int32_t stop) {
  const size_t prompt = tokens.size();
  TESSERA_RETURN_IF_ERROR(model.StartGeneration(1, static_cast<int64_t>(prompt) + count));
  Arena arena(model.backend());
  Tensor logits;
  for (size_t i = 0; i < prompt; ++i) {
    arena.Reset();
    TESSERA_ASSIGN_OR_RETURN(logits, model.StepLogits(arena, {tokens[i]}));
  }
  std::vector<int32_t> generated;
  while (static_cast<int64_t>(generated.size()) < count) {
    const int32_t next = ArgmaxOfLastRow(logits);
    generated.push_back(next);
    if (next == stop || static_cast<int64_t>(generated.size()) == count) break;
    arena.Reset();
    TESSERA_ASSIGN_OR_RETURN(logits, model.StepLogits(arena, {next}));
  }
  return generated;
}

absl::StatusOr<std::vector<int32_t>> Reforward(MambaHybrid& model, std::vector<int32_t> tokens,
                                               int64_t count, int32_t stop) {
  Arena arena(model.backend());
  std::vector<int32_t> generated;
  while (static_cast<int64_t>(generated.size()) < count) {
    arena.Reset();
    const int64_t length = static_cast<int64_t>(tokens.size());
    Tensor ids = arena.AllocateUninitialized(DType::kI32, Shape{length});
    arena.backend().CopyToDevice(ids.address(), tokens.data(), ids.bytes());
    TESSERA_ASSIGN_OR_RETURN(Tensor hidden, model.ForwardHidden(arena, ids, 1, length, false));
    const int32_t next = ArgmaxOfLastRow(model.Logits(arena, hidden.Slice(length - 1, length)));
    generated.push_back(next);
    tokens.push_back(next);
    if (next == stop) break;
  }
  return generated;
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> GenerateGreedy(MambaHybrid& model,
                                                    const std::vector<int32_t>& prompt,
                                                    int64_t count, int32_t stop,
                                                    GenerationMode mode) {
  if (prompt.empty()) return absl::InvalidArgumentError("generation needs a non-empty prompt");
  for (int32_t id : prompt) {
    if (id < 0 || id >= model.config().vocab_size()) {
      return absl::InvalidArgumentError("a prompt token lies outside the vocabulary");
    }
  }
  return mode == GenerationMode::kRecurrent ? Recurrent(model, prompt, count, stop)
                                            : Reforward(model, prompt, count, stop);
}

}  // namespace tessera::mamba_hybrid
