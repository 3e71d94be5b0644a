#pragma once
// One connection of a migration as the engine uses it: the io_uring Sender
// that owns the socket, the FrameSender that numbers frames on it, and the
// FrameSource that reads frames back from the same socket. Source streams,
// the destination's streams and replies, and resolvers are all this.
#include <chrono>
#include <memory>
#include <string>

#include "userspace/base/error.hh"
#include "userspace/migration/wire.hh"
#include "userspace/transport/connection.hh"
#include "userspace/transport/receiver.hh"
#include "userspace/transport/sender.hh"

namespace ferry::migration {

class MigrationStream {
 public:
  struct Options {
    std::string name = "stream";  // prefixes errors: "stream 1: send: ..."
    std::string receiver_name;    // the reading side's, when it differs (empty: name)
    transport::ZeroCopy zero_copy = transport::ZeroCopy::kOff;  // replies are small frames
    transport::RateLimiter* limiter = nullptr;
    // Reading: no byte for this long is an error (0: wait forever).
    std::chrono::milliseconds read_timeout{0};
  };
  static Result<std::unique_ptr<MigrationStream>> open(transport::Connection c, Options o);
  MigrationStream(const MigrationStream&) = delete;
  MigrationStream& operator=(const MigrationStream&) = delete;

  FrameSender& out() { return *out_; }
  FrameSource& in() { return *in_; }
  transport::Sender& sender() { return *sender_; }
  int fd() const { return sender_->fd(); }

  // One frame, sent and flushed: for replies and control frames.
  template <class T>
  Status send_now(FrameType type, const T& message) {
    if (auto ok = out_->send(type, message); !ok) return ok;
    return sender_->flush();
  }
  Status flush() { return sender_->flush(); }
  // Fails both directions now: a blocked reader on either side returns.
  void abort(const std::string& why) { sender_->abort(why); }

 private:
  MigrationStream() = default;
  // Destroyed in reverse: the reader and framer before the Sender that owns the socket.
  std::unique_ptr<transport::Sender> sender_;
  std::unique_ptr<FrameSender> out_;
  std::unique_ptr<FrameSource> in_;
};

}  // namespace ferry::migration
