// Snapshot files (layout in snapshot.hh).
//
// Memory layout section v1: u32 version, u32 count, then count x
//   {u32 slot, u64 gpa, u64 size, u64 file_offset, u64 crc}
#include "kvm/snapshot.hh"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "kvm/guest_memory.hh"
#include "userspace/base/bytes.hh"
#include "userspace/base/crc64.hh"

namespace ferry::kvm {
namespace {

using ferry::ByteReader;
using ferry::ByteWriter;

constexpr std::uint64_t kMaxStateImage = 256ull << 20;  // CPU/device state is KiBs per vCPU

Status pwrite_all(int fd, const std::byte* p, std::size_t n, std::uint64_t off, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      const int e = errno;
      return std::unexpected(sys_error(fmt::format("write {} at offset {}", path, off), e));
    }
    p += w;
    n -= static_cast<std::size_t>(w);
    off += static_cast<std::uint64_t>(w);
  }
  return {};
}

Status pread_all(int fd, std::byte* p, std::size_t n, std::uint64_t off, const std::string& path) {
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, n, static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      const int e = errno;
      return std::unexpected(sys_error(fmt::format("read {} at offset {}", path, off), e));
    }
    if (r == 0) return fail("read {}: unexpected end of file at offset {} ({} bytes missing)", path, off, n);
    p += r;
    n -= static_cast<std::size_t>(r);
    off += static_cast<std::uint64_t>(r);
  }
  return {};
}

std::uint64_t align_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }

}  // namespace

void crc_page(Crc64& crc, std::uint64_t index, const std::byte* page) {
  std::byte idx[8];
  for (int i = 0; i < 8; ++i) idx[i] = std::byte(index >> (8 * i));
  crc.update(idx);
  crc.update({page, kPageSize});
}

std::uint64_t memory_crc(const GuestRegion& region) {
  Crc64 crc;
  for_each_data_extent(region.memfd(), 0, region.size(), [&](std::uint64_t b, std::uint64_t e) {
    for (std::uint64_t p = b / kPageSize; p < align_up(e, kPageSize) / kPageSize; ++p)
      if (!page_is_zero(region.host() + p * kPageSize)) crc_page(crc, p, region.host() + p * kPageSize);
  });
  return crc.value();
}

std::vector<std::byte> encode_memory_layout(std::span<const SnapshotRegion> regions) {
  ByteWriter w;
  w.put_u32(kMemoryLayoutVersion);
  w.put_u32(static_cast<std::uint32_t>(regions.size()));
  for (const auto& r : regions) {
    w.put_u32(r.slot);
    w.put_u64(r.gpa);
    w.put_u64(r.size);
    w.put_u64(r.file_offset);
    w.put_u64(r.crc);
  }
  return std::move(w).take();
}

Result<std::vector<SnapshotRegion>> decode_memory_layout(std::span<const std::byte> bytes) {
  ByteReader r(bytes);
  std::uint32_t version = 0, count = 0;
  if (auto ok = r.get(version, count); !ok) return std::unexpected(ok.error().context("memory layout"));
  if (version != kMemoryLayoutVersion)
    return fail("memory layout: version {} is not supported (this build reads {})", version, kMemoryLayoutVersion);
  if (count == 0) return fail("memory layout: no memory regions");
  if (count > kMaxSnapshotRegions) return fail("memory layout: {} regions (at most {})", count, kMaxSnapshotRegions);
  std::vector<SnapshotRegion> out(count);
  for (std::uint32_t i = 0; i < count; ++i) {
    auto& x = out[i];
    if (auto ok = r.get(x.slot, x.gpa, x.size, x.file_offset, x.crc); !ok)
      return std::unexpected(ok.error().context(fmt::format("memory layout: region {}", i)));
    if (x.size == 0 || x.size % kPageSize || x.gpa % kPageSize || x.file_offset % kPageSize)
      return fail("memory layout: region {} (gpa {:#x}, size {:#x}, file offset {:#x}) is not page-aligned", i, x.gpa,
                  x.size, x.file_offset);
    if (x.gpa + x.size < x.gpa || x.file_offset + x.size < x.file_offset)
      return fail("memory layout: region {} wraps around", i);
  }
  if (auto ok = r.expect_end(); !ok) return std::unexpected(ok.error().context("memory layout"));
  for (std::uint32_t i = 0; i < count; ++i)
    for (std::uint32_t j = i + 1; j < count; ++j) {
      const auto& a = out[i];
      const auto& b = out[j];
      if (a.slot == b.slot) return fail("memory layout: regions {} and {} both use slot {}", i, j, a.slot);
      if (a.gpa < b.gpa + b.size && b.gpa < a.gpa + a.size)
        return fail("memory layout: regions {} and {} overlap in guest memory", i, j);
      if (a.file_offset < b.file_offset + b.size && b.file_offset < a.file_offset + a.size)
        return fail("memory layout: regions {} and {} overlap in the file", i, j);
    }
  return out;
}

