// The page path (migration/page_path.hh) over real loopback TCP: what the
// source sends arrives intact on the stream the engine's rule assigns, and
// the destination rejects pages on the wrong stream, in another slot or
// past the end, and reports a page that fails its checksum without failing.
#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "userspace/migration/page_path.hh"
#include "userspace/transport/receiver.hh"
#include "userspace/transport/sender.hh"
#include "userspace/transport/tcp.hh"

namespace ferry::migration {
namespace {

using namespace std::chrono_literals;

constexpr std::uint32_t kSlot = 3;

// One stream: a FrameSender on a Sender, a FrameSource on the other end.
struct Link {
  std::unique_ptr<transport::Sender> sender;
  std::unique_ptr<FrameSender> framer;
  UniqueFd rx_fd;
  std::unique_ptr<FrameSource> source;
};

Link link() {
  Link l;
  auto lfd = transport::listen_tcp({"127.0.0.1", 0});
  EXPECT_TRUE(lfd) << lfd.error().what();
  auto port = transport::listening_port(lfd->get());
  auto tx = transport::connect_tcp({"127.0.0.1", *port}, 2s);
  EXPECT_TRUE(tx) << tx.error().what();
  auto rx = transport::accept_tcp(lfd->get(), 2s);
  EXPECT_TRUE(rx) << rx.error().what();
  auto s = transport::Sender::start(std::move(*tx), {});
  EXPECT_TRUE(s) << s.error().what();
  l.sender = std::move(*s);
  l.framer = std::make_unique<FrameSender>(*l.sender);
  l.rx_fd = std::move(*rx);
  auto r = transport::Receiver::create(l.rx_fd.get(), "rx");
  EXPECT_TRUE(r) << r.error().what();
  l.source = std::make_unique<FrameSource>(std::move(*r), 5s);
  return l;
}

struct Memory {
  explicit Memory(std::uint64_t pages) : bytes(pages * kPageSize), written((pages + 63) / 64, 0) {}
  std::vector<std::byte> bytes;
  std::vector<std::uint64_t> written;
  std::byte* page(std::uint64_t p) { return bytes.data() + p * kPageSize; }
  PageMemory view() { return {kSlot, bytes.data(), bytes.size() / kPageSize}; }
};

// Reads one stream's round the way the destination does; returns the
// number of pages that verified, or the first error.
Result<std::uint64_t> receive_round(FrameSource& src, Memory& to, std::size_t stream, std::size_t streams,
                                    RoundEnd* end = nullptr) {
  std::uint64_t verified = 0;
  for (;;) {
    auto h = src.next_header();
    if (!h) return std::unexpected(h.error());
    if (!*h) return fail("closed before ROUND_END");
    if ((*h)->type == FrameType::kPages) {
      auto r = receive_page_frame(src, **h, to.view(), to.written, stream, streams);
      if (!r) return std::unexpected(r.error());
      for (bool g : r->good) verified += g;
      continue;
    }
    auto payload = src.payload(**h);
    if (!payload) return std::unexpected(payload.error());
    if ((*h)->type == FrameType::kRoundEnd) {
      if (end) *end = *decode_round_end(*payload);
      return verified;
    }
    auto z = decode_zero_pages(*payload);
    if (!z) return std::unexpected(z.error());
    if (auto ok = apply_zero_page_frame(*z, to.view(), to.written, stream, streams); !ok)
      return std::unexpected(ok.error());
  }
}

TEST(PagePath, StreamOfIsTwoMiBChunksRoundRobin) {
  EXPECT_EQ(stream_of(0, 2), 0u);
  EXPECT_EQ(stream_of(511, 2), 0u);
  EXPECT_EQ(stream_of(512, 2), 1u);
  EXPECT_EQ(stream_of(1024, 2), 0u);
  EXPECT_EQ(stream_of(1536, 3), 0u);
  EXPECT_TRUE(check_page_stream(512, 1, 2));
  auto bad = check_page_stream(512, 0, 2);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().what(), "page 512 arrived on stream 0, its stream is 1");
}

TEST(PagePath, ARoundArrivesIntactOnEveryStream) {
  constexpr std::uint64_t kPages = 4 * kChunkPages;
  constexpr std::uint32_t kStreams = 2;
  Memory from(kPages), to(kPages);
  std::uint64_t x = 88172645463325252ull, zeros = 0;
  for (std::uint64_t p = 0; p < kPages; ++p) {
    if (p % 7 == 0) {
      ++zeros;
      continue;  // a zero page
    }
    for (std::size_t w = 0; w < kPageSize; w += 8) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      std::memcpy(from.page(p) + w, &x, 8);
    }
  }
  // A page the destination wrote in an earlier round, zero now: it must be
  // cleared. (Page 7 is a zero page; its word belongs to stream 0.)
  std::memset(to.page(7), 0xaa, kPageSize);
  to.written[0] |= std::uint64_t{1} << 7;

