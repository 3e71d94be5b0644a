#include "userspace/migration/source.hh"

#include "userspace/base/thread_name.hh"
#include "userspace/migration/digest.hh"

#include <unistd.h>

#include <bit>
#include <condition_variable>
#include <deque>
#include <future>
#include <optional>
#include <random>
#include <thread>

#include <spdlog/spdlog.h>

#include "kvm/snapshot.hh"
#include "userspace/migration/kernel_view.hh"
#include "userspace/migration/page_path.hh"
#include "userspace/migration/wire.hh"

namespace ferry::migration {
namespace {

using Clock = std::chrono::steady_clock;


double ms_since(Clock::time_point t) { return Millis(Clock::now() - t).count(); }


// Frames from the destination on stream 0, read by their own thread so
// that an ABORT or a lost connection is noticed in the middle of a round.
class Inbox {
 public:
  // The destination sends a handful of frames per session; a peer that
  // floods more is broken or hostile, and must not grow this process (it
  // hosts the running VM) without bound.
  static constexpr std::size_t kMaxQueued = 16;
  void push(Frame f) {
    std::lock_guard lock(mu_);
    if (frames_.size() >= kMaxQueued) {
      if (!closed_) closed_ = Error(fmt::format("the destination sent more than {} unanswered frames", kMaxQueued));
    } else {
      frames_.push_back(std::move(f));
    }
    cv_.notify_all();
  }
  void close(Error e) {
    std::lock_guard lock(mu_);
    if (!closed_) closed_ = std::move(e);
    cv_.notify_all();
  }
  // The next frame, or the reason none will come; a timeout is an error.
  Result<Frame> wait(std::chrono::milliseconds timeout, const std::atomic<bool>& cancelled) {
    std::unique_lock lock(mu_);
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      if (!frames_.empty()) {
        Frame f = std::move(frames_.front());
        frames_.pop_front();
        return f;
      }
      if (closed_) return std::unexpected(*closed_);
      if (cancelled.load()) return fail("cancelled");
      if (cv_.wait_until(lock, std::min(deadline, Clock::now() + std::chrono::milliseconds(100))) ==
              std::cv_status::timeout &&
          Clock::now() >= deadline)
        return fail("no answer from the destination within {} ms", timeout.count());
    }
  }
  // A problem reported so far without waiting: an ABORT or a closed stream.
  std::optional<Error> problem() {
    std::lock_guard lock(mu_);
    for (const auto& f : frames_)
      if (f.type == FrameType::kAbort) {
        auto a = decode_abort(f.payload);
        return Error(fmt::format("the destination aborted: {}", a ? a->reason : a.error().what()));
      }
    if (closed_) return closed_;
    return std::nullopt;
  }
  void notify() { cv_.notify_all(); }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Frame> frames_;
  std::optional<Error> closed_;
};

// Turns an unexpected frame into an error: an ABORT says why.
Error unexpected_frame(const Frame& f, std::string_view waiting_for) {
  if (f.type == FrameType::kAbort) {
    auto a = decode_abort(f.payload);
    return Error(fmt::format("the destination aborted: {}", a ? a->reason : a.error().what()));
  }
  return Error(fmt::format("expected {} from the destination, got {}", waiting_for, frame_type_name(f.type)));
}

}  // namespace

std::string_view phase_name(Phase p) {
  switch (p) {
    case Phase::kConnecting: return "connecting";
    case Phase::kPrecheck: return "precheck";
    case Phase::kPrecopy: return "precopy";
    case Phase::kSwitchover: return "switchover";
    case Phase::kCommitting: return "committing";
    case Phase::kMigrated: return "migrated";
    case Phase::kFailed: return "failed";
    case Phase::kCancelled: return "cancelled";
    case Phase::kOutcomeUnknown: return "outcome-unknown";
  }
  return "?";
}

bool phase_final(Phase p) {
  return p == Phase::kMigrated || p == Phase::kFailed || p == Phase::kCancelled || p == Phase::kOutcomeUnknown;
}

struct SourceMigration::Impl {
  kvm::Machine& m;
  MigrateOptions o;
  std::function<void(Phase)> on_end;
  std::thread thread;
  std::thread reader;
  std::atomic<bool> cancelled{false};
  std::string cancel_reason;

  mutable std::mutex mu;  // guards st and cancel_reason
  MigrationStatus st;
  Clock::time_point t0 = Clock::now();

  std::unique_ptr<transport::RateLimiter> limiter;
  std::mutex senders_mu;  // connect() adds while cancel() may abort
  std::vector<std::unique_ptr<transport::Sender>> senders;
  std::vector<std::unique_ptr<FrameSender>> framers;
  Inbox inbox;
  bool paused_by_us = false;
  std::vector<std::uint64_t> sent_before;  // bitmap: pages sent at least once
  std::vector<std::uint64_t> vcpu_dirty_last;
  std::unique_ptr<KernelView> kernel;  // eBPF measurements, or why there are none
  // Loading and verifying the eBPF programs takes ~1 s under emulation:
  // it runs while the streams connect and the destination prechecks.
  std::future<std::unique_ptr<KernelView>> kernel_loading;

