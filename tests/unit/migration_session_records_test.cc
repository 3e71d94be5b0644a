// The destination's durable session records (session_records.hh): what a
// receiver restarted on the same state directory must find, and what it
// must refuse to guess.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "tests/temp_dir.hh"
#include "userspace/migration/incoming.hh"
#include "userspace/migration/session_records.hh"

namespace ferry::migration {
namespace {

using test::TempDir;

TEST(SessionRecords, AnOutcomeWrittenByOneProcessIsFoundByTheNext) {
  TempDir dir;
  ASSERT_FALSE(dir.path.empty());
  const std::string state = dir.path + "/state";  // created on open, private to its owner
  {
    auto r = SessionRecords::open(state);
    ASSERT_TRUE(r) << r.error().what();
    auto none = r->find(0x1234);
    ASSERT_TRUE(none) << none.error().what();
    EXPECT_FALSE(none->has_value());
    ASSERT_TRUE(r->write(0x1234, SessionOutcome::kCommitted, "src-host"));
    ASSERT_TRUE(r->write(0xfeed, SessionOutcome::kDiscarded, "other\nhost"));
  }
  struct stat st {};
  ASSERT_EQ(::stat(state.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  auto again = SessionRecords::open(state);  // the restarted receiver
  ASSERT_TRUE(again) << again.error().what();
  auto c = again->find(0x1234);
  ASSERT_TRUE(c && c->has_value());
  EXPECT_EQ(**c, SessionOutcome::kCommitted);
  auto d = again->find(0xfeed);
  ASSERT_TRUE(d && d->has_value());
  EXPECT_EQ(**d, SessionOutcome::kDiscarded);
  // What resolvers are told about sessions that are not the one running.
  EXPECT_EQ(*recorded_outcome(&*again, 0x1234), SessionOutcome::kCommitted);
  EXPECT_EQ(*recorded_outcome(&*again, 0x9999), SessionOutcome::kUnknown);
  EXPECT_EQ(*recorded_outcome(nullptr, 0x1234), SessionOutcome::kUnknown);
  // One file per session, no temporary left behind.
  std::size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(state)) {
    ++files;
    EXPECT_TRUE(e.path().filename().string().starts_with("session-")) << e.path();
    EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();
  }
  EXPECT_EQ(files, 2u);
}

TEST(SessionRecords, TheFirstOutcomeIsFinal) {
  TempDir dir;
  auto r = SessionRecords::open(dir.path);
  ASSERT_TRUE(r) << r.error().what();
  ASSERT_TRUE(r->write(7, SessionOutcome::kDiscarded, "h"));
  EXPECT_TRUE(r->write(7, SessionOutcome::kDiscarded, "h"));  // the same again: nothing to change
  auto flip = r->write(7, SessionOutcome::kCommitted, "h");
  ASSERT_FALSE(flip);
  EXPECT_EQ(flip.error().what(), "session 0x0000000000000007 is already on record as discarded, not committed");
  EXPECT_EQ(**r->find(7), SessionOutcome::kDiscarded);
  // Only decisions are recorded, never a state of mind.
  EXPECT_FALSE(r->write(8, SessionOutcome::kHolding, "h"));
  EXPECT_FALSE(r->write(8, SessionOutcome::kUnknown, "h"));
  EXPECT_FALSE(r->find(8)->has_value());
}

TEST(SessionRecords, ARecordThatCannotBeReadIsAnErrorNotAnUnknownSession) {
  TempDir dir;
  auto r = SessionRecords::open(dir.path);
  ASSERT_TRUE(r) << r.error().what();
  {
    std::ofstream(r->path_of(5)) << "ferry-session-record 1\nsession=0x0000000000000005\noutcome=maybe\n";
    std::ofstream(r->path_of(6)) << "garbage\n";
    std::ofstream(r->path_of(9)) << "ferry-session-record 1\nsession=0x0000000000000005\noutcome=committed\n";
  }
  auto bad = r->find(5);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().what().find("has outcome 'maybe'"), std::string::npos) << bad.error().what();
  ASSERT_FALSE(r->find(6));
  ASSERT_FALSE(r->find(9));  // a record for another session under this one's name
  // "Unknown" would let the source resume a VM that may have run here.
  EXPECT_FALSE(recorded_outcome(&*r, 5));
}

TEST(SessionRecords, AStateDirectoryThatIsNotADirectoryIsRefused) {
  TempDir dir;
  const std::string file = dir.path + "/file";
  std::ofstream(file) << "x";
  auto r = SessionRecords::open(file);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().what().find("is not a directory"), std::string::npos) << r.error().what();
  EXPECT_FALSE(SessionRecords::open(file + "/below"));
  EXPECT_FALSE(SessionRecords::open(""));
  // Missing parents are made (the default lives under /var/lib/ferry).
  EXPECT_TRUE(SessionRecords::open(dir.path + "/missing/deeper"));
}

}  // namespace
}  // namespace ferry::migration
