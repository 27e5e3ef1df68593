// Side files soupkit keeps beside an output: the journal read back as
// untrusted input (every field checked, damaged lines dropped), lock files
// recognised only by soupkit's own first line, and the warning for a
// quoted {model} in a greedy soup's --eval-cmd.
#include "engine/journal.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/methods/evaluator.hpp"

#include <gtest/gtest.h>

#include <fstream>

namespace soupkit {
namespace {

class JournalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fs::path("soupkit-journal-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  void write_journal(const std::string& text) { std::ofstream(Journal::path_for(dir_ / "out")) << text; }
  fs::path dir_;
};

TEST_F(JournalTest, KeepsOnlyEntriesThatMatchTheJob) {
  write_journal(R"({"soupkit_journal": 1, "fingerprint": "fp"}
{"tensor": 0, "name": "a", "checksum": "00000000000000ff", "record": {"k": 1}}
{"tensor": 1, "name": "b", "checksum": "0000000000000001", "record": null}
{"tensor": 2, "name": "a", "checksum": "0000000000000001", "record": {}}
{"tensor": 18446744073709551615, "name": "a", "checksum": "0000000000000001"}
{"tensor": -1, "name": "a", "checksum": "0000000000000001"}
{"tensor": 1, "name": "a", "checksum": "0000000000000001"}
{"tensor": 1, "name": "b", "checksum": "1"}
{"tensor": 1, "name": "b", "checksum": "000000000000000g"}
{"tensor": 1, "name": "b", "checksum": "0000000000000002", "record": "string"}
[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]
{"tensor": 1, "name": "b", "checks)");
  Journal journal(dir_ / "out", "fp", true, {"a", "b"});
  ASSERT_EQ(journal.finished().size(), 2u);
  EXPECT_EQ(journal.finished().at(0).checksum, 0xffu);
  EXPECT_EQ(journal.finished().at(0).record.at("k"), 1);
  EXPECT_EQ(journal.finished().at(1).checksum, 1u);
  EXPECT_TRUE(journal.finished().at(1).record.is_null());
}

TEST_F(JournalTest, ResumingAnotherJobOrAForeignFileIsRefused) {
  write_journal(R"({"soupkit_journal": 1, "fingerprint": ["not", "a", "string"]})" "\n");
  EXPECT_THROW(Journal(dir_ / "out", "fp", true, {"a"}), InputError);
  write_journal("the user's notes\n");
  EXPECT_THROW(Journal(dir_ / "out", "fp", false, {"a"}), InputError);
  std::ifstream kept(Journal::path_for(dir_ / "out"));
  std::string line;
  std::getline(kept, line);
  EXPECT_EQ(line, "the user's notes");
}

TEST_F(JournalTest, RecordsAndRecognisesItsPartialOutput) {
  const fs::path partial = dir_ / "out.partial";
  std::ofstream(partial) << "data";
  {
    Journal journal(dir_ / "out", "fp", false, {"a"});
    EXPECT_FALSE(journal.owns_partial(partial));
    journal.record_partial(partial);
    EXPECT_TRUE(journal.owns_partial(partial));
  }  // killed: the journal stays
  Journal again(dir_ / "out", "other job", false, {"a"});
  EXPECT_TRUE(again.owns_partial(partial));
  std::ofstream(dir_ / "other") << "another file";
  EXPECT_FALSE(again.owns_partial(dir_ / "other"));
  fs::create_symlink(partial, dir_ / "link");  // a link to it is not it
  EXPECT_FALSE(again.owns_partial(dir_ / "link"));
}

TEST(SideFiles, RecognisedByTheirFirstLine) {
  EXPECT_TRUE(is_soupkit_side_file(R"({"soupkit_journal": 1, "fingerprint": "x"})", "soupkit_journal"));
  EXPECT_FALSE(is_soupkit_side_file(R"({"soupkit_lock": 1})", "soupkit_journal"));
  EXPECT_TRUE(is_soupkit_side_file(R"({"soupkit_lock": 1})", "soupkit_lock"));
  EXPECT_TRUE(is_soupkit_side_file(R"({"owner": {"pid": 1}})", "soupkit_lock"));
  EXPECT_FALSE(is_soupkit_side_file(R"({"owner": {"pid": 1}})", "soupkit_journal"));
  EXPECT_FALSE(is_soupkit_side_file("", "soupkit_lock"));
  EXPECT_FALSE(is_soupkit_side_file("notes", "soupkit_lock"));
}

TEST(EvalCommand, QuotedPlaceholderIsFound) {
  EXPECT_TRUE(placeholder_inside_quotes("python eval.py '{model}'"));
  EXPECT_TRUE(placeholder_inside_quotes("python eval.py \"--model={model}\""));
  EXPECT_TRUE(placeholder_inside_quotes("sh -c 'python eval.py {model}'"));
  EXPECT_FALSE(placeholder_inside_quotes("python eval.py {model}"));
  EXPECT_FALSE(placeholder_inside_quotes("echo 'a' {model} \"b\""));
  EXPECT_FALSE(placeholder_inside_quotes("echo \\' {model} \\'"));
  EXPECT_FALSE(placeholder_inside_quotes("echo \"it's\" {model}"));
}

}  // namespace
}  // namespace soupkit
