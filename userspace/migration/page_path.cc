#include "userspace/migration/page_path.hh"

#include <cstring>

#include "kvm/guest_memory.hh"

namespace ferry::migration {

Status send_stream_pages(FrameSender& fs, const PageMemory& mem, std::uint32_t round,
                         std::span<const std::uint64_t> pages, RoundFigures& f,
                         const std::function<Status()>& check) {
  const std::uint64_t bytes0 = fs.bytes();
  PagesHeader ph{mem.slot, round, {}};
  std::vector<iovec> iov;
  ZeroPages zp{mem.slot, round, {}};
  auto flush_pages = [&]() -> Status {
    if (ph.pages.empty()) return {};
    auto ok = fs.send_pages(ph, std::move(iov));
    ph.pages.clear();
    iov.clear();
    return ok;
  };
  auto flush_zero = [&]() -> Status {
    if (zp.page_index.empty()) return {};
    auto ok = fs.send(FrameType::kZeroPages, zp);
    zp.page_index.clear();
    return ok;
  };
  for (std::uint64_t page : pages) {
    if ((f.pages + f.zero_pages) % 1024 == 0)
      if (auto ok = check(); !ok) return ok;
    const std::byte* p = mem.host + page * kPageSize;
    if (kvm::page_is_zero(p)) {
      zp.page_index.push_back(page);
      ++f.zero_pages;
      if (zp.page_index.size() == kMaxZeroPagesPerFrame)
        if (auto ok = flush_zero(); !ok) return ok;
      continue;
    }
    ph.pages.push_back({page, page_checksum(page, {p, kPageSize})});
    append_page(iov, p);
    ++f.pages;
    if (ph.pages.size() == kMaxPagesPerFrame)
      if (auto ok = flush_pages(); !ok) return ok;
  }
  if (auto ok = flush_pages(); !ok) return ok;
  if (auto ok = flush_zero(); !ok) return ok;
  if (auto ok = fs.send(FrameType::kRoundEnd, RoundEnd{round, f.pages, f.zero_pages, fs.bytes() - bytes0}); !ok)
    return ok;
  f.bytes = fs.bytes() - bytes0;
  return fs.sender().flush();
}

Status check_page_stream(std::uint64_t page, std::size_t stream, std::size_t streams) {
  const std::size_t want = (page / kChunkPages) % streams;
  if (want != stream) return fail("page {} arrived on stream {}, its stream is {}", page, stream, want);
  return {};
}

Result<ReceivedPages> receive_page_frame(FrameSource& src, const FrameHeader& h, const PageMemory& mem,
                                         std::span<std::uint64_t> written, std::size_t stream,
                                         std::size_t streams) {
  auto ph = src.pages_header(h);
  if (!ph) return std::unexpected(ph.error());
  if (ph->slot != mem.slot) return fail("PAGES for slot {}, which the VM does not have", ph->slot);
  std::vector<iovec> iov;
  for (const auto& d : ph->pages) {
    if (d.page_index >= mem.pages)
      return fail("PAGES: page {} is past the end of slot {} ({} pages)", d.page_index, ph->slot, mem.pages);
    if (auto ok = check_page_stream(d.page_index, stream, streams); !ok) return std::unexpected(ok.error());
    append_page(iov, mem.host + d.page_index * kPageSize);
  }
  // Straight into guest memory: the vCPUs do not run until COMMIT.
  if (auto ok = src.page_data(iov); !ok) return std::unexpected(ok.error());
  for (const auto& d : ph->pages) written[d.page_index / 64] |= std::uint64_t{1} << (d.page_index % 64);
  ReceivedPages r{std::move(*ph), {}};
  r.good.resize(r.header.pages.size());
  for (std::size_t k = 0; k < r.good.size(); ++k) {
    const auto& d = r.header.pages[k];
    r.good[k] = page_checksum(d.page_index, {mem.host + d.page_index * kPageSize, kPageSize}) == d.checksum;
  }
  return r;
}

Result<std::uint64_t> apply_zero_page_frame(const ZeroPages& z, const PageMemory& mem,
                                            std::span<std::uint64_t> written, std::size_t stream,
                                            std::size_t streams) {
  if (z.slot != mem.slot) return fail("ZERO_PAGES for slot {}, which the VM does not have", z.slot);
  std::uint64_t zeroed = 0;
  for (std::uint64_t page : z.page_index) {
    if (page >= mem.pages) return fail("ZERO_PAGES: page {} is past the end of the slot", page);
    if (auto ok = check_page_stream(page, stream, streams); !ok) return std::unexpected(ok.error());
    // Only a page this side wrote can hold anything: fresh memory is zero
    // and is not touched.
    auto& word = written[page / 64];
    const std::uint64_t bit = std::uint64_t{1} << (page % 64);
    if (word & bit) {
      std::memset(mem.host + page * kPageSize, 0, kPageSize);
      word &= ~bit;
      ++zeroed;
    }
  }
  return zeroed;
}

}  // namespace ferry::migration
