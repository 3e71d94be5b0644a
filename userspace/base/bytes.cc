#include "userspace/base/bytes.hh"

namespace ferry {

void ByteWriter::put_bytes(std::span<const std::byte> bytes) {
  out_.insert(out_.end(), bytes.begin(), bytes.end());
}

void ByteWriter::put_zeros(std::size_t n) { out_.resize(out_.size() + n, std::byte{0}); }

Result<std::span<const std::byte>> ByteReader::get_bytes(std::size_t n) {
  if (auto s = require(n); !s) return std::unexpected(s.error());
  auto out = in_.subspan(pos_, n);
  pos_ += n;
  return out;
}

Status ByteReader::require(std::size_t n) const {
  if (n > remaining()) {
    return fail("truncated at offset {}: need {} bytes, {} left", offset(), n, remaining());
  }
  return {};
}

Status ByteReader::expect_end() const {
  if (remaining() != 0) return fail("{} unexpected trailing bytes at offset {}", remaining(), offset());
  return {};
}

}  // namespace ferry
