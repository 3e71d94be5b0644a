#pragma once
// A move-only owner of one mmap()ed range. Guest memory, kvm_run and the
// dirty rings are all shared mappings whose lifetime must end exactly once.
#include <cstddef>
#include <span>
#include <utility>

#include "userspace/base/error.hh"

namespace ferry::kvm {

class Mapping {
 public:
  Mapping() = default;
  ~Mapping() { reset(); }
  Mapping(Mapping&& o) noexcept
      : addr_(std::exchange(o.addr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  Mapping& operator=(Mapping&& o) noexcept {
    if (this != &o) {
      reset();
      addr_ = std::exchange(o.addr_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  // mmap(nullptr, size, prot, flags, fd, offset); `what` names it in errors.
  static Result<Mapping> map(std::size_t size, int prot, int flags, int fd, off_t offset,
                             std::string_view what);

  void* data() const { return addr_; }
  std::size_t size() const { return size_; }
  std::span<std::byte> bytes() const { return {static_cast<std::byte*>(addr_), size_}; }
  template <class T>
  T* as() const { return static_cast<T*>(addr_); }

 private:
  Mapping(void* addr, std::size_t size) : addr_(addr), size_(size) {}
  void reset();
  void* addr_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace ferry::kvm
