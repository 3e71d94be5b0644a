// The migration wire protocol (userspace/migration): CRC-32C, the frame
// layer and its reader, the typed payloads, and the page ledger's rule.
// Like the state format, the protocol is a compatibility promise: golden
// tests pin bytes, and every rejection path is asserted by its message.
// Headers for rejection tests are built here from the documented layout
// with an independent bitwise CRC, not with the code under test.
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "userspace/base/bytes.hh"
#include "userspace/base/crc64.hh"
#include "userspace/base/crc32c.hh"

#include <xxhash.h>
#include "userspace/migration/page_ledger.hh"
#include "userspace/migration/payloads.hh"
#include "userspace/migration/protocol.hh"

namespace ferry::migration {
namespace {

using Bytes = std::vector<std::byte>;
using ferry::ByteWriter;

Bytes bytes_of(std::string_view s) {
  auto b = std::as_bytes(std::span(s.data(), s.size()));
  return {b.begin(), b.end()};
}

Bytes bytes_of(std::initializer_list<int> values) {
  Bytes out;
  for (int v : values) out.push_back(static_cast<std::byte>(v));
  return out;
}

Bytes concat(std::initializer_list<std::span<const std::byte>> parts) {
  Bytes out;
  for (auto p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

Bytes cut(std::span<const std::byte> b, std::size_t n) { return {b.begin(), b.begin() + n}; }

// The message of a Result that should have failed; safe when it did not.
template <class R>
std::string error_message(const R& r) {
  return r ? std::string("(no error)") : r.error().message();
}

// The value of a Result that should have succeeded; a failure, not a crash,
// when it did not.
template <class T>
T ok(Result<T> r) {
  EXPECT_TRUE(r) << r.error().message();
  return r ? std::move(*r) : T{};
}

// Bit by bit, straight from the definition: an oracle that shares nothing
// with the table-driven implementation.
std::uint32_t reference_crc32c(std::span<const std::byte> bytes) {
  std::uint32_t c = ~0u;
  for (std::byte b : bytes) {
    c ^= std::to_integer<std::uint32_t>(b);
    for (int i = 0; i < 8; ++i) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
  }
  return ~c;
}

Bytes pattern(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Bytes out(n);
  for (auto& b : out) b = static_cast<std::byte>(rng());
  return out;
}

// ---------------------------------------------------------------- CRC-32C

TEST(MigrationCrc32c, MatchesTheCastagnoliCheckValue) {
  EXPECT_EQ(crc32c(bytes_of("123456789")), 0xE3069283u);
  EXPECT_EQ(crc32c({}), 0u);
}

TEST(MigrationCrc32c, MatchesTheIscsiTestVectors) {
  // RFC 3720 B.4: 32 bytes of zeros, of ones, and ascending.
  Bytes zeros(32, std::byte{0}), ones(32, std::byte{0xff}), ascending(32);
  for (int i = 0; i < 32; ++i) ascending[i] = static_cast<std::byte>(i);
  EXPECT_EQ(crc32c(zeros), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones), 0x62A8AB43u);
  EXPECT_EQ(crc32c(ascending), 0x46DD794Eu);
}

TEST(MigrationCrc32c, SlicedLoopMatchesBitwiseReferenceAtEveryLengthAndSplit) {
  const Bytes data = pattern(80, 1);
  for (std::size_t len = 0; len <= data.size(); ++len) {
    const auto in = std::span(data).first(len);
    ASSERT_EQ(crc32c(in), reference_crc32c(in)) << "length " << len;
    for (std::size_t split = 0; split <= len; ++split) {
      Crc32c c;
      c.update(in.first(split));
      c.update(in.subspan(split));
      ASSERT_EQ(c.value(), reference_crc32c(in)) << "length " << len << " split " << split;
    }
  }
}

// ------------------------------------------------------------ frame layer

// A header from the documented layout, with fields a test can break.
struct RawHeader {
  std::uint32_t magic = kMagic;
  std::uint16_t major = 1, minor = kVersionMinor, type = 1, flags = 0;
  std::uint32_t sequence = 0;
  std::optional<std::uint64_t> length = std::nullopt;       // default: the payload's size
  std::optional<std::uint32_t> payload_crc = std::nullopt;  // default: the whole payload's CRC
  std::optional<std::uint32_t> header_crc = std::nullopt;   // default: correct
};

Bytes raw_frame(const RawHeader& h, std::span<const std::byte> payload = {}) {
  ByteWriter w;
  w.put_u32(h.magic);
  w.put_u16(h.major);
  w.put_u16(h.minor);
  w.put_u16(h.type);
  w.put_u16(h.flags);
  w.put_u32(h.sequence);
  w.put_u64(h.length.value_or(payload.size()));
  w.put_u32(h.payload_crc.value_or(reference_crc32c(payload)));
  w.put_u32(h.header_crc.value_or(reference_crc32c(w.bytes())));
  w.put_bytes(payload);
  return std::move(w).take();
}

TEST(MigrationFrame, HeaderBytesAreTheDocumentedLayout) {
  const Bytes payload = bytes_of("abc");
  const Bytes f = encode_frame(FrameType::kAbort, 0x01020304, payload);
  ASSERT_EQ(f.size(), kHeaderSize + 3);
  const std::uint32_t pcrc = reference_crc32c(payload);
  Bytes expect = bytes_of({'F', 'M', 'I', 'G', 1, 0, 2, 0, 11, 0, 0, 0, 4, 3, 2, 1,  //
                           3, 0, 0, 0, 0, 0, 0, 0});
  for (int i = 0; i < 4; ++i) expect.push_back(static_cast<std::byte>(pcrc >> (8 * i)));
  const std::uint32_t hcrc = reference_crc32c(expect);
  for (int i = 0; i < 4; ++i) expect.push_back(static_cast<std::byte>(hcrc >> (8 * i)));
  expect.insert(expect.end(), payload.begin(), payload.end());
  EXPECT_EQ(f, expect);
  EXPECT_EQ(f, raw_frame({.type = 11, .sequence = 0x01020304}, payload));
}

TEST(MigrationFrame, TypeValuesAndNamesArePinned) {
  const std::vector<std::pair<FrameType, std::string_view>> all = {
      {FrameType::kInvalid, "INVALID"},         {FrameType::kHello, "HELLO"},
      {FrameType::kPrecheck, "PRECHECK"},       {FrameType::kPrecheckResult, "PRECHECK_RESULT"},
      {FrameType::kPages, "PAGES"},             {FrameType::kZeroPages, "ZERO_PAGES"},
      {FrameType::kRoundEnd, "ROUND_END"},      {FrameType::kState, "STATE"},
      {FrameType::kReady, "READY"},             {FrameType::kCommit, "COMMIT"},
      {FrameType::kConfirmed, "CONFIRMED"},     {FrameType::kAbort, "ABORT"},
      {FrameType::kVerifyDigest, "VERIFY_DIGEST"}, {FrameType::kQuery, "QUERY"},
      {FrameType::kQueryResult, "QUERY_RESULT"}};
  for (std::size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(static_cast<std::size_t>(all[i].first), i) << all[i].second;  // values never move
    EXPECT_EQ(frame_type_name(all[i].first), all[i].second);
  }
  EXPECT_EQ(frame_type_name(static_cast<FrameType>(15)), "UNKNOWN");
  EXPECT_EQ(kLastFrameType, FrameType::kQueryResult);
}

TEST(MigrationFrame, PagesCrcCoversOnlyTheFixedPartAndDescriptors) {
  constexpr std::uint64_t kPerPage = kPageDescriptorSize + kPageSize;
  EXPECT_EQ(crc_covered_length(FrameType::kPages, 12), 12u);
  EXPECT_EQ(crc_covered_length(FrameType::kPages, 12 + 2 * kPerPage), 12u + 2 * 16);
  EXPECT_EQ(crc_covered_length(FrameType::kPages, 12 + kMaxPagesPerFrame * kPerPage), 12u + 4096 * 16);
  EXPECT_EQ(crc_covered_length(FrameType::kPages, 12 + (kMaxPagesPerFrame + 1) * kPerPage), std::nullopt);
  EXPECT_EQ(crc_covered_length(FrameType::kPages, 11), std::nullopt);
  EXPECT_EQ(crc_covered_length(FrameType::kPages, 13 + kPerPage), std::nullopt);
  EXPECT_EQ(crc_covered_length(FrameType::kState, 13), 13u);
  EXPECT_EQ(crc_covered_length(FrameType::kHello, 0), 0u);
}

// ------------------------------------------------------- typed payloads

Hello sample_hello() {
  return {1, 0, 0x8000000000000005ull, "source-7.example.net", HelloPurpose::kMigrate, 0x1234567890abcdefull, 2, 4};
}

Precheck sample_precheck() {
  return {4,
          {{0, 0, 256ull << 20}, {1, 0x100000000ull, 2ull << 20}, {7, 0xfee00000ull, 4096}},
          2,
          {{0, 0, 0xd, 0x756e6547, 0x6c65746e, 0x49656e69},
           {1, 0, 0x000906ea, 0x00010800, 0xfffa3203, 0x178bfbff},
           {7, 0, 0, 0x029c6fbf, 0x40000000, 0xbc000400}},
          2918400,
          true,
          std::vector<Precheck::Device>{{"uart-16550a", "com1", "port=0x3f8 irq=4"}}};
}

// decode_precheck at this build's minor version (it takes the frame's).
Result<Precheck> decode_precheck_12(std::span<const std::byte> b) { return decode_precheck(b); }

PrecheckResult sample_precheck_result() { return {false, "destination KVM lacks CPUID.7.0:EBX bit 5 (AVX2)"}; }

// Three pages with distinct contents, indices out of order on purpose.
struct SamplePages {
  PagesHeader header;
  Bytes data;
  Bytes payload;
};
SamplePages sample_pages() {
  SamplePages s;
  s.header = {1, 3, {}};
  const std::uint64_t indices[] = {0, 511, 42};
  for (std::uint64_t i : indices) {
    const Bytes page = pattern(kPageSize, 100 + i);
    s.header.pages.push_back({i, page_checksum(i, page)});
    s.data.insert(s.data.end(), page.begin(), page.end());
  }
  s.payload = concat({encode_pages_header(s.header), s.data});
  return s;
}

ZeroPages sample_zero_pages() { return {2, 9, {0, 1, 2, 1ull << 40}}; }
RoundEnd sample_round_end() { return {5, 123456789, 42, 0x123456789ull}; }
State sample_state() { return {pattern(100, 7), 9, 1700000000123456789ull}; }
QueryResult sample_query_result() { return {0x42, SessionOutcome::kHolding, "READY sent 3 s ago, no COMMIT"}; }
Abort sample_abort() { return {"cancelled by operator"}; }
VerifyDigest sample_verify_digest() { return {3, 0xdeadbeefcafef00dull}; }

template <class T, class Decode>
void expect_round_trip(const T& value, Decode decode) {
  auto got = decode(encode(value));
  ASSERT_TRUE(got) << got.error().message();
  EXPECT_EQ(*got, value);
}

TEST(MigrationPayload, EveryTypeRoundTripsWithNonTrivialValues) {
  expect_round_trip(sample_hello(), decode_hello);
  expect_round_trip(sample_precheck(), decode_precheck_12);
  expect_round_trip(sample_precheck_result(), decode_precheck_result);
  expect_round_trip(PrecheckResult{true, ""}, decode_precheck_result);
  expect_round_trip(sample_zero_pages(), decode_zero_pages);
  expect_round_trip(sample_round_end(), decode_round_end);
  expect_round_trip(sample_state(), decode_state);
  expect_round_trip(Ready{0x0123456789abcdefull, 123456789}, decode_ready);
  expect_round_trip(Commit{0xfedcba9876543210ull}, decode_commit);
  expect_round_trip(Confirmed{0x1122334455667788ull, 1700000000000000001ull, 1700000000000000002ull}, decode_confirmed);
  expect_round_trip(Query{0x5555, std::nullopt}, decode_query);
  std::array<std::byte, 32> proof{};
  for (std::size_t i = 0; i < proof.size(); ++i) proof[i] = static_cast<std::byte>(i * 7 + 1);
  expect_round_trip(Query{0x5555, proof}, decode_query);
  // A proof cut short is no proof.
  auto cut = encode(Query{0x5555, proof});
  cut.pop_back();
  EXPECT_FALSE(decode_query(cut));
  expect_round_trip(sample_query_result(), decode_query_result);
  expect_round_trip(Hello{1, 0, 0, "r", HelloPurpose::kResolve, 7, 0, 0}, decode_hello);
  expect_round_trip(Hello{1, 0, 0, "s", HelloPurpose::kMigrate, 7, 15, 16}, decode_hello);
  expect_round_trip(sample_abort(), decode_abort);
  expect_round_trip(sample_verify_digest(), decode_verify_digest);
  // Limits are inclusive.
  expect_round_trip(Hello{1, 0, 0, std::string(kMaxHostName, 'h')}, decode_hello);
  expect_round_trip(Abort{std::string(kMaxReason, 'r')}, decode_abort);

  const SamplePages s = sample_pages();
  auto got = decode_pages(s.payload);
  ASSERT_TRUE(got) << got.error().message();
  EXPECT_EQ(got->header, s.header);
  ASSERT_EQ(got->data.size(), 3 * kPageSize);
  EXPECT_TRUE(std::ranges::equal(got->data, s.data));
  EXPECT_EQ(got->data.data(), s.payload.data() + 12 + 3 * 16);  // a view, not a copy
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(page_checksum(got->header.pages[i].page_index, got->page(i)), got->header.pages[i].checksum);
  }
  auto empty = decode_pages(encode_pages_header({4, 0, {}}));
  ASSERT_TRUE(empty) << empty.error().message();
  EXPECT_TRUE(empty->header.pages.empty());
  EXPECT_TRUE(empty->data.empty());
}

TEST(MigrationPayload, BytesAreTheDocumentedLayout) {
  EXPECT_EQ(encode(Hello{1, 2, 0x0807060504030201ull, "ab", HelloPurpose::kMigrate, 0x0102, 3, 4}),
            bytes_of({1, 0, 2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 2, 0, 0, 0, 'a', 'b',  // version, caps, host
                      1, 2, 1, 0, 0, 0, 0, 0, 0, 3, 0, 4, 0}));                 // purpose, session, index, count
  EXPECT_EQ(encode(RoundEnd{1, 2, 3, 4}),
            bytes_of({1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(encode_pages_header({1, 2, {{3, 0x0102030405060708ull}}}),
            bytes_of({1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1}));
  EXPECT_EQ(encode(PrecheckResult{true, "x"}), bytes_of({1, 1, 0, 0, 0, 'x'}));
  EXPECT_EQ(encode(State{bytes_of({9, 8}), 3, 0x0102}),
            bytes_of({2, 0, 0, 0, 0, 0, 0, 0, 9, 8, 3, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(encode(VerifyDigest{1, 2}), bytes_of({1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(encode(Ready{0x0102, 3}), bytes_of({2, 1, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(encode(QueryResult{1, SessionOutcome::kRunning, "x"}),
            bytes_of({1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 'x'}));
  EXPECT_EQ(encode(Precheck{1, {{2, 0x1000, 0x2000}}, 3, {{4, 5, 6, 7, 8, 9}}, 10}),
            bytes_of({1, 0, 0, 0,                                               // vcpus
                      1, 0, 0, 0, 2, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0,        // 1 region: slot, gpa
                      0, 0x20, 0, 0, 0, 0, 0, 0,                                // size
                      3, 0, 0, 0,                                               // guest_kind
                      1, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0, 6, 0, 0, 0, 7, 0, 0, 0,  // 1 cpuid entry
                      8, 0, 0, 0, 9, 0, 0, 0,                                   //
                      10, 0, 0, 0,                                              // tsc_khz
                      1}));                                                     // irqchip
}

// Every decoder as "error message, or (decoded)", with a valid sample.
struct Case {
  std::string name;
  Bytes valid;
  std::function<std::string(std::span<const std::byte>)> error_of;
};

template <class Decode>
std::function<std::string(std::span<const std::byte>)> error_of(Decode decode) {
  return [decode](std::span<const std::byte> b) {
    auto r = decode(b);
    return r ? std::string("(decoded)") : r.error().message();
  };
}

std::vector<Case> all_cases() {
  return {
      {"hello", encode(sample_hello()), error_of(decode_hello)},
      {"precheck", encode(sample_precheck()), error_of(decode_precheck_12)},
      {"precheck result", encode(sample_precheck_result()), error_of(decode_precheck_result)},
      {"pages", sample_pages().payload, error_of(decode_pages)},
      {"zero pages", encode(sample_zero_pages()), error_of(decode_zero_pages)},
      {"round end", encode(sample_round_end()), error_of(decode_round_end)},
      {"state", encode(sample_state()), error_of(decode_state)},
      {"ready", encode(Ready{1}), error_of(decode_ready)},
      {"commit", encode(Commit{1}), error_of(decode_commit)},
      {"confirmed", encode(Confirmed{1}), error_of(decode_confirmed)},
      {"abort", encode(sample_abort()), error_of(decode_abort)},
      {"verify digest", encode(sample_verify_digest()), error_of(decode_verify_digest)},
      {"query", encode(Query{1, std::array<std::byte, 32>{}}), error_of(decode_query)},
      {"query result", encode(sample_query_result()), error_of(decode_query_result)},
  };
}

TEST(MigrationPayload, TruncationAtEveryLengthIsRejected) {
  for (const Case& c : all_cases()) {
    ASSERT_EQ(c.error_of(c.valid), "(decoded)") << c.name;
    for (std::size_t n = 0; n < c.valid.size(); ++n) {
      if (c.name == "query" && n == 8) continue;  // the proofless QUERY (plain TCP, as 1.2 sent it)
      const std::string e = c.error_of(cut(c.valid, n));
      ASSERT_NE(e, "(decoded)") << c.name << " cut at " << n;
      ASSERT_TRUE(e.starts_with(c.name + ": ")) << c.name << " cut at " << n << ": " << e;
    }
  }
  // Two messages in full: a fixed field, and a string's bytes.
  EXPECT_EQ(error_of(decode_round_end)(cut(encode(sample_round_end()), 10)),
            "round end: truncated at offset 0: need 28 bytes, 10 left");
  EXPECT_EQ(error_of(decode_hello)(cut(encode(sample_hello()), 19)),
            "hello: host: truncated at offset 16: need 20 bytes, 3 left");
  EXPECT_EQ(error_of(decode_pages)(cut(sample_pages().payload, 60 + kPageSize)),
            "pages: 3 descriptors need 12288 bytes of page data at offset 60, found 4096");
}

TEST(MigrationPayload, TrailingBytesAreRejected) {
  for (const Case& c : all_cases()) {
    Bytes longer = c.valid;
    longer.push_back(std::byte{0});
    const std::string e = c.error_of(longer);
    EXPECT_TRUE(e.starts_with(c.name + ": ")) << c.name << ": " << e;
    if (c.name != "pages") {
      EXPECT_EQ(e, fmt::format("{}: 1 unexpected trailing bytes at offset {}", c.name, c.valid.size()));
    }
  }
  EXPECT_EQ(error_of(decode_pages)(concat({sample_pages().payload, bytes_of({0})})),
            "pages: 3 descriptors need 12288 bytes of page data at offset 60, found 12289");
}

// The payload of one count field, followed by nothing: the decoder must
// refuse on the count alone.
Bytes with_count(std::initializer_list<int> prefix, std::uint32_t count) {
  ByteWriter w;
  w.put_bytes(bytes_of(prefix));
  w.put_u32(count);
  return std::move(w).take();
}

TEST(MigrationPayload, OversizedCountsAreRejectedBeforeAllocation) {
  const std::initializer_list<int> hello_fixed = {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  const std::initializer_list<int> vcpus = {1, 0, 0, 0};
  const std::initializer_list<int> up_to_cpuid = {1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0};
  const std::initializer_list<int> slot_round = {0, 0, 0, 0, 0, 0, 0, 0};
  for (std::uint32_t huge : {0u, 0xffffffffu}) {  // 0: limit + 1
    auto over = [&](std::size_t limit) { return huge ? huge : static_cast<std::uint32_t>(limit + 1); };
    EXPECT_EQ(error_of(decode_hello)(with_count(hello_fixed, over(255))),
              fmt::format("hello: host: {} bytes exceed the limit of 255", over(255)));
    EXPECT_EQ(error_of(decode_precheck_result)(with_count({0}, over(4096))),
              fmt::format("precheck result: reason: {} bytes exceed the limit of 4096", over(4096)));
    EXPECT_EQ(error_of(decode_abort)(with_count({}, over(4096))),
              fmt::format("abort: reason: {} bytes exceed the limit of 4096", over(4096)));
    EXPECT_EQ(error_of(decode_precheck_12)(with_count(vcpus, over(64))),
              fmt::format("precheck: regions: {} entries exceed the limit of 64", over(64)));
    EXPECT_EQ(error_of(decode_precheck_12)(with_count(up_to_cpuid, over(256))),
              fmt::format("precheck: cpuid: {} entries exceed the limit of 256", over(256)));
    EXPECT_EQ(error_of(decode_pages)(with_count(slot_round, over(4096))),
              fmt::format("pages: descriptors: {} entries exceed the limit of 4096", over(4096)));
    EXPECT_EQ(error_of(decode_zero_pages)(with_count(slot_round, over(65536))),
              fmt::format("zero pages: page_index: {} entries exceed the limit of 65536", over(65536)));
  }
  // Within the limit but not in the input: refused as a whole, before the
  // first item is read or any room is made for them.
  EXPECT_EQ(error_of(decode_precheck_12)(with_count(up_to_cpuid, 256)),
            "precheck: cpuid: truncated at offset 16: 256 entries need 6144 bytes, 0 left");
  EXPECT_EQ(error_of(decode_precheck_12)(with_count(vcpus, 64)),
            "precheck: regions: truncated at offset 8: 64 entries need 1280 bytes, 0 left");
  EXPECT_EQ(error_of(decode_pages)(with_count(slot_round, 4096)),
            "pages: descriptors: truncated at offset 12: 4096 entries need 65536 bytes, 0 left");
  EXPECT_EQ(error_of(decode_zero_pages)(with_count(slot_round, 65536)),
            "zero pages: page_index: truncated at offset 12: 65536 entries need 524288 bytes, 0 left");
  EXPECT_EQ(error_of(decode_hello)(with_count(hello_fixed, 255)),
            "hello: host: truncated at offset 16: need 255 bytes, 0 left");
  ByteWriter state;
  state.put_u64(~0ull);
  EXPECT_EQ(error_of(decode_state)(state.bytes()),
            "state: truncated at offset 8: the image needs 18446744073709551615 bytes, 0 left");
}

// Protocol 1.2: the device list after irqchip; a 1.1 precheck has none and
// still decodes (nullopt: the destination derives devices from the kind).
TEST(MigrationPayload, PrecheckCarriesTheDevicesAndReadsA11PrecheckWithout) {
  Precheck old = sample_precheck();
  old.devices.reset();
  Precheck with = sample_precheck();
  with.devices->push_back({"acpi-pm", "pm", "port=0x600"});
  auto back = decode_precheck(encode(with));
  ASSERT_TRUE(back) << back.error().what();
  EXPECT_EQ(*back, with);
  Precheck none = sample_precheck();
  none.devices = std::vector<Precheck::Device>{};  // described, and empty
  back = decode_precheck(encode(none));
  ASSERT_TRUE(back) << back.error().what();
  ASSERT_TRUE(back->devices.has_value());
  EXPECT_TRUE(back->devices->empty());
  // A 1.2 precheck without the list is cut short; a 1.1 one with a list
  // has trailing bytes.
  EXPECT_EQ(error_of([](std::span<const std::byte> b) { return decode_precheck(b, 2); })(encode(old)),
            "precheck: devices: truncated at offset 153: need 4 bytes, 0 left");
  EXPECT_EQ(error_of([](std::span<const std::byte> b) { return decode_precheck(b, 1); })(encode(none)),
            "precheck: 4 unexpected trailing bytes at offset 153");
  back = decode_precheck(encode(old), 1);  // 1.1: ends at irqchip
  ASSERT_TRUE(back) << back.error().what();
  EXPECT_FALSE(back->devices.has_value());
  // Layout: u32 count, then kind, id, config as u32-length strings.
  Precheck one{1, {{2, 0x1000, 0x2000}}, 3, {}, 10};
  one.devices = {{{"k", "i", ""}}};
  const auto enc = encode(one);
  const Bytes tail(enc.end() - 19, enc.end());
  EXPECT_EQ(tail, bytes_of({1, 1, 0, 0, 0, 1, 0, 0, 0, 'k', 1, 0, 0, 0, 'i', 0, 0, 0, 0}));  // irqchip, then the list

  auto device_error = [](std::vector<Precheck::Device> d) {
    Precheck p = sample_precheck();
    p.devices = std::move(d);
    return error_of(decode_precheck_12)(encode(p));
  };
  EXPECT_EQ(device_error({{"uart", "com1", ""}, {"uart", "com1", ""}}), "precheck: device 1: duplicate id 'com1'");
  EXPECT_EQ(device_error({{"", "com1", ""}}), "precheck: device 0: empty kind or id");
  // A count the payload cannot hold is refused before anything is allocated.
  auto bytes = encode(old);
  for (std::uint8_t b : {0xff, 0xff, 0xff, 0x7f}) bytes.push_back(std::byte{b});
  EXPECT_NE(error_of(decode_precheck_12)(bytes).find("devices: 2147483647 entries exceed the limit of 64"),
            std::string::npos)
      << error_of(decode_precheck_12)(bytes);
}

TEST(MigrationPayload, FieldValuesNoSenderProducesAreRejected) {
  auto precheck_error = [](auto change) {
    Precheck p = sample_precheck();
    change(p);
    return error_of(decode_precheck_12)(encode(p));
  };
  EXPECT_EQ(precheck_error([](Precheck& p) { p.vcpus = 0; }), "precheck: vcpus is 0");
  EXPECT_EQ(precheck_error([](Precheck& p) { p.guest_kind = 0; }), "precheck: guest_kind is 0");
  EXPECT_EQ(precheck_error([](Precheck& p) { p.tsc_khz = 0; }), "precheck: tsc_khz is 0");
  EXPECT_EQ(precheck_error([](Precheck& p) { p.regions[1].size = 0; }),
            "precheck: region 1: slot 1 at offset 28: size 0x0 is not a non-zero multiple of 4096");
  EXPECT_EQ(precheck_error([](Precheck& p) { p.regions[1].size = 4097; }),
            "precheck: region 1: slot 1 at offset 28: size 0x1001 is not a non-zero multiple of 4096");
  EXPECT_EQ(precheck_error([](Precheck& p) { p.regions[2].gpa = 0x800; }),
            "precheck: region 2: slot 7 at offset 48: gpa 0x800 is not page-aligned");
  EXPECT_EQ(precheck_error([](Precheck& p) { p.regions[2].gpa = 0xfffffffffffff000ull; }),
            "precheck: region 2: slot 7 at offset 48: gpa 0xfffffffffffff000 + size 0x1000 overflows");
  EXPECT_EQ(precheck_error([](Precheck& p) { p.regions[2].slot = 0; }),
            "precheck: region 2: slot 0 at offset 48: duplicate slot");

  EXPECT_EQ(error_of(decode_precheck_result)(bytes_of({2, 0, 0, 0, 0})), "precheck result: ok is 2, not 0 or 1");
  EXPECT_EQ(error_of(decode_state)(bytes_of({0, 0, 0, 0, 0, 0, 0, 0})), "state: empty state image");
  auto hello_error = [](Hello h) { return error_of(decode_hello)(encode(h)); };
  EXPECT_EQ(hello_error({1, 0, 0, "", HelloPurpose::kMigrate, 1, 0, 0}), "hello: stream_count 0 is not 1..16");
  EXPECT_EQ(hello_error({1, 0, 0, "", HelloPurpose::kMigrate, 1, 0, 17}), "hello: stream_count 17 is not 1..16");
  EXPECT_EQ(hello_error({1, 0, 0, "", HelloPurpose::kMigrate, 1, 4, 4}),
            "hello: stream_index 4 is not below stream_count 4");
  EXPECT_EQ(hello_error({1, 0, 0, "", HelloPurpose::kResolve, 1, 0, 1}),
            "hello: a resolve hello has stream_index 0 and stream_count 1 (both must be 0)");
  EXPECT_EQ(hello_error({1, 0, 0, "", static_cast<HelloPurpose>(9), 1, 0, 1}), "hello: unknown purpose 9");
  QueryResult bad = sample_query_result();
  bad.outcome = static_cast<SessionOutcome>(6);
  EXPECT_EQ(error_of(decode_query_result)(encode(bad)), "query result: unknown outcome 6");
}

TEST(MigrationPayload, PageChecksumIsXxh64OfThePageSeededWithItsIndex) {
  // XXH64's published check value: the empty input with seed 0.
  EXPECT_EQ(XXH64(nullptr, 0, 0), 0xEF46DB3751D8E999ull);
  const Bytes page = pattern(kPageSize, 3);
  EXPECT_EQ(page_checksum(0x0102030405060708ull, page), XXH64(page.data(), page.size(), 0x0102030405060708ull));
  // Data filed under another index must not verify.
  EXPECT_NE(page_checksum(1, page), page_checksum(2, page));
}

// ------------------------------------------------------------ FrameReader

// A stream with every frame type, empty and large payloads, in order.
std::vector<Frame> sample_frames() {
  std::vector<std::pair<FrameType, Bytes>> items = {
      {FrameType::kHello, encode(sample_hello())},
      {FrameType::kPrecheck, encode(sample_precheck())},
      {FrameType::kPrecheckResult, encode(PrecheckResult{true, ""})},
      {FrameType::kPages, sample_pages().payload},
      {FrameType::kZeroPages, encode(sample_zero_pages())},
      {FrameType::kRoundEnd, encode(sample_round_end())},
      {FrameType::kPages, encode_pages_header({0, 1, {}})},
      {FrameType::kState, encode(sample_state())},
      {FrameType::kReady, encode(Ready{7})},
      {FrameType::kCommit, encode(Commit{7})},
      {FrameType::kConfirmed, encode(Confirmed{7})},
      {FrameType::kVerifyDigest, encode(sample_verify_digest())},
      {FrameType::kQuery, encode(Query{7, std::nullopt})},
      {FrameType::kQueryResult, encode(sample_query_result())},
      {FrameType::kAbort, encode(Abort{""})},
  };
  std::vector<Frame> out;
  for (std::uint32_t i = 0; i < items.size(); ++i) out.push_back({items[i].first, i, items[i].second});
  return out;
}

Bytes stream_of(const std::vector<Frame>& frames) {
  Bytes out;
  for (const Frame& f : frames) {
    const Bytes b = encode_frame(f.type, f.sequence, f.payload);
    out.insert(out.end(), b.begin(), b.end());
  }
  return out;
}

void expect_same(const std::vector<Frame>& got, const std::vector<Frame>& want, const std::string& how) {
  ASSERT_EQ(got.size(), want.size()) << how;
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].type, want[i].type) << how << ", frame " << i;
    EXPECT_EQ(got[i].sequence, want[i].sequence) << how << ", frame " << i;
    EXPECT_EQ(got[i].payload, want[i].payload) << how << ", frame " << i;
  }
}

// Feeds the stream in the given chunk sizes (the last chunk takes the rest).
std::vector<Frame> read_in_chunks(std::span<const std::byte> stream, const std::vector<std::size_t>& sizes) {
  FrameReader r;
  std::vector<Frame> all;
  std::size_t at = 0;
  for (std::size_t i = 0; at < stream.size(); ++i) {
    const std::size_t n = i < sizes.size() ? std::min(sizes[i], stream.size() - at) : stream.size() - at;
    auto got = r.feed(stream.subspan(at, n));
    EXPECT_TRUE(got) << got.error().message();
    if (!got) return {};
    for (Frame& f : *got) all.push_back(std::move(f));
    at += n;
  }
  EXPECT_TRUE(r.finish());
  EXPECT_EQ(r.frames_read(), all.size());
  return all;
}

TEST(MigrationFrameReader, ReadsAWholeStreamAtOnce) {
  const auto want = sample_frames();
  expect_same(read_in_chunks(stream_of(want), {}), want, "one feed");
}

TEST(MigrationFrameReader, ReadsAStreamFedByteByByte) {
  const auto want = sample_frames();
  const Bytes stream = stream_of(want);
  expect_same(read_in_chunks(stream, std::vector<std::size_t>(stream.size(), 1)), want, "byte by byte");
}

TEST(MigrationFrameReader, ReadsAStreamSplitAtEveryPoint) {
  // Without the 12 KiB PAGES frame, to keep this quadratic test quick.
  auto want = sample_frames();
  want.erase(want.begin() + 3);
  for (std::uint32_t i = 0; i < want.size(); ++i) want[i].sequence = i;
  const Bytes stream = stream_of(want);
  for (std::size_t split = 0; split <= stream.size(); ++split) {
    expect_same(read_in_chunks(stream, {split}), want, fmt::format("split at {}", split));
    if (HasFailure()) return;
  }
}

TEST(MigrationFrameReader, ReadsAStreamInRandomChunks) {
  const auto want = sample_frames();
  const Bytes stream = stream_of(want);
  for (std::uint64_t seed = 1; seed <= 50; ++seed) {
    std::mt19937_64 rng(seed);
    std::vector<std::size_t> sizes;
    for (std::size_t total = 0; total < stream.size();) {
      // Mostly small chunks, sometimes large ones and empty ones.
      const std::size_t n = rng() % 4 == 0 ? rng() % 5000 : rng() % 40;
      sizes.push_back(n);
      total += n;
    }
    expect_same(read_in_chunks(stream, sizes), want, fmt::format("seed {}", seed));
    if (HasFailure()) return;
  }
}

TEST(MigrationFrameReader, FinishReportsAStreamCutMidFrame) {
  const Bytes first = encode_frame(FrameType::kReady, 0, encode(Ready{1}));
  const Bytes second = encode_frame(FrameType::kAbort, 1, encode(Abort{"bye"}));
  const Bytes stream = concat({first, second});
  for (std::size_t n = first.size() + 1; n < stream.size(); ++n) {
    FrameReader r;
    auto got = r.feed(cut(stream, n));
    ASSERT_TRUE(got) << got.error().message();
    EXPECT_EQ(got->size(), 1u);
    const std::size_t in_frame = n - first.size();
    const std::string want =
        in_frame < kHeaderSize
            ? fmt::format("migration stream: frame 1: truncated: the stream ended after {} of 32 header bytes", in_frame)
            : fmt::format("migration stream: frame 1: truncated: the stream ended after {} of 7 payload bytes",
                          in_frame - kHeaderSize);
    auto s = r.finish();
    ASSERT_FALSE(s) << "cut at " << n;
    EXPECT_EQ(error_message(s), want);
  }
}

// Frame 0 is valid, so every message must name frame 1.
std::string error_after_one_good_frame(std::span<const std::byte> bad) {
  FrameReader r;
  auto good = r.feed(encode_frame(FrameType::kHello, 0, encode(sample_hello())));
  EXPECT_TRUE(good && good->size() == 1);
  auto got = r.feed(bad);
  return got ? fmt::format("({} frames)", got->size()) : got.error().message();
}

constexpr std::string_view kFrame1 = "migration stream: frame 1: ";

TEST(MigrationFrameReader, RejectsBadMagic) {
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.magic = 0x47494d45, .sequence = 1})),
            std::string(kFrame1) + "bad magic 0x47494d45 (expected 0x47494d46, \"FMIG\")");
  // Byte order matters: "GIMF" is not "FMIG".
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.magic = 0x464d4947, .sequence = 1})),
            std::string(kFrame1) + "bad magic 0x464d4947 (expected 0x47494d46, \"FMIG\")");
}

TEST(MigrationFrameReader, RejectsAnotherMajorOrANewerMinorNamingBothVersions) {
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.major = 2, .minor = 0, .sequence = 1})),
            std::string(kFrame1) + "protocol version 2.0 is not supported: this reader speaks 1.x up to 1.2");
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.major = 0, .minor = 9, .sequence = 1})),
            std::string(kFrame1) + "protocol version 0.9 is not supported: this reader speaks 1.x up to 1.2");
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.major = 1, .minor = 3, .sequence = 1})),
            std::string(kFrame1) + "protocol version 1.3 is newer than this reader's 1.2");
  // 1.1 (a precheck without the device list) is still read.
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.major = 1, .minor = 1, .sequence = 1}, encode(sample_hello()))),
            "(1 frames)");
  // 1.0 checksummed pages with CRC-64: refused, not misread page by page.
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.major = 1, .minor = 0, .sequence = 1})),
            std::string(kFrame1) + "protocol version 1.0 is older than this reader accepts (1.1 to 1.2)");
  // The version is judged before the CRC: a peer of another major may
  // protect its header differently.
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.major = 2, .minor = 0, .sequence = 1, .header_crc = 0})),
            std::string(kFrame1) + "protocol version 2.0 is not supported: this reader speaks 1.x up to 1.2");
}