  Impl(kvm::Machine& machine, MigrateOptions options) : m(machine), o(std::move(options)) {}

  void set_phase(Phase p) {
    std::lock_guard lock(mu);
    st.phase = p;
  }
  template <class F>
  void update(F&& f) {
    std::lock_guard lock(mu);
    f(st);
    st.elapsed_ms = ms_since(t0);
  }

  void run();
  Status migrate();
  // Takes the eBPF view once its load has finished (never waits); true
  // when it was taken now.
  bool adopt_kernel_view();
  Status connect();
  Status precheck();
  Result<RoundFigures> send_round(std::uint32_t round, const std::vector<std::vector<std::uint64_t>>& per_stream);
  Status send_stream_round(std::size_t i, std::uint32_t round, const std::vector<std::uint64_t>& pages,
                           RoundFigures& f);
  Status check_peer();
  Result<Frame> wait_reply(FrameType type, std::chrono::milliseconds timeout);
  void roll_back(const Error& why, bool cancelled_now);
  void collect_transport_figures();
  Status calibrate(RoundSample& sample);
  SwitchCostEstimate switch_costs;  // the migration thread's
  double calibration_pauses_ms = 0;  // every calibration pause: the guest saw them all
  double digest_ms = 0;  // predicted --verify digest time, part of switch_costs.ms()
  const kvm::GuestRegion* ram_region() const { return m.regions().front(); }
  // The digest has every core: the guest is paused while it runs.
  static unsigned digest_threads() { return std::max(1u, std::thread::hardware_concurrency()); }
  void abort_transport(const std::string& why) {
    std::lock_guard lock(senders_mu);
    for (auto& s : senders) s->abort(why);
  }
};

Status SourceMigration::Impl::check_peer() {
  if (cancelled.load()) {
    std::lock_guard lock(mu);
    return fail("{}", cancel_reason);
  }
  if (auto p = inbox.problem()) return std::unexpected(*p);
  return {};
}

Result<Frame> SourceMigration::Impl::wait_reply(FrameType type, std::chrono::milliseconds timeout) {
  auto f = inbox.wait(timeout, cancelled);
  if (!f) {
    if (cancelled.load()) return std::unexpected(check_peer().error());
    return std::unexpected(f.error());
  }
  if (f->type != type) return std::unexpected(unexpected_frame(*f, frame_type_name(type)));
  return f;
}

