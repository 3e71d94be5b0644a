#pragma once
// Frames over the transport: a FrameSender numbers and sends typed frames
// on one stream (PAGES with their data borrowed from guest memory), a
// FrameSource reads them back with every header validated before its
// payload is read, and PAGES data can go straight into guest memory.
#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "userspace/base/error.hh"
#include "userspace/migration/payloads.hh"
#include "userspace/migration/protocol.hh"
#include "userspace/transport/receiver.hh"
#include "userspace/transport/sender.hh"

namespace ferry::migration {

class FrameSender {
 public:
  explicit FrameSender(transport::Sender& s) : s_(s) {}
  Status send(FrameType type, std::span<const std::byte> payload);
  template <class T>
  Status send(FrameType type, const T& message) {
    return send(type, std::span<const std::byte>(encode(message)));
  }
  // Header and descriptors are copied; `data` (page after page, in
  // descriptor order) is sent from where it is.
  Status send_pages(const PagesHeader& header, std::vector<iovec> data);
  transport::Sender& sender() { return s_; }
  // Frame bytes (headers included) handed to the sender so far.
  std::uint64_t bytes() const { return bytes_; }

 private:
  transport::Sender& s_;
  std::uint32_t sequence_ = 0;
  std::uint64_t bytes_ = 0;
};

// Appends one guest page to an iovec list, extending the last range when
// the page follows it in memory (pages in a frame are mostly contiguous).
inline void append_page(std::vector<iovec>& iov, const std::byte* page) {
  if (!iov.empty() && static_cast<const std::byte*>(iov.back().iov_base) + iov.back().iov_len == page)
    iov.back().iov_len += kPageSize;
  else
    iov.push_back({const_cast<std::byte*>(page), kPageSize});
}

class FrameSource {
 public:
  FrameSource(transport::Receiver r, std::chrono::milliseconds idle_timeout)
      : r_(std::move(r)), timeout_(idle_timeout) {}

  // The next header, or nullopt when the peer closed cleanly between frames.
  Result<std::optional<FrameHeader>> next_header();
  // The whole payload of the frame whose header was just read, CRC-checked.
  Result<std::vector<std::byte>> payload(const FrameHeader& h);
  // PAGES: the CRC-covered part, checked and decoded; then page_data().
  Result<PagesHeader> pages_header(const FrameHeader& h);
  Status page_data(std::span<const iovec> into);
  // Convenience for streams that carry no PAGES: header and payload.
  Result<std::optional<Frame>> next_frame();

  std::uint64_t frames() const { return frames_; }
  std::uint64_t bytes() const { return r_.bytes(); }

 private:
  transport::Receiver r_;
  std::chrono::milliseconds timeout_;
  std::uint64_t frames_ = 0;  // headers read
};

}  // namespace ferry::migration