TEST(MigrationFrameReader, RejectsAHeaderCrcMismatch) {
  Bytes f = raw_frame({.sequence = 1}, encode(sample_hello()));
  const std::uint32_t good = reference_crc32c(std::span(f).first(28));
  f[20] ^= std::byte{0x40};  // a bit of payload_length, as a line error would
  const std::uint32_t computed = reference_crc32c(std::span(f).first(28));
  EXPECT_EQ(error_after_one_good_frame(f),
            fmt::format("{}header CRC mismatch (stored {:#010x}, computed {:#010x})", kFrame1, good, computed));
  // And a wrong stored CRC over correct fields.
  const Bytes sound = raw_frame({.sequence = 1});
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.sequence = 1, .header_crc = 0x12345678})),
            fmt::format("{}header CRC mismatch (stored 0x12345678, computed {:#010x})", kFrame1,
                        reference_crc32c(std::span(sound).first(28))));
}

TEST(MigrationFrameReader, RejectsInvalidAndUnknownTypes) {
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.type = 0, .sequence = 1})),
            std::string(kFrame1) + "invalid frame type 0");
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.type = 15, .sequence = 1})),
            std::string(kFrame1) + "unknown frame type 15");
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.type = 0xffff, .sequence = 1})),
            std::string(kFrame1) + "unknown frame type 65535");
}

