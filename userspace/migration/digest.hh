#pragma once
// The `--verify` memory digest. It is CRC-64 over one 64-bit entry per
// page, in page order: the page's page_checksum() (XXH64 of its bytes seeded
// with its index, what every PAGES descriptor carries) for a non-zero page, 0 for a
// zero page. Defined this way so both sides can afford it inside the
// downtime:
// - the destination never re-reads memory: it keeps the checksum of the last
//   copy of each page it verified on arrival (PageDigests), and folds those
//   8-byte entries at the end (8 MiB per GiB of guest, well under a ms);
// - the source does read its whole memory at the pause (that is the point:
//   it catches a page the dirty tracking missed), but only the memfd's data
//   extents, on several threads, at hash speed, and overlapped with the
//   final round's sending (SourceDigest).
#include <cstdint>
#include <future>
#include <span>
#include <vector>

#include "kvm/guest_memory.hh"

namespace ferry::migration {

// Destination side: the entry of every page, updated as pages land.
class PageDigests {
 public:
  explicit PageDigests(std::uint64_t pages = 0) : entries_(pages, 0) {}
  void set(std::uint64_t page, std::uint64_t checksum) { entries_[page] = checksum; }
  void zero(std::uint64_t page) { entries_[page] = 0; }
  std::uint64_t digest() const;
  std::uint64_t pages() const { return entries_.size(); }

 private:
  std::vector<std::uint64_t> entries_;
};

// Source side: the digest of what memory holds now (the VM paused), on
// `threads` threads. Reads only the memfd's data extents.
std::uint64_t memory_digest(const kvm::GuestRegion& region, unsigned threads);

// Bytes/s one thread checksums, measured on up to `max_bytes` of the region's
// data (for the downtime prediction); 0 when the region holds no data.
double checksum_rate(const kvm::GuestRegion& region, std::uint64_t max_bytes);
// Bytes of the region that may hold data (its data extents).
std::uint64_t data_bytes(const kvm::GuestRegion& region);

// The source's digest started on its own threads right after the pause, so
// that it runs while the final round is sent; get() waits for it.
class SourceDigest {
 public:
  SourceDigest(const kvm::GuestRegion& region, unsigned threads);
  std::uint64_t get() { return f_.get(); }

 private:
  std::future<std::uint64_t> f_;
};

}  // namespace ferry::migration