Status SourceMigration::Impl::connect() {
  limiter = std::make_unique<transport::RateLimiter>(o.max_bandwidth);
  // The policy says in the report when the kernel view was unavailable;
  // the sockets are registered with it once it is loaded (migrate()).
  if (o.policy == PolicyKind::kAdaptive)
    kernel_loading = std::async(std::launch::async, [use = o.use_ebpf] {
      name_this_thread("mig-ebpf-load");
      return KernelView::open(use);
    });
  std::random_device rd;
  const std::uint64_t session = (std::uint64_t{rd()} << 32) ^ rd() ^ static_cast<std::uint64_t>(::getpid());
  update([&](MigrationStatus& s) { s.session = session; });
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  for (std::uint32_t i = 0; i < o.streams; ++i) {
    auto fd = transport::connect_tcp(o.to, o.connect_timeout);
    if (!fd) return std::unexpected(std::move(fd.error()).context(fmt::format("connect to {}", o.to.str())));
    transport::SenderOptions so;
    so.zero_copy = o.zero_copy;
    so.limiter = limiter.get();
    so.name = fmt::format("stream {}", i);
    auto s = transport::Sender::start(std::move(*fd), so);
    if (!s) return std::unexpected(s.error());
    {
      std::lock_guard lock(senders_mu);
      senders.push_back(std::move(*s));
    }
    framers.push_back(std::make_unique<FrameSender>(*senders.back()));
    Hello h;
    h.host = host;
    h.session = session;
    h.stream_index = static_cast<std::uint16_t>(i);
    h.stream_count = static_cast<std::uint16_t>(o.streams);
    if (auto ok = framers.back()->send(FrameType::kHello, h); !ok) return ok;
    if (i == 0) {
      // Replies come on stream 0 only; read them on their own thread.
      auto r = transport::Receiver::create(senders[0]->fd(), "stream 0");
      if (!r) return std::unexpected(r.error());
      reader = std::thread([this, src = std::make_shared<FrameSource>(std::move(*r), std::chrono::milliseconds(0))] {
        name_this_thread("mig-replies");
        for (;;) {
          auto f = src->next_frame();
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
  set_phase(Phase::kPrecheck);
  Precheck p;
  p.vcpus = m.vcpu_count();
  for (const auto* r : m.regions()) p.regions.push_back({r->slot(), r->gpa(), r->size()});
  p.guest_kind = static_cast<std::uint32_t>(m.kind());
  for (const auto& e : m.guest_cpuid())
    p.cpuid.push_back({e.function, e.index, e.eax, e.ebx, e.ecx, e.edx});
  if (p.cpuid.size() > kMaxCpuidEntries) p.cpuid.resize(kMaxCpuidEntries);
  p.tsc_khz = m.tsc_khz();
  p.irqchip = m.has_irqchip();
  p.devices.emplace();
  for (const auto& d : m.devices()) p.devices->push_back({d.kind, d.id, d.config});
  if (auto ok = framers[0]->send(FrameType::kPrecheck, p); !ok) return ok;
  auto f = wait_reply(FrameType::kPrecheckResult, o.reply_timeout);
  if (!f) return std::unexpected(f.error());
  auto r = decode_precheck_result(f->payload);
  if (!r) return std::unexpected(r.error());
  if (!r->ok) return fail("the destination refused: {}", r->reason);
  if (!r->reason.empty()) spdlog::warn("migration: the destination notes: {}", r->reason);
  return {};
}

// One stream's share of a round (page_path.hh): zero pages as markers, the
// others with their checksums and sent from guest memory, then ROUND_END
// and a flush.
Status SourceMigration::Impl::send_stream_round(std::size_t i, std::uint32_t round,
                                                const std::vector<std::uint64_t>& pages, RoundFigures& f) {
  const auto* ram = m.regions().front();
  return send_stream_pages(*framers[i], {ram->slot(), ram->host(), ram->pages()}, round, pages, f,
                           [this] { return check_peer(); });
}

// One round: each stream's worker reads its pages (zero test, checksum)
// and sends them, then ROUND_END; the round ends when every stream has
// flushed, so its duration measures the link, not the queue.
Result<RoundFigures> SourceMigration::Impl::send_round(std::uint32_t round,
                                                       const std::vector<std::vector<std::uint64_t>>& per_stream) {
  const auto t = Clock::now();
  std::vector<RoundFigures> figs(senders.size());
  std::vector<Status> results(senders.size());
  std::vector<std::thread> workers;
  for (std::size_t i = 0; i < senders.size(); ++i) {
    workers.emplace_back([&, i] {
      name_this_thread(fmt::format("mig-pages{}", i));
      results[i] = send_stream_round(i, round, per_stream[i], figs[i]);
    });
  }
  for (auto& w : workers) w.join();
  for (auto& r : results)
    if (!r) {
      // A dead peer fails every stream; say why it died if the reader knows.
      if (auto p = inbox.problem()) return std::unexpected(*p);
      return std::unexpected(r.error());
    }
  RoundFigures total;
  total.round = round;
  for (const auto& f : figs) {
    total.pages += f.pages;
    total.zero_pages += f.zero_pages;
    total.bytes += f.bytes;
  }
  total.ms = ms_since(t);
  // Re-sent: pages that went out in an earlier round too.
  std::uint64_t resent = 0;
  for (const auto& list : per_stream)
    for (std::uint64_t page : list) {
      auto& word = sent_before[page / 64];
      const std::uint64_t bit = std::uint64_t{1} << (page % 64);
      if (word & bit) ++resent;
      word |= bit;
    }
  update([&](MigrationStatus& s) {
    s.pages_sent += total.pages;
    s.zero_pages += total.zero_pages;
    s.bytes_sent += total.bytes;
    s.resent_pages += resent;
  });
  return total;
}

void SourceMigration::Impl::collect_transport_figures() {
  std::uint64_t req = 0, copied = 0;
  std::string note;
  bool active = false;
  for (const auto& s : senders) {
    const auto x = s->stats();
    req += x.zc_requests;
    copied += x.zc_copied;
    active = active || x.zero_copy_active;
    if (note.empty()) note = x.zero_copy_note;
  }
  update([&](MigrationStatus& s) {
    s.zc_requests = req;
    s.zc_copied = copied;
    s.zero_copy = active ? "active" : note;
  });
}

// Splits dirty pages of the one RAM slot into per-stream lists, ascending.
std::vector<std::vector<std::uint64_t>> split(const kvm::DirtyLog& log, std::uint32_t slot, std::uint32_t streams) {
  std::vector<std::vector<std::uint64_t>> out(streams);
  if (const auto* bits = log.find(slot)) bits->for_each([&](std::uint64_t p) { out[stream_of(p, streams)].push_back(p); });
  return out;
}

bool SourceMigration::Impl::adopt_kernel_view() {
  if (kernel || !kernel_loading.valid()) return false;
  if (kernel_loading.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return false;
  kernel = kernel_loading.get();
  for (const auto& s : senders) kernel->watch_socket(s->fd());
  return true;
}

Status SourceMigration::Impl::migrate() {
  auto step = Clock::now();
  auto lap = [&] {  // ms since the previous lap
    const auto now = Clock::now();
    return std::chrono::duration<double, std::milli>(now - std::exchange(step, now)).count();
  };
  if (auto ok = connect(); !ok) return ok;
  const double connect_ms = lap();
  if (auto ok = precheck(); !ok) return ok;
  const double precheck_ms = lap();
  // The eBPF programs load on their own thread (connect()); under
  // emulation that takes a second or more. Round 0 does not wait for them:
  // the view joins at the first round boundary after it is ready (round 0
  // copies everything and its rates say little anyway), so the policy
  // decides round 0 on the engine's own counters.
  adopt_kernel_view();
  const auto* ram = m.regions().front();
  const std::uint32_t slot = ram->slot();
  sent_before.assign((ram->pages() + 63) / 64, 0);
  update([&](MigrationStatus& s) {
    s.phase = Phase::kPrecopy;
    s.dirty_backend = std::string(kvm::dirty_backend_name(m.dirty_backend()));
  });
  // Tracking first, then read: a write during round 0 lands in the log.
  if (auto ok = m.start_dirty_tracking(); !ok) return ok;
  vcpu_dirty_last = m.dirtied_per_vcpu();
  const double tracking_ms = lap();

  PolicyConfig pc;
  pc.downtime_limit = o.downtime_limit;
  pc.timeout = std::chrono::duration_cast<Millis>(o.timeout);
  pc.on_timeout = o.on_timeout;
  pc.kind = o.policy;
  pc.max_bandwidth_bytes_per_s = o.max_bandwidth;
  SwitchoverPolicy policy(pc);
  update([&](MigrationStatus& s) {
    s.policy = o.policy == PolicyKind::kAdaptive ? "adaptive" : "fixed-threshold";
    s.policy_inputs = kernel ? kernel->describe()
                      : kernel_loading.valid() ? "engine counters while the eBPF programs load"
                                               : "bytes pushed per round (the fixed-threshold rule)";
  });
  // Hot pages: found dirty by this harvest and the one before (re-dirtied
  // while a round was sending them); `held` are the ones kept back from
  // pre-copy rounds until the final round.
  kvm::DirtyBitmap prev_harvest(ram->pages()), hot(ram->pages());
  kvm::DirtyLog held(std::vector<kvm::TrackedSlot>{{slot, ram->gpa(), ram->pages()}});
  Decision last_decision;

  // Round 0: every page the memfd holds; never-touched pages (holes) are
  // zero on the fresh destination too and are not sent at all.
  std::vector<std::vector<std::uint64_t>> todo(o.streams);
  std::uint64_t allocated = 0;
  kvm::for_each_data_extent(ram->memfd(), 0, ram->size(), [&](std::uint64_t b, std::uint64_t e) {
    for (std::uint64_t p = b / kPageSize; p < (e + kPageSize - 1) / kPageSize; ++p) {
      todo[stream_of(p, o.streams)].push_back(p);
      ++allocated;
    }
  });
  const double scan_ms = lap();
  update([&](MigrationStatus& s) {
    s.unallocated_pages = ram->pages() - allocated;
    s.remaining_pages = allocated;
    s.setup_ms = ms_since(t0);
    s.connect_ms = connect_ms;
    s.precheck_ms = precheck_ms;
    s.tracking_ms = tracking_ms;
    s.scan_ms = scan_ms;
  });
  kvm::DirtyLog dirty(std::vector<kvm::TrackedSlot>{{slot, ram->gpa(), ram->pages()}});
  (void)m.take_guest_stall();  // what the guest saw before the migration is not ours
  for (std::uint32_t round = 0;; ++round) {
    update([&](MigrationStatus& s) { s.round = round; });
    if (adopt_kernel_view()) {
      spdlog::info("migration: eBPF programs ready after {:.0f} ms; the policy uses them from round {}", ms_since(t0),
                   round);
      update([&](MigrationStatus& s) { s.policy_inputs = kernel->describe(); });
    }
    if (kernel) kernel->round_begin();
    const std::uint64_t withheld = held.count();  // hot pages this round leaves out
    auto fig = send_round(round, todo);
    if (!fig) return std::unexpected(fig.error());
    if (auto ok = check_peer(); !ok) return ok;
    // Harvest (and re-arm) now: these pages are the next round's, read
    // only after this harvest.
    dirty.clear();
    if (auto ok = m.harvest_dirty(dirty); !ok) return ok;
    RoundSample sample;
    sample.round = round;
    sample.duration = Millis(fig->ms);
    sample.bytes_sent = fig->bytes;
    sample.dirty_pages = dirty.count();
    sample.elapsed = Millis(ms_since(t0));
    {
      const auto& now = *dirty.find(slot);
      const auto& h = *held.find(slot);
      std::uint64_t held_only = 0;
      for (std::size_t w = 0; w < now.word_count(); ++w) {
        hot.words()[w] = now.words()[w] & prev_harvest.words()[w];
        prev_harvest.words()[w] = now.words()[w];
        // Held pages the harvest did not find again are still unsent.
        held_only += static_cast<std::uint64_t>(std::popcount(h.words()[w] & ~now.words()[w]));
      }
      sample.hot_pages = held_only;
    }
    // The policy judges holding back on the set it would hold: the pages
    // hot now plus those still held from before (not the held count alone,
    // which is 0 before the first hold and would always look affordable).
    sample.hot_set_pages = hot.count() + sample.hot_pages;
    if (kernel) {
      sample.kernel = kernel->round_end();
      // vCPUs that never dirtied a page have no counter yet: rate 0.
      if (sample.kernel && !sample.kernel->dirty_pages_per_s.empty())
        sample.kernel->dirty_pages_per_s.resize(std::max<std::size_t>(sample.kernel->dirty_pages_per_s.size(), m.vcpu_count()), 0.0);
    }
    // A calibration pause after round 0, and again while the switch costs
    // alone keep the prediction over the limit (SwitchCostEstimate).
    if (o.policy == PolicyKind::kAdaptive && switch_costs.wants_sample(last_decision, o.downtime_limit)) {
      if (auto ok = calibrate(sample); !ok) return ok;
    } else {
      std::lock_guard lock(mu);
      sample.state_bytes = st.state_bytes;
      sample.switch_costs = Millis(std::max(0.0, switch_costs.ms()));
    }
    const auto per_vcpu = m.dirtied_per_vcpu();
    if (per_vcpu.empty()) {
      // The bitmap cannot say which vCPU wrote: one figure for the VM,
      // and a throttle decision then applies to every vCPU.
      sample.dirtied_per_vcpu = {sample.dirty_pages};
    } else {
      for (std::size_t i = 0; i < per_vcpu.size(); ++i)
        sample.dirtied_per_vcpu.push_back(per_vcpu[i] - (i < vcpu_dirty_last.size() ? vcpu_dirty_last[i] : 0));
      vcpu_dirty_last = per_vcpu;
    }
    const Decision d = policy.after_round(sample);
    std::vector<double> throttle = d.throttle;
    // One share for the whole VM (bitmap, no per-vCPU view) applies to all.
    if (throttle.size() == 1 && m.vcpu_count() > 1) throttle.assign(m.vcpu_count(), throttle[0]);
    m.set_throttle(throttle);
    fig->dirty_after = sample.dirty_pages;
    fig->dirty_rate = d.dirty_bytes_per_s;
    fig->bandwidth = d.bandwidth_bytes_per_s;
    fig->expected_downtime_ms = d.expected_downtime.count();
    fig->decision = std::string(action_name(d.action));
    fig->reason = d.reason;
    fig->throttle = throttle;
    fig->dirtied_per_vcpu = sample.dirtied_per_vcpu;
    fig->capacity = d.capacity_bytes_per_s;
    fig->held_back = withheld;
    fig->elapsed_ms = sample.elapsed.count();
    fig->hot_pages = sample.hot_pages;
    fig->hot_set_pages = sample.hot_set_pages;
    fig->state_bytes = sample.state_bytes;
    fig->switch_costs_ms = sample.switch_costs.count();
    // After the decision, so a calibration pause counts in round 0's stall.
    if (auto gap = m.take_guest_stall()) fig->guest_stall_ms = std::chrono::duration<double, std::milli>(*gap).count();
    if (sample.kernel) {
      fig->link_capacity = sample.kernel->link_capacity_bytes_per_s;
      fig->rtt_ms = sample.kernel->rtt.count();
      fig->kernel_dirty_rate = sample.kernel->dirty_pages_per_s;
    }
    last_decision = d;
    spdlog::info("migration: round {}: {} pages + {} zero in {:.1f} ms; {} dirty; {}: {}", round, fig->pages,
                 fig->zero_pages, fig->ms, sample.dirty_pages, fig->decision, d.reason);
    update([&](MigrationStatus& s) {
      if (!d.inputs.empty()) s.policy_inputs = d.inputs;  // what this round's decision ran on
      s.rounds.push_back(*fig);
      if (fig->guest_stall_ms >= 0) s.precopy_guest_stall_ms = std::max(s.precopy_guest_stall_ms, fig->guest_stall_ms);
      s.remaining_pages = sample.dirty_pages + sample.hot_pages;
      s.dirty_rate = d.dirty_bytes_per_s;
      s.bandwidth = d.bandwidth_bytes_per_s;
      s.expected_downtime_ms = d.expected_downtime.count();
      s.throttle = throttle;
    });
    if (d.action == Decision::Action::kCancel) {
      {
        std::lock_guard lock(mu);
        cancel_reason = d.reason;
      }
      cancelled = true;
      return fail("{}", d.reason);
    }
    if (d.action == Decision::Action::kSwitchover) break;
    // A round with almost nothing to send ends in a few ms. When the policy
    // still says continue (the fixed costs alone exceed the limit, or a
    // throttle has yet to bite), starting the next one at once spins through
    // thousands of near-empty rounds (27k in 10 minutes, seen in the
    // sandbox) that only burn the CPU the guest needs. Rounds start at most
    // every 50 ms.
    if (fig->ms < 50) std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(50 - fig->ms));
    // Next round: everything still unsent, except that hot pages wait for
    // the final round when the policy can afford them there (sending them
    // now would only send them again).
    dirty.merge(held);
    held.clear();
    if (d.hold_back_hot) {
      // Every hot page is pending (it is in this harvest): move it over.
      auto& h = *held.find(slot);
      auto& pending = *dirty.find(slot);
      for (std::size_t w = 0; w < pending.word_count(); ++w) {
        h.words()[w] = hot.words()[w];
        pending.words()[w] &= ~hot.words()[w];
      }
    }
    todo = split(dirty, slot, o.streams);
  }

  // Switchover: from here the guest does not run until one side resumes it.
  set_phase(Phase::kSwitchover);
  const auto t_pause = Clock::now();
  const auto pause_wall = wall_now_ns();
  if (auto ok = m.pause(); !ok) return ok;
  paused_by_us = true;
  const std::uint64_t last_beat = wall_ns(m.monitor_figures().last_beat_wall);
  // The state first: capturing it completes an I/O exit a vCPU was paused
  // in, which may write guest memory (string I/O); the final harvest must
  // come after that write.
  auto image = m.state_image();
  if (!image) return std::unexpected(image.error());
  if (auto ok = m.harvest_dirty(dirty); !ok) return ok;
  const std::uint64_t held_final = held.count();
  dirty.merge(held);
  held.clear();
  update([&](MigrationStatus& s) {
    s.held_back_pages = held_final;
    s.predicted_downtime_ms = last_decision.expected_downtime.count();
    s.predict_pages_ms = last_decision.predict_pages.count();
    s.predict_state_ms = last_decision.predict_state.count();
    s.predict_rtt_ms = last_decision.predict_rtt.count();
    s.predict_fixed_ms = last_decision.predict_fixed.count();
    if (!last_decision.inputs.empty()) s.policy_inputs = last_decision.inputs;
  });
  const std::uint32_t final_round = static_cast<std::uint32_t>(st.rounds.size());
  update([&](MigrationStatus& s) { s.round = final_round; });
  // Memory no longer changes: the digest runs while the final round goes out.
  std::optional<SourceDigest> digest;
  if (o.verify) digest.emplace(*ram, digest_threads());
  auto fin = send_round(final_round, split(dirty, slot, o.streams));
  if (!fin) return std::unexpected(fin.error());
  const double final_ms = ms_since(t_pause);
  const auto t_state = Clock::now();
  if (digest) {
    VerifyDigest vd{slot, digest->get()};
    if (auto ok = framers[0]->send(FrameType::kVerifyDigest, vd); !ok) return ok;
  }
  const std::uint64_t state_bytes = image->size();
  if (auto ok = framers[0]->send(FrameType::kState, State{std::move(*image), final_round, last_beat}); !ok) return ok;
  if (auto ok = senders[0]->flush(); !ok) return ok;
  const double state_ms = ms_since(t_state);
  const auto t_ready = Clock::now();
  auto ready = wait_reply(FrameType::kReady, o.reply_timeout);
  if (!ready) return std::unexpected(ready.error());
  auto rd = decode_ready(ready->payload);
  if (!rd) return std::unexpected(rd.error());
  if (rd->token != st.session) return fail("READY for session {:#x}, not ours ({:#x})", rd->token, st.session);
  const double ready_ms = ms_since(t_ready);
  fin->dirty_after = 0;
  fin->decision = "final";
  update([&](MigrationStatus& s) {
    s.rounds.push_back(*fin);
    s.remaining_pages = 0;
    s.final_pages = fin->pages + fin->zero_pages;
    s.final_pages_ms = final_ms;
    s.state_ms = state_ms;
    s.ready_ms = ready_ms;
    s.state_bytes = state_bytes;
    s.dest_load_ms = static_cast<double>(rd->load_ns) / 1e6;
    s.verified = o.verify;
  });
  {
    // A cancel that arrived with READY wins: nothing was committed yet.
    std::lock_guard lock(mu);
    if (cancelled.load()) return fail("{}", cancel_reason);
    st.phase = Phase::kCommitting;
  }

  // The point of no return: from here on the source never resumes by itself.
  const auto t_commit = Clock::now();
  auto commit_sent = framers[0]->send(FrameType::kCommit, Commit{st.session});
  if (commit_sent) commit_sent = senders[0]->flush();
  // Cancelling is over: wait with a flag that nothing sets.
  static const std::atomic<bool> never{false};
  auto confirmed = commit_sent ? inbox.wait(o.confirm_timeout, never) : Result<Frame>(std::unexpected(commit_sent.error()));
  if (confirmed && confirmed->type != FrameType::kConfirmed)
    confirmed = std::unexpected(unexpected_frame(*confirmed, "CONFIRMED"));
  Result<Confirmed> c = confirmed ? decode_confirmed(confirmed->payload) : std::unexpected(confirmed.error());
  if (c && c->token != st.session) c = fail("CONFIRMED for session {:#x}, not ours", c->token);
  if (!c) {
    spdlog::error("migration: COMMIT sent but not confirmed ({}); the VM stays paused here. Run `ferry resolve` "
                  "to ask the destination and settle it", c.error());
    update([&](MigrationStatus& s) {
      s.phase = Phase::kOutcomeUnknown;
      s.error = fmt::format("COMMIT sent, no confirmation: {}", c.error().what());
      s.commit_ms = ms_since(t_commit);
    });
    return {};
  }
  update([&](MigrationStatus& s) {
    s.commit_ms = ms_since(t_commit);
    if (c->resumed_wall_ns > pause_wall) s.downtime_ms = static_cast<double>(c->resumed_wall_ns - pause_wall) / 1e6;
    if (c->first_heartbeat_wall_ns > last_beat && last_beat != 0)
      s.guest_downtime_ms = static_cast<double>(c->first_heartbeat_wall_ns - last_beat) / 1e6;
    s.phase = Phase::kMigrated;
  });
  (void)m.stop(fmt::format("migrated to {}", o.to.str()));
  return {};
}

// Measures what switching over costs besides pages, once, after round 0:
// a real pause, state capture and resume of this VM (typically a
// millisecond or two natively, tens under emulation). The destination's
// load is the mirror image of the capture (the same ioctls, SET instead
// of GET), so it is counted twice. Without this the policy can only guess
// and overshoots the limit where these costs are large.
Status SourceMigration::Impl::calibrate(RoundSample& sample) {
  const auto t = Clock::now();
  if (auto ok = m.pause(); !ok) return std::unexpected(std::move(ok.error()).context("calibration pause"));
  paused_by_us = true;
  const auto t_capture = Clock::now();
  auto image = m.state_image();
  const double capture_ms = ms_since(t_capture);
  // --verify reads the source's memory inside the downtime: predict it from
  // the checksum rate measured here, on up to 4 MiB of the guest's own data
  // while its vCPUs are paused as they will be then (measured while they
  // run, it read 7x slower in the sandbox, whose one CPU they share), and
  // the data the memfd holds.
  double rate = 0, rate_ms = 0;
  if (o.verify) {
    const auto t_rate = Clock::now();
    rate = checksum_rate(*ram_region(), 4ull << 20) * digest_threads();
    rate_ms = ms_since(t_rate);
  }
  if (auto ok = m.resume(); !ok) return std::unexpected(std::move(ok.error()).context("calibration resume"));
  paused_by_us = false;
  if (!image) return std::unexpected(std::move(image.error()).context("calibration"));
  const double pause_ms = ms_since(t);  // what the guest saw, the measurement included
  double measured = pause_ms - rate_ms + capture_ms;
  if (o.verify) {
    const double bytes = static_cast<double>(data_bytes(*ram_region()));
    const double digest = rate > 0 ? bytes / rate * 1000.0 : 0;
    measured += digest;
    if (switch_costs.samples() == 0 || measured < switch_costs.ms()) digest_ms = digest;
    spdlog::info("migration: --verify digest predicted at {:.1f} ms ({:.0f} MiB at {:.0f} MiB/s)", digest,
                 bytes / 1048576, rate / 1048576);
  }
  switch_costs.add(measured);
  calibration_pauses_ms += pause_ms;
  sample.state_bytes = image->size();
  sample.switch_costs = Millis(switch_costs.ms());
  update([&](MigrationStatus& s) {
    s.calibration_pause_ms = calibration_pauses_ms;
    s.calibration_pauses = static_cast<std::uint32_t>(switch_costs.samples());
    s.state_bytes = image->size();
  });
  spdlog::info("migration: calibration pause {} {:.2f} ms (state capture {:.2f} ms, {} bytes); switch costs {:.1f} ms",
               switch_costs.samples(), pause_ms, capture_ms, image->size(), switch_costs.ms());
  return {};
}

void SourceMigration::Impl::roll_back(const Error& why, bool cancelled_now) {
  // The guest first: no COMMIT was sent, so it is ours, and a stalled
  // connection must not keep it paused. Pages still in flight from guest
  // memory are harmless (pre-copy sends from running guests anyway).
  m.set_throttle(std::vector<double>(m.vcpu_count(), 0.0));
  if (auto ok = m.stop_dirty_tracking(); !ok) spdlog::warn("migration: {}", ok.error());
  if (paused_by_us)
    if (auto ok = m.resume(); !ok) spdlog::error("migration: resuming the VM after a failed migration: {}", ok.error());
  paused_by_us = false;
  update([&](MigrationStatus& s) {
    s.phase = cancelled_now ? Phase::kCancelled : Phase::kFailed;
    s.error = why.what();
  });
  // Then tell the destination, best effort (it drops what it received;
  // TCP_USER_TIMEOUT bounds a flush into a dead peer).
  if (!senders.empty() && senders[0]) {
    (void)framers[0]->send(FrameType::kAbort, Abort{why.what().substr(0, kMaxReason)});
    (void)senders[0]->flush();
  }
  abort_transport(why.what());
  spdlog::warn("migration {}: {}; the VM keeps running here", cancelled_now ? "cancelled" : "failed", why.what());
}

void SourceMigration::Impl::run() {
  auto ok = migrate();
  if (!ok) {
    // A cancel may surface as whatever it broke (a cut connection): report
    // the cancel, which is what happened.
    Error why = ok.error();
    if (cancelled.load()) {
      std::lock_guard lock(mu);
      why = Error(cancel_reason);
    }
    roll_back(why, cancelled.load());
  }
  collect_transport_figures();
  // Detach the eBPF programs now: a VM that stays here must not go on
  // paying for tracepoints (and locked map memory) nobody reads.
  kernel.reset();
  const auto throttled = m.throttled_time();
  update([&](MigrationStatus& s) {
    s.throttled_ms.clear();
    for (auto t : throttled) s.throttled_ms.push_back(Millis(t).count());
  });
  const Phase p = [&] {
    std::lock_guard lock(mu);
    return st.phase;
  }();
  if (p != Phase::kOutcomeUnknown) {
    // Everything is settled: release the connections (the reader ends on
    // the closed socket).
    abort_transport("migration ended");
  }
  if (reader.joinable() && p != Phase::kOutcomeUnknown) reader.join();
  if (on_end) on_end(p);
  // A load still running (a migration shorter than it) ends here, on this
  // thread, not in whoever destroys the migration; the view it yields is
  // dropped at once, so its tracepoints do not stay attached to a VM that
  // is no longer migrating.
  if (kernel_loading.valid()) (void)kernel_loading.get();
}

std::unique_ptr<SourceMigration> SourceMigration::start(kvm::Machine& machine, MigrateOptions options,
                                                        std::function<void(Phase)> on_end) {
  auto impl = std::make_unique<Impl>(machine, std::move(options));
  impl->on_end = std::move(on_end);
  impl->st.to = impl->o.to.str();
  impl->st.streams = impl->o.streams;
  impl->st.max_bandwidth = impl->o.max_bandwidth;
  impl->st.downtime_limit_ms = impl->o.downtime_limit.count();
  for (const auto* r : machine.regions()) impl->st.memory_bytes += r->size();
  auto* p = impl.get();
  p->thread = std::thread([p] {
    name_this_thread("migration");
    p->run();
  });
  return std::unique_ptr<SourceMigration>(new SourceMigration(std::move(impl)));
}

SourceMigration::SourceMigration(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

SourceMigration::~SourceMigration() {
  cancel("the VM process is ending");
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_->abort_transport("the VM process is ending");
  if (impl_->reader.joinable()) impl_->reader.join();
}

MigrationStatus SourceMigration::status() const {
  std::lock_guard lock(impl_->mu);
  auto s = impl_->st;
  if (!phase_final(s.phase)) s.elapsed_ms = ms_since(impl_->t0);
  return s;
}

Phase SourceMigration::phase() const {
  std::lock_guard lock(impl_->mu);
  return impl_->st.phase;
}

void SourceMigration::cancel(std::string why) {
  {
    std::lock_guard lock(impl_->mu);
    if (phase_final(impl_->st.phase) || impl_->st.phase == Phase::kCommitting) return;
    impl_->cancel_reason = std::move(why);
    impl_->cancelled = true;
  }
  impl_->inbox.notify();
  // A worker blocked on a stalled peer does not see the flag: give the
  // migration a moment to stop cleanly (and tell the destination why),
  // then cut the connections.
  for (int i = 0; i < 20 && !phase_final(phase()); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const Phase p = phase();
  if (!phase_final(p) && p != Phase::kCommitting) impl_->abort_transport("cancelled");
}

Status SourceMigration::resolve(bool migrated) {
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->st.phase != Phase::kOutcomeUnknown)
      return fail("resolve: the migration is {}, not outcome-unknown", phase_name(impl_->st.phase));
  }
  if (migrated) {
    (void)impl_->m.stop(fmt::format("migrated to {} (resolved)", impl_->o.to.str()));
    impl_->update([](MigrationStatus& s) {
      s.phase = Phase::kMigrated;
      s.error = "resolved: the destination runs the VM";
    });
  } else {
    impl_->m.set_throttle(std::vector<double>(impl_->m.vcpu_count(), 0.0));
    (void)impl_->m.stop_dirty_tracking();
    if (auto ok = impl_->m.resume(); !ok) return ok;
    impl_->update([](MigrationStatus& s) {
      s.phase = Phase::kFailed;
      s.error = "resolved: the destination did not run the VM; resumed here";
    });
  }
  impl_->abort_transport("resolved");
  if (impl_->on_end) impl_->on_end(impl_->st.phase);
  return {};
}

}  // namespace ferry::migration
