// Snapshot files on disk (kvm/snapshot.hh) without /dev/kvm: memfd-backed
// guest regions are written with write_snapshot and read back with
// Snapshot::open + load_region. Covers the exact round trip, the figures,
// sparseness, the atomic PATH.partial rename, and a specific error for each
// kind of damage (memory, state image, truncation, magic, not a snapshot).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tests/temp_dir.hh"
#include "kvm/guest_memory.hh"
#include "kvm/machine.hh"
#include "kvm/snapshot.hh"
#include "userspace/base/crc64.hh"
#include "kvm/state/format.hh"

namespace ferry::kvm {
namespace {

namespace fs = std::filesystem;
using state::SectionType;
using Bytes = std::vector<std::byte>;

constexpr std::uint64_t kMiB = 1ull << 20;

::testing::AssertionResult Mentions(const std::string& text, std::string_view part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not mention '" << part << "'";
}

template <class T>
std::string error_of(const Result<T>& r) {
  return r ? std::string("(succeeded)") : r.error().what();
}

using test::TempDir;

Bytes bytes_of(std::string_view s) {
  auto b = std::as_bytes(std::span(s.data(), s.size()));
  return {b.begin(), b.end()};
}

// A page whose bytes depend on seed and position (never all zero).
void fill_page(GuestRegion& g, std::uint64_t page, std::uint8_t seed) {
  std::byte* p = g.host() + page * kPageSize;
  for (std::uint64_t i = 0; i < kPageSize; ++i) p[i] = std::byte(static_cast<std::uint8_t>(seed + i * 7 + (i >> 8)) | 1);
}

void write_file(const std::string& path, std::span<const std::byte> bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

// Overwrites bytes in place (the file keeps its size).
void patch_file(const std::string& path, std::uint64_t offset, std::span<const std::byte> bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset)), static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

void flip_byte(const std::string& path, std::uint64_t offset) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path;
  std::byte b{};
  ASSERT_EQ(::pread(fd, &b, 1, static_cast<off_t>(offset)), 1);
  b ^= std::byte{0x40};
  ASSERT_EQ(::pwrite(fd, &b, 1, static_cast<off_t>(offset)), 1);
  ::close(fd);
}

struct stat stat_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st;
}

const VmConfigState kConfig{GuestKind::kTestGuest, 2, true, true, 2'500'000};
const Bytes kSerialPayload = bytes_of("serial: 16550A state, opaque here");

state::StateWriter sample_sections() {
  state::StateWriter w;
  w.add(SectionType::kVmConfig, 0, kVmConfigVersion, encode_vm_config(kConfig));
  w.add(SectionType::kSerial, 0, 1, kSerialPayload);
  return w;
}

class SnapshotFile : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path.empty()) << "mkdtemp failed";
    path_ = dir_.path + "/vm.snap";
    auto a = GuestRegion::create(0, 0, kMiB, "low");
    auto b = GuestRegion::create(1, 4ull << 30, 512 * 1024, "high");
    ASSERT_TRUE(a && b);
    low_.emplace(std::move(*a));
    high_.emplace(std::move(*b));
    // Slot 0: a 10-page run, a lone page, a page whose only non-zero byte
    // is inside the first word and one whose only non-zero byte is the
    // last (both edges of the zero-page test). Slot 1: lone pages at both
    // ends of a gap and a run of 4.
    for (std::uint64_t p = 0; p < 10; ++p) fill_page(*low_, p, static_cast<std::uint8_t>(p));
    fill_page(*low_, 100, 0x33);
    low_->host()[200 * kPageSize + 3] = std::byte{0x01};
    low_->host()[256 * kPageSize - 1] = std::byte{0x5a};
    fill_page(*high_, 5, 0x77);
    for (std::uint64_t p = 60; p < 64; ++p) fill_page(*high_, p, static_cast<std::uint8_t>(0x90 + p));
    fill_page(*high_, 127, 0xee);
  }

  static constexpr std::uint64_t kDataPagesLow = 13;
  static constexpr std::uint64_t kDataPagesHigh = 6;

  Result<SnapshotWriteFigures> write() {
    const std::array<const GuestRegion*, 2> regions{&*low_, &*high_};
    return write_snapshot(path_, sample_sections(), regions);
  }

  // Writes the sample snapshot; fails the test on error.
  void write_ok() {
    auto f = write();
    ASSERT_TRUE(f) << f.error().what();
  }

  TempDir dir_;
  std::string path_;
  std::optional<GuestRegion> low_, high_;
};