TEST(MigrationFrameReader, RejectsNonZeroFlags) {
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.type = 8, .flags = 1, .sequence = 1}, encode(Ready{1}))),
            std::string(kFrame1) + "non-zero flags 0x0001 on a READY frame (none are defined)");
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.type = 4, .flags = 0x8000, .sequence = 1})),
            std::string(kFrame1) + "non-zero flags 0x8000 on a PAGES frame (none are defined)");
}

TEST(MigrationFrameReader, RejectsAnOversizedPayloadFromItsHeaderAlone) {
  // Only the header is fed: the reader must refuse before buffering anything.
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.type = 7, .sequence = 1, .length = kMaxPayload + 1})),
            std::string(kFrame1) + "oversized STATE payload: 67108865 bytes, the limit is 67108864");
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.type = 7, .sequence = 1, .length = ~0ull})),
            std::string(kFrame1) + "oversized STATE payload: 18446744073709551615 bytes, the limit is 67108864");
  // The limit itself is allowed: the header is accepted and the reader waits.
  FrameReader r;
  auto got = r.feed(raw_frame({.type = 7, .length = kMaxPayload}));
  ASSERT_TRUE(got) << got.error().message();
  EXPECT_TRUE(got->empty());
  EXPECT_EQ(error_message(r.finish()),
            "migration stream: frame 0: truncated: the stream ended after 0 of 67108864 payload bytes");
}