Result<SnapshotWriteFigures> write_snapshot(const std::string& path, state::StateWriter sections,
                                            std::span<const GuestRegion* const> regions) {
  SnapshotWriteFigures f;
  // Offsets first: the layout section's size depends only on the region
  // count, so the image size (hence every file offset) is known before the
  // checksums are. Memory is written in one pass, the image last, at 0.
  std::vector<SnapshotRegion> layout;
  for (const auto* g : regions) {
    layout.push_back({g->slot(), g->gpa(), g->size(), 0, 0});
    f.pages += g->pages();
  }
  auto probe = sections;
  probe.add(state::SectionType::kMemoryLayout, 0, kMemoryLayoutVersion, encode_memory_layout(layout));
  std::uint64_t off = align_up(probe.finish().size(), kPageSize);
  for (auto& r : layout) {
    r.file_offset = off;
    off += r.size;
  }
  // Never write a file the reader would refuse (no regions, a shared slot,
  // overlapping guest ranges): check the layout with the reader's own rules.
  if (auto ok = decode_memory_layout(encode_memory_layout(layout)); !ok)
    return std::unexpected(std::move(ok.error()).context(fmt::format("snapshot {}", path)));
  f.file_bytes = off;

  const std::string tmp = path + ".partial";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("create {}", tmp), e));
  }
  auto cleanup = [&](Error e) {
    ::unlink(tmp.c_str());
    return std::unexpected(std::move(e).context(fmt::format("snapshot {}", path)));
  };
  // Non-zero pages, coalesced into runs; zero pages and never-touched
  // memory (memfd holes, not even read) stay holes in the file.
  for (std::size_t i = 0; i < regions.size(); ++i) {
    const auto* g = regions[i];
    Crc64 crc;
    Status status;
    for_each_data_extent(g->memfd(), 0, g->size(), [&](std::uint64_t b, std::uint64_t e) {
      std::uint64_t p = b / kPageSize;
      const std::uint64_t last = align_up(e, kPageSize) / kPageSize;
      while (status && p < last) {
        if (page_is_zero(g->host() + p * kPageSize)) {
          ++p;
          continue;
        }
        std::uint64_t run = p;
        while (run < last && run - p < 256 && !page_is_zero(g->host() + run * kPageSize)) {
          crc_page(crc, run, g->host() + run * kPageSize);
          ++run;
        }
        status = pwrite_all(fd.get(), g->host() + p * kPageSize, (run - p) * kPageSize,
                            layout[i].file_offset + p * kPageSize, tmp);
        f.data_pages += run - p;
        p = run;
      }
    });
    if (!status) return cleanup(status.error());
    layout[i].crc = crc.value();
  }
  sections.add(state::SectionType::kMemoryLayout, 0, kMemoryLayoutVersion, encode_memory_layout(layout));
  const auto image = sections.finish();
  f.state_bytes = image.size();
  if (auto ok = pwrite_all(fd.get(), image.data(), image.size(), 0, tmp); !ok) return cleanup(ok.error());
  if (::ftruncate(fd.get(), static_cast<off_t>(off)) < 0) return cleanup(sys_error("ftruncate"));
  if (::fsync(fd.get()) < 0) return cleanup(sys_error("fsync"));
  if (::rename(tmp.c_str(), path.c_str()) < 0) {
    const int e = errno;
    return cleanup(sys_error(fmt::format("rename to {}", path), e));
  }
  return f;
}