// The layout's memory checksum, computed independently: CRC-64 over
// (u64 little-endian page index, page) of every non-zero page, in order.
std::uint64_t memory_checksum(const GuestRegion& g) {
  Crc64 crc;
  static const std::byte zero[kPageSize] = {};
  for (std::uint64_t p = 0; p < g.pages(); ++p) {
    const std::byte* page = g.host() + p * kPageSize;
    if (std::memcmp(page, zero, kPageSize) == 0) continue;
    std::byte idx[8];
    for (int b = 0; b < 8; ++b) idx[b] = std::byte(p >> (8 * b));
    crc.update(idx);
    crc.update({page, kPageSize});
  }
  return crc.value();
}

TEST_F(SnapshotFile, OpenAndLoadReproduceEveryByte) {
  write_ok();
  auto snap = Snapshot::open(path_);
  ASSERT_TRUE(snap) << snap.error().what();
  EXPECT_EQ(snap->path(), path_);
  ASSERT_EQ(snap->regions().size(), 2u);
  const GuestRegion* sources[2] = {&*low_, &*high_};
  const std::uint64_t data_pages[2] = {kDataPagesLow, kDataPagesHigh};
  for (std::size_t i = 0; i < 2; ++i) {
    const auto& r = snap->regions()[i];
    const auto& src = *sources[i];
    EXPECT_EQ(r.slot, src.slot());
    EXPECT_EQ(r.gpa, src.gpa());
    EXPECT_EQ(r.size, src.size());
    EXPECT_EQ(r.crc, memory_checksum(src));
    auto into = GuestRegion::create(r.slot, r.gpa, r.size, "restored");
    ASSERT_TRUE(into) << into.error().what();
    auto read = snap->load_region(r, *into);
    ASSERT_TRUE(read) << read.error().what();
    EXPECT_EQ(std::memcmp(into->host(), src.host(), src.size()), 0) << "slot " << r.slot;
    // Only the data extents are read; holes stay the fresh region's zeros.
    EXPECT_GE(*read, data_pages[i] * kPageSize) << "slot " << r.slot;
    EXPECT_LT(*read, r.size) << "slot " << r.slot << ": holes were read";
  }
}

TEST_F(SnapshotFile, ImageHasTheGivenSectionsPlusTheMemoryLayout) {
  write_ok();
  auto snap = Snapshot::open(path_);
  ASSERT_TRUE(snap) << snap.error().what();
  const auto& img = snap->image();
  ASSERT_EQ(img.sections.size(), 3u);
  const auto* cfg = img.find(SectionType::kVmConfig, 0);
  ASSERT_NE(cfg, nullptr);
  EXPECT_EQ(cfg->version, kVmConfigVersion);
  auto decoded = decode_vm_config(cfg->payload);
  ASSERT_TRUE(decoded) << decoded.error().what();
  EXPECT_EQ(*decoded, kConfig);
  const auto* serial = img.find(SectionType::kSerial, 0);
  ASSERT_NE(serial, nullptr);
  EXPECT_EQ(serial->payload, kSerialPayload);
  const auto* layout = img.find(SectionType::kMemoryLayout, 0);
  ASSERT_NE(layout, nullptr);
  EXPECT_EQ(layout->version, kMemoryLayoutVersion);
  auto regions = decode_memory_layout(layout->payload);
  ASSERT_TRUE(regions) << regions.error().what();
  EXPECT_EQ(*regions, snap->regions());
}

TEST_F(SnapshotFile, FiguresDescribeTheFile) {
  auto f = write();
  ASSERT_TRUE(f) << f.error().what();
  EXPECT_EQ(f->pages, (kMiB + 512 * 1024) / kPageSize);
  EXPECT_EQ(f->data_pages, kDataPagesLow + kDataPagesHigh);
  const auto st = stat_of(path_);
  EXPECT_EQ(f->file_bytes, static_cast<std::uint64_t>(st.st_size));

  auto snap = Snapshot::open(path_);
  ASSERT_TRUE(snap) << snap.error().what();
  const auto& r = snap->regions();
  // The image, then memory from the next page boundary, regions back to back.
  // state_bytes: the caller's sections plus the layout section, sealed.
  state::StateWriter expected = sample_sections();
  expected.add(SectionType::kMemoryLayout, 0, kMemoryLayoutVersion, encode_memory_layout(r));
  EXPECT_EQ(f->state_bytes, expected.finish().size());
  EXPECT_EQ(r[0].file_offset, (f->state_bytes + kPageSize - 1) / kPageSize * kPageSize);
  EXPECT_EQ(r[1].file_offset, r[0].file_offset + r[0].size);
  EXPECT_EQ(f->file_bytes, r[1].file_offset + r[1].size);
}

