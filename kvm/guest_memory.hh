#pragma once
// Guest RAM. Each region is its own memfd so that it can later be shared
// with another process (snapshot, migration receive) without copying, and
// is registered with KVM as one memory slot.
#include <cstdint>
#include <string>

#include "base/error.hh"
#include "base/unique_fd.hh"
#include "kvm/mapping.hh"

namespace ferry::kvm {

inline constexpr std::uint64_t kPageSize = 4096;

class GuestRegion {
 public:
  // size must be a multiple of the page size.
  static Result<GuestRegion> create(std::uint32_t slot, std::uint64_t gpa, std::uint64_t size,
                                    const std::string& name);

  GuestRegion(GuestRegion&&) noexcept = default;
  GuestRegion& operator=(GuestRegion&&) noexcept = default;

  std::uint32_t slot() const { return slot_; }
  std::uint64_t gpa() const { return gpa_; }
  std::uint64_t size() const { return mapping_.size(); }
  std::uint64_t pages() const { return size() / kPageSize; }
  std::byte* host() const { return static_cast<std::byte*>(mapping_.data()); }
  bool contains(std::uint64_t gpa) const { return gpa >= gpa_ && gpa - gpa_ < size(); }
  std::byte* host_at(std::uint64_t gpa) const { return host() + (gpa - gpa_); }
  int memfd() const { return memfd_.get(); }

 private:
  GuestRegion(std::uint32_t slot, std::uint64_t gpa, UniqueFd fd, Mapping m)
      : slot_(slot), gpa_(gpa), memfd_(std::move(fd)), mapping_(std::move(m)) {}
  std::uint32_t slot_ = 0;
  std::uint64_t gpa_ = 0;
  UniqueFd memfd_;
  Mapping mapping_;
};

}  // namespace ferry::kvm