// Each type's limit holds the largest payload the encoders can produce,
// and a header claiming one byte more is refused from the header alone.
TEST(MigrationFrameReader, EachTypeHasALimitThatHoldsItsLargestLegalPayload) {
  const std::string host(kMaxHostName, 'h'), reason(kMaxReason, 'r'), field(kMaxDeviceField, 'f');
  Precheck pc;
  pc.vcpus = 64, pc.guest_kind = 1, pc.tsc_khz = 1;
  for (std::uint32_t i = 0; i < kMaxRegions; ++i) pc.regions.push_back({i, i * (1ull << 30), 1ull << 30});
  for (std::uint32_t i = 0; i < kMaxCpuidEntries; ++i) pc.cpuid.push_back({i, i, 1, 2, 3, 4});
  pc.devices.emplace();
  for (std::size_t i = 0; i < kMaxDevices; ++i) pc.devices->push_back({field, field, field});
  ZeroPages zp;
  zp.slot = 1, zp.round = 2;
  for (std::size_t i = 0; i < kMaxZeroPagesPerFrame; ++i) zp.page_index.push_back(i);
  const std::vector<std::pair<FrameType, std::size_t>> largest = {
      {FrameType::kHello, encode(Hello{.host = host, .session = ~0ull}).size()},
      {FrameType::kPrecheck, encode(pc).size()},
      {FrameType::kPrecheckResult, encode(PrecheckResult{false, reason}).size()},
      {FrameType::kZeroPages, encode(zp).size()},
      {FrameType::kRoundEnd, encode(RoundEnd{~0u, ~0ull, ~0ull, ~0ull}).size()},
      {FrameType::kReady, encode(Ready{~0ull, ~0ull}).size()},
      {FrameType::kCommit, encode(Commit{~0ull}).size()},
      {FrameType::kConfirmed, encode(Confirmed{~0ull, ~0ull, ~0ull}).size()},
      {FrameType::kAbort, encode(Abort{reason}).size()},
      {FrameType::kVerifyDigest, encode(VerifyDigest{~0u, ~0ull}).size()},
      {FrameType::kQuery, encode(Query{~0ull, std::array<std::byte, 32>{}}).size()},
      {FrameType::kQueryResult, encode(QueryResult{~0ull, SessionOutcome::kDiscarded, reason}).size()},
      {FrameType::kPages, kPagesFixedSize + kMaxPagesPerFrame * (kPageDescriptorSize + kPageSize)},
  };
  for (const auto& [type, size] : largest) {
    SCOPED_TRACE(std::string(frame_type_name(type)));
    EXPECT_LE(size, max_payload(type));
    // Tight: within a factor of two of what the encoders can produce.
    EXPECT_LE(max_payload(type), std::max<std::uint64_t>(2 * size, 256));
    if (type == FrameType::kPages) continue;  // its lengths are whole pages only (below)
    const std::uint64_t over = max_payload(type) + 1;
    EXPECT_EQ(error_after_one_good_frame(raw_frame({.type = static_cast<std::uint16_t>(type), .sequence = 1,
                                                    .length = over})),
              fmt::format("{}oversized {} payload: {} bytes, the limit is {}", kFrame1, frame_type_name(type), over,
                          max_payload(type)));
  }
  EXPECT_EQ(max_payload(FrameType::kState), kMaxPayload);
  EXPECT_EQ(max_payload(FrameType::kInvalid), 0u);
}