TEST_F(SnapshotFile, ZeroPagesAreHoles) {
  write_ok();
  const auto st = stat_of(path_);
  const auto allocated = static_cast<std::uint64_t>(st.st_blocks) * 512;
  // 19 data pages and one page of state image out of ~385 pages.
  EXPECT_LT(allocated, static_cast<std::uint64_t>(st.st_size) / 4)
      << "allocated " << allocated << " of " << st.st_size << " bytes";
  EXPECT_GE(allocated, (kDataPagesLow + kDataPagesHigh) * kPageSize);
}

TEST_F(SnapshotFile, LeavesNoPartialFileAndIsPrivate) {
  write_ok();
  EXPECT_FALSE(fs::exists(path_ + ".partial"));
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir_.path)) names.push_back(e.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"vm.snap"});
  EXPECT_EQ(stat_of(path_).st_mode & 0777, 0600u);
}

TEST_F(SnapshotFile, ReplacesAnExistingSnapshot) {
  write_ok();
  fill_page(*high_, 0, 0x42);
  std::memset(low_->host(), 0, kPageSize);
  write_ok();
  auto snap = Snapshot::open(path_);
  ASSERT_TRUE(snap) << snap.error().what();
  for (std::size_t i = 0; i < 2; ++i) {
    const auto& r = snap->regions()[i];
    auto into = GuestRegion::create(r.slot, r.gpa, r.size, "restored");
    ASSERT_TRUE(into);
    ASSERT_TRUE(snap->load_region(r, *into));
    const GuestRegion& src = i == 0 ? *low_ : *high_;
    EXPECT_EQ(std::memcmp(into->host(), src.host(), src.size()), 0) << "slot " << r.slot;
  }
}

TEST(SnapshotFileRuns, FullyWrittenAndAllZeroRegionsRoundTrip) {
  // 512 non-zero pages: longer than one coalesced write (256 pages).
  TempDir dir;
  ASSERT_FALSE(dir.path.empty());
  const std::string path = dir.path + "/full.snap";
  auto full = GuestRegion::create(3, 0x100000, 2 * kMiB, "full");
  auto zero = GuestRegion::create(4, 0x400000, 64 * kPageSize, "zero");
  ASSERT_TRUE(full && zero);
  for (std::uint64_t p = 0; p < full->pages(); ++p) fill_page(*full, p, static_cast<std::uint8_t>(p * 13));
  const std::array<const GuestRegion*, 2> regions{&*full, &*zero};
  auto f = write_snapshot(path, sample_sections(), regions);
  ASSERT_TRUE(f) << f.error().what();
  EXPECT_EQ(f->pages, 512u + 64u);
  EXPECT_EQ(f->data_pages, 512u);
  auto snap = Snapshot::open(path);
  ASSERT_TRUE(snap) << snap.error().what();

  auto into = GuestRegion::create(3, 0x100000, 2 * kMiB, "restored");
  ASSERT_TRUE(into);
  auto read = snap->load_region(snap->regions()[0], *into);
  ASSERT_TRUE(read) << read.error().what();
  EXPECT_EQ(*read, 2 * kMiB);
  EXPECT_EQ(std::memcmp(into->host(), full->host(), full->size()), 0);

  auto into_zero = GuestRegion::create(4, 0x400000, 64 * kPageSize, "restored-zero");
  ASSERT_TRUE(into_zero);
  auto read_zero = snap->load_region(snap->regions()[1], *into_zero);
  ASSERT_TRUE(read_zero) << read_zero.error().what();
  EXPECT_EQ(*read_zero, 0u) << "an all-zero region is one hole";
}

