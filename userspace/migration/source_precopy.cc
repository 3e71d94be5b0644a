// Pre-copy on the source: the rounds (planned by RoundPlanner, sent by
// page_path.hh's stream sender), the policy's inputs after each, and the
// calibration pauses (source_session.hh).
#include <spdlog/spdlog.h>

#include "userspace/base/thread_name.hh"
#include "userspace/migration/digest.hh"
#include "userspace/migration/page_path.hh"
#include "userspace/migration/source_session.hh"

namespace ferry::migration {

// One round: each stream's worker reads its pages (zero test, checksum)
// and sends them, then ROUND_END; the round ends when every stream has
// flushed, so its duration measures the link, not the queue.
Result<RoundFigures> SourceMigration::Impl::send_round(std::uint32_t round, const RoundPlanner::PerStream& per_stream,
                                                       RoundPlanner& planner) {
  const auto t = Clock::now();
  const auto& ram = vm->ram();
  const PageMemory mem{ram.slot(), ram.host(), ram.pages()};
  std::vector<RoundFigures> figs(streams.size());
  std::vector<Status> results(streams.size());
  std::vector<std::thread> workers;
  for (std::size_t i = 0; i < streams.size(); ++i) {
    workers.emplace_back([&, i] {
      name_this_thread(fmt::format("mig-pages{}", i));
      results[i] = send_stream_pages(streams[i]->out(), mem, round, per_stream[i], figs[i], [this] { return check_peer(); });
    });
  }
  for (auto& w : workers) w.join();
  for (auto& r : results)
    if (!r) {
      // A dead peer fails every stream; say why it died if the reader
      // knows already (roll_back waits briefly for it, with the guest
      // running again).
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
  const std::uint64_t resent = planner.record_sent(per_stream);  // went out in an earlier round too
  ctx.update([&](MigrationStatus& s) {
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
  for (const auto& s : streams) {
    const auto x = s->sender().stats();
    req += x.zc_requests;
    copied += x.zc_copied;
    active = active || x.zero_copy_active;
    if (note.empty()) note = x.zero_copy_note;
  }
  ctx.update([&](MigrationStatus& s) {
    s.zc_requests = req;
    s.zc_copied = copied;
    s.zero_copy = active ? "active" : note;
  });
}

bool SourceMigration::Impl::adopt_kernel_view() {
  if (kernel || !kernel_loading.valid()) return false;
  if (kernel_loading.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return false;
  kernel = kernel_loading.get();
  for (const auto& s : streams) kernel->watch_socket(s->fd());
  return true;
}

// What the policy is told about a round that just ended: the engine's
// figures, the planner's view of the harvest, the kernel's (eBPF), the
// switch costs (measured now by a calibration pause when they are wanted)
// and what each vCPU dirtied.
Result<RoundSample> SourceMigration::Impl::sample_round(std::uint32_t round, const RoundFigures& fig,
                                                        const RoundPlanner::Harvest& harvest,
                                                        const Decision& last_decision) {
  RoundSample sample;
  sample.round = round;
  sample.duration = Millis(fig.ms);
  sample.bytes_sent = fig.bytes;
  sample.dirty_pages = harvest.dirty_pages;
  sample.elapsed = Millis(ms_since(ctx.t0()));
  sample.hot_pages = harvest.held_only;
  sample.hot_set_pages = harvest.hot_set_pages;
  if (kernel) {
    sample.kernel = kernel->round_end();
    // vCPUs that never dirtied a page have no counter yet: rate 0.
    if (sample.kernel && !sample.kernel->dirty_pages_per_s.empty())
      sample.kernel->dirty_pages_per_s.resize(
          std::max<std::size_t>(sample.kernel->dirty_pages_per_s.size(), vm->vcpu_count()), 0.0);
  }
  // A calibration pause after round 0, and again while the switch costs
  // alone keep the prediction over the limit (SwitchCostEstimate).
  if (o.policy == PolicyKind::kAdaptive && switch_costs.wants_sample(last_decision, o.downtime_limit)) {
    if (auto ok = calibrate(sample); !ok) return std::unexpected(ok.error());
  } else {
    sample.state_bytes = calibrated_state_bytes;
    sample.switch_costs = Millis(std::max(0.0, switch_costs.ms()));
  }
  const auto per_vcpu = vm->dirtied_per_vcpu();
  if (per_vcpu.empty()) {
    // The bitmap cannot say which vCPU wrote: one figure for the VM,
    // and a throttle decision then applies to every vCPU.
    sample.dirtied_per_vcpu = {sample.dirty_pages};
  } else {
    for (std::size_t i = 0; i < per_vcpu.size(); ++i)
      sample.dirtied_per_vcpu.push_back(per_vcpu[i] - (i < vcpu_dirty_last.size() ? vcpu_dirty_last[i] : 0));
    vcpu_dirty_last = per_vcpu;
  }
  return sample;
}

// The round's line in the report: what the policy was given and decided,
// so a report replays as a policy trace (tools/report-to-policy-trace).
void SourceMigration::Impl::record_decision(RoundFigures& fig, const RoundSample& sample, const Decision& d,
                                            const std::vector<double>& throttle, std::uint64_t withheld) {
  fig.dirty_after = sample.dirty_pages;
  fig.dirty_rate = d.dirty_bytes_per_s;
  fig.bandwidth = d.bandwidth_bytes_per_s;
  fig.expected_downtime_ms = d.expected_downtime.count();
  fig.decision = std::string(action_name(d.action));
  fig.reason = d.reason;
  fig.throttle = throttle;
  fig.dirtied_per_vcpu = sample.dirtied_per_vcpu;
  fig.capacity = d.capacity_bytes_per_s;
  fig.held_back = withheld;
  fig.elapsed_ms = sample.elapsed.count();
  fig.hot_pages = sample.hot_pages;
  fig.hot_set_pages = sample.hot_set_pages;
  fig.state_bytes = sample.state_bytes;
  fig.switch_costs_ms = sample.switch_costs.count();
  if (sample.kernel) {
    fig.link_capacity = sample.kernel->link_capacity_bytes_per_s;
    fig.rtt_ms = sample.kernel->rtt.count();
    fig.kernel_dirty_rate = sample.kernel->dirty_pages_per_s;
  }
}

Result<SourceMigration::Impl::Precopy> SourceMigration::Impl::precopy(double connect_ms, double precheck_ms) {
  auto step = Clock::now();
  auto lap = [&] {  // ms since the previous lap
    const auto now = Clock::now();
    return std::chrono::duration<double, std::milli>(now - std::exchange(step, now)).count();
  };
  // The eBPF programs load on their own thread (connect()); under
  // emulation that takes a second or more. Round 0 does not wait for them:
  // the view joins at the first round boundary after it is ready (round 0
  // copies everything and its rates say little anyway), so the policy
  // decides round 0 on the engine's own counters.
  adopt_kernel_view();
  const auto& ram = vm->ram();
  Precopy pre{RoundPlanner(ram.slot(), ram.gpa(), ram.pages(), o.streams), Decision{}};
  RoundPlanner& planner = pre.planner;
  if (auto ok = ctx.enter(Phase::kPrecopy,
                          [&](MigrationStatus& s) { s.dirty_backend = std::string(kvm::dirty_backend_name(vm->dirty_backend())); });
      !ok)
    return std::unexpected(ok.error());
  // Tracking first, then read: a write during round 0 lands in the log.
  if (auto ok = vm->start_dirty_tracking(); !ok) return std::unexpected(ok.error());
  vcpu_dirty_last = vm->dirtied_per_vcpu();
  const double tracking_ms = lap();

  PolicyConfig pc;
  pc.downtime_limit = o.downtime_limit;
  pc.timeout = std::chrono::duration_cast<Millis>(o.timeout);
  pc.on_timeout = o.on_timeout;
  pc.kind = o.policy;
  pc.max_bandwidth_bytes_per_s = o.max_bandwidth;
  SwitchoverPolicy policy(pc);
  ctx.update([&](MigrationStatus& s) {
    s.policy = o.policy == PolicyKind::kAdaptive ? "adaptive" : "fixed-threshold";
    s.policy_inputs = kernel ? kernel->describe()
                      : kernel_loading.valid() ? "engine counters while the eBPF programs load"
                                               : "bytes pushed per round (the fixed-threshold rule)";
  });

  auto todo = planner.first_round(ram);
  const double scan_ms = lap();
  ctx.update([&](MigrationStatus& s) {
    s.unallocated_pages = ram.pages() - planner.allocated();
    s.remaining_pages = planner.allocated();
    s.setup_ms = ms_since(ctx.t0());
    s.connect_ms = connect_ms;
    s.precheck_ms = precheck_ms;
    s.tracking_ms = tracking_ms;
    s.scan_ms = scan_ms;
  });
  (void)vm->take_guest_stall();  // what the guest saw before the migration is not ours
  for (std::uint32_t round = 0;; ++round) {
    ctx.update([&](MigrationStatus& s) { s.round = round; });
    if (adopt_kernel_view()) {
      spdlog::info("migration: eBPF programs ready after {:.0f} ms; the policy uses them from round {}",
                   ms_since(ctx.t0()), round);
      ctx.update([&](MigrationStatus& s) { s.policy_inputs = kernel->describe(); });
    }
    if (kernel) kernel->round_begin();
    const std::uint64_t withheld = planner.withheld();  // hot pages this round leaves out
    auto fig = send_round(round, todo, planner);
    if (!fig) return std::unexpected(fig.error());
    if (auto ok = check_peer(); !ok) return std::unexpected(ok.error());
    // Harvest (and re-arm) now: these pages are the next round's, read
    // only after this harvest.
    if (auto ok = vm->harvest_dirty(planner.harvest_log()); !ok) return std::unexpected(ok.error());
    const auto harvest = planner.observe();
    auto sampled = sample_round(round, *fig, harvest, pre.last_decision);
    if (!sampled) return std::unexpected(sampled.error());
    const RoundSample& sample = *sampled;
    const Decision d = policy.after_round(sample);
    std::vector<double> throttle = d.throttle;
    // One share for the whole VM (bitmap, no per-vCPU view) applies to all.
    if (throttle.size() == 1 && vm->vcpu_count() > 1) throttle.assign(vm->vcpu_count(), throttle[0]);
    vm->set_throttle(throttle);
    record_decision(*fig, sample, d, throttle, withheld);
    // After the decision, so a calibration pause counts in round 0's stall.
    if (auto gap = vm->take_guest_stall()) fig->guest_stall_ms = std::chrono::duration<double, std::milli>(*gap).count();
    pre.last_decision = d;
    spdlog::info("migration: round {}: {} pages + {} zero in {:.1f} ms; {} dirty; {}: {}", round, fig->pages,
                 fig->zero_pages, fig->ms, sample.dirty_pages, fig->decision, d.reason);
    ctx.update([&](MigrationStatus& s) {
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
      (void)ctx.request_cancel(d.reason);
      return fail("{}", d.reason);
    }
    if (d.action == Decision::Action::kSwitchover) return pre;
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
    todo = planner.next_round(d.hold_back_hot);
  }
}

// Measures what switching over costs besides pages, once, after round 0:
// a real pause, state capture and resume of this VM (typically a
// millisecond or two natively, tens under emulation). The destination's
// load is the mirror image of the capture (the same ioctls, SET instead
// of GET), so it is counted twice. Without this the policy can only guess
// and overshoots the limit where these costs are large.
Status SourceMigration::Impl::calibrate(RoundSample& sample) {
  const auto t = Clock::now();
  if (auto ok = vm->pause(); !ok) return std::unexpected(std::move(ok.error()).context("calibration pause"));
  paused_by_us = true;
  const auto t_capture = Clock::now();
  auto image = vm->state_image();
  const double capture_ms = ms_since(t_capture);
  // --verify reads the source's memory inside the downtime: predict it from
  // the checksum rate measured here, on up to 4 MiB of the guest's own data
  // while its vCPUs are paused as they will be then (measured while they
  // run, it read 7x slower in the sandbox, whose one CPU they share), and
  // the data the memfd holds.
  double rate = 0, rate_ms = 0;
  if (o.verify) {
    const auto t_rate = Clock::now();
    rate = checksum_rate(vm->ram(), 4ull << 20) * digest_threads();
    rate_ms = ms_since(t_rate);
  }
  if (auto ok = vm->resume(); !ok) return std::unexpected(std::move(ok.error()).context("calibration resume"));
  paused_by_us = false;
  if (!image) return std::unexpected(std::move(image.error()).context("calibration"));
  const double pause_ms = ms_since(t);  // what the guest saw, the measurement included
  double measured = pause_ms - rate_ms + capture_ms;
  if (o.verify) {
    const double bytes = static_cast<double>(data_bytes(vm->ram()));
    const double digest = rate > 0 ? bytes / rate * 1000.0 : 0;
    measured += digest;
    if (switch_costs.samples() == 0 || measured < switch_costs.ms()) digest_ms = digest;
    spdlog::info("migration: --verify digest predicted at {:.1f} ms ({:.0f} MiB at {:.0f} MiB/s)", digest,
                 bytes / 1048576, rate / 1048576);
  }
  switch_costs.add(measured);
  calibration_pauses_ms += pause_ms;
  calibrated_state_bytes = image->size();
  sample.state_bytes = image->size();
  sample.switch_costs = Millis(switch_costs.ms());
  ctx.update([&](MigrationStatus& s) {
    s.calibration_pause_ms = calibration_pauses_ms;
    s.calibration_pauses = static_cast<std::uint32_t>(switch_costs.samples());
    s.state_bytes = image->size();
  });
  spdlog::info("migration: calibration pause {} {:.2f} ms (state capture {:.2f} ms, {} bytes); switch costs {:.1f} ms",
               switch_costs.samples(), pause_ms, capture_ms, image->size(), switch_costs.ms());
  return {};
}

}  // namespace ferry::migration
