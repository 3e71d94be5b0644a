#pragma once
// The engine's page path, the part that touches every page: which stream
// carries a page, one stream's share of a round on the source (zero test,
// checksum, PAGES / ZERO_PAGES framing, ROUND_END, flush), and on the
// destination a PAGES frame received straight into memory and verified, or
// a ZERO_PAGES frame applied. The source (SourceMigration) and the
// destination (receive_vm) run these; `ferry bench-transport` drives the
// very same functions without KVM, so what it measures is this code.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "userspace/base/error.hh"
#include "userspace/migration/payloads.hh"
#include "userspace/migration/status.hh"
#include "userspace/migration/wire.hh"

namespace ferry::migration {

// Which stream carries a page: 2 MiB chunks round-robin. A page always
// travels on the same stream, so a resent copy can never overtake the
// copy it replaces (the receiver's ledger relies on that order), and each
// 64-page word of the destination's bitmaps belongs to one stream.
inline constexpr std::uint64_t kChunkPages = 512;
inline std::uint32_t stream_of(std::uint64_t page, std::uint32_t streams) {
  return static_cast<std::uint32_t>((page / kChunkPages) % streams);
}

// One memory slot as the page path sees it: `pages` pages from `host`.
struct PageMemory {
  std::uint32_t slot = 0;
  std::byte* host = nullptr;
  std::uint64_t pages = 0;
};

// Source: one stream's share of a round. Zero pages go as ZERO_PAGES
// markers, the others as PAGES with their checksums, sent from memory
// (borrowed: `mem` stays mapped until this returns); then ROUND_END and a
// flush. `check` runs every 1024 pages (an ABORT or a cancel stops the
// round). Adds to f.pages and f.zero_pages and sets f.bytes (frame bytes).
Status send_stream_pages(FrameSender& fs, const PageMemory& mem, std::uint32_t round,
                         std::span<const std::uint64_t> pages, RoundFigures& f,
                         const std::function<Status()>& check);

// Destination: a page must come on the stream the source assigns it: the
// "last copy wins" order and the one-stream-per-word ownership of the
// written bitmap both rest on it.
Status check_page_stream(std::uint64_t page, std::size_t stream, std::size_t streams);

// `written`: one bit per page of the slot (word p / 64), set for pages this
// side wrote data into. Only the page's stream touches its word.
struct ReceivedPages {
  PagesHeader header;
  std::vector<bool> good;  // per descriptor: the copy matched its checksum
};
// The PAGES frame whose header was just read: descriptors checked (slot,
// range, stream), page data read straight into `mem`, marked in `written`,
// and each page's checksum verified. A copy that fails its checksum is not
// an error here (a page modified in flight; see page_ledger.hh).
Result<ReceivedPages> receive_page_frame(FrameSource& src, const FrameHeader& h, const PageMemory& mem,
                                         std::span<std::uint64_t> written, std::size_t stream,
                                         std::size_t streams);
// ZERO_PAGES, decoded: checked like PAGES; a page this side wrote is
// cleared and unmarked, fresh memory is zero already and is not touched.
// Returns how many pages were cleared.
Result<std::uint64_t> apply_zero_page_frame(const ZeroPages& z, const PageMemory& mem,
                                            std::span<std::uint64_t> written, std::size_t stream,
                                            std::size_t streams);

}  // namespace ferry::migration