TEST(MigrationFrameReader, RejectsAPagesLengthThatIsNotWholePages) {
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.type = 4, .sequence = 1, .length = 12 + 4112 + 1})),
            std::string(kFrame1) + "PAGES payload of 4125 bytes is not 12 + count * 4112 bytes with count <= 4096");
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.type = 4, .sequence = 1, .length = 11})),
            std::string(kFrame1) + "PAGES payload of 11 bytes is not 12 + count * 4112 bytes with count <= 4096");
}

TEST(MigrationFrameReader, RejectsASequenceThatIsNotThePreviousPlusOne) {
  const Bytes ready = encode(Ready{1});
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.type = 8, .sequence = 2}, ready)),
            std::string(kFrame1) + "sequence 2, expected 1");
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.type = 8, .sequence = 0}, ready)),  // a replay
            std::string(kFrame1) + "sequence 0, expected 1");
  FrameReader r;
  EXPECT_EQ(error_message(r.feed(raw_frame({.type = 8, .sequence = 1}, ready))),
            "migration stream: frame 0: sequence 1, expected 0");
}

TEST(MigrationFrameReader, RejectsAPayloadCrcMismatch) {
  Bytes f = encode_frame(FrameType::kPrecheck, 1, encode(sample_precheck()));
  const std::uint32_t stored = reference_crc32c(std::span(f).subspan(kHeaderSize));
  f[kHeaderSize + 5] ^= std::byte{0x01};
  const std::uint32_t computed = reference_crc32c(std::span(f).subspan(kHeaderSize));
  EXPECT_EQ(error_after_one_good_frame(f), fmt::format("{}PRECHECK payload CRC mismatch (stored {:#010x}, computed {:#010x})",
                                                       kFrame1, stored, computed));
  // An empty payload has a CRC too (0).
  EXPECT_EQ(error_after_one_good_frame(raw_frame({.type = 10, .sequence = 1, .payload_crc = 1})),
            std::string(kFrame1) + "CONFIRMED payload CRC mismatch (stored 0x00000001, computed 0x00000000)");
}

