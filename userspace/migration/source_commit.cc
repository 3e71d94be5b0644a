// The source's switchover and commit: pause, state, final round, READY,
// then COMMIT, the point of no return (source_session.hh; the rule is in
// source.hh and docs/protocol.md).
#include <spdlog/spdlog.h>

#include "userspace/migration/digest.hh"
#include "userspace/migration/source_session.hh"

namespace ferry::migration {

Status SourceMigration::Impl::switchover_and_commit(Precopy& pre) {
  // Switchover: from here the guest does not run until one side resumes it.
  if (auto ok = ctx.enter(Phase::kSwitchover); !ok) return ok;
  const auto t_pause = Clock::now();
  const auto pause_wall = wall_now_ns();
  if (auto ok = vm->pause(); !ok) return ok;
  paused_by_us = true;
  const std::uint64_t last_beat = vm->last_heartbeat_wall_ns();
  // The state first: capturing it completes an I/O exit a vCPU was paused
  // in, which may write guest memory (string I/O); the final harvest must
  // come after that write.
  auto image = vm->state_image();
  if (!image) return std::unexpected(image.error());
  if (auto ok = vm->harvest_dirty(pre.planner.final_log()); !ok) return ok;
  std::uint64_t held_final = 0;
  const auto last_round = pre.planner.final_round(held_final);
  const Decision& last = pre.last_decision;
  std::uint32_t final_round = 0;
  ctx.update([&](MigrationStatus& s) {
    s.held_back_pages = held_final;
    s.predicted_downtime_ms = last.expected_downtime.count();
    s.predict_pages_ms = last.predict_pages.count();
    s.predict_state_ms = last.predict_state.count();
    s.predict_rtt_ms = last.predict_rtt.count();
    s.predict_fixed_ms = last.predict_fixed.count();
    if (!last.inputs.empty()) s.policy_inputs = last.inputs;
    final_round = static_cast<std::uint32_t>(s.rounds.size());
    s.round = final_round;
  });
  // Memory no longer changes: the digest runs while the final round goes out.
  std::optional<SourceDigest> digest;
  if (o.verify) digest.emplace(vm->ram(), digest_threads());
  auto fin = send_round(final_round, last_round, pre.planner);
  if (!fin) return std::unexpected(fin.error());
  const double final_ms = ms_since(t_pause);
  const auto t_state = Clock::now();
  auto& control = *streams[0];
  if (digest) {
    VerifyDigest vd{vm->ram().slot(), digest->get()};
    if (auto ok = control.out().send(FrameType::kVerifyDigest, vd); !ok) return ok;
  }
  const std::uint64_t state_bytes = image->size();
  if (auto ok = control.send_now(FrameType::kState, State{std::move(*image), final_round, last_beat}); !ok) return ok;
  const double state_ms = ms_since(t_state);
  const auto t_ready = Clock::now();
  auto ready = wait_reply(FrameType::kReady, o.reply_timeout);
  if (!ready) return std::unexpected(ready.error());
  auto rd = decode_ready(ready->payload);
  if (!rd) return std::unexpected(rd.error());
  const std::uint64_t session = ctx.session();
  if (rd->token != session) return fail("READY for session {:#x}, not ours ({:#x})", rd->token, session);
  const double ready_ms = ms_since(t_ready);
  fin->dirty_after = 0;
  fin->decision = "final";
  ctx.update([&](MigrationStatus& s) {
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
  if (auto ok = ctx.enter_committing(); !ok) return ok;

  // The point of no return: from here on the source never resumes by itself.
  const auto t_commit = Clock::now();
  auto commit_sent = control.send_now(FrameType::kCommit, Commit{session});
  if (commit_sent) ctx.update([](MigrationStatus& s) { s.commit_sent = true; });
  // Cancelling is over: wait with a flag that nothing sets.
  static const std::atomic<bool> never{false};
  auto confirmed =
      commit_sent ? inbox.wait(o.confirm_timeout, never) : Result<Frame>(std::unexpected(commit_sent.error()));
  if (confirmed && confirmed->type != FrameType::kConfirmed)
    confirmed = std::unexpected(unexpected_frame(*confirmed, "CONFIRMED"));
  Result<Confirmed> c = confirmed ? decode_confirmed(confirmed->payload) : std::unexpected(confirmed.error());
  if (c && c->token != session) c = fail("CONFIRMED for session {:#x}, not ours", c->token);
  if (!c) {
    spdlog::error("migration: COMMIT sent but not confirmed ({}); the VM stays paused here. Run `ferry resolve` "
                  "to ask the destination and settle it", c.error());
    return ctx.enter(Phase::kOutcomeUnknown, [&](MigrationStatus& s) {
      s.error = fmt::format("COMMIT sent, no confirmation: {}", c.error().what());
      s.commit_ms = ms_since(t_commit);
    });
  }
  if (auto ok = ctx.enter(Phase::kMigrated,
                          [&](MigrationStatus& s) {
                            s.commit_ms = ms_since(t_commit);
                            if (c->resumed_wall_ns > pause_wall)
                              s.downtime_ms = static_cast<double>(c->resumed_wall_ns - pause_wall) / 1e6;
                            if (c->first_heartbeat_wall_ns > last_beat && last_beat != 0)
                              s.guest_downtime_ms = static_cast<double>(c->first_heartbeat_wall_ns - last_beat) / 1e6;
                          });
      !ok)
    return ok;
  (void)vm->stop(fmt::format("migrated to {}", o.to.str()));
  return {};
}

}  // namespace ferry::migration
