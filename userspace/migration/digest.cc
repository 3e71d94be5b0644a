#include "userspace/migration/digest.hh"

#include <algorithm>
#include <chrono>
#include <thread>

#include "userspace/base/crc64.hh"
#include "userspace/migration/payloads.hh"

namespace ferry::migration {
namespace {

constexpr std::uint64_t kPage = 4096;

std::uint64_t fold(std::span<const std::uint64_t> entries) {
  // Little-endian bytes of each entry: x86's in-memory layout, stated so the
  // digest means the same on every host.
  static_assert(std::endian::native == std::endian::little);
  return crc64(std::as_bytes(entries));
}

struct Extent {
  std::uint64_t first, end;  // pages
};

std::vector<Extent> extents(const kvm::GuestRegion& region) {
  std::vector<Extent> out;
  kvm::for_each_data_extent(region.memfd(), 0, region.size(), [&](std::uint64_t b, std::uint64_t e) {
    out.push_back({b / kPage, std::min(region.pages(), (e + kPage - 1) / kPage)});
  });
  return out;
}

void fill(const kvm::GuestRegion& region, const std::vector<Extent>& ext, std::vector<std::uint64_t>& entries,
          std::uint64_t from, std::uint64_t to) {
  for (const auto& x : ext)
    for (std::uint64_t p = std::max(x.first, from); p < std::min(x.end, to); ++p) {
      const std::byte* page = region.host() + p * kPage;
      entries[p] = kvm::page_is_zero(page) ? 0 : page_checksum(p, {page, kPage});
    }
}

}  // namespace

std::uint64_t PageDigests::digest() const { return fold(entries_); }

std::uint64_t memory_digest(const kvm::GuestRegion& region, unsigned threads) {
  std::vector<std::uint64_t> entries(region.pages(), 0);
  const auto ext = extents(region);
  threads = std::max(1u, threads);
  // Page ranges of equal size; holes cost nothing, so data may be uneven,
  // but guest memory is written all over and this keeps it simple.
  const std::uint64_t per = (region.pages() + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < threads; ++t)
    pool.emplace_back([&, t] { fill(region, ext, entries, t * per, std::min(region.pages(), (t + 1) * per)); });
  fill(region, ext, entries, 0, std::min(region.pages(), per));
  for (auto& th : pool) th.join();
  return fold(entries);
}

std::uint64_t data_bytes(const kvm::GuestRegion& region) {
  std::uint64_t n = 0;
  for (const auto& x : extents(region)) n += (x.end - x.first) * kPage;
  return n;
}

double checksum_rate(const kvm::GuestRegion& region, std::uint64_t max_bytes) {
  std::uint64_t done = 0, sink = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& x : extents(region)) {
    for (std::uint64_t p = x.first; p < x.end && done < max_bytes; ++p, done += kPage) {
      const std::byte* page = region.host() + p * kPage;
      sink ^= kvm::page_is_zero(page) ? 0 : page_checksum(p, {page, kPage});
    }
    if (done >= max_bytes) break;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  [[maybe_unused]] volatile std::uint64_t keep = sink;
  return done == 0 || secs <= 0 ? 0 : static_cast<double>(done) / secs;
}

SourceDigest::SourceDigest(const kvm::GuestRegion& region, unsigned threads)
    : f_(std::async(std::launch::async, [&region, threads] { return memory_digest(region, threads); })) {}

}  // namespace ferry::migration
