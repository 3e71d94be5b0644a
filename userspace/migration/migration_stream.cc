// One migration connection: sender, frame writer, frame reader (migration_stream.hh).
#include "userspace/migration/migration_stream.hh"

namespace ferry::migration {

Result<std::unique_ptr<MigrationStream>> MigrationStream::open(transport::Connection c, Options o) {
  std::unique_ptr<MigrationStream> s(new MigrationStream());
  transport::SenderOptions so;
  so.zero_copy = o.zero_copy;
  so.limiter = o.limiter;
  so.name = o.name;
  auto sender = transport::Sender::start(c.release(), so);
  if (!sender) return std::unexpected(std::move(sender.error()));
  s->sender_ = std::move(*sender);
  s->out_ = std::make_unique<FrameSender>(*s->sender_);
  auto r = transport::Receiver::create(s->sender_->fd(), o.receiver_name.empty() ? o.name : o.receiver_name);
  if (!r) return std::unexpected(std::move(r.error()));
  s->in_ = std::make_unique<FrameSource>(std::move(*r), o.read_timeout);
  return s;
}

}  // namespace ferry::migration
