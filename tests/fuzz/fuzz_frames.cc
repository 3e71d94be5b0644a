// The frame reader on any bytes, in pieces of any size: every frame it
// returns re-encodes (encode_frame) to exactly the bytes it came from, and
// nothing it is fed crashes it or makes it allocate beyond its limits.
#include <cstdint>

#include "tests/fuzz/fuzz_common.hh"
#include "tests/fuzz/fuzz_payloads.hh"
#include "userspace/base/crc32c.hh"

using namespace ferry;
using namespace ferry::migration;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::write_seeds_if_asked([] {
    std::vector<std::vector<std::byte>> seeds;
    std::vector<std::byte> stream;  // a whole session's worth, in order
    std::uint32_t seq = 0;
    for (const auto& [type, payload] : fuzz::sample_payloads()) {
      seeds.push_back(encode_frame(type, 0, payload));
      const auto f = encode_frame(type, seq++, payload);
      stream.insert(stream.end(), f.begin(), f.end());
    }
    seeds.push_back(std::move(stream));
    return seeds;
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto in = std::as_bytes(std::span(data, size));
  FrameReader reader;
  std::vector<std::byte> again;
  std::size_t off = 0, step = size ? data[0] % 97 + 1 : 1;
  while (off < size) {
    const std::size_t n = std::min(step, size - off);
    auto frames = reader.feed(in.subspan(off, n));
    off += n;
    step = step * 31 % 4099 + 1;
    if (!frames) break;
    for (const Frame& f : *frames) {
      auto e = encode_frame(f.type, f.sequence, f.payload);
      if (f.minor != kVersionMinor) {  // an older minor the reader accepts: as it came
        e[6] = static_cast<std::byte>(f.minor & 0xff);
        e[7] = static_cast<std::byte>(f.minor >> 8);
        const std::uint32_t crc = crc32c(std::span<const std::byte>(e).first(kHeaderCrcOffset));
        for (int i = 0; i < 4; ++i) e[kHeaderCrcOffset + i] = static_cast<std::byte>(crc >> (8 * i));
      }
      again.insert(again.end(), e.begin(), e.end());
    }
  }
  if (again.size() > size) fuzz::mismatch("a frame");
  fuzz::expect_same(in.first(again.size()), again, "a frame");
  return 0;
}