  std::vector<std::vector<std::uint64_t>> lists(kStreams);
  for (std::uint64_t p = 0; p < kPages; ++p) lists[stream_of(p, kStreams)].push_back(p);
  std::vector<Link> links;
  for (std::uint32_t i = 0; i < kStreams; ++i) links.push_back(link());
  std::vector<RoundFigures> sent(kStreams);
  std::vector<Status> sent_ok(kStreams);
  std::vector<Result<std::uint64_t>> got(kStreams, 0);
  std::vector<RoundEnd> ends(kStreams);
  std::vector<std::thread> threads;
  for (std::uint32_t i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] { got[i] = receive_round(*links[i].source, to, i, kStreams, &ends[i]); });
    threads.emplace_back([&, i] {
      sent_ok[i] = send_stream_pages(*links[i].framer, from.view(), 4, lists[i], sent[i], [] { return Status{}; });
    });
  }
  for (auto& t : threads) t.join();
  std::uint64_t pages = 0, zero_pages = 0;
  for (std::uint32_t i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(sent_ok[i]) << sent_ok[i].error().what();
    ASSERT_TRUE(got[i]) << got[i].error().what();
    EXPECT_EQ(*got[i], sent[i].pages);
    EXPECT_EQ(ends[i].round, 4u);
    EXPECT_EQ(ends[i].pages_sent, sent[i].pages);
    EXPECT_EQ(ends[i].zero_pages, sent[i].zero_pages);
    EXPECT_EQ(sent[i].bytes, links[i].framer->bytes());
    EXPECT_EQ(links[i].source->bytes(), links[i].framer->bytes());
    pages += sent[i].pages;
    zero_pages += sent[i].zero_pages;
  }
  EXPECT_EQ(zero_pages, zeros);
  EXPECT_EQ(pages + zero_pages, kPages);
  EXPECT_TRUE(from.bytes == to.bytes) << "the destination memory differs from the source";
  EXPECT_EQ(to.written[0] & (std::uint64_t{1} << 7), 0u) << "a cleared page stays marked written";
  EXPECT_NE(to.written[0] & (std::uint64_t{1} << 1), 0u) << "a page with data is not marked written";
}

TEST(PagePath, APageOnAnotherStreamIsRejected) {
  Memory from(2 * kChunkPages), to(2 * kChunkPages);
  std::memset(from.page(0), 1, kPageSize);
  auto l = link();
  RoundFigures f;
  const std::vector<std::uint64_t> pages{0};
  ASSERT_TRUE(send_stream_pages(*l.framer, from.view(), 0, pages, f, [] { return Status{}; }));
  auto r = receive_round(*l.source, to, 1, 2);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().what(), "page 0 arrived on stream 1, its stream is 0");
}

