#include "models/dit_moe/step_record.h"

namespace tessera::dit_moe {

void RecordDiffusionStep(StepRecorder& recorder, const DitMoe& model, int64_t global_batch,
                         const Tensor& images, const std::vector<int32_t>& labels,
                         const std::vector<int64_t>& positions, const DiffusionExample& example,
                         const Tensor& prediction) {
  const DitMoeDims& d = model.dims();
  const std::vector<int64_t> image_shape = {global_batch, d.channels, d.input_size,
                                            d.input_size};
  const std::vector<int64_t> origin = {0, 0, 0, 0};
  recorder.Record("inputs/images", images, image_shape, origin, positions);
  recorder.RecordVector("inputs/labels", labels, global_batch, positions);
  std::vector<int32_t> dropped(labels.size());
  for (size_t b = 0; b < labels.size(); ++b) dropped[b] = example.labels[b] != labels[b];
  recorder.RecordVector("inputs/label_dropped", dropped, global_batch, positions);
  recorder.RecordVector("inputs/model_labels", example.labels, global_batch, positions);
  recorder.RecordVector("inputs/timesteps", example.t, global_batch, positions);
  recorder.Record("inputs/noise", example.noise, image_shape, origin, positions);
  recorder.Record("inputs/noisy_images", example.noisy, image_shape, origin, positions);
  recorder.Record("inputs/target", example.target, image_shape, origin, positions);
  // This rank's rows: tokens [first_token, + local_tokens) of each sample.
  const int64_t batch = static_cast<int64_t>(positions.size());
  Tensor rows = prediction.Reshape(Shape{batch, model.local_tokens(), d.patch_dim()});
  recorder.Record("outputs/prediction", rows, {global_batch, d.tokens(), d.patch_dim()},
                  {0, model.first_token(), 0}, positions);
}

}  // namespace tessera::dit_moe