Result<Snapshot> Snapshot::open(const std::string& path) {
  Snapshot s;
  s.path_ = path;
  s.fd_ = UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!s.fd_) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("open snapshot {}", path), e));
  }
  struct stat st {};
  if (::fstat(s.fd_.get(), &st) < 0) return fail_sys("fstat");
  s.file_size_ = static_cast<std::uint64_t>(st.st_size);
  auto ctx = [&](Error e) { return std::unexpected(std::move(e).context(fmt::format("snapshot {}", path))); };
  // The header says how long the image is; read exactly that, then let the
  // state parser validate everything (magic, version, CRC).
  std::vector<std::byte> image(state::kHeaderSize);
  if (s.file_size_ < state::kHeaderSize)
    return ctx(Error(fmt::format("file is {} bytes, shorter than a state header ({})", s.file_size_, state::kHeaderSize)));
  if (auto ok = pread_all(s.fd_.get(), image.data(), image.size(), 0, path); !ok) return ctx(ok.error());
  std::uint64_t body = 0;
  for (int i = 0; i < 8; ++i) body |= std::to_integer<std::uint64_t>(image[20 + i]) << (8 * i);
  if (body > kMaxStateImage) {
    // Let the parser name the real problem (bad magic is likelier than a
    // 256 MiB state); it refuses oversized input without reading it.
    auto parsed = state::parse_state(image, kMaxStateImage);
    return ctx(parsed ? Error(fmt::format("state image of {} bytes exceeds {}", body, kMaxStateImage)) : parsed.error());
  }
  const std::uint64_t total = state::kHeaderSize + body + state::kTrailerSize;
  image.resize(std::min<std::uint64_t>(total, s.file_size_));
  if (auto ok = pread_all(s.fd_.get(), image.data() + state::kHeaderSize, image.size() - state::kHeaderSize,
                          state::kHeaderSize, path);
      !ok)
    return ctx(ok.error());
  auto parsed = state::parse_state(image, kMaxStateImage);
  if (!parsed) return ctx(parsed.error());
  s.image_ = std::move(*parsed);
  const auto* sec = s.image_.find(state::SectionType::kMemoryLayout, 0);
  if (!sec) return ctx(Error("no memory layout section: not a snapshot (a bare state image?)"));
  auto layout = decode_memory_layout(sec->payload);
  if (!layout) return ctx(layout.error());
  for (const auto& r : *layout) {
    if (r.file_offset < total)
      return ctx(Error(fmt::format("memory of slot {} at file offset {:#x} overlaps the state image", r.slot, r.file_offset)));
    if (r.file_offset + r.size > s.file_size_)
      return ctx(Error(fmt::format("file is truncated: memory of slot {} needs bytes up to {:#x}, the file has {:#x}",
                                   r.slot, r.file_offset + r.size, s.file_size_)));
  }
  s.regions_ = std::move(*layout);
  return s;
}

Result<std::uint64_t> Snapshot::load_region(const SnapshotRegion& r, GuestRegion& into) const {
  if (into.gpa() != r.gpa || into.size() != r.size)
    return fail("snapshot {}: region slot {} is gpa {:#x} size {:#x}, the target is gpa {:#x} size {:#x}", path_,
                r.slot, r.gpa, r.size, into.gpa(), into.size());
  // Only the file's data extents are read and checked: holes are zero
  // pages, which the fresh region already reads as (without allocating).
  std::uint64_t read = 0;
  Crc64 crc;
  Status status;
  for_each_data_extent(fd_.get(), r.file_offset, r.file_offset + r.size, [&](std::uint64_t b, std::uint64_t e) {
    if (!status) return;
    // Extents are page-aligned on every filesystem we know; widen to pages
    // so a checksum page is never split.
    b = b / kPageSize * kPageSize;
    e = std::min(align_up(e, kPageSize), r.file_offset + r.size);
    status = pread_all(fd_.get(), into.host() + (b - r.file_offset), e - b, b, path_);
    if (!status) return;
    read += e - b;
    for (std::uint64_t p = (b - r.file_offset) / kPageSize; p < (e - r.file_offset) / kPageSize; ++p)
      if (!page_is_zero(into.host() + p * kPageSize)) crc_page(crc, p, into.host() + p * kPageSize);
  });
  if (!status) return std::unexpected(status.error());
  if (crc.value() != r.crc)
    return fail("snapshot {}: memory of slot {} is corrupt (CRC-64 {:#018x}, the layout records {:#018x})", path_,
                r.slot, crc.value(), r.crc);
  return read;
}

}  // namespace ferry::kvm