TEST(MigrationFrameReader, PageDataChangedInFlightPassesTheFrameButFailsItsPage) {
  // The sender checksummed three pages, then the guest wrote page 1 while
  // it was being sent. The frame is sound; only that page's copy is bad.
  SamplePages s = sample_pages();
  Bytes f = encode_frame(FrameType::kPages, 0, s.payload);
  f[kHeaderSize + 12 + 3 * 16 + kPageSize + 100] ^= std::byte{0xff};
  FrameReader r;
  auto frames = r.feed(f);
  ASSERT_TRUE(frames) << frames.error().message();
  ASSERT_EQ(frames->size(), 1u);
  auto pages = decode_pages((*frames)[0].payload);
  ASSERT_TRUE(pages) << pages.error().message();
  PageLedger ledger;
  ASSERT_TRUE(ledger.add_slot(1, 512));
  std::vector<bool> verified;
  for (std::size_t i = 0; i < 3; ++i) {
    verified.push_back(ok(ledger.receive(1, pages->header.pages[i], pages->page(i))));
  }
  EXPECT_EQ(verified, (std::vector<bool>{true, false, true}));
  EXPECT_EQ(ledger.first_bad(), (PageRef{1, 511}));

  // A flipped descriptor, though, is the frame's problem.
  Bytes g = encode_frame(FrameType::kPages, 0, s.payload);
  g[kHeaderSize + 12 + 16 + 9] ^= std::byte{0x01};
  FrameReader r2;
  auto bad = r2.feed(g);
  ASSERT_FALSE(bad);
  EXPECT_TRUE(bad.error().message().starts_with("migration stream: frame 0: PAGES payload CRC mismatch"))
      << bad.error().message();
}

