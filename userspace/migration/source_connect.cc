// The source session's opening: the streams, HELLO both ways, the reply
// reader, and the precheck (source_session.hh).
#include <unistd.h>

#include <random>

#include <spdlog/spdlog.h>

#include "userspace/base/thread_name.hh"
#include "userspace/migration/source_session.hh"

namespace ferry::migration {

Status SourceMigration::Impl::check_peer() {
  if (ctx.cancelled()) return fail("{}", ctx.cancel_reason());
  if (auto p = inbox.problem()) return std::unexpected(*p);
  return {};
}

Result<Frame> SourceMigration::Impl::wait_reply(FrameType type, std::chrono::milliseconds timeout) {
  auto f = inbox.wait(timeout, ctx.cancel_flag());
  if (!f) {
    if (ctx.cancelled()) return std::unexpected(check_peer().error());
    return std::unexpected(f.error());
  }
  if (f->type != type) return std::unexpected(unexpected_frame(*f, frame_type_name(type)));
  return f;
}

Status SourceMigration::Impl::connect() {
  limiter = std::make_unique<transport::RateLimiter>(o.max_bandwidth);
  transport::Dialer* dialer = o.dialer;
  if (!dialer) {
    auto d = transport::dialer_for(o.to, o.security);
    if (!d) return std::unexpected(d.error());
    own_dialer = std::move(*d);
    dialer = own_dialer.get();
  }
  // The policy says in the report when the kernel view was unavailable;
  // the sockets are registered with it once it is loaded (precopy()).
  if (o.policy == PolicyKind::kAdaptive)
    kernel_loading = std::async(std::launch::async, [use = o.use_ebpf] {
      name_this_thread("mig-ebpf-load");
      return KernelView::open(use);
    });
  std::random_device rd;
  const std::uint64_t session = (std::uint64_t{rd()} << 32) ^ rd() ^ static_cast<std::uint64_t>(::getpid());
  ctx.update([&](MigrationStatus& s) { s.session = session; });
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  for (std::uint32_t i = 0; i < o.streams; ++i) {
    auto c = dialer->dial(o.to, o.connect_timeout);
    if (!c) return std::unexpected(std::move(c.error()).context(fmt::format("connect to {}", o.to.str())));
    if (i == 0) {
      session_secret = c->secret();
      ctx.update([&](MigrationStatus& s) {
        s.channel = o.security.encrypted() ? c->security() : "plain TCP (--insecure): not authenticated, not encrypted";
      });
    }
    MigrationStream::Options so;
    so.zero_copy = o.zero_copy;
    so.limiter = limiter.get();
    so.name = fmt::format("stream {}", i);
    auto s = MigrationStream::open(std::move(*c), so);
    if (!s) return std::unexpected(s.error());
    {
      std::lock_guard lock(streams_mu);
      streams.push_back(std::move(*s));
    }
    Hello h;
    h.host = host;
    h.session = session;
    h.stream_index = static_cast<std::uint16_t>(i);
    h.stream_count = static_cast<std::uint16_t>(o.streams);
    if (auto ok = streams.back()->out().send(FrameType::kHello, h); !ok) return ok;
    if (i == 0) {
      // Replies come on stream 0 only; read them on their own thread.
      reader = std::thread([this, &src = streams[0]->in()] {
        name_this_thread("mig-replies");
        for (;;) {
          auto f = src.next_frame();
          if (!f) {
            inbox.close(std::move(f.error()).context("destination"));
            break;
          }
          if (!*f) {
            inbox.close(Error("the destination closed the connection"));
            break;
          }
          inbox.push(std::move(**f));
        }
        // Senders blocked on a dead peer fail by themselves: a destination
        // that aborts or dies shuts its sockets down.
      });
      auto hello = wait_reply(FrameType::kHello, o.reply_timeout);
      if (!hello) return std::unexpected(hello.error());
      auto dh = decode_hello(hello->payload);
      if (!dh) return std::unexpected(dh.error());
      spdlog::info("migration: connected to {} ({}), protocol {}.{}", o.to.str(), dh->host, dh->major, dh->minor);
    }
  }
  return {};
}

Status SourceMigration::Impl::precheck() {
  if (auto ok = ctx.enter(Phase::kPrecheck); !ok) return ok;
  if (auto ok = streams[0]->out().send(FrameType::kPrecheck, vm->describe()); !ok) return ok;
  auto f = wait_reply(FrameType::kPrecheckResult, o.reply_timeout);
  if (!f) return std::unexpected(f.error());
  auto r = decode_precheck_result(f->payload);
  if (!r) return std::unexpected(r.error());
  if (!r->ok) return fail("the destination refused: {}", r->reason);
  if (!r->reason.empty()) spdlog::warn("migration: the destination notes: {}", r->reason);
  return {};
}

}  // namespace ferry::migration