TEST(PagePath, PagesForAnotherSlotOrPastTheEndAreRejected) {
  Memory from(4), to(4);
  std::memset(from.page(0), 1, kPageSize);
  auto l = link();
  PagesHeader other{kSlot + 1, 0, {{0, page_checksum(0, {from.page(0), kPageSize})}}};
  ASSERT_TRUE(l.framer->send_pages(other, {{from.page(0), kPageSize}}));
  PagesHeader past{kSlot, 0, {{4, 0}}};
  ASSERT_TRUE(l.framer->send_pages(past, {{from.page(0), kPageSize}}));
  ASSERT_TRUE(l.sender->flush());
  auto h = l.source->next_header();
  ASSERT_TRUE(h && *h);
  auto r = receive_page_frame(*l.source, **h, to.view(), to.written, 0, 1);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().what(), "PAGES for slot 4, which the VM does not have");
  (void)l.source->page_data(std::vector<iovec>{{to.page(0), kPageSize}});  // skip its data
  h = l.source->next_header();
  ASSERT_TRUE(h && *h);
  r = receive_page_frame(*l.source, **h, to.view(), to.written, 0, 1);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().what(), "PAGES: page 4 is past the end of slot 3 (4 pages)");
}

TEST(PagePath, APageThatFailsItsChecksumIsReportedNotRejected) {
  Memory from(2), to(2);
  std::memset(from.page(0), 1, kPageSize);
  std::memset(from.page(1), 2, kPageSize);
  auto l = link();
  PagesHeader ph{kSlot, 0, {{0, page_checksum(0, {from.page(0), kPageSize})}, {1, 12345}}};
  ASSERT_TRUE(l.framer->send_pages(ph, {{from.page(0), 2 * kPageSize}}));
  ASSERT_TRUE(l.sender->flush());
  auto h = l.source->next_header();
  ASSERT_TRUE(h && *h);
  auto r = receive_page_frame(*l.source, **h, to.view(), to.written, 0, 1);
  ASSERT_TRUE(r) << r.error().what();
  EXPECT_EQ(r->good, (std::vector<bool>{true, false}));
  EXPECT_TRUE(from.bytes == to.bytes);  // the data landed; only its checksum was wrong
  EXPECT_EQ(to.written[0], 3u);
}

TEST(PagePath, ZeroPagesClearOnlyWrittenPagesAndRejectBadIndices) {
  Memory to(kChunkPages * 2);
  std::memset(to.page(1), 0xaa, kPageSize);
  std::memset(to.page(2), 0xbb, kPageSize);  // not marked written: left alone (cannot happen in a session)
  to.written[0] = std::uint64_t{1} << 1;
  auto n = apply_zero_page_frame(ZeroPages{kSlot, 0, {1, 2}}, to.view(), to.written, 0, 2);
  ASSERT_TRUE(n) << n.error().what();
  EXPECT_EQ(*n, 1u);
  EXPECT_EQ(to.written[0], 0u);
  EXPECT_EQ(std::to_integer<int>(to.page(1)[100]), 0);
  EXPECT_EQ(std::to_integer<int>(to.page(2)[100]), 0xbb);

  auto slot = apply_zero_page_frame(ZeroPages{kSlot + 1, 0, {1}}, to.view(), to.written, 0, 2);
  ASSERT_FALSE(slot);
  EXPECT_EQ(slot.error().what(), "ZERO_PAGES for slot 4, which the VM does not have");
  auto past = apply_zero_page_frame(ZeroPages{kSlot, 0, {kChunkPages * 2}}, to.view(), to.written, 0, 2);
  ASSERT_FALSE(past);
  EXPECT_EQ(past.error().what(), "ZERO_PAGES: page 1024 is past the end of the slot");
  auto stream = apply_zero_page_frame(ZeroPages{kSlot, 0, {kChunkPages}}, to.view(), to.written, 0, 2);
  ASSERT_FALSE(stream);
  EXPECT_EQ(stream.error().what(), "page 512 arrived on stream 0, its stream is 1");
}

}  // namespace
}  // namespace ferry::migration
