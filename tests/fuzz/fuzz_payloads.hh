#pragma once
// Sample payloads of every migration frame type, made by the real encoders:
// the seeds of fuzz_frames and fuzz_payloads.
#include <utility>
#include <vector>

#include "userspace/migration/payloads.hh"
#include "userspace/migration/protocol.hh"

namespace ferry::fuzz {

inline std::vector<std::pair<migration::FrameType, std::vector<std::byte>>> sample_payloads() {
  using namespace migration;
  std::vector<std::pair<FrameType, std::vector<std::byte>>> out;
  Hello h;
  h.host = "source-host";
  h.session = 0x1122334455667788;
  h.stream_count = 2;
  out.emplace_back(FrameType::kHello, encode(h));
  Precheck p;
  p.vcpus = 2;
  p.regions = {{0, 0, 64 * kPageSize}};
  p.guest_kind = 1;
  p.cpuid = {{1, 0, 0x806f8, 0, 0x7ffafbff, 0x178bfbff}};
  p.tsc_khz = 2400000;
  out.emplace_back(FrameType::kPrecheck, encode(p));
  out.emplace_back(FrameType::kPrecheckResult, encode(PrecheckResult{false, "not enough memory"}));
  std::vector<std::byte> page(kPageSize, std::byte{0x5a});
  auto pages = encode_pages_header({0, 3, {{7, page_checksum(7, page)}}});
  pages.insert(pages.end(), page.begin(), page.end());
  out.emplace_back(FrameType::kPages, std::move(pages));
  out.emplace_back(FrameType::kZeroPages, encode(ZeroPages{0, 3, {1, 2, 9}}));
  out.emplace_back(FrameType::kRoundEnd, encode(RoundEnd{3, 10, 4, 50000}));
  out.emplace_back(FrameType::kState, encode(State{std::vector<std::byte>(64, std::byte{1}), 4, 123456789}));
  out.emplace_back(FrameType::kReady, encode(Ready{0x1122334455667788, 1000}));
  out.emplace_back(FrameType::kCommit, encode(Commit{0x1122334455667788}));
  out.emplace_back(FrameType::kConfirmed, encode(Confirmed{0x1122334455667788, 5, 6}));
  out.emplace_back(FrameType::kAbort, encode(Abort{"cancelled by the operator"}));
  out.emplace_back(FrameType::kVerifyDigest, encode(VerifyDigest{0, 0xdeadbeef}));
  out.emplace_back(FrameType::kQuery, encode(Query{0x1122334455667788, std::nullopt}));
  out.emplace_back(FrameType::kQuery, encode(Query{0x1122334455667788, std::array<std::byte, 32>{std::byte{9}}}));
  out.emplace_back(FrameType::kQueryResult, encode(QueryResult{0x1122334455667788, SessionOutcome::kHolding, "holding"}));
  return out;
}

}  // namespace ferry::fuzz
