// Every payload decoder on any bytes (the first byte picks the decoder):
// what decodes re-encodes to exactly the same bytes, so no two encodings
// mean the same message and nothing is silently ignored.
#include <cstdint>

#include "tests/fuzz/fuzz_common.hh"
#include "tests/fuzz/fuzz_payloads.hh"

using namespace ferry;
using namespace ferry::migration;

namespace {

template <class Decode>
void round_trip(std::span<const std::byte> p, Decode decode, const char* what) {
  auto m = decode(p);
  if (m) fuzz::expect_same(p, encode(*m), what);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::write_seeds_if_asked([] {
    std::vector<std::vector<std::byte>> seeds;
    for (const auto& [type, payload] : fuzz::sample_payloads()) {
      std::vector<std::byte> s{static_cast<std::byte>(static_cast<std::uint16_t>(type))};
      s.insert(s.end(), payload.begin(), payload.end());
      seeds.push_back(std::move(s));
    }
    return seeds;
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const auto p = std::as_bytes(std::span(data + 1, size - 1));
  switch (static_cast<FrameType>(data[0] % (static_cast<unsigned>(kLastFrameType) + 1))) {
    case FrameType::kHello: round_trip(p, decode_hello, "HELLO"); break;
    case FrameType::kPrecheck: round_trip(p, [](auto b) { return decode_precheck(b); }, "PRECHECK"); break;
    case FrameType::kPrecheckResult: round_trip(p, decode_precheck_result, "PRECHECK_RESULT"); break;
    case FrameType::kPages:
      if (auto m = decode_pages(p)) {
        auto e = encode_pages_header(m->header);
        e.insert(e.end(), m->data.begin(), m->data.end());
        fuzz::expect_same(p, e, "PAGES");
      }
      break;
    case FrameType::kZeroPages: round_trip(p, decode_zero_pages, "ZERO_PAGES"); break;
    case FrameType::kRoundEnd: round_trip(p, decode_round_end, "ROUND_END"); break;
    case FrameType::kState: round_trip(p, decode_state, "STATE"); break;
    case FrameType::kReady: round_trip(p, decode_ready, "READY"); break;
    case FrameType::kCommit: round_trip(p, decode_commit, "COMMIT"); break;
    case FrameType::kConfirmed: round_trip(p, decode_confirmed, "CONFIRMED"); break;
    case FrameType::kAbort: round_trip(p, decode_abort, "ABORT"); break;
    case FrameType::kVerifyDigest: round_trip(p, decode_verify_digest, "VERIFY_DIGEST"); break;
    case FrameType::kQuery: round_trip(p, decode_query, "QUERY"); break;
    case FrameType::kQueryResult: round_trip(p, decode_query_result, "QUERY_RESULT"); break;
    default: break;
  }
  return 0;
}
