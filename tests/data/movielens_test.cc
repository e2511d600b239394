// The MovieLens importer on hand-written ratings files: both formats, time
// order restored within each user, dense item ids in movie id order (and
// their map), short users dropped with a count, and every documented error
// with its exit class and file:line.
#include "data/movielens.h"

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "data/interaction_reader.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/base/errors.h"
#include "tests/data/test_util.h"

namespace tessera {
namespace {

using ::testing::HasSubstr;
using testing_util::FreshDir;

std::string WriteFile(const std::string& dir, const std::string& name, const std::string& text) {
  const std::string path = dir + "/" + name;
  std::ofstream(path) << text;
  return path;
}

struct Read {
  std::vector<int64_t> users, offsets, items, times;
  std::vector<float> ratings;
};

Read ReadAll(const std::string& dir, int64_t users) {
  InteractionReaderOptions options;
  options.dir = dir;
  options.global_batch = users;
  options.shuffle = false;
  auto reader = InteractionReader::Open(options);
  EXPECT_TRUE(reader.ok()) << reader.status();
  auto batch = (*reader)->Next();
  EXPECT_TRUE(batch.ok()) << batch.status();
  Read r;
  auto copy = [](const Tensor& t, auto& out) {
    using T = typename std::decay_t<decltype(out)>::value_type;
    out.assign(t.data<T>(), t.data<T>() + t.numel());
  };
  copy(batch->user_ids, r.users);
  copy(batch->offsets, r.offsets);
  copy(batch->item_ids, r.items);
  copy(batch->timestamps, r.times);
  copy(batch->ratings, r.ratings);
  return r;
}

TEST(MovieLens, DatFileSortsEachUserByTimeNumbersMoviesDenselyAndDropsShortUsers) {
  const std::string dir = FreshDir("dat");
  // User 7 rated out of time order (ties keep file order); user 3 once.
  const std::string input = WriteFile(dir, "ratings.dat",
                                      "7::1193::5::978300760\n"
                                      "7::661::3::978302109\n"
                                      "7::914::3::978300760\n"
                                      "3::3408::4::978300275\n"
                                      "\n"
                                      "1::661::4::978824291\r\n"
                                      "1::2355::5::978824290\n");
  MovieLensImportOptions options;
  options.input = input;
  options.out_dir = dir + "/out";
  auto summary = ImportMovieLens(options);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->lines, 6);
  EXPECT_EQ(summary->users, 2);
  EXPECT_EQ(summary->dropped_users, 1);
  EXPECT_EQ(summary->reordered_users, 2);  // users 7 and 1
  EXPECT_EQ(summary->items, 4);            // 661, 914, 1193, 2355 (3408 only in a dropped user)
  EXPECT_EQ(summary->events, 5);
  const Read r = ReadAll(options.out_dir, 2);
  EXPECT_EQ(r.users, (std::vector<int64_t>{1, 7}));
  EXPECT_EQ(r.offsets, (std::vector<int64_t>{0, 2, 5}));
  // Items: 661 -> 0, 914 -> 1, 1193 -> 2, 2355 -> 3.
  EXPECT_EQ(r.items, (std::vector<int64_t>{3, 0, 2, 1, 0}));
  EXPECT_EQ(r.times, (std::vector<int64_t>{978824290, 978824291, 978300760, 978300760, 978302109}));
  EXPECT_EQ(r.ratings, (std::vector<float>{5, 4, 5, 3, 3}));
  std::ifstream map(options.out_dir + "/item_ids.txt");
  std::stringstream text;
  text << map.rdbuf();
  EXPECT_EQ(text.str(), "661\n914\n1193\n2355\n");
}

TEST(MovieLens, CsvWithHeaderAndHalfStarRatings) {
  const std::string dir = FreshDir("csv");
  const std::string input = WriteFile(dir, "ratings.csv",
                                      "userId,movieId,rating,timestamp\n"
                                      "1,31,2.5,1260759144\n"
                                      "1,1029,3.0,1260759179\n");
  MovieLensImportOptions options;
  options.input = input;
  options.out_dir = dir + "/out";
  auto summary = ImportMovieLens(options);
  ASSERT_TRUE(summary.ok()) << summary.status();
  const Read r = ReadAll(options.out_dir, 1);
  EXPECT_EQ(r.items, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(r.ratings, (std::vector<float>{2.5, 3.0}));
}

TEST(MovieLens, BadInputIsAnErrorNamingTheFileAndLine) {
  const std::string dir = FreshDir("bad");
  const struct {
    const char* name;
    const char* text;
    const char* message;
  } cases[] = {
      {"fields.dat", "1::2::3::4\n1::2::3\n",
       "fields.dat:2: expected 4 fields separated by \"::\", got 3"},
      {"number.dat", "1::x2::3::4\n",
       "number.dat:1: the movie id \"x2\" is not a non-negative integer"},
      {"negative.dat", "1::2::3::-4\n",
       "negative.dat:1: the timestamp \"-4\" is not a non-negative integer"},
      {"rating.csv", "userId,movieId,rating,timestamp\n1,2,nan,4\n",
       "rating.csv:2: the rating \"nan\" is not a finite number"},
      {"header.csv", "1,2,3,4\n",
       "header.csv:1: expected the header \"userId,movieId,rating,timestamp\""},
      {"alone.dat", "1::2::3::4\n",
       "no user has 2 or more ratings"},
      {"ratings.txt", "1::2::3::4\n",
       "cannot tell the format"},
  };
  for (const auto& c : cases) {
    MovieLensImportOptions options;
    options.input = WriteFile(dir, c.name, c.text);
    options.out_dir = dir + "/out_" + c.name;
    const auto summary = ImportMovieLens(options);
    ASSERT_FALSE(summary.ok()) << c.name;
    EXPECT_THAT(std::string(summary.status().message()), HasSubstr(c.message)) << c.name;
  }
  // Exit classes: a malformed line is data (3), an unknown format usage (2).
  MovieLensImportOptions malformed;
  malformed.input = dir + "/fields.dat";
  malformed.out_dir = dir + "/out_exit";
  EXPECT_EQ(ExitCodeFor(ImportMovieLens(malformed).status()), 3);
  malformed.format = "parquet";
  EXPECT_EQ(ExitCodeFor(ImportMovieLens(malformed).status()), 2);
  malformed.input = dir + "/missing.dat";
  malformed.format = "auto";
  EXPECT_EQ(ExitCodeFor(ImportMovieLens(malformed).status()), 2);
}

}  // namespace
}  // namespace tessera