TEST(MigrationFrameReader, TheFirstErrorIsFinal) {
  FrameReader r;
  const Bytes good = encode_frame(FrameType::kReady, 0, encode(Ready{1}));
  const Bytes bad = raw_frame({.magic = 0, .sequence = 1});
  // Frames completed in the failing feed are dropped with it.
  auto first = r.feed(concat({good, bad}));
  ASSERT_FALSE(first);
  const std::string msg = "migration stream: frame 1: bad magic 0x00000000 (expected 0x47494d46, \"FMIG\")";
  EXPECT_EQ(error_message(first), msg);
  EXPECT_EQ(error_message(r.feed(encode_frame(FrameType::kReady, 2, encode(Ready{1})))), msg);
  EXPECT_EQ(error_message(r.feed({})), msg);
  EXPECT_EQ(error_message(r.finish()), msg);
}

TEST(MigrationFrameReader, DecodesEveryPayloadOfAStreamInRandomChunks) {
  // The frame layer and the payload codecs together, as a receiver uses them.
  const auto frames = sample_frames();
  const Bytes stream = stream_of(frames);
  std::mt19937_64 rng(99);
  std::vector<std::size_t> sizes(stream.size());
  for (auto& n : sizes) n = rng() % 700;
  const auto got = read_in_chunks(stream, sizes);
  ASSERT_EQ(got.size(), frames.size());
  EXPECT_EQ(ok(decode_hello(got[0].payload)), sample_hello());
  EXPECT_EQ(ok(decode_precheck(got[1].payload)), sample_precheck());
  EXPECT_EQ(ok(decode_precheck_result(got[2].payload)), (PrecheckResult{true, ""}));
  EXPECT_EQ(ok(decode_pages(got[3].payload)).header, sample_pages().header);
  EXPECT_EQ(ok(decode_zero_pages(got[4].payload)), sample_zero_pages());
  EXPECT_EQ(ok(decode_round_end(got[5].payload)), sample_round_end());
  EXPECT_TRUE(ok(decode_pages(got[6].payload)).header.pages.empty());
  EXPECT_EQ(ok(decode_state(got[7].payload)), sample_state());
  EXPECT_EQ(ok(decode_ready(got[8].payload)).token, 7u);
  EXPECT_EQ(ok(decode_commit(got[9].payload)).token, 7u);
  EXPECT_EQ(ok(decode_confirmed(got[10].payload)).token, 7u);
  EXPECT_EQ(ok(decode_verify_digest(got[11].payload)), sample_verify_digest());
  EXPECT_EQ(ok(decode_query(got[12].payload)), (Query{7, std::nullopt}));
  EXPECT_EQ(ok(decode_query_result(got[13].payload)), sample_query_result());
  EXPECT_EQ(ok(decode_abort(got[14].payload)), Abort{""});
}