TEST_F(SnapshotFile, LoadRegionRefusesATargetOfAnotherShape) {
  write_ok();
  auto snap = Snapshot::open(path_);
  ASSERT_TRUE(snap) << snap.error().what();
  const auto& r = snap->regions()[1];
  auto smaller = GuestRegion::create(r.slot, r.gpa, r.size / 2, "small");
  ASSERT_TRUE(smaller);
  auto e = snap->load_region(r, *smaller);
  ASSERT_FALSE(e);
  EXPECT_TRUE(Mentions(e.error().what(), "region slot 1 is gpa 0x100000000 size 0x80000, the target is gpa "
                                         "0x100000000 size 0x40000"));
  auto elsewhere = GuestRegion::create(r.slot, r.gpa + r.size, r.size, "moved");
  ASSERT_TRUE(elsewhere);
  EXPECT_TRUE(Mentions(error_of(snap->load_region(r, *elsewhere)), "the target is gpa 0x100080000"));
}

TEST_F(SnapshotFile, CorruptMemoryPageIsReportedForItsSlot) {
  write_ok();
  {
    auto snap = Snapshot::open(path_);
    ASSERT_TRUE(snap) << snap.error().what();
    flip_byte(path_, snap->regions()[1].file_offset + 5 * kPageSize + 17);
  }
  auto snap = Snapshot::open(path_);
  ASSERT_TRUE(snap) << "memory is only checked when loaded: " << snap.error().what();
  auto high = GuestRegion::create(1, 4ull << 30, 512 * 1024, "restored");
  ASSERT_TRUE(high);
  auto e = snap->load_region(snap->regions()[1], *high);
  ASSERT_FALSE(e);
  EXPECT_TRUE(Mentions(e.error().what(), "memory of slot 1 is corrupt"));
  auto low = GuestRegion::create(0, 0, kMiB, "restored");
  ASSERT_TRUE(low);
  EXPECT_TRUE(snap->load_region(snap->regions()[0], *low)) << "slot 0 is intact";
}

TEST_F(SnapshotFile, DataWrittenIntoAHoleIsCorruptionToo) {
  write_ok();
  std::uint64_t offset = 0;
  {
    auto snap = Snapshot::open(path_);
    ASSERT_TRUE(snap) << snap.error().what();
    offset = snap->regions()[0].file_offset + 50 * kPageSize;  // a zero page of slot 0
  }
  patch_file(path_, offset, bytes_of("x"));
  auto snap = Snapshot::open(path_);
  ASSERT_TRUE(snap) << snap.error().what();
  auto low = GuestRegion::create(0, 0, kMiB, "restored");
  ASSERT_TRUE(low);
  EXPECT_TRUE(Mentions(error_of(snap->load_region(snap->regions()[0], *low)), "memory of slot 0 is corrupt"));
}

TEST_F(SnapshotFile, CorruptStateImageFailsTheCrc) {
  write_ok();
  // 28-byte header, 24-byte section header: offset 60 is in the VM config payload.
  flip_byte(path_, 60);
  const auto err = error_of(Snapshot::open(path_));
  EXPECT_TRUE(Mentions(err, "snapshot " + path_ + ": state: CRC mismatch"));
}

TEST_F(SnapshotFile, TruncatedMemoryIsRefused) {
  auto f = write();
  ASSERT_TRUE(f) << f.error().what();
  ASSERT_EQ(::truncate(path_.c_str(), static_cast<off_t>(f->file_bytes - kPageSize)), 0);
  const auto err = error_of(Snapshot::open(path_));
  EXPECT_TRUE(Mentions(err, "file is truncated: memory of slot 1 needs bytes up to"));
}

TEST_F(SnapshotFile, TruncatedStateImageIsRefused) {
  auto f = write();
  ASSERT_TRUE(f) << f.error().what();
  // The image whole, the memory gone.
  ASSERT_EQ(::truncate(path_.c_str(), static_cast<off_t>(f->state_bytes)), 0);
  EXPECT_TRUE(Mentions(error_of(Snapshot::open(path_)), "file is truncated: memory of slot 0"));
  // Cut inside the image's trailer: the state parser names the cut.
  ASSERT_EQ(::truncate(path_.c_str(), static_cast<off_t>(f->state_bytes - 3)), 0);
  EXPECT_TRUE(Mentions(error_of(Snapshot::open(path_)), "state: truncated: trailer needs 8 bytes"));
}

TEST_F(SnapshotFile, BadMagicIsRefused) {
  write_ok();
  patch_file(path_, 0, bytes_of("NOTFERRY"));
  EXPECT_TRUE(Mentions(error_of(Snapshot::open(path_)), "bad magic"));
}

