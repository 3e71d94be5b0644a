#pragma once
// Explicit little-endian encoding for everything Ferry persists or sends.
// State is never a memcpy of a host struct: padding, alignment and
// endianness of host structs are compiler details, and the bytes on disk
// must not change when a struct or a compiler does.
//
// ByteWriter appends; ByteReader consumes and fails (never crashes) on short
// input, naming the offset, so per-component state decoders can wrap its
// errors with their own context.
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "userspace/base/error.hh"

namespace ferry {

// The field types the wire format knows. bool, enums and signed types are
// excluded on purpose: callers convert explicitly and validate on decode.
template <class T>
concept WireInt = std::same_as<T, std::uint8_t> || std::same_as<T, std::uint16_t> ||
                  std::same_as<T, std::uint32_t> || std::same_as<T, std::uint64_t>;

class ByteWriter {
 public:
  void put_u8(std::uint8_t v) { put_le(v); }
  void put_u16(std::uint16_t v) { put_le(v); }
  void put_u32(std::uint32_t v) { put_le(v); }
  void put_u64(std::uint64_t v) { put_le(v); }
  void put_bytes(std::span<const std::byte> bytes);
  void put_zeros(std::size_t n);

  std::size_t size() const { return out_.size(); }
  const std::vector<std::byte>& bytes() const& { return out_; }
  std::vector<std::byte> take() && { return std::move(out_); }

 private:
  template <WireInt T>
  void put_le(T v) {
    for (std::size_t i = 0; i < sizeof(T); ++i) out_.push_back(std::byte(v >> (8 * i)));
  }
  std::vector<std::byte> out_;
};

class ByteReader {
 public:
  // base_offset is added to offsets in messages, so a reader over a slice
  // (one section's payload) reports positions in the enclosing file.
  explicit ByteReader(std::span<const std::byte> bytes, std::uint64_t base_offset = 0)
      : in_(bytes), base_(base_offset) {}

  Result<std::uint8_t> get_u8() { return get_one<std::uint8_t>(); }
  Result<std::uint16_t> get_u16() { return get_one<std::uint16_t>(); }
  Result<std::uint32_t> get_u32() { return get_one<std::uint32_t>(); }
  Result<std::uint64_t> get_u64() { return get_one<std::uint64_t>(); }
  // The span aliases the input: valid only as long as the input is.
  Result<std::span<const std::byte>> get_bytes(std::size_t n);

  // Reads a fixed record of several fields at once: either all of them are
  // present and read, or nothing is consumed and the error names the record.
  template <WireInt... T>
  Status get(T&... fields) {
    constexpr std::size_t need = (sizeof(T) + ...);
    if (auto s = require(need); !s) return s;
    (load(fields), ...);
    return {};
  }

  // Fails if any input is left: a decoder that ignores trailing bytes would
  // silently accept state written by a newer, larger layout.
  Status expect_end() const;

  std::uint64_t offset() const { return base_ + pos_; }  // absolute, for messages
  std::size_t remaining() const { return in_.size() - pos_; }

 private:
  Status require(std::size_t n) const;
  template <WireInt T>
  void load(T& v) {
    v = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(std::to_integer<T>(in_[pos_ + i]) << (8 * i));
    pos_ += sizeof(T);
  }
  template <WireInt T>
  Result<T> get_one() {
    T v{};
    if (auto s = get(v); !s) return std::unexpected(s.error());
    return v;
  }

  std::span<const std::byte> in_;
  std::uint64_t base_ = 0;
  std::size_t pos_ = 0;
};

}  // namespace ferry