// ------------------------------------------------------------- PageLedger

TEST(MigrationPageLedger, AFreshLedgerIsReady) {
  PageLedger l;
  ASSERT_TRUE(l.add_slot(0, 100));
  EXPECT_EQ(l.bad_count(), 0u);
  EXPECT_EQ(l.first_bad(), std::nullopt);
  EXPECT_TRUE(l.check_ready());
}

TEST(MigrationPageLedger, ALaterGoodCopyClearsABadOne) {
  PageLedger l;
  ASSERT_TRUE(l.add_slot(0, 1000));
  ASSERT_TRUE(l.mark_bad(0, 130));
  ASSERT_TRUE(l.mark_bad(0, 130));  // the same page failing twice is one bad page
  ASSERT_TRUE(l.mark_bad(0, 64));
  EXPECT_EQ(l.bad_count(), 2u);
  EXPECT_EQ(l.first_bad(), (PageRef{0, 64}));
  EXPECT_EQ(error_message(l.check_ready()),
            "2 page(s) failed their checksum and were not sent again (first: slot 0 page 64)");
  ASSERT_TRUE(l.mark_good(0, 64));
  EXPECT_EQ(l.bad_count(), 1u);
  EXPECT_EQ(l.first_bad(), (PageRef{0, 130}));
  ASSERT_TRUE(l.mark_good(0, 130));
  ASSERT_TRUE(l.mark_good(0, 999));  // never bad: stays good, no count underflow
  EXPECT_EQ(l.bad_count(), 0u);
  EXPECT_TRUE(l.check_ready());
}

TEST(MigrationPageLedger, FirstBadIsTheLowestSlotThenPage) {
  PageLedger l;
  for (std::uint32_t slot : {5u, 2u, 9u}) ASSERT_TRUE(l.add_slot(slot, 4096));
  ASSERT_TRUE(l.mark_bad(9, 0));
  ASSERT_TRUE(l.mark_bad(5, 3));
  ASSERT_TRUE(l.mark_bad(5, 2));
  EXPECT_EQ(l.first_bad(), (PageRef{5, 2}));
  ASSERT_TRUE(l.mark_bad(2, 4095));
  EXPECT_EQ(l.first_bad(), (PageRef{2, 4095}));
  EXPECT_EQ(l.bad_count(), 4u);
  EXPECT_EQ(error_message(l.check_ready()),
            "4 page(s) failed their checksum and were not sent again (first: slot 2 page 4095)");
}

TEST(MigrationPageLedger, RejectsUnknownSlotsAndPagesPastTheEnd) {
  PageLedger l;
  ASSERT_TRUE(l.add_slot(3, 10));
  EXPECT_EQ(error_message(l.add_slot(3, 10)), "page ledger: slot 3 added twice");
  EXPECT_EQ(error_message(l.mark_bad(4, 0)), "page ledger: unknown slot 4");
  EXPECT_EQ(error_message(l.mark_good(4, 0)), "page ledger: unknown slot 4");
  EXPECT_EQ(error_message(l.mark_bad(3, 10)), "page ledger: page 10 is past the end of slot 3 (10 pages)");
  EXPECT_EQ(error_message(l.mark_good(3, 10)), "page ledger: page 10 is past the end of slot 3 (10 pages)");
  EXPECT_EQ(l.bad_count(), 0u);
}

TEST(MigrationPageLedger, AHugeSlotCostsNothingUntilItsPagesFail) {
  PageLedger l;
  ASSERT_TRUE(l.add_slot(0, 1ull << 50));  // a 4 EiB slot: a full bitmap could not be allocated
  ASSERT_TRUE(l.mark_bad(0, 77));
  EXPECT_EQ(l.first_bad(), (PageRef{0, 77}));
}

TEST(MigrationPageLedger, APageWrittenInFlightIsBadUntilItsResendThenReadyPasses) {
  // Pre-copy: the sender checksums the page, the guest writes it, and the
  // changed bytes arrive. The dirty log has the write, so the page comes
  // again in a later round, and the session must not fail meanwhile.
  PageLedger l;
  ASSERT_TRUE(l.add_slot(1, 16));
  Bytes page = pattern(kPageSize, 5);
  const PageDescriptor round0{9, page_checksum(9, page)};
  page[10] = ~page[10];  // the guest's write, after the checksum
  auto first = l.receive(1, round0, page);
  ASSERT_TRUE(first) << first.error().message();
  EXPECT_FALSE(*first);
  EXPECT_EQ(l.first_bad(), (PageRef{1, 9}));
  EXPECT_FALSE(l.check_ready());

  // Round 1 (or the final, paused round) resends the page as it now is.
  const PageDescriptor round1{9, page_checksum(9, page)};
  auto second = l.receive(1, round1, page);
  ASSERT_TRUE(second) << second.error().message();
  EXPECT_TRUE(*second);
  EXPECT_TRUE(l.check_ready());
}

TEST(MigrationPageLedger, ACopyCorruptedInTheFinalRoundFailsReady) {
  // With the vCPUs paused nothing is resent, so a bad copy stays bad.
  PageLedger l;
  ASSERT_TRUE(l.add_slot(0, 4));
  Bytes page = pattern(kPageSize, 6);
  const PageDescriptor d{3, page_checksum(3, page)};
  ASSERT_TRUE(ok(l.receive(0, d, page)));
  page[4095] ^= std::byte{1};  // corrupted after the sender read it
  EXPECT_FALSE(ok(l.receive(0, d, page)));
  EXPECT_EQ(error_message(l.check_ready()),
            "1 page(s) failed their checksum and were not sent again (first: slot 0 page 3)");
  // A page under the wrong index does not verify either.
  Bytes other = pattern(kPageSize, 7);
  EXPECT_FALSE(ok(l.receive(0, {2, page_checksum(1, other)}, other)));
  EXPECT_EQ(l.bad_count(), 2u);
}

}  // namespace
}  // namespace ferry::migration