TEST_F(SnapshotFile, BareStateImageIsNotASnapshot) {
  write_file(path_, sample_sections().finish());
  EXPECT_TRUE(Mentions(error_of(Snapshot::open(path_)), "no memory layout section"));
}

TEST_F(SnapshotFile, MemoryOverlappingTheImageIsRefused) {
  // A hand-made image whose layout puts memory at file offset 0.
  const SnapshotRegion r{0, 0, kPageSize, 0, 0};
  state::StateWriter w = sample_sections();
  w.add(SectionType::kMemoryLayout, 0, kMemoryLayoutVersion, encode_memory_layout(std::span(&r, 1)));
  Bytes file = w.finish();
  file.resize(4 * kPageSize);
  write_file(path_, file);
  EXPECT_TRUE(Mentions(error_of(Snapshot::open(path_)), "memory of slot 0 at file offset 0x0 overlaps the state image"));
}

TEST_F(SnapshotFile, FileShorterThanAStateHeaderIsRefused) {
  for (std::size_t n : {0u, 10u, 27u}) {
    Bytes head = sample_sections().finish();
    head.resize(n);
    write_file(path_, head);
    EXPECT_TRUE(Mentions(error_of(Snapshot::open(path_)),
                         "file is " + std::to_string(n) + " bytes, shorter than a state header (28)"));
  }
}

TEST_F(SnapshotFile, MissingFileIsRefused) {
  const auto err = error_of(Snapshot::open(dir_.path + "/absent.snap"));
  EXPECT_TRUE(Mentions(err, "open snapshot " + dir_.path + "/absent.snap"));
  EXPECT_TRUE(Mentions(err, "No such file"));
}

TEST_F(SnapshotFile, WritingIntoAMissingDirectoryFailsAndLeavesNothing) {
  const std::string missing = dir_.path + "/no-such-dir";
  const std::array<const GuestRegion*, 2> regions{&*low_, &*high_};
  auto f = write_snapshot(missing + "/vm.snap", sample_sections(), regions);
  ASSERT_FALSE(f);
  EXPECT_TRUE(Mentions(f.error().what(), "create " + missing + "/vm.snap.partial"));
  EXPECT_FALSE(fs::exists(missing));
  EXPECT_TRUE(fs::is_empty(dir_.path));
}

TEST(SnapshotFileSparse, NeitherSnapshotNorRestoreTouchesUntouchedMemory) {
  // A 256 MiB guest of which 3 pages were ever written: the memfd holds 3
  // pages, and must still hold 3 after the snapshot read it; the restored
  // region must be allocated for those 3 only.
  TempDir tmp("ferry-sparse");
  ASSERT_FALSE(tmp.path.empty());
  const std::string file = tmp.path + "/vm.snap";
  auto g = GuestRegion::create(0, 0, 256ull << 20, "big");
  ASSERT_TRUE(g) << g.error().what();
  for (std::uint64_t p : {0ull, 1000ull, 65535ull}) std::memset(g->host() + p * kPageSize, 0x11, kPageSize);
  auto allocated = [](int fd) {
    struct stat st {};
    EXPECT_EQ(::fstat(fd, &st), 0);
    return static_cast<std::uint64_t>(st.st_blocks) * 512;
  };
  ASSERT_EQ(allocated(g->memfd()), 3 * kPageSize);
  state::StateWriter w;
  const GuestRegion* regions[] = {&*g};
  auto f = write_snapshot(file, w, regions);
  ASSERT_TRUE(f) << f.error().what();
  EXPECT_EQ(f->data_pages, 3u);
  EXPECT_EQ(allocated(g->memfd()), 3 * kPageSize) << "the snapshot allocated guest memory by reading holes";
  auto snap = Snapshot::open(file);
  ASSERT_TRUE(snap) << snap.error().what();
  auto into = GuestRegion::create(0, 0, 256ull << 20, "restored");
  ASSERT_TRUE(into);
  auto read = snap->load_region(snap->regions()[0], *into);
  ASSERT_TRUE(read) << read.error().what();
  EXPECT_LE(allocated(into->memfd()), 3 * kPageSize + (1ull << 20)) << "restore allocated the holes";
  EXPECT_EQ(std::memcmp(into->host() + 1000 * kPageSize, g->host() + 1000 * kPageSize, kPageSize), 0);
}

}  // namespace
}  // namespace ferry::kvm
