#include "runtime/train/step_recorder.h"

#include <cstring>

#include "runtime/tensor/host_access.h"

namespace tessera {
namespace {

template <typename T>
RecordedPiece VectorPiece(const std::string& name, DType dtype, const std::vector<T>& values,
                          int64_t global_length, const std::vector<int64_t>& rows) {
  RecordedPiece piece;
  piece.name = name;
  piece.dtype = dtype;
  const int64_t n = static_cast<int64_t>(values.size());
  piece.shape = {n};
  piece.global_shape = {global_length};
  piece.offset = {0};
  piece.rows = rows;
  piece.bytes.resize(values.size() * sizeof(T));
  std::memcpy(piece.bytes.data(), values.data(), piece.bytes.size());
  return piece;
}

}  // namespace

void StepRecorder::Record(const std::string& name, const Tensor& tensor,
                          const std::vector<int64_t>& global_shape,
                          const std::vector<int64_t>& offset, const std::vector<int64_t>& rows) {
  RecordedPiece piece;
  piece.name = name;
  piece.dtype = tensor.dtype();
  piece.global_shape = global_shape;
  piece.shape.assign(tensor.shape().begin(), tensor.shape().end());
  piece.offset = offset;
  piece.rows = rows;
  const Tensor host = HostReadable(tensor);
  piece.bytes.resize(host.bytes());
  std::memcpy(piece.bytes.data(), host.raw(), host.bytes());
  pieces_.push_back(std::move(piece));
}

void StepRecorder::RecordVector(const std::string& name, const std::vector<float>& values,
                                int64_t global_length, const std::vector<int64_t>& rows) {
  pieces_.push_back(VectorPiece(name, DType::kF32, values, global_length, rows));
}

void StepRecorder::RecordVector(const std::string& name, const std::vector<int32_t>& values,
                                int64_t global_length, const std::vector<int64_t>& rows) {
  pieces_.push_back(VectorPiece(name, DType::kI32, values, global_length, rows));
}

}  // namespace tessera
