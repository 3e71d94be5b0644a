#pragma once
// Snapshot files: a VM's state image followed by its memory.
//
//   offset 0       a state image (kvm/state/format.hh): every CPU/device
//                  section plus a kMemoryLayout section that says where each
//                  memory region's bytes are in this file and their CRC-64
//   page-aligned   each region's bytes, raw, at its file_offset
//
// Zero pages are not written: the file is sparse (ftruncate leaves holes).
// Neither side touches memory the guest never touched: the writer scans
// only the memfd's data extents, the loader only the file's (SEEK_DATA /
// SEEK_HOLE); reading a hole through the mapping would allocate it. The
// memory checksum is CRC-64 over (u64 page index, page) of each non-zero
// page in order, so zero pages need not be read to verify it.
//
// The file is written to PATH.partial, fsync'ed and renamed over PATH: a
// crash or full disk never leaves a truncated file under the final name.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "userspace/base/error.hh"
#include "userspace/base/unique_fd.hh"
#include "userspace/base/crc64.hh"
#include "kvm/state/format.hh"

namespace ferry::kvm {

class GuestRegion;

inline constexpr std::uint32_t kMemoryLayoutVersion = 1;
inline constexpr std::uint32_t kMaxSnapshotRegions = 64;

struct SnapshotRegion {
  std::uint32_t slot = 0;
  std::uint64_t gpa = 0;
  std::uint64_t size = 0;
  std::uint64_t file_offset = 0;
  std::uint64_t crc = 0;  // CRC-64/XZ over (index, bytes) of each non-zero page
  friend bool operator==(const SnapshotRegion&, const SnapshotRegion&) = default;
};

// The memory checksum: CRC-64/XZ over (u64 little-endian page index, page
// bytes) of every non-zero page in order. Zero pages do not contribute, so
// neither side has to read them, and a page moved to another index changes
// the sum. crc_page adds one page; memory_crc is a whole region's (read
// through its data extents only), as snapshots record and `migrate
// --verify` compares.
void crc_page(Crc64& crc, std::uint64_t index, const std::byte* page);
std::uint64_t memory_crc(const GuestRegion& region);

std::vector<std::byte> encode_memory_layout(std::span<const SnapshotRegion> regions);
// Rejects overlapping guest ranges or file ranges, duplicate slots, sizes or
// offsets that are not page multiples, and more than kMaxSnapshotRegions.
Result<std::vector<SnapshotRegion>> decode_memory_layout(std::span<const std::byte> bytes);

struct SnapshotWriteFigures {
  std::uint64_t file_bytes = 0;   // apparent size
  std::uint64_t state_bytes = 0;  // the state image
  std::uint64_t pages = 0;        // guest pages in all regions
  std::uint64_t data_pages = 0;   // written (non-zero) pages
};

// `sections` holds everything but the memory layout, which this adds. The
// vCPUs must be paused: memory is read twice (checksum, then write).
Result<SnapshotWriteFigures> write_snapshot(const std::string& path, state::StateWriter sections,
                                            std::span<const GuestRegion* const> regions);

class Snapshot {
 public:
  // Reads and validates the state image and the memory layout (regions lie
  // inside the file). Memory is read by load_region.
  static Result<Snapshot> open(const std::string& path);

  const state::StateImage& image() const { return image_; }
  const std::vector<SnapshotRegion>& regions() const { return regions_; }
  const std::string& path() const { return path_; }

  // Fills `into` (created with the region's slot, gpa and size, zeroed) from
  // the file and verifies the CRC. Returns the bytes actually read.
  Result<std::uint64_t> load_region(const SnapshotRegion& r, GuestRegion& into) const;

 private:
  Snapshot() = default;
  std::string path_;
  UniqueFd fd_;
  std::uint64_t file_size_ = 0;
  state::StateImage image_;
  std::vector<SnapshotRegion> regions_;
};

}  // namespace ferry::kvm
