#include "models/mamba_hybrid/step_record.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace tessera::mamba_hybrid {
namespace {

// A host [batch, seq] int32 tensor of `values` (sample-major).
template <typename T>
Tensor HostMatrix(const std::vector<T>& values, int64_t batch, int64_t seq) {
  Tensor t = Tensor::Empty(DType::kI32, Shape{batch, seq});
  int32_t* out = t.data<int32_t>();
  for (size_t i = 0; i < values.size(); ++i) out[i] = static_cast<int32_t>(values[i]);
  return t;
}

}  // namespace

void RecordLanguageModelStep(StepRecorder& recorder, MambaHybrid& model, Arena& arena,
                             int64_t global_batch, const LmInputs& in,
                             const std::vector<int64_t>& positions) {
  const int64_t B = in.batch, T = in.seq;
  const int64_t D = model.config().hidden_size(), V = model.config().vocab_size();
  const std::vector<int64_t> ids_shape = {global_batch, T};
  recorder.Record("inputs/tokens", HostMatrix(in.inputs, B, T), ids_shape, {0, 0}, positions);
  recorder.Record("inputs/targets", HostMatrix(in.targets, B, T), ids_shape, {0, 0}, positions);
  recorder.Record("inputs/loss_mask", HostMatrix(in.mask, B, T), ids_shape, {0, 0}, positions);
  const MambaHybrid::KeptActivations& kept = model.kept();
  const std::vector<int64_t> rows_shape = {global_batch, T, D};
  for (size_t i = 0; i < kept.streams.size(); ++i) {
    // This rank's positions [stream_first, + local) of each sample.
    const Tensor& stream = kept.streams[i];
    const Tensor piece = stream.Reshape(Shape{B, stream.dim(0) / B, D});
    const std::string name = i == 0 ? "outputs/embedding" : absl::StrCat("outputs/layers.", i - 1);
    recorder.Record(name, piece, rows_shape, {0, kept.stream_first, 0}, positions);
  }
  const int64_t local = kept.hidden.dim(0) / B;
  recorder.Record("outputs/hidden", kept.hidden.Reshape(Shape{B, local, D}), rows_shape,
                  {0, kept.hidden_first, 0}, positions);
  const Tensor logits = model.KeptLogits(arena);  // [B * local, V/tp]
  recorder.Record("outputs/logits", logits.Reshape(Shape{B, local, logits.dim(1)}),
                  {global_batch, T, V}, {0, kept.hidden_first, model.vocab_offset()}, positions);
}

}  // namespace tessera::mamba_hybrid
