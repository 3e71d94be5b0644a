// The state format is a compatibility promise: the golden tests pin the
// bytes, and every rejection path is asserted by its message.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "userspace/base/bytes.hh"
#include "userspace/base/crc64.hh"
#include "kvm/state/format.hh"

namespace ferry::kvm::state {
namespace {

using Bytes = std::vector<std::byte>;

Bytes bytes_of(std::initializer_list<int> values) {
  Bytes out;
  for (int v : values) out.push_back(static_cast<std::byte>(v));
  return out;
}

Bytes bytes_of(std::string_view s) {
  auto b = std::as_bytes(std::span(s.data(), s.size()));
  return {b.begin(), b.end()};
}

void put_le(Bytes& f, std::size_t offset, std::uint64_t value, std::size_t width) {
  for (std::size_t i = 0; i < width; ++i) f.at(offset + i) = std::byte(value >> (8 * i));
}

// Recomputes the trailer, so a test reaches the checks that run after the
// CRC with exactly the inconsistency it wants.
void reseal(Bytes& f) {
  const std::size_t body_end = f.size() - kTrailerSize;
  put_le(f, body_end, crc64(std::span(f).first(body_end)), 8);
}

Bytes cut(const Bytes& f, std::size_t n) { return {f.begin(), f.begin() + n}; }

std::string error_of(std::span<const std::byte> f, std::uint64_t max = 1ull << 32) {
  auto r = parse_state(f, max);
  return r ? std::string("(parsed)") : r.error().message();
}

// Offsets in sample(): header 0..28; section 0 at 28 (payload 52..68);
// section 1 at 68 (payload 92..97, padding 97..100); section 2 at 100 (empty
// payload at 124); section 3 at 124 (payload 148..156); trailer at 156.
constexpr std::size_t kSampleSize = 164;

Bytes sample() {
  StateWriter w;
  w.add(SectionType::kVmConfig, 0, 1, bytes_of("0123456789abcdef"));
  w.add(SectionType::kVcpu, 0, 3, bytes_of("odd!!"));
  w.add(SectionType::kVcpu, 1, 3, {});
  w.add(SectionType::kSerial, 0, 1, bytes_of("12345678"));
  return w.finish();
}

TEST(Crc64, MatchesTheXzCheckValue) {
  EXPECT_EQ(crc64(bytes_of("123456789")), 0x995DC9BBDF1939FAull);
  EXPECT_EQ(crc64({}), 0u);
}

TEST(Crc64, IncrementalEqualsOneShot) {
  const Bytes data = bytes_of("The quick brown fox jumps over the lazy dog");
  for (std::size_t split = 0; split <= data.size(); ++split) {
    Crc64 c;
    c.update(std::span(data).first(split));
    c.update(std::span(data).subspan(split));
    EXPECT_EQ(c.value(), crc64(data)) << "split at " << split;
  }
}

TEST(ByteCodec, WritesLittleEndianAndReadsItBack) {
  ByteWriter w;
  w.put_u8(0x01);
  w.put_u16(0x0302);
  w.put_u32(0x07060504);
  w.put_u64(0x0f0e0d0c0b0a0908ull);
  w.put_bytes(bytes_of({0xaa}));
  EXPECT_EQ(w.bytes(), bytes_of({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0xaa}));

  ByteReader r(w.bytes());
  EXPECT_EQ(*r.get_u8(), 0x01);
  EXPECT_EQ(*r.get_u16(), 0x0302);
  EXPECT_EQ(*r.get_u32(), 0x07060504u);
  EXPECT_EQ(*r.get_u64(), 0x0f0e0d0c0b0a0908ull);
  EXPECT_EQ(r.expect_end().error().message(), "1 unexpected trailing bytes at offset 15");
  auto tail = r.get_bytes(1);
  ASSERT_TRUE(tail);
  ASSERT_EQ(tail->size(), 1u);
  EXPECT_EQ((*tail)[0], std::byte{0xaa});
  EXPECT_TRUE(r.expect_end());
}

TEST(ByteCodec, ReaderReportsTruncationWithAbsoluteOffset) {
  const Bytes in = bytes_of({1, 2, 3, 4, 5, 6});
  ByteReader r(in, 100);
  std::uint16_t a = 0;
  std::uint32_t b = 0;
  auto s = r.get(a, b);  // needs 6 of 6: fine
  ASSERT_TRUE(s);
  EXPECT_EQ(a, 0x0201);
  EXPECT_EQ(b, 0x06050403u);
  EXPECT_EQ(r.get_u8().error().message(), "truncated at offset 106: need 1 bytes, 0 left");

  ByteReader r2(in, 0);
  std::uint64_t c = 0;
  EXPECT_EQ(r2.get(a, c).error().message(), "truncated at offset 0: need 10 bytes, 6 left");
  EXPECT_EQ(r2.offset(), 0u);  // a failed record consumes nothing
  EXPECT_EQ(r2.get_bytes(7).error().message(), "truncated at offset 0: need 7 bytes, 6 left");
}

TEST(StateFormat, RoundTripsSectionsIncludingEmptyAndOddPayloads) {
  const Bytes f = sample();
  ASSERT_EQ(f.size(), kSampleSize);
  auto img = parse_state(f);
  ASSERT_TRUE(img) << img.error().what();
  EXPECT_EQ(img->major, 1);
  EXPECT_EQ(img->minor, 0);
  ASSERT_EQ(img->sections.size(), 4u);
  EXPECT_EQ(img->sections[0].type, SectionType::kVmConfig);
  EXPECT_EQ(img->sections[0].payload, bytes_of("0123456789abcdef"));
  EXPECT_EQ(img->sections[3].type, SectionType::kSerial);

  const Section* v0 = img->find(SectionType::kVcpu, 0);
  ASSERT_NE(v0, nullptr);
  EXPECT_EQ(v0->version, 3u);
  EXPECT_EQ(v0->payload, bytes_of("odd!!"));
  const Section* v1 = img->find(SectionType::kVcpu, 1);
  ASSERT_NE(v1, nullptr);
  EXPECT_EQ(v1->instance, 1u);
  EXPECT_TRUE(v1->payload.empty());
  EXPECT_EQ(img->find(SectionType::kVcpu, 2), nullptr);
  EXPECT_EQ(img->find(SectionType::kPit, 0), nullptr);
}

TEST(StateFormat, GoldenBytesOfATinyFile) {
  StateWriter w;
  w.add(SectionType::kVcpu, 1, 2, bytes_of({0xaa, 0xbb, 0xcc}));
  const Bytes expected = bytes_of({
      'F', 'E', 'R', 'R', 'Y', 'S', 'T', 0,            // magic
      1, 0, 0, 0,                                      // major 1, minor 0
      0, 0, 0, 0,                                      // flags
      1, 0, 0, 0,                                      // section_count
      32, 0, 0, 0, 0, 0, 0, 0,                         // body_length
      3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0,  // vcpu #1, version 2, reserved
      3, 0, 0, 0, 0, 0, 0, 0,                          // payload_length
      0xaa, 0xbb, 0xcc, 0, 0, 0, 0, 0,                 // payload + padding
      0x68, 0x8d, 0xcd, 0x48, 0x8a, 0xc5, 0xf2, 0x71,  // CRC-64/XZ
  });
  EXPECT_EQ(w.finish(), expected);
  ASSERT_TRUE(parse_state(expected));
}

TEST(StateFormat, GoldenBytesOfAnEmptyFile) {
  const Bytes expected = bytes_of({
      'F', 'E', 'R', 'R', 'Y', 'S', 'T', 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
      0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x65, 0xee, 0x22, 0xbb, 0x28, 0x8b, 0x6b,
  });
  EXPECT_EQ(StateWriter().finish(), expected);
  auto img = parse_state(expected);
  ASSERT_TRUE(img);
  EXPECT_TRUE(img->sections.empty());
}

TEST(StateReject, Oversize) {
  EXPECT_EQ(error_of(sample(), 100), "state: input of 164 bytes exceeds limit 100");
  EXPECT_TRUE(parse_state(sample(), kSampleSize));
}

TEST(StateReject, BadMagic) {
  Bytes f = sample();
  f[3] = std::byte{'X'};
  EXPECT_EQ(error_of(f), "state: bad magic (not a Ferry state file)");
  EXPECT_EQ(error_of(bytes_of("\x7f" "ELF")), "state: bad magic (not a Ferry state file)");
}

TEST(StateReject, NewerMajor) {
  Bytes f = sample();
  put_le(f, 8, 2, 2);
  reseal(f);
  EXPECT_EQ(error_of(f), "state: version 2.0 is newer than supported 1.x");
}

TEST(StateReject, OlderMajor) {
  Bytes f = sample();
  put_le(f, 8, 0, 2);
  put_le(f, 10, 7, 2);
  reseal(f);
  EXPECT_EQ(error_of(f), "state: version 0.7 is older than supported 1.x");
}

TEST(StateReject, NewerMinor) {
  Bytes f = sample();
  put_le(f, 10, 1, 2);
  reseal(f);
  EXPECT_EQ(error_of(f), "state: version 1.1 is newer than supported 1.0");
}

TEST(StateReject, NonZeroFlags) {
  Bytes f = sample();
  put_le(f, 12, 4, 4);
  reseal(f);
  EXPECT_EQ(error_of(f), "state: non-zero header flags 0x4 (none are defined in 1.0)");
}

TEST(StateReject, TruncatedHeader) {
  EXPECT_EQ(error_of(cut(sample(), 20)),
            "state: truncated: header needs 28 bytes at offset 0, 20 left");
}

TEST(StateReject, TruncatedSectionHeader) {
  EXPECT_EQ(error_of(cut(sample(), 78)),
            "state: truncated: section 1 header needs 24 bytes at offset 68, 10 left");
}

TEST(StateReject, TruncatedPayload) {
  EXPECT_EQ(error_of(cut(sample(), 56)),
            "state: truncated: section 0 payload needs 16 bytes at offset 52, 4 left");
}

TEST(StateReject, TruncatedPadding) {
  EXPECT_EQ(error_of(cut(sample(), 98)),
            "state: truncated: section 1 padding needs 3 bytes at offset 97, 1 left");
}

TEST(StateReject, TruncatedTrailer) {
  EXPECT_EQ(error_of(cut(sample(), 160)),
            "state: truncated: trailer needs 8 bytes at offset 156, 4 left");
}

TEST(StateReject, BodyLengthBeyondInput) {
  Bytes f = sample();
  put_le(f, 20, 1000, 8);
  EXPECT_EQ(error_of(f),
            "state: truncated: body_length 1000 plus 8-byte trailer at offset 28 exceed the 136 bytes left");
}

TEST(StateReject, CrcMismatch) {
  Bytes f = sample();
  f[60] ^= std::byte{0x01};
  const std::uint64_t computed = crc64(std::span(f).first(156));
  ASSERT_TRUE(parse_state(sample()));
  const std::uint64_t stored = crc64(cut(sample(), 156));
  EXPECT_EQ(error_of(f), fmt::format("state: CRC mismatch (stored {:#018x}, computed {:#018x})",
                                     stored, computed));
}

TEST(StateReject, TrailingGarbage) {
  Bytes f = sample();
  f.push_back(std::byte{0});
  EXPECT_EQ(error_of(f), "state: trailing garbage: 1 bytes after the trailer at offset 164");
}

TEST(StateReject, UnknownSectionType) {
  Bytes f = sample();
  put_le(f, 68, 77, 4);
  reseal(f);
  EXPECT_EQ(error_of(f), "state: unknown section type 77 at offset 68");
}

TEST(StateReject, InvalidSectionType) {
  Bytes f = sample();
  put_le(f, 68, 0, 4);
  reseal(f);
  EXPECT_EQ(error_of(f), "state: invalid section type 0 at offset 68");
}

TEST(StateReject, NonZeroReserved) {
  Bytes f = sample();
  put_le(f, 68 + 12, 1, 4);
  reseal(f);
  EXPECT_EQ(error_of(f), "state: non-zero reserved field 0x1 in section 1 at offset 80");
}

TEST(StateReject, NonZeroPadding) {
  Bytes f = sample();
  f[98] = std::byte{7};
  reseal(f);
  EXPECT_EQ(error_of(f), "state: non-zero padding in section 1 at offset 97");
}

TEST(StateReject, DuplicateSection) {
  Bytes f = sample();
  put_le(f, 100 + 4, 0, 4);  // vcpu#1 becomes a second vcpu#0
  reseal(f);
  EXPECT_EQ(error_of(f), "state: duplicate section vcpu#0 at offset 100");
}

TEST(StateReject, SectionCountTooSmallForBody) {
  Bytes f = sample();
  put_le(f, 16, 3, 4);
  reseal(f);
  EXPECT_EQ(error_of(f),
            "state: body length 128 does not match content: 3 sections end at offset 124, "
            "body ends at offset 156");
}

TEST(StateReject, SectionCountTooLargeForBody) {
  Bytes f = sample();
  put_le(f, 16, 5, 4);
  reseal(f);
  EXPECT_EQ(error_of(f),
            "state: section_count 5 does not match body: section 4 header needs 24 bytes at "
            "offset 156, body has 0 left");
}

TEST(StateReject, PayloadLengthOverrunsBody) {
  Bytes f = sample();
  put_le(f, 124 + 16, 9, 8);
  reseal(f);
  EXPECT_EQ(error_of(f),
            "state: section 3 payload of 9 bytes at offset 148 overruns body end at offset 156");
}

TEST(StateReject, PaddingOverrunsBody) {
  // One 5-byte payload with only 1 of its 3 padding bytes inside body_length.
  StateWriter w;
  w.add(SectionType::kClock, 0, 1, bytes_of("abcde"));
  Bytes f = w.finish();
  f.erase(f.begin() + 28 + 24 + 6, f.begin() + 28 + 24 + 8);
  put_le(f, 20, 24 + 6, 8);
  reseal(f);
  EXPECT_EQ(error_of(f), "state: section 0 padding at offset 57 overruns body end at offset 58");
}

TEST(StateWriterDeath, RefusesSectionsTheReaderWouldReject) {
  EXPECT_DEATH(StateWriter().add(SectionType::kInvalid, 0, 1, {}), "section type 0 cannot be written");
  EXPECT_DEATH(StateWriter().add(static_cast<SectionType>(77), 0, 1, {}),
               "section type 77 cannot be written");
  EXPECT_DEATH(
      {
        StateWriter w;
        w.add(SectionType::kVcpu, 1, 1, {});
        w.add(SectionType::kVcpu, 1, 1, {});
      },
      "duplicate section vcpu#1");
}

// Any single corrupted byte, with any pattern, must be rejected; from
// section_count on it must be reported as corruption, because the CRC is
// checked before sections are interpreted. (body_length sits at 20..27 and
// can turn a flip into a truncation or trailing-garbage report instead.)
TEST(StateFuzz, EveryByteFlipIsRejected) {
  const Bytes good = sample();
  for (std::size_t i = 0; i < good.size(); ++i) {
    for (int mask = 1; mask < 256; ++mask) {
      Bytes f = good;
      f[i] ^= static_cast<std::byte>(mask);
      auto r = parse_state(f);
      ASSERT_FALSE(r) << "flip " << mask << " at " << i << " parsed";
      if ((i >= 16 && i < 20) || i >= kHeaderSize) {
        ASSERT_TRUE(r.error().message().starts_with("state: CRC mismatch"))
            << "at " << i << ": " << r.error().message();
      }
    }
  }
}

TEST(StateFuzz, EveryTruncationIsRejectedAsTruncation) {
  StateWriter tiny;
  tiny.add(SectionType::kPit, 0, 1, bytes_of("x"));
  for (const Bytes& good : {sample(), tiny.finish(), StateWriter().finish()}) {
    for (std::size_t n = 0; n < good.size(); ++n) {
      auto r = parse_state(std::span(good).first(n));
      ASSERT_FALSE(r) << "truncated to " << n << " parsed";
      ASSERT_TRUE(r.error().message().starts_with("state: truncated: "))
          << n << ": " << r.error().message();
    }
  }
}

}  // namespace
}  // namespace ferry::kvm::state
