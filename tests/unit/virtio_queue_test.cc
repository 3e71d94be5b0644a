// Split virtqueues, device side, against rings a test driver writes into
// real guest memory (a memfd region): chains taken, buffers read and
// written (and marked dirty for migration), used entries returned, the
// interrupt and kick suppression of EVENT_IDX and of the rings' flags, and
// every kind of descriptor a malicious guest can write refused with an
// error instead of a crash or an access outside guest memory.
#include <gtest/gtest.h>

#include <cstring>

#include "tests/unit/virtio_driver.hh"

namespace ferry::kvm::virtio {
namespace {

using testing::Driver;
using testing::kDescNext;
using testing::kDescWrite;
using testing::kDescIndirect;

std::vector<std::byte> bytes(std::string_view s) {
  std::vector<std::byte> v(s.size());
  std::memcpy(v.data(), s.data(), s.size());
  return v;
}

TEST(SplitQueue, TakesAChainReadsAndWritesItsBuffersAndReturnsIt) {
  Driver d;
  auto q = d.open();
  ASSERT_TRUE(q) << q.error().what();
  EXPECT_FALSE(q->has_available());
  d.put(Driver::kData, bytes("request"));
  d.desc(0, Driver::kData, 7, kDescNext, 1);
  d.desc(1, Driver::kData + 0x2000, 64, kDescWrite, 0);
  d.make_available(0);
  d.harvest();  // only what the device writes from here counts

  auto c = q->pop();
  ASSERT_TRUE(c) << c.error().what();
  ASSERT_TRUE(c->has_value());
  const Chain& chain = **c;
  EXPECT_EQ(chain.head, 0);
  ASSERT_EQ(chain.readable.size(), 1u);
  ASSERT_EQ(chain.writable.size(), 1u);
  EXPECT_EQ(chain.readable_bytes, 7u);
  EXPECT_EQ(chain.writable_bytes, 64u);
  std::vector<std::byte> got(16);
  const std::size_t n = chain.read(2, got);
  EXPECT_EQ(n, 5u);
  EXPECT_EQ(std::memcmp(got.data(), "quest", 5), 0);
  ASSERT_TRUE(chain.write(d.mem, 0, bytes("reply")));
  EXPECT_FALSE(chain.write(d.mem, 60, bytes("too long")));  // past its 64 writable bytes
  ASSERT_TRUE(q->push(chain.head, 5));
  EXPECT_EQ(d.used_idx(), 1);
  EXPECT_EQ(d.used_elem(0), std::make_pair(std::uint32_t{0}, std::uint32_t{5}));
  EXPECT_EQ(std::memcmp(d.at(Driver::kData + 0x2000), "reply", 5), 0);
  // What a migration must resend: the reply's page and the used ring's.
  const auto dirty = d.harvest();
  EXPECT_TRUE(dirty.contains(Driver::kData + 0x2000)) << "a buffer the device wrote was not marked dirty";
  EXPECT_TRUE(dirty.contains(Driver::kUsed)) << "the used ring was not marked dirty";
  EXPECT_FALSE(dirty.contains(Driver::kData)) << "a buffer the device only read was marked dirty";

  auto none = q->pop();
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->has_value());
  EXPECT_EQ(q->position(), (QueuePosition{.next_avail = 1, .next_used = 1, .signalled_used = 0}));
}

TEST(SplitQueue, AnIndirectTableIsOneChain) {
  Driver d;
  auto q = d.open({.indirect = true});
  ASSERT_TRUE(q);
  d.table_desc(Driver::kTable, 0, Driver::kData, 10, kDescNext, 1);
  d.table_desc(Driver::kTable, 1, Driver::kData + 0x100, 20, kDescNext, 2);
  d.table_desc(Driver::kTable, 2, Driver::kData + 0x1000, 30, kDescWrite, 0);
  d.desc(3, Driver::kTable, 3 * 16, kDescIndirect, 0);
  d.make_available(3);
  auto c = q->pop();
  ASSERT_TRUE(c) << c.error().what();
  ASSERT_TRUE(c->has_value());
  EXPECT_EQ((*c)->head, 3);
  EXPECT_EQ((*c)->readable_bytes, 30u);
  EXPECT_EQ((*c)->writable_bytes, 30u);
}

// One bad driver per case: what it wrote, and what the error must say.
struct Malicious {
  const char* name;
  std::function<void(Driver&)> write;
  const char* error;
  bool indirect = true;
};

TEST(SplitQueue, RefusesEveryMaliciousChainWithAnError) {
  const std::uint64_t past_ram = Driver::kRamBytes;
  const std::vector<Malicious> cases = {
      {"head outside the table", [](Driver& d) { d.make_available(99); }, "descriptor 99 is outside the table of 8"},
      {"next outside the table",
       [](Driver& d) {
         d.desc(0, Driver::kData, 8, kDescNext, 200);
         d.make_available(0);
       },
       "descriptor 200 is outside the table"},
      {"a loop",
       [](Driver& d) {
         d.desc(0, Driver::kData, 8, kDescNext, 1);
         d.desc(1, Driver::kData, 8, kDescNext, 0);
         d.make_available(0);
       },
       "loops (more than 8 descriptors)"},
      {"a buffer outside RAM",
       [](Driver& d) {
         d.desc(0, 1ull << 40, 8, 0, 0);
         d.make_available(0);
       },
       "not RAM"},
      {"a buffer running off the end of RAM",
       [past_ram](Driver& d) {
         d.desc(0, past_ram - 8, 4096, kDescWrite, 0);
         d.make_available(0);
       },
       "runs past the end"},
      {"a length that wraps the address space",
       [](Driver& d) {
         d.desc(0, ~0ull - 2, 16, 0, 0);
         d.make_available(0);
       },
       "not RAM"},
      {"readable after writable",
       [](Driver& d) {
         d.desc(0, Driver::kData, 8, kDescWrite | kDescNext, 1);
         d.desc(1, Driver::kData, 8, 0, 0);
         d.make_available(0);
       },
       "a device-readable buffer after a device-writable one"},
      {"indirect without the feature",
       [](Driver& d) {
         d.table_desc(Driver::kTable, 0, Driver::kData, 8, 0, 0);
         d.desc(0, Driver::kTable, 16, kDescIndirect, 0);
         d.make_available(0);
       },
       "INDIRECT_DESC was not negotiated", false},
      {"a nested indirect table",
       [](Driver& d) {
         d.table_desc(Driver::kTable, 0, Driver::kTable, 16, kDescIndirect, 0);
         d.desc(0, Driver::kTable, 16, kDescIndirect, 0);
         d.make_available(0);
       },
       "nested indirect table"},
      {"indirect with NEXT",
       [](Driver& d) {
         d.table_desc(Driver::kTable, 0, Driver::kData, 8, 0, 0);
         d.desc(0, Driver::kTable, 16, kDescIndirect | kDescNext, 1);
         d.make_available(0);
       },
       "indirect descriptor with NEXT set"},
      {"indirect inside a chain",
       [](Driver& d) {
         d.table_desc(Driver::kTable, 0, Driver::kData, 8, 0, 0);
         d.desc(0, Driver::kData, 8, kDescNext, 1);
         d.desc(1, Driver::kTable, 16, kDescIndirect, 0);
         d.make_available(0);
       },
       "indirect descriptor inside a chain"},
      {"an indirect table of a length that is no table",
       [](Driver& d) {
         d.desc(0, Driver::kTable, 24, kDescIndirect, 0);
         d.make_available(0);
       },
       "indirect table of 24 bytes"},
      {"an indirect table outside RAM",
       [](Driver& d) {
         d.desc(0, 1ull << 40, 64, kDescIndirect, 0);
         d.make_available(0);
       },
       "indirect table: guest memory"},
      {"a loop inside an indirect table",
       [](Driver& d) {
         d.table_desc(Driver::kTable, 0, Driver::kData, 8, kDescNext, 1);
         d.table_desc(Driver::kTable, 1, Driver::kData, 8, kDescNext, 0);
         d.desc(0, Driver::kTable, 32, kDescIndirect, 0);
         d.make_available(0);
       },
       "loops (more than 2 descriptors) (in its indirect table)"},
      {"more buffers available than the queue holds",
       [](Driver& d) {
         d.desc(0, Driver::kData, 8, 0, 0);
         d.set_avail_idx(9);
       },
       "made 9 buffers available on a queue of 8"},
  };
  for (const auto& m : cases) {
    SCOPED_TRACE(m.name);
    Driver d;
    auto q = d.open({.indirect = m.indirect});
    ASSERT_TRUE(q);
    m.write(d);
    auto c = q->pop();
    ASSERT_FALSE(c) << "accepted";
    EXPECT_NE(c.error().what().find(m.error), std::string::npos) << c.error().what();
    EXPECT_NE(c.error().what().find("test queue"), std::string::npos) << "the error names the queue";
    EXPECT_EQ(q->position().next_avail, 0) << "a refused chain was consumed";
  }
}

TEST(SplitQueue, OpenRefusesALayoutOutsideRamOrMisaligned) {
  Driver d;
  struct Case {
    QueueLayout layout;
    const char* error;
  };
  const std::vector<Case> cases = {
      {{0, Driver::kDesc, Driver::kAvail, Driver::kUsed}, "queue size 0"},
      {{3, Driver::kDesc, Driver::kAvail, Driver::kUsed}, "queue size 3"},
      {{16, Driver::kDesc, Driver::kAvail, Driver::kUsed}, "queue size 16 (must be a power of two, 1..8)"},
      {{8, Driver::kDesc + 8, Driver::kAvail, Driver::kUsed}, "misaligned"},
      {{8, Driver::kDesc, Driver::kAvail + 1, Driver::kUsed}, "misaligned"},
      {{8, Driver::kDesc, Driver::kAvail, Driver::kUsed + 2}, "misaligned"},
      {{8, 1ull << 40, Driver::kAvail, Driver::kUsed}, "descriptor table"},
      {{8, Driver::kDesc, Driver::kRamBytes - 4, Driver::kUsed}, "available ring"},
      {{8, Driver::kDesc, Driver::kAvail, Driver::kRamBytes - 8}, "used ring"},
  };
  for (const auto& c : cases) {
    auto q = SplitQueue::open("test queue", d.mem, c.layout, 8, false, false);
    ASSERT_FALSE(q) << c.error;
    EXPECT_NE(q.error().what().find(c.error), std::string::npos) << q.error().what();
  }
}

TEST(SplitQueue, EventIdxInterruptsAndKicksOnlyWhereTheDriverAsks) {
  Driver d;
  auto q = d.open({.event_idx = true});
  ASSERT_TRUE(q);
  for (std::uint16_t i = 0; i < 4; ++i) {
    d.desc(i, Driver::kData, 8, kDescWrite, 0);
    d.make_available(i);
  }
  // The driver wants an interrupt once the used index passes 2.
  d.set_used_event(2);
  for (int i = 0; i < 2; ++i) {
    auto c = q->pop();
    ASSERT_TRUE(c && c->has_value());
    ASSERT_TRUE(q->push((*c)->head, 8));
  }
  EXPECT_FALSE(q->should_interrupt()) << "used index 2 has not passed used_event 2";
  auto c = q->pop();
  ASSERT_TRUE(c && c->has_value());
  ASSERT_TRUE(q->push((*c)->head, 8));
  EXPECT_TRUE(q->should_interrupt()) << "used index 3 passed used_event 2";
  EXPECT_FALSE(q->should_interrupt()) << "nothing new since";
  // Kicks: the device asks for one at its next available entry.
  EXPECT_TRUE(q->want_kicks(true)) << "one buffer is still available";
  EXPECT_EQ(d.avail_event(), 3);
  c = q->pop();
  ASSERT_TRUE(c && c->has_value());
  EXPECT_EQ(d.avail_event(), 4) << "pop moves avail_event along while kicks are wanted";
  EXPECT_FALSE(q->want_kicks(true));
}

TEST(SplitQueue, WithoutEventIdxTheRingFlagsDecide) {
  Driver d;
  auto q = d.open();
  ASSERT_TRUE(q);
  d.desc(0, Driver::kData, 8, kDescWrite, 0);
  d.make_available(0);
  d.set_avail_flags(1);  // NO_INTERRUPT
  auto c = q->pop();
  ASSERT_TRUE(c && c->has_value());
  ASSERT_TRUE(q->push(0, 1));
  EXPECT_FALSE(q->should_interrupt());
  d.desc(1, Driver::kData, 8, kDescWrite, 0);
  d.make_available(1);
  d.set_avail_flags(0);
  c = q->pop();
  ASSERT_TRUE(c && c->has_value());
  ASSERT_TRUE(q->push(1, 1));
  EXPECT_TRUE(q->should_interrupt());
  EXPECT_FALSE(q->want_kicks(false));
  EXPECT_EQ(d.used_flags(), 1) << "NO_NOTIFY while kicks are not wanted";
  q->want_kicks(true);
  EXPECT_EQ(d.used_flags(), 0);
  EXPECT_FALSE(q->push(8, 0)) << "a head outside the table cannot be returned";
}

TEST(SplitQueue, ReopenedAtItsPositionItCarriesOn) {
  Driver d;
  auto q = d.open();
  ASSERT_TRUE(q);
  for (std::uint16_t i = 0; i < 2; ++i) {
    d.desc(i, Driver::kData, 8, kDescWrite, 0);
    d.make_available(i);
  }
  auto c = q->pop();
  ASSERT_TRUE(c && c->has_value());
  ASSERT_TRUE(q->push(0, 4));
  auto again = SplitQueue::open("test queue", d.mem, q->layout(), 8, false, false, q->position());
  ASSERT_TRUE(again);
  c = again->pop();
  ASSERT_TRUE(c && c->has_value());
  EXPECT_EQ((*c)->head, 1) << "a reopened queue took an entry the first had taken";
  ASSERT_TRUE(again->push(1, 4));
  EXPECT_EQ(d.used_idx(), 2);
}

}  // namespace
}  // namespace ferry::kvm::virtio
