#include "userspace/migration/wire.hh"

#include "userspace/base/crc32c.hh"

namespace ferry::migration {

Status FrameSender::send(FrameType type, std::span<const std::byte> payload) {
  auto frame = encode_frame(type, sequence_++, payload);
  bytes_ += frame.size();
  return s_.send(std::move(frame));
}

Status FrameSender::send_pages(const PagesHeader& header, std::vector<iovec> data) {
  auto covered = encode_pages_header(header);
  const std::uint64_t length = covered.size() + header.pages.size() * kPageSize;
  const auto h = encode_header(FrameType::kPages, sequence_++, length, crc32c(covered));
  std::vector<std::byte> head(h.begin(), h.end());
  head.insert(head.end(), covered.begin(), covered.end());
  bytes_ += kHeaderSize + length;
  return s_.send(std::move(head), std::move(data));
}

Result<std::optional<FrameHeader>> FrameSource::next_header() {
  std::array<std::byte, kHeaderSize> raw;
  auto n = r_.read_exact(std::span<std::byte>(raw), timeout_);
  if (!n) return std::unexpected(n.error());
  if (*n == 0) return std::optional<FrameHeader>{};
  auto h = decode_header(raw, static_cast<std::uint32_t>(frames_));
  if (!h) return std::unexpected(std::move(h.error()).context(fmt::format("migration stream: frame {}", frames_)));
  ++frames_;
  return std::optional<FrameHeader>(*h);
}

Result<std::vector<std::byte>> FrameSource::payload(const FrameHeader& h) {
  // Grown kPayloadStep at a time as the bytes arrive (protocol.hh).
  std::vector<std::byte> p;
  p.reserve(std::min(h.payload_length, kPayloadStep));
  while (p.size() < h.payload_length) {
    const std::size_t old = p.size();
    const std::size_t n = std::min(h.payload_length - old, kPayloadStep);
    p.resize(old + n);
    auto got = r_.read_exact(std::span<std::byte>(p).subspan(old, n), timeout_);
    if (!got) return std::unexpected(got.error());
    if (*got == 0) return fail("{} frame: the peer closed the connection before its payload", frame_type_name(h.type));
  }
  const std::uint64_t covered = *crc_covered_length(h.type, h.payload_length);
  const std::uint32_t crc = crc32c(std::span(p).first(covered));
  if (crc != h.payload_crc32c)
    return fail("migration stream: frame {}: {} payload CRC mismatch (stored {:#010x}, computed {:#010x})",
                frames_ - 1, frame_type_name(h.type), h.payload_crc32c, crc);
  return p;
}

Result<PagesHeader> FrameSource::pages_header(const FrameHeader& h) {
  const std::uint64_t covered = *crc_covered_length(h.type, h.payload_length);
  std::vector<std::byte> p(covered);
  auto n = r_.read_exact(std::span<std::byte>(p), timeout_);
  if (!n) return std::unexpected(n.error());
  if (*n == 0) return fail("PAGES frame: the peer closed the connection before its payload");
  const std::uint32_t crc = crc32c(p);
  if (crc != h.payload_crc32c)
    return fail("migration stream: frame {}: PAGES payload CRC mismatch (stored {:#010x}, computed {:#010x})",
                frames_ - 1, h.payload_crc32c, crc);
  auto ph = decode_pages_header(p);
  if (!ph) return std::unexpected(ph.error());
  if (ph->pages.size() * kPageSize != h.payload_length - covered)
    return fail("PAGES frame: {} descriptors but {} bytes of data", ph->pages.size(), h.payload_length - covered);
  return ph;
}

Status FrameSource::page_data(std::span<const iovec> into) {
  if (into.empty()) return {};
  auto n = r_.read_exact(into, timeout_);
  if (!n) return std::unexpected(n.error());
  if (*n == 0) return fail("PAGES frame: the peer closed the connection before the page data");
  return {};
}

Result<std::optional<Frame>> FrameSource::next_frame() {
  auto h = next_header();
  if (!h) return std::unexpected(h.error());
  if (!*h) return std::optional<Frame>{};
  auto p = payload(**h);
  if (!p) return std::unexpected(p.error());
  return std::optional<Frame>(Frame{(*h)->type, (*h)->sequence, std::move(*p), (*h)->minor});
}

}  // namespace ferry::migration
