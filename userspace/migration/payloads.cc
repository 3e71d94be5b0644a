#include "userspace/migration/payloads.hh"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <unordered_set>

#include <xxhash.h>

#include "userspace/base/bytes.hh"
#include "kvm/snapshot.hh"
#include "userspace/base/crc64.hh"

namespace ferry::migration {
namespace {

using ferry::ByteReader;
using ferry::ByteWriter;

constexpr std::size_t kRegionSize = 4 + 8 + 8;
constexpr std::size_t kCpuidEntrySize = 6 * 4;

[[noreturn]] void encoder_bug(const std::string& what) {
  std::fputs(fmt::format("ferry: migration payload encoder misuse: {}\n", what).c_str(), stderr);
  std::abort();
}

std::unexpected<Error> wrap(Error e, std::string_view context) {
  return std::unexpected(std::move(e).context(context));
}

// Counts are checked before the caller allocates: the limit first, then
// that the items can be in the input at all, so a hostile count of 2^32-1
// costs nothing.
void put_count(ByteWriter& w, std::size_t n, std::size_t max, std::string_view field) {
  if (n > max) encoder_bug(fmt::format("{}: {} items, the limit is {}", field, n, max));
  w.put_u32(static_cast<std::uint32_t>(n));
}

Result<std::uint32_t> get_count(ByteReader& r, std::string_view field, std::size_t max,
                                std::size_t item_size) {
  auto n = r.get_u32();
  if (!n) return wrap(n.error(), field);
  if (*n > max) return fail("{}: {} entries exceed the limit of {}", field, *n, max);
  const std::uint64_t need = std::uint64_t{*n} * item_size;
  if (need > r.remaining()) {
    return fail("{}: truncated at offset {}: {} entries need {} bytes, {} left", field, r.offset(),
                *n, need, r.remaining());
  }
  return *n;
}

void put_string(ByteWriter& w, const std::string& s, std::size_t max, std::string_view field) {
  if (s.size() > max) encoder_bug(fmt::format("{}: {} bytes, the limit is {}", field, s.size(), max));
  w.put_u32(static_cast<std::uint32_t>(s.size()));
  w.put_bytes(std::as_bytes(std::span(s)));
}

Result<std::string> get_string(ByteReader& r, std::string_view field, std::size_t max) {
  auto n = r.get_u32();
  if (!n) return wrap(n.error(), field);
  if (*n > max) return fail("{}: {} bytes exceed the limit of {}", field, *n, max);
  auto b = r.get_bytes(*n);  // checks the bytes are there before the string exists
  if (!b) return wrap(b.error(), field);
  return std::string(reinterpret_cast<const char*>(b->data()), b->size());
}

// Reads with the payload's own reader, then insists every byte was used:
// trailing bytes would mean a layout this build does not know.
template <class T, class ReadFn>
Result<T> decode_as(std::span<const std::byte> payload, std::string_view name, ReadFn read) {
  ByteReader r(payload);
  T m{};
  if (auto s = read(r, m); !s) return wrap(std::move(s.error()), name);
  if (auto s = r.expect_end(); !s) return wrap(std::move(s.error()), name);
  return m;
}

template <class T>
std::vector<std::byte> encode_token(const T& m) {
  ByteWriter w;
  w.put_u64(m.token);
  return std::move(w).take();
}

template <class T>
Result<T> decode_token(std::span<const std::byte> payload, std::string_view name) {
  return decode_as<T>(payload, name, [](ByteReader& r, T& m) { return r.get(m.token); });
}

Status read_region(ByteReader& r, MemoryRegion& m, std::unordered_set<std::uint32_t>& slots) {
  const std::uint64_t at = r.offset();
  if (auto s = r.get(m.slot, m.gpa, m.size); !s) return s;
  if (m.size == 0 || m.size % kPageSize != 0) {
    return fail("slot {} at offset {}: size {:#x} is not a non-zero multiple of {}", m.slot, at, m.size, kPageSize);
  }
  if (m.gpa % kPageSize != 0) return fail("slot {} at offset {}: gpa {:#x} is not page-aligned", m.slot, at, m.gpa);
  if (m.gpa + m.size < m.gpa) {
    return fail("slot {} at offset {}: gpa {:#x} + size {:#x} overflows", m.slot, at, m.gpa, m.size);
  }
  if (!slots.insert(m.slot).second) return fail("slot {} at offset {}: duplicate slot", m.slot, at);
  return {};
}

Status read_precheck(ByteReader& r, Precheck& m, bool with_devices) {
  if (auto s = r.get(m.vcpus); !s) return s;
  if (m.vcpus == 0) return fail("vcpus is 0");
  auto regions = get_count(r, "regions", kMaxRegions, kRegionSize);
  if (!regions) return std::unexpected(regions.error());
  m.regions.resize(*regions);
  std::unordered_set<std::uint32_t> slots;
  for (std::uint32_t i = 0; i < *regions; ++i) {
    if (auto s = read_region(r, m.regions[i], slots); !s) return wrap(s.error(), fmt::format("region {}", i));
  }
  if (auto s = r.get(m.guest_kind); !s) return s;
  if (m.guest_kind == 0) return fail("guest_kind is 0");
  auto cpuid = get_count(r, "cpuid", kMaxCpuidEntries, kCpuidEntrySize);
  if (!cpuid) return std::unexpected(cpuid.error());
  m.cpuid.resize(*cpuid);
  for (CpuidEntry& e : m.cpuid) {
    // Cannot fail: get_count checked that all entries are present.
    if (auto s = r.get(e.function, e.index, e.eax, e.ebx, e.ecx, e.edx); !s) return s;
  }
  if (auto s = r.get(m.tsc_khz); !s) return s;
  if (m.tsc_khz == 0) return fail("tsc_khz is 0");
  std::uint8_t irqchip = 0;
  if (auto s = r.get(irqchip); !s) return s;
  if (irqchip > 1) return fail("irqchip is {}, not 0 or 1", irqchip);
  m.irqchip = irqchip == 1;
  if (!with_devices) return {};  // a 1.1 source: no device list
  // Each device is at least three empty strings (u32 lengths).
  auto devices = get_count(r, "devices", kMaxDevices, 12);
  if (!devices) return std::unexpected(devices.error());
  m.devices.emplace(*devices);
  std::unordered_set<std::string> ids;
  for (std::uint32_t i = 0; i < *devices; ++i) {
    auto& d = (*m.devices)[i];
    for (auto [field, name] : {std::pair{&d.kind, "kind"}, std::pair{&d.id, "id"}, std::pair{&d.config, "config"}}) {
      auto v = get_string(r, name, kMaxDeviceField);
      if (!v) return wrap(v.error(), fmt::format("device {}", i));
      *field = std::move(*v);
    }
    if (d.kind.empty() || d.id.empty()) return fail("device {}: empty kind or id", i);
    if (!ids.insert(d.id).second) return fail("device {}: duplicate id '{}'", i, d.id);
  }
  return {};
}

}  // namespace

std::uint64_t page_checksum(std::uint64_t page_index, std::span<const std::byte> page) {
  // XXH64 seeded with the index: data filed under another index fails too.
  // Not CRC-64 any more (protocol 1.1): ISA-L's carry-less-multiply CRC and
  // XXH64 both run at ~17 GB/s natively, but under emulation (the nested
  // sandbox, where migrations are measured against QEMU) CRC-64 managed
  // 128 MB/s and XXH64 3.5 GB/s, and this runs for every page on both sides.
  return XXH64(page.data(), page.size(), page_index);
}

std::vector<std::byte> encode(const Hello& m) {
  ByteWriter w;
  w.put_u16(m.major);
  w.put_u16(m.minor);
  w.put_u64(m.capabilities);
  put_string(w, m.host, kMaxHostName, "hello: host");
  w.put_u8(static_cast<std::uint8_t>(m.purpose));
  w.put_u64(m.session);
  w.put_u16(m.stream_index);
  w.put_u16(m.stream_count);
  return std::move(w).take();
}

Result<Hello> decode_hello(std::span<const std::byte> payload) {
  return decode_as<Hello>(payload, "hello", [](ByteReader& r, Hello& m) -> Status {
    if (auto s = r.get(m.major, m.minor, m.capabilities); !s) return s;
    auto host = get_string(r, "host", kMaxHostName);
    if (!host) return std::unexpected(host.error());
    m.host = std::move(*host);
    std::uint8_t purpose = 0;
    if (auto s = r.get(purpose, m.session, m.stream_index, m.stream_count); !s) return s;
    if (purpose == static_cast<std::uint8_t>(HelloPurpose::kMigrate)) {
      if (m.stream_count == 0 || m.stream_count > kMaxStreams)
        return fail("stream_count {} is not 1..{}", m.stream_count, kMaxStreams);
      if (m.stream_index >= m.stream_count)
        return fail("stream_index {} is not below stream_count {}", m.stream_index, m.stream_count);
    } else if (purpose == static_cast<std::uint8_t>(HelloPurpose::kResolve)) {
      if (m.stream_index != 0 || m.stream_count != 0)
        return fail("a resolve hello has stream_index {} and stream_count {} (both must be 0)", m.stream_index,
                    m.stream_count);
    } else {
      return fail("unknown purpose {}", purpose);
    }
    m.purpose = static_cast<HelloPurpose>(purpose);
    return {};
  });
}

std::vector<std::byte> encode(const Precheck& m) {
  ByteWriter w;
  w.put_u32(m.vcpus);
  put_count(w, m.regions.size(), kMaxRegions, "precheck: regions");
  for (const MemoryRegion& g : m.regions) {
    w.put_u32(g.slot);
    w.put_u64(g.gpa);
    w.put_u64(g.size);
  }
  w.put_u32(m.guest_kind);
  put_count(w, m.cpuid.size(), kMaxCpuidEntries, "precheck: cpuid");
  for (const CpuidEntry& e : m.cpuid) {
    for (std::uint32_t v : {e.function, e.index, e.eax, e.ebx, e.ecx, e.edx}) w.put_u32(v);
  }
  w.put_u32(m.tsc_khz);
  w.put_u8(m.irqchip ? 1 : 0);
  if (m.devices) {
    put_count(w, m.devices->size(), kMaxDevices, "precheck: devices");
    for (const auto& d : *m.devices)
      for (const std::string* f : {&d.kind, &d.id, &d.config}) put_string(w, *f, kMaxDeviceField, "precheck: device");
  }
  return std::move(w).take();
}

Result<Precheck> decode_precheck(std::span<const std::byte> payload, std::uint16_t minor) {
  return decode_as<Precheck>(payload, "precheck",
                             [minor](ByteReader& r, Precheck& m) { return read_precheck(r, m, minor >= 2); });
}

std::vector<std::byte> encode(const PrecheckResult& m) {
  ByteWriter w;
  w.put_u8(m.ok ? 1 : 0);
  put_string(w, m.reason, kMaxReason, "precheck result: reason");
  return std::move(w).take();
}

Result<PrecheckResult> decode_precheck_result(std::span<const std::byte> payload) {
  return decode_as<PrecheckResult>(payload, "precheck result", [](ByteReader& r, PrecheckResult& m) -> Status {
    auto ok = r.get_u8();
    if (!ok) return std::unexpected(ok.error());
    if (*ok > 1) return fail("ok is {}, not 0 or 1", *ok);
    m.ok = *ok == 1;
    auto reason = get_string(r, "reason", kMaxReason);
    if (!reason) return std::unexpected(reason.error());
    m.reason = std::move(*reason);
    return {};
  });
}

std::vector<std::byte> encode_pages_header(const PagesHeader& m) {
  ByteWriter w;
  w.put_u32(m.slot);
  w.put_u32(m.round);
  put_count(w, m.pages.size(), kMaxPagesPerFrame, "pages: descriptors");
  for (const PageDescriptor& d : m.pages) {
    w.put_u64(d.page_index);
    w.put_u64(d.checksum);
  }
  return std::move(w).take();
}

Result<DecodedPages> decode_pages(std::span<const std::byte> payload) {
  ByteReader r(payload);
  DecodedPages m;
  auto fixed = r.get(m.header.slot, m.header.round);
  if (!fixed) return wrap(fixed.error(), "pages");
  auto count = get_count(r, "descriptors", kMaxPagesPerFrame, kPageDescriptorSize);
  if (!count) return wrap(count.error(), "pages");
  m.header.pages.resize(*count);
  for (PageDescriptor& d : m.header.pages) {
    if (auto s = r.get(d.page_index, d.checksum); !s) return wrap(s.error(), "pages");
  }
  const std::uint64_t need = std::uint64_t{*count} * kPageSize;
  if (r.remaining() != need) {
    return fail("pages: {} descriptors need {} bytes of page data at offset {}, found {}",
                *count, need, r.offset(), r.remaining());
  }
  m.data = *r.get_bytes(need);
  return m;
}

Result<PagesHeader> decode_pages_header(std::span<const std::byte> covered) {
  ByteReader r(covered);
  PagesHeader m;
  if (auto fixed = r.get(m.slot, m.round); !fixed) return wrap(fixed.error(), "pages");
  auto count = get_count(r, "descriptors", kMaxPagesPerFrame, kPageDescriptorSize);
  if (!count) return wrap(count.error(), "pages");
  m.pages.resize(*count);
  for (PageDescriptor& d : m.pages)
    if (auto s = r.get(d.page_index, d.checksum); !s) return wrap(s.error(), "pages");
  if (auto s = r.expect_end(); !s) return wrap(s.error(), "pages");
  return m;
}

std::vector<std::byte> encode(const ZeroPages& m) {
  ByteWriter w;
  w.put_u32(m.slot);
  w.put_u32(m.round);
  put_count(w, m.page_index.size(), kMaxZeroPagesPerFrame, "zero pages: page_index");
  for (std::uint64_t p : m.page_index) w.put_u64(p);
  return std::move(w).take();
}

Result<ZeroPages> decode_zero_pages(std::span<const std::byte> payload) {
  return decode_as<ZeroPages>(payload, "zero pages", [](ByteReader& r, ZeroPages& m) -> Status {
    if (auto s = r.get(m.slot, m.round); !s) return s;
    auto count = get_count(r, "page_index", kMaxZeroPagesPerFrame, 8);
    if (!count) return std::unexpected(count.error());
    m.page_index.resize(*count);
    for (std::uint64_t& p : m.page_index) {
      if (auto s = r.get(p); !s) return s;
    }
    return {};
  });
}

std::vector<std::byte> encode(const RoundEnd& m) {
  ByteWriter w;
  w.put_u32(m.round);
  w.put_u64(m.pages_sent);
  w.put_u64(m.zero_pages);
  w.put_u64(m.bytes);
  return std::move(w).take();
}

Result<RoundEnd> decode_round_end(std::span<const std::byte> payload) {
  return decode_as<RoundEnd>(payload, "round end", [](ByteReader& r, RoundEnd& m) {
    return r.get(m.round, m.pages_sent, m.zero_pages, m.bytes);
  });
}

std::vector<std::byte> encode(const State& m) {
  if (m.image.empty()) encoder_bug("state: empty image");
  ByteWriter w;
  w.put_u64(m.image.size());
  w.put_bytes(m.image);
  w.put_u32(m.final_round);
  w.put_u64(m.last_heartbeat_wall_ns);
  return std::move(w).take();
}

Result<State> decode_state(std::span<const std::byte> payload) {
  return decode_as<State>(payload, "state", [](ByteReader& r, State& m) -> Status {
    auto n = r.get_u64();
    if (!n) return std::unexpected(n.error());
    if (*n == 0) return fail("empty state image");
    if (*n > r.remaining()) {
      return fail("truncated at offset {}: the image needs {} bytes, {} left", r.offset(), *n, r.remaining());
    }
    auto image = r.get_bytes(*n);
    if (!image) return std::unexpected(image.error());
    m.image.assign(image->begin(), image->end());
    return r.get(m.final_round, m.last_heartbeat_wall_ns);
  });
}

std::vector<std::byte> encode(const Ready& m) {
  ByteWriter w;
  w.put_u64(m.token);
  w.put_u64(m.load_ns);
  return std::move(w).take();
}
std::vector<std::byte> encode(const Commit& m) { return encode_token(m); }
std::vector<std::byte> encode(const Confirmed& m) {
  ByteWriter w;
  w.put_u64(m.token);
  w.put_u64(m.resumed_wall_ns);
  w.put_u64(m.first_heartbeat_wall_ns);
  return std::move(w).take();
}
std::vector<std::byte> encode(const Query& m) {
  ByteWriter w;
  w.put_u64(m.token);
  if (m.proof) w.put_bytes(*m.proof);
  return std::move(w).take();
}
Result<Ready> decode_ready(std::span<const std::byte> payload) {
  return decode_as<Ready>(payload, "ready", [](ByteReader& r, Ready& m) { return r.get(m.token, m.load_ns); });
}
Result<Commit> decode_commit(std::span<const std::byte> payload) { return decode_token<Commit>(payload, "commit"); }
Result<Confirmed> decode_confirmed(std::span<const std::byte> payload) {
  return decode_as<Confirmed>(payload, "confirmed", [](ByteReader& r, Confirmed& m) {
    return r.get(m.token, m.resumed_wall_ns, m.first_heartbeat_wall_ns);
  });
}
Result<Query> decode_query(std::span<const std::byte> payload) {
  return decode_as<Query>(payload, "query", [](ByteReader& r, Query& m) -> Status {
    if (auto s = r.get(m.token); !s) return s;
    if (r.remaining() == 0) return {};
    auto p = r.get_bytes(std::tuple_size_v<std::array<std::byte, 32>>);
    if (!p) return std::unexpected(std::move(p.error()).context("proof"));
    m.proof.emplace();
    std::copy(p->begin(), p->end(), m.proof->begin());
    return {};
  });
}

std::string_view session_outcome_name(SessionOutcome o) {
  switch (o) {
    case SessionOutcome::kRunning: return "running";
    case SessionOutcome::kHolding: return "holding";
    case SessionOutcome::kUnknown: return "unknown";
    case SessionOutcome::kDiscarded: return "discarded";
    case SessionOutcome::kCommitted: return "committed";
  }
  return "?";
}

std::vector<std::byte> encode(const QueryResult& m) {
  ByteWriter w;
  w.put_u64(m.token);
  w.put_u8(static_cast<std::uint8_t>(m.outcome));
  put_string(w, m.detail, kMaxReason, "query result: detail");
  return std::move(w).take();
}

Result<QueryResult> decode_query_result(std::span<const std::byte> payload) {
  return decode_as<QueryResult>(payload, "query result", [](ByteReader& r, QueryResult& m) -> Status {
    std::uint8_t outcome = 0;
    if (auto s = r.get(m.token, outcome); !s) return s;
    if (outcome < 1 || outcome > 5) return fail("unknown outcome {}", outcome);
    m.outcome = static_cast<SessionOutcome>(outcome);
    auto detail = get_string(r, "detail", kMaxReason);
    if (!detail) return std::unexpected(detail.error());
    m.detail = std::move(*detail);
    return {};
  });
}

std::vector<std::byte> encode(const Abort& m) {
  ByteWriter w;
  put_string(w, m.reason, kMaxReason, "abort: reason");
  return std::move(w).take();
}

Result<Abort> decode_abort(std::span<const std::byte> payload) {
  return decode_as<Abort>(payload, "abort", [](ByteReader& r, Abort& m) -> Status {
    auto reason = get_string(r, "reason", kMaxReason);
    if (!reason) return std::unexpected(reason.error());
    m.reason = std::move(*reason);
    return {};
  });
}

std::vector<std::byte> encode(const VerifyDigest& m) {
  ByteWriter w;
  w.put_u32(m.slot);
  w.put_u64(m.digest);
  return std::move(w).take();
}

Result<VerifyDigest> decode_verify_digest(std::span<const std::byte> payload) {
  return decode_as<VerifyDigest>(payload, "verify digest",
                                 [](ByteReader& r, VerifyDigest& m) { return r.get(m.slot, m.digest); });
}

}  // namespace ferry::migration
