// Helpers shared by the data tests: temp folders, hand-written files, and
// source arrays whose values the tests know independently of the code.
#pragma once

#include <hdf5.h>
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/hdf5/hdf5_util.h"

namespace tessera::testing_util {

// A fresh, empty folder for one test.
inline std::string FreshDir(const std::string& name) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string dir = ::testing::TempDir() + "tessera_data_" + info->test_suite_name() + "_" +
                          info->name() + "_" + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

inline std::vector<uint8_t> ReadBytes(const std::string& path) {
  std::vector<uint8_t> bytes;
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return bytes;
  int c;
  while ((c = std::fgetc(file)) != EOF) bytes.push_back(static_cast<uint8_t>(c));
  std::fclose(file);
  return bytes;
}

inline void WriteBytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::FILE* file = std::fopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr) << path;
  ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), file), bytes.size());
  std::fclose(file);
}

// An IDX file of unsigned bytes built byte by byte: 0, 0, 0x08, rank, then
// big-endian dimensions, then the data; gzip-compressed when `gz`.
inline std::vector<uint8_t> IdxBytes(const std::vector<uint32_t>& dims,
                                     const std::vector<uint8_t>& data) {
  std::vector<uint8_t> bytes = {0, 0, 0x08, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) bytes.push_back(static_cast<uint8_t>(d >> shift));
  }
  bytes.insert(bytes.end(), data.begin(), data.end());
  return bytes;
}
inline void WriteMaybeGz(const std::string& path, const std::vector<uint8_t>& bytes, bool gz) {
  if (!gz) return WriteBytes(path, bytes);
  gzFile file = gzopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr);
  ASSERT_EQ(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())),
            static_cast<int>(bytes.size()));
  gzclose(file);
}

// A shard written with the raw HDF5 C API, so tests can make the malformed
// files the writer refuses to produce.
struct RawDataset {
  std::string name;
  hid_t file_type;  // e.g. H5T_STD_I32LE
  hid_t memory_type;
  std::vector<hsize_t> dims;
  const void* data;
};
inline void WriteRawShard(const std::string& path, const char* schema, int64_t version,
                          const std::vector<RawDataset>& datasets) {
  H5Lock lock;
  hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  if (schema != nullptr) {
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, std::strlen(schema));
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attribute = H5Acreate2(file, "schema", type, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attribute, type, schema);
    H5Aclose(attribute);
    H5Sclose(space);
    H5Tclose(type);
  }
  {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attribute = H5Acreate2(file, "version", H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attribute, H5T_NATIVE_INT64, &version);
    H5Aclose(attribute);
    H5Sclose(space);
  }
  for (const RawDataset& d : datasets) {
    hid_t space = H5Screate_simple(static_cast<int>(d.dims.size()), d.dims.data(), nullptr);
    hid_t dataset =
        H5Dcreate2(file, d.name.c_str(), d.file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(dataset, 0);
    // No data: the dataset declares its shape but stores nothing (a forged size).
    if (d.data != nullptr) {
      ASSERT_GE(H5Dwrite(dataset, d.memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, d.data), 0);
    }
    H5Dclose(dataset);
    H5Sclose(space);
  }
  H5Fclose(file);
}

// zlib's crc32 of a whole file, as a manifest writes it ("crc32:%08x").
inline std::string Crc32Of(const std::string& path) {
  const std::vector<uint8_t> bytes = ReadBytes(path);
  const uLong crc = crc32(0L, bytes.data(), static_cast<uInt>(bytes.size()));
  char text[32];
  std::snprintf(text, sizeof text, "crc32:%08lx", static_cast<unsigned long>(crc));
  return text;
}

// A manifest.textproto written by hand for shard files already in `dir`:
// `shards` gives each file's name, sample count and (tokens) token count (-1:
// none). Sizes and checksums are taken from the files.
struct RawShardEntry {
  std::string path;
  int64_t num_samples;
  int64_t num_tokens = -1;
};
inline void WriteRawManifest(const std::string& dir, const std::string& schema,
                             const std::vector<RawShardEntry>& shards,
                             const std::vector<std::pair<std::string, std::string>>& attributes) {
  std::string text = "schema: \"" + schema + "\"\nversion: 1\n";
  int64_t total = 0;
  for (const RawShardEntry& shard : shards) {
    const std::string path = dir + "/" + shard.path;
    text += "shards { path: \"" + shard.path +
            "\" num_samples: " + std::to_string(shard.num_samples) + " checksum: \"" +
            Crc32Of(path) + "\" bytes: " + std::to_string(std::filesystem::file_size(path));
    if (shard.num_tokens >= 0) text += " num_tokens: " + std::to_string(shard.num_tokens);
    text += " }\n";
    total += shard.num_samples;
  }
  text += "num_samples: " + std::to_string(total) + "\n";
  for (const auto& [key, value] : attributes) {
    text += "attributes { key: \"" + key + "\" value: \"" + value + "\" }\n";
  }
  const std::vector<uint8_t> bytes(text.begin(), text.end());
  WriteBytes(dir + "/manifest.textproto", bytes);
}

// Source data with known values: pixel (i, c, y, x) and label i are simple
// functions of their position, so a test can recompute them.
inline uint8_t SourcePixel(int64_t i, int64_t c, int64_t y, int64_t x) {
  return static_cast<uint8_t>((i * 131 + c * 71 + y * 13 + x * 7 + 5) % 256);
}
inline int32_t SourceLabel(int64_t i, int num_classes) {
  return static_cast<int32_t>((i * 7 + 3) % num_classes);
}
struct SourceImages {
  std::vector<uint8_t> pixels;
  std::vector<int32_t> labels;
};
inline SourceImages MakeSourceImages(int64_t n, int c, int h, int w, int num_classes) {
  SourceImages source;
  for (int64_t i = 0; i < n; ++i) {
    source.labels.push_back(SourceLabel(i, num_classes));
    for (int ch = 0; ch < c; ++ch)
      for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) source.pixels.push_back(SourcePixel(i, ch, y, x));
  }
  return source;
}

}  // namespace tessera::testing_util
